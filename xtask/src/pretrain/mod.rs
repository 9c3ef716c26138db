//! `cargo xtask pretrain`: trains an embedded tiny model from scratch.
//!
//! A character-level tokenizer is trained with the `tokenizers` crate over the formatted
//! training text, then a small LLaDA-layout model learns 4x4 Sudoku or 3-number Countdown
//! ([`task`]) with LLaDA's supervised
//! masked-diffusion objective (docs/algorithm.md §1, [`dmpo_core::sft`]): per sequence `t ~ U(eps, 1)`, each
//! completion token masked with probability `t`, loss = sum of masked cross-entropies / `t`,
//! divided by `batch * gen_length`. Training stops at the first periodic evaluation whose greedy
//! accuracy on the held-out items reaches `--target-accuracy` (with well-formed
//! answers), so that the base stays clearly imperfect and RL has headroom. The result is written
//! to `models/tiny-<task>/` in the Hugging Face layout, with `README.md` and `pretrain.json`.
//!
//! - [`task`]: what differs between the tasks (held-out and training items, true and flawed
//!   answers, scores);
//! - [`tokenizer`]: the character-level tokenizer and its special tokens;
//! - [`data`]: the per-step data stream and the ids of prompts and completions;
//! - [`optimiser`]: the AdamW settings and learning-rate schedule, trained with and recorded;
//! - [`train`]: set-up, the training loop and the written outputs;
//! - [`evaluate`]: greedy evaluation on the held-out items;
//! - [`model_card`]: `pretrain.json` and the `README.md` rendered from it.

mod data;
mod evaluate;
mod model_card;
mod optimiser;
mod task;
mod tokenizer;
mod train;

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use dllm_model::backend::{dispatch, BackendKind, BackendTask};
use dllm_sample::SamplerConfig;

use task::PretrainTask;

/// Semi-autoregressive block length of the evaluation sampler.
pub const BLOCK_LENGTH: usize = 8;
/// Longest prompt in tokens (the recipes' `max_prompt_tokens`).
const MAX_PROMPT_TOKENS: usize = 200;

/// Arguments of `cargo xtask pretrain`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Task to pretrain on.
    #[arg(long, value_enum, default_value = "sudoku")]
    pub task: PretrainTask,
    /// Seed of the tokenizer corpus, the model initialisation, the data and the masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory (default `models/tiny-<task>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Most optimiser steps.
    #[arg(long, default_value_t = 1000)]
    pub max_steps: usize,
    /// Stop at the first evaluation whose greedy accuracy (Sudoku: cells) reaches this (0..1).
    #[arg(long, default_value_t = 0.40)]
    pub target_accuracy: f64,
    /// Smallest share of well-formed answers for stopping (`<answer>` + 16 digits + `</answer>`;
    /// Countdown: an expression over the item's numbers inside the tags).
    #[arg(long, default_value_t = 0.95)]
    pub min_well_formed: f64,
    /// Sequences per optimiser step.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    /// Evaluate every this many steps.
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    /// Held-out items evaluated (the first N of the shipped 4x4 Sudoku test set, or of the
    /// Countdown items written to `test.jsonl`).
    #[arg(long, default_value_t = 256)]
    pub eval_items: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 64)]
    pub d_model: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 4)]
    pub n_layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    pub n_heads: usize,
    /// Inner MLP size.
    #[arg(long, default_value_t = 192)]
    pub mlp_hidden: usize,
    /// Backend to train on.
    #[arg(long, default_value = "flex")]
    pub backend: BackendKind,
    /// Share (0..1) of training completions written by a flawed solver instead of the true
    /// solution: the row-only heuristic of `rewards::generate::row_only_fill` (Sudoku), the sum
    /// of every number of `rewards::generate::sum_fill` (Countdown). A base that
    /// imitated such mixed demonstrations can produce correct answers but prefers the flawed
    /// ones, the situation RL fine-tuning is meant for.
    #[arg(long, default_value_t = 0.0)]
    pub flawed_share: f64,
    /// Do not train: rewrite `README.md` in the output directory from its `pretrain.json` and
    /// `config.json` (after a change to the README text).
    #[arg(long)]
    pub readme_only: bool,
}

/// Runs `cargo xtask pretrain`.
pub fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.batch_size > 0, "--batch-size must be positive");
    ensure!(args.eval_every > 0, "--eval-every must be positive");
    ensure!(
        (0.0..1.0).contains(&args.flawed_share),
        "--flawed-share must be in [0, 1)"
    );
    ensure!(
        (0.0..=1.0).contains(&args.target_accuracy),
        "--target-accuracy must be in [0, 1]"
    );
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("models/tiny-{}", args.task.name())));
    if args.readme_only {
        return model_card::rewrite_readme(&out);
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    dispatch(args.backend, Pretrain { args, out })?
}

/// A pretraining run for the backend dispatcher: the arguments and the output directory.
struct Pretrain {
    args: Args,
    out: PathBuf,
}

impl BackendTask for Pretrain {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<()> {
        train::pretrain::<Autodiff<B>>(&self.args, &self.out, &device)
    }
}

/// The evaluation sampler: the RL recipes' lengths, greedy, [`PretrainTask::eval_steps`].
pub fn eval_sampler(task: PretrainTask) -> SamplerConfig {
    SamplerConfig {
        gen_length: task.gen_length(),
        block_length: BLOCK_LENGTH,
        steps: task.eval_steps(),
        temperature: 0.0,
        ..Default::default()
    }
}

/// The command that reproduces this run, with every flag that differs from the defaults.
fn command_line(args: &Args, out: &Path) -> String {
    let mut s = format!(
        "cargo xtask pretrain --task {} --seed {}",
        args.task.name(),
        args.seed
    );
    s.push_str(&format!(" --out {}", out.display()));
    s.push_str(&format!(
        " --max-steps {} --target-accuracy {}",
        args.max_steps, args.target_accuracy
    ));
    let d = <Defaults as clap::Parser>::parse_from(["pretrain"]).args;
    let mut flag = |name: &str, a: String, b: String| {
        if a != b {
            s.push_str(&format!(" --{name} {a}"));
        }
    };
    flag(
        "min-well-formed",
        args.min_well_formed.to_string(),
        d.min_well_formed.to_string(),
    );
    flag(
        "batch-size",
        args.batch_size.to_string(),
        d.batch_size.to_string(),
    );
    flag("lr", args.lr.to_string(), d.lr.to_string());
    flag("warmup", args.warmup.to_string(), d.warmup.to_string());
    flag(
        "eval-every",
        args.eval_every.to_string(),
        d.eval_every.to_string(),
    );
    flag(
        "eval-items",
        args.eval_items.to_string(),
        d.eval_items.to_string(),
    );
    flag("d-model", args.d_model.to_string(), d.d_model.to_string());
    flag(
        "n-layers",
        args.n_layers.to_string(),
        d.n_layers.to_string(),
    );
    flag("n-heads", args.n_heads.to_string(), d.n_heads.to_string());
    flag(
        "mlp-hidden",
        args.mlp_hidden.to_string(),
        d.mlp_hidden.to_string(),
    );
    flag("backend", args.backend.to_string(), d.backend.to_string());
    flag(
        "flawed-share",
        args.flawed_share.to_string(),
        d.flawed_share.to_string(),
    );
    s
}

/// `Args` on its own, to read the defaults back (for the reproduction command).
#[derive(clap::Parser)]
struct Defaults {
    #[command(flatten)]
    args: Args,
}
