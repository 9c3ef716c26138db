//! The reference policy `p_ref` of the DMPO target `p* ∝ p_ref exp(r / alpha)` (docs/algorithm.md §4), and
//! TRL-style reference synchronisation.
//!
//! With LoRA the reference is the model with its adapters disabled (docs/algorithm.md §5); with full
//! fine-tuning it is a frozen copy of the initial weights. Optionally (TRL's `sync_ref_model`,
//! full fine-tuning only) every `ref_model_sync_steps` rollout steps the frozen copy moves toward
//! the policy: `ref <- mixup * policy + (1 - mixup) * ref`. The target then keeps moving ahead of
//! the policy instead of anchoring it to the base model (a sequence of KL-regularised steps).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{backend::Backend, Tensor};
use dllm_model::DiffusionLm;
use dmpo_core::ModelView;

use crate::error::{Result, TrainError};

/// The reference policy: the adapter-disabled view (LoRA) or a frozen copy (full fine-tuning).
#[derive(Clone)]
pub enum Reference<B: Backend> {
    /// The policy with its LoRA adapters disabled.
    AdapterOff,
    /// A separate copy of the weights, not trained.
    Frozen(Box<DiffusionLm<B>>),
}

impl<B: Backend> Reference<B> {
    /// The reference as a denoiser, for a step whose no-grad policy is `policy`: the policy with
    /// its adapters off, or the frozen copy (which has no adapter, so it is seen whole).
    pub fn view<'a>(&'a self, policy: &'a DiffusionLm<B>) -> ModelView<'a, B> {
        match self {
            Reference::AdapterOff => ModelView::without_adapter(policy),
            Reference::Frozen(model) => ModelView::policy(model),
        }
    }

    /// Moves a frozen reference toward `policy`: `ref <- mixup * policy + (1 - mixup) * ref`,
    /// parameter by parameter (`mixup = 1` copies the policy).
    pub fn sync(&mut self, policy: &DiffusionLm<B>, mixup: f64) -> Result<()> {
        let Reference::Frozen(reference) = self else {
            return Err(TrainError::Data(
                "reference sync needs full fine-tuning (a frozen reference copy)".into(),
            ));
        };
        let mixed = mix_parameters((**reference).clone(), policy, mixup)?;
        **reference = mixed;
        Ok(())
    }
}

/// `target <- alpha * source + (1 - alpha) * target` for every float parameter, matched by
/// position in the module tree (the two modules must have the same structure).
pub fn mix_parameters<B: Backend, M: Module<B>>(target: M, source: &M, alpha: f64) -> Result<M> {
    let mut collect = CollectParams(Vec::new());
    source.visit(&mut collect);
    let mut mixer = MixParams {
        source: collect.0.into_iter(),
        alpha,
        error: None,
    };
    let mixed = target.map(&mut mixer);
    if let Some(e) = mixer.error {
        return Err(e);
    }
    if mixer.source.next().is_some() {
        return Err(TrainError::Data(
            "reference sync: the policy has more parameters than the reference".into(),
        ));
    }
    Ok(mixed)
}

/// Every float parameter of a module, flattened, in visiting order.
struct CollectParams<B: Backend>(Vec<(Vec<usize>, Tensor<B, 1>)>);

impl<B: Backend> ModuleVisitor<B> for CollectParams<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let value = param.val();
        let shape = value.dims().to_vec();
        let n: usize = shape.iter().product();
        self.0.push((shape, value.reshape([n])));
    }
}

/// Replaces each float parameter by its mix with the next collected one.
struct MixParams<B: Backend, I: Iterator<Item = (Vec<usize>, Tensor<B, 1>)>> {
    source: I,
    alpha: f64,
    error: Option<TrainError>,
}

impl<B: Backend, I: Iterator<Item = (Vec<usize>, Tensor<B, 1>)>> ModuleMapper<B>
    for MixParams<B, I>
{
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let dims = tensor.dims();
        let tensor = match self.source.next() {
            Some((shape, source)) if shape == dims.to_vec() && self.error.is_none() => {
                let source: Tensor<B, D> = source.reshape(dims);
                source.mul_scalar(self.alpha) + tensor.mul_scalar(1.0 - self.alpha)
            }
            other => {
                if self.error.is_none() {
                    self.error = Some(TrainError::Data(format!(
                        "reference sync: parameter of shape {dims:?} has no counterpart of the \
                         same shape in the policy (found {:?})",
                        other.map(|(s, _)| s)
                    )));
                }
                tensor
            }
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dllm_model::ModelConfig;

    type B = burn::backend::Flex;

    fn model(layers: usize, seed: u64) -> DiffusionLm<B> {
        let config = ModelConfig::tiny(16, layers, 2, 24, 11, 10, 1);
        B::seed(&Default::default(), seed);
        DiffusionLm::init(&config, &Default::default())
    }

    fn tiny(seed: u64) -> DiffusionLm<B> {
        model(1, seed)
    }

    fn first_param(m: &DiffusionLm<B>) -> Vec<f32> {
        let mut c = CollectParams(Vec::new());
        m.visit(&mut c);
        c.0[0].1.clone().into_data().to_vec().unwrap()
    }

    #[test]
    fn mixing_interpolates_every_parameter() {
        let (a, b) = (tiny(1), tiny(2));
        let (pa, pb) = (first_param(&a), first_param(&b));
        assert_ne!(pa, pb);
        let mixed = mix_parameters(a.clone(), &b, 0.25).unwrap();
        let pm = first_param(&mixed);
        for ((m, a), b) in pm.iter().zip(&pa).zip(&pb) {
            assert!((m - (0.25 * b + 0.75 * a)).abs() < 1e-6);
        }
        // alpha = 1 copies the source exactly, for all parameters.
        let copied = mix_parameters(a, &b, 1.0).unwrap();
        let (mut x, mut y) = (CollectParams(Vec::new()), CollectParams(Vec::new()));
        copied.visit(&mut x);
        b.visit(&mut y);
        assert_eq!(x.0.len(), y.0.len());
        for ((_, p), (_, q)) in x.0.into_iter().zip(y.0) {
            p.into_data().assert_eq(&q.into_data(), true);
        }
    }

    #[test]
    fn mismatched_structures_are_refused() {
        let (a, b) = (model(1, 1), model(2, 1));
        assert!(mix_parameters(a.clone(), &b, 0.5).is_err());
        assert!(mix_parameters(b, &a, 0.5).is_err());
    }

    #[test]
    fn adapter_references_cannot_sync() {
        let mut r = Reference::<B>::AdapterOff;
        assert!(r.sync(&tiny(1), 1.0).is_err());
    }
}
