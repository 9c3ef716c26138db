//! Subcommands of the `dmpo` binary.

mod generate;
mod inspect;
mod logits;
mod plan;
mod prompt;
mod quantize;
mod score;
pub mod train;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use dllm_model::backend::BackendKind;

/// `dmpo`: DMPO fine-tuning for diffusion LLMs.
#[derive(Debug, Parser)]
#[command(name = "dmpo", version, about)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Summarise a model directory: config, parameter count, dtypes, adapter.
    Inspect(inspect::Args),
    /// Write the logits of `input_ids` from a safetensors file (parity with PyTorch).
    Logits(logits::Args),
    /// Generate a completion.
    Generate(generate::Args),
    /// Print the exact prompt text training or evaluation feeds the model for one item.
    Prompt(prompt::Args),
    /// Predict a recipe's peak memory per phase and the largest micro_batch that fits.
    Plan(plan::Args),
    /// Write an NF4 copy of a model directory (bitsandbytes' layout, loaded directly).
    Quantize(quantize::Args),
    /// Score evaluation files in the d1 JSON layout.
    Score(score::Args),
    /// Train with a recipe.
    Train(train::Args),
    /// Download a model or a reference dataset from the Hugging Face Hub.
    Download(DownloadArgs),
}

/// Arguments of `dmpo download`.
#[derive(Debug, clap::Args)]
pub struct DownloadArgs {
    /// Model repository id, e.g. `GSAI-ML/LLaDA-8B-Instruct`.
    #[arg(required_unless_present = "dataset", conflicts_with = "dataset")]
    pub repo_id: Option<String>,
    /// A reference dataset instead: gsm8k, math, math500 or countdown.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Revision (branch, tag or commit).
    #[arg(long, default_value = "main")]
    pub revision: String,
}

/// Options shared by commands that load a model.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model directory (config.json + safetensors, tokenizer.json for text).
    #[arg(long)]
    pub model: PathBuf,
    /// PEFT adapter directory to apply.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Backend: flex, ndarray, wgpu or cuda (must be compiled in).
    #[arg(long, default_value = "flex")]
    pub backend: BackendKind,
    /// Element type of the weights in memory: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: dllm_model::WeightDType,
    /// Quantise the block linears while loading: nf4 (a quantised checkpoint loads quantised
    /// without it).
    #[arg(long)]
    pub quantize: Option<dllm_model::quantization::Quantize>,
}

impl ModelArgs {
    /// Loads the model (and adapter) on backend `B`.
    pub fn load<B: burn::tensor::backend::Backend>(
        &self,
        device: &B::Device,
    ) -> anyhow::Result<dllm_model::DiffusionLm<B>> {
        let model = dllm_model::load_model::<B>(
            &self.model,
            dllm_model::LoadOptions {
                dtype: self.dtype,
                quantize: self.quantize,
            },
            device,
        )?;
        Ok(match &self.adapter {
            Some(dir) => model.load_adapter(dir, device)?,
            None => model,
        })
    }
}

/// The sampler's parallel-decoding rules and WINO's thresholds (docs/algorithm.md §2.5, §2.8),
/// shared by the commands that sample.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DecodingArgs {
    /// Confidence-threshold parallel decoding (Fast-dLLM's `threshold`).
    #[arg(long, conflicts_with = "factor")]
    pub threshold: Option<f64>,
    /// Factor-based parallel decoding (Fast-dLLM's `factor`): the i-th most confident masked
    /// position of the block is committed while its confidence reaches 1 - factor / (i + 2).
    #[arg(long)]
    pub factor: Option<f64>,
    /// WINO (`--method wino`): accept masked positions above this confidence (default 0.6).
    #[arg(long)]
    pub wino_threshold: Option<f64>,
    /// WINO: re-mask accepted tokens whose shadow confidence is below this (default 0.9).
    #[arg(long)]
    pub wino_threshold_back: Option<f64>,
}

impl DecodingArgs {
    /// `config` with these settings.
    pub fn apply(&self, config: dllm_sample::SamplerConfig) -> dllm_sample::SamplerConfig {
        dllm_sample::SamplerConfig {
            threshold: self.threshold,
            factor: self.factor,
            wino_threshold: self.wino_threshold,
            wino_threshold_back: self.wino_threshold_back,
            ..config
        }
    }
}

/// `overrides` plus `model.quantize` when `--quantize` was given (last, so it wins).
fn with_quantize(overrides: &[String], quantize: Option<&str>) -> Vec<String> {
    let mut all = overrides.to_vec();
    if let Some(q) = quantize {
        all.push(format!("model.quantize=\"{q}\""));
    }
    all
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); shared by `dmpo` and `xtask`.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Logits(a) => logits::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Prompt(a) => prompt::run(a),
        Command::Plan(a) => plan::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Score(a) => score::run(a),
        Command::Train(a) => train::run(a),
        Command::Download(a) => download(a),
    }
}

#[cfg(feature = "download")]
fn download(a: DownloadArgs) -> anyhow::Result<()> {
    let paths = match (&a.repo_id, &a.dataset) {
        (_, Some(name)) => crate::download::download_dataset(name)?,
        (Some(repo), None) => vec![crate::download::download(repo, &a.revision)?],
        (None, None) => anyhow::bail!("name a model repository or --dataset"),
    };
    for p in paths {
        println!("{}", p.display());
    }
    Ok(())
}

#[cfg(not(feature = "download"))]
fn download(a: DownloadArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "`dmpo download {}` needs the `download` feature: cargo install --path crates/dmpo-train --features download",
        a.repo_id.or(a.dataset).unwrap_or_default()
    )
}
