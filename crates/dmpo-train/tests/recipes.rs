//! Every shipped recipe parses; malformed recipes are refused with the file and key named.

use std::path::{Path, PathBuf};

mod common;

use dmpo_train::recipe::{Algorithm, Finetune};
use dmpo_train::Recipe;

fn recipes_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../recipes")
}

fn err(text: &str, overrides: &[&str]) -> String {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Recipe::parse(text, Path::new("bad.toml"), &o)
        .unwrap_err()
        .to_string()
}

const MINIMAL: &str = r#"
[model]
path = "m"
[task]
name = "sudoku"
"#;

#[test]
fn shipped_recipes_parse_with_reference_defaults() {
    let mut n = 0;
    for entry in std::fs::read_dir(recipes_dir()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let r = Recipe::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("llada8b") && !name.ends_with("-d1.toml") {
                assert_eq!(r.train.group_size, 16);
                assert_eq!(r.train.num_iterations, 8);
                assert_eq!(r.lora.r, 128);
                assert_eq!(r.train.max_grad_norm, 0.2);
                assert_eq!(r.model.finetune, Finetune::Lora);
                assert_eq!(r.dmpo.alpha, 0.04);
            }
            n += 1;
        }
    }
    assert!(n >= 6, "found {n} recipes");
}

#[test]
fn defaults_follow_the_spec() {
    let r = Recipe::parse(MINIMAL, Path::new("m.toml"), &[]).unwrap();
    assert_eq!(r.train.algorithm, Algorithm::Dmpo);
    assert_eq!(
        (r.train.beta1, r.train.beta2, r.train.weight_decay),
        (0.9, 0.99, 0.1)
    );
    assert_eq!(r.train.lr, 1e-6);
    assert_eq!(r.dmpo.num_replicates, 4);
    assert_eq!(r.rollout.gen_length, 256);
    assert_eq!(r.rollout.steps, 128);
    assert_eq!(r.rollout.temperature, 0.2);
    assert_eq!(r.lora.alpha, 64.0);
}

#[test]
fn overrides_apply_and_are_checked() {
    let r = Recipe::parse(
        MINIMAL,
        Path::new("m.toml"),
        &[
            "train.steps=7".into(),
            "run.name=x".into(),
            "dmpo.baseline=mean".into(),
        ],
    )
    .unwrap();
    assert_eq!(r.train.steps, 7);
    assert_eq!(r.run.name, "x");
    assert_eq!(r.dmpo.baseline, dmpo_core::Baseline::Mean);
    assert!(err(MINIMAL, &["train.stepz=7"]).contains("stepz"));
    assert!(err(MINIMAL, &["steps"]).contains("not section.key=value"));
}

#[test]
fn unknown_keys_and_bad_values_are_named() {
    let e = err(&format!("{MINIMAL}\n[train]\nlearning_rate = 1.0\n"), &[]);
    assert!(e.contains("bad.toml") && e.contains("learning_rate"), "{e}");
    let e = err(&format!("{MINIMAL}\n[dmpo]\nalpah = 1.0\n"), &[]);
    assert!(e.contains("alpah"), "{e}");
    let e = err(&format!("{MINIMAL}\n[trian]\nsteps = 1\n"), &[]);
    assert!(e.contains("trian"), "{e}");
    let e = err("[model]\npath = \"m\"\n[task]\nname = \"chess\"\n", &[]);
    assert!(e.contains("task.name"), "{e}");
    let e = err(MINIMAL, &["train.group_size=1"]);
    assert!(e.contains("train.group_size"), "{e}");
    let e = err(MINIMAL, &["rollout.block_length=100"]);
    assert!(e.contains("rollout") && e.contains("block_length"), "{e}");
    let e = err(MINIMAL, &["dmpo.num_replicates=3"]);
    assert!(e.contains("num_replicates"), "{e}");
    let e = err(
        MINIMAL,
        &["train.sync_ref_model=true", "model.finetune=\"lora\""],
    );
    assert!(e.contains("train.sync_ref_model"), "{e}");
    let e = err(
        MINIMAL,
        &[
            "train.sync_ref_model=true",
            "model.finetune=\"full\"",
            "train.ref_model_mixup_alpha=0",
        ],
    );
    assert!(e.contains("train.ref_model_mixup_alpha"), "{e}");
    // ROAR's recorded log-likelihoods need ROAR, DMPO and an adapter-free reference.
    let e = err(MINIMAL, &["dmpo.rollout_elbo=false"]);
    assert!(e.contains("dmpo.rollout_elbo") && e.contains("roar"), "{e}");
    let e = err(
        MINIMAL,
        &[
            "dmpo.rollout_elbo=false",
            "rollout.method=\"roar\"",
            "model.finetune=\"full\"",
        ],
    );
    assert!(e.contains("dmpo.rollout_elbo") && e.contains("lora"), "{e}");
    let e = err(MINIMAL, &["rollout.wino_threshold=0.5"]);
    assert!(e.contains("wino_threshold") && e.contains("wino"), "{e}");
    let e = err(MINIMAL, &["rollout.factor=1.0", "rollout.threshold=0.9"]);
    assert!(e.contains("factor") && e.contains("threshold"), "{e}");
    let e = err(MINIMAL, &["eval.method=\"wino\"", "eval.cache=\"prefix\""]);
    assert!(e.contains("eval") && e.contains("cache"), "{e}");
    let e = err("[model\npath=", &[]);
    assert!(e.contains("bad.toml"), "{e}");
    let e = err("[task]\nname = \"sudoku\"\n", &[]);
    assert!(e.contains("model"), "{e}");
}

