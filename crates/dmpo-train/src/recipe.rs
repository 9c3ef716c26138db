//! Recipes: every hyperparameter of a run in one TOML file (docs/algorithm.md §5 defaults), unknown keys
//! refused by name, `section.key=value` overrides from the command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dllm_model::backend::BackendKind;
use dllm_model::quantization::Quantize;
use dllm_model::{LoraConfig, ModelConfig, WeightDType};
use dllm_sample::SamplerConfig;
use dmpo_core::{DmpoConfig, GrpoConfig};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// A whole training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Name, output location, seed, backend.
    #[serde(default)]
    pub run: RunSection,
    /// The model to fine-tune.
    pub model: ModelSection,
    /// LoRA settings (used when `model.finetune = "lora"`).
    #[serde(default)]
    pub lora: LoraSection,
    /// Task and data.
    pub task: TaskSection,
    /// Rollout sampler; its padding mask is on unless the recipe turns it off (the sampler's own
    /// default, off, reproduces LLaDA's `generate`).
    #[serde(default = "default_rollout")]
    pub rollout: SamplerConfig,
    /// Optimisation.
    #[serde(default)]
    pub train: TrainSection,
    /// DMPO objective (docs/algorithm.md §3–§4).
    #[serde(default)]
    pub dmpo: DmpoConfig,
    /// diffu-GRPO / wd1 baseline (docs/algorithm.md §6).
    #[serde(default)]
    pub grpo: GrpoConfig,
    /// Evaluation.
    #[serde(default)]
    pub eval: EvalSection,
    /// Data parallelism (docs/distributed.md).
    #[serde(default)]
    pub distributed: DistributedSection,
}

/// `[distributed]`: how many peers share each step, in this process and in the other processes
/// of an MPI job (docs/distributed.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedSection {
    /// Peers in each process, each with its share of the step's rows: one per GPU, or on the
    /// CPU backend (flex) one thread pool each with its share of the cores. 1: one peer per
    /// process.
    pub devices: usize,
    /// How the run's processes are started: `"auto"` (an MPI job when an MPI launcher —
    /// `mpirun`, `srun` — started more than one process, else one process), `"mpi"` (always
    /// an MPI job, even of one process) or `"none"` (never).
    pub launcher: String,
    /// Every machine's first process writes checkpoints and metrics into its own `run_dir`
    /// (machines without a shared file system; Accelerate's `save_on_each_node`). Off: the
    /// first process alone writes, into a directory every process reads on resume.
    pub save_on_each_node: bool,
    /// Seconds a peer waits for the others in one exchange before it stops the run with an
    /// error naming them (a peer died, hung or cannot join; an MPI job is aborted).
    pub timeout_s: f64,
}

impl Default for DistributedSection {
    fn default() -> Self {
        Self {
            devices: 1,
            launcher: "auto".into(),
            save_on_each_node: false,
            timeout_s: 600.0,
        }
    }
}

impl DistributedSection {
    /// `timeout_s` as a duration (validation refuses what does not fit one).
    pub fn timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.timeout_s).unwrap_or(Duration::MAX)
    }
}

/// Settings `--resume` lets differ from the run's `recipe.toml` (a trailing `*` covers a whole
/// section): how long to train, how often to checkpoint and evaluate, how to evaluate, and where
/// it runs. Everything else shapes the weights and must match.
/// The layout of the peers may move (other machines, another launcher) but not change in size:
/// `crate::trainer` refuses another number of peers, saying why.
pub const RESUMABLE_KEYS: [&str; 7] = [
    "train.steps",
    "train.checkpoint_every",
    "train.eval_every",
    "eval.*",
    "run.device",
    "run.output_dir",
    "distributed.*",
];

fn default_rollout() -> SamplerConfig {
    // docs/algorithm.md §2: DMPO's training rollout — prefix cache, 256 tokens, block 32, 128 steps, T 0.2.
    SamplerConfig {
        gen_length: 256,
        block_length: 32,
        steps: 128,
        temperature: 0.2,
        cache: dllm_sample::CacheKind::Prefix,
        padding_mask: true,
        ..SamplerConfig::default()
    }
}

/// Training's departures from [`SamplerConfig`]'s defaults (which reproduce LLaDA's `generate`),
/// filled into a `[rollout]` table that leaves them out: left padding is masked
/// (docs/reference-parity.md, row "padding"), so a batch of prompts of different lengths gives each
/// row the completion, ELBO and gradient it would get alone.
/// The `[distributed]` keys of the multi-machine runs that preceded MPI launches, with the
/// values that leave them unset (what an older run's `recipe.toml` holds).
const MACHINE_KEYS: [(&str, &str); 4] = [
    ("nodes", "[]"),
    ("node_rank", "0"),
    ("orchestrator", ""),
    ("experimental_multi_machine", "false"),
];

