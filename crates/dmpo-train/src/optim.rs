//! One optimiser update: global gradient-norm clipping (PyTorch's `clip_grad_norm_`, not burn's
//! per-tensor clipping, see BURN_NOTES), a non-finite guard, and the learning-rate schedule.

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{backend::AutodiffBackend, ElementConversion, Tensor};

use crate::recipe::{Schedule, TrainSection};

/// AdamW with the recipe's betas, epsilon and weight decay.
pub fn adamw(t: &TrainSection) -> burn::optim::AdamWConfig {
    burn::optim::AdamWConfig::new()
        .with_beta_1(t.beta1 as f32)
        .with_beta_2(t.beta2 as f32)
        .with_epsilon(t.eps as f32)
        .with_weight_decay(t.weight_decay as f32)
}

/// Learning rate at optimiser step `step` (0-based) of `total`: linear warm-up from 0, then
/// constant or cosine decay to 0.
pub fn learning_rate(t: &TrainSection, step: usize, total: usize) -> f64 {
    if step < t.warmup_steps {
        let done = if t.warmup_from_zero { step } else { step + 1 };
        return t.lr * done as f64 / t.warmup_steps as f64;
    }
    match t.schedule {
        Schedule::Constant => t.lr,
        Schedule::Cosine => {
            let span = total.saturating_sub(t.warmup_steps).max(1) as f64;
            let progress = (step - t.warmup_steps) as f64 / span;
            0.5 * t.lr * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
        }
    }
}

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    sum: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.sum += g.square().sum().into_scalar().elem::<f64>();
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Scale<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register(param.id, g * self.factor);
        }
        param
    }
}

/// The global L2 norm of every gradient of `model`'s parameters.
pub fn global_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut v = SquaredNorm { grads, sum: 0.0 };
    model.visit(&mut v);
    v.sum.sqrt()
}

/// What an update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UpdateOutcome {
    /// Applied, with the pre-clipping gradient norm.
    Applied {
        /// Global gradient norm before clipping.
        grad_norm: f64,
    },
    /// Skipped because the loss or the gradient norm was not finite.
    SkippedNonFinite,
}

/// Clips gradients to `max_norm` globally and applies them, unless the loss or the norm is
/// not finite (then the model is returned untouched).
pub fn apply_update<B, M, O>(
    model: M,
    optimizer: &mut O,
    mut grads: GradientsParams,
    loss: f64,
    lr: f64,
    max_norm: f64,
) -> (M, UpdateOutcome)
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: Optimizer<M, B>,
{
    let norm = global_grad_norm(&model, &grads);
    if !loss.is_finite() || !norm.is_finite() {
        return (model, UpdateOutcome::SkippedNonFinite);
    }
    // clip_grad_norm_: g *= max_norm / (norm + 1e-6) when norm > max_norm.
    if norm > max_norm {
        let factor = max_norm / (norm + 1e-6);
        let model = model.map(&mut Scale {
            grads: &mut grads,
            factor,
        });
        return (
            optimizer.step(lr, model, grads),
            UpdateOutcome::Applied { grad_norm: norm },
        );
    }
    (
        optimizer.step(lr, model, grads),
        UpdateOutcome::Applied { grad_norm: norm },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::optim::AdamWConfig;
    use dllm_model::{DiffusionLm, ModelConfig};

    type AB = Autodiff<Flex>;

    fn tiny() -> DiffusionLm<AB> {
        DiffusionLm::init(
            &ModelConfig::tiny(16, 1, 2, 32, 20, 19, 18),
            &Default::default(),
        )
    }

    /// Gradients of `value` for the embedding only.
    fn grads_for(model: &DiffusionLm<AB>, value: f32) -> GradientsParams {
        let mut g = GradientsParams::new();
        let dims = model.wte.val().dims();
        g.register::<Flex, 2>(model.wte.id, Tensor::full(dims, value, &Default::default()));
        g
    }

    fn wte(model: &DiffusionLm<AB>) -> Vec<f32> {
        model.wte.val().into_data().to_vec::<f32>().unwrap()
    }

    #[test]
    fn non_finite_gradients_or_loss_skip_the_update() {
        let mut opt = AdamWConfig::new().init::<AB, DiffusionLm<AB>>();
        let model = tiny();
        let before = wte(&model);
        let g = grads_for(&model, f32::NAN);
        let (model, outcome) = apply_update(model, &mut opt, g, 1.0, 1e-2, 1.0);
        assert_eq!(outcome, UpdateOutcome::SkippedNonFinite);
        assert_eq!(wte(&model), before);
        let g = grads_for(&model, 1.0);
        let (model, outcome) = apply_update(model, &mut opt, g, f64::INFINITY, 1e-2, 1.0);
        assert_eq!(outcome, UpdateOutcome::SkippedNonFinite);
        assert_eq!(wte(&model), before);
        let g = grads_for(&model, 1.0);
        let (model, outcome) = apply_update(model, &mut opt, g, 0.5, 1e-2, 1.0);
        assert!(matches!(outcome, UpdateOutcome::Applied { .. }));
        assert_ne!(wte(&model), before);
    }

    #[test]
    fn clipping_uses_the_global_norm() {
        let model = tiny();
        let g = grads_for(&model, 0.5);
        let n = (model.wte.val().dims().iter().product::<usize>() as f64).sqrt() * 0.5;
        assert!((global_grad_norm(&model, &g) - n).abs() < 1e-3);
        let mut g = g;
        let model = burn::module::Module::map(
            model,
            &mut Scale {
                grads: &mut g,
                factor: 0.1,
            },
        );
        assert!((global_grad_norm(&model, &g) - 0.1 * n).abs() < 1e-3);
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        let t = TrainSection {
            lr: 1.0,
            warmup_steps: 4,
            schedule: Schedule::Cosine,
            ..Default::default()
        };
        assert_eq!(learning_rate(&t, 0, 14), 0.25);
        assert_eq!(learning_rate(&t, 3, 14), 1.0);
        assert!((learning_rate(&t, 4, 14) - 1.0).abs() < 1e-12);
        assert!((learning_rate(&t, 9, 14) - 0.5).abs() < 1e-12);
        let c = TrainSection {
            lr: 0.3,
            schedule: Schedule::Constant,
            ..Default::default()
        };
        assert_eq!(learning_rate(&c, 100, 10), 0.3);
    }

    #[test]
    fn warmup_from_zero_follows_hf_constant_with_warmup() {
        let mut t = TrainSection {
            lr: 1.0,
            warmup_steps: 4,
            ..TrainSection::default()
        };
        let ours: Vec<f64> = (0..6).map(|k| learning_rate(&t, k, 100)).collect();
        assert_eq!(ours, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
        t.warmup_from_zero = true;
        // HF: lr_lambda(k) = k / W for k < W, then 1.
        let hf: Vec<f64> = (0..6).map(|k| learning_rate(&t, k, 100)).collect();
        assert_eq!(hf, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]);
    }
}
