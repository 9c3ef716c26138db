//! `cargo xtask study`: the learning evidence in `docs/results/`. For each task, every recipe of
//! its grid (DMPO, d1's diffu-GRPO, wd1: the same model, rollouts, updates and evaluation) runs
//! once per seed; the held-out accuracy curves of the runs become, per task, a Markdown report
//! (`<task>.md`: per-seed before / final / best accuracy and wall time, mean ± sd per algorithm,
//! DMPO's lead over each baseline seed by seed), the same figures as JSON (`<task>.json`) and a
//! plot of the curves, one band (mean ± sd over seeds) per algorithm (`<task>.png`). Each file
//! names the commit its runs were made at and the command that remakes it.
//!
//! Runs live in `--runs` (default `runs/study/<run name>-seed<S>`). A run that finished at the
//! current commit (its `study.json` says so) is read back instead of trained again, so an
//! interrupted study continues where it stopped; `--fresh` retrains everything.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use dmpo_train::cli::train::run_recipe;
use dmpo_train::plot::{band_plot, Band, Labels};
use dmpo_train::run_dir::StartMode;
use dmpo_train::trainer::RunOptions;
use dmpo_train::Recipe;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::runs::{curve_spread, mean_std, read_run};

/// A task of the study and its grid of recipes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StudyTask {
    /// 4x4 Sudoku on `models/tiny-sudoku`.
    Sudoku,
    /// 3-number Countdown on `models/tiny-countdown`.
    Countdown,
}

impl StudyTask {
    /// The task's name in file names.
    fn name(self) -> &'static str {
        match self {
            Self::Sudoku => "sudoku",
            Self::Countdown => "countdown",
        }
    }

    /// `(algorithm label, recipe)` of each column of the grid; DMPO first.
    fn recipes(self) -> [(&'static str, &'static str); 3] {
        match self {
            Self::Sudoku => [
                ("DMPO", "recipes/tiny-sudoku.toml"),
                ("diffu-GRPO (d1)", "recipes/tiny-sudoku-d1.toml"),
                ("wd1", "recipes/tiny-sudoku-wd1.toml"),
            ],
            Self::Countdown => [
                ("DMPO", "recipes/tiny-countdown.toml"),
                ("diffu-GRPO (d1)", "recipes/tiny-countdown-d1.toml"),
                ("wd1", "recipes/tiny-countdown-wd1.toml"),
            ],
        }
    }

    /// Seeds run when `--seeds` is not given.
    fn default_seeds(self) -> u64 {
        match self {
            Self::Sudoku => 5,
            Self::Countdown => 5,
        }
    }

    /// What the held-out figure is.
    fn metric(self) -> &'static str {
        match self {
            Self::Sudoku => {
                "greedy cell accuracy (%) on the first 256 puzzles of d1's 4x4 test set, one token per step"
            }
            Self::Countdown => {
                "greedy accuracy (%, the Countdown verifier) on the 256 held-out items of models/tiny-countdown/test.jsonl, one token per step"
            }
        }
    }
}

/// Arguments of `cargo xtask study`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tasks to study.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [StudyTask::Sudoku, StudyTask::Countdown])]
    pub tasks: Vec<StudyTask>,
    /// Seeds 0..N for every recipe (default: 5).
    #[arg(long)]
    pub seeds: Option<u64>,
    /// Directory of the runs.
    #[arg(long, default_value = "runs/study")]
    pub runs: PathBuf,
    /// Directory the reports are written to.
    #[arg(long, default_value = "docs/results")]
    pub out: PathBuf,
    /// Train every run again, even one that finished at this commit.
    #[arg(long)]
    pub fresh: bool,
    /// Override a recipe value in every run, e.g. `--set train.steps=2` (repeatable; the
    /// reports name the overrides).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// What a finished study run records beside its outputs (`study.json`), so that a later study
/// at the same commit and settings reads it back instead of training again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunRecord {
    commit: String,
    recipe: String,
    overrides: Vec<String>,
    seconds: f64,
}

