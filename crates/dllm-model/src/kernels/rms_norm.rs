//! RMSNorm over rows, `y = w x r` with `r = (mean(x²) + eps)^-½` (docs/algorithm.md §1).
//!
//! Gradients (derived from the forward formula; checked against autodiff of the tensor
//! expression in the tests): `dw = Σ_rows dy x r`, `dx = r (dy w - x r · r mean(dy w x))`.

use burn::tensor::{backend::Backend, Tensor};
use rayon::prelude::*;

use super::simd::inverse_rms;
use super::{all_f32, CHUNK};

#[cfg(feature = "flex")]
use super::flex::op_prelude::*;
#[cfg(feature = "flex")]
use super::flex::{
    flex_tensor, from_ad, from_flex, is_flex, read, record, to_ad, to_flex, with_autodiff_flex,
};

/// `weight * x / sqrt(mean(x^2) + eps)` over the last dimension of `x` `[rows, d]`.
///
/// On flex (plain or autodiff) one parallel pass; returns `None` where no kernel applies, and
/// the caller then uses tensor ops.
pub fn rms_norm_rows<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Option<Tensor<B, 2>> {
    let [_, d] = x.dims();
    if d == 0 || weight.dims() != [d] || !all_f32(&[x.dtype(), weight.dtype()]) {
        return None;
    }
    on_flex!({
        let shape = x.dims();
        let eps = eps as f32;
        if is_flex::<B>() {
            let out = rms_norm_host(&read(&to_flex(x)), &read(&to_flex(weight)), eps);
            return Some(from_flex(flex_tensor(out, shape)));
        }
        with_autodiff_flex!(B, C => {
            let (x, weight) = (to_ad::<B, C, 2>(x), to_ad::<B, C, 1>(weight));
            let out = rms_norm_host(&read(&x.primitive), &read(&weight.primitive), eps);
            let out = flex_tensor(out, shape);
            let out = record::<C, _, _, 2>(RmsNormBackward, [&x, &weight], out, |[x, w]| (x, w, shape, eps));
            from_ad::<B, C, 2>(out)
        })
    })
}

/// [`rms_norm_rows`] on host slices: `x` holds rows of `weight.len()` values.
fn rms_norm_host(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let d = weight.len();
    let mut out = x.to_vec();
    let rows_per_task = (CHUNK / d).max(1);
    out.par_chunks_mut(rows_per_task * d).for_each(|block| {
        for row in block.chunks_mut(d) {
            let inv_rms = inverse_rms(row, eps);
            for (v, &w) in row.iter_mut().zip(weight) {
                *v = *v * inv_rms * w;
            }
        }
    });
    out
}

/// Backward of [`rms_norm_rows`]; state: input, weight, input shape, eps.
#[cfg(feature = "flex")]
#[derive(Debug)]
struct RmsNormBackward;

#[cfg(feature = "flex")]
impl Backward<Flex, 2> for RmsNormBackward {
    type State = (NodeId, NodeId, [usize; 2], f32);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let (x, weight, shape, eps) = ops.state;
        let x: FlexTensor = ckpt.retrieve_node_output(x);
        let weight: FlexTensor = ckpt.retrieve_node_output(weight);
        let grad = grads.consume::<Flex>(&ops.node);
        let [x_node, weight_node] = ops.parents;
        let (dx, dw) = rms_norm_backward_host(
            &read(&x),
            &read(&weight),
            &read(&grad),
            eps,
            weight_node.is_some(),
        );
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, flex_tensor(dx, shape));
        }
        if let (Some(node), Some(dw)) = (weight_node, dw) {
            grads.register::<Flex>(node.id, flex_tensor(dw, [shape[1]]));
        }
    }
}

