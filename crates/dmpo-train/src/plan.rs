//! `dmpo plan`: the memory a recipe needs, predicted per phase before anything is loaded
//! (docs/memory.md explains each term and holds the predicted-vs-measured table).
//!
//! Loading peaks at the weights plus the tensor being copied. Every other phase's peak is what
//! stays resident through the run (weights, the trainable parameters and
//! their AdamW moments, the frozen reference of full fine-tuning, a fixed runtime overhead) plus
//! what that phase alone holds at its worst moment:
//! - **rollout**: the sampler's KV cache, one layer's intermediate tensors for every row, and the
//!   logits of one block;
//! - **ELBO**: one layer's intermediates for the rows of a chunk, and the chunk's logits at its
//!   masked positions (chunks sized to `dmpo.elbo_memory_budget_bytes`);
//! - **update** (one micro-batch pass): the gradients, the tensors autodiff keeps for the
//!   backward pass — every block's intermediates, or with gradient checkpointing each block's
//!   input plus one block's intermediates — and the masked positions' logits with their
//!   gradient.
//!
//! Every size is counted in elements of the model's geometry; the allowances are
//! [`ACTIVATION_OVERHEAD`] (what the count of autodiff's kept tensors leaves out) and
//! [`RUNTIME_BYTES`], checked against `cargo xtask scale` at three sizes (docs/memory.md).

use dllm_model::backend::BackendKind;
use dllm_model::nf4::BLOCK_SIZE;
use dllm_model::{ModelConfig, WeightDType, LINEAR_NAMES};
use serde::Serialize;

use crate::recipe::{Algorithm, Finetune, Recipe};

/// Process memory outside the tensors: code, allocator slack, thread stacks, tokenizer
/// (`cargo xtask scale` measures 10 MB resident before loading).
pub const RUNTIME_BYTES: u64 = 16 << 20;

/// An allowance for what [`kept_floats_per_token_layer`] leaves out of autodiff's kept tensors
/// (bookkeeping, index tensors, the RoPE tables); with it the bench, 1.3B and 8B plans come
/// within the table of docs/memory.md.
pub const ACTIVATION_OVERHEAD: f64 = 1.10;

/// Bytes per value of an NF4 weight in memory: two values per byte, an f32 absmax per block.
pub const NF4_BYTES_PER_VALUE: f64 = 0.5 + 4.0 / BLOCK_SIZE as f64;

/// One named amount of memory.
#[derive(Debug, Clone, Serialize)]
pub struct Part {
    /// What it is.
    pub name: String,
    /// Bytes.
    pub bytes: u64,
}

/// The predicted peak of one phase (load: the weights alone; the others: every resident part).
#[derive(Debug, Clone, Serialize)]
pub struct PhasePlan {
    /// Phase name.
    pub name: &'static str,
    /// What the phase adds on top of the resident parts.
    pub transient: Vec<Part>,
    /// Resident parts plus the transient ones.
    pub peak_bytes: u64,
}

/// The predicted memory of a recipe.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryPlan {
    /// What stays resident through training.
    pub resident: Vec<Part>,
    /// Load, rollout, ELBO and update.
    pub phases: Vec<PhasePlan>,
    /// The largest of the phases' peaks.
    pub peak_bytes: u64,
    /// Trainable parameters.
    pub trainable_parameters: u64,
}

fn part(name: &str, bytes: f64) -> Part {
    Part {
        name: name.to_string(),
        bytes: bytes.max(0.0) as u64,
    }
}

fn dtype_bytes(d: WeightDType) -> f64 {
    match d {
        WeightDType::F32 => 4.0,
        WeightDType::BF16 | WeightDType::F16 => 2.0,
    }
}

/// `(in, out)` of a block's linear layer by name (the down projection for a name that is not
/// one: recipes are validated before they are planned).
fn linear_dims(c: &ModelConfig, name: &str) -> (usize, usize) {
    let [i, o] = c.linear_dims(name).unwrap_or([c.mlp_hidden(), c.d_model]);
    (i, o)
}

