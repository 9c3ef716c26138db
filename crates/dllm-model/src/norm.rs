//! RMSNorm as LLaDA computes it: statistics in f32, weight only, no bias (docs/algorithm.md §1).

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, DType, Tensor};

use crate::ops::rms_norm_rows;
use crate::params::ParamSource;

/// Root-mean-square layer norm with a learned per-channel weight.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Per-channel scale, `[d_model]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Added to the mean square before the square root.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// The norm named `name` (its weight is `{name}.weight`) over `d_model` channels, from
    /// `source`.
    pub fn build<S: ParamSource<B> + ?Sized>(
        name: &str,
        d_model: usize,
        eps: f64,
        source: &mut S,
    ) -> Result<Self, S::Error> {
        let weight = source.norm_weight(&format!("{name}.weight"), d_model)?;
        Ok(Self {
            weight: Param::from_tensor(weight),
            eps,
        })
    }

    /// `weight * x / sqrt(mean(x^2) + eps)`, the statistics in f32 and cast back before the
    /// weight multiply, as `modeling_llada.py` does.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let dtype = x.dtype();
        // Half-precision inputs are upcast; f32 and f64 are computed as they are. The work is
        // done on a 2-D view so broadcasts stay on the backends' row-wise fast paths.
        let upcast = matches!(dtype, DType::BF16 | DType::F16);
        let x = x.reshape([b * t, d]);
        // A half-precision model computing in f32 (the CPU backend) scales by its norm weights
        // in f32: `d` values, cast per call.
        let weight = match self.weight.val() {
            w if w.dtype() == dtype => w,
            w => w.cast(dtype),
        };
        if let Some(normed) = rms_norm_rows(&x, &weight, self.eps) {
            return normed.reshape([b, t, d]);
        }
        let x32 = if upcast { x.cast(DType::F32) } else { x };
        let inv_rms = (x32.clone().square().mean_dim(1) + self.eps).sqrt().recip();
        let normed = x32 * inv_rms;
        let normed = if upcast { normed.cast(dtype) } else { normed };
        (normed * weight.unsqueeze::<2>()).reshape([b, t, d])
    }
}
