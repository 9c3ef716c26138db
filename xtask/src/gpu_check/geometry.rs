//! What the GPU check measures, at each scale: the shapes of every timed operation, shared with
//! the PyTorch side (`scripts/reference_gpu.py` reads the same `geometry.json`).
//!
//! `8b` is LLaDA-8B-Instruct's geometry with the paper's rollout (gen 256, blocks of 32, 128
//! steps: two tokens per step) and update (LoRA r 128 on q/k/v/up, K 4, G 16), the update's
//! `micro_batch` the largest `dmpo plan` fits in the device's memory, with gradient
//! checkpointing and without. `tiny` runs the same shapes on the golden tiny model (the adapter's
//! rank capped at its width, 64), so that a CPU runs every step in a minute.

use std::path::{Path, PathBuf};

use anyhow::Context;
use dllm_model::ModelConfig;
use dmpo_train::plan::{largest_micro_batch, plan};
use dmpo_train::Recipe;
use serde::{Deserialize, Serialize};

/// A forward pass's shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardShape {
    /// Rows.
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
}

/// A rollout's shape: `batch` copies of one prompt (one prompt's group).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutShape {
    /// Rows.
    pub batch: usize,
    /// Prompt tokens.
    pub prompt_len: usize,
    /// Generated tokens.
    pub gen_length: usize,
    /// Semi-autoregressive block length.
    pub block_length: usize,
    /// Denoising steps.
    pub steps: usize,
}

/// The LoRA adapter of the update.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoraShape {
    /// Rank.
    pub r: usize,
    /// Scale numerator (`alpha / r`).
    pub alpha: f64,
    /// Dropout on the adapter's input.
    pub dropout: f64,
    /// Adapted linears, by LLaDA's names.
    pub targets: Vec<String>,
}

/// One DMPO update's shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateShape {
    /// Completions of the prompt, `G`.
    pub group_size: usize,
    /// Masked replicates per completion, `K`.
    pub replicates: usize,
    /// Rows per forward/backward pass with gradient checkpointing (the plan's for the device).
    pub micro_batch: usize,
    /// Rows per pass without gradient checkpointing (the plan's for the device).
    pub micro_batch_plain: usize,
    /// The plan's peak with gradient checkpointing, bytes.
    pub planned_peak_bytes: u64,
    /// The plan's peak without, bytes.
    pub planned_peak_plain_bytes: u64,
    /// Prompt tokens.
    pub prompt_len: usize,
    /// Completion tokens.
    pub gen_length: usize,
    /// The adapter.
    pub lora: LoraShape,
    /// AdamW's learning rate.
    pub lr: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// AdamW's betas.
    pub betas: [f64; 2],
    /// AdamW's epsilon.
    pub eps: f64,
}

/// Everything the check measures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Geometry {
    /// `tiny` or `8b`.
    pub scale: String,
    /// The model's `config.json`.
    pub config: PathBuf,
    /// Element type of the weights (`bf16`).
    pub dtype: String,
    /// Repetitions of the forward timing (the median is reported).
    pub reps: usize,
    /// The forward pass.
    pub forward: ForwardShape,
    /// The rollouts.
    pub rollout: RolloutShape,
    /// The update.
    pub update: UpdateShape,
    /// The recipe the update's other settings come from.
    pub recipe: PathBuf,
    /// The device the plan fitted.
    pub device: String,
    /// Its memory, bytes.
    pub device_memory_bytes: u64,
}

/// The scales the check runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scale {
    /// The golden tiny model (a CPU dry run).
    Tiny,
    /// LLaDA-8B-Instruct's geometry.
    #[value(name = "8b")]
    Llada8b,
}

impl Scale {
    fn name(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::Llada8b => "8b",
        }
    }

    fn config(self) -> &'static str {
        match self {
            Self::Tiny => "fixtures/llada-tiny/config.json",
            Self::Llada8b => "fixtures/configs/llada-8b-instruct.json",
        }
    }
}

/// The paper recipe whose LoRA, DMPO and AdamW settings the update uses.
pub const RECIPE: &str = "recipes/llada8b-countdown.toml";

