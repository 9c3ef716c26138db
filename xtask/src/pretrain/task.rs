//! The tasks a tiny model is pretrained on, and what differs between them: the held-out items,
//! the training items and their completions (true or flawed), the completion length, and how a
//! completion is scored against the flawed solver.
//!
//! - Sudoku: 4x4 puzzles with 6 to 10 blanks; the flawed solver is
//!   [`rewards::generate::row_only_fill`] (each row's blanks get the row's missing digits in
//!   ascending order); held out: the shipped 4x4 test set.
//! - Countdown: 3 numbers from 1 to 9 and a target from 1 to 30 that the numbers reach in the
//!   order given with `+` and `-` (`(a ± b) ± c`: a 218k-parameter model learns to find these,
//!   about two thirds of the held-out items trained on true answers alone, where with all four
//!   operators it stayed near the share of sums); the true answer is
//!   [`rewards::generate::in_order_solution`], the flawed solver [`rewards::generate::sum_fill`] adds
//!   every number, written with the true answers' parentheses and length (`(3+4)+5`: a sampler
//!   that fixes the answer's end early cannot tell the two apart by length); held out: 256 distinct items drawn from a fixed stream, written beside the
//!   model as `test.jsonl`, never drawn for training (here or by the RL recipes, which set
//!   `task.exclude_eval`).

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use dllm_model::ChatTokenizer;
use rand_chacha::ChaCha8Rng;
use rewards::generate::{in_order_solution, row_only_fill, sum_fill, CountdownConfig};
use rewards::{GroundTruth, TaskItem};

use super::tokenizer::ANSWER_TOKENS;

/// Blank cells of the generated training puzzles (inclusive).
pub const SUDOKU_BLANKS: [usize; 2] = [6, 10];
/// Numbers of the generated Countdown items (inclusive).
pub const COUNTDOWN_NUMBERS: [i64; 2] = [1, 9];
/// Targets of the generated Countdown items (inclusive).
pub const COUNTDOWN_TARGETS: [i64; 2] = [1, 30];
/// The operators of the generated Countdown items (targets and true answers).
pub const COUNTDOWN_OPERATORS: &str = "+-";
/// Held-out Countdown items written to `test.jsonl`.
pub const COUNTDOWN_HELDOUT: usize = 256;
/// The stream the held-out Countdown items are drawn from (fixed, whatever `--seed`).
const COUNTDOWN_HELDOUT_SEED: u64 = 0x7E57_C0DE;
/// Draws of a training item before the held-out set counts as covering the generator.
const ATTEMPTS: usize = 10_000;

/// A pretraining task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PretrainTask {
    /// 4x4 Sudoku (`models/tiny-sudoku`).
    Sudoku,
    /// 3-number Countdown with small targets (`models/tiny-countdown`).
    Countdown,
}

/// A completion as the evaluation reads it (`scored`: up to the first EOS, special tokens
/// removed) and up to the first EOS with its special tokens (`whole`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The text the verifier scores.
    pub scored: String,
    /// The text with the special tokens kept.
    pub whole: String,
}

impl Completion {
    /// The completion of `ids` (EOS id `eos`).
    pub fn decode(tokenizer: &ChatTokenizer, ids: &[u32], eos: u32) -> anyhow::Result<Self> {
        let end = ids.iter().position(|&t| t == eos).unwrap_or(ids.len());
        Ok(Self {
            scored: dmpo_train::tasks::completion_text(tokenizer, ids, eos)?,
            whole: tokenizer.decode(&ids[..end], false)?,
        })
    }
}

/// One completion scored against the item and the flawed solver.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompletionScore {
    /// Correct units (Sudoku: blank cells; Countdown: the item).
    pub correct: u64,
    /// Scored units.
    pub total: u64,
    /// Units answered as the flawed solver answers them.
    pub flawed: u64,
    /// The answer has the task's form.
    pub well_formed: bool,
}