/// `(dx, dw)` of RMSNorm given the output gradient; `dw` only when `want_weight`.
fn rms_norm_backward_host(
    x: &[f32],
    weight: &[f32],
    grad: &[f32],
    eps: f32,
    want_weight: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let d = weight.len();
    let task = (CHUNK / d).max(1) * d;
    let mut dx = vec![0.0f32; x.len()];
    // One partial weight gradient per task, summed below in task order (deterministic).
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(task)
        .zip(x.par_chunks(task).zip(grad.par_chunks(task)))
        .map(|(dx, (x, dy))| {
            let mut dw = vec![0.0f32; if want_weight { d } else { 0 }];
            for ((dx, x), dy) in dx.chunks_mut(d).zip(x.chunks(d)).zip(dy.chunks(d)) {
                let r = inverse_rms(x, eps);
                let mut dot = 0.0f32;
                for j in 0..d {
                    dot += dy[j] * weight[j] * x[j];
                }
                let dot = dot * r / d as f32;
                for j in 0..d {
                    let normed = x[j] * r;
                    dx[j] = r * (dy[j] * weight[j] - normed * dot);
                }
                for (j, dw) in dw.iter_mut().enumerate() {
                    *dw += dy[j] * x[j] * r;
                }
            }
            dw
        })
        .collect();
    let dw = want_weight.then(|| {
        let mut total = vec![0.0f32; d];
        for part in &partials {
            for (t, p) in total.iter_mut().zip(part) {
                *t += p;
            }
        }
        total
    });
    (dx, dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{assert_close, output_and_grads, random, sample};
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{DType, Tolerance};

    type A = Autodiff<Flex>;

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
    fn rms_norm_gradients_match_autodiff() {
        let (rows, d) = (45, 24);
        let x = random::<Flex, 2>([rows, d], 4);
        let w = random::<Flex, 2>([1, d], 5);
        let r = random::<Flex, 2>([rows, d], 6);
        let eps = 1e-5;
        // The weight rides as a [1, d] input so both inputs share one rank.
        let fused = output_and_grads::<A, 2, 2>(&[x.clone(), w.clone()], &r, |t| {
            rms_norm_rows(&t[0], &t[1].clone().reshape([d]), eps).expect("fused")
        });
        let plain = output_and_grads::<A, 2, 2>(&[x, w], &r, |t| {
            let inv = (t[0].clone().square().mean_dim(1) + eps).sqrt().recip();
            t[0].clone() * inv * t[1].clone()
        });
        assert_close(fused.0, plain.0, "output");
        for (i, (f, p)) in fused.1.into_iter().zip(plain.1).enumerate() {
            assert_close(f, p, &format!("gradient {i}"));
        }
    }

    #[test]
    fn rms_norm_with_a_frozen_weight_gives_the_input_gradient() {
        let x = Tensor::<A, 2>::from_inner(random([7, 16], 7)).require_grad();
        let w = Tensor::<A, 1>::from_inner(random::<Flex, 2>([1, 16], 8).reshape([16]));
        let out = rms_norm_rows(&x, &w, 1e-5).expect("fused");
        let grads = out.sum().backward();
        assert!(x.grad(&grads).is_some());
        assert!(w.grad(&grads).is_none());
    }

    #[test]
    fn other_dtypes_fall_back_and_autodiff_flex_is_fused() {
        let x = sample([1, 4, 8], 5).reshape([4, 8]).cast(DType::F64);
        let weight = Tensor::<Flex, 1>::ones([8], &Default::default()).cast(DType::F64);
        assert!(rms_norm_rows(&x, &weight, 1e-5).is_none());
        let x = Tensor::<A, 2>::ones([4, 8], &Default::default());
        let w = Tensor::<A, 1>::ones([8], &Default::default());
        assert!(rms_norm_rows(&x, &w, 1e-5).is_some());
    }

    #[test]
    fn ndarray_falls_back() {
        type N = burn::backend::NdArray;
        let x = Tensor::<N, 2>::ones([4, 8], &Default::default());
        let w = Tensor::<N, 1>::ones([8], &Default::default());
        assert!(rms_norm_rows(&x, &w, 1e-5).is_none());
    }
}
