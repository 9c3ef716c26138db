//! The optimiser of a pretraining run: AdamW with a linear warm-up to a constant learning rate.
//! The training loop builds its optimiser and its schedule from [`Optimiser`], and
//! `pretrain.json` and the model card record the same value, so the two cannot disagree.

use burn::optim::AdamWConfig;
use serde::{Deserialize, Serialize};

/// AdamW's settings beyond the learning rate, in the precision burn takes them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    /// Decay of the first moment.
    pub beta_1: f32,
    /// Decay of the second moment.
    pub beta_2: f32,
    /// Added to the second moment's square root.
    pub epsilon: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
}

impl AdamW {
    /// The settings every pretraining run uses.
    pub const PRETRAIN: AdamW = AdamW {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-8,
        weight_decay: 0.01,
    };

    /// burn's configuration with these settings.
    pub fn config(&self) -> AdamWConfig {
        AdamWConfig::new()
            .with_beta_1(self.beta_1)
            .with_beta_2(self.beta_2)
            .with_epsilon(self.epsilon)
            .with_weight_decay(self.weight_decay)
    }
}

/// The learning-rate schedule and AdamW settings of a run (serialised flat: `lr`, `warmup`,
/// `adamw`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Optimiser {
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup: usize,
    /// AdamW's other settings.
    pub adamw: AdamW,
}

impl Optimiser {
    /// The pretraining optimiser with peak rate `lr` reached after `warmup` steps.
    pub fn new(lr: f64, warmup: usize) -> Self {
        Self {
            lr,
            warmup,
            adamw: AdamW::PRETRAIN,
        }
    }

    /// The learning rate of the step taken after `steps` steps: `lr * min(1, (steps + 1) /
    /// warmup)`.
    pub fn lr_at(&self, steps: usize) -> f64 {
        self.lr * ((steps + 1) as f64 / self.warmup.max(1) as f64).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_is_linear_then_constant() {
        let o = Optimiser::new(1.0, 4);
        let rates: Vec<f64> = (0..6).map(|s| o.lr_at(s)).collect();
        assert_eq!(rates, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
        assert_eq!(Optimiser::new(1.0, 0).lr_at(0), 1.0);
    }

    #[test]
    fn serialises_as_the_record_fields() {
        assert_eq!(
            serde_json::to_string(&Optimiser::new(0.002, 50)).unwrap(),
            r#"{"lr":0.002,"warmup":50,"adamw":{"beta_1":0.9,"beta_2":0.999,"epsilon":1e-8,"weight_decay":0.01}}"#
        );
    }
}
