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
    /// Correct units over scored units, all items together (Sudoku: empty cells; Countdown:
    /// items).
    pub accuracy: f64,
    /// Units answered as the flawed solver answers them, over scored units.
    #[serde(default)]
    pub flawed_agreement: f64,
    /// Items whose answer has the task's form.
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
    /// Greedy accuracy of the saved model (Sudoku: cells).
    pub base_accuracy: f64,
    /// Agreement of the saved model with the flawed solver (Sudoku: on blank cells).
    #[serde(default)]
    pub base_flawed_agreement: f64,
    /// Share of well-formed answers of the saved model.
    pub base_well_formed: f64,
    /// Share of items the saved model solves.
    pub base_solved: f64,
    /// Held-out items evaluated.
    pub eval_items: usize,
    /// The evaluation sampler.
    pub sampler: SamplerConfig,
    /// Sequences per optimiser step.
    pub batch_size: usize,
    /// Learning rate, warm-up and AdamW settings (the fields `lr`, `warmup`, `adamw`).
    #[serde(flatten)]
    pub optimiser: Optimiser,
    /// Blank cells of the training puzzles (inclusive; Sudoku).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_blanks: Option<[usize; 2]>,
    /// Numbers of the training items (inclusive; Countdown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_numbers: Option<[i64; 2]>,
    /// Targets of the training items (inclusive; Countdown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_targets: Option<[i64; 2]>,
    /// Operators the training targets are made with and the true answers use (Countdown;
    /// absent: all four, `+-*/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_operators: Option<String>,
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
    /// Accuracy the flawed solver's own answers get on the evaluated held-out items (Countdown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_flawed_accuracy: Option<f64>,
    /// The periodic evaluations.
    pub evals: Vec<EvalPoint>,
}

/// The sentences of a model card that depend on the task.
struct TaskCard {
    /// What the model was trained on.
    trained_on: &'static str,
    /// The training items, in the reproducibility paragraph.
    items: &'static str,
    /// The base-accuracy fact.
    base: String,
    /// The prompt, completion and training-data facts (before the flawed-solver paragraph).
    prompt: String,
    completion: String,
    data: String,
    /// Where the RL figures measured on the model are.
    results: &'static str,
    /// What the answer tags are.
    tags: &'static str,
    /// Learning-curve column headers of the accuracy and the flawed-solver agreement.
    accuracy_column: &'static str,
    flawed_column: &'static str,
}

impl TaskCard {
    fn of(r: &Record) -> Self {
        let (well, solved, n) = (
            100.0 * r.base_well_formed,
            100.0 * r.base_solved,
            r.eval_items,
        );
        let protocol = if r.sampler.steps == r.gen_length {
            "DMPO's evaluation protocol, one token per step, as the RL recipes evaluate (results"
        } else {
            "d1's evaluation protocol, 2 tokens per step (the RL recipes evaluate at one token per \
step, DMPO's protocol"
        };
        let sampler = format!(
            "Measured on the saved files, sampler gen_length {}, block_length {}, steps {}, \
temperature 0 (low-confidence remasking): {protocol}",
            r.gen_length, r.sampler.block_length, r.sampler.steps
        );
        if r.task == "countdown" {
            let [lo, hi] = r.train_numbers.unwrap_or_default();
            let [tlo, thi] = r.train_targets.unwrap_or_default();
            let ops: String = r
                .train_operators
                .as_deref()
                .unwrap_or(rewards::generate::COUNTDOWN_OPERATORS)
                .chars()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(" ");
            return Self {
                trained_on: "generated 3-number Countdown",
                items: "items",
                base: format!(
                    "**Base accuracy: {acc:.1}%** greedy accuracy (the project's Countdown verifier: \
the expression uses each number once and equals the target) on the first {n} held-out items of \
`test.jsonl`; {well:.1}% of completions are well-formed (`<answer>` + an expression over the \
item's numbers + `</answer>`). {sampler}: see `docs/results/countdown.md`).",
                    acc = 100.0 * r.base_accuracy,
                ),
                prompt: format!(
                    "LLaDA's chat template around `a,b,c -> target`, i.e. \
`dmpo_train::tasks::prompt_ids(.., PromptStyle::Compact, ..)`: up to {} tokens (single-digit \
numbers; a prompt with a one-digit target is left-padded with `<|endoftext|>` to the length of \
the others, as the samplers pad a batch's shorter prompts).",
                    r.prompt_tokens
                ),
                completion: format!(
                    "`<answer>` + an arithmetic expression without spaces (e.g. `(7+4)-5`) + \
`</answer>` (the tags are special tokens: the evaluation reads the bare expression with d1's \
parser, the reward the tagged one), then `<|endoftext|>` up to {} tokens.",
                    r.gen_length
                ),
                data: format!(
                    "`rewards::generate::countdown_item` with 3 numbers from {lo} to {hi} and a \
target from {tlo} to {thi} that the numbers reach in the order given (`in_order`); the true answer \
is `rewards::generate::in_order_solution`, `(a op b) op c` with the first operators that work \
(tried in the order {ops}, the operators the targets are made with: the verifier accepts any \
of `+ - * /`). `test.jsonl` holds {n} \
distinct held-out items drawn from a fixed stream; no training item has the numbers and target \
of one of them (the RL recipes set `task.exclude_eval` for the same guarantee). ",
                ),
                results: "docs/results/countdown.md",
                tags: "the answer tags `<answer>`, `</answer>` are special tokens too",
                accuracy_column: "accuracy",
                flawed_column: "sum agreement",
            };
        }
        Self {
            trained_on: "generated 4x4 Sudoku",
            items: "puzzles",
            base: format!(
                "**Base accuracy: {acc:.1}%** greedy cell accuracy (correct empty cells / empty cells) on the \
first {n} puzzles of the shipped 4x4 test set (8 blanks each); {well:.1}% of completions are \
well-formed (`<answer>` + 16 digits + `</answer>`), {solved:.1}% of puzzles fully solved. \
{sampler}: see `docs/training.md`).",
                acc = 100.0 * r.base_accuracy,
            ),
            prompt: format!(
                "LLaDA's chat template around the bare 16-digit puzzle (0 = empty), i.e. \
`dmpo_train::tasks::prompt_ids(.., PromptStyle::Compact, ..)`: {} tokens.",
                r.prompt_tokens
            ),
            completion: format!(
                "`<answer>` + the 16-digit solution + `</answer>`, then `<|endoftext|>` up to \
{} tokens.",
                r.gen_length
            ),
            data: "`rewards::generate::sudoku_items` with 6 to 10 blanks, every puzzle of the \
test set excluded. "
                .to_string(),
            results: "docs/training.md",
            tags: "normal added tokens `<answer>`, `</answer>`",
            accuracy_column: "cell accuracy",
            flawed_column: "row-only agreement",
        }
    }
}

