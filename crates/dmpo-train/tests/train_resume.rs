//! End-to-end training on the embedded tiny model: a run that is stopped and resumed produces
//! the same metrics as an uninterrupted one, checkpoints are complete, and bad inputs fail
//! before any training.

mod common;

use common::metrics;
use std::path::{Path, PathBuf};

use dmpo_train::run_dir::StartMode;
use dmpo_train::trainer::{train, RunOptions};
use dmpo_train::Recipe;

type AB = burn::backend::Autodiff<burn::backend::Flex>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn recipe(out: &Path, name: &str, algorithm: &str, steps: usize) -> Recipe {
    recipe_with(out, name, algorithm, steps, &[])
}

fn recipe_with(out: &Path, name: &str, algorithm: &str, steps: usize, extra: &[&str]) -> Recipe {
    let r = root();
    let mut overrides: Vec<String> = vec![
        format!("model.path=\"{}\"", r.join("models/tiny-sudoku").display()),
        format!("run.output_dir=\"{}\"", out.display()),
        format!("run.name=\"{name}\""),
        format!("train.algorithm=\"{algorithm}\""),
        format!("train.steps={steps}"),
        "train.prompts_per_step=2".into(),
        "train.group_size=4".into(),
        "train.num_iterations=2".into(),
        "train.micro_batch=4".into(),
        "train.checkpoint_every=1".into(),
        "dmpo.num_replicates=2".into(),
        "eval.limit=4".into(),
        // A fixed reference unless a test asks for a moving one.
        "train.sync_ref_model=false".into(),
    ];
    overrides.extend(extra.iter().map(|s| s.to_string()));
    Recipe::load(&r.join("recipes/tiny-sudoku.toml"), &overrides).unwrap()
}

fn quiet(resume: bool) -> RunOptions {
    RunOptions {
        start: StartMode::from_flags(resume, false),
        quiet: true,
        skip_eval: true,
        stop_after: None,
    }
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    for algorithm in ["dmpo", "diffu_grpo"] {
        check_resume(algorithm, &[]);
    }
}

#[test]
fn resumed_run_with_a_moving_reference_equals_uninterrupted_run() {
    let sync = [
        "train.sync_ref_model=true",
        "train.ref_model_sync_steps=1",
        "train.ref_model_mixup_alpha=0.5",
    ];
    let synced = check_resume("dmpo", &sync);
    // The reference moved: from the second step on, log_rnd differs from a fixed reference.
    let tmp = tempfile::tempdir().unwrap();
    let fixed = recipe(tmp.path(), "fixed", "dmpo", 3);
    train::<AB>(&fixed, Default::default(), &quiet(false)).unwrap();
    let fixed = metrics(&fixed.run_dir());
    assert_eq!(synced[0], fixed[0], "the first step runs before any sync");
    assert_ne!(synced[2]["log_rnd_mean"], fixed[2]["log_rnd_mean"]);
}

/// Runs 3 steps uninterrupted, and 2 + resumed 1, and checks both give the same metrics;
/// returns them.
fn check_resume(algorithm: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    {
        let tmp = tempfile::tempdir().unwrap();
        let full = recipe_with(tmp.path(), "full", algorithm, 3, extra);
        train::<AB>(&full, Default::default(), &quiet(false)).unwrap();

        // The same run stopped after 2 steps (the 3-step cosine schedule unchanged), then
        // resumed to 3.
        let part = recipe_with(tmp.path(), "part", algorithm, 3, extra);
        let stopped = RunOptions {
            stop_after: Some(2),
            ..quiet(false)
        };
        assert_eq!(
            train::<AB>(&part, Default::default(), &stopped)
                .unwrap()
                .steps,
            2
        );
        let resumed = recipe_with(tmp.path(), "part", algorithm, 3, extra);
        let s = train::<AB>(&resumed, Default::default(), &quiet(true)).unwrap();
        assert_eq!(s.steps, 3);

        let a = metrics(&full.run_dir());
        let b = metrics(&resumed.run_dir());
        assert_eq!(a.len(), 3);
        assert_eq!(a, b, "{algorithm}: resumed metrics differ");
        let ckpt = resumed.run_dir().join("checkpoints/step-000003");
        for f in [
            "model.bin",
            "optimizer.bin",
            "state.json",
            "hf/model.safetensors",
            "hf/config.json",
            "hf/tokenizer.json",
        ] {
            assert!(ckpt.join(f).is_file(), "{f} missing in {}", ckpt.display());
        }
        let moving_reference = extra.contains(&"train.sync_ref_model=true");
        assert_eq!(ckpt.join("reference.bin").is_file(), moving_reference);
        assert!(a
            .iter()
            .all(|m| m["loss"].as_f64().is_some_and(f64::is_finite)));
        a
    }
}

#[test]
fn bad_inputs_fail_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let mut r = recipe(tmp.path(), "missing", "dmpo", 1);
    r.model.path = tmp.path().join("no-such-model");
    let e = train::<AB>(&r, Default::default(), &quiet(false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no-such-model"), "{e}");
    assert!(!r.run_dir().join("metrics.jsonl").exists());

    let empty = tmp.path().join("empty.csv");
    std::fs::write(&empty, "Puzzle,Solution\n").unwrap();
    let mut r = recipe(tmp.path(), "empty", "dmpo", 1);
    r.task.train = empty.display().to_string();
    let e = train::<AB>(&r, Default::default(), &quiet(false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty.csv"), "{e}");
    assert!(!r.run_dir().join("metrics.jsonl").exists());
}