/// Floats autodiff keeps per token and block for the backward pass: the norms' inputs and
/// outputs, q/k/v before and after RoPE, the attention output, the two MLP projections and
/// their SwiGLU product, and per adapter its input after dropout (with the dropout mask) and
/// `x A`.
pub fn kept_floats_per_token_layer(c: &ModelConfig, recipe: &Recipe) -> f64 {
    let (d, h, kv) = (
        c.d_model as f64,
        c.mlp_hidden() as f64,
        (c.num_kv_heads() * c.head_dim()) as f64,
    );
    let base = 7.0 * d + 3.0 * kv + 3.0 * h;
    let adapters: f64 = match recipe.model.finetune {
        Finetune::Full => 0.0,
        Finetune::Lora => recipe
            .lora
            .target_modules
            .iter()
            .map(|t| {
                let d_in = linear_dims(c, t).0 as f64;
                let copies = if recipe.lora.dropout > 0.0 { 2.0 } else { 1.0 };
                copies * d_in + recipe.lora.r as f64
            })
            .sum(),
    };
    base + adapters
}

/// Floats one block holds at once in a no-grad forward, per token: its input, the normed
/// input, q/k/v, the attention output and the MLP's three intermediates.
fn transient_floats_per_token(c: &ModelConfig) -> f64 {
    let (d, h, kv) = (
        c.d_model as f64,
        c.mlp_hidden() as f64,
        (c.num_kv_heads() * c.head_dim()) as f64,
    );
    4.0 * d + 2.0 * kv + 3.0 * h
}

