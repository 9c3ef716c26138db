//! The DMPO objective for masked-diffusion LLMs (docs/algorithm.md §3–§6), generic over burn backends.
//!
//! - [`elbo`]: the ELBO estimator of a completion's log-likelihood (docs/algorithm.md §3), under one or
//!   several models on the same masks;
//! - [`weights`]: importance weights `w+`, `w-`, adaptive coefficient, baselines (docs/algorithm.md §4);
//! - [`wdce`], [`ddo`]: the DMPO losses (docs/algorithm.md §4);
//! - [`grpo`]: the diffu-GRPO and wd1 baselines (docs/algorithm.md §6);
//! - [`sft`]: LLaDA's supervised masked-diffusion loss, which trains a base model (docs/algorithm.md §1).
//!
//! Inputs follow one layout, [`SequenceBatch`]: `[batch, prompt_len + gen_len]` ids with
//! prompts left-padded to `prompt_len`, groups of `G` completions contiguous. Randomness comes
//! from an explicit RNG (`rand_chacha::ChaCha8Rng`) so that training is deterministic.
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod batch;
pub mod config;
pub mod ddo;
pub mod elbo;
pub mod error;
pub mod grpo;
pub mod loss;
pub mod masks;
pub mod model;
pub mod sft;
pub mod wdce;
pub mod weights;

pub use batch::{HostBatch, SequenceBatch};
pub use config::{Baseline, DmpoConfig, DmpoLoss, GrpoConfig};
pub use ddo::{ddo_loss, ddo_loss_with_masks, ddo_objective, DdoDiagnostics};
pub use elbo::{elbo_log_likelihood, elbo_with_masks, ElboEstimate};
pub use error::{DmpoError, Result};
pub use grpo::{
    diffu_grpo_loss, grpo_advantages, mask_iteration, mean_field_logprobs, wd1_loss,
    GrpoDiagnostics,
};
pub use loss::LossOutput;
pub use masks::{sample_prompt_mask, MaskOptions, ReplicateMasks};
pub use model::{LogitsModel, ModelView};
pub use sft::{sft_loss, sft_loss_with_masks, SftDiagnostics, SftMasks};
pub use wdce::{wdce_loss, wdce_loss_with_masks, WdceDiagnostics};
pub use weights::{rollout_weights, RolloutWeights, WeightDiagnostics};

pub use rand_chacha::ChaCha8Rng;
