//! Gradients summed over the peers as a few flat `f32` buffers ("buckets", PyTorch DDP's word):
//! the trainable parameters in the model's visiting order (the same on every peer), packed
//! until a bucket holds [`BUCKET_VALUES`] values, each bucket one exchange; then unpacked into
//! gradients of the parameters' shapes, dtypes and devices.
//!
//! A peer may hold no gradient for a parameter (all its passes skipped it): it sends zeros, and
//! a first small exchange counts the peers that hold one, so that a parameter no peer holds a
//! gradient for gets none (not a zero gradient, which AdamW would still apply).

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};

use crate::error::{Result, TrainError};

/// Values per bucket: 25 MiB of `f32`, PyTorch DDP's default `bucket_cap_mb`. A parameter larger
/// than that travels alone.
pub const BUCKET_VALUES: usize = 25 * 1024 * 1024 / 4;

/// A trainable parameter: where its gradient goes.
struct Slot<B: Backend> {
    id: ParamId,
    shape: Vec<usize>,
    device: B::Device,
    dtype: DType,
}

impl<B: Backend> Slot<B> {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The trainable parameters of `model`, in visiting order.
fn slots<AB: AutodiffBackend, M: AutodiffModule<AB>>(model: &M) -> Vec<Slot<AB::InnerBackend>> {
    struct Collect<B: Backend>(Vec<Slot<B>>);
    impl<AB: AutodiffBackend> ModuleVisitor<AB> for Collect<AB::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
            let tensor = param.val();
            if tensor.is_require_grad() {
                self.0.push(Slot {
                    id: param.id,
                    shape: tensor.shape().dims::<D>().to_vec(),
                    device: tensor.device(),
                    dtype: tensor.dtype(),
                });
            }
        }
    }
    let mut all = Collect(Vec::new());
    model.visit(&mut all);
    all.0
}

/// Removes `slot`'s gradient from `grads`, as `f32` values.
fn take<B: Backend>(grads: &mut GradientsParams, slot: &Slot<B>) -> Result<Option<Vec<f32>>> {
    fn values<B: Backend, const D: usize>(t: Option<Tensor<B, D>>) -> Result<Option<Vec<f32>>> {
        t.map(|t| {
            t.into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| TrainError::Distributed(format!("reading a gradient: {e:?}")))
        })
        .transpose()
    }
    match slot.shape.len() {
        1 => values(grads.remove::<B, 1>(slot.id)),
        2 => values(grads.remove::<B, 2>(slot.id)),
        3 => values(grads.remove::<B, 3>(slot.id)),
        4 => values(grads.remove::<B, 4>(slot.id)),
        n => Err(unsupported(n)),
    }
}

/// Registers `values` as `slot`'s gradient in `grads`.
fn put<B: Backend>(grads: &mut GradientsParams, slot: &Slot<B>, values: &[f32]) -> Result<()> {
    fn tensor<B: Backend, const D: usize>(slot: &Slot<B>, values: &[f32]) -> Tensor<B, D> {
        let data = TensorData::new(values.to_vec(), slot.shape.clone());
        let t = Tensor::<B, D>::from_data(data, &slot.device);
        match slot.dtype {
            DType::F32 => t,
            dtype => t.cast(dtype),
        }
    }
    match slot.shape.len() {
        1 => grads.register(slot.id, tensor::<B, 1>(slot, values)),
        2 => grads.register(slot.id, tensor::<B, 2>(slot, values)),
        3 => grads.register(slot.id, tensor::<B, 3>(slot, values)),
        4 => grads.register(slot.id, tensor::<B, 4>(slot, values)),
        n => return Err(unsupported(n)),
    }
    Ok(())
}

fn unsupported(rank: usize) -> TrainError {
    TrainError::Distributed(format!(
        "a trainable parameter of rank {rank}: gradients of rank 1 to 4 are exchanged"
    ))
}

/// The ends of the buckets that parameters of `lens` values, in order, are packed into: each
/// bucket takes parameters while they fit in [`BUCKET_VALUES`] (at least one).
fn bucket_ends(lens: &[usize]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut start = 0;
    while start < lens.len() {
        let (mut end, mut values) = (start + 1, lens[start]);
        while end < lens.len() && values + lens[end] <= BUCKET_VALUES {
            values += lens[end];
            end += 1;
        }
        ends.push(end);
        start = end;
    }
    ends
}

/// What summing the gradients of every trainable parameter of a model exchanges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangePlan {
    /// Trainable parameters (the values of the first exchange: one count each).
    pub parameters: usize,
    /// Trainable values (the buckets' values).
    pub values: usize,
    /// Buckets.
    pub buckets: usize,
}

impl ExchangePlan {
    /// The plan of `model`, every trainable parameter holding a gradient.
    pub fn of<AB: AutodiffBackend, M: AutodiffModule<AB>>(model: &M) -> Self {
        let lens: Vec<usize> = slots::<AB, M>(model).iter().map(Slot::len).collect();
        Self {
            parameters: lens.len(),
            values: lens.iter().sum(),
            buckets: bucket_ends(&lens).len(),
        }
    }