/// The memory plan of `recipe` for a model of `config`, with `micro_batch` rows per update pass.
pub fn plan(config: &ModelConfig, recipe: &Recipe, micro_batch: usize) -> MemoryPlan {
    let c = config;
    let t = &recipe.train;
    let w = dtype_bytes(recipe.model.dtype);
    let params = c.num_params() as f64;
    let vocab = c.embed_size() as f64;
    let layers = c.n_layers as f64;
    let heads = c.n_heads as f64;
    let kv_dim = (c.num_kv_heads() * c.head_dim()) as f64;

    // Resident through the run. NF4 keeps the block linears in half a byte per value plus an
    // f32 absmax per 64 values (decoded from its double quantisation at load).
    let nf4 = recipe.model.quantize.is_some();
    let linear_sizes: Vec<f64> = LINEAR_NAMES
        .iter()
        .map(|name| {
            let (i, o) = linear_dims(c, name);
            (i * o) as f64
        })
        .collect();
    let block_linear: f64 = linear_sizes.iter().sum();
    let largest_linear = linear_sizes.iter().copied().fold(0.0, f64::max);
    let quantized = if nf4 { block_linear * layers } else { 0.0 };
    let mut resident = vec![part("weights", (params - quantized) * w)];
    if nf4 {
        resident.push(part(
            "NF4 block linears (packed + f32 absmax)",
            quantized * NF4_BYTES_PER_VALUE,
        ));
    }
    let trainable = match recipe.model.finetune {
        Finetune::Lora => {
            let per_block: f64 = recipe
                .lora
                .target_modules
                .iter()
                .map(|name| {
                    let (i, o) = linear_dims(c, name);
                    recipe.lora.r as f64 * (i + o) as f64
                })
                .sum::<f64>();
            let n = per_block * c.n_layers as f64;
            resident.push(part("LoRA parameters (f32)", 4.0 * n));
            resident.push(part("AdamW moments (2 x f32)", 8.0 * n));
            n
        }
        Finetune::Full => {
            resident.push(part("frozen reference copy", params * w));
            resident.push(part("AdamW moments (2 x weight dtype)", 2.0 * params * w));
            params
        }
    };
    resident.push(part("runtime", RUNTIME_BYTES as f64));
    // Saturating: a recipe far beyond any device plans as "does not fit", never wraps.
    let resident_bytes: u64 = resident.iter().fold(0, |a, p| a.saturating_add(p.bytes));
    let grad_bytes = match recipe.model.finetune {
        Finetune::Lora => 4.0 * trainable,
        Finetune::Full => params * w,
    };

    let prompt = recipe.task.max_prompt_tokens.min(c.max_sequence_length) as f64;
    let gen = recipe.rollout.gen_length as f64;
    let seq = prompt + gen;
    let rows = (t.prompts_per_step * t.group_size) as f64;
    let block = recipe.rollout.block_length.min(recipe.rollout.gen_length) as f64;
    // Activations are f32 on the CPU backends (half-precision weights are read in f32), in the
    // weights' dtype on GPUs; logits are f32 everywhere.
    let act = match recipe.run.device {
        BackendKind::Flex | BackendKind::Ndarray => 4.0,
        BackendKind::Wgpu | BackendKind::Cuda => w,
    };
    let scores = |r: f64| act * r * heads * seq * seq;
    // Copies of the masked positions' logits a log-probability takes: flex's fused kernel reads
    // the logits once (a log-sum-exp per position); elsewhere a log-softmax and a temporary.
    let log_softmax_copies = match recipe.run.device {
        BackendKind::Flex => 1.0,
        _ => 3.0,
    };

    // Rollout: the whole step's rows in one generation.
    let cache = match recipe.rollout.cache {
        dllm_sample::CacheKind::None => 0.0,
        _ => act * 2.0 * layers * rows * seq * kv_dim,
    };
    // Off flex an NF4 product decodes its layer first with tensor ops: indices (i32), the
    // gathered f32 values, their absmax product and the rounded weight, for the largest layer.
    let decoded_layer = match recipe.run.device {
        BackendKind::Flex => 0.0,
        _ if nf4 => largest_linear * (4.0 + 4.0 + 4.0 + w),
        _ => 0.0,
    };
    let rollout = vec![
        part("NF4 layer being decoded (off flex)", decoded_layer),
        part("KV cache", cache),
        part(
            "one block's intermediates",
            act * rows * seq * transient_floats_per_token(c) + scores(rows),
        ),
        part(
            "logits of one block (+ confidences)",
            2.0 * 4.0 * rows * block * vocab,
        ),
    ];

    // ELBO: K replicates of every row, in chunks whose logits fit the budget (as
    // `dmpo_core::elbo` chunks them).
    let k = match t.algorithm {
        Algorithm::Dmpo => recipe.dmpo.num_replicates.max(1) as f64,
        _ => 1.0,
    };
    let masked = 0.5 * gen;
    let chunk = (dmpo_core::elbo::rows_per_chunk(
        recipe.rollout.gen_length,
        c.embed_size(),
        recipe.dmpo.elbo_memory_budget_bytes,
    ) as f64)
        .min(rows * k);
    let elbo = vec![
        part("NF4 layer being decoded (off flex)", decoded_layer),
        part(
            "one block's intermediates (one chunk)",
            act * chunk * seq * transient_floats_per_token(c) + scores(chunk),
        ),
        part(
            "masked positions' logits (+ log-softmax off flex, one chunk)",
            log_softmax_copies * 4.0 * chunk * masked * vocab,
        ),
    ];

    // Update: one pass of `micro_batch` rows, K replicates each.
    let tokens = micro_batch as f64 * k * seq;
    let kept = act * tokens * kept_floats_per_token_layer(c, recipe) * ACTIVATION_OVERHEAD
        + scores(micro_batch as f64 * k);
    let activations = if t.gradient_checkpointing {
        vec![
            part(
                "block inputs (checkpoints)",
                act * layers * tokens * c.d_model as f64,
            ),
            // Autodiff frees a node's kept tensors as its backward step runs; at the worst
            // moment of a block's backward it holds the kept tensors and the gradients of the
            // MLP's three hidden-size intermediates.
            part(
                "one block's kept tensors and its MLP's gradients",
                kept + act * tokens * 3.0 * c.mlp_hidden() as f64,
            ),
        ]
    } else {
        vec![part("every block's kept tensors", layers * kept)]
    };
    // Off flex autodiff keeps each decoded NF4 weight for its product's backward pass: one
    // block's with block checkpointing, every block's without.
    let kept_decoded = match recipe.run.device {
        BackendKind::Flex => 0.0,
        _ if nf4 && t.gradient_checkpointing => block_linear * w + decoded_layer,
        _ if nf4 => quantized * w + decoded_layer,
        _ => 0.0,
    };
    let mut update = vec![part("gradients", grad_bytes)];
    update.push(part(
        "decoded NF4 weights kept for backward (off flex)",
        kept_decoded,
    ));
    update.extend(activations);
    update.push(part(
        "masked positions' logits and their gradient (+ log-softmax off flex)",
        (log_softmax_copies + 1.0) * 4.0 * micro_batch as f64 * k * masked * vocab,
    ));

    // Loading: the weights and the runtime, plus the tensor being copied out of its mapped
    // shard (its pages are handed back once copied).
    let largest_tensor = (c.embed_size() * c.d_model).max(c.d_model * c.mlp_hidden()) as f64 * w;
    let mut load = vec![part("largest tensor (mapped while copied)", largest_tensor)];
    if nf4 {
        // A dense checkpoint quantised while it loads: the layer read in the load dtype and
        // widened to f32 before quantising (a pre-quantised one needs less).
        load.push(part(
            "linear being quantised (load dtype + f32)",
            largest_linear * (w + 4.0),
        ));
    }
    let load_base = resident
        .iter()
        .filter(|p| p.name == "weights" || p.name.starts_with("NF4"))
        .fold(RUNTIME_BYTES, |a, p| a.saturating_add(p.bytes));

    let phase = |name, base: u64, mut transient: Vec<Part>| {
        // The NF4 terms only where they count.
        transient.retain(|p| p.bytes > 0 || !p.name.contains("NF4"));
        let peak = transient
            .iter()
            .fold(base, |a, p| a.saturating_add(p.bytes));
        PhasePlan {
            name,
            transient,
            peak_bytes: peak,
        }
    };
    let phases = vec![
        phase("load", load_base, load),
        phase("rollout", resident_bytes, rollout),
        phase("ELBO", resident_bytes, elbo),
        phase("update", resident_bytes, update),
    ];
    let peak_bytes = phases.iter().map(|p| p.peak_bytes).max().unwrap_or(0);
    MemoryPlan {
        resident,
        phases,
        peak_bytes,
        trainable_parameters: trainable as u64,
    }
}

