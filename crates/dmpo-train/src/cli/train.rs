//! `dmpo train`.

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use dllm_model::backend::{dispatch, BackendKind, BackendTask};

use super::with_quantize;
use crate::recipe::Recipe;
use crate::run_dir::StartMode;
use crate::trainer::{train, RunOptions, Summary};

/// Arguments of `dmpo train`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Recipe TOML file.
    pub recipe: PathBuf,
    /// Override a recipe value, e.g. `--set train.steps=10` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Quantise the base while loading: `nf4` or `none` (sets `model.quantize`).
    #[arg(long, value_parser = ["nf4", "none"])]
    pub quantize: Option<String>,
    /// Continue from the run's latest checkpoint.
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Replace a previous run in the run directory (its checkpoints, metrics and evaluations).
    #[arg(long)]
    pub overwrite: bool,
    /// Backend (overrides the recipe's `run.device`).
    #[arg(long)]
    pub backend: Option<BackendKind>,
    /// Skip the evaluations before and after training.
    #[arg(long)]
    pub skip_eval: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs a recipe on its backend.
pub struct TrainTask {
    /// The recipe.
    pub recipe: Recipe,
    /// Run options.
    pub options: RunOptions,
}

impl BackendTask for TrainTask {
    type Output = crate::Result<Summary>;
    fn run<B: Backend>(self, device: B::Device) -> crate::Result<Summary> {
        // `train.gradient_checkpointing` checkpoints by transformer block (dllm-model's
        // `BlockCheckpoints`, docs/memory.md); burn's own strategies would keep every matrix
        // product's output anyway.
        train::<Autodiff<B>>(&self.recipe, device, &self.options)
    }
}

/// Loads the recipe (with overrides) and trains; prints the before/after table.
pub fn run_recipe(recipe: Recipe, options: RunOptions) -> anyhow::Result<Summary> {
    let kind = recipe.run.device;
    let summary = dispatch(kind, TrainTask { recipe, options })??;
    if summary.leader {
        print_summary(&summary);
    }
    Ok(summary)
}

/// Prints the before/after accuracy table.
pub fn print_summary(s: &Summary) {
    println!("run: {}", s.run_dir.display());
    println!("| gen length | before (%) | after (%) | change |");
    println!("|---|---|---|---|");
    for a in &s.after {
        let b = s.before.iter().find(|b| b.gen_length == a.gen_length);
        match b {
            Some(b) => println!(
                "| {} | {:.2} | {:.2} | {:+.2} |",
                a.gen_length,
                b.accuracy_pct,
                a.accuracy_pct,
                a.accuracy_pct - b.accuracy_pct
            ),
            None => println!("| {} | - | {:.2} | - |", a.gen_length, a.accuracy_pct),
        }
    }
    println!(
        "steps {}, updates {} (skipped {}), final reward {:.4}, {:.1} s",
        s.steps, s.updates, s.skipped, s.final_reward, s.seconds
    );
}

/// Runs `dmpo train`. In an MPI job, a process whose run failed ends the whole job after its
/// message (the others may wait in an exchange it will never join); one whose run went well
/// finishes MPI.
pub fn run(a: Args) -> anyhow::Result<()> {
    let result = run_args(a);
    match &result {
        Ok(()) => crate::distributed::finish_launch(),
        Err(e) => crate::distributed::abort_launch(&format!("Error: {e:#}")),
    }
    result
}

fn run_args(a: Args) -> anyhow::Result<()> {
    let mut recipe = Recipe::load(
        &a.recipe,
        &with_quantize(&a.overrides, a.quantize.as_deref()),
    )?;
    if let Some(b) = a.backend {
        recipe.run.device = b;
    }
    run_recipe(
        recipe,
        RunOptions {
            start: StartMode::from_flags(a.resume, a.overwrite),
            quiet: a.quiet,
            skip_eval: a.skip_eval,
            ..Default::default()
        },
    )?;
    Ok(())
}
