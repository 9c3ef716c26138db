//! The WDCE loss, weighted denoising cross-entropy (docs/algorithm.md §4):
//!
//! `L = (1/K) * sum_k sum_i A_i * (1/m_ik) * sum_{j in M_ik} CE_ikj`, `CE = -log softmax(f_theta(x~))[x]`,
//!
//! with masks redrawn at every optimisation step (antithetic, clamped, as in docs/algorithm.md §3). A sum over
//! the batch, not a mean; the constant factor `L` is dropped.

use burn::tensor::backend::Backend;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::batch::{float_values, SequenceBatch};
use crate::config::{Baseline, DmpoConfig};
use crate::elbo::{check_masks, ell_from_row_sums, masked_logprob_sums};
use crate::error::{DmpoError, Result};
use crate::loss::{tensor_from, LossOutput};
use crate::masks::ReplicateMasks;
use crate::model::LogitsModel;
use crate::weights::RolloutWeights;

/// What [`wdce_loss`] reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WdceDiagnostics {
    /// The advantages `A_i` used (after the baseline).
    pub advantages: Vec<f64>,
    /// Fraction of completion positions masked over all replicates.
    pub masked_fraction: f64,
    /// `ell_theta` on this step's masks (detached), computed for the unbiased baseline only.
    pub ell_theta: Option<Vec<f64>>,
}

/// Checks that the rollout weights cover the batch in whole groups.
pub(crate) fn check_rollout<B: Backend>(
    batch: &SequenceBatch<B>,
    rollout: &RolloutWeights,
) -> Result<()> {
    let n = batch.batch_size();
    if rollout.len() != n || rollout.w_minus.len() != n || rollout.ell_cur.len() != n {
        return Err(DmpoError::shape(format!(
            "rollout weights for {} samples, batch of {n}",
            rollout.len()
        )));
    }
    if rollout.group_size == 0 || !n.is_multiple_of(rollout.group_size) {
        return Err(DmpoError::shape(format!(
            "batch of {n} does not hold whole groups of {}",
            rollout.group_size
        )));
    }
    Ok(())
}

/// WDCE on explicit masks (use [`wdce_loss`] in training; this form serves tests and replays).
pub fn wdce_loss_with_masks<B: Backend, M: LogitsModel<B> + ?Sized>(
    model: &M,
    batch: &SequenceBatch<B>,
    rollout: &RolloutWeights,
    config: &DmpoConfig,
    masks: &ReplicateMasks,
) -> Result<LossOutput<B, WdceDiagnostics>> {
    check_masks(batch, masks)?;
    check_rollout(batch, rollout)?;
    let rows = masks.rows();
    let sums = masked_logprob_sums(model, batch, masks, 0..rows);
    let ell_theta = (config.baseline == Baseline::Unbiased)
        .then(|| ell_from_row_sums(&float_values(sums.clone().detach()), masks));
    let advantages = rollout.advantages(
        config.baseline,
        config.centering_strength,
        config.baseline_rows,
        ell_theta.as_deref(),
    )?;
    // docs/algorithm.md §4: row r = (k, i) contributes A_i / (K * m_ik) * sum_j CE = -A_i / (K * m_ik) * sum_j log p.
    let k = masks.replicates as f64;
    let coef: Vec<f64> = (0..rows)
        .map(|r| -advantages[masks.sample_of(r)] / (k * masks.m_clamped(r) as f64))
        .collect();
    let loss = (sums * tensor_from::<B, 1>(&coef, [rows], &batch.input_ids.device())).sum();
    let masked = masks.masked.iter().filter(|&&m| m).count();
    Ok(LossOutput {
        loss,
        diagnostics: WdceDiagnostics {
            advantages,
            masked_fraction: masked as f64 / masks.masked.len().max(1) as f64,
            ell_theta,
        },
    })
}

/// WDCE with fresh replicate masks drawn from `rng` (one call per optimisation step).
pub fn wdce_loss<B: Backend, M: LogitsModel<B> + ?Sized, R: Rng + ?Sized>(
    model: &M,
    batch: &SequenceBatch<B>,
    rollout: &RolloutWeights,
    config: &DmpoConfig,
    rng: &mut R,
) -> Result<LossOutput<B, WdceDiagnostics>> {
    config.validate()?;
    let masks = ReplicateMasks::for_batch(rng, batch, config)?;
    wdce_loss_with_masks(model, batch, rollout, config, &masks)
}
