//! `cargo xtask bench`: forward latency, one training step and sampler throughput on the
//! `fixtures/bench` model, each beside the PyTorch CPU reference figure and the ratio.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use dllm_model::backend::{dispatch, BackendKind, BackendTask};
use dllm_model::tensor_file::read_ints;
use dllm_model::{load_model, LoadOptions};
use dllm_sample::{generate, CacheKind, SamplerConfig};
use serde::Serialize;

/// Arguments of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to measure: all, forward, step, sampler.
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, T) {
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
        let model = load_model::<B>(&a.dir, LoadOptions::default(), &device)?;
        let golden = a.dir.join("golden_bench.safetensors");
        let reff = |k: &str| self.reference.get(k).and_then(|v| v.as_f64());
        let mut rows = Vec::new();
        let mut row = |op: &str,
                       seconds: f64,
                       unit: &str,
                       ours: f64,
                       reference: Option<f64>,
                       note: String| {
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
            let reps = a.reps.clamp(1, 2);
            for (name, cfg, reference) in variants {
                let (s, out) = time(reps, || generate(&model, &prompts, &cfg).expect("generate"));
                let seqs: Vec<i64> = out.sequences().concat().iter().map(|&t| t as i64).collect();
                let same = seqs.iter().zip(&want192).filter(|(x, y)| x == y).count();
                let note = format!(
                    "nfe {}, tokens equal to reference steps-192 output: {same}/1024",
                    out.nfe
                );
                row(name, s, "tokens/s", 4.0 * 192.0 / s, reference, note);
            }
        }
        Ok(rows)
    }
}

/// Runs the benchmarks.
pub fn run(a: Args) -> anyhow::Result<()> {
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        a.dir.join("reference_pytorch_cpu.json"),
    )?)?;
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
