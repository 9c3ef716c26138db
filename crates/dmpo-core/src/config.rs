//! `DmpoConfig` and `GrpoConfig`: the hyperparameters, with the reference defaults (docs/algorithm.md §3–§6).

use serde::{Deserialize, Serialize};

use crate::error::{DmpoError, Result};

/// Which baseline is subtracted from the positive weights `w+` (docs/algorithm.md §4, "weight baseline").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Baseline {
    /// `A_i = w+_i - strength * w-_i` (the paper's default).
    NegativeCentering,
    /// `A_i = w+_i - strength * mean_group(w+)`.
    Mean,
    /// `A_i = w+_i - strength * softmax_group(ell_theta(x_i) - ell_cur(x_i))`, `ell_theta`
    /// recomputed (detached) on each step's masks.
    Unbiased,
    /// `A_i = w+_i`.
    None,
}

/// Which DMPO loss is optimised (docs/algorithm.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DmpoLoss {
    /// Weighted denoising cross-entropy.
    Wdce,
    /// Weighted direct discriminative optimisation.
    Ddo,
}

/// DMPO hyperparameters (docs/algorithm.md §3–§4). Defaults are the reference recipe's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DmpoConfig {
    /// Temperature of the reward tilt `exp(r / alpha)`; `0` uses `softmax(c r)`, `-1` uses the
    /// raw reward as the weight.
    pub alpha: f64,
    /// Interpolation `c` toward the current policy (`p_cur^(1-c) p*^c`), in `[0, 1]`.
    pub coeff: f64,
    /// Choose `c` per group so that the ESS equals `ess_threshold`.
    pub adaptive_coeff: bool,
    /// Target effective sample size (fraction of `G`) of the adaptive coefficient.
    pub ess_threshold: f64,
    /// Number of mask replicates `K` of the ELBO estimator and of the losses.
    pub num_replicates: usize,
    /// Replicates `K/2..K` use the complements of the masks of `0..K/2`.
    pub antithetic: bool,
    /// Clamp the masking probability `lambda <- 0.1 + 0.9 lambda`.
    pub clamp_mask_prob: bool,
    /// Also mask completion positions after the first EOS (reference default); `false` never
    /// masks them (they then carry no loss).
    pub mask_after_eos: bool,
    /// Weight baseline variant.
    pub baseline: Baseline,
    /// Strength `lambda_c` of the baseline subtraction.
    pub centering_strength: f64,
    /// Rows of the slices of a group over which the mean and unbiased baselines are taken
    /// (0: the whole group). The reference computes them over each GPU's 4 rows.
    pub baseline_rows: usize,
    /// Replicates of the rollout-time ELBO (`ell_cur`, `ell_ref`; the reference's
    /// `compute_ref_log_prob_elbo_size`); 0: `num_replicates`.
    pub rollout_elbo_replicates: usize,
    /// Where the rollout-time `ell_cur` and `ell_ref` come from (the reference's
    /// `compute_ref_log_prob_elbo`): the K-replicate ELBO of each completion under the policy and
    /// the reference (true), or the exact log-likelihoods ROAR records while it samples, the
    /// reference's with a second, adapter-free pass per step (false; docs/algorithm.md §4.2).
    /// False needs `rollout.method = "roar"` and LoRA.
    pub rollout_elbo: bool,
    /// The loss optimised.
    pub loss: DmpoLoss,
    /// DDO `beta` (scale of the log-likelihood gap).
    pub ddo_beta: f64,
    /// DDO `alpha` (weight of the fake term).
    pub ddo_alpha: f64,
    /// DDO: estimate the real and fake gaps on two halves of the replicates (with antithetic
    /// masks, the second half holds the complements of the first); the reference's
    /// `dmpo_train_config.yaml` sets it (`ddo_indep_set: true`).
    pub ddo_independent_sets: bool,
    /// Memory budget (bytes) of the logits of one chunk of replicate rows in the ELBO estimator.
    pub elbo_memory_budget_bytes: usize,
}

impl Default for DmpoConfig {
    fn default() -> Self {
        Self {
            alpha: 0.04,
            coeff: 1.0,
            adaptive_coeff: false,
            ess_threshold: 0.7,
            num_replicates: 4,
            antithetic: true,
            clamp_mask_prob: true,
            mask_after_eos: true,
            baseline: Baseline::NegativeCentering,
            centering_strength: 1.0,
            baseline_rows: 0,
            rollout_elbo_replicates: 0,
            rollout_elbo: true,
            loss: DmpoLoss::Wdce,
            ddo_beta: 1.0,
            ddo_alpha: 1.0,
            ddo_independent_sets: true,
            elbo_memory_budget_bytes: 2 << 30,
        }
    }
}

