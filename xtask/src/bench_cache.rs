//! `cargo xtask bench cache`: where the cached samplers' time goes on the bench model.
//!
//! Three bounds on a cache's speed-up over the exact sampler (gen 192, block 32, 192 steps, batch
//! 4 × 64-token prompts), each closer to what the sampler can reach:
//!
//! 1. token positions run through the model (the work bound of Fast-dLLM's paper);
//! 2. multiply-adds of those passes from the model's shape: the body per token, attention per
//!    query over every key (a cached pass still attends to the whole sequence), and the LM head
//!    at the block's 32 positions in every step, cached or not;
//! 3. the model passes themselves, timed here one by one (a full pass with the block's logits, a
//!    cache-filling pass, the dual cache's block pass and the prefix cache's `[block | suffix]`
//!    pass at every block): what a sampler with no cost of its own outside the model would take.
//!
//! Then the samplers, timed whole: the remainder over bound 3 is the sampler's own work
//! (candidates, commits, host copies), and bound 3 over bound 2 is how much less efficient the
//! model's kernels are on the cached passes' short spans than on full sequences.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use dllm_model::backend::{dispatch, BackendKind, BackendTask};
use dllm_model::tensor_file::read_ints;
use dllm_model::{DiffusionLm, ForwardOptions, KvCache, LogitPositions, ModelConfig};
use dllm_sample::{generate, CacheKind, SamplerConfig};

use crate::bench::{bench_model, time, Args};

const GEN: usize = 192;
const BLOCK: usize = 32;
const ROWS: usize = 4;

struct CacheBench<'a>(&'a Args);

impl BackendTask for CacheBench<'_> {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<()> {
        let a = self.0;
        let model = bench_model::<B>(a, &device)?;
        let p = read_ints(a.dir.join("golden_bench.safetensors"), "gen_prompts")?;
        let prompt = p.shape[1];
        let total = prompt + GEN;
        let mut ids = Vec::with_capacity(ROWS * total);
        for row in p.values.chunks(prompt) {
            ids.extend_from_slice(row);
            ids.extend(std::iter::repeat_n(
                i64::from(model.config.mask_token_id),
                GEN,
            ));
        }
        let reps = a.reps.max(3);
        let passes = Passes {
            model: &model,
            device: &device,
            ids: &ids,
            total,
            reps,
        };
        let blocks = GEN / BLOCK;
        let steps = BLOCK - 1;
        let full = passes.full(prompt);
        let fill = passes.fill(prompt);
        let (mut dual, mut prefix) = (0.0, 0.0);
        for b in 0..blocks {
            let start = prompt + b * BLOCK;
            dual += fill + steps as f64 * passes.cached(start, start + BLOCK);
            prefix += fill + steps as f64 * passes.cached(start, total);
        }
        let exact = GEN as f64 * full;
        println!("passes on the bench model, batch {ROWS} x {total} tokens (median of {reps}):");
        println!(
            "  full pass, logits at the block {:.2} ms; cache-filling pass {:.2} ms",
            1e3 * full,
            1e3 * fill
        );

        let samplers = [CacheKind::None, CacheKind::Dual, CacheKind::Prefix].map(|cache| {
            let config = SamplerConfig {
                gen_length: GEN,
                block_length: BLOCK,
                steps: GEN,
                cache,
                ..Default::default()
            };
            let prompts: Vec<Vec<u32>> = p
                .values
                .chunks(prompt)
                .map(|r| r.iter().map(|&t| t as u32).collect())
                .collect();
            time(reps.min(3), || {
                generate(&model, &prompts, &config).expect("generate")
            })
            .0
        });
        let [sampler_exact, sampler_dual, sampler_prefix] = samplers;
        let (positions_dual, positions_prefix) = token_position_bounds(prompt);
        let (macs_dual, macs_prefix) = multiply_add_bounds(&model.config, prompt);
        println!(
            "| cache | 1. token positions | 2. multiply-adds | 3. timed passes | sampler (measured) | \
             measured / bound 2 | measured / bound 3 |"
        );
        println!("|---|---|---|---|---|---|---|");
        for (name, positions, macs, passes_time, sampler) in [
            ("dual", positions_dual, macs_dual, dual, sampler_dual),
            (
                "prefix",
                positions_prefix,
                macs_prefix,
                prefix,
                sampler_prefix,
            ),
        ] {
            let timed = exact / passes_time;
            let measured = sampler_exact / sampler;
            println!(
                "| {name} | {positions:.2}x | {macs:.2}x | {timed:.2}x | {measured:.2}x \
                 ({sampler:.2} s vs exact {sampler_exact:.2} s) | {:.0}% | {:.0}% |",
                100.0 * measured / macs,
                100.0 * measured / timed
            );
        }
        println!(
            "exact sampler: {sampler_exact:.2} s, of which its {GEN} full passes {exact:.2} s ({:.0}%)",
            100.0 * exact / sampler_exact
        );
        Ok(())
    }
}