/// Removes the keys of [`MACHINE_KEYS`] from `[distributed]` and returns those set to anything
/// but their unset values (an older run's `recipe.toml` holds them unset and still loads):
/// runs over several machines are MPI jobs now.
fn take_machine_keys(recipe: &mut toml::Table) -> Vec<&'static str> {
    let Some(toml::Value::Table(d)) = recipe.get_mut("distributed") else {
        return Vec::new();
    };
    let mut set = Vec::new();
    for (key, unset) in MACHINE_KEYS {
        let Some(value) = d.remove(key) else { continue };
        let is_unset = match value {
            toml::Value::Array(a) => a.is_empty() && unset == "[]",
            toml::Value::Integer(i) => i == 0 && unset == "0",
            toml::Value::Boolean(b) => !b && unset == "false",
            toml::Value::String(s) => s.is_empty() && unset.is_empty(),
            _ => false,
        };
        if !is_unset {
            set.push(key);
        }
    }
    set
}

fn fill_rollout_defaults(recipe: &mut toml::Table) {
    if let Some(toml::Value::Table(rollout)) = recipe.get_mut("rollout") {
        rollout
            .entry("padding_mask")
            .or_insert(toml::Value::Boolean(true));
    }
}

/// `[run]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Run name; outputs go to `{output_dir}/{name}`.
    pub name: String,
    /// Parent directory of runs.
    pub output_dir: PathBuf,
    /// Seed of everything random in the run.
    pub seed: u64,
    /// Backend (`device` in the issue's words): flex, ndarray, wgpu or cuda.
    pub device: BackendKind,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            name: "run".into(),
            output_dir: "runs".into(),
            seed: 0,
            device: BackendKind::Flex,
        }
    }
}

/// How the model is fine-tuned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finetune {
    /// LoRA adapters; the reference policy is the model with adapters disabled.
    Lora,
    /// Every weight; the reference policy is a frozen copy of the initial model.
    Full,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Model directory (config.json, model.safetensors, tokenizer.json).
    pub path: PathBuf,
    /// Weight dtype in memory.
    #[serde(default = "default_dtype", with = "dtype_serde")]
    pub dtype: WeightDType,
    /// LoRA or full fine-tuning.
    #[serde(default = "default_finetune")]
    pub finetune: Finetune,
    /// An adapter to start from.
    #[serde(default)]
    pub adapter: Option<PathBuf>,
    /// Quantise the base's block linears while loading: `"nf4"` (bitsandbytes' NF4 with double
    /// quantisation, the DMPO and d1 references' `load_in_4bit`) or `"none"` (default). A
    /// checkpoint saved quantised loads quantised whatever this says.
    #[serde(
        default,
        with = "quantize_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub quantize: Option<Quantize>,
}

