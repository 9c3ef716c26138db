//! The DDO loss, weighted direct discriminative optimisation (docs/algorithm.md §4):
//!
//! `L = -mean(A * logsigmoid(beta * gap_real)) - alpha_ddo * mean(logsigmoid(-beta * gap_fake))`,
//! `gap = ell_theta(x) - ell_cur(x)`.
//!
//! As in the reference code, `A` is the tilted weight `w+` (no baseline). With independent sets,
//! `ell_theta` of the real term is estimated on replicates `0..K/2` and that of the fake term on
//! `K/2..K`; otherwise both use all `K` replicates. (The reference sums rather than averages the
//! replicates when the sets are shared, which makes `gap != 0` at `theta = cur`; we average,
//! matching the definition of `ell`.)

use burn::tensor::{activation::log_sigmoid, backend::Backend, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::batch::{float_values, SequenceBatch};
use crate::config::DmpoConfig;
use crate::elbo::{check_masks, masked_logprob_sums};
use crate::error::{DmpoError, Result};
use crate::loss::{tensor_from, LossOutput};
use crate::masks::ReplicateMasks;
use crate::model::LogitsModel;
use crate::wdce::check_rollout;
use crate::weights::RolloutWeights;

/// What [`ddo_loss`] reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DdoDiagnostics {
    /// `gap_real` per sample (detached).
    pub gap_real: Vec<f64>,
    /// `gap_fake` per sample (detached).
    pub gap_fake: Vec<f64>,
}

/// The DDO objective from the log-likelihood estimates (docs/algorithm.md §4), `[1]`.
pub fn ddo_objective<B: Backend>(
    ell_real: Tensor<B, 1>,
    ell_fake: Tensor<B, 1>,
    ell_cur: &[f64],
    weights: &[f64],
    beta: f64,
    alpha: f64,
) -> Tensor<B, 1> {
    let n = ell_cur.len();
    let device = ell_real.device();
    let cur = tensor_from::<B, 1>(ell_cur, [n], &device);
    let a = tensor_from::<B, 1>(weights, [n], &device);
    let real = log_sigmoid((ell_real - cur.clone()) * beta);
    let fake = log_sigmoid((ell_fake - cur) * (-beta));
    -(a * real).mean() - fake.mean() * alpha
}

/// DDO on explicit masks.
pub fn ddo_loss_with_masks<B: Backend, M: LogitsModel<B> + ?Sized>(
    model: &M,
    batch: &SequenceBatch<B>,
    rollout: &RolloutWeights,
    config: &DmpoConfig,
    masks: &ReplicateMasks,
) -> Result<LossOutput<B, DdoDiagnostics>> {
    check_masks(batch, masks)?;
    check_rollout(batch, rollout)?;
    let (k, n, l) = (masks.replicates, masks.batch, masks.gen_len as f64);
    if config.ddo_independent_sets && k < 2 {
        return Err(DmpoError::config(
            "num_replicates",
            "independent sets need K >= 2",
        ));
    }
    let device = batch.input_ids.device();
    let sums = masked_logprob_sums(model, batch, masks, 0..k * n).reshape([k, n]);
    // docs/algorithm.md §3: ell = mean over a set of replicates of (L / m) * sum_{j in M} log p.
    let set_size = |r: usize| -> f64 {
        match (config.ddo_independent_sets, r / n < k / 2) {
            (false, _) => k as f64,
            (true, true) => (k / 2) as f64,
            (true, false) => (k - k / 2) as f64,
        }
    };
    let coef: Vec<f64> = (0..k * n)
        .map(|r| l / (set_size(r) * masks.m_clamped(r) as f64))
        .collect();
    let weighted = sums * tensor_from::<B, 2>(&coef, [k, n], &device);
    let (ell_real, ell_fake) = if config.ddo_independent_sets {
        let h = k / 2;
        (
            weighted.clone().narrow(0, 0, h).sum_dim(0).reshape([n]),
            weighted.narrow(0, h, k - h).sum_dim(0).reshape([n]),
        )
    } else {
        let ell = weighted.sum_dim(0).reshape([n]);
        (ell.clone(), ell)
    };
    let gap = |t: &Tensor<B, 1>| -> Vec<f64> {
        float_values(t.clone().detach())
            .iter()
            .zip(&rollout.ell_cur)
            .map(|(a, b)| a - b)
            .collect()
    };
    let diagnostics = DdoDiagnostics {
        gap_real: gap(&ell_real),
        gap_fake: gap(&ell_fake),
    };
    let loss = ddo_objective(
        ell_real,
        ell_fake,
        &rollout.ell_cur,
        &rollout.w_plus,
        config.ddo_beta,
        config.ddo_alpha,
    );
    Ok(LossOutput { loss, diagnostics })
}

/// DDO with fresh replicate masks drawn from `rng`.
pub fn ddo_loss<B: Backend, M: LogitsModel<B> + ?Sized, R: Rng + ?Sized>(
    model: &M,
    batch: &SequenceBatch<B>,
    rollout: &RolloutWeights,
    config: &DmpoConfig,
    rng: &mut R,
) -> Result<LossOutput<B, DdoDiagnostics>> {
    config.validate()?;
    let masks = ReplicateMasks::for_batch(rng, batch, config)?;
    ddo_loss_with_masks(model, batch, rollout, config, &masks)
}