    /// Exchanges per gradient sum: the counts, then the buckets.
    pub fn exchanges(&self) -> usize {
        1 + self.buckets
    }

    /// Bytes a peer sends per gradient sum (`f32` counts and values).
    pub fn bytes(&self) -> u64 {
        4 * (self.parameters + self.values) as u64
    }
}

/// `grads` (of `model`'s trainable parameters) summed over the peers by `sum`, which returns the
/// elementwise sum over peers of the buffer it is given (the same on every peer); `sum` is
/// called the same number of times, with buffers of the same lengths, on every peer.
pub fn sum_gradients<AB, M>(
    model: &M,
    mut grads: GradientsParams,
    mut sum: impl FnMut(Vec<f32>, &str) -> Result<Vec<f32>>,
) -> Result<GradientsParams>
where
    AB: AutodiffBackend,
    M: AutodiffModule<AB>,
{
    let slots = slots::<AB, M>(model);
    let present: Vec<f32> = slots
        .iter()
        .map(|s| f32::from(u8::from(grads_contains(&grads, s))))
        .collect();
    let holders = sum(present, "counting the peers' gradients")?;
    let exchanged: Vec<&Slot<AB::InnerBackend>> = slots
        .iter()
        .zip(&holders)
        .filter(|(_, &n)| n > 0.0)
        .map(|(s, _)| s)
        .collect();
    let lens: Vec<usize> = exchanged.iter().map(|s| s.len()).collect();
    let mut out = GradientsParams::new();
    let mut start = 0;
    for end in bucket_ends(&lens) {
        let mut bucket = Vec::with_capacity(lens[start..end].iter().sum());
        for slot in &exchanged[start..end] {
            match take(&mut grads, slot)? {
                Some(v) => bucket.extend(v),
                None => bucket.resize(bucket.len() + slot.len(), 0.0),
            }
        }
        let summed = sum(bucket, "all-reducing the gradients")?;
        let mut at = 0;
        for slot in &exchanged[start..end] {
            put(&mut out, slot, &summed[at..at + slot.len()])?;
            at += slot.len();
        }
        start = end;
    }
    Ok(out)
}

fn grads_contains<B: Backend>(grads: &GradientsParams, slot: &Slot<B>) -> bool {
    match slot.shape.len() {
        1 => grads.get::<B, 1>(slot.id).is_some(),
        2 => grads.get::<B, 2>(slot.id).is_some(),
        3 => grads.get::<B, 3>(slot.id).is_some(),
        4 => grads.get::<B, 4>(slot.id).is_some(),
        _ => false,
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};

    type AB = burn::backend::Autodiff<burn::backend::Flex>;

    #[derive(Module, Debug)]
    struct Two<B: Backend> {
        a: Linear<B>,
        b: Linear<B>,
    }

    #[test]
    fn parameters_are_packed_while_they_fit() {
        let cap = BUCKET_VALUES;
        assert_eq!(bucket_ends(&[]), Vec::<usize>::new());
        assert_eq!(bucket_ends(&[1, 2, 3]), vec![3]);
        assert_eq!(
            bucket_ends(&[cap, 1, cap - 1, 2 * cap, 1]),
            vec![1, 3, 4, 5]
        );
    }

    #[test]
    fn buckets_sum_every_gradient_and_leave_absent_ones_absent() {
        let device = Default::default();
        let model = Two::<AB> {
            a: LinearConfig::new(3, 2).init(&device),
            b: LinearConfig::new(2, 2).init(&device),
        };
        let x = Tensor::<AB, 2>::ones([1, 3], &device);
        // Only `a` takes part: `b` has no gradient.
        let loss = model.a.forward(x).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let expected: Vec<f32> = grads
            .get::<burn::backend::Flex, 2>(model.a.weight.id)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        let mut calls = Vec::new();
        // Two peers holding the same gradients.
        let summed = sum_gradients::<AB, _>(&model, grads, |v, what| {
            calls.push((what.to_string(), v.len()));
            Ok(v.into_iter().map(|x| 2.0 * x).collect())
        })
        .unwrap();
        let got: Vec<f32> = summed
            .get::<burn::backend::Flex, 2>(model.a.weight.id)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(got, expected.iter().map(|x| 2.0 * x).collect::<Vec<_>>());
        assert!(summed
            .get::<burn::backend::Flex, 2>(model.b.weight.id)
            .is_none());
        assert_eq!(
            ExchangePlan::of::<AB, _>(&model),
            ExchangePlan {
                parameters: 4,
                values: 14,
                buckets: 1
            }
        );
        // One count of the holders, then one bucket of `a`'s weight and bias.
        assert_eq!(
            calls,
            vec![
                ("counting the peers' gradients".to_string(), 4),
                ("all-reducing the gradients".to_string(), 8)
            ]
        );
    }
}