impl DmpoConfig {
    /// The rows of a group whose advantages depend on each other under `baseline`
    /// (docs/algorithm.md §4): the slice of the mean and unbiased baselines (`baseline_rows`, or
    /// the group of `group_size`), one row under negative centering and no baseline. A loss
    /// pass holding whole slices computes the same advantages as the whole rollout.
    pub fn baseline_slice(&self, group_size: usize) -> usize {
        match self.baseline {
            Baseline::Mean | Baseline::Unbiased if self.baseline_rows == 0 => group_size,
            Baseline::Mean | Baseline::Unbiased => self.baseline_rows,
            Baseline::NegativeCentering | Baseline::None => 1,
        }
    }

    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        if !(self.alpha == -1.0 || self.alpha >= 0.0) || !self.alpha.is_finite() {
            return Err(DmpoError::config("alpha", "must be -1 or >= 0"));
        }
        if !(0.0..=1.0).contains(&self.coeff) {
            return Err(DmpoError::config("coeff", "must be in [0, 1]"));
        }
        if !(self.ess_threshold > 0.0 && self.ess_threshold <= 1.0) {
            return Err(DmpoError::config("ess_threshold", "must be in (0, 1]"));
        }
        if !(self.centering_strength >= 0.0 && self.centering_strength.is_finite()) {
            return Err(DmpoError::config(
                "centering_strength",
                "must be finite and >= 0",
            ));
        }
        if !(self.ddo_beta > 0.0 && self.ddo_beta.is_finite()) {
            return Err(DmpoError::config("ddo_beta", "must be finite and > 0"));
        }
        if !(self.ddo_alpha >= 0.0 && self.ddo_alpha.is_finite()) {
            return Err(DmpoError::config("ddo_alpha", "must be finite and >= 0"));
        }
        if self.num_replicates == 0 {
            return Err(DmpoError::config("num_replicates", "must be positive"));
        }
        if self.antithetic && self.num_replicates % 2 == 1 {
            return Err(DmpoError::config(
                "num_replicates",
                "must be even when antithetic masks are on",
            ));
        }
        if self.loss == DmpoLoss::Ddo && self.ddo_independent_sets && self.num_replicates < 2 {
            return Err(DmpoError::config(
                "num_replicates",
                "DDO with independent sets needs at least 2 replicates",
            ));
        }
        if self.antithetic && self.rollout_elbo_replicates % 2 == 1 {
            return Err(DmpoError::config(
                "rollout_elbo_replicates",
                "must be even when antithetic masks are on",
            ));
        }
        if self.elbo_memory_budget_bytes == 0 {
            return Err(DmpoError::config(
                "elbo_memory_budget_bytes",
                "must be positive",
            ));
        }
        Ok(())
    }
}

/// diffu-GRPO and wd1 hyperparameters (docs/algorithm.md §6): d1's, except the clip `epsilon`,
/// TRL's 0.2 (d1's `train.yaml` sets 0.5; so do the `*-d1.toml` recipes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoConfig {
    /// PPO clip `epsilon`: ratios are clipped to `[1 - eps, 1 + eps]`.
    pub epsilon: f64,
    /// KL penalty weight `beta` toward the reference (k3 estimator); `0` disables it.
    pub beta: f64,
    /// Probability of masking each prompt token in the one-step mean-field likelihood.
    pub p_mask_prompt: f64,
    /// Divide group-centred rewards by the group standard deviation (`+ 1e-4`): TRL's GRPO.
    /// Off by default, as d1 runs diffu-GRPO (`r - mean_group(r)`, diffu_grpo_trainer.py).
    pub scale_rewards: bool,
    /// d1's choice of prompt mask per micro-step, for its gradient-accumulation steps `a` (d1: 2;
    /// 0 = one fresh mask per inner iteration, what the paper describes): see
    /// [`crate::grpo::mask_iteration`].
    pub d1_accumulation_steps: usize,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            epsilon: 0.2,
            beta: 0.04,
            p_mask_prompt: 0.15,
            scale_rewards: false,
            d1_accumulation_steps: 0,
        }
    }
}

impl GrpoConfig {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<()> {
        if !(self.epsilon >= 0.0 && self.epsilon.is_finite()) {
            return Err(DmpoError::config("epsilon", "must be >= 0"));
        }
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return Err(DmpoError::config("beta", "must be >= 0"));
        }
        if !(0.0..=1.0).contains(&self.p_mask_prompt) {
            return Err(DmpoError::config("p_mask_prompt", "must be in [0, 1]"));
        }
        Ok(())
    }
}
