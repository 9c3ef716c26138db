//! The diffu-GRPO baseline and wd1 (docs/algorithm.md §6).
//!
//! - one-step mean-field per-token log-probs: a single forward pass with the completion fully
//!   masked and each prompt token masked with probability `p_mask_prompt` (new mask per inner
//!   iteration, shared by the current, old and reference policies of that iteration);
//! - advantages `(r - mean_group(r)) / (std_group(r) + 1e-4)`;
//! - PPO clip: `-min(rho A, clip(rho, 1 - eps, 1 + eps) A)`, `rho = exp(logp - logp_old)`;
//! - KL penalty `beta * (exp(ref - logp) - (ref - logp) - 1)` (the k3 estimator, as d1);
//! - loss averaged over completion tokens up to and including the first EOS.
//!
//! wd1 (ratio-free): `L = -sum_i (softmax_group(A)_i - softmax_group(-A)_i) * sum_j logp_ij`.

use burn::tensor::{backend::Backend, Bool, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::batch::{float_values, SequenceBatch};
use crate::config::GrpoConfig;
use crate::error::{DmpoError, Result};
use crate::loss::{tensor_from, LossOutput};
use crate::model::LogitsModel;
use crate::weights::{mean, softmax, std_unbiased};

/// GRPO's group-normalised advantages (docs/algorithm.md §6): `r - mean_group(r)`, divided by
/// `std_group(r) + 1e-4` (unbiased std) when `scale_rewards`.
pub fn grpo_advantages(
    rewards: &[f64],
    group_size: usize,
    scale_rewards: bool,
) -> Result<Vec<f64>> {
    if group_size == 0 || !rewards.len().is_multiple_of(group_size) {
        return Err(DmpoError::shape(format!(
            "{} rewards do not form groups of {group_size}",
            rewards.len()
        )));
    }
    Ok(rewards
        .chunks(group_size)
        .flat_map(|g| {
            let (m, s) = (mean(g), std_unbiased(g));
            g.iter().map(move |r| {
                if scale_rewards {
                    (r - m) / (s + 1e-4)
                } else {
                    r - m
                }
            })
        })
        .collect())
}

/// Which inner iteration's prompt mask row `row` of `rows` uses at inner iteration `k` of
/// `num_iterations` (docs/algorithm.md §6.1). With `accumulation_steps = 0`, iteration `k`'s.
/// With `a > 0`, d1's rule: the rows form `a` consecutive accumulation slices (one per
/// micro-step of an optimiser step), and slice `h` uses mask `(k a + h + 1) mod num_iterations`
/// (diffu_grpo_trainer.py `mask_seeds[self._step % num_iterations]`, with `_step` already
/// incremented for the micro-step): with d1's `a = 2`, `mu = 12`, slice 0 sees masks 1, 3, …, 11,
/// 1, 3, …, 11 and slice 1 masks 2, 4, …, 10, 0, 2, …, 10, 0, each micro-batch `mu / 2` distinct
/// masks twice.
pub fn mask_iteration(
    k: usize,
    row: usize,
    rows: usize,
    accumulation_steps: usize,
    num_iterations: usize,
) -> usize {
    if accumulation_steps == 0 {
        return k;
    }
    let slice = row / (rows / accumulation_steps).max(1);
    (k * accumulation_steps + slice + 1) % num_iterations
}

/// Per-token log-probs `[batch, gen_len]` of the completions under the one-step mean-field
/// approximation (docs/algorithm.md §6): completion fully masked, prompt positions masked where
/// `prompt_mask` (`[batch * prompt_len]`, see [`crate::masks::sample_prompt_mask`]) is true.
pub fn mean_field_logprobs<B: Backend, M: LogitsModel<B> + ?Sized>(
    model: &M,
    batch: &SequenceBatch<B>,
    prompt_mask: &[bool],
) -> Result<Tensor<B, 2>> {
    let (n, p, l) = (batch.batch_size(), batch.prompt_len, batch.gen_len());
    if prompt_mask.len() != n * p {
        return Err(DmpoError::shape(format!(
            "prompt mask of {} entries for {n} prompts of length {p}",
            prompt_mask.len()
        )));
    }
    let device = batch.input_ids.device();
    let mut full = Vec::with_capacity(n * (p + l));
    for row in prompt_mask.chunks(p.max(1)).take(n) {
        full.extend_from_slice(&row[..p]);
        full.extend(std::iter::repeat_n(true, l));
    }
    if p == 0 {
        full = vec![true; n * l];
    }
    let mask = Tensor::<B, 2, Bool>::from_bool(TensorData::new(full, [n, p + l]), &device);
    let noisy = batch
        .input_ids
        .clone()
        .mask_fill(mask, model.mask_token_id() as i64);
    let logits = model.completion_logits(noisy, p, batch.key_padding.clone());
    let targets = batch.completion_ids().reshape([n, l, 1]);
    Ok(dllm_model::ops::token_log_probs(logits, targets))
}

/// What [`diffu_grpo_loss`] reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpoDiagnostics {
    /// Mean k3 KL to the reference over completion tokens (`None` without a KL term).
    pub kl: Option<f64>,
    /// Fraction of completion tokens whose clipped term was the smaller one.
    pub clip_ratio: f64,
}

