//! Greedy evaluation of a pretrained model on held-out test puzzles: cell accuracy, well-formed
//! answers, solved puzzles and agreement with the flawed row-only solver.

use burn::tensor::backend::Backend;
use dllm_model::{ChatTokenizer, DiffusionLm};
use dllm_sample::generate;
use dmpo_train::recipe::PromptStyle;
use dmpo_train::tasks::{completion_text, prompt_ids};
use rewards::generate::row_only_fill;
use rewards::{Task, TaskItem};

use super::data::puzzle_of;
use super::tokenizer::ANSWER_TOKENS;
use super::{eval_sampler, MAX_PROMPT_TOKENS};

/// Rows per sampler call during evaluation.
const EVAL_CHUNK: usize = 128;

/// Scores of one greedy evaluation.
#[derive(Debug, Clone, Copy)]
pub struct Scores {
    /// Correct empty cells over empty cells.
    pub accuracy: f64,
    /// Items whose answer is 16 digits inside `<answer>…</answer>`.
    pub well_formed: f64,
    /// Items solved completely.
    pub solved: f64,
    /// Empty cells filled as [`row_only_fill`] fills them, over empty cells.
    pub flawed_agreement: f64,
}

/// Greedy evaluation with the RL sampler.
pub fn evaluate<B: Backend>(
    model: &DiffusionLm<B>,
    tokenizer: &ChatTokenizer,
    items: &[TaskItem],
) -> anyhow::Result<Scores> {
    let config = eval_sampler();
    let eos = tokenizer.eos_id();
    let (mut correct, mut total, mut well, mut solved) = (0u64, 0u64, 0usize, 0usize);
    let mut flawed = 0u64;
    for chunk in items.chunks(EVAL_CHUNK) {
        let prompts = chunk
            .iter()
            .map(|it| prompt_ids(tokenizer, it, PromptStyle::Compact, true, MAX_PROMPT_TOKENS))
            .collect::<Result<Vec<_>, _>>()?;
        let generation = generate(model, &prompts, &config)?;
        for (item, ids) in chunk.iter().zip(&generation.completions) {
            let text = completion_text(tokenizer, ids, eos)?;
            let score = rewards::eval_correct(Task::Sudoku, &text, item)?;
            correct += u64::from(score.correct);
            total += u64::from(score.total);
            solved += usize::from(score.total > 0 && score.correct == score.total);
            let digits = rewards::sudoku::extract_answer(&text);
            let is_well = text.starts_with(ANSWER_TOKENS[0])
                && text.ends_with(ANSWER_TOKENS[1])
                && digits.as_ref().is_some_and(|d| d.len() == 16);
            well += usize::from(is_well);
            if let (true, Some(d)) = (is_well, digits) {
                let puzzle = puzzle_of(item);
                let fill = row_only_fill(puzzle);
                flawed += puzzle
                    .bytes()
                    .zip(fill.bytes().zip(d.bytes()))
                    .filter(|&(p, (f, g))| p == b'0' && f == g)
                    .count() as u64;
            }
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
