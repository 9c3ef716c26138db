//! Errors of the trainer.

use std::path::PathBuf;

/// Everything that can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The recipe is malformed or inconsistent.
    #[error("{path}: {message}")]
    Recipe {
        /// The recipe file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Data could not be loaded or is empty.
    #[error("data: {0}")]
    Data(String),
    /// The model could not be loaded or saved.
    #[error(transparent)]
    Model(#[from] dllm_model::ModelError),
    /// The sampler refused its input.
    #[error(transparent)]
    Sample(#[from] dllm_sample::SampleError),
    /// The objective refused its input.
    #[error(transparent)]
    Objective(#[from] dmpo_core::DmpoError),
    /// A reward could not be computed.
    #[error(transparent)]
    Reward(#[from] rewards::Error),
    /// A plot could not be drawn.
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
    /// Another process holds the run directory.
    #[error("{path}: another `dmpo train` is using this run directory (it holds `.lock`); wait for it to finish or choose another `run.name`")]
    RunLocked {
        /// The run directory.
        path: PathBuf,
    },
    /// A new run was started in a directory that holds one.
    #[error("{path} holds a previous run (recipe.toml, metrics.jsonl or checkpoints/): pass --resume to continue it or --overwrite to replace it")]
    RunExists {
        /// The run directory.
        path: PathBuf,
    },
    /// `--resume` where no run ever started.
    #[error("{path}: nothing to resume (no run was started in this directory; check `run.output_dir` and `run.name`, which a relative path resolves from the current directory)")]
    NothingToResume {
        /// The run directory.
        path: PathBuf,
    },
    /// A data-parallel peer failed, or the peers disagree.
    #[error("distributed: {0}")]
    Distributed(String),
    /// A checkpoint is missing or unreadable.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Shorthand.
pub type Result<T> = std::result::Result<T, TrainError>;

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
