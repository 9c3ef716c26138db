//! Prompts (docs/algorithm.md §7): the reference system prompts and per-task user-prompt templates
//! for training (DMPO `data_utils.py`) and evaluation (d1 `eval/*.py`).
//!
//! These return the *user message content* as plain strings. The chat template
//! (LLaDA's) is applied by `dllm-model`'s tokenizer code. For evaluation d1 then appends
//! [`EVAL_ASSISTANT_PREFIX`] after the generation prompt.

use crate::task::{GroundTruth, TaskItem};

/// The training system prompt (docs/algorithm.md §7).
pub const SYSTEM_PROMPT: &str =
    "\nRespond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n";

/// The Sudoku system prompt (training and evaluation).
pub const SUDOKU_SYSTEM_PROMPT: &str = "\nPlease solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading left-to-right, top-to-bottom, where '0' represents empty cells.\n\nRules:\n- Fill empty cells with digits 1-4\n- Each row must contain digits 1-4 exactly once\n- Each column must contain digits 1-4 exactly once\n- Each 2x2 box must contain digits 1-4 exactly once\n\nImportant: Your solution must be a COMPLETE 16-character string with only the digits 1-4, representing your final solved grid.\n\nRespond in this exact format:\n<reasoning>\nYour step-by-step solving process\n</reasoning>\n<answer>\n[16-character solution string with no spaces or separators]\n</answer>\n";

/// d1's GSM8K evaluation system prompt.
pub const GSM8K_EVAL_SYSTEM_PROMPT: &str = "You are a math expert. You will be given a question to solve. Solve it step by step. Wrap the final answer in a \\boxed{}. \nRespond in the following format:\n<reasoning>\nYour reasoning here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>";

/// d1's MATH500 evaluation system prompt (its stray `"` is the reference's).
pub const MATH_EVAL_SYSTEM_PROMPT: &str = "You are a math expert. You will be given a question to solve. Solve it step by step. Wrap the final answer in a \\boxed{}.\nRespond in the following format:\n<reasoning>\nYour reasoning here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>\" \n";

/// d1's Countdown evaluation system prompt (the missing space before "Respond" is the reference's).
pub const COUNTDOWN_EVAL_SYSTEM_PROMPT: &str = "Using only the provided numbers, create an arithmetic expression that evaluates to exactly the provided target number. You may use the operations +, -, *, and / as needed, but each number must be used exactly once. Think step-by-step. After reasoning, provide only your final expression inside \\boxed{} tags without including an equals sign or the target number. For example: \\boxed{a + b * c}Respond in the following format:\n<reasoning>\nYour reasoning here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>";

/// What d1 appends after the chat template's assistant header at evaluation.
pub const EVAL_ASSISTANT_PREFIX: &str = "<reasoning>";

/// Python's `str(list)` for integers: `[30, 100, 93]`.
pub fn python_list(numbers: &[i64]) -> String {
    let inner: Vec<String> = numbers.iter().map(i64::to_string).collect();
    format!("[{}]", inner.join(", "))
}

/// The training user prompt of an item (DMPO `data_utils.py`, docs/algorithm.md §7).
pub fn training_prompt(item: &TaskItem) -> String {
    match &item.truth {
        GroundTruth::Gsm8k { .. } => format!("{SYSTEM_PROMPT}\n\n{}", item.question),
        GroundTruth::Math { .. } => format!(
            "{SYSTEM_PROMPT}\n\nYou are a math expert. You will be given a question to solve. Solve it step by step. Wrap the final answer in a \\boxed{{}}. \n\n{}",
            item.question
        ),
        GroundTruth::Countdown { numbers, target } => format!(
            "{SYSTEM_PROMPT}\nUsing only the numbers {}, create an arithmetic expression that evaluates to exactly {target}. You must use all numbers from the list, and each number must be used exactly once. You may use the operations +, -, *, and / as needed. After reasoning, provide only your final expression inside <answer></answer> tags without including an equals sign or the target number. For example, if the numbers are [2, 3, 4] and the target is 5, a valid answer is: <answer>\n2*4-3\n</answer>",
            python_list(numbers)
        ),
        GroundTruth::Sudoku { puzzle, .. } => format!(
            "{SUDOKU_SYSTEM_PROMPT}\n\nSolve the following Sudoku puzzle: {puzzle}\n"
        ),
    }
}

/// The evaluation user prompt of an item (d1 `eval/*.py`, zero-shot):
/// `system_prompt + "\n\n" + question`.
pub fn eval_prompt(item: &TaskItem) -> String {
    let system = match &item.truth {
        GroundTruth::Gsm8k { .. } => GSM8K_EVAL_SYSTEM_PROMPT,
        GroundTruth::Math { .. } => MATH_EVAL_SYSTEM_PROMPT,
        GroundTruth::Countdown { .. } => COUNTDOWN_EVAL_SYSTEM_PROMPT,
        GroundTruth::Sudoku { .. } => SUDOKU_SYSTEM_PROMPT,
    };
    format!("{system}\n\n{}", item.question)
}
