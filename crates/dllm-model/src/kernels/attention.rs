//! Bidirectional attention `O = P V`, `P = softmax(scale Q Kᵀ)` with `scale = 1 / sqrt(head_dim)`
//! and an optional key-padding mask (docs/algorithm.md §1), one task per (batch, head).
//!
//! Gradients (`P` recomputed in the backward pass, not stored; checked against autodiff of the
//! tensor expression in the tests): `dV = Pᵀ dO`, `dP = dO Vᵀ`,
//! `dS = P ⊙ (dP - rowsum(P ⊙ dP))`, `dQ = scale dS K`, `dK = scale dSᵀ Q`.

use burn::tensor::{backend::Backend, Bool, Tensor};
use rayon::prelude::*;

use super::all_f32;
use super::gemm::{gemm_into, gemm_to_ptr, HeadsView, SharedOut, Strided};
use super::simd::{dot, softmax_in_place};

#[cfg(feature = "flex")]
use super::flex::op_prelude::*;
#[cfg(feature = "flex")]
use super::flex::{
    flex_tensor, forward_strided, from_ad, from_flex, heads_view, is_flex, read, record,
    runs_on_flex, to_ad, to_flex, with_autodiff_flex,
};

/// Sizes of one attention call: `[batch, heads, len, head_dim]` queries against `keys` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AttentionDims {
    /// Sequences.
    batch: usize,
    /// Heads (key/value heads already repeated).
    heads: usize,
    /// Query positions.
    len: usize,
    /// Key positions.
    keys: usize,
    /// Channels per head.
    head_dim: usize,
}

impl AttentionDims {
    /// The sizes of `q` `[batch, heads, len, head_dim]` against `k`, `v` `[batch, heads, keys,
    /// head_dim]` with an optional `[batch, keys]` padding mask, if they agree and none is empty.
    fn of(
        q: [usize; 4],
        k: [usize; 4],
        v: [usize; 4],
        padding: Option<[usize; 2]>,
    ) -> Option<Self> {
        let [batch, heads, len, head_dim] = q;
        let keys = k[2];
        let ok = k == [batch, heads, keys, head_dim]
            && v == k
            && padding.is_none_or(|p| p == [batch, keys])
            && len > 0
            && keys > 0
            && head_dim > 0;
        ok.then_some(Self {
            batch,
            heads,
            len,
            keys,
            head_dim,
        })
    }

    /// `1 / sqrt(head_dim)`.
    fn scale(&self) -> f32 {
        (self.head_dim as f32).powf(-0.5)
    }
}

/// Bidirectional attention `softmax(q k^T / sqrt(head_dim)) v` for `q` `[batch, heads, len,
/// head_dim]` and `k`, `v` `[batch, heads, keys, head_dim]` (key/value heads already repeated),
/// with `key_padding` `[batch, keys]` (true = hidden), returned as `[batch, len, heads *
/// head_dim]`, the layout the output projection reads.
///
/// Each (batch, head) pair is one task: two single-threaded `gemm` calls around a softmax over
/// rows held in cache, writing its `head_dim` columns of the output in place. On flex (plain or
/// autodiff); returns `None` where no kernel applies, and the caller then uses tensor ops.
pub fn attention_rows<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    key_padding: Option<&Tensor<B, 2, Bool>>,
) -> Option<Tensor<B, 3>> {
    let dims = AttentionDims::of(q.dims(), k.dims(), v.dims(), key_padding.map(|m| m.dims()))?;
    if !all_f32(&[q.dtype(), k.dtype(), v.dtype()]) {
        return None;
    }
    on_flex!({
        if !runs_on_flex::<B>() {
            return None;
        }
        let out_shape = [dims.batch, dims.len, dims.heads * dims.head_dim];
        let hidden = key_padding.map(host_mask);
        if is_flex::<B>() {
            let [q, k, v] = [q, k, v].map(|t| forward_strided(to_flex(t)));
            let out = attention_host(
                heads_view(&q),
                heads_view(&k),
                heads_view(&v),
                hidden.as_deref(),
                dims,
            );
            return Some(from_flex(flex_tensor(out, out_shape)));
        }
        with_autodiff_flex!(B, C => {
            let (q, k, v) = (to_ad::<B, C, 4>(q), to_ad::<B, C, 4>(k), to_ad::<B, C, 4>(v));
            let [qp, kp, vp] = [&q, &k, &v].map(|t| forward_strided(t.primitive.clone()));
            let out = attention_host(
                heads_view(&qp),
                heads_view(&kp),
                heads_view(&vp),
                hidden.as_deref(),
                dims,
            );
            let out = flex_tensor(out, out_shape);
            let out = record::<C, _, _, 3>(AttentionBackward, [&q, &k, &v], out, |inputs| {
                (inputs, hidden.map(Arc::new), dims)
            });
            from_ad::<B, C, 3>(out)
        })
    })
}

