//! DMPO training for diffusion LLMs (docs/algorithm.md §5): trainer, recipes, checkpoints, metrics, and the
//! `dmpo` command line.
#![warn(missing_docs)]

pub mod cli;
pub mod error;
pub mod recipe;
pub mod tasks;

pub use error::{Result, TrainError};
pub use recipe::Recipe;
pub mod algorithm;
pub mod backend_check;
pub mod checkpoint;
pub mod distributed;
#[cfg(feature = "download")]
pub mod download;
pub mod eval;
pub mod metrics;
pub mod optim;
pub mod plan;
pub mod plot;
pub mod reference;
pub mod rollout;
pub mod run_dir;
pub mod trainer;
