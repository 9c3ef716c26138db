//! Data parallelism on CPU peers in one process (burn-collective): 2 peers train as 1 — the same
//! metrics and the same weights after 3 steps of 2 updates each, for DMPO and diffu-GRPO — and
//! settings the peers cannot honour are refused before any work.

mod common;

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{backend::Backend, Tensor};
use common::metrics;
use dmpo_train::run_dir::StartMode;
use dmpo_train::trainer::{train, RunOptions};
use dmpo_train::Recipe;

type AB = burn::backend::Autodiff<burn::backend::Flex>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn recipe(out: &Path, name: &str, algorithm: &str, extra: &[&str]) -> Recipe {
    let r = root();
    let mut overrides: Vec<String> = vec![
        format!("model.path=\"{}\"", r.join("models/tiny-sudoku").display()),
        format!("run.output_dir=\"{}\"", out.display()),
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
    ];
    overrides.extend(extra.iter().map(|s| s.to_string()));
    Recipe::load(&r.join("recipes/tiny-sudoku.toml"), &overrides).unwrap()
}

fn options() -> RunOptions {
    RunOptions {
        start: StartMode::from_flags(false, false),
        quiet: true,
        skip_eval: true,
        stop_after: None,
    }
}

/// Every float parameter of the model in directory `dir`, in visiting order.
fn weights(dir: &Path) -> Vec<f32> {
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

/// The weights of the final checkpoint's Hugging Face export.
fn final_weights(run: &Path) -> Vec<f32> {
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    weights(&run.join("checkpoints").join(latest.trim()).join("hf"))
}

/// `|a - b| <= tol * max(|a|, |b|, 1e-3)` for every number of two JSON values of the same shape.
fn assert_close(a: &serde_json::Value, b: &serde_json::Value, tol: f64, at: &str) {
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

#[test]
fn two_peers_give_the_metrics_and_weights_of_one() {
    for algorithm in ["dmpo", "diffu_grpo"] {
        let tmp = tempfile::tempdir().unwrap();
        let runs: Vec<(Vec<serde_json::Value>, Vec<f32>)> = [1, 2]
            .iter()
            .map(|devices| {
                let name = format!("{algorithm}-{devices}");
                let set = format!("distributed.devices={devices}");
                let r = recipe(tmp.path(), &name, algorithm, &[&set]);
                let summary = train::<AB>(&r, Default::default(), &options()).unwrap();
                assert_eq!(summary.updates, 6, "{name}");
                (metrics(&r.run_dir()), final_weights(&r.run_dir()))
            })
            .collect();
        let ((one, w1), (two, w2)) = (&runs[0], &runs[1]);
        assert_eq!(one.len(), 3);
        for (step, (a, b)) in one.iter().zip(two).enumerate() {
            // The sample completion is the first row's on both; losses and rewards agree to
            // the order of float sums.
            assert_close(a, b, 1e-5, &format!("{algorithm} step {step}"));
        }
        // The runs moved the weights, alike.
        let initial = weights(&root().join("models/tiny-sudoku"));
        assert_ne!(w1, &initial, "{algorithm}: training changed nothing");
        assert_eq!(w1.len(), w2.len());
        let scale = w1.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = w1
            .iter()
            .zip(w2)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst <= 1e-5 * scale,
            "{algorithm}: weights differ by {worst} (largest weight {scale})"
        );
    }
}

#[test]
fn peer_counts_the_run_cannot_split_are_refused_by_name() {
    let r = root();
    let load = |extra: &[&str]| {
        let mut o = vec![format!(
            "model.path=\"{}\"",
            r.join("models/tiny-sudoku").display()
        )];
        o.extend(extra.iter().map(|s| s.to_string()));
        Recipe::load(&r.join("recipes/tiny-sudoku.toml"), &o)
    };
    for (extra, needle) in [
        (
            &["distributed.devices=0"][..],
            "must be in 1..=train.prompts_per_step",
        ),
        (
            &["distributed.devices=9"][..],
            "must be in 1..=train.prompts_per_step (8)",
        ),
        (
            &[
                "distributed.devices=2",
                "model.finetune=\"lora\"",
                "train.sync_ref_model=false",
                "lora.dropout=0.05",
            ][..],
            "needs `lora.dropout = 0`",
        ),
        (
            &["distributed.devices=2", "run.device=\"ndarray\""][..],
            "runs CPU peers on `run.device = \"flex\"`",
        ),
    ] {
        let e = load(extra).unwrap_err().to_string();
        assert!(
            e.contains("distributed.devices") && e.contains(needle),
            "{extra:?}: {e}"
        );
    }
    assert!(load(&["distributed.devices=8"]).is_ok());
}

#[test]
fn from_the_command_line_two_peers_write_the_metrics_of_one() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = root().join("recipes/tiny-sudoku.toml");
    let model = root().join("models/tiny-sudoku");
    let runs: Vec<Vec<serde_json::Value>> = [1, 2]
        .iter()
        .map(|devices| {
            let name = format!("cli-{devices}");
            let sets = [
                format!("model.path=\"{}\"", model.display()),
                format!("run.output_dir=\"{}\"", tmp.path().display()),
                format!("run.name=\"{name}\""),
                "train.steps=2".into(),
                "train.prompts_per_step=4".into(),
                format!("distributed.devices={devices}"),
            ];
            let mut args = vec![
                "train".to_string(),
                recipe.display().to_string(),
                "--skip-eval".into(),
                "--quiet".into(),
            ];
            for s in sets {
                args.extend(["--set".to_string(), s]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = common::dmpo(tmp.path(), &args);
            common::succeeds(&name, &out);
            metrics(&tmp.path().join(&name))
        })
        .collect();
    assert_eq!(runs[0].len(), 2);
    for (step, (a, b)) in runs[0].iter().zip(&runs[1]).enumerate() {
        assert_close(a, b, 1e-5, &format!("step {step}"));
    }
}
