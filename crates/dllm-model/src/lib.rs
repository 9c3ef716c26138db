//! The LLaDA and Dream masked-diffusion language models on burn (docs/algorithm.md §1).
//!
//! Load a Hugging Face checkpoint directory and run it:
//!
//! ```no_run
//! use dllm_model::{load_model, LoadOptions};
//! use burn::tensor::{Int, Tensor};
//! type B = burn::backend::Flex;
//! let device = Default::default();
//! let model = load_model::<B>("models/LLaDA-8B-Instruct", LoadOptions::default(), &device)?;
//! let ids = Tensor::<B, 2, Int>::from_ints([[1, 2, 3]], &device);
//! let logits = model.forward(ids); // [1, 3, embedding_size]
//! # Ok::<(), dllm_model::ModelError>(())
//! ```
#![warn(missing_docs)]

pub mod attention;
pub mod backend;
pub mod block;
pub mod cache;
pub mod checkpointing;
pub mod config;
pub mod dream_config;
pub mod error;
pub mod family;
mod kernels;
pub mod linear;
pub mod load;
pub mod lora;
pub mod model;
pub mod nf4;
pub mod nf4_weight;
pub mod norm;
pub mod ops;
pub mod params;
pub mod quantization;
pub mod quantize_checkpoint;
pub mod rope;
pub mod tensor_file;
pub mod text_file;
pub mod tokenizer;
pub mod weights;

pub use cache::KvCache;
pub use checkpointing::BlockCheckpoints;
pub use config::ModelConfig;
pub use dream_config::DreamConfig;
pub use error::{ModelError, Result};
pub use family::Family;
pub use load::{load_model, save_model, LoadOptions};
pub use lora::{LoraConfig, LINEAR_NAMES};
pub use model::{DiffusionLm, ForwardOptions, LogitPositions};
pub use params::{checkpoint_tensors, TensorRole};
pub use tokenizer::{ChatFormat, ChatMessage, ChatTokenizer, ChatTokens};
pub use weights::{WeightDType, WeightFiles};

pub use burn;
