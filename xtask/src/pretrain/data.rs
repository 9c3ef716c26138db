//! The pretraining data: generated 4x4 Sudoku outside the test set, one independent stream per
//! step, the completion text the model is taught (the true or the flawed solution), and the
//! token ids of prompts and completions.

use std::collections::HashSet;

use anyhow::{bail, ensure};
use dllm_model::ChatTokenizer;
use dmpo_train::recipe::PromptStyle;
use dmpo_train::tasks::prompt_ids;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rewards::generate::row_only_fill;
use rewards::{GroundTruth, TaskItem};

use super::tokenizer::ANSWER_TOKENS;
use super::{GEN_LENGTH, MAX_PROMPT_TOKENS};

/// Blank cells of the generated training puzzles (inclusive).
pub const TRAIN_BLANKS: [usize; 2] = [6, 10];

/// The completion text the model is taught: `<answer>` + solution + `</answer>`, the true
/// solution or, when `flawed`, the row-only heuristic's fill of the puzzle.
pub fn target_text(item: &TaskItem, flawed: bool) -> anyhow::Result<String> {
    match &item.truth {
        GroundTruth::Sudoku { solution, puzzle } => {
            let answer = if flawed {
                row_only_fill(puzzle)
            } else {
                solution.clone()
            };
            Ok(format!("{}{answer}{}", ANSWER_TOKENS[0], ANSWER_TOKENS[1]))
        }
        other => bail!("not a Sudoku item: {other:?}"),
    }
}

/// The puzzle of a Sudoku item (empty for other tasks).
pub fn puzzle_of(item: &TaskItem) -> &str {
    match &item.truth {
        GroundTruth::Sudoku { puzzle, .. } => puzzle,
        _ => "",
    }
}

/// A generated training item, never a puzzle of `excluded` (the test set).
pub fn train_item(rng: &mut ChaCha8Rng, excluded: &HashSet<String>) -> anyhow::Result<TaskItem> {
    Ok(rewards::generate::sudoku_item_excluding(
        rng,
        TRAIN_BLANKS[0]..=TRAIN_BLANKS[1],
        excluded,
    )?)
}

/// The data stream of step `step`: independent of every other step, fixed by the seed.
pub fn step_rng(seed: u64, step: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (step as u64 + 1))
}

/// Prompt and completion ids of training items, every prompt `prompt_len` tokens.
pub struct Encoder<'a> {
    /// The trained tokenizer.
    pub tokenizer: &'a ChatTokenizer,
    /// The length every prompt has.
    pub prompt_len: usize,
    /// The EOS id that pads completions to [`GEN_LENGTH`].
    pub eos: u32,
}

impl Encoder<'_> {
    /// The prompt ids of `item`, refused unless exactly `prompt_len` long.
    pub fn prompt(&self, item: &TaskItem) -> anyhow::Result<Vec<u32>> {
        let ids = prompt_ids(
            self.tokenizer,
            item,
            PromptStyle::Compact,
            false,
            MAX_PROMPT_TOKENS,
        )?;
        ensure!(
            ids.len() == self.prompt_len,
            "prompt of {} tokens, expected {} (prompts must not need padding)",
            ids.len(),
            self.prompt_len
        );
        Ok(ids)
    }

    /// The completion ids of `item` (see [`target_text`]), padded with EOS to [`GEN_LENGTH`].
    pub fn completion(&self, item: &TaskItem, flawed: bool) -> anyhow::Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(&target_text(item, flawed)?)?;
        ensure!(
            ids.len() <= GEN_LENGTH,
            "target of {} tokens does not fit gen_length {GEN_LENGTH}",
            ids.len()
        );
        ids.resize(GEN_LENGTH, self.eos);
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flawed_targets_differ_from_true_ones_only_in_blank_cells() {
        let item = rewards::data::sudoku_4x4_test().swap_remove(0);
        let (good, bad) = (
            target_text(&item, false).unwrap(),
            target_text(&item, true).unwrap(),
        );
        assert_eq!(good.len(), bad.len());
        let puzzle = puzzle_of(&item);
        let strip = |s: &str| s[ANSWER_TOKENS[0].len()..ANSWER_TOKENS[0].len() + 16].to_string();
        for ((p, g), b) in puzzle
            .bytes()
            .zip(strip(&good).bytes())
            .zip(strip(&bad).bytes())
        {
            if p != b'0' {
                assert_eq!((g, b), (p, p));
            }
        }
    }
}
