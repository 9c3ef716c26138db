//! bf16 and f16 weights on flex: every sampler mode (temperature > 0, each cache, threshold
//! decoding, padding mask) generates, and one training step of every mode (DMPO with WDCE and
//! DDO, full and LoRA, diffu-GRPO, wd1) runs and applies a finite update. These crashed with a
//! dtype mismatch before logits and LoRA adapters were kept in f32.

mod common;

use common::metrics;
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

/// The backend's random generator (LoRA initialisation and dropout) is global to the process:
/// the tests of this file take turns so that one run's draws are never another's.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const HALF: [(WeightDType, &str); 2] = [(WeightDType::BF16, "bf16"), (WeightDType::F16, "f16")];

#[test]
fn every_sampler_mode_generates_from_half_precision_weights() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
        let model = load_model::<Flex>(
            &path,
            LoadOptions {
                dtype,
                quantize: None,
            },
            &Default::default(),
        )
        .unwrap();
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
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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

/// A bf16 LoRA run stopped after one step and resumed equals the uninterrupted run: the
/// checkpoint (f32 records) is loaded back into a bf16 base, not left in f32. Full fine-tuning in
/// bf16 refuses `--resume` with a clear error (its AdamW state would come back in f32).
#[test]
fn half_precision_runs_resume_exactly() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
    // LoRA, with rollouts long enough to earn rewards, so that the first step moves the adapter.
    let run = |name: &str, stop_after: Option<usize>, start: StartMode| {
        let n = format!("run.name=\"lora-{name}\"");
        let o = [
            "model.finetune=\"lora\"",
            "lora.r=4",
            "rollout.gen_length=24",
            "rollout.steps=24",
            "train.steps=2",
            "train.checkpoint_every=1",
            n.as_str(),
        ];
        let r = recipe(tmp.path(), "bf16", &o);
        let options = RunOptions {
            start,
            quiet: true,
            skip_eval: true,
            stop_after,
        };
        train::<AB>(&r, Default::default(), &options).unwrap_or_else(|e| panic!("{name}: {e}"));
        r.run_dir()
    };
    let whole = run("whole", None, StartMode::Fresh);
    run("part", Some(1), StartMode::Fresh);
    let part = run("part", None, StartMode::Resume);
    let (a, b) = (metrics(&whole), metrics(&part));
    assert!(
        a[0]["grad_norm"].as_f64().unwrap() > 0.0,
        "the first step updates the adapter"
    );
    assert_eq!(a, b, "bf16 LoRA: resumed metrics differ");
}

/// One LoRA DMPO step on an NF4 base equals the same step on its decoded weights (a dense
/// checkpoint holding exactly the values the NF4 layers decode to): the rollout, rewards,
/// losses and the trained adapter agree to f32 rounding. The NF4 base's products decode its
/// weight panel by panel inside the kernel; the dense one multiplies the stored matrix.
#[test]
fn a_lora_step_on_an_nf4_base_equals_the_step_on_its_decoded_weights() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let source = root().join("models/tiny-sudoku");
    let nf4 = tmp.path().join("nf4");
    dllm_model::quantize_checkpoint::quantize_checkpoint(&source, &nf4, |_, _| {}).unwrap();
    let decoded = tmp.path().join("decoded");
    let options = LoadOptions {
        dtype: WeightDType::F32,
        quantize: None,
    };
    let model = load_model::<Flex>(&nf4, options, &Default::default()).unwrap();
    assert!(model.has_nf4_weights());
    dllm_model::save_model(&model, &decoded).unwrap();
    std::fs::copy(nf4.join("tokenizer.json"), decoded.join("tokenizer.json")).unwrap();
    let run = |model: &Path, name: &str| {
        let o = [
            format!("model.path=\"{}\"", model.display()),
            format!("run.name=\"{name}\""),
            "model.finetune=\"lora\"".into(),
            "lora.r=4".into(),
            "rollout.gen_length=24".into(),
            "rollout.steps=24".into(),
        ];
        let o: Vec<&str> = o.iter().map(String::as_str).collect();
        let r = recipe(tmp.path(), "f32", &o);
        let options = RunOptions {
            quiet: true,
            skip_eval: true,
            ..Default::default()
        };
        let s = train::<AB>(&r, Default::default(), &options).unwrap();
        assert_eq!((s.updates, s.skipped), (1, 0), "{name}");
        tmp.path().join(name)
    };
    let (a, b) = (run(&nf4, "on-nf4"), run(&decoded, "on-decoded"));
    let (ma, mb) = (metrics(&a), metrics(&b));
    common::assert_close(&ma[0], &mb[0], 1e-5, "metrics");
    assert!(ma[0]["reward_mean"].as_f64().unwrap() > 0.0, "{}", ma[0]);
    let adapter = |run: &Path| {
        let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
        let file = run.join(format!(
            "checkpoints/{}/adapter/adapter_model.safetensors",
            latest.trim()
        ));
        let weights = dllm_model::WeightFiles::open_file(&file).unwrap();
        weights
            .summary()
            .into_iter()
            .map(|(name, (_, shape))| {
                let t = weights.read(&name, &shape, WeightDType::F32).unwrap();
                (name, t.values.to_f32())
            })
            .collect::<Vec<_>>()
    };
    let (wa, wb) = (adapter(&a), adapter(&b));
    assert_eq!(wa.len(), wb.len());
    for ((n, x), (_, y)) in wa.iter().zip(&wb) {
        let d = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(d <= 1e-5, "{n}: {d}");
    }
}

/// A run that quantises at load evaluates on the stored base by default (the references'
/// protocol): before training its evaluation equals a dense run's (a fresh adapter adds zero);
/// `eval.base = "training"` evaluates the NF4 base instead, and its completions differ.
#[test]
fn an_nf4_run_evaluates_on_the_stored_base_unless_told() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let mut o = vec![
            format!("run.name=\"{name}\""),
            "model.finetune=\"lora\"".to_string(),
            "lora.r=4".to_string(),
            "eval.limit=32".to_string(),
        ];
        o.extend(extra.iter().map(|s| s.to_string()));
        let o: Vec<&str> = o.iter().map(String::as_str).collect();
        let r = recipe(tmp.path(), "f32", &o);
        let options = RunOptions {
            quiet: true,
            ..Default::default()
        };
        train::<AB>(&r, Default::default(), &options).unwrap();
        let dir = tmp.path().join(name);
        let file = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("eval_before_len"))
            })
            .expect("an evaluation before training");
        std::fs::read_to_string(file).unwrap()
    };
    let dense = run("dense", &[]);
    let stored = run("nf4-stored", &["model.quantize=\"nf4\""]);
    let training = run(
        "nf4-training",
        &["model.quantize=\"nf4\"", "eval.base=\"training\""],
    );
    assert_eq!(stored, dense, "the stored base, as a dense run");
    assert_ne!(training, dense, "the NF4 base answers differently");
}
