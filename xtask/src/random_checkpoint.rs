//! `cargo xtask random-checkpoint --config CONFIG --out DIR [--shards N]`: a checkpoint of random
//! bf16 weights in the exact layout of the config's family, LLaDA or Dream (tensor names,
//! `[out, in]` linear weights, bf16, one `model.safetensors` or `N` shards with
//! `model.safetensors.index.json`), so that the full-size
//! paths (`cargo xtask scale`, `dmpo plan`) run without downloading 16 GB.
//!
//! Written streaming: the safetensors header first, then one tensor at a time, each generated
//! into its own buffer as it is written (the largest, LLaDA-8B's embedding table, is 1 GiB), in
//! parallel chunks from a seeded generator, so the same seed gives the same bytes. Matrices are
//! uniform with standard deviation `--std` (0.02, LLaDA's `init_std`), norm weights one, Dream's
//! q/k/v biases zero.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use dllm_model::{checkpoint_tensors, ModelConfig, TensorRole};
use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use safetensors::{Dtype, View};

/// Arguments of `cargo xtask random-checkpoint`.
#[derive(Debug, Parser)]
pub struct Args {
    /// A LLaDA or Dream `config.json` (e.g. `fixtures/configs/llada-8b-instruct.json`,
    /// `fixtures/configs/dream-7b-instruct.json`).
    #[arg(long)]
    pub config: PathBuf,
    /// Output directory (created; its config.json and weight files are replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of safetensors shards (LLaDA-8B-Instruct ships 6); 1 writes `model.safetensors`.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// Seed of the weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Standard deviation of the matrices' entries.
    #[arg(long, default_value_t = 0.02)]
    pub std: f64,
}

/// Values per generator stream: each chunk of a tensor has its own seeded stream, so chunks are
/// generated in parallel and the result does not depend on the thread count.
const CHUNK: usize = 1 << 20;

/// One tensor to write: generated when safetensors asks for its bytes.
struct RandomTensor {
    shape: Vec<usize>,
    role: TensorRole,
    /// Seed of this tensor's streams.
    seed: u64,
    std: f64,
    /// Advances the progress bar by the bytes written.
    progress: indicatif::ProgressBar,
}

impl RandomTensor {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

impl View for &RandomTensor {
    fn dtype(&self) -> Dtype {
        Dtype::BF16
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let mut bytes = vec![0u8; 2 * self.len()];
        // Uniform on [-a, a] has standard deviation a / sqrt(3).
        let a = (self.std * 3f64.sqrt()) as f32;
        bytes
            .par_chunks_mut(2 * CHUNK)
            .enumerate()
            .for_each(|(chunk, out)| {
                let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ (chunk as u64) << 20);
                for pair in out.chunks_exact_mut(2) {
                    let value = match self.role {
                        TensorRole::Matrix => rng.random_range(-a..=a),
                        TensorRole::Norm => 1.0,
                        TensorRole::Bias => 0.0,
                    };
                    pair.copy_from_slice(&bf16::from_f32(value).to_le_bytes());
                }
            });
        self.progress.inc(bytes.len() as u64);
        Cow::Owned(bytes)
    }
    fn data_len(&self) -> usize {
        2 * self.len()
    }
}

/// Writes the checkpoint.
pub fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(a.shards >= 1, "--shards must be at least 1");
    let config = ModelConfig::from_file(&a.config)?;
    let tensors = checkpoint_tensors(&config);
    anyhow::ensure!(
        a.shards <= tensors.len(),
        "--shards {} is more than the {} tensors of {}",
        a.shards,
        tensors.len(),
        a.config.display()
    );
    anyhow::ensure!(
        a.std.is_finite() && a.std > 0.0,
        "--std must be positive, got {}",
        a.std
    );
    let total: usize = tensors
        .iter()
        .map(|(_, s, _)| 2 * s.iter().product::<usize>())
        .sum();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let progress = indicatif::ProgressBar::new(total as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} (eta {eta})",
        )
        .context("progress template")?
        .progress_chars("=> "),
    );
    let shards = split_into_shards(&tensors, a.shards);
    let mut weight_map = serde_json::Map::new();
    for (s, range) in shards.iter().enumerate() {
        let file = if a.shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", s + 1, a.shards)
        };
        let views: Vec<(String, RandomTensor)> = tensors[range.clone()]
            .iter()
            .enumerate()
            .map(|(i, (name, shape, role))| {
                weight_map.insert(name.clone(), serde_json::Value::String(file.clone()));
                let index = (range.start + i) as u64;
                let tensor = RandomTensor {
                    shape: shape.clone(),
                    role: *role,
                    seed: a.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (index << 40),
                    std: a.std,
                    progress: progress.clone(),
                };
                (name.clone(), tensor)
            })
            .collect();
        write_shard(&a.out.join(&file), &views)?;
    }
    progress.finish_and_clear();
    if a.shards > 1 {
        let index = serde_json::json!({
            "metadata": { "total_size": total },
            "weight_map": weight_map,
        });
        write_file(
            &a.out.join("model.safetensors.index.json"),
            serde_json::to_string_pretty(&index)?.as_bytes(),
        )?;
    }
    let config_text =
        std::fs::read(&a.config).with_context(|| format!("reading {}", a.config.display()))?;
    write_file(&a.out.join("config.json"), &config_text)?;
    println!(
        "wrote {} tensors, {:.2} GB of bf16 ({} parameters) in {} file(s) to {}",
        tensors.len(),
        total as f64 / 1e9,
        total / 2,
        a.shards,
        a.out.display()
    );
    Ok(())
}

/// Consecutive ranges of `tensors` holding about `1 / shards` of the bytes each (never empty
/// while there are tensors left).
fn split_into_shards(
    tensors: &[(String, Vec<usize>, TensorRole)],
    shards: usize,
) -> Vec<std::ops::Range<usize>> {
    let bytes: Vec<usize> = tensors
        .iter()
        .map(|(_, s, _)| 2 * s.iter().product::<usize>())
        .collect();
    let total: usize = bytes.iter().sum();
    let mut out = Vec::with_capacity(shards);
    let (mut start, mut written) = (0, 0);
    for s in 0..shards {
        // At least one tensor, and at least one left for each shard still to come.
        let last = tensors.len() - (shards - 1 - s);
        let target = total * (s + 1) / shards;
        let mut end = start;
        while end < last && (end == start || written < target) {
            written += bytes[end];
            end += 1;
        }
        if s == shards - 1 {
            end = tensors.len();
        }
        out.push(start..end);
        start = end;
    }
    out
}

/// Writes one safetensors file through a temporary name, synced, then renamed.
fn write_shard(path: &Path, views: &[(String, RandomTensor)]) -> anyhow::Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    safetensors::serialize_to_file(
        views.iter().map(|(n, t)| (n.as_str(), t)),
        Some(metadata),
        &tmp,
    )
    .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Writes a small file atomically.
fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    dllm_model::load::write_atomic(path, bytes)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_tensor_once_in_order_and_none_is_empty() {
        let config = ModelConfig::tiny(8, 3, 2, 16, 20, 18, 19);
        let tensors = checkpoint_tensors(&config);
        for shards in [1, 2, 6, tensors.len()] {
            let ranges = split_into_shards(&tensors, shards);
            assert_eq!(ranges.len(), shards);
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges[shards - 1].end, tensors.len());
            for w in ranges.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            assert!(ranges.iter().all(|r| !r.is_empty()), "{shards}: {ranges:?}");
        }
    }
}