mod quantize_serde {
    use dllm_model::quantization::Quantize;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(q: &Option<Quantize>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(q.map_or("none", Quantize::name))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Quantize>, D::Error> {
        let s = String::deserialize(d)?;
        if s == "none" {
            return Ok(None);
        }
        s.parse()
            .map(Some)
            .map_err(|e: String| serde::de::Error::custom(format!("{e}, or none")))
    }
}

fn default_dtype() -> WeightDType {
    WeightDType::F32
}
fn default_finetune() -> Finetune {
    Finetune::Lora
}

mod dtype_serde {
    use dllm_model::WeightDType;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(d: &WeightDType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match d {
            WeightDType::F32 => "f32",
            WeightDType::BF16 => "bf16",
            WeightDType::F16 => "f16",
        })
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<WeightDType, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[lora]` (docs/algorithm.md §5: r 128, alpha 64, dropout 0.05; all seven linears unless the recipe
/// names them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSection {
    /// Rank.
    pub r: usize,
    /// Alpha.
    pub alpha: f64,
    /// Dropout.
    pub dropout: f64,
    /// Target linear layers: a list of LLaDA's linear names, or PEFT's `"all-linear"` for all
    /// seven. The paper recipes list the four the reference's adapters reach (docs/reference-parity.md).
    #[serde(deserialize_with = "target_modules_serde::deserialize")]
    pub target_modules: Vec<String>,
    /// Keep the adapter's dropout on in the rollouts and the rollout-time likelihoods, as the
    /// reference (it samples in HF's train mode); off: dropout only in the loss passes.
    pub rollout_dropout: bool,
}

mod target_modules_serde {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Targets {
        Keyword(String),
        List(Vec<String>),
    }

    /// A list, or PEFT's `"all-linear"` keyword (every LLaDA linear layer).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        match Targets::deserialize(d)? {
            Targets::List(list) => Ok(list),
            Targets::Keyword(k) if k == "all-linear" => Ok(dllm_model::lora::LINEAR_NAMES
                .iter()
                .map(|s| s.to_string())
                .collect()),
            Targets::Keyword(k) => Err(serde::de::Error::custom(format!(
                "target_modules `{k}`: expected a list of layer names or \"all-linear\""
            ))),
        }
    }
}

impl Default for LoraSection {
    fn default() -> Self {
        let d = LoraConfig::default();
        Self {
            r: d.r,
            alpha: d.lora_alpha,
            dropout: d.lora_dropout,
            target_modules: d.target_modules,
            rollout_dropout: false,
        }
    }
}

impl LoraSection {
    /// As the model crate's config.
    pub fn config(&self) -> LoraConfig {
        LoraConfig {
            r: self.r,
            lora_alpha: self.alpha,
            lora_dropout: self.dropout,
            target_modules: self.target_modules.clone(),
            use_rslora: false,
        }
    }
}

/// How prompts are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptStyle {
    /// The reference system prompt and task template (docs/algorithm.md §7), in the chat template.
    Reference,
    /// The bare puzzle/question in the chat template (for tiny models).
    Compact,
}

impl std::str::FromStr for PromptStyle {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "reference" => Ok(Self::Reference),
            "compact" => Ok(Self::Compact),
            o => Err(format!("unknown prompt style `{o}` (reference or compact)")),
        }
    }
}

/// How a completion's ids become the text that rewards or evaluation scores read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum CompletionText {
    /// All `gen_length` tokens, special tokens removed (DMPO's and d1's training rewards:
    /// `batch_decode(completion_ids, skip_special_tokens=True)`).
    Whole,
    /// All `gen_length` tokens, special tokens kept (the generation files of d1's and DMPO's
    /// evaluations, `skip_special_tokens=False`).
    WholeWithSpecial,
    /// The tokens before the first EOS, special tokens removed.
    UntilEos,
}

/// Which items an evaluation scores, in which order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum EvalOrder {
    /// The reference's: the shipped Countdown and Sudoku sets in the order of d1's and DMPO's
    /// `np.random.choice(n, 256, replace=False)` after `np.random.seed(42)`; files in file order.
    Reference,
    /// File order.
    File,
}

/// `[task]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSection {
    /// gsm8k, math, countdown or sudoku.
    pub name: String,
    /// Training data: a file (JSONL/CSV/Parquet) or `generate` (Sudoku and Countdown only).
    #[serde(default = "default_train_data")]
    pub train: String,
    /// Evaluation data: a file, or `builtin` for the shipped Countdown/Sudoku test sets.
    #[serde(default = "default_eval_data")]
    pub eval: String,
    /// Prompt style.
    #[serde(default = "default_style")]
    pub prompt_style: PromptStyle,
    /// Blank cells of generated Sudoku puzzles (range, inclusive).
    #[serde(default = "default_blanks")]
    pub sudoku_blanks: [usize; 2],
    /// Longest prompt in tokens (left-truncated beyond), docs/algorithm.md §5: 200.
    #[serde(default = "default_max_prompt")]
    pub max_prompt_tokens: usize,
    /// The completion text the training rewards read (reference: the whole completion).
    #[serde(default = "default_reward_text")]
    pub reward_text: CompletionText,
    /// Keep only Countdown training rows with this many numbers (the reference trains on the
    /// 3-number rows of `Jiayi-Pan/Countdown-Tasks-3to4`); 0 keeps all.
    #[serde(default)]
    pub countdown_numbers: usize,
    /// Shuffle a training file with this seed before the holdout (the reference: 42).
    #[serde(default)]
    pub shuffle_seed: Option<u64>,
    /// Drop the last this many training rows after the shuffle (the reference leaves 500
    /// Countdown and Sudoku rows out).
    #[serde(default)]
    pub holdout: usize,
    /// The numbers of generated Countdown items (range, inclusive); how many numbers an item
    /// has is `countdown_numbers` (0: 3 or 4).
    #[serde(default = "default_countdown_number_range")]
    pub countdown_number_range: [i64; 2],
    /// The targets of generated Countdown items (range, inclusive).
    #[serde(default = "default_countdown_target_range")]
    pub countdown_target_range: [i64; 2],
    /// Generated Countdown items all have a solution that combines the numbers in the order
    /// given (`rewards::generate::in_order_solution`).
    #[serde(default)]
    pub countdown_in_order: bool,
    /// The operators generated Countdown targets are made with (and in-order solutions use):
    /// a subset of `"+-*/"`, the default.
    #[serde(default = "default_countdown_operators")]
    pub countdown_operators: String,
    /// Generated training items never repeat an evaluation item (the same puzzle, or the same
    /// numbers and target): one that does is drawn again.
    #[serde(default)]
    pub exclude_eval: bool,
}

fn default_countdown_number_range() -> [i64; 2] {
    [1, 100]
}
fn default_countdown_operators() -> String {
    rewards::generate::COUNTDOWN_OPERATORS.to_string()
}

fn default_countdown_target_range() -> [i64; 2] {
    [1, 100]
}

fn default_reward_text() -> CompletionText {
    CompletionText::Whole
}

fn default_train_data() -> String {
    "generate".into()
}
fn default_eval_data() -> String {
    "builtin".into()
}
fn default_style() -> PromptStyle {
    PromptStyle::Reference
}
fn default_blanks() -> [usize; 2] {
    [6, 10]
}
fn default_max_prompt() -> usize {
    200
}

/// The RL algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// DMPO (loss chosen by `dmpo.loss`: wdce or ddo).
    Dmpo,
    /// diffu-GRPO (d1).
    DiffuGrpo,
    /// wd1.
    Wd1,
}

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Constant.
    Constant,
    /// Cosine decay to zero at the last step.
    Cosine,
}

