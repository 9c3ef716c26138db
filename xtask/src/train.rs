//! `cargo xtask train`: run a recipe (default: the tiny Sudoku DMPO recipe) and print the
//! before/after table.

use std::path::PathBuf;

use dmpo_train::cli::train::run_recipe;
use dmpo_train::run_dir::{holds_run, StartMode};
use dmpo_train::trainer::RunOptions;
use dmpo_train::Recipe;

/// Arguments of `cargo xtask train`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Recipe file.
    #[arg(default_value = "recipes/tiny-sudoku.toml")]
    pub recipe: PathBuf,
    /// Override a recipe value, e.g. `--set train.steps=10` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Seed (shorthand for `--set run.seed=N`; the run name gets a `-seedN` suffix).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Backend (overrides `run.device`).
    #[arg(long)]
    pub backend: Option<dllm_model::backend::BackendKind>,
    /// Continue from the latest checkpoint.
    #[arg(long)]
    pub resume: bool,
}

/// Runs the recipe.
pub fn run(a: Args) -> anyhow::Result<()> {
    let mut overrides = a.overrides.clone();
    if let Some(s) = a.seed {
        overrides.push(format!("run.seed={s}"));
    }
    let mut recipe = Recipe::load(&a.recipe, &overrides)?;
    if let Some(s) = a.seed {
        recipe.run.name = format!("{}-seed{s}", recipe.run.name);
    }
    if let Some(b) = a.backend {
        recipe.run.device = b;
    }
    // The demo starts clean: a previous run in its directory is replaced, and it says so.
    let start = if a.resume {
        StartMode::Resume
    } else {
        if holds_run(&recipe.run_dir()) {
            println!(
                "starting clean: replacing the previous run in {} (pass --resume to continue it)",
                recipe.run_dir().display()
            );
        }
        StartMode::Overwrite
    };
    run_recipe(
        recipe,
        RunOptions {
            start,
            ..Default::default()
        },
    )?;
    Ok(())
}
