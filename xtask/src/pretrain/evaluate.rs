//! Greedy evaluation of a pretrained model on held-out items: accuracy (Sudoku: blank cells;
//! Countdown: items), well-formed answers, solved items and agreement with the flawed solver.

use burn::tensor::backend::Backend;
use dllm_model::{ChatTokenizer, DiffusionLm};
use dllm_sample::generate;
use dmpo_train::recipe::PromptStyle;
use dmpo_train::tasks::prompt_ids;
use rewards::TaskItem;

use super::task::{Completion, PretrainTask};
use super::{eval_sampler, MAX_PROMPT_TOKENS};

/// Rows per sampler call during evaluation.
const EVAL_CHUNK: usize = 128;

/// Scores of one greedy evaluation.
#[derive(Debug, Clone, Copy)]
pub struct Scores {
    /// Correct units over scored units (Sudoku: empty cells; Countdown: items).
    pub accuracy: f64,
    /// Items whose answer has the task's form.
    pub well_formed: f64,
    /// Items solved completely.
    pub solved: f64,
    /// Units answered as the flawed solver answers them, over scored units.
    pub flawed_agreement: f64,
}

/// Greedy evaluation with the task's sampler.
pub fn evaluate<B: Backend>(
    task: PretrainTask,
    model: &DiffusionLm<B>,
    tokenizer: &ChatTokenizer,
    items: &[TaskItem],
) -> anyhow::Result<Scores> {
    let config = eval_sampler(task);
    let eos = tokenizer.eos_id();
    let (mut correct, mut total, mut flawed) = (0u64, 0u64, 0u64);
    let (mut well, mut solved) = (0usize, 0usize);
    for chunk in items.chunks(EVAL_CHUNK) {
        let prompts = chunk
            .iter()
            .map(|it| prompt_ids(tokenizer, it, PromptStyle::Compact, true, MAX_PROMPT_TOKENS))
            .collect::<Result<Vec<_>, _>>()?;
        let generation = generate(model, &prompts, &config)?;
        for (item, ids) in chunk.iter().zip(&generation.completions) {
            let completion = Completion::decode(tokenizer, ids, eos)?;
            let score = task.score(item, &completion)?;
            correct += score.correct;
            total += score.total;
            flawed += score.flawed;
            solved += usize::from(score.total > 0 && score.correct == score.total);
            well += usize::from(score.well_formed);
        }
    }
    let n = items.len().max(1) as f64;
    Ok(Scores {
        accuracy: correct as f64 / total.max(1) as f64,
        well_formed: well as f64 / n,
        solved: solved as f64 / n,
        flawed_agreement: flawed as f64 / total.max(1) as f64,
    })
}