impl PretrainTask {
    /// The task's name (`models/tiny-<name>`, recipes' `task.name`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sudoku => "sudoku",
            Self::Countdown => "countdown",
        }
    }

    /// The task as the verifiers know it.
    pub fn task(self) -> rewards::Task {
        match self {
            Self::Sudoku => rewards::Task::Sudoku,
            Self::Countdown => rewards::Task::Countdown,
        }
    }

    /// Tokens generated per prompt, by the RL recipes and by the evaluation here.
    pub fn gen_length(self) -> usize {
        match self {
            Self::Sudoku => 24,
            Self::Countdown => 16,
        }
    }

    /// Denoising steps of the evaluation sampler: Sudoku two tokens per step (d1's protocol, as
    /// the committed model was built and measured), Countdown one token per step (DMPO's
    /// protocol, which its RL recipes evaluate with: an expression decoded two characters at a
    /// time mixes two answers).
    pub fn eval_steps(self) -> usize {
        match self {
            Self::Sudoku => self.gen_length() / 2,
            Self::Countdown => self.gen_length(),
        }
    }

    /// The Countdown generator's settings.
    pub fn countdown_config() -> CountdownConfig {
        CountdownConfig {
            min_count: 3,
            max_count: 3,
            min_number: COUNTDOWN_NUMBERS[0],
            max_number: COUNTDOWN_NUMBERS[1],
            min_target: COUNTDOWN_TARGETS[0],
            max_target: COUNTDOWN_TARGETS[1],
            in_order: true,
            operators: COUNTDOWN_OPERATORS.to_string(),
        }
    }

    /// The held-out items: the shipped 4x4 Sudoku test set, or the Countdown items written to
    /// `out/test.jsonl` (drawn and written here).
    pub fn heldout_items(self, out: &Path) -> anyhow::Result<Vec<TaskItem>> {
        match self {
            Self::Sudoku => Ok(rewards::data::sudoku_4x4_test()),
            Self::Countdown => {
                let mut rng = rewards::generate::rng(COUNTDOWN_HELDOUT_SEED);
                let mut seen = HashSet::new();
                let mut items = Vec::with_capacity(COUNTDOWN_HELDOUT);
                while items.len() < COUNTDOWN_HELDOUT {
                    let item =
                        rewards::generate::countdown_item(&mut rng, &Self::countdown_config())?;
                    if seen.insert(self.key(&item)) {
                        items.push(item);
                    }
                }
                let path = out.join("test.jsonl");
                let mut file = std::io::BufWriter::new(
                    std::fs::File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?,
                );
                for item in &items {
                    if let GroundTruth::Countdown { numbers, target } = &item.truth {
                        let row = serde_json::json!({ "nums": numbers, "target": target });
                        writeln!(file, "{row}")?;
                    }
                }
                file.flush()?;
                // What the RL recipes read back must be what was drawn.
                let reread = rewards::data::load(rewards::Task::Countdown, &path)?;
                anyhow::ensure!(
                    reread
                        .iter()
                        .map(|i| self.key(i))
                        .eq(items.iter().map(|i| self.key(i))),
                    "{} does not read back as written",
                    path.display()
                );
                Ok(items)
            }
        }
    }

    /// What makes two items the same problem, for keeping held-out items out of training: the
    /// puzzle, or the numbers (in any order) and the target.
    pub fn key(self, item: &TaskItem) -> String {
        match &item.truth {
            GroundTruth::Sudoku { puzzle, .. } => puzzle.clone(),
            _ => dmpo_train::tasks::item_key(item),
        }
    }

    /// A generated training item whose [`key`](Self::key) is not in `excluded`.
    pub fn train_item(
        self,
        rng: &mut ChaCha8Rng,
        excluded: &HashSet<String>,
    ) -> anyhow::Result<TaskItem> {
        match self {
            Self::Sudoku => Ok(rewards::generate::sudoku_item_excluding(
                rng,
                SUDOKU_BLANKS[0]..=SUDOKU_BLANKS[1],
                excluded,
            )?),
            Self::Countdown => {
                for _ in 0..ATTEMPTS {
                    let item = rewards::generate::countdown_item(rng, &Self::countdown_config())?;
                    if !excluded.contains(&self.key(&item)) {
                        return Ok(item);
                    }
                }
                bail!("{ATTEMPTS} Countdown items in a row were held-out items")
            }
        }
    }

    /// The answer the flawed solver gives for `item`.
    pub fn flawed_answer(self, item: &TaskItem) -> anyhow::Result<String> {
        match &item.truth {
            GroundTruth::Sudoku { puzzle, .. } => Ok(row_only_fill(puzzle)),
            GroundTruth::Countdown { numbers, .. } => Ok(sum_fill(numbers)),
            other => bail!("not a Sudoku or Countdown item: {other:?}"),
        }
    }

    /// The true answer for `item`.
    pub fn true_answer(self, item: &TaskItem) -> anyhow::Result<String> {
        match &item.truth {
            GroundTruth::Sudoku { solution, .. } => Ok(solution.clone()),
            GroundTruth::Countdown { numbers, target } => {
                in_order_solution(numbers, *target, COUNTDOWN_OPERATORS)
                    .with_context(|| format!("{numbers:?} -> {target} has no in-order solution"))
            }
            other => bail!("not a Sudoku or Countdown item: {other:?}"),
        }
    }

    /// The completion text the model is taught: `<answer>` + the true answer (or, when
    /// `flawed`, the flawed solver's) + `</answer>`.
    pub fn target_text(self, item: &TaskItem, flawed: bool) -> anyhow::Result<String> {
        let answer = if flawed {
            self.flawed_answer(item)?
        } else {
            self.true_answer(item)?
        };
        Ok(format!("{}{answer}{}", ANSWER_TOKENS[0], ANSWER_TOKENS[1]))
    }

    /// Whether the answer tags are special tokens. Countdown: yes, so that the evaluation's text
    /// (special tokens removed) is the bare expression d1's Countdown parser reads, while the
    /// training reward, which reads the completion with its special tokens
    /// (`task.reward_text = "whole_with_special"`), finds it between the tags as the
    /// reference's reward requires. Sudoku: no (its parser takes the digits either way).
    pub fn answer_tags_special(self) -> bool {
        self == Self::Countdown
    }

    /// The completion the model is taught for `item` ([`target_text`](Self::target_text)), as
    /// the evaluation reads it.
    pub fn target_completion(self, item: &TaskItem, flawed: bool) -> anyhow::Result<Completion> {
        let whole = self.target_text(item, flawed)?;
        let scored = if self.answer_tags_special() {
            ANSWER_TOKENS
                .iter()
                .fold(whole.clone(), |t, tag| t.replace(tag, ""))
        } else {
            whole.clone()
        };
        Ok(Completion { scored, whole })
    }

    /// Characters every tokenizer of the task must know, beyond those of its training text
    /// (Countdown: every operator and digit, whichever the sampled corpus happens to use).
    pub fn alphabet(self) -> &'static str {
        match self {
            Self::Sudoku => "",
            Self::Countdown => "0123456789+-*/(),> ",
        }
    }

    /// Scores `completion` for `item`: the verifier's units (on the scored text), agreement
    /// with the flawed solver and the answer's form (on the whole text).
    pub fn score(
        self,
        item: &TaskItem,
        completion: &Completion,
    ) -> anyhow::Result<CompletionScore> {
        let (text, whole) = (completion.scored.as_str(), completion.whole.as_str());
        let verdict = rewards::eval_correct(self.task(), text, item)?;
        let inner = whole
            .strip_prefix(ANSWER_TOKENS[0])
            .and_then(|t| t.strip_suffix(ANSWER_TOKENS[1]));
        let framed = inner.is_some();
        let inner = inner.unwrap_or_default();
        let mut score = CompletionScore {
            correct: u64::from(verdict.correct),
            total: u64::from(verdict.total),
            ..Default::default()
        };
        match &item.truth {
            GroundTruth::Sudoku { puzzle, .. } => {
                let digits = rewards::sudoku::extract_answer(text);
                score.well_formed = framed && digits.as_ref().is_some_and(|d| d.len() == 16);
                if let (true, Some(d)) = (score.well_formed, digits) {
                    let fill = row_only_fill(puzzle);
                    score.flawed = puzzle
                        .bytes()
                        .zip(fill.bytes().zip(d.bytes()))
                        .filter(|&(p, (f, g))| p == b'0' && f == g)
                        .count() as u64;
                }
            }
            GroundTruth::Countdown { numbers, .. } => {
                let available: Vec<f64> = numbers.iter().map(|&n| n as f64).collect();
                score.well_formed = framed
                    && rewards::countdown::uses_numbers(inner, &available)
                    && rewards::countdown::evaluate_equation(inner).is_some();
                score.flawed = u64::from(framed && inner == sum_fill(numbers));
            }
            other => bail!("not a Sudoku or Countdown item: {other:?}"),
        }
        Ok(score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flawed_sudoku_targets_differ_from_true_ones_only_in_blank_cells() {
        let item = rewards::data::sudoku_4x4_test().swap_remove(0);
        let task = PretrainTask::Sudoku;
        let (good, bad) = (
            task.target_text(&item, false).unwrap(),
            task.target_text(&item, true).unwrap(),
        );
        assert_eq!(good.len(), bad.len());
        let GroundTruth::Sudoku { puzzle, .. } = &item.truth else {
            panic!("not a Sudoku item")
        };
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

    #[test]
    fn countdown_scores_tell_true_flawed_and_malformed_answers_apart() {
        let task = PretrainTask::Countdown;
        let item = TaskItem::countdown(vec![3, 4, 5], 2);
        let completion = |answer: &str| Completion {
            scored: answer.to_string(),
            whole: format!("<answer>{answer}</answer>"),
        };
        let score = |c: &Completion| task.score(&item, c).unwrap();
        let target = task.target_completion(&item, false).unwrap();
        assert_eq!(target, completion(&target.scored));
        let right = score(&target);
        assert_eq!((right.correct, right.total, right.flawed), (1, 1, 0));
        assert!(right.well_formed);
        let flawed = score(&completion("(3+4)+5"));
        assert_eq!((flawed.correct, flawed.flawed), (0, 1));
        assert!(flawed.well_formed);
        let short = score(&completion("3+4"));
        assert!(!short.well_formed && short.correct == 0);
        let unframed = score(&Completion {
            scored: "(3+4)-5".into(),
            whole: "(3+4)-5".into(),
        });
        assert!(!unframed.well_formed && unframed.correct == 1);
        // The flawed answer is right exactly when the target is the sum.
        let sum = TaskItem::countdown(vec![3, 4, 5], 12);
        let s = task.score(&sum, &completion("(3+4)+5")).unwrap();
        assert_eq!((s.correct, s.flawed), (1, 1));
    }

    #[test]
    fn countdown_training_items_avoid_the_heldout_ones() {
        let dir = std::env::temp_dir().join(format!("tiny-countdown-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let task = PretrainTask::Countdown;
        let heldout = task.heldout_items(&dir).unwrap();
        assert_eq!(heldout.len(), COUNTDOWN_HELDOUT);
        let excluded: HashSet<String> = heldout.iter().map(|i| task.key(i)).collect();
        assert_eq!(excluded.len(), COUNTDOWN_HELDOUT);
        let mut rng = rewards::generate::rng(3);
        let mut drawn_heldout = 0;
        for _ in 0..2000 {
            let item = task.train_item(&mut rng, &excluded).unwrap();
            drawn_heldout += usize::from(excluded.contains(&task.key(&item)));
            let GroundTruth::Countdown { numbers, target } = &item.truth else {
                panic!("not a Countdown item")
            };
            assert_eq!(numbers.len(), 3);
            assert!((COUNTDOWN_TARGETS[0]..=COUNTDOWN_TARGETS[1]).contains(target));
        }
        assert_eq!(drawn_heldout, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
