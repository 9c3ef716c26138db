//! `cargo xtask train`: run a recipe (default: the tiny Sudoku DMPO recipe) and print the
//! before/after table; with `--check-readme`, fail unless README.md states the figures printed
//! (CI's guard against a front page that no longer holds).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use dmpo_train::cli::train::run_recipe;
use dmpo_train::run_dir::{holds_run, StartMode};
use dmpo_train::trainer::{RunOptions, Summary};
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
    /// After the run, fail unless README.md (in the working directory) states its before/after
    /// figures as printed, and the DMPO change over seeds of docs/results/sudoku.json.
    #[arg(long)]
    pub check_readme: bool,
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
    let summary = run_recipe(
        recipe,
        RunOptions {
            start,
            ..Default::default()
        },
    )?;
    if a.check_readme {
        check_readme(
            &summary,
            Path::new("README.md"),
            Path::new("docs/results/sudoku.json"),
        )?;
        println!("README.md states these figures");
    }
    Ok(())
}

/// The sentence README.md must hold for a run: `from B% to A% (+C points`, with the figures as
/// the before/after table prints them (first generation length).
fn stated_figures(summary: &Summary) -> anyhow::Result<String> {
    let after = summary
        .after
        .first()
        .context("the run has no evaluation after training")?;
    let before = summary
        .before
        .iter()
        .find(|b| b.gen_length == after.gen_length)
        .context("the run has no evaluation before training (resumed or --skip-eval?)")?;
    Ok(format!(
        "from {:.2}% to {:.2}% ({:+.2} points",
        before.accuracy_pct,
        after.accuracy_pct,
        after.accuracy_pct - before.accuracy_pct
    ))
}

/// The DMPO row's change over seeds in a study report (`docs/results/<task>.json`), as README.md
/// quotes it: `+M ± S points over N seeds`.
fn stated_study(report: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(report).with_context(|| format!("reading {}", report.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", report.display()))?;
    let dmpo = json["summary"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["algorithm"] == "DMPO"))
        .with_context(|| format!("{}: no DMPO row in `summary`", report.display()))?;
    let (mean, sd, seeds) = (
        dmpo["change"]["mean"].as_f64(),
        dmpo["change"]["sd"].as_f64(),
        dmpo["seeds"].as_u64(),
    );
    match (mean, sd, seeds) {
        (Some(m), Some(s), Some(n)) => Ok(format!("{m:+.2} ± {s:.2} points over {n} seeds")),
        _ => bail!(
            "{}: the DMPO row lacks change.mean, change.sd or seeds",
            report.display()
        ),
    }
}

/// Fails unless `readme` holds the run's [`stated_figures`] and, when `report` exists, its
/// [`stated_study`].
fn check_readme(summary: &Summary, readme: &Path, report: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(readme).with_context(|| format!("reading {}", readme.display()))?;
    let mut wanted = vec![stated_figures(summary)?];
    if report.exists() {
        wanted.push(stated_study(report)?);
    }
    for w in wanted {
        if !text.contains(&w) {
            bail!(
                "{} does not state `{w}`: the figures changed; rerun `cargo xtask study` and \
                 update the README from docs/results/",
                readme.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmpo_train::eval::EvalResult;

    fn result(accuracy_pct: f64) -> EvalResult {
        EvalResult {
            gen_length: 24,
            correct: 0,
            total: 0,
            accuracy_pct,
            items: 256,
        }
    }

    #[test]
    fn the_readme_check_fails_when_the_stated_figures_moved() {
        let dir = std::env::temp_dir().join(format!("check-readme-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let summary = Summary {
            leader: true,
            run_dir: dir.clone(),
            before: vec![result(49.66015625)],
            after: vec![result(66.89453125)],
            steps: 120,
            updates: 240,
            skipped: 0,
            final_reward: 0.66,
            seconds: 1.0,
        };
        let report = dir.join("sudoku.json");
        std::fs::write(
            &report,
            r#"{"summary": [{"algorithm": "DMPO", "seeds": 5, "change": {"mean": 16.371, "sd": 1.8129}}]}"#,
        )
        .unwrap();
        let readme = dir.join("README.md");
        let check = |text: &str| {
            std::fs::write(&readme, text).unwrap();
            check_readme(&summary, &readme, &report)
        };
        let both =
            "from 49.66% to 66.89% (+17.23 points, seed 0); +16.37 ± 1.81 points over 5 seeds";
        check(both).unwrap();
        let stale_run = both.replace("66.89", "68.02");
        let e = check(&stale_run).unwrap_err().to_string();
        assert!(e.contains("from 49.66% to 66.89% (+17.23 points"), "{e}");
        let stale_study = both.replace("+16.37", "+18.30");
        let e = check(&stale_study).unwrap_err().to_string();
        assert!(e.contains("+16.37 ± 1.81 points over 5 seeds"), "{e}");
        // Without a study report only the run is checked.
        std::fs::write(&readme, "from 49.66% to 66.89% (+17.23 points").unwrap();
        check_readme(&summary, &readme, &dir.join("missing.json")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
