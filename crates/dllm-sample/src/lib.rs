//! Sampling from masked diffusion LMs (docs/algorithm.md §2): LLaDA's `generate` and Dream's
//! `diffusion_generate` (`SamplerConfig::method`), with Fast-dLLM's caches for both, and the
//! DMPO reference's other rollout samplers: Fast-dLLM's factor rule (`SamplerConfig::factor`),
//! WINO and ROAR.
//!
//! ```no_run
//! use dllm_model::{load_model, LoadOptions};
//! use dllm_sample::{generate, SamplerConfig};
//! type B = burn::backend::Flex;
//! let model = load_model::<B>("models/tiny-sudoku", LoadOptions::default(), &Default::default())?;
//! let config = SamplerConfig { gen_length: 64, block_length: 32, steps: 32, ..Default::default() };
//! let out = generate(&model, &[vec![1, 2, 3]], &config)?;
//! println!("{:?} in {} model calls", out.completions[0], out.nfe);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod config;
pub mod dream;
pub mod generate;
mod roar;
pub mod schedule;
mod wino;

pub use config::{CacheKind, DreamAlg, Method, Remasking, SamplerConfig};
pub use generate::{
    generate, generate_rows, generate_with_observer, Generation, RowPlacement, StepEvent,
};
pub use schedule::num_transfer_tokens;

/// Errors of the sampler.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// Inconsistent sampler settings.
    #[error("sampler config: {0}")]
    Config(String),
    /// Bad prompts.
    #[error("sampler input: {0}")]
    Input(String),
    /// The model produced NaN or infinite logits.
    #[error("sampler: {0}")]
    NonFinite(String),
}
