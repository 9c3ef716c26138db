//! Finished training runs as `cargo xtask compare` and `cargo xtask study` read them: the
//! accuracy curve of a run directory, and the mean and spread of figures over seeds.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context};
use dmpo_train::recipe::Recipe;

/// One finished run: its group label, seed, wall time and accuracy (%) after each number of
/// rollouts.
#[derive(Debug)]
pub struct Run {
    /// The run directory.
    pub dir: PathBuf,
    /// The algorithm, as the recipe names it.
    pub label: String,
    /// The run's seed.
    pub seed: u64,
    /// Wall-clock seconds of the invocation that finished it (`summary.json`).
    pub seconds: f64,
    /// `(rollouts, accuracy %)`: before training at 0, each periodic evaluation, and the final one.
    pub curve: Vec<(f64, f64)>,
}

fn accuracy_at(list: &serde_json::Value, gen_length: Option<u64>) -> Option<f64> {
    list.as_array()?
        .iter()
        .find(|r| gen_length.is_none_or(|g| r["gen_length"].as_u64() == Some(g)))
        .and_then(|r| r["accuracy_pct"].as_f64())
}

/// Reads the finished run in `dir` (`recipe.toml`, `summary.json`, `eval.jsonl`), at generation
/// length `gen_length` (default: the first one evaluated).
pub fn read_run(dir: &Path, gen_length: Option<u64>) -> anyhow::Result<Run> {
    let recipe = Recipe::load(&dir.join("recipe.toml"), &[])
        .with_context(|| format!("reading the recipe of run {}", dir.display()))?;
    let summary_path = dir.join("summary.json");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).with_context(|| {
            format!("reading {} (did the run finish?)", summary_path.display())
        })?)
        .with_context(|| format!("parsing {}", summary_path.display()))?;
    let per_step = (recipe.train.prompts_per_step * recipe.train.group_size) as f64;
    let mut curve = Vec::new();
    let before = accuracy_at(&summary["before"], gen_length)
        .with_context(|| format!("{}: no `before` accuracy", summary_path.display()))?;
    curve.push((0.0, before));
    let evals = std::fs::read_to_string(dir.join("eval.jsonl")).unwrap_or_default();
    for (i, line) in evals.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}/eval.jsonl line {}", dir.display(), i + 1))?;
        let step = v["step"].as_f64().context("eval.jsonl: missing step")?;
        if let Some(a) = accuracy_at(&v["eval"], gen_length) {
            curve.push((step * per_step, a));
        }
    }
    let steps = summary["steps"]
        .as_f64()
        .context("summary.json: missing steps")?;
    let after = accuracy_at(&summary["after"], gen_length)
        .with_context(|| format!("{}: no `after` accuracy", summary_path.display()))?;
    if curve.last().map(|p| p.0) != Some(steps * per_step) {
        curve.push((steps * per_step, after));
    }
    Ok(Run {
        dir: dir.to_path_buf(),
        label: serde_json::to_value(recipe.train.algorithm)?
            .as_str()
            .unwrap_or("?")
            .to_string(),
        seed: recipe.run.seed,
        seconds: summary["seconds"].as_f64().unwrap_or(f64::NAN),
        curve,
    })
}

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// `(x, mean, sd)` at each evaluation point of `curves` (runs of one group), which must all be
/// evaluated at the same rollout counts.
pub fn curve_spread(label: &str, curves: &[&[(f64, f64)]]) -> anyhow::Result<Vec<(f64, f64, f64)>> {
    let xs: Vec<f64> = curves
        .first()
        .map_or(Vec::new(), |c| c.iter().map(|p| p.0).collect());
    ensure!(
        curves
            .iter()
            .all(|c| c.iter().map(|p| p.0).eq(xs.iter().copied())),
        "the `{label}` runs were evaluated at different rollout counts; compare runs of one recipe"
    );
    Ok(xs
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let ys: Vec<f64> = curves.iter().map(|c| c[i].1).collect();
            let (mean, sd) = mean_std(&ys);
            (x, mean, sd)
        })
        .collect())
}