/// The diffu-GRPO loss (docs/algorithm.md §6) from per-token log-probs `[batch, gen_len]`.
///
/// `old_logp`: the log-probs of the policy that generated the samples on this iteration's mask
/// (`None`: the detached current ones, ratio 1). `ref_logp`: the reference's, required when
/// `beta > 0`. `completion_mask`: `[batch, gen_len]` 0/1 (see
/// [`SequenceBatch::completion_mask_tensor`]).
pub fn diffu_grpo_loss<B: Backend>(
    logp: Tensor<B, 2>,
    old_logp: Option<Tensor<B, 2>>,
    ref_logp: Option<Tensor<B, 2>>,
    advantages: &[f64],
    completion_mask: Tensor<B, 2>,
    config: &GrpoConfig,
) -> Result<LossOutput<B, GrpoDiagnostics>> {
    config.validate()?;
    let [n, l] = logp.dims();
    if advantages.len() != n || completion_mask.dims() != [n, l] {
        return Err(DmpoError::shape(format!(
            "log-probs [{n}, {l}], {} advantages, completion mask {:?}",
            advantages.len(),
            completion_mask.dims()
        )));
    }
    let device = logp.device();
    let old = old_logp.unwrap_or_else(|| logp.clone().detach());
    let a = tensor_from::<B, 2>(advantages, [n, 1], &device);
    // rho = exp(logp - logp_old); per-token loss -min(rho A, clip(rho) A) (docs/algorithm.md §6).
    let ratio = (logp.clone() - old).exp();
    let clipped = ratio
        .clone()
        .clamp(1.0 - config.epsilon, 1.0 + config.epsilon);
    let unclipped_term = ratio * a.clone();
    let clipped_term = clipped * a;
    let is_clipped = unclipped_term
        .clone()
        .detach()
        .lower(clipped_term.clone().detach());
    let mut per_token = -unclipped_term.min_pair(clipped_term);
    let mut kl_mean = None;
    let denom = completion_mask.clone().sum();
    if config.beta > 0.0 {
        let reference = ref_logp.ok_or_else(|| {
            DmpoError::shape("a KL penalty (beta > 0) needs the reference log-probs")
        })?;
        // k3 estimator: exp(ref - logp) - (ref - logp) - 1 >= 0.
        let d = reference - logp;
        let kl = d.clone().exp() - d - 1.0;
        kl_mean = Some(
            float_values((kl.clone().detach() * completion_mask.clone()).sum() / denom.clone())[0],
        );
        per_token = per_token + kl * config.beta;
    }
    let clip_ratio =
        float_values((is_clipped.float() * completion_mask.clone()).sum() / denom.clone())[0];
    let loss = (per_token * completion_mask).sum() / denom;
    Ok(LossOutput {
        loss,
        diagnostics: GrpoDiagnostics {
            kl: kl_mean,
            clip_ratio,
        },
    })
}

/// The wd1 loss (docs/algorithm.md §6) from per-token log-probs `[batch, gen_len]`, with groups of
/// `group_size` contiguous samples; the diagnostics are the net weights `w+ - w-`.
pub fn wd1_loss<B: Backend>(
    logp: Tensor<B, 2>,
    advantages: &[f64],
    group_size: usize,
    completion_mask: Tensor<B, 2>,
) -> Result<LossOutput<B, Vec<f64>>> {
    let [n, l] = logp.dims();
    if advantages.len() != n || completion_mask.dims() != [n, l] {
        return Err(DmpoError::shape(
            "wd1: advantages or completion mask do not match the log-probs",
        ));
    }
    if group_size == 0 || n % group_size != 0 {
        return Err(DmpoError::shape(format!(
            "batch of {n} does not hold whole groups of {group_size}"
        )));
    }
    let net: Vec<f64> = advantages
        .chunks(group_size)
        .flat_map(|g| {
            let neg: Vec<f64> = g.iter().map(|a| -a).collect();
            softmax(g)
                .into_iter()
                .zip(softmax(&neg))
                .map(|(p, m)| p - m)
                .collect::<Vec<_>>()
        })
        .collect();
    let seq_logp = (logp * completion_mask).sum_dim(1).reshape([n]);
    let w = tensor_from::<B, 1>(&net, [n], &seq_logp.device());
    Ok(LossOutput {
        loss: -(seq_logp * w).sum(),
        diagnostics: net,
    })
}
