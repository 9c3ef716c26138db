//! Fused, row-parallel CPU kernels for the parts of a block between the projections (spec §1):
//! RMSNorm, the SwiGLU product `silu(gate) * up`, RoPE written heads-first, and attention.
//!
//! burn's CPU backend (flex) runs elementwise ops on one thread, one op per pass over memory:
//! `silu(g) * u` is four passes and a scalar `expf` per element, RMSNorm six. Profiled on the
//! bench model, these serial passes held the second core idle for about a quarter of a forward
//! (docs/performance.md). On flex with f32 tensors outside autodiff (sampling, evaluation, the
//! no-grad ELBO pass) these functions read the tensors out, compute each row in one pass on all
//! cores, and hand the result back; everywhere else they return `None` and the caller runs its
//! plain tensor expression, so GPU backends keep their own kernels and autodiff records the
//! usual graph.

use burn::tensor::{backend::Backend, Bool, DType, Tensor, TensorData};
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
///
/// Returns `None` where the host kernel does not apply; the caller then uses tensor ops.
pub fn swiglu<B: Backend>(gate: &Tensor<B, 3>, up: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    if !uses_host_kernels(gate) || up.dtype() != DType::F32 || gate.dims() != up.dims() {
        return None;
    }
    let (shape, device) = (gate.shape(), gate.device());
    let mut out = host_values(gate.clone());
    let up = host_values(up.clone());
    out.par_chunks_mut(CHUNK)
        .zip(up.par_chunks(CHUNK))
        .for_each(|(g, u)| {
            for (g, &u) in g.iter_mut().zip(u) {
                *g = *g / (1.0 + exp_f32(-*g)) * u;
            }
        });
    Some(Tensor::from_data(TensorData::new(out, shape), &device))
}

/// `weight * x / sqrt(mean(x^2) + eps)` over the last dimension of `x` `[rows, d]`.
///
/// Returns `None` where the host kernel does not apply; the caller then uses tensor ops.
pub fn rms_norm_rows<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Option<Tensor<B, 2>> {
    if !uses_host_kernels(x) || weight.dtype() != DType::F32 {
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

/// Bidirectional attention `softmax(q k^T / sqrt(head_dim)) v` for `q` `[batch, heads, len,
/// head_dim]` and `k`, `v` `[batch, heads, keys, head_dim]` (key/value heads already repeated),
/// with `key_padding` `[batch, keys]` (true = hidden), returned as `[batch, len, heads *
/// head_dim]`, the layout the output projection reads.
///
/// Each (batch, head) pair is one task: two single-threaded `gemm` calls around a softmax over
/// rows held in cache, writing its `head_dim` columns of the output in place. Returns `None`
/// where the host kernel does not apply; the caller then uses tensor ops.
pub fn attention_rows<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    key_padding: Option<&Tensor<B, 2, Bool>>,
) -> Option<Tensor<B, 3>> {
    let [batch, heads, len, head_dim] = q.dims();
    let keys = k.dims()[2];
    if !uses_host_kernels(q)
        || k.dtype() != DType::F32
        || v.dtype() != DType::F32
        || k.dims() != [batch, heads, keys, head_dim]
        || v.dims() != k.dims()
        || key_padding.is_some_and(|m| m.dims() != [batch, keys])
        || len == 0
        || keys == 0
        || head_dim == 0
    {
        return None;
    }
    let device = q.device();
    let (q, k, v) = (
        host_values(q.clone()),
        host_values(k.clone()),
        host_values(v.clone()),
    );
    let hidden = key_padding.map(|m| {
        m.clone()
            .into_data()
            .into_vec::<bool>()
            .expect("a bool tensor reads as bool")
    });
    let width = heads * head_dim;
    let mut out = vec![0.0f32; batch * len * width];
    let out_ptr = SharedOut(out.as_mut_ptr());
    let scale = (head_dim as f32).powf(-0.5);
    (0..batch * heads).into_par_iter().for_each(|task| {
        let (b, h) = (task / heads, task % heads);
        let q = &q[task * len * head_dim..][..len * head_dim];
        let k = &k[task * keys * head_dim..][..keys * head_dim];
        let v = &v[task * keys * head_dim..][..keys * head_dim];
        let mut scores = vec![0.0f32; len * keys];
        // SAFETY: every slice above has the lengths passed to gemm with the strides given
        // (row-major, `head_dim` or `keys` apart); `scores` is `len x keys`, row-major.
        unsafe {
            gemm::gemm(
                len,
                keys,
                head_dim,
                scores.as_mut_ptr(),
                1,
                keys as isize,
                false,
                q.as_ptr(),
                1,
                head_dim as isize,
                k.as_ptr(),
                head_dim as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        let hidden = hidden.as_ref().map(|m| &m[b * keys..(b + 1) * keys]);
        for row in scores.chunks_mut(keys) {
            if let Some(hidden) = hidden {
                for (x, &off) in row.iter_mut().zip(hidden) {
                    if off {
                        *x = f32::NEG_INFINITY;
                    }
                }
            }
            softmax_in_place(row);
        }
        // Output rows of this task: `len` rows `width` apart, columns `h * head_dim ..`.
        // SAFETY: the tasks write disjoint column ranges of `out`, which outlives the loop;
        // rows `0..len` of `width` floats from `b * len * width` stay inside `out`.
        unsafe {
            let dst = out_ptr.get().add(b * len * width + h * head_dim);
            gemm::gemm(
                len,
                head_dim,
                keys,
                dst,
                1,
                width as isize,
                false,
                scores.as_ptr(),
                1,
                keys as isize,
                v.as_ptr(),
                1,
                head_dim as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
    Some(Tensor::from_data(
        TensorData::new(out, [batch, len, width]),
        &device,
    ))
}

/// The output buffer of [`attention_rows`], written by every task at disjoint places.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: the tasks of `attention_rows` write disjoint elements and the buffer outlives them.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer (a method, so closures capture the `Sync` wrapper, not the raw field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `row <- softmax(row)`: a row of `-inf` gives NaN, as the tensor expression does.
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for x in row.iter_mut() {
        *x = exp_f32(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
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
        let expected = burn::tensor::activation::silu(gate.clone()) * up.clone();
        swiglu(&gate, &up)
            .expect("flex f32 uses the host kernel")
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
    fn attention_rows_matches_the_tensor_expression() {
        let (batch, heads, len, keys, head_dim) = (2, 3, 11, 29, 8);
        let device = Default::default();
        let q = sample([batch * heads, len, head_dim], 7).reshape([batch, heads, len, head_dim]);
        let k = sample([batch * heads, keys, head_dim], 8).reshape([batch, heads, keys, head_dim]);
        let v = sample([batch * heads, keys, head_dim], 9).reshape([batch, heads, keys, head_dim]);
        let padding: Vec<bool> = (0..batch * keys)
            .map(|i| i % keys < 4 * (i / keys))
            .collect();
        let padding =
            Tensor::<B, 2, Bool>::from_data(TensorData::new(padding, [batch, keys]), &device);
        let scores = q
            .clone()
            .matmul(k.clone().swap_dims(2, 3))
            .mul_scalar((head_dim as f64).powf(-0.5));
        let mask = padding
            .clone()
            .reshape([batch, 1, 1, keys])
            .expand([batch, heads, len, keys]);
        let expected =
            burn::tensor::activation::softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3)
                .matmul(v.clone())
                .swap_dims(1, 2)
                .reshape([batch, len, heads * head_dim]);
        attention_rows(&q, &k, &v, Some(&padding))
            .expect("flex f32 uses the host kernel")
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::relative(1e-4));
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
