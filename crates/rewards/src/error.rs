//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in this crate (never a panic).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A data row is malformed; `line` is 1-based (for CSV, the header is line 1).
    #[error("{path}:{line}: {message}")]
    BadRow {
        /// The file.
        path: PathBuf,
        /// 1-based line (or row) number.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// A generation file is not in the d1 JSON layout.
    #[error("{path}: {message}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A task name was not recognised.
    #[error("unknown task {0:?} (expected gsm8k, math, countdown or sudoku)")]
    UnknownTask(String),
    /// The item's ground truth belongs to another task.
    #[error("task {task} does not match the item's ground truth ({truth})")]
    TaskMismatch {
        /// The task asked for.
        task: crate::Task,
        /// The task the ground truth belongs to.
        truth: crate::Task,
    },
    /// A generator could not satisfy its configuration.
    #[error("generator: {0}")]
    Generator(String),
    /// A file format that needs a disabled cargo feature.
    #[error("{0}")]
    Unsupported(String),
}
