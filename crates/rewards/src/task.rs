//! The four tasks (docs/algorithm.md §7) and a task item: question text plus ground truth.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::Error;

/// One of the reference tasks (docs/algorithm.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// GSM8K grade-school maths (integer answers after `####`).
    Gsm8k,
    /// MATH / MATH-500 competition maths (`\boxed{}` answers).
    Math,
    /// Countdown: reach a target from 3–4 numbers with `+ - * /`.
    Countdown,
    /// 4x4 Sudoku as a 16-character string, `0` = empty.
    Sudoku,
}

impl Task {
    /// All tasks, in the order of the spec.
    pub const ALL: [Task; 4] = [Task::Gsm8k, Task::Math, Task::Countdown, Task::Sudoku];

    /// The canonical lower-case name (`gsm8k`, `math`, `countdown`, `sudoku`).
    pub fn name(self) -> &'static str {
        match self {
            Task::Gsm8k => "gsm8k",
            Task::Math => "math",
            Task::Countdown => "countdown",
            Task::Sudoku => "sudoku",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Task {
    type Err = Error;

    /// Accepts the canonical names and the aliases the reference scripts use
    /// (`gsm`, `math500`, `ctd`/`cd`), case-insensitively.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "gsm8k" | "gsm" => Ok(Task::Gsm8k),
            "math" | "math500" | "math-500" => Ok(Task::Math),
            "countdown" | "ctd" | "cd" | "cd3" => Ok(Task::Countdown),
            "sudoku" | "sudoku4x4" | "4x4_sudoku" => Ok(Task::Sudoku),
            _ => Err(Error::UnknownTask(s.to_string())),
        }
    }
}

/// The ground truth of one item, per task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "lowercase")]
pub enum GroundTruth {
    /// GSM8K: the text after `####` in the dataset's answer, stripped (e.g. `"72"`).
    Gsm8k {
        /// Reference answer string (training compares it exactly).
        answer: String,
    },
    /// MATH: the final answer (the content of the solution's last `\boxed{}`).
    Math {
        /// Reference answer, e.g. `"\\frac{1}{2}"`.
        answer: String,
    },
    /// Countdown: the numbers (each used exactly once) and the target.
    Countdown {
        /// Available numbers.
        numbers: Vec<i64>,
        /// Target value.
        target: i64,
    },
    /// Sudoku: puzzle and solution, 16 characters each, `0` = empty in the puzzle.
    Sudoku {
        /// Puzzle string.
        puzzle: String,
        /// Solution string.
        solution: String,
    },
}

impl GroundTruth {
    /// The task this ground truth belongs to.
    pub fn task(&self) -> Task {
        match self {
            GroundTruth::Gsm8k { .. } => Task::Gsm8k,
            GroundTruth::Math { .. } => Task::Math,
            GroundTruth::Countdown { .. } => Task::Countdown,
            GroundTruth::Sudoku { .. } => Task::Sudoku,
        }
    }
}

/// One task item: the question text (without system prompt) and its ground truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskItem {
    /// The question as the d1 evaluation writes it in generation files
    /// (GSM8K/MATH: the problem; Countdown: `"Numbers: [..]\nTarget: N"`;
    /// Sudoku: `"Solve the following Sudoku puzzle: ...\n"`).
    pub question: String,
    /// The ground truth.
    pub truth: GroundTruth,
}

impl TaskItem {
    /// The task of this item.
    pub fn task(&self) -> Task {
        self.truth.task()
    }

    /// A GSM8K item from a question and the answer after `####`.
    pub fn gsm8k(question: impl Into<String>, answer: impl Into<String>) -> Self {
        TaskItem {
            question: question.into(),
            truth: GroundTruth::Gsm8k {
                answer: answer.into(),
            },
        }
    }

    /// A MATH item from a problem and its final answer.
    pub fn math(problem: impl Into<String>, answer: impl Into<String>) -> Self {
        TaskItem {
            question: problem.into(),
            truth: GroundTruth::Math {
                answer: answer.into(),
            },
        }
    }

    /// A Countdown item; the question is d1's `"Numbers: [a, b, c]\nTarget: t"`.
    pub fn countdown(numbers: Vec<i64>, target: i64) -> Self {
        TaskItem {
            question: format!(
                "Numbers: {}\nTarget: {target}",
                crate::prompts::python_list(&numbers)
            ),
            truth: GroundTruth::Countdown { numbers, target },
        }
    }

    /// A Sudoku item; the question is d1's `"Solve the following Sudoku puzzle: P\n"`.
    pub fn sudoku(puzzle: impl Into<String>, solution: impl Into<String>) -> Self {
        let puzzle = puzzle.into();
        TaskItem {
            question: format!("Solve the following Sudoku puzzle: {puzzle}\n"),
            truth: GroundTruth::Sudoku {
                puzzle,
                solution: solution.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_task_names() {
        for t in Task::ALL {
            assert_eq!(t.name().parse::<Task>().unwrap(), t);
            assert_eq!(t.to_string().to_uppercase().parse::<Task>().unwrap(), t);
        }
        assert_eq!("math500".parse::<Task>().unwrap(), Task::Math);
        assert!("chess".parse::<Task>().is_err());
        assert!("".parse::<Task>().is_err());
    }

    #[test]
    fn countdown_question_format() {
        let it = TaskItem::countdown(vec![30, 100, 93], 23);
        assert_eq!(it.question, "Numbers: [30, 100, 93]\nTarget: 23");
        assert_eq!(it.task(), Task::Countdown);
    }
}
