//! The 2-D product `y = x w` of a linear layer (docs/algorithm.md §1), written straight into the buffer that
//! becomes the output tensor.
//!
//! Gradients: `dx = dy wᵀ`, `dw = xᵀ dy`, written the same way; checked against autodiff of
//! `matmul` in the tests (with a transposed weight and a frozen one). A bf16 or f16 weight with
//! f32 activations goes through [`matmul_half`](super::matmul_half), panel by panel.

use burn::tensor::{backend::Backend, Tensor};

use super::gemm::{gemm_to_ptr, Strided};
use super::{all_f32, is_half};

#[cfg(feature = "flex")]
use super::flex::op_prelude::*;
#[cfg(feature = "flex")]
use super::flex::{
    flex_tensor, flex_tensor_of, forward_strided, from_ad, from_flex, half_matrix_view, is_flex,
    matrix_view, record, to_ad, to_flex, with_autodiff_flex,
};
#[cfg(feature = "flex")]
use super::matmul_half::matmul_half_host;

/// `x w` for `x` `[rows, k]` and `w` `[k, cols]` (a linear layer's product), in f32.
///
/// On the CPU backend (plain or autodiff) the product — and under autodiff both gradient
/// products — is written straight into a fresh buffer that becomes the output tensor; flex's
/// `matmul` zero-fills a byte buffer and copies it into an aligned one first, two extra passes
/// over every output (docs/performance.md). `x` is f32; `w` is f32, or bf16/f16 read in f32
/// panels (a half-precision model's resident weights). `None` elsewhere.
pub fn matmul_2d<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    let ([rows, k], [k2, cols]) = (x.dims(), w.dims());
    let dtypes_served = all_f32(&[x.dtype()]) && (all_f32(&[w.dtype()]) || is_half(w.dtype()));
    if k != k2 || rows == 0 || cols == 0 || k == 0 || !dtypes_served {
        return None;
    }
    on_flex!({
        let product = |x: FlexTensor, w: FlexTensor| {
            let (x, w) = (forward_strided(x), forward_strided(w));
            let values = if is_half(w.dtype()) {
                matmul_half_host(matrix_view(&x), half_matrix_view(&w))
            } else {
                matmul_host(matrix_view(&x), matrix_view(&w))
            };
            flex_tensor(values, [rows, cols])
        };
        if is_flex::<B>() {
            return Some(from_flex(product(to_flex(x), to_flex(w))));
        }
        with_autodiff_flex!(B, C => {
            let (x, w) = (to_ad::<B, C, 2>(x), to_ad::<B, C, 2>(w));
            let out = product(x.primitive.clone(), w.primitive.clone());
            let out = record::<C, _, _, 2>(Matmul2dBackward, [&x, &w], out, |[x, w]| (x, w));
            from_ad::<B, C, 2>(out)
        })
    })
}

/// Products at least this large (`rows k cols`) use both cores, as flex's own `matmul` does.
const PARALLEL_GEMM: usize = 192 * 192 * 192;

