//! The fused CPU kernels of [`crate::fused`] on burn's flex backend, plain and under autodiff.
//!
//! Generic model code reaches these through a type check: a `Tensor<B, D>` whose `B` is `Flex`
//! is read in place (no copy when contiguous); one whose `B` is `Autodiff<Flex, C>` (with or
//! without gradient checkpointing) runs the same forward kernel and records a hand-written
//! backward pass, so a training step runs each of RMSNorm, SwiGLU, RoPE and attention as one
//! parallel sweep forward and one backward instead of a chain of single-threaded elementwise
//! ops. Every other backend gets `None` and keeps its tensor expressions.
//!
//! Gradients (derived from the forward formulas of spec §1; each is checked against autodiff of
//! the tensor expression in the tests):
//! - SwiGLU `y = g σ(g) u`: `dg = dy u σ(g) (1 + g (1 - σ(g)))`, `du = dy g σ(g)`.
//! - RMSNorm `y = w x r`, `r = (mean(x²) + eps)^-½`: `dw = Σ_rows dy x r`,
//!   `dx = r (dy w - x r · r mean(dy w x))`.
//! - RoPE `y_j = x_j c_j + x_p(j) s_j` (`p` swaps the halves of a head): `dx_i = dy_i c_i +
//!   dy_p(i) s_p(i)`.
//! - Attention `O = P V`, `P = softmax(scale Q Kᵀ)` (recomputed in the backward pass, not
//!   stored): `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP - rowsum(P ⊙ dP))`, `dQ = scale dS K`,
//!   `dK = scale dSᵀ Q`.
//!
//! Every reduction runs in a fixed order, so results do not depend on thread scheduling
//! (training on CPU is deterministic).

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::{Autodiff, Flex};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData, TensorPrimitive};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::fused::{
    argmax_with_confidence_host, attention_host, attention_probs, host_mask, inverse_rms,
    matmul_host, rms_norm_host, rope_host, row_max_and_exp_sum, splice_host, swiglu_host,
    token_log_probs_host, AttentionDims, HeadsView, Strided, CHUNK,
};

/// flex inside autodiff with checkpoint strategy `C`.
type Ad<C> = Autodiff<Flex, C>;

/// `Some(t)` as a `U` when `T` is `U`.
fn same_type<T: 'static, U: 'static>(t: T) -> Option<U> {
    (Box::new(t) as Box<dyn Any>)
        .downcast::<U>()
        .ok()
        .map(|b| *b)
}

/// Whether `B` is plain flex.
fn is_flex<B: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<Flex>()
}

/// Whether `B` is flex, plain or inside autodiff: the backends these kernels serve. Checked
/// before any host-side preparation, so other backends pay nothing.
fn runs_on_flex<B: Backend>() -> bool {
    let b = TypeId::of::<B>();
    b == TypeId::of::<Flex>()
        || b == TypeId::of::<Ad<NoCheckpointing>>()
        || b == TypeId::of::<Ad<BalancedCheckpointing>>()
}

/// Runs `$body` with the type `$C` bound to the checkpoint strategy when `$B` is
/// `Autodiff<Flex, $C>` for one of burn's two strategies; `None` otherwise.
macro_rules! with_autodiff_flex {
    ($B:ty, $C:ident => $body:expr) => {{
        if TypeId::of::<$B>() == TypeId::of::<Ad<NoCheckpointing>>() {
            type $C = NoCheckpointing;
            Some($body)
        } else if TypeId::of::<$B>() == TypeId::of::<Ad<BalancedCheckpointing>>() {
            type $C = BalancedCheckpointing;
            Some($body)
        } else {
            None
        }
    }};
}

/// The flex primitive of a tensor known to be on flex.
fn to_flex<B: Backend, const D: usize>(t: &Tensor<B, D>) -> FlexTensor {
    same_type::<_, Tensor<Flex, D>>(t.clone())
        .expect("checked by is_flex")
        .into_primitive()
        .tensor()
}

