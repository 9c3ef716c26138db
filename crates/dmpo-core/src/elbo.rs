//! The masked-diffusion ELBO estimator of a completion's log-likelihood (docs/algorithm.md §3):
//!
//! `ell(x) = (1/K) * sum_k (L / m_k) * sum_{j in M_k} log softmax(f(x~_k))_j[x_j]`,
//! `m_k = max(1, #M_k)`, `x~_k` = `x` with the positions of `M_k` replaced by MASK.
//!
//! [`elbo_log_likelihood`] evaluates it under one or several models on the *same* masks in one
//! call (DMPO's `ell_cur` and `ell_ref`), chunking the `K * batch` replicate rows so that the
//! logits of one chunk fit a memory budget. It builds no graph when given inner-backend models
//! (on an `Autodiff` backend pass `model.valid()`).

use std::ops::Range;

use burn::tensor::{backend::Backend, IndexingUpdateOp, Int, Tensor, TensorData};
use rand::Rng;

use crate::batch::{float_values, SequenceBatch};
use crate::error::{DmpoError, Result};
use crate::masks::{MaskOptions, ReplicateMasks};
use crate::model::LogitsModel;

/// Log-likelihood estimates of a batch and the masks they were computed on.
#[derive(Debug, Clone)]
pub struct ElboEstimate {
    /// `ell[model][sample]`, in the order of the models given.
    pub ell: Vec<Vec<f64>>,
    /// The replicate masks shared by every model.
    pub masks: ReplicateMasks,
}

/// Checks that `masks` covers `batch`.
pub(crate) fn check_masks<B: Backend>(
    batch: &SequenceBatch<B>,
    masks: &ReplicateMasks,
) -> Result<()> {
    if masks.batch != batch.batch_size() || masks.gen_len != batch.gen_len() {
        return Err(DmpoError::shape(format!(
            "masks cover {} samples x {} positions, the batch has {} x {}",
            masks.batch,
            masks.gen_len,
            batch.batch_size(),
            batch.gen_len()
        )));
    }
    Ok(())
}

/// `sum_{j in M_r} log p_theta(x_j | x~_r)` for the replicate rows `rows` (`r = k * batch + i`),
/// `[rows.len()]`. Differentiable when `B` is an autodiff backend. The LM head and the
/// log-softmax run only at the masked positions (the only ones the sum reads).
pub fn masked_logprob_sums<B: Backend, M: LogitsModel<B> + ?Sized>(
    model: &M,
    batch: &SequenceBatch<B>,
    masks: &ReplicateMasks,
    rows: Range<usize>,
) -> Tensor<B, 1> {
    let n = rows.len();
    let device = batch.input_ids.device();
    let (prompt_len, gen_len) = (batch.prompt_len, batch.gen_len());
    // Flat completion positions `i * gen_len + j` of the masked tokens, and the row of each.
    let mut positions = Vec::new();
    let mut owners = Vec::new();
    for (i, r) in rows.clone().enumerate() {
        for (j, _) in masks.row(r).iter().enumerate().filter(|(_, m)| **m) {
            positions.push((i * gen_len + j) as i64);
            owners.push(i as i64);
        }
    }
    let count = positions.len();
    if count == 0 {
        return Tensor::zeros([n], &device);
    }
    let positions = Tensor::<B, 1, Int>::from_data(TensorData::new(positions, [count]), &device);
    let owners = Tensor::<B, 1, Int>::from_data(TensorData::new(owners, [count]), &device);
    let samples: Vec<usize> = rows.clone().map(|r| masks.sample_of(r)).collect();
    let (ids, padding) = batch.select_rows(&samples);
    let full_mask = masks.full_mask_tensor::<B>(rows, prompt_len, &device);
    // x~: masked completion positions replaced by MASK, prompt untouched (docs/algorithm.md §3).
    let noisy = ids
        .clone()
        .mask_fill(full_mask, model.mask_token_id() as i64);
    let logits = model.completion_logits_at(noisy, prompt_len, padding, positions.clone());
    let vocab = logits.dims()[1];
    let targets = ids
        .narrow(1, prompt_len, gen_len)
        .reshape([n * gen_len])
        .select(0, positions)
        .reshape([1, count, 1]);
    let token_logp = dllm_model::ops::token_log_probs(logits.reshape([1, count, vocab]), targets);
    Tensor::zeros([n], &device).select_assign(
        0,
        owners,
        token_logp.reshape([count]),
        IndexingUpdateOp::Add,
    )
}