/// `a b` into a new row-major buffer, on all cores when large enough.
fn matmul_host(a: Strided, b: Strided) -> Vec<f32> {
    let ([m, k], [k2, n]) = (a.shape(), b.shape());
    assert_eq!(k, k2, "inner dimensions differ");
    let parallelism = if m * n * k >= PARALLEL_GEMM {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: `Strided::with_strides` keeps every element gemm reads inside its slice; the
    // destination is the vector's capacity, `m x n` row-major, which gemm writes in full without
    // reading it (`read_dst = false`) before the length is set.
    unsafe {
        gemm_to_ptr(out.as_mut_ptr(), n, a, b, 1.0, parallelism);
        out.set_len(m * n);
    }
    out
}

/// Backward of [`matmul_2d`]; state: the two inputs.
#[cfg(feature = "flex")]
#[derive(Debug)]
struct Matmul2dBackward;

#[cfg(feature = "flex")]
impl Backward<Flex, 2> for Matmul2dBackward {
    type State = (NodeId, NodeId);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let (x, w) = ops.state;
        let x = forward_strided(ckpt.retrieve_node_output::<FlexTensor>(x));
        let w = forward_strided(ckpt.retrieve_node_output::<FlexTensor>(w));
        let grad = forward_strided(grads.consume::<Flex>(&ops.node));
        let w_dtype = w.dtype();
        let (x, dy) = (matrix_view(&x), matrix_view(&grad));
        let [x_node, w_node] = ops.parents;
        if let Some(node) = x_node {
            let dx = if is_half(w_dtype) {
                matmul_half_host(dy, half_matrix_view(&w).transposed())
            } else {
                matmul_host(dy, matrix_view(&w).transposed())
            };
            grads.register::<Flex>(node.id, flex_tensor(dx, x.shape()));
        }
        if let Some(node) = w_node {
            // A trained half-precision weight gets its gradient in its own dtype, rounded once.
            let dw = matmul_host(x.transposed(), dy);
            let shape = [x.shape()[1], dy.shape()[1]];
            grads.register::<Flex>(node.id, flex_tensor_of(dw, shape, w_dtype));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{assert_close, random, sample};
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Tolerance;

    type A = Autodiff<Flex>;

    #[test]
    fn matmul_2d_matches_matmul_for_plain_and_transposed_inputs() {
        // Small (one thread) and large (both cores) products.
        for (rows, k, cols) in [(7, 5, 3), (300, 200, 260)] {
            let x = sample([1, rows, k], 15).reshape([rows, k]);
            let w = sample([1, k, cols], 16).reshape([k, cols]);
            let expected = x.clone().matmul(w.clone()).into_data();
            let wt = sample([1, cols, k], 16).reshape([cols, k]).transpose();
            let xt = sample([1, k, rows], 15).reshape([k, rows]).transpose();
            for (a, b) in [(&x, &w), (&xt, &wt)] {
                let want = a.clone().matmul(b.clone()).into_data();
                matmul_2d(a, b)
                    .expect("flex f32 is fused")
                    .into_data()
                    .assert_approx_eq::<f32>(&want, Tolerance::relative(1e-5));
            }
            matmul_2d(&x, &w)
                .unwrap()
                .into_data()
                .assert_approx_eq::<f32>(&expected, Tolerance::relative(1e-5));
        }
        let x = sample([1, 4, 8], 17).reshape([4, 8]);
        assert!(matmul_2d(&x, &x).is_none(), "inner dimensions differ");
        let a = Tensor::<A, 2>::ones([4, 8], &Default::default());
        let b = Tensor::<A, 2>::ones([8, 2], &Default::default());
        assert!(matmul_2d(&a, &b).is_some(), "autodiff flex is fused too");
        type N = burn::backend::NdArray;
        let a = Tensor::<N, 2>::ones([4, 8], &Default::default());
        let b = Tensor::<N, 2>::ones([8, 2], &Default::default());
        assert!(
            matmul_2d(&a, &b).is_none(),
            "other backends keep burn's matmul"
        );
    }

    #[test]
    fn matmul_gradients_match_autodiff() {
        // Large enough for the parallel product; the weight also as a transposed view.
        let (rows, k, cols) = (300, 64, 200);
        let x = random::<Flex, 2>([rows, k], 21);
        let w = random::<Flex, 2>([k, cols], 22);
        let wt = random::<Flex, 2>([cols, k], 23);
        let r = random::<Flex, 2>([rows, cols], 24);
        for transpose in [false, true] {
            let w = if transpose { wt.clone() } else { w.clone() };
            let shape_w = |t: &Tensor<A, 2>| {
                if transpose {
                    t.clone().transpose()
                } else {
                    t.clone()
                }
            };
            // Both inputs ride as one list: x, then w.
            let leaves = |t: &[Tensor<A, 2>]| (t[0].clone(), shape_w(&t[1]));
            let fused = output_and_grads_mixed(&x, &w, &r, |t| {
                let (x, w) = leaves(t);
                matmul_2d(&x, &w).expect("autodiff flex is fused")
            });
            let plain = output_and_grads_mixed(&x, &w, &r, |t| {
                let (x, w) = leaves(t);
                x.matmul(w)
            });
            assert_close(fused.0, plain.0, "output");
            assert_close(fused.1, plain.1, "input gradient");
            assert_close(fused.2, plain.2, "weight gradient");
        }
        // A frozen weight: only the input gets a gradient.
        let xa = Tensor::<A, 2>::from_inner(x).require_grad();
        let wa = Tensor::<A, 2>::from_inner(random([k, cols], 25));
        let grads = matmul_2d(&xa, &wa).expect("fused").sum().backward();
        assert!(xa.grad(&grads).is_some());
        assert!(wa.grad(&grads).is_none());
    }

    /// [`output_and_grads`](crate::kernels::testing::output_and_grads) for two inputs of
    /// different shapes.
    fn output_and_grads_mixed(
        x: &Tensor<Flex, 2>,
        w: &Tensor<Flex, 2>,
        r: &Tensor<Flex, 2>,
        op: impl Fn(&[Tensor<A, 2>]) -> Tensor<A, 2>,
    ) -> (Tensor<Flex, 2>, Tensor<Flex, 2>, Tensor<Flex, 2>) {
        let leaves = [
            Tensor::<A, 2>::from_inner(x.clone()).require_grad(),
            Tensor::<A, 2>::from_inner(w.clone()).require_grad(),
        ];
        let out = op(&leaves);
        let grads = (out.clone() * Tensor::from_inner(r.clone()))
            .sum()
            .backward();
        (
            out.inner(),
            leaves[0].grad(&grads).expect("input gradient"),
            leaves[1].grad(&grads).expect("weight gradient"),
        )
    }
}