/// A flex primitive as a tensor of `B` (known to be flex).
fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Tensor<B, D> {
    same_type(Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(t))).expect("B is flex")
}

/// The autodiff primitive of a tensor known to be on `Autodiff<Flex, C>`.
fn to_ad<B: Backend, C: CheckpointStrategy, const D: usize>(
    t: &Tensor<B, D>,
) -> FloatTensor<Ad<C>> {
    same_type::<_, Tensor<Ad<C>, D>>(t.clone())
        .expect("checked by with_autodiff_flex")
        .into_primitive()
        .tensor()
}

/// An autodiff primitive as a tensor of `B` (known to be `Autodiff<Flex, C>`).
fn from_ad<B: Backend, C: CheckpointStrategy, const D: usize>(
    t: FloatTensor<Ad<C>>,
) -> Tensor<B, D> {
    same_type(Tensor::<Ad<C>, D>::from_primitive(TensorPrimitive::Float(
        t,
    )))
    .expect("B is autodiff flex")
}

/// The f32 values of a flex tensor in row-major order, borrowed when already laid out so.
fn read(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(values) => Cow::Borrowed(values),
        None => Cow::Owned(
            t.to_contiguous()
                .into_data()
                .into_vec::<f32>()
                .expect("the fused kernels only take f32 tensors"),
        ),
    }
}

/// `t` itself when its strides are non-negative (any transpose or slice), else a contiguous
/// copy: either way readable through [`heads_view`].
fn forward_strided(t: FlexTensor) -> FlexTensor {
    if t.layout().has_positive_strides() {
        t
    } else {
        t.to_contiguous()
    }
}

/// A `[batch, heads, rows, head_dim]` view of a 4-D f32 flex tensor with non-negative strides.
fn heads_view(t: &FlexTensor) -> HeadsView<'_> {
    let layout = t.layout();
    let dims: [usize; 4] = layout.shape().dims::<4>();
    let s = layout.strides();
    let strides =
        [s[0], s[1], s[2], s[3]].map(|s| usize::try_from(s).expect("non-negative strides"));
    HeadsView::new(t.storage::<f32>(), layout.start_offset(), dims, strides)
}