/// The eight paper recipes (DMPO and d1) start and run one step on flex, in their own dtype (bf16) and LoRA
/// targets, shrunk by overrides to the embedded tiny model (LLaDA layout) and one small step.
/// They used to die at the first rollout (f32 noise added to bf16 logits).
#[test]
fn paper_recipes_start_on_flex() {
    use dmpo_train::run_dir::StartMode;
    use dmpo_train::trainer::{train, RunOptions};
    let tmp = tempfile::tempdir().unwrap();
    let model = recipes_dir().join("../models/tiny-sudoku");
    // GSM8K and MATH read user-supplied files: two rows each.
    let (gsm8k, math, countdown, sudoku) = common::two_row_task_files(tmp.path());
    let mut runs = Vec::new();
    for (task, data) in [
        ("sudoku", &sudoku),
        ("countdown", &countdown),
        ("gsm8k", &gsm8k),
        ("math", &math),
    ] {
        runs.push((format!("llada8b-{task}"), data));
        runs.push((format!("llada8b-{task}-d1"), data));
    }
    for (name, data) in &runs {
        let mut o = common::one_tiny_step(&model, tmp.path(), name);
        o.push("eval.block_length=8".into());
        o.push(format!("task.train=\"{}\"", data.display()));
        if name.contains("gsm8k") || name.contains("math") {
            o.push(format!("task.eval=\"{}\"", data.display()));
        }
        let recipe = Recipe::load(&recipes_dir().join(format!("{name}.toml")), &o)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(recipe.model.dtype, dllm_model::WeightDType::BF16, "{name}");
        let options = RunOptions {
            start: StartMode::Fresh,
            quiet: true,
            skip_eval: true,
            stop_after: None,
        };
        let summary = train::<burn::backend::Autodiff<burn::backend::Flex>>(
            &recipe,
            Default::default(),
            &options,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(summary.steps, 1, "{name}");
        // docs/reference-parity.md row 10: the metrics the references log.
        let text = std::fs::read_to_string(recipe.run_dir().join("metrics.jsonl")).unwrap();
        let row: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        let finite = |k: &str| row[k].as_f64().is_some_and(f64::is_finite);
        for key in ["completion_length", "advantage_mean", "advantage_std"] {
            assert!(finite(key), "{name}: {key} = {}", row[key]);
        }
        let grpo = name.ends_with("-d1");
        assert_eq!(
            finite("clip_ratio"),
            grpo,
            "{name}: clip_ratio = {}",
            row["clip_ratio"]
        );
        assert_eq!(finite("kl"), grpo, "{name}: kl = {}", row["kl"]);
        assert_eq!(finite("coeff_mean"), !grpo, "{name}: coeff_mean");
        assert!(row["sample_completion"].is_string(), "{name}");
    }
}
