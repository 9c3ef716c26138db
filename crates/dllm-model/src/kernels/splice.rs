//! The KV-cache splice (docs/algorithm.md §2): cached keys or values with a run of positions replaced by
//! freshly computed ones, copied row by row through both tensors' strides. The cache is read
//! outside autodiff, so there is no backward pass.

use burn::tensor::{backend::Backend, Tensor};

use super::all_f32;
use super::gemm::HeadsView;

#[cfg(feature = "flex")]
use super::flex::{flex_tensor, forward_strided, from_flex, heads_view, is_flex, to_flex};

/// `cached` `[batch, heads, total, head_dim]` with positions `[start, start + span)` replaced
/// by `fresh` `[batch, heads, span, head_dim]` (a KV-cache read, docs/algorithm.md §2).
///
/// On the CPU backend one copy per row reads both tensors through their strides (`v` arrives
/// transposed); `None` elsewhere, and the caller concatenates slices.
pub fn splice_positions<B: Backend>(
    cached: &Tensor<B, 4>,
    fresh: &Tensor<B, 4>,
    start: usize,
) -> Option<Tensor<B, 4>> {
    let ([b, h, total, hd], [fb, fh, span, fd]) = (cached.dims(), fresh.dims());
    if (b, h, hd) != (fb, fh, fd)
        || start + span > total
        || !all_f32(&[cached.dtype(), fresh.dtype()])
    {
        return None;
    }
    on_flex!({
        if !is_flex::<B>() {
            return None;
        }
        let shape = cached.dims();
        let (cached, fresh) = (
            forward_strided(to_flex(cached)),
            forward_strided(to_flex(fresh)),
        );
        let out = splice_host(heads_view(&cached), heads_view(&fresh), start);
        Some(from_flex(flex_tensor(out, shape)))
    })
}

/// [`splice_positions`] on host views: `[batch, heads, total, head_dim]`, row-major.
fn splice_host(cached: HeadsView, fresh: HeadsView, start: usize) -> Vec<f32> {
    let [batch, heads, total, head_dim] = cached.dims();
    let span = fresh.dims()[2];
    let mut out = Vec::with_capacity(batch * heads * total * head_dim);
    for b in 0..batch {
        for h in 0..heads {
            let (c, f) = (cached.matrix(b, h), fresh.matrix(b, h));
            for r in 0..total {
                if (start..start + span).contains(&r) {
                    f.push_row(r - start, &mut out);
                } else {
                    c.push_row(r, &mut out);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::sample;
    use burn::tensor::Tolerance;

    #[test]
    fn splice_positions_equals_slicing_and_concatenating() {
        let (batch, heads, total, head_dim) = (2, 3, 13, 8);
        let cached =
            sample([batch * heads, total, head_dim], 10).reshape([batch, heads, total, head_dim]);
        for (start, span) in [(0, 4), (5, 3), (9, 4), (0, 13)] {
            // As the attention layer produces it: `[batch, span, heads, head_dim]` moved
            // heads-first, so the kernel reads a transposed view.
            let fresh = sample([batch * span, heads, head_dim], 11 + start as u64)
                .reshape([batch, span, heads, head_dim])
                .swap_dims(1, 2);
            let mut parts = Vec::new();
            if start > 0 {
                parts.push(cached.clone().narrow(2, 0, start));
            }
            parts.push(fresh.clone());
            if start + span < total {
                parts.push(cached.clone().narrow(2, start + span, total - start - span));
            }
            let expected = Tensor::cat(parts, 2);
            let got = splice_positions(&cached, &fresh, start).expect("flex f32 is fused");
            assert_eq!(got.dims(), [batch, heads, total, head_dim]);
            got.into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(0.0));
        }
        let too_long =
            sample([batch * heads, 4, head_dim], 12).reshape([batch, heads, 4, head_dim]);
        assert!(splice_positions(&cached, &too_long, 10).is_none());
    }
}
