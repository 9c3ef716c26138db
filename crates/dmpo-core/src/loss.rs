//! `LossOutput`: a scalar loss and the diagnostics computed with it.

use burn::tensor::{backend::Backend, Tensor, TensorData};

/// A scalar loss `[1]` (differentiable on an autodiff backend) and its diagnostics.
#[derive(Debug, Clone)]
pub struct LossOutput<B: Backend, D> {
    /// The loss, shape `[1]`.
    pub loss: Tensor<B, 1>,
    /// What the loss function measured on the way.
    pub diagnostics: D,
}

/// A float tensor from host `f64` values.
pub(crate) fn tensor_from<B: Backend, const D: usize>(
    values: &[f64],
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}