/// A bool tensor's values in row-major order.
fn host_mask<B: Backend, const D: usize>(m: &Tensor<B, D, Bool>) -> Vec<bool> {
    m.clone()
        .into_data()
        .into_vec::<bool>()
        .expect("a bool tensor reads as bool")
}

/// `scores <- softmax(scale * q k^T)` for one (batch, head) pair: `q` `[len, head_dim]`, `k`
/// `[keys, head_dim]`, `hidden` the keys to leave out.
fn attention_probs(
    scores: &mut [f32],
    q: Strided,
    k: Strided,
    hidden: Option<&[bool]>,
    dims: AttentionDims,
) {
    let keys = dims.keys;
    gemm_into(scores, keys, q, k.transposed(), dims.scale());
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
}

/// [`attention_rows`] on host views (`q`, `k`, `v` heads-first, `hidden` `[batch, keys]`).
fn attention_host(
    q: HeadsView,
    k: HeadsView,
    v: HeadsView,
    hidden: Option<&[bool]>,
    dims: AttentionDims,
) -> Vec<f32> {
    let AttentionDims {
        batch,
        heads,
        len,
        keys,
        head_dim,
    } = dims;
    let width = heads * head_dim;
    let mut out = vec![0.0f32; batch * len * width];
    let out_ptr = SharedOut(out.as_mut_ptr());
    (0..batch * heads).into_par_iter().for_each(|task| {
        let (b, h) = (task / heads, task % heads);
        let mut scores = vec![0.0f32; len * keys];
        let hidden = hidden.map(|m| &m[b * keys..(b + 1) * keys]);
        attention_probs(&mut scores, q.matrix(b, h), k.matrix(b, h), hidden, dims);
        let v = v.matrix(b, h);
        // Output rows of this task: `len` rows `width` apart, columns `h * head_dim ..`.
        // SAFETY: the tasks write disjoint column ranges of `out`, which outlives the loop;
        // rows `0..len` of `width` floats from `b * len * width` stay inside `out`; `scores`
        // is `len x keys` row-major and `v` a checked `keys x head_dim` view.
        unsafe {
            let dst = out_ptr.get().add(b * len * width + h * head_dim);
            gemm_to_ptr(
                dst,
                width,
                Strided::rows(&scores, len, keys),
                v,
                1.0,
                gemm::Parallelism::None,
            );
        }
    });
    out
}

/// Backward of [`attention_rows`]; state: `q`, `k`, `v`, the key padding and the sizes.
#[cfg(feature = "flex")]
#[derive(Debug)]
struct AttentionBackward;

#[cfg(feature = "flex")]
impl Backward<Flex, 3> for AttentionBackward {
    type State = ([NodeId; 3], Option<Arc<Vec<bool>>>, AttentionDims);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let ([q, k, v], hidden, dims) = ops.state;
        let q: FlexTensor = ckpt.retrieve_node_output(q);
        let k: FlexTensor = ckpt.retrieve_node_output(k);
        let v: FlexTensor = ckpt.retrieve_node_output(v);
        let grad = grads.consume::<Flex>(&ops.node);
        let [q, k, v] = [q, k, v].map(forward_strided);
        let [dq, dk, dv] = attention_backward_host(
            heads_view(&q),
            heads_view(&k),
            heads_view(&v),
            hidden.as_deref().map(Vec::as_slice),
            &read(&grad),
            dims,
        );
        let AttentionDims {
            batch,
            heads,
            len,
            keys,
            head_dim,
        } = dims;
        let [q_node, k_node, v_node] = ops.parents;
        if let Some(node) = q_node {
            grads.register::<Flex>(node.id, flex_tensor(dq, [batch, heads, len, head_dim]));
        }
        if let Some(node) = k_node {
            grads.register::<Flex>(node.id, flex_tensor(dk, [batch, heads, keys, head_dim]));
        }
        if let Some(node) = v_node {
            grads.register::<Flex>(node.id, flex_tensor(dv, [batch, heads, keys, head_dim]));
        }
    }
}

