//! Training and evaluation items for a recipe, and how they become prompt token ids.

use std::collections::HashSet;
use std::path::Path;

use dllm_model::{ChatMessage, ChatTokenizer, ChatTokens};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rewards::generate::CountdownConfig;
use rewards::{Task, TaskItem};

use crate::error::{Result, TrainError};
use crate::recipe::{CompletionText, EvalOrder, PromptStyle, TaskSection};

/// Where training prompts come from.
pub enum TrainData {
    /// A fixed list, sampled with replacement.
    Items(Vec<TaskItem>),
    /// Fresh generated Sudoku puzzles.
    Sudoku {
        /// Blank cells per puzzle (range, inclusive).
        blanks: [usize; 2],
        /// [`item_key`]s never drawn (the evaluation set, under `task.exclude_eval`).
        excluded: HashSet<String>,
    },
    /// Fresh generated Countdown items.
    Countdown {
        /// The generator's ranges.
        config: CountdownConfig,
        /// [`item_key`]s never drawn (the evaluation set, under `task.exclude_eval`).
        excluded: HashSet<String>,
    },
}

/// Draws of a generated item before one outside the excluded set counts as impossible.
const EXCLUSION_ATTEMPTS: usize = 10_000;

impl TrainData {
    /// Loads or sets up the training data of `task`; generated items never equal one of
    /// `eval_set` when `task.exclude_eval` is set.
    pub fn open(section: &TaskSection, task: Task, eval_set: &[TaskItem]) -> Result<Self> {
        let excluded: HashSet<String> = if section.exclude_eval {
            eval_set.iter().map(item_key).collect()
        } else {
            HashSet::new()
        };
        match section.train.as_str() {
            "generate" => match task {
                Task::Sudoku => Ok(Self::Sudoku {
                    blanks: section.sudoku_blanks,
                    excluded,
                }),
                Task::Countdown => {
                    let default = CountdownConfig::default();
                    let (min_count, max_count) = match section.countdown_numbers {
                        0 => (default.min_count, default.max_count),
                        n => (n, n),
                    };
                    let [min_number, max_number] = section.countdown_number_range;
                    let [min_target, max_target] = section.countdown_target_range;
                    let config = CountdownConfig {
                        min_count,
                        max_count,
                        min_number,
                        max_number,
                        min_target,
                        max_target,
                        in_order: section.countdown_in_order,
                        operators: section.countdown_operators.clone(),
                    };
                    // A setting the generator cannot serve fails here, before training.
                    rewards::generate::countdown_item(&mut rewards::generate::rng(0), &config)
                        .map_err(|e| {
                            TrainError::Data(format!(
                                "task.countdown_numbers / countdown_number_range / countdown_target_range / countdown_in_order / countdown_operators: {e}"
                            ))
                        })?;
                    Ok(Self::Countdown { config, excluded })
                }
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
            Self::Sudoku {
                blanks: [lo, hi],
                excluded,
            } => {
                let mut rng = ChaCha8Rng::seed_from_u64(stream);
                let mut out = Vec::with_capacity(count);
                for i in 0..count {
                    let blanks = rng.random_range(*lo..=*hi);
                    let mut draw = 0u64;
                    let item = loop {
                        // The first draw is the one an unexcluded run makes.
                        let item_seed =
                            stream ^ ((i as u64) << 32) ^ draw.wrapping_mul(0xD1B5_4A32_D192_ED03);
                        let item = rewards::generate::sudoku_items(item_seed, 1, blanks)?
                            .pop()
                            .ok_or_else(|| {
                                TrainError::Data("the Sudoku generator made no puzzle".into())
                            })?;
                        if !excluded.contains(&item_key(&item)) {
                            break item;
                        }
                        draw += 1;
                        if draw as usize >= EXCLUSION_ATTEMPTS {
                            return Err(exhausted(excluded.len()));
                        }
                    };
                    out.push(item);
                }
                Ok(out)
            }
            Self::Countdown { config, excluded } => {
                let mut rng = rewards::generate::rng(stream);
                let mut out = Vec::with_capacity(count);
                let mut draws = 0usize;
                while out.len() < count {
                    let item = rewards::generate::countdown_item(&mut rng, config)?;
                    draws += 1;
                    if !excluded.contains(&item_key(&item)) {
                        out.push(item);
                    } else if draws >= EXCLUSION_ATTEMPTS + count {
                        return Err(exhausted(excluded.len()));
                    }
                }
                Ok(out)
            }
        }
    }
}

/// The error when the generator keeps drawing excluded items.
fn exhausted(excluded: usize) -> TrainError {
    TrainError::Data(format!(
        "the generator drew only items of the evaluation set ({excluded} excluded by task.exclude_eval) \
         in {EXCLUSION_ATTEMPTS} attempts: widen the generator's ranges"
    ))
}

/// What makes two items the same problem: a Sudoku puzzle, or a Countdown target with its
/// numbers in any order; other tasks' items by their question.
pub fn item_key(item: &TaskItem) -> String {
    match &item.truth {
        rewards::GroundTruth::Sudoku { puzzle, .. } => format!("sudoku:{puzzle}"),
        rewards::GroundTruth::Countdown { numbers, target } => {
            let mut sorted = numbers.clone();
            sorted.sort_unstable();
            format!("countdown:{sorted:?}->{target}")
        }
        _ => format!("question:{}", item.question),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Recipe;

    fn section(extra: &str) -> TaskSection {
        let text = format!("[model]\npath = \"m\"\n[task]\nname = \"countdown\"\n{extra}");
        Recipe::parse(&text, Path::new("r.toml"), &[]).unwrap().task
    }

    fn countdown(item: &TaskItem) -> (Vec<i64>, i64) {
        match &item.truth {
            rewards::GroundTruth::Countdown { numbers, target } => (numbers.clone(), *target),
            other => panic!("not a Countdown item: {other:?}"),
        }
    }

    #[test]
    fn generated_countdown_items_follow_the_recipe_s_ranges() {
        let s = section(
            "countdown_numbers = 3\ncountdown_number_range = [1, 9]\ncountdown_target_range = [10, 30]",
        );
        let data = TrainData::open(&s, Task::Countdown, &[]).unwrap();
        for step in 0..4 {
            for item in data.batch(5, step, 16).unwrap() {
                let (numbers, target) = countdown(&item);
                assert_eq!(numbers.len(), 3);
                assert!(numbers.iter().all(|n| (1..=9).contains(n)), "{numbers:?}");
                assert!((10..=30).contains(&target), "{target}");
            }
        }
        // The defaults draw what the generator's defaults draw, as before the ranges existed.
        let default = TrainData::open(&section(""), Task::Countdown, &[]).unwrap();
        let expected = rewards::generate::countdown_items(
            7u64.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 3,
            4,
            &CountdownConfig::default(),
        )
        .unwrap();
        assert_eq!(default.batch(7, 2, 4).unwrap(), expected);
        // A range the generator cannot serve fails at once, naming the keys.
        let e = TrainData::open(
            &section("countdown_number_range = [9, 1]"),
            Task::Countdown,
            &[],
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("countdown_number_range"), "{e}");
    }

    #[test]
    fn excluded_evaluation_items_are_never_drawn_for_training() {
        let ranges = "countdown_numbers = 3\ncountdown_number_range = [1, 3]\ncountdown_target_range = [1, 9]";
        let open = |exclude: bool, eval: &[TaskItem]| {
            let s = section(&format!("{ranges}\nexclude_eval = {exclude}"));
            TrainData::open(&s, Task::Countdown, eval).unwrap()
        };
        // A small space: without exclusion the evaluation items are drawn often.
        let drawn: Vec<TaskItem> = (0..8)
            .flat_map(|step| open(false, &[]).batch(1, step, 32).unwrap())
            .collect();
        let eval: Vec<TaskItem> = drawn[..6].to_vec();
        let keys: HashSet<String> = eval.iter().map(item_key).collect();
        let hits = |exclude: bool| {
            let data = open(exclude, &eval);
            (0..8)
                .flat_map(|step| data.batch(1, step, 32).unwrap())
                .filter(|it| keys.contains(&item_key(it)))
                .count()
        };
        assert!(hits(false) > 0);
        assert_eq!(hits(true), 0);
        // The same problem with its numbers in another order is the same item.
        let (mut numbers, target) = countdown(&eval[0]);
        numbers.reverse();
        assert_eq!(
            item_key(&TaskItem::countdown(numbers, target)),
            item_key(&eval[0])
        );
        // Sudoku: the excluded puzzles are redrawn, the others are those of an unexcluded run.
        let sudoku = |exclude: &[TaskItem]| {
            let mut s = section("exclude_eval = true");
            s.name = "sudoku".into();
            TrainData::open(&s, Task::Sudoku, exclude)
                .unwrap()
                .batch(3, 0, 8)
                .unwrap()
        };
        let plain = sudoku(&[]);
        let avoided = sudoku(&plain[..2]);
        assert_eq!(avoided[2..], plain[2..]);
        assert!(avoided[..2].iter().all(|it| !plain[..2].contains(it)));
    }

    #[test]
    fn an_evaluation_set_covering_the_generator_is_an_error_not_a_hang() {
        let s = section(
            "countdown_numbers = 2\ncountdown_number_range = [1, 1]\ncountdown_target_range = [1, 2]\nexclude_eval = true",
        );
        let all: Vec<TaskItem> = (0..4)
            .flat_map(|step| {
                TrainData::open(&s, Task::Countdown, &[])
                    .unwrap()
                    .batch(0, step, 8)
                    .unwrap()
            })
            .collect();
        let data = TrainData::open(&s, Task::Countdown, &all).unwrap();
        let e = data.batch(0, 0, 4).unwrap_err();
        assert!(e.to_string().contains("task.exclude_eval"), "{e}");
    }
}
