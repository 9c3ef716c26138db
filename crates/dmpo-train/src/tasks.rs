//! Training and evaluation items for a recipe, and how they become prompt token ids.

use std::path::Path;

use dllm_model::{ChatMessage, LladaTokenizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rewards::{Task, TaskItem};

use crate::error::{Result, TrainError};
use crate::recipe::{PromptStyle, TaskSection};

/// Where training prompts come from.
pub enum TrainData {
    /// A fixed list, sampled with replacement.
    Items(Vec<TaskItem>),
    /// Fresh generated Sudoku puzzles (blank range inclusive).
    Sudoku([usize; 2]),
    /// Fresh generated Countdown items.
    Countdown,
}

impl TrainData {
    /// Loads or sets up the training data of `task`.
    pub fn open(section: &TaskSection, task: Task) -> Result<Self> {
        match section.train.as_str() {
            "generate" => match task {
                Task::Sudoku => Ok(Self::Sudoku(section.sudoku_blanks)),
                Task::Countdown => Ok(Self::Countdown),
                other => Err(TrainError::Data(format!(
                    "task.train = \"generate\" is only available for sudoku and countdown, not {other}"
                ))),
            },
            path => {
                let items = rewards::data::load(task, Path::new(path))?;
                if items.is_empty() {
                    return Err(TrainError::Data(format!("{path}: no training items")));
                }
                Ok(Self::Items(items))
            }
        }
    }

    /// `count` items for rollout step `step`; the same (seed, step) always gives the same items.
    pub fn batch(&self, seed: u64, step: usize, count: usize) -> Result<Vec<TaskItem>> {
        let stream = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (step as u64).wrapping_add(1);
        match self {
            Self::Items(items) => {
                let mut rng = ChaCha8Rng::seed_from_u64(stream);
                Ok((0..count)
                    .map(|_| items[rng.random_range(0..items.len())].clone())
                    .collect())
            }
            Self::Sudoku([lo, hi]) => {
                let mut rng = ChaCha8Rng::seed_from_u64(stream);
                let mut out = Vec::with_capacity(count);
                for i in 0..count {
                    let blanks = rng.random_range(*lo..=*hi);
                    out.extend(rewards::generate::sudoku_items(
                        stream ^ ((i as u64) << 32),
                        1,
                        blanks,
                    )?);
                }
                Ok(out)
            }
            Self::Countdown => Ok(rewards::generate::countdown_items(
                stream,
                count,
                &rewards::generate::CountdownConfig::default(),
            )?),
        }
    }
}

/// Loads the evaluation items (`builtin` = the shipped Countdown / Sudoku test sets).
pub fn eval_items(section: &TaskSection, task: Task, limit: usize) -> Result<Vec<TaskItem>> {
    let mut items = match (section.eval.as_str(), task) {
        ("builtin", Task::Sudoku) => rewards::data::sudoku_4x4_test(),
        ("builtin", Task::Countdown) => rewards::data::countdown_cd3_test(),
        ("builtin", other) => {
            return Err(TrainError::Data(format!(
                "no built-in evaluation set for {other}; set task.eval to a file"
            )))
        }
        (path, _) => rewards::data::load(task, Path::new(path))?,
    };
    if limit > 0 {
        items.truncate(limit);
    }
    if items.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: no evaluation items",
            section.eval
        )));
    }
    Ok(items)
}

/// The text put in the user turn for `item`.
pub fn prompt_text(item: &TaskItem, style: PromptStyle, eval: bool) -> String {
    match style {
        PromptStyle::Reference if eval => rewards::prompts::eval_prompt(item),
        PromptStyle::Reference => rewards::prompts::training_prompt(item),
        PromptStyle::Compact => match &item.truth {
            rewards::GroundTruth::Sudoku { puzzle, .. } => puzzle.clone(),
            rewards::GroundTruth::Countdown { numbers, target } => format!(
                "{} -> {target}",
                numbers
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            _ => item.question.clone(),
        },
    }
}

/// Prompt token ids: the chat template around the prompt text, left-truncated to `max_tokens`.
pub fn prompt_ids(
    tokenizer: &LladaTokenizer,
    item: &TaskItem,
    style: PromptStyle,
    eval: bool,
    max_tokens: usize,
) -> Result<Vec<u32>> {
    let mut ids = tokenizer.encode_chat(&[ChatMessage::user(prompt_text(item, style, eval))])?;
    if ids.len() > max_tokens {
        ids.drain(..ids.len() - max_tokens);
    }
    Ok(ids)
}

/// Decodes a completion up to (not including) its first EOS.
pub fn completion_text(tokenizer: &LladaTokenizer, ids: &[u32], eos: u32) -> Result<String> {
    let end = ids.iter().position(|&t| t == eos).unwrap_or(ids.len());
    Ok(tokenizer.decode(&ids[..end], true)?)
}
