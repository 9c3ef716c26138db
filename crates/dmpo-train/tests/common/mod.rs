//! Helpers of the tests that run the `dmpo` binary: running it, asserting a clean failure, copies
//! of the tiny model, and short training runs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `dmpo args…` in `dir`.
pub fn dmpo(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dmpo"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("dmpo runs")
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts a clean failure whose message contains every one of `needles`.
#[track_caller]
pub fn fails(case: &str, out: &Output, needles: &[&str]) {
    let t = text(out);
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "{case}: exit status {:?} (1 or 2 expected; a signal means an abort):\n{t}",
        out.status
    );
    assert!(!t.contains("panicked"), "{case}: panicked:\n{t}");
    for n in needles {
        assert!(t.contains(n), "{case}: message lacks `{n}`:\n{t}");
    }
    assert!(t.len() < 4000, "{case}: message of {} bytes", t.len());
}

#[track_caller]
pub fn succeeds(case: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{case}: {:?}\n{}",
        out.status,
        text(out)
    );
}

/// A copy of the tiny model in `dir/name`, its `config.json` edited by `edit`.
pub fn model_copy(dir: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let from = root().join("models/tiny-sudoku");
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(from.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(to.join("config.json"), config.to_string()).unwrap();
    to
}

/// `dmpo train RECIPE --quiet` with every one of `sets`, then `extra`, as `--set` overrides.
pub fn train_command(recipe: &Path, sets: &[String], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "train".into(),
        recipe.display().to_string(),
        "--quiet".into(),
    ];
    for s in sets.iter().map(String::as_str).chain(extra.iter().copied()) {
        args.push("--set".into());
        args.push(s.to_string());
    }
    args
}

/// `dmpo train` arguments for a one-step run of the tiny recipe in `dir` (model copy `model`).
pub fn train_args(model: &Path, extra: &[&str]) -> Vec<String> {
    let sets = [
        format!("model.path=\"{}\"", model.display()),
        "run.output_dir=\"runs\"".into(),
        "run.name=\"r\"".into(),
        "train.steps=1".into(),
        "train.prompts_per_step=2".into(),
        "train.group_size=4".into(),
        "train.num_iterations=1".into(),
        "train.micro_batch=8".into(),
        "train.checkpoint_every=1".into(),
        "dmpo.num_replicates=2".into(),
        "rollout.gen_length=8".into(),
        "rollout.block_length=8".into(),
        "rollout.steps=8".into(),
        "eval.limit=4".into(),
        "eval.gen_lengths=[8]".into(),
    ];
    train_command(&root().join("recipes/tiny-sudoku.toml"), &sets, extra)
}

/// The overrides of the data-parallel tests' run of the tiny model: 3 steps of 2 updates, 16
/// rows (4 prompts × 4), two groups per pass, a checkpoint every step, named `name` in `out`.
pub fn three_step_overrides(out: &str, name: &str, algorithm: &str) -> Vec<String> {
    vec![
        format!(
            "model.path=\"{}\"",
            root().join("models/tiny-sudoku").display()
        ),
        format!("run.output_dir=\"{out}\""),
        format!("run.name=\"{name}\""),
        format!("train.algorithm=\"{algorithm}\""),
        "train.steps=3".into(),
        "train.prompts_per_step=4".into(),
        "train.group_size=4".into(),
        "train.num_iterations=2".into(),
        // Two groups per pass: one peer runs two passes per update, each of two peers one.
        "train.micro_batch=8".into(),
        "train.checkpoint_every=1".into(),
        "dmpo.num_replicates=2".into(),
        "train.sync_ref_model=false".into(),
    ]
}

pub fn train(dir: &Path, model: &Path, extra: &[&str], flags: &[&str]) -> Output {
    let mut args = train_args(model, extra);
    args.extend(flags.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    dmpo(dir, &refs)
}

/// The rows of a run's `metrics.jsonl` without their timing fields (what two runs that should
/// agree must agree on).
pub fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("seconds");
            o.remove("rollout_tokens_per_s");
            v
        })
        .collect()
}

