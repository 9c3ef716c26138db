//! What a pretraining run writes beside the weights: the facts of the run (`pretrain.json`,
//! [`Record`]) and the model card (`README.md`) rendered from them.

use std::path::Path;

use anyhow::Context;
use dllm_model::ModelConfig;
use dllm_sample::SamplerConfig;
use serde::{Deserialize, Serialize};

use super::optimiser::Optimiser;

/// One periodic evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalPoint {
    /// Optimiser steps taken.
    pub step: usize,
    /// Correct empty cells over empty cells, all items together.
    pub accuracy: f64,
    /// Empty cells filled as the flawed row-only solver fills them, over empty cells.
    #[serde(default)]
    pub flawed_agreement: f64,
    /// Items whose extracted answer is 16 digits inside `<answer>…</answer>`.
    pub well_formed: f64,
    /// Items solved completely.
    pub solved: f64,
    /// Mean training loss over the steps since the previous evaluation.
    pub train_loss: f64,
}

/// The facts recorded in `pretrain.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    /// The command that reproduces the run.
    pub command: String,
    /// The task trained on.
    pub task: String,
    /// The run's seed.
    pub seed: u64,
    /// The backend trained on.
    pub backend: String,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Why training stopped.
    pub stop_reason: String,
    /// Training loss of the last step.
    pub final_loss: f64,
    /// Share of training completions written by the flawed solver.
    #[serde(default)]
    pub flawed_share: f64,
    /// Where and with what code the files were built, when that matters for rebuilding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<String>,
    /// Greedy cell accuracy of the saved model.
    pub base_accuracy: f64,
    /// Agreement of the saved model with the flawed solver on blank cells.
    #[serde(default)]
    pub base_flawed_agreement: f64,
    /// Share of well-formed answers of the saved model.
    pub base_well_formed: f64,
    /// Share of puzzles the saved model solves.
    pub base_solved: f64,
    /// Test puzzles evaluated.
    pub eval_items: usize,
    /// The evaluation sampler.
    pub sampler: SamplerConfig,
    /// Sequences per optimiser step.
    pub batch_size: usize,
    /// Learning rate, warm-up and AdamW settings (the fields `lr`, `warmup`, `adamw`).
    #[serde(flatten)]
    pub optimiser: Optimiser,
    /// Blank cells of the training puzzles (inclusive).
    pub train_blanks: [usize; 2],
    /// Completion length.
    pub gen_length: usize,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Tokenizer vocabulary size.
    pub vocab_size: usize,
    /// Model parameters.
    pub parameters: usize,
    /// Size of `model.safetensors`.
    pub model_bytes: u64,
    /// Wall time of the training loop.
    pub train_seconds: f64,
    /// The periodic evaluations.
    pub evals: Vec<EvalPoint>,
}

