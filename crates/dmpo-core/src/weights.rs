//! DMPO importance weights (docs/algorithm.md §4), on plain `f64` slices: the `G` completions of a prompt
//! form a group, groups are contiguous in the batch.
//!
//! - `log_rnd_i = ell_ref(x_i) - ell_cur(x_i)`
//! - `w+_i = softmax_group(c * (log_rnd_i + r_i / alpha))`, `w-_i = softmax_group(c * (log_rnd_i - r_i / alpha))`
//! - `alpha = 0`: `w+ = softmax(c r)`, `w- = softmax(-c r)`; `alpha = -1`: `w+ = r`, `w- = -r`
//! - `ESS = 1 / (G * sum w+^2)`; adaptive `c` in `[0.01, 0.99]` solves `ESS = threshold`
//! - baselines: `A = w+ - s * w-` | `A = w+ - s * mean(w+)` | `A = w+ - s * softmax(ell_theta - ell_cur)` | `A = w+`

use serde::{Deserialize, Serialize};

use crate::config::{Baseline, DmpoConfig};
use crate::error::{DmpoError, Result};

/// Bounds of the adaptive coefficient (docs/algorithm.md §4).
pub const COEFF_RANGE: (f64, f64) = (0.01, 0.99);

/// Reward standard deviations below this count as a zero-variance group (see
/// [`rewards_are_constant`]).
///
/// `1e-6`: far above the rounding left in the standard deviation of equal rewards (a few ulps,
/// below `1e-15` for rewards of order one), far below the smallest spread of unequal rewards of
/// the shipped tasks (Sudoku rewards are cell fractions `k / e`, `e <= 16` empty cells, so two
/// different rewards of a group of at most 16 give a standard deviation of at least
/// `1 / (16 * 4)`). Any threshold between those, `1e-12` included, classifies every such group
/// the same way; `1e-6` also leaves room for rewards of larger magnitude.
pub const ZERO_STD: f64 = 1e-6;

/// Whether a group's rewards are all equal, up to rounding: their unbiased standard deviation
/// lies below [`ZERO_STD`]. The one definition of a zero-variance group, for every algorithm.
pub fn rewards_are_constant(group: &[f64]) -> bool {
    std_unbiased(group) < ZERO_STD
}

/// Fraction of the groups of `group_size` contiguous rewards that are constant
/// ([`rewards_are_constant`]); `NaN` without a whole group.
pub fn zero_variance_fraction(rewards: &[f64], group_size: usize) -> f64 {
    if group_size == 0 || rewards.len() < group_size {
        return f64::NAN;
    }
    let groups = rewards.len() / group_size;
    rewards
        .chunks_exact(group_size)
        .filter(|g| rewards_are_constant(g))
        .count() as f64
        / groups as f64
}

/// Mean over the groups of `group_size` contiguous rewards of their unbiased standard
/// deviation; `NaN` without a whole group.
pub fn mean_group_std(rewards: &[f64], group_size: usize) -> f64 {
    if group_size == 0 || rewards.len() < group_size {
        return f64::NAN;
    }
    let groups = rewards.len() / group_size;
    rewards
        .chunks_exact(group_size)
        .map(std_unbiased)
        .sum::<f64>()
        / groups as f64
}

/// `log_rnd_i = ell_ref_i - ell_cur_i` (docs/algorithm.md §4).
pub fn log_rnd(ell_ref: &[f64], ell_cur: &[f64]) -> Vec<f64> {
    ell_ref.iter().zip(ell_cur).map(|(r, c)| r - c).collect()
}