/// One run's figures in a report.
#[derive(Debug, Clone, Serialize)]
struct RunFigures {
    algorithm: String,
    recipe: String,
    seed: u64,
    commit: String,
    before: f64,
    r#final: f64,
    best: f64,
    best_at_rollouts: f64,
    seconds: f64,
    curve: Vec<(f64, f64)>,
}

/// Mean and standard deviation of one figure over an algorithm's seeds.
#[derive(Debug, Clone, Copy, Serialize)]
struct Spread {
    mean: f64,
    sd: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Self {
        let (mean, sd) = mean_std(values);
        let (min, max) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
        Self { mean, sd, min, max }
    }
}

/// One algorithm's figures over its seeds.
#[derive(Debug, Clone, Serialize)]
struct AlgorithmSummary {
    algorithm: String,
    recipe: String,
    seeds: usize,
    r#final: Spread,
    change: Spread,
    best: Spread,
    seconds: Spread,
}

/// DMPO's final accuracy less a baseline's, seed by seed.
#[derive(Debug, Clone, Serialize)]
struct Lead {
    baseline: String,
    per_seed: Vec<f64>,
    mean: f64,
    ahead_on: usize,
}

/// A task's report, as written to `<task>.json`.
#[derive(Debug, Clone, Serialize)]
struct Report {
    task: String,
    command: String,
    commits: Vec<String>,
    date: String,
    cpu_cores: usize,
    metric: String,
    runs: Vec<RunFigures>,
    summary: Vec<AlgorithmSummary>,
    dmpo_lead: Vec<Lead>,
}

/// Runs `cargo xtask study`.
pub fn run(a: Args) -> anyhow::Result<()> {
    ensure!(!a.tasks.is_empty(), "--tasks names no task");
    let commit = current_commit()?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    for &task in &a.tasks {
        let seeds = a.seeds.unwrap_or(task.default_seeds());
        ensure!(seeds > 0, "--seeds must be positive");
        let mut runs = Vec::new();
        let grid: Vec<(&str, &str, u64)> = task
            .recipes()
            .iter()
            .flat_map(|&(label, recipe)| (0..seeds).map(move |s| (label, recipe, s)))
            .collect();
        let bar = ProgressBar::new(grid.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} runs {msg}")
                .context("progress template")?
                .progress_chars("=> "),
        );
        for (label, recipe, seed) in grid {
            bar.set_message(format!("{} {label} seed {seed}", task.name()));
            let figures = study_run(&a, &commit, label, Path::new(recipe), seed)?;
            bar.println(format!(
                "{} {label} seed {seed}: {:.2} -> {:.2} ({:+.2}), best {:.2}, {:.0} s",
                task.name(),
                figures.before,
                figures.r#final,
                figures.r#final - figures.before,
                figures.best,
                figures.seconds
            ));
            runs.push(figures);
            bar.inc(1);
        }
        bar.finish_and_clear();
        let report = report(task, &a, seeds, runs)?;
        write_report(&a.out, task, &report)?;
    }
    Ok(())
}