/// A flex tensor holding `values` with `shape`.
fn flex_tensor(values: Vec<f32>, shape: impl Into<burn::tensor::Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Records `out` as the result of the compute-bound `op` on `inputs`: when any input is tracked,
/// the inputs are checkpointed (kept, never recomputed) and `state` builds the backward state
/// from their ids.
fn record<C, O, S, const N: usize>(
    op: O,
    inputs: [&FloatTensor<Ad<C>>; N],
    out: FlexTensor,
    state: impl FnOnce([NodeId; N]) -> S,
) -> FloatTensor<Ad<C>>
where
    C: CheckpointStrategy,
    O: Backward<Flex, N, State = S>,
    S: Clone + Send + std::fmt::Debug + 'static,
{
    match op
        .prepare::<C>(inputs.map(|t| t.node.clone()))
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let ids = inputs.map(|t| prep.checkpoint(t));
            prep.finish(state(ids), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

// ---------------------------------------------------------------------------------------------
// KV-cache splice

/// `cached` with positions `[start, start + span)` replaced by `fresh`, on plain flex (the
/// cache is read outside autodiff); `None` on other backends.
pub(crate) fn splice_positions<B: Backend>(
    cached: &Tensor<B, 4>,
    fresh: &Tensor<B, 4>,
    start: usize,
) -> Option<Tensor<B, 4>> {
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
}

// ---------------------------------------------------------------------------------------------
// Linear products

/// A 2-D f32 flex tensor with non-negative strides as a strided matrix.
fn matrix_view(t: &FlexTensor) -> Strided<'_> {
    let layout = t.layout();
    let [rows, cols] = layout.shape().dims::<2>();
    let s = layout.strides();
    let [row, col] = [s[0], s[1]].map(|s| usize::try_from(s).expect("non-negative strides"));
    Strided::with_strides(
        &t.storage::<f32>()[layout.start_offset()..],
        rows,
        cols,
        row,
        col,
    )
}

/// `x w` on flex, plain or inside autodiff (where the backward pass writes `dy wᵀ` and
/// `xᵀ dy` the same way); `None` on other backends.
pub(crate) fn matmul_2d<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    let ([rows, _], [_, cols]) = (x.dims(), w.dims());
    let product = |x: FlexTensor, w: FlexTensor| {
        let (x, w) = (forward_strided(x), forward_strided(w));
        flex_tensor(matmul_host(matrix_view(&x), matrix_view(&w)), [rows, cols])
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
}

/// Backward of [`matmul_2d`]; state: the two inputs.
#[derive(Debug)]
struct Matmul2dBackward;

impl Backward<Flex, 2> for Matmul2dBackward {
    type State = (NodeId, NodeId);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let (x, w) = ops.state;
        let x = forward_strided(ckpt.retrieve_node_output::<FlexTensor>(x));
        let w = forward_strided(ckpt.retrieve_node_output::<FlexTensor>(w));
        let grad = forward_strided(grads.consume::<Flex>(&ops.node));
        let (x, w, dy) = (matrix_view(&x), matrix_view(&w), matrix_view(&grad));
        let [x_node, w_node] = ops.parents;
        if let Some(node) = x_node {
            let dx = matmul_host(dy, w.transposed());
            grads.register::<Flex>(node.id, flex_tensor(dx, x.shape()));
        }
        if let Some(node) = w_node {
            let dw = matmul_host(x.transposed(), dy);
            grads.register::<Flex>(node.id, flex_tensor(dw, w.shape()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sampler candidates

/// Argmax of `logits + noise` and its probability under `logits`, per row, on plain flex;
/// `None` on other backends.
pub(crate) fn argmax_with_confidence<B: Backend>(
    logits: &Tensor<B, 3>,
    noise: Option<&[f32]>,
) -> Option<(Vec<i64>, Vec<f32>)> {
    if !is_flex::<B>() {
        return None;
    }
    let vocab = logits.dims()[2];
    Some(argmax_with_confidence_host(
        &read(&to_flex(logits)),
        noise,
        vocab,
    ))
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

/// `silu(gate) * up` on flex (plain or autodiff); `None` on other backends.
pub(crate) fn swiglu<B: Backend>(gate: &Tensor<B, 3>, up: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    let shape = gate.dims();
    if is_flex::<B>() {
        let out = swiglu_host(&read(&to_flex(gate)), &read(&to_flex(up)));
        return Some(from_flex(flex_tensor(out, shape)));
    }
    with_autodiff_flex!(B, C => {
        let (gate, up) = (to_ad::<B, C, 3>(gate), to_ad::<B, C, 3>(up));
        let out = flex_tensor(swiglu_host(&read(&gate.primitive), &read(&up.primitive)), shape);
        let out = record::<C, _, _, 2>(SwigluBackward, [&gate, &up], out, |[g, u]| (g, u, shape));
        from_ad::<B, C, 3>(out)
    })
}

/// Backward of [`swiglu`]; state: the two inputs and the shape.
#[derive(Debug)]
struct SwigluBackward;

impl Backward<Flex, 2> for SwigluBackward {
    type State = (NodeId, NodeId, [usize; 3]);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let (gate, up, shape) = ops.state;
        let gate: FlexTensor = ckpt.retrieve_node_output(gate);
        let up: FlexTensor = ckpt.retrieve_node_output(up);
        let grad = grads.consume::<Flex>(&ops.node);
        let (d_gate, d_up) = swiglu_backward_host(&read(&gate), &read(&up), &read(&grad));
        let [gate_node, up_node] = ops.parents;
        if let Some(node) = gate_node {
            grads.register::<Flex>(node.id, flex_tensor(d_gate, shape));
        }
        if let Some(node) = up_node {
            grads.register::<Flex>(node.id, flex_tensor(d_up, shape));
        }
    }
}

/// `(d gate, d up)` of `silu(gate) * up` given the output gradient.
pub(crate) fn swiglu_backward_host(gate: &[f32], up: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut d_gate = vec![0.0f32; gate.len()];
    let mut d_up = vec![0.0f32; gate.len()];
    d_gate
        .par_chunks_mut(CHUNK)
        .zip(d_up.par_chunks_mut(CHUNK))
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .zip(grad.par_chunks(CHUNK))
        .for_each(|(((dg, du), (g, u)), dy)| {
            for i in 0..dg.len() {
                let sigmoid = 1.0 / (1.0 + crate::fused::exp_f32(-g[i]));
                du[i] = dy[i] * g[i] * sigmoid;
                dg[i] = dy[i] * u[i] * sigmoid * (1.0 + g[i] * (1.0 - sigmoid));
            }
        });
    (d_gate, d_up)
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// RMSNorm over the rows of `x` `[rows, d]` on flex (plain or autodiff); `None` elsewhere.
pub(crate) fn rms_norm_rows<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Option<Tensor<B, 2>> {
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
}

/// Backward of [`rms_norm_rows`]; state: input, weight, input shape, eps.
#[derive(Debug)]
struct RmsNormBackward;

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
pub(crate) fn rms_norm_backward_host(
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

// ---------------------------------------------------------------------------------------------
// RoPE

/// RoPE of `x` `[batch, len, heads, head_dim]` written heads-first, on flex (plain or
/// autodiff); `None` elsewhere.
pub(crate) fn rope_heads_first<B: Backend>(
    x: &Tensor<B, 4>,
    cos: &[f32],
    signed_sin: &[f32],
) -> Option<Tensor<B, 4>> {
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
}

/// Backward of [`rope_heads_first`] (a linear map: only the tables are kept).
#[derive(Debug)]
struct RopeBackward;

/// The cosine and signed-sine tables of one RoPE call.
type RopeTablesHost = Arc<(Vec<f32>, Vec<f32>)>;

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
pub(crate) fn rope_backward_host(
    grad: &[f32],
    dims: [usize; 4],
    cos: &[f32],
    signed_sin: &[f32],
) -> Vec<f32> {
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

// ---------------------------------------------------------------------------------------------
// Token log-probabilities

/// `log softmax(logits)[target]` `[n, len]` on flex (plain or autodiff); `None` elsewhere and
/// when a target lies outside the vocabulary (the caller's `gather` then reports it).
pub(crate) fn token_log_probs<B: Backend>(
    logits: &Tensor<B, 3>,
    targets: &Tensor<B, 3, Int>,
) -> Option<Tensor<B, 2>> {
    if !runs_on_flex::<B>() {
        return None;
    }
    let [n, len, vocab] = logits.dims();
    let targets: Vec<usize> = targets
        .clone()
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .ok()?
        .into_iter()
        .map(|t| usize::try_from(t).ok().filter(|&t| t < vocab))
        .collect::<Option<_>>()?;
    if is_flex::<B>() {
        let out = token_log_probs_host(&read(&to_flex(logits)), &targets, vocab);
        return Some(from_flex(flex_tensor(out, [n, len])));
    }
    with_autodiff_flex!(B, C => {
        let logits = to_ad::<B, C, 3>(logits);
        let out = token_log_probs_host(&read(&logits.primitive), &targets, vocab);
        let out = flex_tensor(out, [n, len]);
        let out = record::<C, _, _, 1>(TokenLogProbsBackward, [&logits], out, |[l]| {
            (l, Arc::new(targets), [n, len, vocab])
        });
        from_ad::<B, C, 2>(out)
    })
}

/// Backward of [`token_log_probs`]; state: the logits, the targets and the logits' shape.
#[derive(Debug)]
struct TokenLogProbsBackward;

impl Backward<Flex, 1> for TokenLogProbsBackward {
    type State = (NodeId, Arc<Vec<usize>>, [usize; 3]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let (logits, targets, shape) = ops.state;
        let grad = grads.consume::<Flex>(&ops.node);
        let [logits_node] = ops.parents;
        if let Some(node) = logits_node {
            let logits: FlexTensor = ckpt.retrieve_node_output(logits);
            let d = token_log_probs_backward_host(&read(&logits), &targets, &read(&grad), shape[2]);
            grads.register::<Flex>(node.id, flex_tensor(d, shape));
        }
    }
}

/// The logits' gradient `g (onehot(target) - softmax(row))` per row, zero for rows with `g = 0`
/// (positions the loss does not count, e.g. unmasked ones).
pub(crate) fn token_log_probs_backward_host(
    logits: &[f32],
    targets: &[usize],
    grad: &[f32],
    vocab: usize,
) -> Vec<f32> {
    let mut d = vec![0.0f32; logits.len()];
    let rows_per_task = (CHUNK / vocab).max(1);
    d.par_chunks_mut(rows_per_task * vocab)
        .zip(logits.par_chunks(rows_per_task * vocab))
        .zip(
            targets
                .par_chunks(rows_per_task)
                .zip(grad.par_chunks(rows_per_task)),
        )
        .for_each(|((d, logits), (targets, grad))| {
            for (((d, row), &t), &g) in d
                .chunks_mut(vocab)
                .zip(logits.chunks(vocab))
                .zip(targets)
                .zip(grad)
            {
                if g == 0.0 {
                    continue;
                }
                let (max, sum) = row_max_and_exp_sum(row);
                let scale = -g / sum;
                for (d, &x) in d.iter_mut().zip(row) {
                    *d = scale * crate::fused::exp_f32(x - max);
                }
                d[t] += g;
            }
        });
    d
}

// ---------------------------------------------------------------------------------------------
// Attention

/// Attention on flex (plain or autodiff), output `[batch, len, heads * head_dim]`; `None`
/// elsewhere.
pub(crate) fn attention_rows<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    key_padding: Option<&Tensor<B, 2, Bool>>,
    dims: AttentionDims,
) -> Option<Tensor<B, 3>> {
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
}

/// Backward of [`attention_rows`]; state: `q`, `k`, `v`, the key padding and the sizes.
#[derive(Debug)]
struct AttentionBackward;

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
pub(crate) fn attention_backward_host(
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
            crate::fused::gemm_into(dv, head_dim, probs_view.transposed(), d_out, 1.0);
            // dP = dO Vᵀ, then dS = P ⊙ (dP - rowsum(P ⊙ dP)) · scale, in place.
            let mut d_scores = vec![0.0f32; len * keys];
            crate::fused::gemm_into(&mut d_scores, keys, d_out, v.transposed(), 1.0);
            let scale = dims.scale();
            for (ds, p) in d_scores.chunks_mut(keys).zip(probs.chunks(keys)) {
                let dot = crate::fused::dot(ds, p);
                for (d, &p) in ds.iter_mut().zip(p) {
                    *d = p * (*d - dot) * scale;
                }
            }
            let ds_view = Strided::rows(&d_scores, len, keys);
            // dQ = dS K, dK = dSᵀ Q
            crate::fused::gemm_into(dq, head_dim, ds_view, k, 1.0);
            crate::fused::gemm_into(dk, head_dim, ds_view.transposed(), q, 1.0);
        });
    [dq, dk, dv]
}

#[cfg(test)]
mod tests {
    //! Each fused op under autodiff against autodiff of the tensor expression it replaces:
    //! same output, same gradient for every input, for `loss = sum(out * r)` with random `r`.

    use super::*;
    use burn::tensor::activation::{silu, softmax};
    use burn::tensor::{Distribution, Tolerance};

    type A = Autodiff<Flex>;
    type Balanced = Autodiff<Flex, BalancedCheckpointing>;

    fn random<B: Backend, const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
        let n: usize = shape.iter().product();
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let values: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
            .collect();
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    fn assert_close<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>, what: &str) {
        let (a, b) = (a.into_data(), b.into_data());
        assert_eq!(a.shape, b.shape, "{what}: shapes differ");
        let (a, b) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
            .fold(0.0f32, f32::max);
        assert!(worst < 2e-5, "{what}: worst relative difference {worst}");
    }

    /// Runs `op` on fresh leaves made from `inputs` and returns the output and each gradient.
    fn output_and_grads<
        B: burn::tensor::backend::AutodiffBackend,
        const D: usize,
        const O: usize,
    >(
        inputs: &[Tensor<B::InnerBackend, D>],
        r: &Tensor<B::InnerBackend, O>,
        op: impl Fn(&[Tensor<B, D>]) -> Tensor<B, O>,
    ) -> (Tensor<B::InnerBackend, O>, Vec<Tensor<B::InnerBackend, D>>) {
        let leaves: Vec<Tensor<B, D>> = inputs
            .iter()
            .map(|t| Tensor::from_inner(t.clone()).require_grad())
            .collect();
        let out = op(&leaves);
        let grads = (out.clone() * Tensor::from_inner(r.clone()))
            .sum()
            .backward();
        let grads = leaves
            .iter()
            .map(|l| l.grad(&grads).expect("every input gets a gradient"))
            .collect();
        (out.inner(), grads)
    }

    #[test]
    fn swiglu_gradients_match_autodiff() {
        let shape = [2, 19, 40];
        let inputs = [random::<Flex, 3>(shape, 1), random(shape, 2)];
        let r = random::<Flex, 3>(shape, 3);
        let fused = output_and_grads::<A, 3, 3>(&inputs, &r, |t| {
            swiglu(&t[0], &t[1]).expect("autodiff flex is fused")
        });
        let plain = output_and_grads::<A, 3, 3>(&inputs, &r, |t| silu(t[0].clone()) * t[1].clone());
        assert_close(fused.0, plain.0, "output");
        for (i, (f, p)) in fused.1.into_iter().zip(plain.1).enumerate() {
            assert_close(f, p, &format!("gradient {i}"));
        }
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

    /// [`output_and_grads`] for two inputs of different shapes.
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
            crate::fused::attention_rows(&t[0], &t[1], &v, Some(&padding)).expect("fused")
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

    #[test]
    fn token_log_probs_and_gradients_match_autodiff() {
        let (n, len, vocab) = (3, 7, 37);
        let logits = random::<Flex, 3>([n, len, vocab], 15).mul_scalar(3.0);
        let ids: Vec<i64> = (0..n * len).map(|i| ((i * 7 + 3) % vocab) as i64).collect();
        let targets = Tensor::<A, 3, burn::tensor::Int>::from_data(
            TensorData::new(ids, [n, len, 1]),
            &Default::default(),
        );
        // Zero weight on some positions: their rows take the skip path of the backward pass.
        let r = random::<Flex, 2>([n, len], 16)
            .mask_fill(random::<Flex, 2>([n, len], 17).greater_elem(0.5), 0.0);
        let fused = output_and_grads::<A, 3, 2>(std::slice::from_ref(&logits), &r, |t| {
            crate::fused::token_log_probs(t[0].clone(), targets.clone())
        });
        let plain = output_and_grads::<A, 3, 2>(std::slice::from_ref(&logits), &r, |t| {
            burn::tensor::activation::log_softmax(t[0].clone(), 2)
                .gather(2, targets.clone())
                .reshape([n, len])
        });
        assert_close(fused.0, plain.0, "output");
        assert_close(fused.1[0].clone(), plain.1[0].clone(), "gradient");
    }

    #[test]
    fn untracked_inputs_stay_untracked() {
        let g = Tensor::<A, 3>::random([2, 3, 4], Distribution::Default, &Default::default());
        let u = g.clone();
        let out = swiglu(&g, &u).expect("fused");
        assert!(!out.is_require_grad());
        out.into_data().assert_approx_eq::<f32>(
            &(silu(g.clone()) * g).into_data(),
            Tolerance::relative(1e-5),
        );
    }
}