/// `[train]` (docs/algorithm.md §5 defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    /// Algorithm.
    pub algorithm: Algorithm,
    /// Rollout steps (each followed by `num_iterations` optimiser steps).
    pub steps: usize,
    /// Prompts per rollout step.
    pub prompts_per_step: usize,
    /// Completions per prompt (`G`).
    pub group_size: usize,
    /// Optimiser steps per rollout batch.
    pub num_iterations: usize,
    /// Rows per forward/backward pass (gradient accumulation over the rollout batch).
    pub micro_batch: usize,
    /// Rows of one loss unit, the reference's `per_device_train_batch_size`: an optimiser step's
    /// gradient is the mean over the step's units of `loss_unit_rows` consecutive rows of each
    /// unit's loss (docs/algorithm.md §5.2). 0: the whole step is one unit. Unset: the
    /// reference's, 4 for DMPO (its WDCE sums 4 rows per device), `group_size` for diffu-GRPO and
    /// wd1 (d1 puts one group per device).
    pub loss_unit_rows: Option<usize>,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up optimiser steps (linear from 0).
    pub warmup_steps: usize,
    /// Warm-up as HF's `constant_with_warmup`: update `k < warmup_steps` runs at `lr * k / W`, so
    /// the first at 0 (the reference's). Off: `lr * (k + 1) / W`, every warm-up update moves.
    pub warmup_from_zero: bool,
    /// Schedule after warm-up.
    pub schedule: Schedule,
    /// AdamW beta1.
    pub beta1: f64,
    /// AdamW beta2.
    pub beta2: f64,
    /// AdamW epsilon (PyTorch's 1e-8, not burn's 1e-5).
    pub eps: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (PyTorch `clip_grad_norm_` semantics).
    pub max_grad_norm: f64,
    /// Gradient checkpointing (recompute activations in backward).
    pub gradient_checkpointing: bool,
    /// Save a checkpoint every this many rollout steps.
    pub checkpoint_every: usize,
    /// Evaluate every this many rollout steps (0 = only before and after).
    pub eval_every: usize,
    /// Move the frozen reference toward the policy during training (TRL's `sync_ref_model`;
    /// full fine-tuning only). Off by default, as in the spec.
    pub sync_ref_model: bool,
    /// Rollout steps between reference syncs (TRL's `ref_model_sync_steps`).
    pub ref_model_sync_steps: usize,
    /// `ref <- mixup * policy + (1 - mixup) * ref` at each sync (TRL's `ref_model_mixup_alpha`).
    pub ref_model_mixup_alpha: f64,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Dmpo,
            steps: 100,
            prompts_per_step: 4,
            group_size: 16,
            num_iterations: 8,
            micro_batch: 4,
            loss_unit_rows: None,
            lr: 1e-6,
            warmup_steps: 0,
            warmup_from_zero: false,
            schedule: Schedule::Constant,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
            max_grad_norm: 0.2,
            gradient_checkpointing: false,
            checkpoint_every: 10,
            eval_every: 0,
            sync_ref_model: false,
            ref_model_sync_steps: 512,
            ref_model_mixup_alpha: 0.6,
        }
    }
}

impl TrainSection {
    /// Rows per optimiser step (`prompts_per_step x group_size`).
    pub fn rows_per_step(&self) -> usize {
        self.prompts_per_step * self.group_size
    }

    /// The rows of a loss unit: `loss_unit_rows` (0: the whole step), or the reference's for the
    /// algorithm.
    pub fn loss_unit_rows(&self) -> usize {
        match self.loss_unit_rows {
            Some(0) => self.rows_per_step(),
            Some(rows) => rows,
            None => match self.algorithm {
                Algorithm::Dmpo => 4,
                Algorithm::DiffuGrpo | Algorithm::Wd1 => self.group_size,
            },
        }
    }
}

