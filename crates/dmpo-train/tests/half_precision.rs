//! bf16 and f16 weights on flex: every sampler mode (temperature > 0, each cache, threshold
//! decoding, padding mask) generates, and one training step of every mode (DMPO with WDCE and
//! DDO, full and LoRA, diffu-GRPO, wd1) runs and applies a finite update. These crashed with a
//! dtype mismatch before logits and LoRA adapters were kept in f32.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use dllm_model::{load_model, LoadOptions, WeightDType};
use dllm_sample::{generate, CacheKind, SamplerConfig};
use dmpo_train::run_dir::StartMode;
use dmpo_train::trainer::{train, RunOptions};
use dmpo_train::Recipe;

type AB = Autodiff<Flex>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const HALF: [(WeightDType, &str); 2] = [(WeightDType::BF16, "bf16"), (WeightDType::F16, "f16")];

#[test]
fn every_sampler_mode_generates_from_half_precision_weights() {
    let path = root().join("models/tiny-sudoku");
    let prompts = vec![vec![7u32, 8, 9, 10, 11], vec![12u32, 13, 14]];
    let base = SamplerConfig {
        gen_length: 8,
        block_length: 4,
        steps: 4,
        temperature: 1.0,
        ..SamplerConfig::default()
    };
    let modes = [
        ("exact", base.clone()),
        (
            "prefix",
            SamplerConfig {
                cache: CacheKind::Prefix,
                ..base.clone()
            },
        ),
        (
            "dual",
            SamplerConfig {
                cache: CacheKind::Dual,
                ..base.clone()
            },
        ),
        (
            "threshold",
            SamplerConfig {
                threshold: Some(0.5),
                cache: CacheKind::Prefix,
                ..base.clone()
            },
        ),
        (
            "padding mask",
            SamplerConfig {
                padding_mask: true,
                ..base.clone()
            },
        ),
        (
            "greedy",
            SamplerConfig {
                temperature: 0.0,
                ..base.clone()
            },
        ),
    ];
    for (dtype, label) in HALF {
        let model = load_model::<Flex>(&path, LoadOptions { dtype }, &Default::default()).unwrap();
        for (mode, config) in &modes {
            let out = generate(&model, &prompts, config)
                .unwrap_or_else(|e| panic!("{label} {mode}: {e}"));
            assert_eq!(out.completions.len(), 2, "{label} {mode}");
            assert!(
                out.completions.iter().all(|c| c.len() == 8),
                "{label} {mode}: completions of the requested length"
            );
        }
    }
}

fn recipe(out: &Path, dtype: &str, extra: &[&str]) -> Recipe {
    let r = root();
    let mut overrides: Vec<String> = vec![
        format!("model.path=\"{}\"", r.join("models/tiny-sudoku").display()),
        format!("model.dtype=\"{dtype}\""),
        format!("run.output_dir=\"{}\"", out.display()),
        "train.steps=1".into(),
        "train.prompts_per_step=2".into(),
        "train.group_size=4".into(),
        "train.num_iterations=1".into(),
        "train.micro_batch=4".into(),
        "train.sync_ref_model=false".into(),
        "dmpo.num_replicates=2".into(),
        "rollout.gen_length=8".into(),
        "rollout.block_length=8".into(),
        "rollout.steps=8".into(),
    ];
    overrides.extend(extra.iter().map(|s| s.to_string()));
    Recipe::load(&r.join("recipes/tiny-sudoku.toml"), &overrides).unwrap()
}

#[test]
fn every_training_mode_steps_on_half_precision_weights() {
    let modes: [(&str, &[&str]); 6] = [
        ("dmpo-full", &[]),
        ("dmpo-ddo", &["dmpo.loss=\"ddo\""]),
        ("dmpo-lora", &["model.finetune=\"lora\"", "lora.r=4"]),
        ("dmpo-prefix-cache", &["rollout.cache=\"prefix\""]),
        ("diffu-grpo", &["train.algorithm=\"diffu_grpo\""]),
        (
            "wd1-lora",
            &[
                "train.algorithm=\"wd1\"",
                "model.finetune=\"lora\"",
                "lora.r=4",
            ],
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for (_, dtype) in HALF {
        for (mode, extra) in modes {
            let name = format!("run.name=\"{mode}-{dtype}\"");
            let extra: Vec<&str> = extra.iter().copied().chain([name.as_str()]).collect();
            let r = recipe(tmp.path(), dtype, &extra);
            let options = RunOptions {
                quiet: true,
                skip_eval: true,
                ..Default::default()
            };
            let s = train::<AB>(&r, Default::default(), &options)
                .unwrap_or_else(|e| panic!("{mode} {dtype}: {e}"));
            assert_eq!(s.steps, 1, "{mode} {dtype}");
            assert_eq!(
                (s.updates, s.skipped),
                (1, 0),
                "{mode} {dtype}: one finite update applied"
            );
        }
    }
}

/// Metrics rows without their timings.
fn metrics(run: &Path) -> Vec<serde_json::Value> {
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

/// A bf16 LoRA run stopped after one step and resumed equals the uninterrupted run: the
/// checkpoint (f32 records) is loaded back into a bf16 base, not left in f32. Full fine-tuning in
/// bf16 refuses `--resume` with a clear error (its AdamW state would come back in f32).
#[test]
fn half_precision_runs_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let o = [
            "train.steps=2",
            "train.checkpoint_every=1",
            "run.name=\"full\"",
        ];
        let r = recipe(tmp.path(), "bf16", &o);
        let options = |start, stop_after| RunOptions {
            start,
            quiet: true,
            skip_eval: true,
            stop_after,
        };
        train::<AB>(&r, Default::default(), &options(StartMode::Fresh, Some(1))).unwrap();
        let err = train::<AB>(&r, Default::default(), &options(StartMode::Resume, None))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--resume of full fine-tuning"), "{err}");
    }
    for (mode, extra) in [("lora", &["model.finetune=\"lora\"", "lora.r=4"][..])] {
        let run = |name: &str, stop_after: Option<usize>, start: StartMode| {
            let n = format!("run.name=\"{mode}-{name}\"");
            let mut o: Vec<&str> = extra.to_vec();
            o.extend(["train.steps=2", "train.checkpoint_every=1", n.as_str()]);
            let r = recipe(tmp.path(), "bf16", &o);
            let options = RunOptions {
                start,
                quiet: true,
                skip_eval: true,
                stop_after,
            };
            train::<AB>(&r, Default::default(), &options)
                .unwrap_or_else(|e| panic!("{mode} {name}: {e}"));
            r.run_dir()
        };
        let whole = run("whole", None, StartMode::Fresh);
        run("part", Some(1), StartMode::Fresh);
        let part = run("part", None, StartMode::Resume);
        assert_eq!(
            metrics(&whole),
            metrics(&part),
            "{mode}: resumed metrics differ"
        );
    }
}
