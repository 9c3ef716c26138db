//! Fused, row-parallel CPU kernels for the elementwise parts of a block (spec §1): RMSNorm,
//! the SwiGLU product `silu(gate) * up`, and RoPE written heads-first.
//!
//! burn's CPU backend (flex) runs elementwise ops on one thread, one op per pass over memory:
//! `silu(g) * u` is four passes and a scalar `expf` per element, RMSNorm six. Profiled on the
//! bench model, these serial passes held the second core idle for about a quarter of a forward
//! (docs/performance.md). On flex with f32 tensors outside autodiff (sampling, evaluation, the
//! no-grad ELBO pass) these functions read the tensors out, compute each row in one pass on all
//! cores, and hand the result back; everywhere else they are the plain tensor expressions, so
//! GPU backends keep their own kernels and autodiff records the usual graph.

use burn::tensor::{activation::silu, backend::Backend, DType, Tensor, TensorData};
use rayon::prelude::*;

/// Elements per parallel task: large enough to amortise rayon's dispatch.
const CHUNK: usize = 16 * 1024;

/// Whether `t` lives on plain flex in f32, where the fused host kernels apply.
fn uses_host_kernels<B: Backend, const D: usize>(t: &Tensor<B, D>) -> bool {
    t.dtype() == DType::F32 && B::name(&t.device()) == "flex"
}

/// The tensor's f32 elements in row-major order.
fn host_values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .into_vec::<f32>()
        .expect("uses_host_kernels checked the dtype is f32")
}

/// `silu(gate) * up`, elementwise, for tensors of the same shape.
pub fn swiglu<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
    if !(uses_host_kernels(&gate) && uses_host_kernels(&up)) || gate.dims() != up.dims() {
        return silu(gate) * up;
    }
    let (shape, device) = (gate.shape(), gate.device());
    let mut out = host_values(gate);
    let up = host_values(up);
    out.par_chunks_mut(CHUNK)
        .zip(up.par_chunks(CHUNK))
        .for_each(|(g, u)| {
            for (g, &u) in g.iter_mut().zip(u) {
                *g = *g / (1.0 + exp_f32(-*g)) * u;
            }
        });
    Tensor::from_data(TensorData::new(out, shape), &device)
}

/// `weight * x / sqrt(mean(x^2) + eps)` over the last dimension of `x` `[rows, d]`.
///
/// Returns `None` where the host kernel does not apply; the caller then uses tensor ops.
pub fn rms_norm_rows<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Option<Tensor<B, 2>> {
    if !(uses_host_kernels(x) && uses_host_kernels(weight)) {
        return None;
    }
    let [rows, d] = x.dims();
    if d == 0 || weight.dims() != [d] {
        return None;
    }
    let device = x.device();
    let mut out = host_values(x.clone());
    let weight = host_values(weight.clone());
    let rows_per_task = (CHUNK / d).max(1);
    out.par_chunks_mut(rows_per_task * d).for_each(|block| {
        for row in block.chunks_mut(d) {
            let mean_square = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let inv_rms = 1.0 / (mean_square + eps as f32).sqrt();
            for (v, &w) in row.iter_mut().zip(&weight) {
                *v = *v * inv_rms * w;
            }
        }
    });
    Some(Tensor::from_data(TensorData::new(out, [rows, d]), &device))
}

/// Rotary embedding of `x` `[batch, len, heads, head_dim]` in the rotate-half convention,
/// written as `[batch, heads, len, head_dim]`: `out = x * cos + swap_halves(x) * signed_sin` with
/// the tables laid out `[len * heads * head_dim]` (see `RopeTables`).
///
/// Returns `None` where the host kernel does not apply; the caller then uses tensor ops.
pub fn rope_heads_first<B: Backend>(
    x: &Tensor<B, 4>,
    cos: &[f32],
    signed_sin: &[f32],
) -> Option<Tensor<B, 4>> {
    let [batch, len, heads, head_dim] = x.dims();
    let row = heads * head_dim;
    if !uses_host_kernels(x)
        || head_dim % 2 != 0
        || cos.len() != len * row
        || signed_sin.len() != len * row
    {
        return None;
    }
    let half = head_dim / 2;
    let device = x.device();
    let src = host_values(x.clone());
    let mut out = vec![0.0f32; src.len()];
    // One task per (batch, head): `len` output rows of `head_dim`, contiguous.
    out.par_chunks_mut((len * head_dim).max(1))
        .enumerate()
        .for_each(|(task, dst)| {
            let (b, h) = (task / heads, task % heads);
            for (t, dst) in dst.chunks_mut(head_dim).enumerate() {
                let at = t * row + h * head_dim;
                let x = &src[b * len * row + at..][..head_dim];
                let (c, s) = (&cos[at..at + head_dim], &signed_sin[at..at + head_dim]);
                for j in 0..head_dim {
                    let swapped = if j < half { x[j + half] } else { x[j - half] };
                    dst[j] = x[j] * c[j] + swapped * s[j];
                }
            }
        });
    Some(Tensor::from_data(
        TensorData::new(out, [batch, heads, len, head_dim]),
        &device,
    ))
}