impl Geometry {
    /// The geometry of `scale`, under `root`, with the update's `micro_batch` fitted to a device
    /// of `device_memory_bytes`.
    pub fn new(
        scale: Scale,
        root: &Path,
        device: String,
        device_memory_bytes: u64,
    ) -> anyhow::Result<Self> {
        let recipe_path = PathBuf::from(RECIPE);
        let base = Recipe::load(&root.join(&recipe_path), &[])?;
        let (prompt_len, gen_length) = (128, base.rollout.gen_length);
        let mut geometry = Self {
            scale: scale.name().to_string(),
            config: PathBuf::from(scale.config()),
            dtype: "bf16".to_string(),
            reps: 3,
            forward: ForwardShape {
                batch: 16,
                seq: 512,
            },
            rollout: RolloutShape {
                batch: base.train.group_size,
                prompt_len,
                gen_length,
                block_length: base.rollout.block_length,
                steps: base.rollout.steps,
            },
            update: UpdateShape {
                group_size: base.train.group_size,
                replicates: base.dmpo.num_replicates,
                micro_batch: 0,
                micro_batch_plain: 0,
                planned_peak_bytes: 0,
                planned_peak_plain_bytes: 0,
                prompt_len,
                gen_length,
                lora: LoraShape {
                    r: base.lora.r,
                    alpha: base.lora.alpha,
                    // Dropout draws differ between the two sides; without it both compute the
                    // same thing.
                    dropout: 0.0,
                    targets: base.lora.target_modules.clone(),
                },
                lr: base.train.lr,
                weight_decay: base.train.weight_decay,
                betas: [base.train.beta1, base.train.beta2],
                eps: base.train.eps,
            },
            recipe: recipe_path,
            device,
            device_memory_bytes,
        };
        let config = geometry.model_config(root)?;
        // The tiny model's linears are 64 wide: its adapter's rank stops there.
        geometry.update.lora.r = geometry.update.lora.r.min(config.d_model);
        for checkpointing in [true, false] {
            let recipe = geometry.update_recipe(root, checkpointing, None)?;
            let m = largest_micro_batch(&config, &recipe, device_memory_bytes).with_context(|| {
                format!(
                    "dmpo plan: not one row of the update fits in {:.1} GB (gradient checkpointing {checkpointing})",
                    device_memory_bytes as f64 / 1e9
                )
            })?;
            let peak = plan(&config, &recipe, m).peak_bytes;
            if checkpointing {
                (
                    geometry.update.micro_batch,
                    geometry.update.planned_peak_bytes,
                ) = (m, peak);
            } else {
                (
                    geometry.update.micro_batch_plain,
                    geometry.update.planned_peak_plain_bytes,
                ) = (m, peak);
            }
        }
        Ok(geometry)
    }

    /// Reads a geometry file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The model's configuration.
    pub fn model_config(&self, root: &Path) -> anyhow::Result<ModelConfig> {
        Ok(ModelConfig::from_file(root.join(&self.config))?)
    }

    /// The update's recipe: the paper recipe with this geometry's shapes, one prompt, one
    /// iteration, gradient checkpointing as asked, and `micro_batch` rows per pass (the
    /// recipe's when `None`).
    pub fn update_recipe(
        &self,
        root: &Path,
        checkpointing: bool,
        micro_batch: Option<usize>,
    ) -> anyhow::Result<Recipe> {
        let u = &self.update;
        let targets: Vec<String> = u.lora.targets.iter().map(|t| format!("{t:?}")).collect();
        let mut overrides = vec![
            format!("model.dtype={:?}", self.dtype),
            // The check measures random weights in `dtype`, never quantised.
            "model.quantize=\"none\"".to_string(),
            "model.finetune=\"lora\"".to_string(),
            "train.steps=1".to_string(),
            "train.num_iterations=1".to_string(),
            "train.prompts_per_step=1".to_string(),
            format!("train.group_size={}", u.group_size),
            format!("train.gradient_checkpointing={checkpointing}"),
            format!("dmpo.num_replicates={}", u.replicates),
            format!("rollout.gen_length={}", u.gen_length),
            format!("task.max_prompt_tokens={}", u.prompt_len),
            format!("lora.r={}", u.lora.r),
            format!("lora.alpha={:?}", u.lora.alpha),
            format!("lora.dropout={:?}", u.lora.dropout),
            format!("lora.target_modules=[{}]", targets.join(", ")),
        ];
        if let Some(m) = micro_batch {
            overrides.push(format!("train.micro_batch={m}"));
        }
        Ok(Recipe::load(&root.join(&self.recipe), &overrides)?)
    }
}