/// Trains (or reads back) the run of `recipe` with `seed`, and returns its figures.
fn study_run(
    a: &Args,
    commit: &str,
    label: &str,
    recipe_path: &Path,
    seed: u64,
) -> anyhow::Result<RunFigures> {
    let mut overrides = a.overrides.clone();
    overrides.push(format!("run.seed={seed}"));
    let mut recipe = Recipe::load(recipe_path, &overrides)?;
    recipe.run.name = format!("{}-seed{seed}", recipe.run.name);
    recipe.run.output_dir = a.runs.clone();
    let dir = recipe.run_dir();
    let record_path = dir.join("study.json");
    let wanted = |r: &RunRecord| {
        r.commit == commit
            && r.recipe == recipe_path.to_string_lossy()
            && r.overrides == a.overrides
    };
    let previous: Option<RunRecord> = std::fs::read_to_string(&record_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let record = match previous {
        Some(r) if !a.fresh && wanted(&r) => r,
        _ => {
            let clock = Instant::now();
            run_recipe(
                recipe,
                RunOptions {
                    start: StartMode::Overwrite,
                    quiet: true,
                    ..Default::default()
                },
            )?;
            let record = RunRecord {
                commit: commit.to_string(),
                recipe: recipe_path.to_string_lossy().into_owned(),
                overrides: a.overrides.clone(),
                seconds: clock.elapsed().as_secs_f64(),
            };
            std::fs::write(&record_path, serde_json::to_string_pretty(&record)? + "\n")
                .with_context(|| format!("writing {}", record_path.display()))?;
            record
        }
    };
    let run = read_run(&dir, None)?;
    let (before, last) = match (run.curve.first(), run.curve.last()) {
        (Some(b), Some(l)) if run.curve.len() > 1 => (b.1, l.1),
        _ => bail!("{}: no evaluation after training", dir.display()),
    };
    let &(best_at_rollouts, best) = run.curve[1..]
        .iter()
        .max_by(|x, y| x.1.total_cmp(&y.1).then(y.0.total_cmp(&x.0)))
        .context("no evaluation after training")?;
    Ok(RunFigures {
        algorithm: label.to_string(),
        recipe: record.recipe,
        seed,
        commit: record.commit,
        before,
        r#final: last,
        best,
        best_at_rollouts,
        seconds: record.seconds,
        curve: run.curve,
    })
}

/// The figures of a task's runs, per algorithm and DMPO against each baseline.
fn report(task: StudyTask, a: &Args, seeds: u64, runs: Vec<RunFigures>) -> anyhow::Result<Report> {
    let mut summary = Vec::new();
    for (label, recipe) in task.recipes() {
        let of: Vec<&RunFigures> = runs.iter().filter(|r| r.algorithm == label).collect();
        let take =
            |f: fn(&RunFigures) -> f64| Spread::of(&of.iter().map(|r| f(r)).collect::<Vec<_>>());
        summary.push(AlgorithmSummary {
            algorithm: label.to_string(),
            recipe: recipe.to_string(),
            seeds: of.len(),
            r#final: take(|r| r.r#final),
            change: take(|r| r.r#final - r.before),
            best: take(|r| r.best),
            seconds: take(|r| r.seconds),
        });
    }
    let finals = |label: &str| -> Vec<f64> {
        runs.iter()
            .filter(|r| r.algorithm == label)
            .map(|r| r.r#final)
            .collect()
    };
    let [(dmpo, _), baselines @ ..] = task.recipes();
    let dmpo_finals = finals(dmpo);
    let dmpo_lead = baselines
        .iter()
        .map(|&(label, _)| {
            let per_seed: Vec<f64> = dmpo_finals
                .iter()
                .zip(finals(label))
                .map(|(d, b)| d - b)
                .collect();
            Lead {
                baseline: label.to_string(),
                mean: mean_std(&per_seed).0,
                ahead_on: per_seed.iter().filter(|&&d| d > 0.0).count(),
                per_seed,
            }
        })
        .collect();
    let mut commits: Vec<String> = runs.iter().map(|r| r.commit.clone()).collect();
    commits.sort();
    commits.dedup();
    let mut command = format!("cargo xtask study --tasks {} --seeds {seeds}", task.name());
    for o in &a.overrides {
        command.push_str(&format!(" --set {o}"));
    }
    Ok(Report {
        task: task.name().to_string(),
        command,
        commits,
        date: today(),
        cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        metric: task.metric().to_string(),
        runs,
        summary,
        dmpo_lead,
    })
}

/// Writes `<task>.md`, `<task>.json` and `<task>.png` under `out`.
fn write_report(out: &Path, task: StudyTask, report: &Report) -> anyhow::Result<()> {
    let name = task.name();
    let json_path = out.join(format!("{name}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let plot_path = out.join(format!("{name}.png"));
    let bands: Vec<Band> = report
        .summary
        .iter()
        .map(|s| curve_band(&s.algorithm, &report.runs))
        .collect::<anyhow::Result<_>>()?;
    let title = format!("tiny-{name}: held-out accuracy, mean ± sd over seeds");
    band_plot(
        &plot_path,
        &Labels {
            title: &title,
            x: "rollouts",
            y: "accuracy (%)",
        },
        &bands,
    )?;
    let md_path = out.join(format!("{name}.md"));
    std::fs::write(&md_path, markdown(report, &format!("{name}.png")))
        .with_context(|| format!("writing {}", md_path.display()))?;
    println!(
        "wrote {}, {} and {}",
        md_path.display(),
        json_path.display(),
        plot_path.display()
    );
    Ok(())
}

/// The mean ± sd band of `algorithm`'s curves; its runs must share their evaluation points.
fn curve_band(algorithm: &str, runs: &[RunFigures]) -> anyhow::Result<Band> {
    let curves: Vec<&[(f64, f64)]> = runs
        .iter()
        .filter(|r| r.algorithm == algorithm)
        .map(|r| r.curve.as_slice())
        .collect();
    let points = curve_spread(algorithm, &curves)?
        .into_iter()
        .map(|(x, m, sd)| (x, m, m - sd, m + sd))
        .collect();
    Ok(Band {
        label: format!("{algorithm} ({} seeds)", curves.len()),
        points,
    })
}

/// The Markdown report.
fn markdown(r: &Report, plot: &str) -> String {
    let mut s = format!("# Learning evidence: tiny-{}\n\n", r.task);
    s.push_str(&format!(
        "Generated by `{}` at commit {} on {} ({} CPU cores); rerun that command to remake this \
         file, `{}.json` and `{plot}` (do not edit them by hand). Held-out figure: {}. \
         \"best\" is the highest of the periodic evaluations and the final one; \"seconds\" is \
         the wall time of the whole run (training and every evaluation).\n\n",
        r.command,
        r.commits.join(", "),
        r.date,
        r.cpu_cores,
        r.task,
        r.metric
    ));
    s.push_str("## Per algorithm (mean ± sd over seeds)\n\n");
    s.push_str("| algorithm | recipe | seeds | final | change (min … max) | best | seconds |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|\n");
    for a in &r.summary {
        s.push_str(&format!(
            "| {} | `{}` | {} | {:.2} ± {:.2} | {:+.2} ± {:.2} ({:+.2} … {:+.2}) | {:.2} ± {:.2} | {:.0} ± {:.0} |\n",
            a.algorithm,
            a.recipe,
            a.seeds,
            a.r#final.mean,
            a.r#final.sd,
            a.change.mean,
            a.change.sd,
            a.change.min,
            a.change.max,
            a.best.mean,
            a.best.sd,
            a.seconds.mean,
            a.seconds.sd
        ));
    }
    s.push_str("\n## DMPO's final accuracy less each baseline's, seed by seed\n\n");
    let seeds = r.dmpo_lead.first().map_or(0, |l| l.per_seed.len());
    s.push_str("| baseline |");
    for i in 0..seeds {
        s.push_str(&format!(" seed {i} |"));
    }
    s.push_str(" mean | DMPO ahead on |\n|---|");
    s.push_str(&"---:|".repeat(seeds + 2));
    s.push('\n');
    for l in &r.dmpo_lead {
        s.push_str(&format!("| {} |", l.baseline));
        for d in &l.per_seed {
            s.push_str(&format!(" {d:+.2} |"));
        }
        s.push_str(&format!(
            " {:+.2} | {} of {} seeds |\n",
            l.mean,
            l.ahead_on,
            l.per_seed.len()
        ));
    }
    s.push_str("\n## Per run\n\n");
    s.push_str("| algorithm | seed | before | final | change | best (at rollouts) | seconds |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for run in &r.runs {
        s.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:+.2} | {:.2} ({:.0}) | {:.0} |\n",
            run.algorithm,
            run.seed,
            run.before,
            run.r#final,
            run.r#final - run.before,
            run.best,
            run.best_at_rollouts,
            run.seconds
        ));
    }
    s.push_str("\n## Learning curves\n\nAccuracy after each number of rollouts, per run:\n\n");
    for run in &r.runs {
        let points: Vec<String> = run
            .curve
            .iter()
            .map(|(x, y)| format!("{x:.0}: {y:.2}"))
            .collect();
        s.push_str(&format!(
            "- {} seed {}: {}\n",
            run.algorithm,
            run.seed,
            points.join(", ")
        ));
    }
    s.push_str(&format!(
        "\n![held-out accuracy against rollouts, mean ± sd per algorithm]({plot})\n"
    ));
    s
}

/// The commit of the working tree (`-dirty` when it has uncommitted changes).
fn current_commit() -> anyhow::Result<String> {
    let git = |args: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new("git")
            .args(args)
            .output()
            .context("running git (the study records the commit it ran at)")?;
        ensure!(out.status.success(), "git {} failed", args.join(" "));
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty();
    Ok(if dirty { format!("{head}-dirty") } else { head })
}

/// Today's date (UTC), `YYYY-MM-DD`.
fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(algorithm: &str, seed: u64, curve: &[f64]) -> RunFigures {
        let curve: Vec<(f64, f64)> = curve
            .iter()
            .enumerate()
            .map(|(i, &y)| (64.0 * i as f64, y))
            .collect();
        let best = curve[1..].iter().map(|p| p.1).fold(f64::MIN, f64::max);
        RunFigures {
            algorithm: algorithm.into(),
            recipe: "r.toml".into(),
            seed,
            commit: "abc".into(),
            before: curve[0].1,
            r#final: curve[curve.len() - 1].1,
            best,
            best_at_rollouts: 0.0,
            seconds: 10.0,
            curve,
        }
    }

    #[test]
    fn the_report_compares_dmpo_with_each_baseline_seed_by_seed() {
        let args = Args {
            tasks: vec![StudyTask::Sudoku],
            seeds: Some(2),
            runs: "runs/study".into(),
            out: "docs/results".into(),
            fresh: false,
            overrides: vec![],
        };
        let runs = vec![
            run("DMPO", 0, &[50.0, 60.0, 70.0]),
            run("DMPO", 1, &[50.0, 64.0, 62.0]),
            run("diffu-GRPO (d1)", 0, &[50.0, 55.0, 65.0]),
            run("diffu-GRPO (d1)", 1, &[50.0, 58.0, 66.0]),
            run("wd1", 0, &[50.0, 52.0, 54.0]),
            run("wd1", 1, &[50.0, 51.0, 53.0]),
        ];
        let r = report(StudyTask::Sudoku, &args, 2, runs).unwrap();
        let dmpo = &r.summary[0];
        assert_eq!((dmpo.algorithm.as_str(), dmpo.seeds), ("DMPO", 2));
        assert_eq!(dmpo.r#final.mean, 66.0);
        assert!((dmpo.r#final.sd - 32f64.sqrt()).abs() < 1e-12);
        assert_eq!((dmpo.change.min, dmpo.change.max), (12.0, 20.0));
        assert_eq!(dmpo.best.mean, 67.0);
        let d1 = &r.dmpo_lead[0];
        assert_eq!(d1.per_seed, vec![5.0, -4.0]);
        assert_eq!((d1.ahead_on, d1.mean), (1, 0.5));
        assert_eq!(r.dmpo_lead[1].ahead_on, 2);
        let md = markdown(&r, "sudoku.png");
        assert!(
            md.contains("| diffu-GRPO (d1) | +5.00 | -4.00 | +0.50 | 1 of 2 seeds |"),
            "{md}"
        );
        assert!(
            md.contains("cargo xtask study --tasks sudoku --seeds 2"),
            "{md}"
        );
        let band = curve_band("DMPO", &r.runs).unwrap();
        assert_eq!(
            band.points[2],
            (128.0, 66.0, 66.0 - 32f64.sqrt(), 66.0 + 32f64.sqrt())
        );
    }
}