/// `e^x` in f32, accurate to a few units in the last place, written without branches or calls
/// so that loops over it vectorise (glibc's `expf` is a scalar call per element).
///
/// Range reduction `x = n ln 2 + r`, `|r| <= ln 2 / 2`, then `e^r` by its degree-7 Taylor
/// polynomial (truncation error below 1e-8 relative) and `2^n` built in the exponent bits.
/// Inputs are clamped to the range where `e^x` is a normal f32; NaN stays NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that `n * LN2_HI` is exact for |n| < 2^8.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding then subtracting 1.5 * 2^23 rounds to the nearest integer with SSE2 alone.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Tolerance;

    type B = burn::backend::Flex;

    #[test]
    fn exp_matches_std_across_the_f32_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let rel = ((exp_f32(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            worst = worst.max(rel);
            x += 0.001_7;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(-1e4) < 1e-37 && exp_f32(-1e4) >= 0.0);
        assert!(exp_f32(1e4).is_finite());
    }

    fn sample(shape: [usize; 3], seed: u64) -> Tensor<B, 3> {
        let n: usize = shape.iter().product();
        let mut state = seed;
        let values: Vec<f32> = (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 24.0
            })
            .collect();
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    #[test]
    fn swiglu_matches_the_tensor_expression() {
        let gate = sample([3, 70, 129], 1);
        let up = sample([3, 70, 129], 2);
        let expected = silu(gate.clone()) * up.clone();
        swiglu(gate, up)
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::relative(1e-5));
    }

    #[test]
    fn rms_norm_rows_matches_the_tensor_expression() {
        let x = sample([1, 300, 97], 3).reshape([300, 97]);
        let weight = sample([1, 1, 97], 4).reshape([97]);
        let eps = 1e-5;
        let inv_rms = (x.clone().square().mean_dim(1) + eps).sqrt().recip();
        let expected = x.clone() * inv_rms * weight.clone().unsqueeze::<2>();
        rms_norm_rows(&x, &weight, eps)
            .expect("flex f32 uses the host kernel")
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::relative(1e-5));
    }

    #[test]
    fn rope_heads_first_matches_the_tensor_expression() {
        let (len, heads, head_dim) = (37, 3, 16);
        let device = Default::default();
        let tables = crate::rope::RopeTables::<B>::new(500000.0, head_dim, heads, 5, len, &device);
        let x = sample([2 * len, heads, head_dim], 6).reshape([2, len, heads, head_dim]);
        let expected = tables.apply(x.clone()).swap_dims(1, 2);
        let fused = tables.apply_heads_first(x);
        assert_eq!(fused.dims(), [2, heads, len, head_dim]);
        fused
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::relative(1e-6));
    }

    #[test]
    fn other_backends_and_dtypes_fall_back() {
        let x = sample([1, 4, 8], 5).reshape([4, 8]).cast(DType::F64);
        let weight = Tensor::<B, 1>::ones([8], &Default::default()).cast(DType::F64);
        assert!(rms_norm_rows(&x, &weight, 1e-5).is_none());
        type A = burn::backend::Autodiff<B>;
        let x = Tensor::<A, 2>::ones([4, 8], &Default::default());
        let w = Tensor::<A, 1>::ones([8], &Default::default());
        assert!(rms_norm_rows(&x, &w, 1e-5).is_none());
    }
}
