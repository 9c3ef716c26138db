//! Safe verifiers, prompts, task data and generators for the DMPO tasks — GSM8K,
//! MATH500, Countdown and 4x4 Sudoku — with the reference's exact reward values and the
//! d1 evaluation protocol (docs/algorithm.md §7, §8). Stands alone: no model code, no other workspace crate.
//!
//! ```
//! use rewards::{training_reward, eval_correct, Task, TaskItem};
//! let item = TaskItem::countdown(vec![49, 55, 53], 51);
//! let r = training_reward(Task::Countdown, "<answer>49 + 55 - 53</answer>", &item).unwrap();
//! assert_eq!(r.total(), 1.0);
//! let e = eval_correct(Task::Countdown, "\\boxed{49 + 55 - 53}", &item).unwrap();
//! assert_eq!(e.correct, 1);
//! ```

#![warn(missing_docs)]

pub mod countdown;
pub mod data;
mod error;
pub mod expr;
pub mod generate;
pub mod gsm8k;
pub mod math;
pub mod math_equiv;
pub mod prompts;
pub mod pycompat;
pub mod rational;
mod reward;
pub mod score;
pub mod sudoku;
mod task;

pub use error::Error;
pub use reward::{
    component_names, eval_correct, max_reward, training_reward, EvalScore, RewardBreakdown,
};
pub use score::{score_files, FileScore, ScoreReport};
pub use task::{GroundTruth, Task, TaskItem};