/// Numerically stable softmax.
pub fn softmax(xs: &[f64]) -> Vec<f64> {
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = xs.iter().map(|x| (x - max).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

/// Effective sample size fraction `1 / (G * sum w^2)` of normalised weights (docs/algorithm.md §4).
pub fn ess(weights: &[f64]) -> f64 {
    1.0 / (weights.len() as f64 * weights.iter().map(|w| w * w).sum::<f64>())
}

/// Mean of a slice.
pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Unbiased (`n - 1`) standard deviation, as `torch.std`; `0` for fewer than two values.
pub fn std_unbiased(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

/// `(w+, w-)` of one group for a coefficient `c` (docs/algorithm.md §4), including the `alpha = 0` and
/// `alpha = -1` modes.
pub fn group_weights(
    log_rnd: &[f64],
    rewards: &[f64],
    alpha: f64,
    coeff: f64,
) -> (Vec<f64>, Vec<f64>) {
    if alpha == -1.0 {
        // Raw reward as the weight.
        return (rewards.to_vec(), rewards.iter().map(|r| -r).collect());
    }
    // The group softmax is invariant to a shift of its logits, so the rewards are centred on
    // the group mean first: the same weights, but equal rewards contribute exactly nothing and
    // a large `r / alpha` does not swamp `log_rnd`'s digits.
    let mean_reward = rewards.iter().sum::<f64>() / rewards.len().max(1) as f64;
    let centred = rewards.iter().map(|r| r - mean_reward);
    let (plus, minus): (Vec<f64>, Vec<f64>) = if alpha > 0.0 {
        log_rnd
            .iter()
            .zip(centred)
            .map(|(l, r)| (coeff * (l + r / alpha), coeff * (l - r / alpha)))
            .unzip()
    } else {
        centred.map(|r| (coeff * r, -coeff * r)).unzip()
    };
    (softmax(&plus), softmax(&minus))
}

/// The ESS of `w+` as a function of the coefficient.
fn ess_at(log_rnd: &[f64], rewards: &[f64], alpha: f64, coeff: f64) -> f64 {
    ess(&group_weights(log_rnd, rewards, alpha, coeff).0)
}

/// The coefficient in [`COEFF_RANGE`] whose `w+` has `ESS = threshold`, by bisection (ESS is
/// non-increasing in `c`). When the threshold is out of reach the nearest bound is returned:
/// `0.01` if even that ESS is below the threshold, `0.99` if even that ESS is above it.
pub fn adaptive_coeff(log_rnd: &[f64], rewards: &[f64], alpha: f64, threshold: f64) -> f64 {
    let (mut lo, mut hi) = COEFF_RANGE;
    if ess_at(log_rnd, rewards, alpha, lo) <= threshold {
        return lo;
    }
    if ess_at(log_rnd, rewards, alpha, hi) >= threshold {
        return hi;
    }
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if ess_at(log_rnd, rewards, alpha, mid) > threshold {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-15 {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// Applies a baseline to one group (docs/algorithm.md §4). `unbiased_factor` is
/// `softmax_group(ell_theta - ell_cur)` and is required by [`Baseline::Unbiased`] only.
pub fn apply_baseline(
    w_plus: &[f64],
    w_minus: &[f64],
    baseline: Baseline,
    strength: f64,
    unbiased_factor: Option<&[f64]>,
) -> Result<Vec<f64>> {
    let sub: Vec<f64> = match baseline {
        Baseline::NegativeCentering => w_minus.to_vec(),
        Baseline::Mean => vec![mean(w_plus); w_plus.len()],
        Baseline::Unbiased => unbiased_factor
            .ok_or_else(|| {
                DmpoError::shape("the unbiased baseline needs softmax(ell_theta - ell_cur)")
            })?
            .to_vec(),
        Baseline::None => vec![0.0; w_plus.len()],
    };
    if sub.len() != w_plus.len() {
        return Err(DmpoError::shape("baseline and weights differ in length"));
    }
    Ok(w_plus
        .iter()
        .zip(sub)
        .map(|(w, s)| w - strength * s)
        .collect())
}

/// The weights of a rollout batch, fixed for its `num_iterations` optimisation steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutWeights {
    /// Completions per prompt `G`.
    pub group_size: usize,
    /// `w+` per sample.
    pub w_plus: Vec<f64>,
    /// `w-` per sample.
    pub w_minus: Vec<f64>,
    /// `ell_cur` per sample (the rollout policy's ELBO), used by DDO and the unbiased baseline.
    pub ell_cur: Vec<f64>,
    /// The coefficient `c` of each group.
    pub coeffs: Vec<f64>,
}

impl RolloutWeights {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.w_plus.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.w_plus.is_empty()
    }

    /// The weights of the samples `rows` (indices into the batch), which must hold whole
    /// groups, each group's rows contiguous and in order (a micro-batch of the rollout).
    pub fn select_rows(&self, rows: &[usize]) -> Result<Self> {
        self.select_slices(rows, self.group_size)
    }

    /// The weights of the samples `rows`, which must hold whole aligned slices of `slice` rows
    /// (`slice` divides the group size), each slice's rows contiguous and in order, as weights
    /// whose groups are those slices (each with its group's coefficient). A baseline over
    /// slices of `slice` rows ([`RolloutWeights::advantages`] with `slice_rows` 0 on the
    /// result) then equals the one over the same slices of the whole rollout, so a data-parallel
    /// peer can hold part of a group.
    pub fn select_slices(&self, rows: &[usize], slice: usize) -> Result<Self> {
        let g = self.group_size;
        let n = self.len();
        if g == 0 || !n.is_multiple_of(g) || [self.w_minus.len(), self.ell_cur.len()] != [n, n] {
            return Err(DmpoError::shape(format!(
                "{n} w+, {} w-, {} ell_cur do not form groups of {g}",
                self.w_minus.len(),
                self.ell_cur.len()
            )));
        }
        if self.coeffs.len() != n / g {
            return Err(DmpoError::shape(format!(
                "{} coefficients for {} groups",
                self.coeffs.len(),
                n / g
            )));
        }
        if slice == 0 || !g.is_multiple_of(slice) {
            return Err(DmpoError::shape(format!(
                "slices of {slice} rows do not divide groups of {g}"
            )));
        }
        if !rows.len().is_multiple_of(slice) {
            return Err(DmpoError::shape(format!(
                "{} rows do not form slices of {slice}",
                rows.len()
            )));
        }
        for part in rows.chunks(slice) {
            let start = part[0];
            if start % slice != 0
                || start + slice > n
                || part.iter().enumerate().any(|(i, &r)| r != start + i)
            {
                return Err(DmpoError::shape(format!(
                    "rows {part:?} are not one whole slice of {slice} of {n} samples"
                )));
            }
        }
        Ok(Self {
            group_size: slice,
            w_plus: rows.iter().map(|&r| self.w_plus[r]).collect(),
            w_minus: rows.iter().map(|&r| self.w_minus[r]).collect(),
            ell_cur: rows.iter().map(|&r| self.ell_cur[r]).collect(),
            coeffs: rows
                .iter()
                .step_by(slice)
                .map(|&r| self.coeffs[r / g])
                .collect(),
        })
    }

    /// The per-sample advantages `A` under `baseline` (docs/algorithm.md §4); `ell_theta` (detached, this
    /// step's masks) is needed by [`Baseline::Unbiased`] only. The mean and unbiased baselines
    /// are taken over slices of `slice_rows` rows of each group (0: the whole group; the reference
    /// takes them over each GPU's 4 rows of a 16-row group).
    pub fn advantages(
        &self,
        baseline: Baseline,
        strength: f64,
        slice_rows: usize,
        ell_theta: Option<&[f64]>,
    ) -> Result<Vec<f64>> {
        let g = if slice_rows == 0 {
            self.group_size
        } else {
            slice_rows
        };
        if !self.group_size.is_multiple_of(g) {
            return Err(DmpoError::config(
                "baseline_rows",
                format!("{g} does not divide the group size {}", self.group_size),
            ));
        }
        let mut out = Vec::with_capacity(self.len());
        for start in (0..self.len()).step_by(g) {
            let range = start..start + g;
            let factor = match (baseline, ell_theta) {
                (Baseline::Unbiased, Some(t)) => {
                    if t.len() != self.len() {
                        return Err(DmpoError::shape("ell_theta and weights differ in length"));
                    }
                    let gap: Vec<f64> = t[range.clone()]
                        .iter()
                        .zip(&self.ell_cur[range.clone()])
                        .map(|(t, c)| t - c)
                        .collect();
                    Some(softmax(&gap))
                }
                _ => None,
            };
            out.extend(apply_baseline(
                &self.w_plus[range.clone()],
                &self.w_minus[range],
                baseline,
                strength,
                factor.as_deref(),
            )?);
        }
        Ok(out)
    }
}

/// What users log about the weights of a rollout batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightDiagnostics {
    /// ESS of `w+` per group (`NaN` in the `alpha = -1` mode, where weights are not normalised).
    pub ess: Vec<f64>,
    /// Mean over groups of the ESS.
    pub ess_mean: f64,
    /// Mean over groups of the group mean of `log_rnd`.
    pub log_rnd_mean: f64,
    /// Mean over groups of the group standard deviation of `log_rnd`.
    pub log_rnd_std: f64,
    /// Reward standard deviation per group.
    pub reward_std: Vec<f64>,
    /// Fraction of groups whose rewards have (near) zero variance.
    pub zero_variance_fraction: f64,
    /// Mean over groups of the coefficient `c`.
    pub coeff_mean: f64,
}

/// The weights and their diagnostics for a rollout batch of `ell_cur`, `ell_ref` and rewards,
/// with groups of `group_size` contiguous samples (docs/algorithm.md §4).
pub fn rollout_weights(
    ell_cur: &[f64],
    ell_ref: &[f64],
    rewards: &[f64],
    group_size: usize,
    config: &DmpoConfig,
) -> Result<(RolloutWeights, WeightDiagnostics)> {
    config.validate()?;
    let n = rewards.len();
    if ell_cur.len() != n || ell_ref.len() != n {
        return Err(DmpoError::shape(format!(
            "{} rewards, {} ell_cur, {} ell_ref",
            n,
            ell_cur.len(),
            ell_ref.len()
        )));
    }
    if group_size == 0 || !n.is_multiple_of(group_size) {
        return Err(DmpoError::shape(format!(
            "{n} samples do not form groups of {group_size}"
        )));
    }
    let lr = log_rnd(ell_ref, ell_cur);
    let groups = n / group_size;
    let (mut w_plus, mut w_minus) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut coeffs, mut ess_g, mut reward_std) = (vec![], vec![], vec![]);
    let (mut lr_mean, mut lr_std) = (0.0, 0.0);
    for g in 0..groups {
        let range = g * group_size..(g + 1) * group_size;
        let (l, r) = (&lr[range.clone()], &rewards[range]);
        let c = if config.adaptive_coeff && config.alpha != -1.0 {
            adaptive_coeff(l, r, config.alpha, config.ess_threshold)
        } else {
            config.coeff
        };
        let (p, m) = group_weights(l, r, config.alpha, c);
        ess_g.push(if config.alpha == -1.0 {
            f64::NAN
        } else {
            ess(&p)
        });
        w_plus.extend(p);
        w_minus.extend(m);
        coeffs.push(c);
        reward_std.push(std_unbiased(r));
        lr_mean += mean(l) / groups as f64;
        lr_std += std_unbiased(l) / groups as f64;
    }
    let diagnostics = WeightDiagnostics {
        ess_mean: mean(&ess_g),
        ess: ess_g,
        log_rnd_mean: lr_mean,
        log_rnd_std: lr_std,
        zero_variance_fraction: zero_variance_fraction(rewards, group_size),
        reward_std,
        coeff_mean: mean(&coeffs),
    };
    Ok((
        RolloutWeights {
            group_size,
            w_plus,
            w_minus,
            ell_cur: ell_cur.to_vec(),
            coeffs,
        },
        diagnostics,
    ))
}
