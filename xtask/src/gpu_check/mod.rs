//! `cargo xtask gpu-check …`: the steps `scripts/gpu-check.sh` runs on a GPU machine (and, as a
//! dry run, on a CPU), each a separate process under its own time limit:
//!
//! - `parity`: the backend against flex on the golden tiny model, f32 or bf16;
//! - `geometry`: the shapes to measure at a scale, the update's `micro_batch` fitted to the
//!   device by `dmpo plan`, written for both sides;
//! - `measure`: one operation on random weights made on the device — seconds, tokens per second,
//!   peak memory;
//! - `report`: `report.md` and `report.json` from what the steps left, beside PyTorch's figures
//!   (`scripts/reference_gpu.py`).
//!
//! docs/gpu.md describes the bundle, the run and the results.

mod geometry;
mod measure;
mod parity;
mod report;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use dllm_model::backend::BackendKind;
use dllm_model::WeightDType;
use serde::Serialize;

use crate::memory::MemoryProbe;
use geometry::{Geometry, Scale};
use measure::Op;
use report::OursFile;

/// Arguments of `cargo xtask gpu-check`.
#[derive(Debug, Parser)]
pub struct Args {
    #[command(subcommand)]
    step: Step,
}

#[derive(Debug, Subcommand)]
enum Step {
    /// The backend against flex on the golden tiny model (logits, greedy generations, one WDCE
    /// loss and gradient); exits 1 when a comparison fails.
    Parity {
        /// Backend to check.
        #[arg(long, default_value = "cuda")]
        backend: BackendKind,
        /// `f32` or `bf16`.
        #[arg(long)]
        dtype: WeightDType,
        /// The golden tiny model.
        #[arg(long, default_value = "fixtures/llada-tiny")]
        fixture: PathBuf,
        /// Where the report goes (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Where flex's cached-sampler tokens and WDCE loss go (f32), for the PyTorch side.
        #[arg(long)]
        ours_tiny: Option<PathBuf>,
    },
    /// The shapes measured at `scale`, fitted to the backend's device.
    Geometry {
        /// `tiny` (the golden tiny model) or `8b` (LLaDA-8B-Instruct's geometry).
        #[arg(long)]
        scale: Scale,
        /// The backend whose device the update's micro_batch is fitted to.
        #[arg(long, default_value = "cuda")]
        backend: BackendKind,
        /// Where the geometry goes (JSON).
        #[arg(long)]
        out: PathBuf,
        /// The device's memory in MiB (as `nvidia-smi` reports it), instead of asking the
        /// backend's driver: the PyTorch side still gets its geometry when ours cannot start.
        #[arg(long, requires = "device_name")]
        device_memory_mib: Option<u64>,
        /// The device's name, with `--device-memory-mib`.
        #[arg(long, requires = "device_memory_mib")]
        device_name: Option<String>,
    },
    /// One operation at a geometry, added to `--out` (exits 1 when it fails, recording why).
    Measure {
        /// The geometry file.
        #[arg(long)]
        geometry: PathBuf,
        /// Backend.
        #[arg(long, default_value = "cuda")]
        backend: BackendKind,
        /// The operation.
        #[arg(long)]
        op: Op,
        /// Our measurements (JSON), read, extended and rewritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// `report.md` and `report.json` in DIR from what the steps left there.
    Report {
        /// The check's output directory.
        dir: PathBuf,
    },
}

/// Writes `value` as pretty JSON to `path` (through a temporary file and a rename, so a step
/// killed while writing leaves the previous file).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(value)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Runs one step.
pub fn run(a: Args) -> anyhow::Result<()> {
    // Relative paths (fixtures, recipes, the geometry's config) are the repository's or the
    // bundle's: the current directory.
    let root = PathBuf::from(".");
    match a.step {
        Step::Parity {
            backend,
            dtype,
            fixture,
            out,
            ours_tiny,
        } => {
            let report = parity::run(backend, dtype, &fixture, ours_tiny.as_deref())?;
            write_json(&out, &report)?;
            for c in &report.comparisons {
                eprintln!(
                    "{backend} {}: {}: {:.3e} (tolerance {:.3e}){}",
                    report.dtype,
                    c.name,
                    c.difference,
                    c.tolerance,
                    if c.passed { "" } else { "  FAILED" }
                );
            }
            anyhow::ensure!(
                report.passed,
                "{backend} differs from flex in {}",
                report.dtype
            );
            Ok(())
        }
        Step::Geometry {
            scale,
            backend,
            out,
            device_memory_mib,
            device_name,
        } => {
            let (name, memory) = match (device_name, device_memory_mib) {
                (Some(name), Some(mib)) => (name, mib * 1024 * 1024),
                _ => {
                    let probe = MemoryProbe::for_backend(backend)?;
                    let memory = probe
                        .total_bytes()
                        .context("cannot read the device's memory")?;
                    (probe.device_name(), memory)
                }
            };
            let geometry = Geometry::new(scale, &root, name, memory)?;
            write_json(&out, &geometry)?;
            eprintln!(
                "{}: {:.1} GB; update micro_batch {} with gradient checkpointing, {} without",
                geometry.device,
                memory as f64 / 1e9,
                geometry.update.micro_batch,
                geometry.update.micro_batch_plain
            );
            Ok(())
        }
        Step::Measure {
            geometry,
            backend,
            op,
            out,
        } => {
            let geometry = Geometry::read(&geometry)?;
            let probe = MemoryProbe::for_backend(backend)?;
            let mut ours: OursFile = match std::fs::read_to_string(&out) {
                Ok(text) => serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", out.display()))?,
                Err(_) => OursFile::default(),
            };
            ours.backend = backend.to_string();
            ours.device = probe.device_name();
            eprintln!("gpu-check: {} on {backend} …", op.title(&geometry));
            // A kernel that runs out of device memory panics inside burn: caught, it is recorded
            // as this operation's error like any other.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                measure::measure(&geometry, &root, backend, op, &probe)
            }))
            .unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".to_string());
                Err(anyhow::anyhow!("panicked: {message}"))
            });
            let key = op.key().to_string();
            match &result {
                Ok(m) => {
                    eprintln!(
                        "gpu-check: {key}: {:.3} s{}, peak {:.2} GB",
                        m.seconds,
                        m.tokens_per_s
                            .map_or(String::new(), |t| format!(", {t:.0} tokens/s")),
                        m.peak_bytes as f64 / 1e9
                    );
                    ours.errors.remove(&key);
                    ours.measurements.insert(key, m.clone());
                }
                Err(e) => {
                    ours.errors.insert(key, format!("{e:#}"));
                }
            }
            write_json(&out, &ours)?;
            result.map(|_| ())
        }
        Step::Report { dir } => report::write(&dir),
    }
}