/// The model passes the samplers run, timed alone.
struct Passes<'a, B: Backend> {
    model: &'a DiffusionLm<B>,
    device: &'a B::Device,
    ids: &'a [i64],
    total: usize,
    reps: usize,
}

impl<B: Backend> Passes<'_, B> {
    fn input(&self) -> Tensor<B, 2, Int> {
        Tensor::from_data(
            TensorData::new(self.ids.to_vec(), [ROWS, self.total]),
            self.device,
        )
    }

    fn time(&self, mut f: impl FnMut() -> Tensor<B, 3>) -> f64 {
        // Reading the logits back waits for the pass on asynchronous backends.
        time(self.reps, || f().into_data()).0
    }

    /// The exact sampler's pass: the whole sequence, logits at the first block.
    fn full(&self, start: usize) -> f64 {
        let at = LogitPositions::Range(start..start + BLOCK);
        self.time(|| {
            self.model
                .forward_with(self.input(), &ForwardOptions::default(), &at)
        })
    }

    /// A cached sampler's first pass of a block: the whole sequence, filling the cache.
    fn fill(&self, start: usize) -> f64 {
        let at = LogitPositions::Range(start..start + BLOCK);
        let mut cache = KvCache::new();
        self.time(|| {
            self.model
                .forward_fill_cache(self.input(), &ForwardOptions::default(), &at, &mut cache)
        })
    }

    /// A cached pass over `[start, end)` reading the rest from the cache, logits at the block.
    fn cached(&self, start: usize, end: usize) -> f64 {
        let mut cache = KvCache::new();
        let all = LogitPositions::Range(start..start + BLOCK);
        let _ = self
            .model
            .forward_fill_cache(self.input(), &ForwardOptions::default(), &all, &mut cache)
            .into_data();
        let span: Vec<i64> = self
            .ids
            .chunks(self.total)
            .flat_map(|row| row[start..end].iter().copied())
            .collect();
        let at = LogitPositions::Range(0..BLOCK);
        self.time(|| {
            let span = Tensor::from_data(
                TensorData::new(span.clone(), [ROWS, end - start]),
                self.device,
            );
            self.model
                .forward_cached(span, start, &ForwardOptions::default(), &at, &cache)
        })
    }
}

/// Token positions run by the exact sampler over those run by the dual and the prefix cache.
fn token_position_bounds(prompt: usize) -> (f64, f64) {
    let total = prompt + GEN;
    let exact = (GEN * total) as f64;
    let (mut dual, mut prefix) = (0usize, 0usize);
    for b in 0..GEN / BLOCK {
        let start = prompt + b * BLOCK;
        dual += total + (BLOCK - 1) * BLOCK;
        prefix += total + (BLOCK - 1) * (total - start);
    }
    (exact / dual as f64, exact / prefix as f64)
}

/// Multiply-adds of the exact sampler over the dual and prefix caches': per token, the block's
/// projections and MLP; per query, attention over every key; per step, the LM head at the
/// block's positions.
fn multiply_add_bounds(c: &ModelConfig, prompt: usize) -> (f64, f64) {
    let total = prompt + GEN;
    let (d, kv) = (c.d_model as f64, (c.num_kv_heads() * c.head_dim()) as f64);
    let body = c.n_layers as f64 * (2.0 * d * d + 2.0 * d * kv + 3.0 * d * c.mlp_hidden() as f64);
    let attention = c.n_layers as f64 * 2.0 * d * total as f64;
    let head = BLOCK as f64 * d * c.embed_size() as f64;
    let pass = |tokens: usize| tokens as f64 * (body + attention) + head;
    let exact = GEN as f64 * pass(total);
    let (mut dual, mut prefix) = (0.0, 0.0);
    for b in 0..GEN / BLOCK {
        let start = prompt + b * BLOCK;
        dual += pass(total) + (BLOCK - 1) as f64 * pass(BLOCK);
        prefix += pass(total) + (BLOCK - 1) as f64 * pass(total - start);
    }
    (exact / dual, exact / prefix)
}

/// Runs `cargo xtask bench cache` on flex (or the first backend asked for).
pub fn run(a: &Args) -> anyhow::Result<()> {
    let backend = a
        .backend
        .as_ref()
        .and_then(|b| b.first().copied())
        .unwrap_or(BackendKind::Flex);
    dispatch(backend, CacheBench(a))?
}