/// `[eval]` (d1 protocol: greedy, low confidence, block 32, steps = gen_length / 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// Items evaluated (0 = all), the first of `order`.
    pub limit: usize,
    /// Which items, in which order (the reference's by default).
    pub order: EvalOrder,
    /// The completion text scored (reference: whole, special tokens kept, as d1's files).
    pub completion_text: CompletionText,
    /// Generation lengths to evaluate.
    pub gen_lengths: Vec<usize>,
    /// Block length.
    pub block_length: usize,
    /// Steps per token (`steps = gen_length * steps_per_token`; d1: 0.5, DMPO: 1.0). Not used
    /// by `threshold`, `factor`, `wino` or `roar`, which set their own schedule.
    pub steps_per_token: f64,
    /// Rows per generation batch.
    pub batch_size: usize,
    /// Cache used at evaluation.
    pub cache: dllm_sample::CacheKind,
    /// Hide left padding from attention. Off by default, as d1's and DMPO's evaluations (which
    /// attend the pads, so their scores depend on the batch size and order); on gives every item
    /// the score it gets alone, at any batch size (the recommended mode, docs/reference-parity.md).
    pub padding_mask: bool,
    /// The sampler: LLaDA's (`llada`, d1's protocol), Dream's (`dream`: `diffusion_generate`,
    /// one block of the whole length unless `cache` asks for Fast-dLLM's block-wise one), WINO
    /// (`wino`) or ROAR (`roar`), docs/algorithm.md §2.8–2.9.
    pub method: dllm_sample::Method,
    /// Dream's `alg` (with `method = "dream"`).
    pub alg: dllm_sample::DreamAlg,
    /// Sampling temperature (0: greedy, d1's and DMPO's LLaDA protocol; DMPO's Dream
    /// evaluation, `eval_dream.py`, samples at 0.2).
    pub temperature: f64,
    /// Dream's nucleus filtering (DMPO's `eval_dream.py`: 0.95).
    pub top_p: Option<f64>,
    /// Confidence-threshold parallel decoding (Fast-dLLM's `threshold`; `steps_per_token` then
    /// unused).
    pub threshold: Option<f64>,
    /// Factor-based parallel decoding (Fast-dLLM's `factor`; `steps_per_token` then unused).
    pub factor: Option<f64>,
    /// WINO's acceptance threshold (with `method = "wino"`; default 0.6).
    pub wino_threshold: Option<f64>,
    /// WINO's re-masking threshold (with `method = "wino"`; default 0.9).
    pub wino_threshold_back: Option<f64>,
    /// The base a run that quantises at load (`model.quantize`) evaluates on: `"stored"` (the
    /// checkpoint as stored, bf16 for the paper recipes, with the run's adapter: the references
    /// evaluate so) or `"training"` (the quantised base itself, no second model in memory).
    pub base: EvalBase,
}

/// Which base the evaluations of a run that quantises at load use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalBase {
    /// The checkpoint as stored, with the run's adapter moved onto it for the evaluation.
    Stored,
    /// The training base.
    Training,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            limit: 0,
            order: EvalOrder::Reference,
            completion_text: CompletionText::WholeWithSpecial,
            gen_lengths: vec![256],
            block_length: 32,
            steps_per_token: 0.5,
            batch_size: 8,
            cache: dllm_sample::CacheKind::None,
            padding_mask: false,
            method: dllm_sample::Method::Llada,
            alg: dllm_sample::DreamAlg::Entropy,
            temperature: 0.0,
            top_p: None,
            threshold: None,
            factor: None,
            wino_threshold: None,
            wino_threshold_back: None,
            base: EvalBase::Stored,
        }
    }
}

/// The `[lora]` keys an adapter's `adapter_config.json` decides.
const ADAPTER_DECIDES: [&str; 4] = ["r", "alpha", "dropout", "target_modules"];

/// Refuses `[lora]` settings beside `model.adapter`: the adapter brings its own rank, scale,
/// dropout and layers, so those keys would be ignored while the run's `recipe.toml` recorded
/// them. (A run's own `recipe.toml` leaves them out: see [`Recipe::to_run_toml`].)
fn refuse_lora_beside_adapter(value: &toml::Table) -> std::result::Result<(), String> {
    let adapter = value.get("model").and_then(|m| m.get("adapter")).is_some();
    let set: Vec<&str> = value
        .get("lora")
        .and_then(|l| l.as_table())
        .map(|l| {
            ADAPTER_DECIDES
                .iter()
                .copied()
                .filter(|k| l.contains_key(*k))
                .collect()
        })
        .unwrap_or_default();
    if adapter && !set.is_empty() {
        return Err(format!(
            "`lora.{}` set beside `model.adapter`: the adapter's adapter_config.json decides its \
             rank, alpha, dropout and target modules; remove these keys (or `model.adapter` to \
             train a new adapter)",
            set.join("`, `lora.")
        ));
    }
    Ok(())
}

impl Recipe {
    /// The recipe as a run records it in its `recipe.toml`: every value resolved, and without
    /// the `[lora]` keys an adapter decides when `model.adapter` is set.
    pub fn to_run_toml(&self) -> String {
        let mut value = toml::Value::try_from(self).expect("a recipe serialises");
        if self.model.adapter.is_some() {
            if let Some(lora) = value.get_mut("lora").and_then(|l| l.as_table_mut()) {
                lora.retain(|k, _| !ADAPTER_DECIDES.contains(&k));
            }
        }
        toml::to_string_pretty(&value).expect("a recipe serialises")
    }

