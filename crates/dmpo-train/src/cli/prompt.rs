//! `dmpo prompt`: the exact text (chat template applied) that training or evaluation feeds the
//! model for one item of a dataset, for debugging prompts.

use std::io::Write;
use std::path::PathBuf;

use dllm_model::{ChatTokenizer, ChatTokens};

use crate::recipe::{CompletionText, EvalOrder, PromptStyle, TaskSection};
use crate::tasks::{eval_items, prompt_string, TrainData};

/// Arguments of `dmpo prompt`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Task: gsm8k, math, countdown or sudoku.
    #[arg(long)]
    pub task: String,
    /// Dataset file (JSONL, CSV, Parquet), or `builtin` (the shipped Countdown / Sudoku test sets).
    #[arg(long)]
    pub data: String,
    /// Item index (0-based): in file order for training prompts, in the evaluation's order
    /// (`--order`) with `--eval`.
    #[arg(long)]
    pub index: usize,
    /// The evaluation prompt instead of the training prompt.
    #[arg(long)]
    pub eval: bool,
    /// Evaluation order: `reference` (d1's and DMPO's seed-42 subset of the built-in sets) or `file`.
    #[arg(long, value_enum, default_value = "reference")]
    pub order: EvalOrder,
    /// Prompt style: `reference` (the paper recipes') or `compact` (the tiny models').
    #[arg(long, default_value = "reference")]
    pub style: String,
    /// Model directory whose `tokenizer.json` gives the template's special tokens (default:
    /// LLaDA-8B-Instruct's); also prints the token count to stderr.
    #[arg(long)]
    pub model: Option<PathBuf>,
}

/// Prints the prompt text to stdout, byte for byte (no trailing newline added).
pub fn run(a: Args) -> anyhow::Result<()> {
    let task: rewards::Task = a.task.parse()?;
    let style: PromptStyle = a.style.parse().map_err(anyhow::Error::msg)?;
    let section = TaskSection {
        name: a.task.clone(),
        train: a.data.clone(),
        eval: a.data.clone(),
        prompt_style: style,
        sudoku_blanks: [6, 10],
        max_prompt_tokens: usize::MAX,
        reward_text: CompletionText::Whole,
        countdown_numbers: 0,
        shuffle_seed: None,
        holdout: 0,
        countdown_number_range: [1, 100],
        countdown_target_range: [1, 100],
        countdown_in_order: false,
        countdown_operators: rewards::generate::COUNTDOWN_OPERATORS.to_string(),
        exclude_eval: false,
    };
    let items = if a.eval {
        eval_items(&section, task, a.order, 0)?
    } else if a.data == "builtin" {
        eval_items(&section, task, EvalOrder::File, 0)?
    } else {
        match TrainData::open(&section, task, &[])? {
            TrainData::Items(items) => items,
            _ => anyhow::bail!("--data must name a file or `builtin`"),
        }
    };
    let item = items.get(a.index).ok_or_else(|| {
        anyhow::anyhow!(
            "--index {} is out of range: {} has {} items",
            a.index,
            a.data,
            items.len()
        )
    })?;
    let tokenizer = a
        .model
        .as_ref()
        .map(|m| ChatTokenizer::from_file(m.join("tokenizer.json")))
        .transpose()?;
    let chat = tokenizer
        .as_ref()
        .map_or(ChatTokens::LLADA, |t| t.chat_tokens());
    let text = prompt_string(&chat, item, style, a.eval);
    if let Some(t) = &tokenizer {
        eprintln!("{} tokens", t.encode(&text)?.len());
    }
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