/// The model card of a run from its record and model configuration.
pub fn readme(r: &Record, c: &ModelConfig) -> String {
    let card = TaskCard::of(r);
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
{h} heads, MLP {m}, vocabulary {v}), trained from scratch on {trained_on} so that \
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
training {items} and the masks all derive from the seed (ChaCha8). The weights also depend on \
the backend's rounding: a change to the model's arithmetic or to the backend's kernels (SIMD, \
threading) gives a different model of similar quality, so the committed files are the \
reference and the RL figures in `{results}` were measured on them.{provenance}\n\
\n\
## Facts\n\
\n\
- Steps: {steps} (batch {batch}, AdamW lr {lr} with {warmup} warm-up steps, betas {beta_1}/{beta_2}, \
eps {epsilon:e}, weight decay {weight_decay}); stopped because {stop}.\n\
- Final training loss (last step): {loss:.4}.\n\
- {base}\n\
- Training wall time: {secs:.0} s on the machine that built it.\n\
- `model.safetensors`: {bytes} bytes (f32).\n\
\n\
## Format\n\
\n\
- Prompt: {prompt}\n\
- Completion: {completion}\n\
- Tokenizer (`tokenizers` crate, WordLevel trained with `WordLevelTrainer`): one token per \
character (`Split` on `(?s).`, isolated; `Fuse` decoder). Special tokens `<|startoftext|>`, \
`<|endoftext|>` (EOS and pad), `<|start_header_id|>`, `<|end_header_id|>`, `<|eot_id|>`, \
`<|mdm_mask|>` (mask), `<unk>`; {tags}.\n\
- Training data: {data}{mixture}Objective: LLaDA's SFT masked-diffusion loss (t ~ U(1e-3, 1), each \
completion token masked with probability t, sum of CE / t over masked tokens divided by \
batch x gen_length; the prompt is never masked).\n\
\n\
## Learning curve\n\
\n\
| step | mean train loss | {accuracy_column} | {flawed_column} | well-formed | solved |\n\
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
        secs = r.train_seconds,
        bytes = r.model_bytes,
        curve = curve,
        trained_on = card.trained_on,
        items = card.items,
        base = card.base,
        prompt = card.prompt,
        completion = card.completion,
        data = card.data,
        accuracy_column = card.accuracy_column,
        flawed_column = card.flawed_column,
        results = card.results,
        tags = card.tags,
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
    if r.task == "countdown" {
        return format!(
            "**{flawed:.0}% of the training completions are written by a flawed solver** \
(`sum_fill`: it adds every number in the order given, `(a+b)+c`, whatever the target; right only \
when the target is the sum, {sum_right:.1}% of the held-out items), the other {good:.0}% are the \
true solutions. The base prefers adding everything up: greedy decoding answers with the sum on \
{agree:.1}% of the held-out items, while the true answers it was also taught stay among its \
samples at temperature 1. This is the setting RL fine-tuning is for (an SFT model that imitated \
mixed-quality demonstrations): the reward can raise the share of the correct behaviour that \
sampling already finds. ",
            flawed = 100.0 * r.flawed_share,
            good = 100.0 * (1.0 - r.flawed_share),
            sum_right = 100.0 * r.heldout_flawed_accuracy.unwrap_or(f64::NAN),
            agree = 100.0 * r.base_flawed_agreement,
        );
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
