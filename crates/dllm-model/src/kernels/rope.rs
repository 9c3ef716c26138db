//! Rotary position embedding in the rotate-half convention, written heads-first (docs/algorithm.md §1):
//! `y_j = x_j c_j + x_p(j) s_j`, where `p` swaps the halves of a head and `s` is the signed sine.
//!
//! Gradient (a linear map; checked against autodiff of the tensor expression in the tests):
//! `dx_i = dy_i c_i + dy_p(i) s_p(i)`.

use burn::tensor::{backend::Backend, Tensor};
use rayon::prelude::*;

use super::all_f32;

#[cfg(feature = "flex")]
use super::flex::op_prelude::*;
#[cfg(feature = "flex")]
use super::flex::{
    flex_tensor, from_ad, from_flex, is_flex, read, to_ad, to_flex, with_autodiff_flex,
};

/// Rotary embedding of `x` `[batch, len, heads, head_dim]` in the rotate-half convention,
/// written as `[batch, heads, len, head_dim]`: `out = x * cos + swap_halves(x) * signed_sin` with
/// the tables laid out `[len * heads * head_dim]` (see `RopeTables`).
///
/// On flex (plain or autodiff) one parallel pass; returns `None` where no kernel applies, and
/// the caller then uses tensor ops.
pub fn rope_heads_first<B: Backend>(
    x: &Tensor<B, 4>,
    cos: &[f32],
    signed_sin: &[f32],
) -> Option<Tensor<B, 4>> {
    let [_, len, heads, head_dim] = x.dims();
    if head_dim % 2 != 0
        || cos.len() != len * heads * head_dim
        || signed_sin.len() != len * heads * head_dim
        || !all_f32(&[x.dtype()])
    {
        return None;
    }
    on_flex!({
        let dims = x.dims();
        let [batch, len, heads, head_dim] = dims;
        let out_shape = [batch, heads, len, head_dim];
        if is_flex::<B>() {
            let out = rope_host(&read(&to_flex(x)), dims, cos, signed_sin);
            return Some(from_flex(flex_tensor(out, out_shape)));
        }
        with_autodiff_flex!(B, C => {
            let x = to_ad::<B, C, 4>(x);
            let out = flex_tensor(rope_host(&read(&x.primitive), dims, cos, signed_sin), out_shape);
            let out = match RopeBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    let tables = Arc::new((cos.to_vec(), signed_sin.to_vec()));
                    prep.finish((tables, dims), out)
                }
                OpsKind::UnTracked(prep) => prep.finish(out),
            };
            from_ad::<B, C, 4>(out)
        })
    })
}

/// [`rope_heads_first`] on host slices; `dims` is the input's `[batch, len, heads, head_dim]`.
fn rope_host(x: &[f32], dims: [usize; 4], cos: &[f32], signed_sin: &[f32]) -> Vec<f32> {
    let [_, len, heads, head_dim] = dims;
    let (row, half) = (heads * head_dim, head_dim / 2);
    let mut out = vec![0.0f32; x.len()];
    // One task per (batch, head): `len` output rows of `head_dim`, contiguous.
    out.par_chunks_mut((len * head_dim).max(1))
        .enumerate()
        .for_each(|(task, dst)| {
            let (b, h) = (task / heads, task % heads);
            for (t, dst) in dst.chunks_mut(head_dim).enumerate() {
                let at = t * row + h * head_dim;
                let x = &x[b * len * row + at..][..head_dim];
                let (c, s) = (&cos[at..at + head_dim], &signed_sin[at..at + head_dim]);
                for j in 0..head_dim {
                    let swapped = if j < half { x[j + half] } else { x[j - half] };
                    dst[j] = x[j] * c[j] + swapped * s[j];
                }
            }
        });
    out
}

/// Backward of [`rope_heads_first`] (a linear map: only the tables are kept).
#[cfg(feature = "flex")]
#[derive(Debug)]
struct RopeBackward;

/// The cosine and signed-sine tables of one RoPE call.
#[cfg(feature = "flex")]
type RopeTablesHost = Arc<(Vec<f32>, Vec<f32>)>;

#[cfg(feature = "flex")]
impl Backward<Flex, 1> for RopeBackward {
    type State = (RopeTablesHost, [usize; 4]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (tables, dims) = ops.state;
        let grad = grads.consume::<Flex>(&ops.node);
        let [x_node] = ops.parents;
        if let Some(node) = x_node {
            let dx = rope_backward_host(&read(&grad), dims, &tables.0, &tables.1);
            grads.register::<Flex>(node.id, flex_tensor(dx, dims));
        }
    }
}

/// The gradient `[batch, len, heads, head_dim]` of RoPE given the heads-first output gradient;
/// `dims` is the input's shape.
fn rope_backward_host(grad: &[f32], dims: [usize; 4], cos: &[f32], signed_sin: &[f32]) -> Vec<f32> {
    let [_, len, heads, head_dim] = dims;
    let (row, half) = (heads * head_dim, head_dim / 2);
    let mut dx = vec![0.0f32; grad.len()];
    // One task per (batch, position): a row of `heads * head_dim` input gradients.
    dx.par_chunks_mut(row.max(1))
        .enumerate()
        .for_each(|(task, dst)| {
            let (b, t) = (task / len, task % len);
            for h in 0..heads {
                let g = &grad[((b * heads + h) * len + t) * head_dim..][..head_dim];
                let at = t * row + h * head_dim;
                let (c, s) = (&cos[at..at + head_dim], &signed_sin[at..at + head_dim]);
                let dst = &mut dst[h * head_dim..(h + 1) * head_dim];
                for i in 0..head_dim {
                    let p = if i < half { i + half } else { i - half };
                    dst[i] = g[i] * c[i] + g[p] * s[p];
                }
            }
        });
    dx
}

#[cfg(test)]
mod tests {
    use crate::kernels::testing::{assert_close, output_and_grads, random, sample};
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Tolerance;

    type A = Autodiff<Flex>;
    type B = Flex;

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
    fn rope_gradients_match_autodiff() {
        let (len, heads, head_dim) = (13, 3, 8);
        let tables = crate::rope::RopeTables::<A>::new(
            10000.0,
            head_dim,
            heads,
            3,
            len,
            &Default::default(),
        );
        let x = random::<Flex, 4>([2, len, heads, head_dim], 9);
        let r = random::<Flex, 4>([2, heads, len, head_dim], 10);
        let fused = output_and_grads::<A, 4, 4>(std::slice::from_ref(&x), &r, |t| {
            tables.apply_heads_first(t[0].clone())
        });
        let plain =
            output_and_grads::<A, 4, 4>(&[x], &r, |t| tables.apply(t[0].clone()).swap_dims(1, 2));
        assert_close(fused.0, plain.0, "output");
        assert_close(fused.1[0].clone(), plain.1[0].clone(), "gradient");
    }
}
