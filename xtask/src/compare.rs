//! `cargo xtask compare`: held-out accuracy of several runs against rollouts, grouped by
//! algorithm — a Markdown table (per seed, mean and spread) and a PNG or SVG plot of the group means.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::bail;
use dmpo_train::plot::{line_plot, ImageFormat, Labels, Series};

use crate::runs::{curve_spread, mean_std, read_run, Run};

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
        let curves: Vec<&[(f64, f64)]> = members.iter().map(|r| r.curve.as_slice()).collect();
        let points = curve_spread(label, &curves)?
            .into_iter()
            .map(|(x, mean, _)| (x, mean))
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
