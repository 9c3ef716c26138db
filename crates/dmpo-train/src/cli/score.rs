//! `dmpo score`: accuracy of generation files in the d1 evaluation layout.

use std::path::PathBuf;

use rewards::Task;

/// Arguments of `dmpo score`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Task: gsm8k, math, countdown or sudoku.
    #[arg(long)]
    pub task: Task,
    /// One or more generation JSON files (shards of one evaluation).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Prints per-file and total accuracy.
pub fn run(a: Args) -> anyhow::Result<()> {
    let report = rewards::score_files(a.task, &a.files)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for f in &report.files {
            println!(
                "{}: {}/{} = {:.2}% ({} items)",
                f.path, f.correct, f.total, f.accuracy_pct, f.items
            );
        }
        println!(
            "total ({}): {}/{} = {:.2}% ({} items)",
            report.task, report.correct, report.total, report.accuracy_pct, report.items
        );
    }
    Ok(())
}
