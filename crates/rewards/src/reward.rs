//! The uniform reward / evaluation API over the four tasks (docs/algorithm.md §7).

use serde::Serialize;

use crate::task::{GroundTruth, Task, TaskItem};
use crate::{countdown, gsm8k, math, sudoku, Error};

/// A training reward: the sum of named components, each reported separately
/// (trainers log them per component, as TRL does per reward function).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RewardBreakdown {
    /// `(component name, value)` in the reference's reward-function order.
    pub components: Vec<(&'static str, f64)>,
}

impl RewardBreakdown {
    /// The total reward (the sum of the components).
    pub fn total(&self) -> f64 {
        self.components.iter().map(|(_, v)| v).sum()
    }

    /// The value of one component, if present.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.components
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, v)| v)
    }
}

/// The names of a task's reward components, in order (e.g. for log headers).
pub fn component_names(task: Task) -> &'static [&'static str] {
    match task {
        Task::Gsm8k => &gsm8k::COMPONENTS,
        Task::Math => &math::COMPONENTS,
        Task::Countdown => &countdown::COMPONENTS,
        Task::Sudoku => &sudoku::COMPONENTS,
    }
}

/// The largest total training reward a task can give (GSM8K 4.0, MATH 3.0, others 1.0).
pub fn max_reward(task: Task) -> f64 {
    match task {
        Task::Gsm8k => 4.0,
        Task::Math => 3.0,
        Task::Countdown | Task::Sudoku => 1.0,
    }
}

/// One item's evaluation outcome under the d1 protocol.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalScore {
    /// Units correct: 0 or 1, or for Sudoku the number of correctly filled empty cells.
    pub correct: u32,
    /// Units scored: 1, or for Sudoku the number of empty cells.
    pub total: u32,
    /// What the parser extracted from the completion, for inspection.
    pub extracted: Option<String>,
}

impl EvalScore {
    /// `correct / total` (0 when `total` is 0).
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            f64::from(self.correct) / f64::from(self.total)
        }
    }

    /// A 0/1 score.
    pub(crate) fn binary(ok: bool, extracted: Option<String>) -> Self {
        EvalScore {
            correct: u32::from(ok),
            total: 1,
            extracted,
        }
    }
}

fn check(task: Task, item: &TaskItem) -> Result<(), Error> {
    if item.task() == task {
        Ok(())
    } else {
        Err(Error::TaskMismatch {
            task,
            truth: item.task(),
        })
    }
}

/// The training reward of one completion (the text the model generated after the
/// prompt), with the reference's exact component values (docs/algorithm.md §7).
///
/// Errors only when `item`'s ground truth belongs to another task.
pub fn training_reward(
    task: Task,
    completion: &str,
    item: &TaskItem,
) -> Result<RewardBreakdown, Error> {
    check(task, item)?;
    Ok(match &item.truth {
        GroundTruth::Gsm8k { answer } => gsm8k::training_reward(completion, answer),
        GroundTruth::Math { answer } => math::training_reward(completion, answer),
        GroundTruth::Countdown { numbers, target } => {
            countdown::training_reward(completion, numbers, *target)
        }
        GroundTruth::Sudoku { puzzle, solution } => {
            sudoku::training_reward(completion, puzzle, solution)
        }
    })
}

/// Whether one completion is correct under the d1 evaluation protocol (docs/algorithm.md §8.2).
///
/// Errors only when `item`'s ground truth belongs to another task.
pub fn eval_correct(task: Task, completion: &str, item: &TaskItem) -> Result<EvalScore, Error> {
    check(task, item)?;
    Ok(match &item.truth {
        GroundTruth::Gsm8k { answer } => {
            gsm8k::eval_score(completion, gsm8k::reference_value(answer))
        }
        GroundTruth::Math { answer } => {
            math::eval_score(completion, &math::MathTruth::Text(answer.clone()))
        }
        GroundTruth::Countdown { numbers, target } => {
            let numbers: Vec<f64> = numbers.iter().map(|&n| n as f64).collect();
            countdown::eval_score(completion, &numbers, Some(*target as f64))
        }
        GroundTruth::Sudoku { puzzle, solution } => {
            sudoku::eval_score(completion, puzzle, solution)
        }
    })
}
