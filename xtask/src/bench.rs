//! `cargo xtask bench`: forward latency, one training step and sampler throughput on the
//! `fixtures/bench` model, each beside the PyTorch CPU reference figure and the ratio.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use burn::backend::Autodiff;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use dllm_model::backend::{dispatch, BackendKind, BackendTask};
use dllm_model::tensor_file::read_ints;
use dllm_model::{load_model, DiffusionLm, LoadOptions};
use dllm_sample::{generate, CacheKind, SamplerConfig};
use dmpo_core::masks::ReplicateMasks;
use dmpo_core::{wdce_loss_with_masks, DmpoConfig, ModelView, RolloutWeights, SequenceBatch};
use serde::Serialize;

/// Arguments of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to measure: all, forward, step (one DMPO optimisation step), sampler, ddp
    /// (data-parallel steps on 1, 2 and 4 CPU peers) or cache (where the cached samplers' time
    /// goes); the last two are not part of `all`.
    #[arg(default_value = "all")]
    pub what: String,
    /// Backends to run (default: every one compiled in).
    #[arg(long, value_delimiter = ',')]
    pub backend: Option<Vec<BackendKind>>,
    /// Timed repetitions (median reported) after one warm-up.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Benchmark fixture directory.
    #[arg(long, default_value = "fixtures/bench")]
    pub dir: PathBuf,
    /// Reference figures to compare with (default `<dir>/reference_pytorch_cpu.json`); write
    /// figures for this machine with `scripts/reference_bench.py`.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Benchmark a randomly initialised model of this LLaDA `config.json` (e.g.
    /// `fixtures/configs/llada-1b.json`, 1.3B parameters) on the same inputs instead of the
    /// weights in `--dir`; no reference figures apply.
    #[arg(long)]
    pub random_config: Option<PathBuf>,
    /// `ddp`: run as one process of an MPI row (started by `mpirun` from `bench ddp`).
    #[arg(long, hide = true)]
    pub mpi_worker: bool,
    /// `ddp`, with `--mpi-worker`: full fine-tuning instead of LoRA.
    #[arg(long, hide = true)]
    pub full: bool,
}

/// The model under test: the weights in `--dir`, or a seeded random one of `--random-config`.
pub fn bench_model<B: Backend>(a: &Args, device: &B::Device) -> anyhow::Result<DiffusionLm<B>> {
    match &a.random_config {
        Some(path) => {
            let config = dllm_model::ModelConfig::from_file(path)?;
            B::seed(device, 0);
            Ok(DiffusionLm::init(&config, device))
        }
        None => Ok(load_model::<B>(&a.dir, LoadOptions::default(), device)?),
    }
}

/// One measured operation.
#[derive(Debug, Serialize)]
pub struct Row {
    backend: String,
    operation: String,
    seconds: f64,
    unit: String,
    ours: f64,
    reference: Option<f64>,
    ratio: Option<f64>,
    note: String,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The median seconds of `reps` runs of `f` after one warm-up run, and the last result.
pub fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut out = f();
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        out = f();
        times.push(t.elapsed().as_secs_f64());
    }
    (median(times), out)
}

struct Bench<'a> {
    args: &'a Args,
    reference: serde_json::Value,
}