/// `|a - b| <= tol * max(|a|, |b|, 1e-3)` for every number of two JSON values of the same shape.
pub fn assert_close(a: &serde_json::Value, b: &serde_json::Value, tol: f64, at: &str) {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            let scale = x.abs().max(y.abs()).max(1e-3);
            assert!((x - y).abs() <= tol * scale, "{at}: {x} vs {y}");
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: keys");
            for (k, v) in x {
                assert_close(v, &y[k], tol, &format!("{at}.{k}"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: lengths");
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                assert_close(v, w, tol, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

/// Two-row training files of each task in `dir` (GSM8K and MATH read user-supplied files, and
/// the generated tasks read them too when given): `(gsm8k, math, countdown, sudoku)`.
pub fn two_row_task_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    (
        write(
            "gsm8k.jsonl",
            "{\"question\": \"What is 2 + 3?\", \"answer\": \"2 + 3 = 5\\n#### 5\"}\n\
             {\"question\": \"What is 4 - 1?\", \"answer\": \"4 - 1 = 3\\n#### 3\"}\n",
        ),
        write(
            "math.jsonl",
            "{\"problem\": \"Compute 1 + 1.\", \"solution\": \"$\\\\boxed{2}$\"}\n\
             {\"problem\": \"Compute 2 + 2.\", \"solution\": \"$\\\\boxed{4}$\"}\n",
        ),
        write(
            "countdown.jsonl",
            "{\"nums\": [1, 2, 3], \"target\": 6}\n{\"nums\": [4, 5, 6], \"target\": 15}\n",
        ),
        write(
            "sudoku.csv",
            "Puzzle,Solution\n1234341221434321,1234341221434321\n0234341221434321,1234341221434321\n",
        ),
    )
}

/// Overrides that shrink a paper recipe to one tiny step on a tiny model at `model`, writing
/// the run `name` under `out`.
pub fn one_tiny_step(model: &Path, out: &Path, name: &str) -> Vec<String> {
    let mut o = vec![
        format!("model.path=\"{}\"", model.display()),
        format!("run.output_dir=\"{}\"", out.display()),
        format!("run.name=\"{name}\""),
    ];
    o.extend(
        [
            "train.steps=1",
            "train.prompts_per_step=1",
            "train.group_size=2",
            "train.num_iterations=1",
            "train.micro_batch=2",
            "train.loss_unit_rows=2",
            "task.holdout=0",
            "lora.r=4",
            "dmpo.num_replicates=2",
            "rollout.gen_length=16",
            "rollout.block_length=8",
            "rollout.steps=8",
            "eval.gen_lengths=[16]",
            "eval.limit=2",
        ]
        .map(String::from),
    );
    o
}

/// Every float parameter of the model in directory `dir`, in visiting order.
pub fn weights(dir: &Path) -> Vec<f32> {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::{backend::Backend, Tensor};
    struct Collect(Vec<f32>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let data = param.val().into_data().convert::<f32>();
            self.0.extend(data.iter::<f32>());
        }
    }
    let model =
        dllm_model::load_model::<burn::backend::Flex>(dir, Default::default(), &Default::default())
            .unwrap();
    let mut all = Collect(Vec::new());
    model.visit(&mut all);
    all.0
}

/// The weights of a run's final checkpoint (its Hugging Face export).
pub fn final_weights(run: &Path) -> Vec<f32> {
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    weights(&run.join("checkpoints").join(latest.trim()).join("hf"))
}

/// Two runs' weights agree within `1e-5` of the largest weight.
#[track_caller]
pub fn assert_same_weights(one: &[f32], many: &[f32], at: &str) {
    assert_eq!(one.len(), many.len(), "{at}");
    let scale = one.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = one
        .iter()
        .zip(many)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= 1e-5 * scale,
        "{at}: weights differ by {worst} (largest weight {scale})"
    );
}