/// The model card of a run from its record and model configuration.
pub fn readme(r: &Record, c: &ModelConfig) -> String {
    let curve: String = r
        .evals
        .iter()
        .map(|e| {
            format!(
                "| {} | {:.4} | {:.1}% | {:.1}% | {:.1}% | {:.1}% |\n",
                e.step,
                e.train_loss,
                100.0 * e.accuracy,
                100.0 * e.flawed_agreement,
                100.0 * e.well_formed,
                100.0 * e.solved
            )
        })
        .collect();
    format!(
        "# tiny-{task}: the embedded tiny LLaDA-layout model\n\
\n\
A {params}-parameter masked-diffusion model in the LLaDA layout (d_model {d}, {l} layers, \
{h} heads, MLP {m}, vocabulary {v}), trained from scratch on generated 4x4 Sudoku so that \
`cargo xtask train` can show DMPO learning on a CPU with no downloads. It is deliberately \
stopped at an imperfect base, so that RL has headroom.\n\
\n\
## Rebuild\n\
\n\
```sh\n\
{command}\n\
```\n\
\n\
Seed {seed}, backend {backend}. The tokenizer corpus, the initialisation (`B::seed`), the \
training puzzles and the masks all derive from the seed (ChaCha8). The weights also depend on \
the backend's rounding: a change to the model's arithmetic or to the backend's kernels (SIMD, \
threading) gives a different model of similar quality, so the committed files are the \
reference and the RL figures in `docs/training.md` were measured on them.{provenance}\n\
\n\
## Facts\n\
\n\
- Steps: {steps} (batch {batch}, AdamW lr {lr} with {warmup} warm-up steps, betas {beta_1}/{beta_2}, \
eps {epsilon:e}, weight decay {weight_decay}); stopped because {stop}.\n\
- Final training loss (last step): {loss:.4}.\n\
- **Base accuracy: {acc:.1}%** greedy cell accuracy (correct empty cells / empty cells) on the \
first {n} puzzles of the shipped 4x4 test set (8 blanks each); {well:.1}% of completions are \
well-formed (`<answer>` + 16 digits + `</answer>`), {solved:.1}% of puzzles fully solved. \
Measured on the saved files, sampler gen_length {gl}, block_length {bl}, steps {st}, \
temperature 0 (low-confidence remasking): d1's evaluation protocol, 2 tokens per step (the RL \
recipes evaluate at one token per step, DMPO's protocol: see `docs/training.md`).\n\
- Training wall time: {secs:.0} s on the machine that built it.\n\
- `model.safetensors`: {bytes} bytes (f32).\n\
\n\
## Format\n\
\n\
- Prompt: LLaDA's chat template around the bare 16-digit puzzle (0 = empty), i.e. \
`dmpo_train::tasks::prompt_ids(.., PromptStyle::Compact, ..)`: {pl} tokens.\n\
- Completion: `<answer>` + the 16-digit solution + `</answer>`, then `<|endoftext|>` up to \
{gl} tokens.\n\
- Tokenizer (`tokenizers` crate, WordLevel trained with `WordLevelTrainer`): one token per \
character (`Split` on `(?s).`, isolated; `Fuse` decoder). Special tokens `<|startoftext|>`, \
`<|endoftext|>` (EOS and pad), `<|start_header_id|>`, `<|end_header_id|>`, `<|eot_id|>`, \
`<|mdm_mask|>` (mask), `<unk>`; normal added tokens `<answer>`, `</answer>`.\n\
- Training data: `rewards::generate::sudoku_items` with 6 to 10 blanks, every puzzle of the \
test set excluded. {mixture}Objective: LLaDA's SFT masked-diffusion loss (t ~ U(1e-3, 1), each \
completion token masked with probability t, sum of CE / t over masked tokens divided by \
batch x gen_length; the prompt is never masked).\n\
\n\
## Learning curve\n\
\n\
| step | mean train loss | cell accuracy | row-only agreement | well-formed | solved |\n\
|---:|---:|---:|---:|---:|---:|\n\
{curve}",
        task = r.task,
        params = c.num_params(),
        d = c.d_model,
        l = c.n_layers,
        h = c.n_heads,
        m = c.mlp_hidden(),
        v = c.vocab_size,
        command = r.command,
        seed = r.seed,
        backend = r.backend,
        steps = r.steps,
        batch = r.batch_size,
        lr = r.optimiser.lr,
        warmup = r.optimiser.warmup,
        beta_1 = r.optimiser.adamw.beta_1,
        beta_2 = r.optimiser.adamw.beta_2,
        epsilon = r.optimiser.adamw.epsilon,
        weight_decay = r.optimiser.adamw.weight_decay,
        stop = r.stop_reason,
        loss = r.final_loss,
        acc = 100.0 * r.base_accuracy,
        n = r.eval_items,
        well = 100.0 * r.base_well_formed,
        solved = 100.0 * r.base_solved,
        gl = r.gen_length,
        bl = r.sampler.block_length,
        st = r.sampler.steps,
        secs = r.train_seconds,
        bytes = r.model_bytes,
        pl = r.prompt_tokens,
        curve = curve,
        mixture = mixture(r),
        provenance = r
            .provenance
            .as_deref()
            .map(|p| format!(" {p}"))
            .unwrap_or_default(),
    )
}

/// Rewrites `dir/README.md` from `dir/pretrain.json` and `dir/config.json`.
pub fn rewrite_readme(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("pretrain.json");
    let record: Record = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    let config = ModelConfig::from_file(dir.join("config.json"))?;
    std::fs::write(dir.join("README.md"), readme(&record, &config))?;
    println!("wrote {}", dir.join("README.md").display());
    Ok(())
}

/// The README paragraph on the flawed demonstrations, empty when there were none.
fn mixture(r: &Record) -> String {
    if r.flawed_share <= 0.0 {
        return String::new();
    }
    format!(
        "**{flawed:.0}% of the training completions are written by a flawed solver** \
(`row_only_fill`: each row's blanks get the row's missing digits in ascending order, ignoring \
columns and boxes; 47.2% of the test set's blank cells right), the other {good:.0}% are the true \
solutions. The base therefore knows how to solve but prefers the flawed answer: greedy \
decoding agrees with the row-only fill on {agree:.1}% of the blank cells. This is the setting \
RL fine-tuning is for (an SFT model that imitated mixed-quality demonstrations): the reward \
can raise the share of the correct behaviour that sampling already finds. ",
        flawed = 100.0 * r.flawed_share,
        good = 100.0 * (1.0 - r.flawed_share),
        agree = 100.0 * r.base_flawed_agreement,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_card_states_the_recorded_optimiser() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny-sudoku");
        let text = std::fs::read_to_string(dir.join("pretrain.json")).unwrap();
        let record: Record = serde_json::from_str(&text).unwrap();
        assert_eq!(record.optimiser, Optimiser::new(0.002, 50));
        let config = ModelConfig::from_file(dir.join("config.json")).unwrap();
        let card = readme(&record, &config);
        assert!(
            card.contains(
                "(batch 64, AdamW lr 0.002 with 50 warm-up steps, betas 0.9/0.999, eps 1e-8, \
                 weight decay 0.01); stopped because reached --max-steps 1500."
            ),
            "{card}"
        );
    }
}
