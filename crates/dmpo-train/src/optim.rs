//! One optimiser update: global gradient-norm clipping (PyTorch's `clip_grad_norm_`, not burn's
//! per-tensor clipping, see BURN_NOTES), a non-finite guard, and the learning-rate schedule.

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{backend::AutodiffBackend, ElementConversion, Tensor};

use crate::recipe::{Schedule, TrainSection};

/// Learning rate at optimiser step `step` (0-based) of `total`: linear warm-up from 0, then
/// constant or cosine decay to 0.
pub fn learning_rate(t: &TrainSection, step: usize, total: usize) -> f64 {
    if step < t.warmup_steps {
        return t.lr * (step + 1) as f64 / t.warmup_steps as f64;
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
