//! The metrics of a run: one [`StepMetrics`] row per rollout step in `metrics.jsonl`, built from
//! the rollout, the algorithm's diagnostics and the optimiser's log; appending and truncating
//! JSON-lines files.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::algorithm::{Diagnostics, UpdateLog};
use crate::error::{Result, TrainError};
use crate::rollout::Rollout;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    /// Rollout step (0-based).
    pub step: usize,
    /// Mean reward over the rollouts.
    pub reward_mean: f64,
    /// Mean of each reward component.
    pub reward_components: BTreeMap<String, f64>,
    /// Mean within-group reward standard deviation.
    pub reward_std: f64,
    /// Fraction of groups whose rewards are all equal.
    pub zero_variance_fraction: f64,
    /// Mean completion length in tokens, up to and including the first EOS.
    pub completion_length: f64,
    /// Mean effective sample size of the DMPO weights (NaN for GRPO).
    pub ess_mean: f64,
    /// Mean interpolation coefficient `c` of the DMPO weights (NaN for GRPO).
    pub coeff_mean: f64,
    /// Mean of the per-row advantages.
    pub advantage_mean: f64,
    /// Standard deviation (population) of the per-row advantages.
    pub advantage_std: f64,
    /// diffu-GRPO: mean k3 KL to the reference over completion tokens (NaN otherwise).
    pub kl: f64,
    /// diffu-GRPO: fraction of completion tokens whose clipped term was taken (NaN otherwise).
    pub clip_ratio: f64,
    /// Mean of `log_rnd`.
    pub log_rnd_mean: f64,
    /// Standard deviation of `log_rnd`.
    pub log_rnd_std: f64,
    /// Pearson correlation between the per-rollout advantages (weights) and rewards.
    pub advantage_reward_corr: f64,
    /// Mean loss over the updates.
    pub loss: f64,
    /// Mean pre-clip global gradient norm over applied updates.
    pub grad_norm: f64,
    /// Learning rate of the last update.
    pub lr: f64,
    /// Updates skipped for non-finite values so far.
    pub skipped_total: usize,
    /// Generated tokens per second during rollout.
    pub rollout_tokens_per_s: f64,
    /// Seconds per phase.
    pub seconds: BTreeMap<&'static str, f64>,
    /// The completion text of the step's first row, as the reward read it.
    pub sample_completion: String,
    /// Its reward.
    pub sample_reward: f64,
}

/// Seconds of the phases before the algorithm: sampling the rollout and scoring it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RolloutSeconds {
    /// Prompts and generation.
    pub rollout: f64,
    /// Rewards.
    pub reward: f64,
}

impl StepMetrics {
    /// The row of rollout step `step`; `skipped_total` counts the run's skipped updates so far.
    pub fn new(
        step: usize,
        rollout: &Rollout,
        diagnostics: &Diagnostics,
        updates: &UpdateLog,
        skipped_total: usize,
        rollout_seconds: RolloutSeconds,
    ) -> Self {
        let (ess_mean, coeff_mean, log_rnd_mean, log_rnd_std) = match diagnostics {
            Diagnostics::Dmpo(d) => (
                d.weights.ess_mean,
                d.weights.coeff_mean,
                d.weights.log_rnd_mean,
                d.weights.log_rnd_std,
            ),
            Diagnostics::DiffuGrpo(_) => (f64::NAN, f64::NAN, f64::NAN, f64::NAN),
        };
        let (kl, clip_ratio) = match diagnostics {
            Diagnostics::DiffuGrpo(d) => (d.kl.unwrap_or(f64::NAN), d.clip_ratio),
            Diagnostics::Dmpo(_) => (f64::NAN, f64::NAN),
        };
        let advantages = diagnostics.advantages().unwrap_or(&[]);
        let advantage_mean = mean(advantages);
        let advantage_std = mean(
            &advantages
                .iter()
                .map(|a| (a - advantage_mean).powi(2))
                .collect::<Vec<_>>(),
        )
        .sqrt();
        let phases = diagnostics.seconds();
        let seconds = BTreeMap::from([
            ("rollout", rollout_seconds.rollout),
            ("reward", rollout_seconds.reward),
            ("elbo", phases.elbo),
            ("optimize", phases.optimize),
        ]);
        Self {
            step,
            reward_mean: rollout.reward_mean(),
            reward_components: rollout.reward_components.clone(),
            reward_std: rollout.reward_std(),
            zero_variance_fraction: rollout.zero_variance_fraction(),
            completion_length: rollout.completion_length_mean(),
            ess_mean,
            coeff_mean,
            advantage_mean,
            advantage_std,
            kl,
            clip_ratio,
            log_rnd_mean,
            log_rnd_std,
            advantage_reward_corr: diagnostics
                .advantages()
                .map_or(f64::NAN, |a| pearson(a, &rollout.rewards)),
            loss: mean(&updates.losses),
            grad_norm: mean(&updates.grad_norms),
            lr: updates.lr,
            skipped_total,
            rollout_tokens_per_s: rollout.generated_tokens() as f64 / rollout_seconds.rollout,
            seconds,
            sample_completion: rollout.sample_completion.clone(),
            sample_reward: rollout.rewards.first().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Mean of `v` (`NaN` when empty).
fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Pearson correlation (NaN when either side is constant).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// Appends `line` as one JSON line to `path` (created when missing).
pub fn append_line(path: &Path, line: &impl Serialize) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainError::io(path, e))?;
    let text = serde_json::to_string(line).expect("serialisable");
    writeln!(f, "{text}").map_err(|e| TrainError::io(path, e))
}

/// The `reward_mean` of every row of a run's `metrics.jsonl` (empty when there is none).
pub fn rewards(path: &Path) -> Result<Vec<f64>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("reward_mean").and_then(|r| r.as_f64()))
        .collect())
}

/// Drops the lines of `path` of steps at or after `step` (work lost with an interrupted run).
pub fn truncate_from_step(path: &Path, step: usize) -> Result<()> {
    if !path.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| (s as usize) < step)
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    dllm_model::load::write_atomic(path, out.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pearson_of_linear_and_constant_series() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert!(pearson(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
    }

    #[test]
    fn truncation_keeps_the_earlier_steps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        truncate_from_step(&path, 0).unwrap();
        assert!(!path.exists());
        for step in 0..4 {
            append_line(&path, &serde_json::json!({ "step": step, "x": 1 })).unwrap();
        }
        truncate_from_step(&path, 2).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"step\":0,\"x\":1}\n{\"step\":1,\"x\":1}\n");
        truncate_from_step(&path, 0).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
