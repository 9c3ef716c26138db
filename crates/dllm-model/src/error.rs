//! Errors of the model crate: every one names the file and, where it applies, the tensor.

use std::path::PathBuf;

/// Everything that can go wrong while loading, saving or running a LLaDA model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A JSON file (config, index, adapter config) is malformed.
    #[error("{path}: malformed JSON: {source}")]
    Json {
        /// The file involved.
        path: PathBuf,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A configuration value is missing, out of range or unsupported.
    #[error("{path}: field `{field}`: {message}")]
    Config {
        /// The config file (or `<memory>`).
        path: PathBuf,
        /// The offending key.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A safetensors file is malformed or truncated.
    #[error("{path}: invalid safetensors file: {message}")]
    Safetensors {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A tensor the model needs is absent from every weight file.
    #[error("{path}: missing tensor `{tensor}`")]
    MissingTensor {
        /// The file (or directory / index) searched.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
    },
    /// A tensor has the wrong shape for the configuration.
    #[error("{path}: tensor `{tensor}` has shape {found:?}, the config implies {expected:?}")]
    Shape {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape found in the file.
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype we cannot read.
    #[error("{path}: tensor `{tensor}` has unsupported dtype {dtype}")]
    DType {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The dtype found.
        dtype: String,
    },
    /// A tensor holds a NaN or an infinity (a corrupt or diverged checkpoint).
    #[error("{path}: tensor `{tensor}` holds a non-finite value ({value}) at flat index {index}")]
    NonFinite {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Row-major index of the first non-finite element.
        index: usize,
        /// The value (`NaN`, `inf` or `-inf`).
        value: String,
    },
    /// A finite stored value does not fit the element type asked for (1e5 in f16).
    #[error("{path}: tensor `{tensor}` holds {value} at flat index {index}, beyond the range of {dtype}: load the model in bf16 or f32")]
    Overflow {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// Row-major index of the value.
        index: usize,
        /// The value as stored.
        value: String,
        /// The element type asked for.
        dtype: String,
    },
    /// No weights were found in a model directory.
    #[error("{path}: no `model.safetensors` or `model.safetensors.index.json` found")]
    NoWeights {
        /// The model directory.
        path: PathBuf,
    },
    /// The tokenizer could not be loaded or used.
    #[error("{path}: tokenizer: {message}")]
    Tokenizer {
        /// The tokenizer file (or `<memory>`).
        path: PathBuf,
        /// The tokenizers crate's message.
        message: String,
    },
    /// Inputs passed to the model are inconsistent (shape, id range, adapter).
    #[error("invalid input: {0}")]
    Input(String),
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Config {
            path: path.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}