impl MemoryPlan {
    /// The phase called `name` (`load`, `rollout`, `ELBO`, `update`).
    pub fn phase(&self, name: &str) -> Option<&PhasePlan> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// The resident part whose name starts with `name`, in bytes (0 when there is none).
    pub fn resident_part(&self, name: &str) -> u64 {
        self.resident
            .iter()
            .find(|p| p.name.starts_with(name))
            .map_or(0, |p| p.bytes)
    }
}

/// The largest `micro_batch` (rows per update pass, at most the step's rows) whose plan peaks
/// within `device_bytes`; `None` when not even one row fits. A binary search: the peak grows
/// with the micro-batch.
pub fn largest_micro_batch(
    config: &ModelConfig,
    recipe: &Recipe,
    device_bytes: u64,
) -> Option<usize> {
    let fits = |m: usize| plan(config, recipe, m).peak_bytes <= device_bytes;
    let rows = recipe.train.rows_per_step();
    if rows == 0 || !fits(1) {
        return None;
    }
    // Invariant: `lo` fits; every size above `hi` does not.
    let (mut lo, mut hi) = (1, rows);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(lo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn paper_recipe(overrides: &[&str]) -> (ModelConfig, Recipe) {
        let config =
            ModelConfig::from_file(root().join("fixtures/configs/llada-8b-instruct.json")).unwrap();
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let recipe =
            Recipe::load(&root().join("recipes/llada8b-countdown.toml"), &overrides).unwrap();
        (config, recipe)
    }

    fn bytes_of(parts: &[Part], name: &str) -> u64 {
        parts
            .iter()
            .find(|p| p.name.starts_with(name))
            .unwrap()
            .bytes
    }

    #[test]
    fn the_paper_recipe_counts_llada_8b_and_its_adapter() {
        let (config, recipe) = paper_recipe(&["model.quantize=\"none\""]);
        let p = plan(&config, &recipe, 1);
        // 8,015,581,184 parameters in bf16.
        assert_eq!(bytes_of(&p.resident, "weights"), 2 * 8_015_581_184);
        // r 128 on q/k/v_proj (4096 -> 4096) and up_proj (4096 -> 12288), 32 layers.
        let lora = 32 * (3 * 128 * (4096 + 4096) + 128 * (4096 + 12288));
        assert_eq!(p.trainable_parameters, lora as u64);
        assert_eq!(bytes_of(&p.resident, "AdamW"), 8 * lora as u64);
    }

    #[test]
    fn an_nf4_base_keeps_its_block_linears_in_half_a_byte_and_an_absmax_per_64() {
        let (config, mut recipe) = paper_recipe(&["model.quantize=\"nf4\""]);
        recipe.run.device = BackendKind::Flex;
        let p = plan(&config, &recipe, 1);
        // 32 blocks of 4 x 4096² + 3 x 4096 x 12288 values.
        let linears: u64 = 32 * (4 * 4096 * 4096 + 3 * 4096 * 12288);
        assert_eq!(bytes_of(&p.resident, "NF4"), linears / 2 + linears / 64 * 4);
        assert_eq!(
            bytes_of(&p.resident, "weights"),
            2 * (8_015_581_184 - linears)
        );
        // On flex nothing is decoded whole; on CUDA one block's layers are, for the backward.
        let update = &p.phase("update").unwrap().transient;
        assert!(!update.iter().any(|p| p.name.starts_with("decoded")));
        let (_, mut cuda) = paper_recipe(&["model.quantize=\"nf4\""]);
        cuda.run.device = BackendKind::Cuda;
        let g = plan(&config, &cuda, 1);
        let block = 4 * 4096 * 4096 + 3 * 4096 * 12288;
        assert!(bytes_of(&g.phase("update").unwrap().transient, "decoded") > 2 * block);
        let mut dense = paper_recipe(&["model.quantize=\"none\""]).1;
        dense.run.device = BackendKind::Flex;
        let dense = plan(&config, &dense, 1);
        // 16.0 GB of bf16 weights become 6.0 GB.
        let saved = dense.peak_bytes - p.peak_bytes;
        assert!((9_900_000_000..10_100_000_000).contains(&saved), "{saved}");
    }

    #[test]
    fn the_dream_recipe_counts_dream_7b_and_its_seven_adapters() {
        let config =
            ModelConfig::from_file(root().join("fixtures/configs/dream-7b-instruct.json")).unwrap();
        let recipe = Recipe::load(&root().join("recipes/dream7b-countdown.toml"), &[]).unwrap();
        let p = plan(&config, &recipe, 1);
        // 7,615,616,512 parameters (q/k/v biases included) in bf16.
        assert_eq!(bytes_of(&p.resident, "weights"), 2 * 7_615_616_512);
        // r 128 on q/o (3584 -> 3584), k/v (3584 -> 512), gate/up (3584 -> 18944) and down
        // (18944 -> 3584), 28 layers: Dream's names, not LLaDA's, decide the shapes.
        let r = 128;
        let per_layer = r * (2 * (3584 + 3584) + 2 * (3584 + 512) + 3 * (3584 + 18944));
        assert_eq!(p.trainable_parameters, 28 * per_layer as u64);
    }

    #[test]
    fn checkpointing_and_smaller_passes_need_less_and_the_fit_is_the_largest_that_fits() {
        let (config, with) = paper_recipe(&[]);
        let (_, without) = paper_recipe(&["train.gradient_checkpointing=false"]);
        let update = |r: &Recipe, m| plan(&config, r, m).phase("update").unwrap().peak_bytes;
        assert!(update(&with, 4) < update(&without, 4));
        assert!(update(&with, 2) < update(&with, 4));
        let peak = |m| plan(&config, &with, m).peak_bytes;
        let device = peak(5);
        let m = largest_micro_batch(&config, &with, device).expect("5 fits");
        assert!(m >= 5 && peak(m) <= device);
        assert!(m == with.train.rows_per_step() || peak(m + 1) > device);
        assert_eq!(largest_micro_batch(&config, &with, 1 << 30), None);
    }
}