impl BackendTask for Bench<'_> {
    type Output = anyhow::Result<Vec<Row>>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<Vec<Row>> {
        let a = self.args;
        let backend = std::any::type_name::<B>()
            .rsplit("::")
            .next()
            .unwrap_or("?")
            .to_string();
        let model = bench_model::<B>(a, &device)?;
        let golden = a.dir.join("golden_bench.safetensors");
        let random = a.random_config.is_some();
        let reff = |k: &str| {
            if random {
                return None;
            }
            self.reference.get(k).and_then(|v| v.as_f64())
        };
        let mut rows = Vec::new();
        let mut row = |op: &str,
                       seconds: f64,
                       unit: &str,
                       ours: f64,
                       reference: Option<f64>,
                       note: String| {
            // Checks against the golden outputs mean nothing for random weights.
            let note = match &a.random_config {
                Some(c) => format!("random weights of {}", c.display()),
                None => note,
            };
            let r = Row {
                backend: backend.clone(),
                operation: op.into(),
                seconds,
                unit: unit.into(),
                ours,
                ratio: reference.map(|r| ours / r),
                reference,
                note,
            };
            if !a.json {
                eprintln!(
                    "{:<10} {:<34} {:>9.4} s  {:>10.1} {:<9} ref {:>10} ratio {}  {}",
                    r.backend,
                    r.operation,
                    r.seconds,
                    r.ours,
                    r.unit,
                    r.reference.map_or("-".into(), |v| format!("{v:.1}")),
                    r.ratio.map_or("-".into(), |v| format!("{v:.2}x")),
                    r.note
                );
            }
            rows.push(r);
        };
        if a.what == "all" || a.what == "forward" {
            let ids = read_ints(&golden, "bench_noisy_ids")?;
            let input =
                Tensor::<B, 2, Int>::from_data(TensorData::new(ids.values, [4, 256]), &device);
            let (s, logits) = time(a.reps, || {
                let l = model.forward(input.clone());
                let _ = l.clone().slice([0..1, 0..1, 0..1]).into_data();
                l
            });
            let argmax = logits
                .argmax(2)
                .into_data()
                .convert::<i64>()
                .to_vec::<i64>()
                .unwrap_or_default();
            let want = read_ints(&golden, "argmax_all")?.values;
            let agree = argmax.iter().zip(&want).filter(|(x, y)| x == y).count();
            let tps = 1024.0 / s;
            row(
                "forward b4 x 256",
                s,
                "tokens/s",
                tps,
                reff("a_forward_tokens_per_s"),
                format!("argmax agrees {agree}/1024"),
            );
        }
        if a.what == "all" || a.what == "step" {
            let (s, losses) = dmpo_step::<B>(a, &device)?;
            row(
                "DMPO step (WDCE fwd+bwd+AdamW) b4 x 256",
                s,
                "tokens/s",
                1024.0 / s,
                reff("b_train_tokens_per_s"),
                format!(
                    "losses {}",
                    losses
                        .iter()
                        .map(|l| format!("{l:.4}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            );
        }
        if a.what == "all" || a.what == "sampler" {
            let p = read_ints(&golden, "gen_prompts")?;
            let prompts: Vec<Vec<u32>> = p
                .values
                .chunks(64)
                .map(|r| r.iter().map(|&t| t as u32).collect())
                .collect();
            let base = SamplerConfig {
                gen_length: 192,
                block_length: 32,
                steps: 192,
                ..Default::default()
            };
            let want192 = read_ints(&golden, "gen_steps192_out")?.values;
            let variants: Vec<(&str, SamplerConfig, Option<f64>)> = vec![
                (
                    "generate exact steps 192",
                    base.clone(),
                    reff("c_generate_steps192_tokens_per_s"),
                ),
                (
                    "generate exact steps 96",
                    SamplerConfig {
                        steps: 96,
                        ..base.clone()
                    },
                    reff("d_generate_steps96_tokens_per_s"),
                ),
                (
                    "generate prefix cache steps 192",
                    SamplerConfig {
                        cache: CacheKind::Prefix,
                        ..base.clone()
                    },
                    reff("c_generate_steps192_tokens_per_s"),
                ),
                (
                    "generate dual cache steps 192",
                    SamplerConfig {
                        cache: CacheKind::Dual,
                        ..base.clone()
                    },
                    reff("c_generate_steps192_tokens_per_s"),
                ),
                (
                    "generate threshold 0.9 + prefix",
                    SamplerConfig {
                        cache: CacheKind::Prefix,
                        threshold: Some(0.9),
                        ..base.clone()
                    },
                    reff("c_generate_steps192_tokens_per_s"),
                ),
            ];
            // The DMPO reference's other rollout samplers (`SamplerConfig::label` names them).
            let others = [
                SamplerConfig {
                    factor: Some(1.0),
                    ..base.clone()
                },
                SamplerConfig {
                    cache: CacheKind::Prefix,
                    factor: Some(1.0),
                    ..base.clone()
                },
                SamplerConfig {
                    cache: CacheKind::Dual,
                    factor: Some(1.0),
                    ..base.clone()
                },
                SamplerConfig {
                    cache: CacheKind::Dual,
                    threshold: Some(0.9),
                    ..base.clone()
                },
                SamplerConfig {
                    method: dllm_sample::Method::Wino,
                    ..base.clone()
                },
                SamplerConfig {
                    method: dllm_sample::Method::Roar,
                    ..base.clone()
                },
            ];
            let variants = variants
                .into_iter()
                .map(|(name, c, reference)| (name.to_string(), c, reference))
                .chain(others.into_iter().map(|c| {
                    let name = format!("generate {}", c.label());
                    (name, c, reff("c_generate_steps192_tokens_per_s"))
                }));
            let reps = a.reps.clamp(1, 2);
            for (name, cfg, reference) in variants {
                let (s, out) = time(reps, || generate(&model, &prompts, &cfg).expect("generate"));
                let seqs: Vec<i64> = out.sequences().concat().iter().map(|&t| t as i64).collect();
                let same = seqs.iter().zip(&want192).filter(|(x, y)| x == y).count();
                let note = format!(
                    "nfe {} ({:.3} per token), tokens equal to reference steps-192 output: \
                     {same}/1024",
                    out.nfe,
                    out.nfe as f64 / cfg.gen_length as f64
                );
                row(&name, s, "tokens/s", 4.0 * 192.0 / s, reference, note);
            }
        }
        Ok(rows)
    }
}

/// Prompt length of the benchmark batch (the golden `bench_loss_mask` never masks it).
pub const BENCH_PROMPT: usize = 64;

/// One DMPO optimisation step as the reference's (b): WDCE loss on the golden batch
/// (`bench_tokens`, one replicate masked by `bench_loss_mask`), backward, AdamW (lr 1e-4,
/// weight decay 0.01). Returns the median seconds per step and the losses of every step.
fn dmpo_step<B: Backend>(a: &Args, device: &B::Device) -> anyhow::Result<(f64, Vec<f32>)> {
    type AB<B> = Autodiff<B>;
    let golden = a.dir.join("golden_bench.safetensors");
    let tokens = read_ints(&golden, "bench_tokens")?;
    let mask = read_ints(&golden, "bench_loss_mask")?;
    let (b, s) = (tokens.shape[0], tokens.shape[1]);
    let completion = s - BENCH_PROMPT;
    let ids = Tensor::<AB<B>, 2, Int>::from_data(TensorData::new(tokens.values, [b, s]), device);
    let batch = SequenceBatch::with_eos_index(ids, BENCH_PROMPT, vec![completion; b])?;
    let masks = ReplicateMasks::from_sequence_mask(&mask.values, b, s, BENCH_PROMPT)?;
    let rollout = RolloutWeights {
        group_size: b,
        w_plus: vec![0.4, 0.3, 0.2, 0.1],
        w_minus: vec![0.1, 0.2, 0.3, 0.4],
        ell_cur: vec![0.0; b],
        coeffs: vec![1.0],
    };
    let config = DmpoConfig {
        num_replicates: 1,
        antithetic: false,
        ..DmpoConfig::default()
    };
    let mut model: DiffusionLm<AB<B>> = bench_model::<AB<B>>(a, device)?;
    let mut optim = AdamWConfig::new()
        .with_weight_decay(0.01)
        .init::<AB<B>, DiffusionLm<AB<B>>>();
    let mut losses = Vec::new();
    let mut times = Vec::new();
    for i in 0..=a.reps.max(1) {
        let t = Instant::now();
        let out = wdce_loss_with_masks(
            &ModelView::policy(&model),
            &batch,
            &rollout,
            &config,
            &masks,
        )?;
        let loss: f32 = out
            .loss
            .clone()
            .into_data()
            .to_vec::<f32>()
            .ok()
            .and_then(|v| v.first().copied())
            .context("reading the loss")?;
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        model = optim.step(1e-4, model, grads);
        // Wait for the update (lazy backends) before stopping the clock.
        let _ = model.wte.val().slice([0..1, 0..1]).into_data();
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
        losses.push(loss);
    }
    Ok((median(times), losses))
}

/// Runs the benchmarks.
pub fn run(a: Args) -> anyhow::Result<()> {
    if a.what == "ddp" {
        return crate::bench_ddp::run(&a);
    }
    if a.what == "cache" {
        return crate::bench_cache::run(&a);
    }
    let reference_path = a
        .reference
        .clone()
        .unwrap_or_else(|| a.dir.join("reference_pytorch_cpu.json"));
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&reference_path)
            .with_context(|| format!("reading {}", reference_path.display()))?,
    )
    .with_context(|| format!("parsing {}", reference_path.display()))?;
    if !a.json {
        eprintln!(
            "reference: {} ({}, {})",
            reference_path.display(),
            reference.get("cpu").and_then(|v| v.as_str()).unwrap_or("?"),
            reference
                .get("torch")
                .and_then(|v| v.as_str())
                .unwrap_or("?")
        );
    }
    let backends = a.backend.clone().unwrap_or_else(BackendKind::compiled);
    let mut all = Vec::new();
    for b in backends {
        all.extend(dispatch(
            b,
            Bench {
                args: &a,
                reference: reference.clone(),
            },
        )??);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(())
}
