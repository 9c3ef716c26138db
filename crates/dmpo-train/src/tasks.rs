//! Training and evaluation items for a recipe, and how they become prompt token ids.

use std::path::Path;

use dllm_model::{ChatMessage, ChatTokenizer, ChatTokens};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rewards::{Task, TaskItem};

use crate::error::{Result, TrainError};
use crate::recipe::{CompletionText, EvalOrder, PromptStyle, TaskSection};

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
                let items = prepare_training_items(
                    rewards::data::load(task, Path::new(path))?,
                    section,
                );
                if items.is_empty() {
                    return Err(TrainError::Data(format!(
                        "{path}: no training items (after task.countdown_numbers and task.holdout)"
                    )));
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

/// The reference's preparation of a training file (DMPO `dmpo_train.py`, `data_utils.py`): the
/// Countdown rows with `countdown_numbers` numbers, shuffled with `shuffle_seed`, less the last
/// `holdout` rows. The shuffle is a seeded Fisher-Yates (ChaCha8), not the `datasets` library's
/// numpy permutation, so the rows held out are not the reference's (docs/reference-parity.md).
pub fn prepare_training_items(mut items: Vec<TaskItem>, section: &TaskSection) -> Vec<TaskItem> {
    if section.countdown_numbers > 0 {
        items.retain(|it| match &it.truth {
            rewards::GroundTruth::Countdown { numbers, .. } => {
                numbers.len() == section.countdown_numbers
            }
            _ => true,
        });
    }
    if let Some(seed) = section.shuffle_seed {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for i in (1..items.len()).rev() {
            items.swap(i, rng.random_range(0..=i));
        }
    }
    items.truncate(items.len().saturating_sub(section.holdout));
    items
}

/// Loads the evaluation items (`builtin` = the shipped Countdown / Sudoku test sets), in `order`,
/// then keeps the first `limit` (0 = all).
pub fn eval_items(
    section: &TaskSection,
    task: Task,
    order: EvalOrder,
    limit: usize,
) -> Result<Vec<TaskItem>> {
    let builtin = section.eval == "builtin";
    let mut items = match (builtin, task) {
        (true, Task::Sudoku) => rewards::data::sudoku_4x4_test(),
        (true, Task::Countdown) => rewards::data::countdown_cd3_test(),
        (true, other) => {
            return Err(TrainError::Data(format!(
                "no built-in evaluation set for {other}; set task.eval to a file"
            )))
        }
        (false, _) => rewards::data::load(task, Path::new(&section.eval))?,
    };
    if order == EvalOrder::Reference && builtin {
        // d1's and DMPO's `np.random.seed(42); np.random.choice(n, 256, replace=False)`.
        if let Some(order) = rewards::data::reference_eval_order(task) {
            items = order.into_iter().map(|i| items[i].clone()).collect();
        }
    }
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

/// The exact text fed to the model for `item`: the chat template around [`prompt_text`], and for
/// a reference-style evaluation the `<reasoning>` prefill DMPO's and d1's evaluations append after
/// it (`eval/gsm8k.py::create_prompt`, `add_reasoning=True`). `dmpo prompt` prints it.
pub fn prompt_string(
    chat: &ChatTokens<'_>,
    item: &TaskItem,
    style: PromptStyle,
    eval: bool,
) -> String {
    let mut text = chat.render(&[ChatMessage::user(prompt_text(item, style, eval))], true);
    if eval && style == PromptStyle::Reference {
        text.push_str(rewards::prompts::EVAL_ASSISTANT_PREFIX);
    }
    text
}

/// Prompt token ids of [`prompt_string`], left-truncated to `max_tokens`.
pub fn prompt_ids(
    tokenizer: &ChatTokenizer,
    item: &TaskItem,
    style: PromptStyle,
    eval: bool,
    max_tokens: usize,
) -> Result<Vec<u32>> {
    let text = prompt_string(&tokenizer.chat_tokens(), item, style, eval);
    let mut ids = tokenizer.encode(&text)?;
    if ids.len() > max_tokens {
        ids.drain(..ids.len() - max_tokens);
    }
    Ok(ids)
}

/// Decodes a completion up to (not including) its first EOS, special tokens removed.
pub fn completion_text(tokenizer: &ChatTokenizer, ids: &[u32], eos: u32) -> Result<String> {
    completion_text_as(tokenizer, ids, eos, CompletionText::UntilEos)
}

/// Decodes a completion as `mode` says (docs/reference-parity.md, row "completion text").
pub fn completion_text_as(
    tokenizer: &ChatTokenizer,
    ids: &[u32],
    eos: u32,
    mode: CompletionText,
) -> Result<String> {
    Ok(match mode {
        CompletionText::UntilEos => {
            let end = ids.iter().position(|&t| t == eos).unwrap_or(ids.len());
            tokenizer.decode(&ids[..end], true)?
        }
        CompletionText::Whole => tokenizer.decode(ids, true)?,
        CompletionText::WholeWithSpecial => tokenizer.decode(ids, false)?,
    })
}