/// `[dq, dk, dv]` (heads-first) of attention given the output gradient `[batch, len, heads *
/// head_dim]`. One task per (batch, head); the probabilities are recomputed.
fn attention_backward_host(
    q: HeadsView,
    k: HeadsView,
    v: HeadsView,
    hidden: Option<&[bool]>,
    grad: &[f32],
    dims: AttentionDims,
) -> [Vec<f32>; 3] {
    let AttentionDims {
        heads,
        len,
        keys,
        head_dim,
        batch,
    } = dims;
    let width = heads * head_dim;
    let mut dq = vec![0.0f32; batch * heads * len * head_dim];
    let mut dk = vec![0.0f32; batch * heads * keys * head_dim];
    let mut dv = vec![0.0f32; batch * heads * keys * head_dim];
    dq.par_chunks_mut(len * head_dim)
        .zip(dk.par_chunks_mut(keys * head_dim))
        .zip(dv.par_chunks_mut(keys * head_dim))
        .enumerate()
        .for_each(|(task, ((dq, dk), dv))| {
            let (b, h) = (task / heads, task % heads);
            let (q, k, v) = (q.matrix(b, h), k.matrix(b, h), v.matrix(b, h));
            let hidden = hidden.map(|m| &m[b * keys..(b + 1) * keys]);
            let mut probs = vec![0.0f32; len * keys];
            attention_probs(&mut probs, q, k, hidden, dims);
            let d_out = Strided::with_strides(
                &grad[b * len * width + h * head_dim..],
                len,
                head_dim,
                width,
                1,
            );
            let probs_view = Strided::rows(&probs, len, keys);
            // dV = Pᵀ dO
            gemm_into(dv, head_dim, probs_view.transposed(), d_out, 1.0);
            // dP = dO Vᵀ, then dS = P ⊙ (dP - rowsum(P ⊙ dP)) · scale, in place.
            let mut d_scores = vec![0.0f32; len * keys];
            gemm_into(&mut d_scores, keys, d_out, v.transposed(), 1.0);
            let scale = dims.scale();
            for (ds, p) in d_scores.chunks_mut(keys).zip(probs.chunks(keys)) {
                let dot = dot(ds, p);
                for (d, &p) in ds.iter_mut().zip(p) {
                    *d = p * (*d - dot) * scale;
                }
            }
            let ds_view = Strided::rows(&d_scores, len, keys);
            // dQ = dS K, dK = dSᵀ Q
            gemm_into(dq, head_dim, ds_view, k, 1.0);
            gemm_into(dk, head_dim, ds_view.transposed(), q, 1.0);
        });
    [dq, dk, dv]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{assert_close, output_and_grads, random, sample};
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::activation::softmax;
    use burn::tensor::{TensorData, Tolerance};

    type A = Autodiff<Flex>;
    type Balanced = Autodiff<Flex, BalancedCheckpointing>;

    #[test]
    fn attention_rows_matches_the_tensor_expression() {
        type B = Flex;
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
        let expected = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3)
            .matmul(v.clone())
            .swap_dims(1, 2)
            .reshape([batch, len, heads * head_dim]);
        attention_rows(&q, &k, &v, Some(&padding))
            .expect("flex f32 uses the host kernel")
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::relative(1e-4));
    }

    fn attention_case<B: burn::tensor::backend::AutodiffBackend>() {
        let (batch, heads, len, keys, head_dim) = (2, 3, 9, 9, 8);
        let device = Default::default();
        let q = random::<B::InnerBackend, 4>([batch, heads, len, head_dim], 11);
        let k = random::<B::InnerBackend, 4>([batch, heads, keys, head_dim], 12);
        // `v` enters position-major and is transposed inside the op, as in the model: the
        // fused kernel reads it through strides.
        let v = random::<B::InnerBackend, 4>([batch, keys, heads, head_dim], 13);
        let r = random::<B::InnerBackend, 3>([batch, len, heads * head_dim], 14);
        let padding: Vec<bool> = (0..batch * keys)
            .map(|i| i % keys < 3 * (i / keys))
            .collect();
        let padding =
            Tensor::<B, 2, Bool>::from_data(TensorData::new(padding, [batch, keys]), &device);
        let inputs = [q, k, v];
        let fused = output_and_grads::<B, 4, 3>(&inputs, &r, |t| {
            let v = t[2].clone().swap_dims(1, 2);
            attention_rows(&t[0], &t[1], &v, Some(&padding)).expect("fused")
        });
        let plain = output_and_grads::<B, 4, 3>(&inputs, &r, |t| {
            let scores = t[0]
                .clone()
                .matmul(t[1].clone().swap_dims(2, 3))
                .mul_scalar((head_dim as f64).powf(-0.5));
            let mask = padding
                .clone()
                .reshape([batch, 1, 1, keys])
                .expand([batch, heads, len, keys]);
            softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3)
                .matmul(t[2].clone().swap_dims(1, 2))
                .swap_dims(1, 2)
                .reshape([batch, len, heads * head_dim])
        });
        assert_close(fused.0, plain.0, "output");
        for (name, (f, p)) in ["dq", "dk", "dv"]
            .iter()
            .zip(fused.1.into_iter().zip(plain.1))
        {
            assert_close(f, p, name);
        }
    }

    #[test]
    fn attention_gradients_match_autodiff() {
        attention_case::<A>();
    }

    #[test]
    fn attention_gradients_match_autodiff_with_checkpointing() {
        attention_case::<Balanced>();
    }
}
