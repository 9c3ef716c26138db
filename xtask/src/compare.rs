//! `cargo xtask compare`: held-out accuracy of several runs against rollouts, grouped by
//! algorithm — a Markdown table (per seed, mean and spread) and a PNG or SVG plot of the group means.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use dmpo_train::plot::{line_plot, ImageFormat, Labels, Series};
use dmpo_train::recipe::Recipe;

/// Arguments of `cargo xtask compare`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run directories (each with `recipe.toml`, `summary.json` and optionally `eval.jsonl`).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Where to write the plot of mean accuracy against rollouts (`.png` or `.svg`).
    #[arg(long, default_value = "runs/compare.png")]
    pub plot: PathBuf,
    /// Generation length whose accuracy is compared (default: the first one evaluated).
    #[arg(long)]
    pub gen_length: Option<u64>,
}

/// One run: its group label, seed, and accuracy (%) after each number of rollouts.
#[derive(Debug)]
struct Run {
    dir: PathBuf,
    label: String,
    seed: u64,
    seconds: f64,
    curve: Vec<(f64, f64)>,
}

fn accuracy_at(list: &serde_json::Value, gen_length: Option<u64>) -> Option<f64> {
    list.as_array()?
        .iter()
        .find(|r| gen_length.is_none_or(|g| r["gen_length"].as_u64() == Some(g)))
        .and_then(|r| r["accuracy_pct"].as_f64())
}

fn read_run(dir: &Path, gen_length: Option<u64>) -> anyhow::Result<Run> {
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

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Runs `cargo xtask compare`.
pub fn run(a: Args) -> anyhow::Result<()> {
    // The plot format is checked before the runs are read, so a wrong extension fails at once.
    ImageFormat::from_path(&a.plot)?;
    let runs = a
        .runs
        .iter()
        .map(|d| read_run(d, a.gen_length))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut groups: BTreeMap<String, Vec<&Run>> = BTreeMap::new();
    for r in &runs {
        groups.entry(r.label.clone()).or_default().push(r);
    }
    println!("| run | algorithm | seed | before (%) | after (%) | change | seconds |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for r in &runs {
        let (b, f) = (r.curve[0].1, r.curve[r.curve.len() - 1].1);
        println!(
            "| {} | {} | {} | {b:.2} | {f:.2} | {:+.2} | {:.0} |",
            r.dir.file_name().unwrap_or_default().to_string_lossy(),
            r.label,
            r.seed,
            f - b,
            r.seconds
        );
    }
    println!();
    println!(
        "| algorithm | seeds | before (%) | after (%) mean ± sd | change mean ± sd (min … max) |"
    );
    println!("|---|---:|---:|---:|---:|");
    let mut series = Vec::new();
    for (label, members) in &groups {
        let before: Vec<f64> = members.iter().map(|r| r.curve[0].1).collect();
        let after: Vec<f64> = members
            .iter()
            .map(|r| r.curve[r.curve.len() - 1].1)
            .collect();
        let change: Vec<f64> = after.iter().zip(&before).map(|(x, y)| x - y).collect();
        let (bm, _) = mean_std(&before);
        let (am, asd) = mean_std(&after);
        let (cm, csd) = mean_std(&change);
        let (lo, hi) = change
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &c| (l.min(c), h.max(c)));
        println!(
            "| {label} | {} | {bm:.2} | {am:.2} ± {asd:.2} | {cm:+.2} ± {csd:.2} ({lo:+.2} … {hi:+.2}) |",
            members.len()
        );
        // Mean curve over the runs of the group, at the rollout counts they share.
        let xs: Vec<f64> = members[0].curve.iter().map(|p| p.0).collect();
        ensure!(
            members
                .iter()
                .all(|r| r.curve.iter().map(|p| p.0).eq(xs.iter().copied())),
            "the `{label}` runs were evaluated at different rollout counts; compare runs of one recipe"
        );
        let points = xs
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let ys: Vec<f64> = members.iter().map(|r| r.curve[i].1).collect();
                (x, mean_std(&ys).0)
            })
            .collect();
        series.push(Series {
            label: format!("{label} (mean of {})", members.len()),
            points,
        });
    }
    if series.is_empty() {
        bail!("no runs to plot");
    }
    if let Some(parent) = a.plot.parent() {
        std::fs::create_dir_all(parent)?;
    }
    line_plot(
        &a.plot,
        &Labels {
            title: "Held-out accuracy against rollouts",
            x: "rollouts",
            y: "accuracy (%)",
        },
        &series,
    )?;
    println!("\nplot: {}", a.plot.display());
    Ok(())
}
