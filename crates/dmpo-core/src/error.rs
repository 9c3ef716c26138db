//! Errors of the DMPO objective.

use thiserror::Error;

/// Everything that can go wrong when computing DMPO quantities.
#[derive(Debug, Error)]
pub enum DmpoError {
    /// A hyperparameter is out of its valid range.
    #[error("invalid config field `{field}`: {message}")]
    Config {
        /// The offending field.
        field: &'static str,
        /// Why it is invalid.
        message: String,
    },
    /// Inputs whose shapes or lengths do not agree.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A model error (loading, forward options).
    #[error(transparent)]
    Model(#[from] dllm_model::ModelError),
}

impl DmpoError {
    /// A [`DmpoError::Config`] error.
    pub fn config(field: &'static str, message: impl Into<String>) -> Self {
        Self::Config {
            field,
            message: message.into(),
        }
    }

    /// A [`DmpoError::Shape`] error.
    pub fn shape(message: impl Into<String>) -> Self {
        Self::Shape(message.into())
    }
}

/// `Result` with [`DmpoError`].
pub type Result<T> = std::result::Result<T, DmpoError>;