    /// Refuses what this recipe asks of a model of `config` that the model cannot give,
    /// before any work: a longest sequence (the prompt cap plus the rollout's or an evaluation's
    /// generation length) beyond its context, and an adapter rank beyond a targeted layer's.
    /// Errors name `config_path`, the file `config` was read from.
    pub fn check_model(&self, config: &ModelConfig, config_path: &Path) -> Result<()> {
        let path = config_path.to_path_buf();
        let bad = |message: String| {
            Err(TrainError::Recipe {
                path: path.clone(),
                message,
            })
        };
        let (prompt, context) = (self.task.max_prompt_tokens, config.max_sequence_length);
        let lengths = std::iter::once(("rollout.gen_length", self.rollout.gen_length)).chain(
            self.eval
                .gen_lengths
                .iter()
                .map(|&l| ("eval.gen_lengths", l)),
        );
        for (key, len) in lengths {
            if prompt.saturating_add(len) > context {
                return bad(format!(
                    "`{key}` {len} + `task.max_prompt_tokens` {prompt} exceeds the model's \
                     context (max_sequence_length {context})"
                ));
            }
        }
        // (An adapter given in `model.adapter` brings its own rank, checked when it is read.)
        if self.model.finetune == Finetune::Lora && self.model.adapter.is_none() {
            for name in &self.lora.target_modules {
                let Some([d_in, d_out]) = config.linear_dims(name) else {
                    continue; // not a linear: `validate` refused it already
                };
                if self.lora.r > d_in.min(d_out) {
                    return bad(format!(
                        "`lora.r` {} exceeds the rank of `{name}` ({d_in} x {d_out}): an update \
                         of that rank cannot be more than min(in, out) = {}",
                        self.lora.r,
                        d_in.min(d_out)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Reads a recipe and applies `section.key=value` overrides (values parsed as TOML,
    /// falling back to strings).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::parse(&text, path, overrides)
    }

    /// Parses recipe text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<Self> {
        let bad = |message: String| TrainError::Recipe {
            path: path.to_path_buf(),
            message,
        };
        let mut value: toml::Table = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        for o in overrides {
            let (key, raw) = o
                .split_once('=')
                .ok_or_else(|| bad(format!("override `{o}` is not section.key=value")))?;
            let parts: Vec<&str> = key.trim().split('.').collect();
            if parts.len() != 2 {
                return Err(bad(format!("override key `{key}` must be section.key")));
            }
            let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.to_string()));
            let section = value
                .entry(parts[0].to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            match section {
                toml::Value::Table(t) => {
                    t.insert(parts[1].to_string(), parsed);
                }
                _ => return Err(bad(format!("`{}` is not a section", parts[0]))),
            }
        }
        refuse_lora_beside_adapter(&value).map_err(bad)?;
        let machine_keys = take_machine_keys(&mut value);
        fill_rollout_defaults(&mut value);
        let recipe: Recipe = toml::Value::Table(value)
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.to_string()))?;
        recipe.validate(path)?;
        // Refused after the other checks, so that what is wrong with the settings that remain
        // is said first.
        if let Some(key) = machine_keys.first() {
            return Err(bad(format!(
                "`distributed.{key}` belongs to the multi-machine runs of earlier versions, \
                 which are gone: a run over several machines is an MPI job now (`mpirun -np N \
                 --host a:8,b:8 dmpo train RECIPE`, or `srun`; docs/distributed.md)"
            )));
        }
        Ok(recipe)
    }

    /// Checks values that serde cannot.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, message: &str| {
            Err(TrainError::Recipe {
                path: path.to_path_buf(),
                message: format!("`{field}`: {message}"),
            })
        };
        let t = &self.train;
        if t.steps == 0 {
            return bad("train.steps", "must be positive");
        }
        if t.prompts_per_step == 0 || t.group_size < 2 {
            return bad(
                "train.group_size",
                "needs prompts_per_step >= 1 and group_size >= 2",
            );
        }
        if t.steps.checked_mul(t.num_iterations).is_none()
            || t.prompts_per_step.checked_mul(t.group_size).is_none()
        {
            return bad(
                "train.steps",
                "steps x num_iterations and prompts_per_step x group_size must fit in 64 bits",
            );
        }
        if self.model.path.as_os_str().is_empty() {
            return bad("model.path", "is empty: the model's directory is needed");
        }
        if self.task.max_prompt_tokens == 0 {
            return bad("task.max_prompt_tokens", "must be positive");
        }
        if t.num_iterations == 0 || t.micro_batch == 0 {
            return bad(
                "train.num_iterations",
                "num_iterations and micro_batch must be positive",
            );
        }
        let unit = t.loss_unit_rows();
        if unit == 0 || !t.rows_per_step().is_multiple_of(unit) {
            return bad(
                "train.loss_unit_rows",
                "must divide prompts_per_step x group_size (0: the whole step)",
            );
        }
        let slices = self.grpo.d1_accumulation_steps;
        if slices > 0 && !t.rows_per_step().is_multiple_of(slices) {
            return bad(
                "grpo.d1_accumulation_steps",
                "must divide prompts_per_step x group_size (0: off)",
            );
        }
        let slice = self.dmpo.baseline_rows;
        if slice > 0 && !t.group_size.is_multiple_of(slice) {
            return bad(
                "dmpo.baseline_rows",
                "must divide train.group_size (0: the whole group)",
            );
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return bad("train.lr", "must be positive and finite");
        }
        if t.max_grad_norm.is_nan() || t.max_grad_norm <= 0.0 {
            return bad("train.max_grad_norm", "must be positive");
        }
        for (field, v) in [("train.beta1", t.beta1), ("train.beta2", t.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(field, "must be in [0, 1)");
            }
        }
        if !(t.eps > 0.0 && t.eps.is_finite()) {
            return bad("train.eps", "must be positive and finite");
        }
        if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
            return bad("train.weight_decay", "must be finite and >= 0");
        }
        if t.checkpoint_every == 0 {
            return bad("train.checkpoint_every", "must be positive");
        }
        let name = &self.run.name;
        let one_component = Path::new(name).components().count() == 1
            && matches!(
                Path::new(name).components().next(),
                Some(std::path::Component::Normal(_))
            );
        if name.is_empty() || !one_component || name.contains(['/', '\\']) {
            return bad(
                "run.name",
                "must be one plain directory name (no `/`, `..` or empty name): runs are written to output_dir/name",
            );
        }
        if self.model.quantize.is_some() && self.model.finetune == Finetune::Full {
            return bad(
                "model.quantize",
                "a quantised base is frozen: train it with LoRA (model.finetune = \"lora\"), or set model.quantize = \"none\"",
            );
        }
        if t.sync_ref_model {
            if self.model.finetune != Finetune::Full {
                return bad(
                    "train.sync_ref_model",
                    "needs model.finetune = \"full\" (with LoRA the reference is the adapter-free model)",
                );
            }
            if t.ref_model_sync_steps == 0 {
                return bad("train.ref_model_sync_steps", "must be positive");
            }
            if !(t.ref_model_mixup_alpha > 0.0 && t.ref_model_mixup_alpha <= 1.0) {
                return bad("train.ref_model_mixup_alpha", "must be in (0, 1]");
            }
        }
        if self.task.name.parse::<rewards::Task>().is_err() {
            return bad("task.name", "must be gsm8k, math, countdown or sudoku");
        }
        let [lo, hi] = self.task.sudoku_blanks;
        if lo == 0 || lo > hi || hi > 12 {
            return bad(
                "task.sudoku_blanks",
                "must be [lo, hi] with 1 <= lo <= hi <= 12",
            );
        }
        self.validate_distributed(path)?;
        self.validate_eval(path)?;
        self.rollout.validate().map_err(|e| TrainError::Recipe {
            path: path.to_path_buf(),
            message: format!("`rollout`: {e}"),
        })?;
        self.dmpo.validate().map_err(|e| TrainError::Recipe {
            path: path.to_path_buf(),
            message: format!("`dmpo`: {e}"),
        })?;
        if !self.dmpo.rollout_elbo {
            // The reference falls back to the ELBO for other samplers (with a warning); here
            // the setting is refused where it cannot take effect.
            if self.rollout.method != dllm_sample::Method::Roar {
                return bad(
                    "dmpo.rollout_elbo",
                    "false takes the log-likelihoods ROAR records while sampling: set \
                     rollout.method = \"roar\"",
                );
            }
            if self.train.algorithm != Algorithm::Dmpo {
                return bad("dmpo.rollout_elbo", "false is a setting of DMPO's update");
            }
            if self.model.finetune != Finetune::Lora {
                return bad(
                    "dmpo.rollout_elbo",
                    "false scores the reference with the model's adapter disabled: needs \
                     model.finetune = \"lora\"",
                );
            }
        }
        self.grpo.validate().map_err(|e| TrainError::Recipe {
            path: path.to_path_buf(),
            message: format!("`grpo`: {e}"),
        })?;
        if self.model.finetune == Finetune::Lora {
            self.lora
                .config()
                .validate(path)
                .map_err(|e| TrainError::Recipe {
                    path: path.to_path_buf(),
                    message: format!("`lora`: {e}"),
                })?;
        }
        Ok(())
    }

    /// Checks `[eval]`: every length must give a valid sampler (the same check the evaluation
    /// itself runs, so a bad length fails here, also under `--skip-eval`).
    fn validate_distributed(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, message: String| {
            Err(TrainError::Recipe {
                path: path.to_path_buf(),
                message: format!("`{field}` {message}"),
            })
        };
        let d = &self.distributed;
        let devices = d.devices;
        if let Err(e) = self.check_peers(devices) {
            return bad("distributed.devices", e);
        }
        if !["auto", "mpi", "none"].contains(&d.launcher.as_str()) {
            return bad(
                "distributed.launcher",
                format!("{:?}: expected \"auto\", \"mpi\" or \"none\"", d.launcher),
            );
        }
        if !(d.timeout_s.is_finite() && d.timeout_s > 0.0)
            || Duration::try_from_secs_f64(d.timeout_s).is_err()
        {
            return bad(
                "distributed.timeout_s",
                format!(
                    "must be a positive number of seconds up to {:.3e}, not {:?}",
                    Duration::MAX.as_secs_f64(),
                    d.timeout_s
                ),
            );
        }
        if devices > 1 && self.run.device == BackendKind::Ndarray {
            return bad(
                "distributed.devices",
                "> 1 runs on `run.device` flex (CPU peers), cuda (one GPU each) or wgpu, not \
                 ndarray (docs/distributed.md)"
                    .into(),
            );
        }
        let lora = self.model.finetune == Finetune::Lora;
        if devices > 1 && lora && self.lora.dropout > 0.0 {
            // burn's random generator is one per process: peers drawing dropout masks from it
            // at once would make the masks depend on thread timing.
            return bad(
                "distributed.devices",
                "> 1 needs `lora.dropout = 0`: the peers share one process-wide random \
                 generator for dropout masks (docs/distributed.md)"
                    .to_string(),
            );
        }
        Ok(())
    }

    fn validate_eval(&self, path: &Path) -> Result<()> {
        let e = &self.eval;
        let bad = |field: &str, message: String| {
            Err(TrainError::Recipe {
                path: path.to_path_buf(),
                message: format!("`[eval]` `{field}`: {message}"),
            })
        };
        if e.gen_lengths.is_empty() {
            return bad("gen_lengths", "must list at least one length".into());
        }
        if e.block_length == 0 {
            return bad("block_length", "must be positive".into());
        }
        if e.batch_size == 0 {
            return bad("batch_size", "must be positive".into());
        }
        if !(e.steps_per_token > 0.0 && e.steps_per_token <= 1.0) {
            return bad(
                "steps_per_token",
                "must be in (0, 1]: more steps than tokens cannot unmask anything more".into(),
            );
        }
        for &len in &e.gen_lengths {
            if len == 0 {
                return bad("gen_lengths", "lengths must be positive".into());
            }
            if let Err(err) = crate::eval::eval_sampler(e, len).validate() {
                return bad("gen_lengths", format!("length {len}: {err}"));
            }
        }
        Ok(())
    }

    /// The settings of `self` that differ from `saved` (a run's `recipe.toml`) outside
    /// [`RESUMABLE_KEYS`], as `section.key` names: what `--resume` refuses.
    pub fn resume_differences(&self, saved: &Recipe) -> Vec<String> {
        let flat = |r: &Recipe| -> BTreeMap<String, toml::Value> {
            let table = toml::Value::try_from(r).expect("serialisable recipe");
            let mut out = BTreeMap::new();
            if let toml::Value::Table(sections) = table {
                for (section, v) in sections {
                    match v {
                        toml::Value::Table(keys) => {
                            for (k, v) in keys {
                                out.insert(format!("{section}.{k}"), v);
                            }
                        }
                        other => {
                            out.insert(section, other);
                        }
                    }
                }
            }
            out
        };
        let (now, then) = (flat(self), flat(saved));
        let resumable = |key: &str| {
            RESUMABLE_KEYS.iter().any(|r| {
                r.strip_suffix('*')
                    .map_or(key == *r, |p| key.starts_with(p))
            })
        };
        let mut keys: Vec<&String> = now.keys().chain(then.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| !resumable(k) && now.get(*k) != then.get(*k))
            .cloned()
            .collect()
    }

    /// The smallest run of a group's rows a data-parallel peer holds alone
    /// (docs/distributed.md): the rows whose losses depend on each other. DMPO: the baseline's
    /// slice ([`DmpoConfig::baseline_slice`]: one row under negative centering); diffu-GRPO:
    /// one row (its advantages are fixed before the loss); wd1: the group (its weights are a
    /// softmax over the group).
    pub fn share_unit(&self) -> usize {
        let g = self.train.group_size;
        match self.train.algorithm {
            Algorithm::Dmpo => self.dmpo.baseline_slice(g),
            Algorithm::DiffuGrpo => 1,
            Algorithm::Wd1 => g,
        }
    }

    /// The run's output directory.
    pub fn run_dir(&self) -> PathBuf {
        self.run.output_dir.join(&self.run.name)
    }

    /// Whether `peers` peers can share a step: each takes whole runs of rows (the rows one
    /// baseline or weighting spans), at least one run each; why not otherwise.
    pub fn check_peers(&self, peers: usize) -> std::result::Result<(), String> {
        let rows = self.train.prompts_per_step * self.train.group_size;
        let unit = self.share_unit().max(1);
        if peers == 0 || peers > rows / unit {
            return Err(format!(
                "{peers} peer(s) (`distributed.devices` × the processes of an MPI job): there \
                 must be 1..={} — each peer takes whole runs of {unit} row(s) of the step's \
                 {rows} (`train.prompts_per_step` × `train.group_size`; a run: the rows one \
                 baseline or weighting spans)",
                rows / unit
            ));
        }
        Ok(())
    }
}