/// Per-row weights `L / (K * m_r)` of the estimator (docs/algorithm.md §3), replicate-major `[K * batch]`.
pub fn row_weights(masks: &ReplicateMasks) -> Vec<f64> {
    let l = masks.gen_len as f64;
    let k = masks.replicates as f64;
    (0..masks.rows())
        .map(|r| l / (k * masks.m_clamped(r) as f64))
        .collect()
}

/// `ell_i = (1/K) sum_k (L / m_k) s_{k,i}` from the row sums `s` (docs/algorithm.md §3), `[batch]`.
pub fn ell_from_row_sums(row_sums: &[f64], masks: &ReplicateMasks) -> Vec<f64> {
    let mut ell = vec![0.0; masks.batch];
    for (r, (s, w)) in row_sums.iter().zip(row_weights(masks)).enumerate() {
        ell[masks.sample_of(r)] += w * s;
    }
    ell
}

/// How many replicate rows fit the logits budget: each row holds `gen_len x vocab` logits, plus
/// their log-softmax and a temporary of the same size (f32).
pub fn rows_per_chunk(gen_len: usize, vocab: usize, memory_budget_bytes: usize) -> usize {
    let per_row = 3 * 4 * gen_len.max(1) * vocab.max(1);
    (memory_budget_bytes / per_row).max(1)
}

/// The ELBO of every completion under every model in `models`, on the given masks, `[model][sample]`.
pub fn elbo_with_masks<B: Backend>(
    models: &[&dyn LogitsModel<B>],
    batch: &SequenceBatch<B>,
    masks: &ReplicateMasks,
    memory_budget_bytes: usize,
) -> Result<Vec<Vec<f64>>> {
    check_masks(batch, masks)?;
    let Some(first) = models.first() else {
        return Err(DmpoError::shape("no model to evaluate"));
    };
    if models
        .iter()
        .any(|m| m.mask_token_id() != first.mask_token_id())
    {
        return Err(DmpoError::shape("the models disagree on the MASK token id"));
    }
    let vocab = models.iter().map(|m| m.vocab_size()).max().unwrap_or(1);
    let chunk = rows_per_chunk(batch.gen_len(), vocab, memory_budget_bytes);
    let mut out = Vec::with_capacity(models.len());
    for model in models {
        let mut sums = Vec::with_capacity(masks.rows());
        let mut start = 0;
        while start < masks.rows() {
            let end = (start + chunk).min(masks.rows());
            let s = masked_logprob_sums(*model, batch, masks, start..end);
            sums.extend(float_values(s.detach()));
            start = end;
        }
        out.push(ell_from_row_sums(&sums, masks));
    }
    Ok(out)
}

/// Draws fresh replicate masks from `rng` and returns the ELBO of every completion under every
/// model in `models` on those same masks (docs/algorithm.md §3). No gradient is kept.
pub fn elbo_log_likelihood<B: Backend, R: Rng + ?Sized>(
    models: &[&dyn LogitsModel<B>],
    batch: &SequenceBatch<B>,
    options: &MaskOptions,
    memory_budget_bytes: usize,
    rng: &mut R,
) -> Result<ElboEstimate> {
    let masks = ReplicateMasks::sample(rng, &batch.eos_index, batch.gen_len(), options)?;
    let ell = elbo_with_masks(models, batch, &masks, memory_budget_bytes)?;
    Ok(ElboEstimate { ell, masks })
}
