//! Fused, row-parallel CPU kernels for the parts of a block between the projections (spec §1):
//! RMSNorm, the SwiGLU product `silu(gate) * up`, RoPE written heads-first, and attention.
//!
//! burn's CPU backend (flex) runs elementwise ops on one thread, one op per pass over memory:
//! `silu(g) * u` is four passes and a scalar `expf` per element, RMSNorm six. Profiled on the
//! bench model, these serial passes held the second core idle for about a quarter of a forward
//! (docs/performance.md). On flex with f32 tensors these functions compute each row in one pass
//! on all cores — inside autodiff too, with hand-written backward passes (`flex_ops`) — and
//! everywhere else they return `None` and the caller runs its plain tensor expression, so GPU
//! backends keep their own kernels.

// Without the flex backend compiled in, the host kernels have no caller.
#![cfg_attr(not(feature = "flex"), allow(dead_code))]

use burn::tensor::{activation::log_softmax, backend::Backend, Bool, DType, Int, Tensor};
use rayon::prelude::*;

/// Elements per parallel task: large enough to amortise rayon's dispatch.
pub(crate) const CHUNK: usize = 16 * 1024;

/// Whether every tensor is f32, the one precision the fused kernels compute in.
fn all_f32(dtypes: &[DType]) -> bool {
    dtypes.iter().all(|d| *d == DType::F32)
}

#[cfg(feature = "flex")]
use crate::flex_ops;

/// Without flex compiled in, no tensor can take the fused kernels.
#[cfg(not(feature = "flex"))]
mod flex_ops {
    use super::AttentionDims;
    use burn::tensor::{backend::Backend, Bool, Int, Tensor};

    pub(crate) fn swiglu<B: Backend>(_: &Tensor<B, 3>, _: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
        None
    }
    pub(crate) fn token_log_probs<B: Backend>(
        _: &Tensor<B, 3>,
        _: &Tensor<B, 3, Int>,
    ) -> Option<Tensor<B, 2>> {
        None
    }
    pub(crate) fn rms_norm_rows<B: Backend>(
        _: &Tensor<B, 2>,
        _: &Tensor<B, 1>,
        _: f64,
    ) -> Option<Tensor<B, 2>> {
        None
    }
    pub(crate) fn rope_heads_first<B: Backend>(
        _: &Tensor<B, 4>,
        _: &[f32],
        _: &[f32],
    ) -> Option<Tensor<B, 4>> {
        None
    }
    pub(crate) fn attention_rows<B: Backend>(
        _: &Tensor<B, 4>,
        _: &Tensor<B, 4>,
        _: &Tensor<B, 4>,
        _: Option<&Tensor<B, 2, Bool>>,
        _: AttentionDims,
    ) -> Option<Tensor<B, 3>> {
        None
    }
    pub(crate) fn splice_positions<B: Backend>(
        _: &Tensor<B, 4>,
        _: &Tensor<B, 4>,
        _: usize,
    ) -> Option<Tensor<B, 4>> {
        None
    }
    pub(crate) fn argmax_with_confidence<B: Backend>(
        _: &Tensor<B, 3>,
        _: Option<&[f32]>,
    ) -> Option<(Vec<i64>, Vec<f32>)> {
        None
    }
    pub(crate) fn matmul_2d<B: Backend>(
        _: &Tensor<B, 2>,
        _: &Tensor<B, 2>,
    ) -> Option<Tensor<B, 2>> {
        None
    }
}

/// `silu(gate) * up`, elementwise, for tensors of the same shape.
///
/// Returns `None` where no fused kernel applies; the caller then uses tensor ops.
pub fn swiglu<B: Backend>(gate: &Tensor<B, 3>, up: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    if gate.dims() != up.dims() || !all_f32(&[gate.dtype(), up.dtype()]) {
        return None;
    }
    flex_ops::swiglu(gate, up)
}

/// `silu(gate) * up` over two slices of the same length, in parallel chunks.
pub(crate) fn swiglu_host(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut out = gate.to_vec();
    out.par_chunks_mut(CHUNK)
        .zip(up.par_chunks(CHUNK))
        .for_each(|(g, u)| {
            for (g, &u) in g.iter_mut().zip(u) {
                *g = *g / (1.0 + exp_f32(-*g)) * u;
            }
        });
    out
}

/// `weight * x / sqrt(mean(x^2) + eps)` over the last dimension of `x` `[rows, d]`.
///
/// Returns `None` where no fused kernel applies; the caller then uses tensor ops.
pub fn rms_norm_rows<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Option<Tensor<B, 2>> {
    let [_, d] = x.dims();
    if d == 0 || weight.dims() != [d] || !all_f32(&[x.dtype(), weight.dtype()]) {
        return None;
    }
    flex_ops::rms_norm_rows(x, weight, eps)
}

/// [`rms_norm_rows`] on host slices: `x` holds rows of `weight.len()` values.
pub(crate) fn rms_norm_host(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
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

/// `1 / sqrt(mean(row^2) + eps)`.
pub(crate) fn inverse_rms(row: &[f32], eps: f32) -> f32 {
    let mean_square = dot(row, row) / row.len() as f32;
    1.0 / (mean_square + eps).sqrt()
}

/// Rotary embedding of `x` `[batch, len, heads, head_dim]` in the rotate-half convention,
/// written as `[batch, heads, len, head_dim]`: `out = x * cos + swap_halves(x) * signed_sin` with
/// the tables laid out `[len * heads * head_dim]` (see `RopeTables`).
///
/// Returns `None` where no fused kernel applies; the caller then uses tensor ops.
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
    flex_ops::rope_heads_first(x, cos, signed_sin)
}

/// [`rope_heads_first`] on host slices; `dims` is the input's `[batch, len, heads, head_dim]`.
pub(crate) fn rope_host(x: &[f32], dims: [usize; 4], cos: &[f32], signed_sin: &[f32]) -> Vec<f32> {
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

/// `log softmax(logits)[target]` over the vocabulary: `logits` `[n, len, vocab]`, `targets`
/// `[n, len, 1]`, result `[n, len]` — the per-token log-likelihood of the ELBO and of the
/// training losses (spec §3, §4, §6).
///
/// On the CPU backend (plain or autodiff) one parallel pass per row computes the log-sum-exp
/// and picks the target, and the backward pass writes `g (onehot - softmax)` only for rows with
/// a non-zero gradient (the masked positions); elsewhere it is `log_softmax` then `gather`.
pub fn token_log_probs<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 3, Int>,
) -> Tensor<B, 2> {
    let [n, len, vocab] = logits.dims();
    if targets.dims() == [n, len, 1] && vocab > 0 && all_f32(&[logits.dtype()]) {
        if let Some(out) = flex_ops::token_log_probs(&logits, &targets) {
            return out;
        }
    }
    log_softmax(logits, 2).gather(2, targets).reshape([n, len])
}

/// `(max, sum exp(x - max))` of a row, vectorised.
#[inline(always)]
pub(crate) fn row_max_and_exp_sum(row: &[f32]) -> (f32, f32) {
    let max = lanes_reduce(row, f32::NEG_INFINITY, f32::max);
    let mut lanes = [0.0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += exp_f32(x - max);
        }
    }
    for (lane, &x) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane += exp_f32(x - max);
    }
    (max, lanes.into_iter().sum())
}

/// [`token_log_probs`] on host rows of `vocab` logits, one target per row.
pub(crate) fn token_log_probs_host(logits: &[f32], targets: &[usize], vocab: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; targets.len()];
    let rows_per_task = (CHUNK / vocab).max(1);
    out.par_chunks_mut(rows_per_task)
        .zip(logits.par_chunks(rows_per_task * vocab))
        .zip(targets.par_chunks(rows_per_task))
        .for_each(|((out, logits), targets)| {
            for ((o, row), &t) in out.iter_mut().zip(logits.chunks(vocab)).zip(targets) {
                let (max, sum) = row_max_and_exp_sum(row);
                *o = row[t] - max - sum.ln();
            }
        });
    out
}

/// A sampler step's candidates (spec §2, steps 2–3): per row of `logits` `[batch, n, vocab]`,
/// the index of the largest `logits + noise` (the first on ties; `noise` is the tempered Gumbel
/// noise, row-major like `logits`, or `None` at temperature 0) and its untempered probability
/// `softmax(logits)[index]`.
///
/// On the CPU backend one parallel pass per row replaces the argmax, log-sum-exp and gather
/// passes over `[batch, n, vocab]`; `None` elsewhere (the logits stay on the device).
pub fn argmax_with_confidence<B: Backend>(
    logits: &Tensor<B, 3>,
    noise: Option<&[f32]>,
) -> Option<(Vec<i64>, Vec<f32>)> {
    let [batch, n, vocab] = logits.dims();
    if vocab == 0
        || noise.is_some_and(|z| z.len() != batch * n * vocab)
        || !all_f32(&[logits.dtype()])
    {
        return None;
    }
    flex_ops::argmax_with_confidence(logits, noise)
}

/// [`argmax_with_confidence`] on host rows of `vocab` logits.
pub(crate) fn argmax_with_confidence_host(
    logits: &[f32],
    noise: Option<&[f32]>,
    vocab: usize,
) -> (Vec<i64>, Vec<f32>) {
    let rows = logits.len() / vocab;
    let mut picked = vec![(0i64, 0.0f32); rows];
    let rows_per_task = (CHUNK / vocab).max(1);
    picked
        .par_chunks_mut(rows_per_task)
        .enumerate()
        .for_each(|(task, out)| {
            let first = task * rows_per_task;
            for (i, o) in out.iter_mut().enumerate() {
                let at = (first + i) * vocab;
                let row = &logits[at..at + vocab];
                let best = match noise {
                    None => first_argmax(row.iter().copied()),
                    Some(z) => {
                        let z = &z[at..at + vocab];
                        first_argmax(row.iter().zip(z).map(|(l, z)| l + z))
                    }
                };
                let (max, sum) = row_max_and_exp_sum(row);
                *o = (best as i64, exp_f32(row[best] - max) / sum);
            }
        });
    picked.into_iter().unzip()
}

/// Index of the first largest value (NaN never wins).
fn first_argmax(values: impl Iterator<Item = f32>) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// Sizes of one attention call: `[batch, heads, len, head_dim]` queries against `keys` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AttentionDims {
    /// Sequences.
    pub batch: usize,
    /// Heads (key/value heads already repeated).
    pub heads: usize,
    /// Query positions.
    pub len: usize,
    /// Key positions.
    pub keys: usize,
    /// Channels per head.
    pub head_dim: usize,
}

impl AttentionDims {
    /// The sizes of `q` `[batch, heads, len, head_dim]` against `k`, `v` `[batch, heads, keys,
    /// head_dim]` with an optional `[batch, keys]` padding mask, if they agree and none is empty.
    pub(crate) fn of(
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
    pub(crate) fn scale(&self) -> f32 {
        (self.head_dim as f32).powf(-0.5)
    }
}

/// Bidirectional attention `softmax(q k^T / sqrt(head_dim)) v` for `q` `[batch, heads, len,
/// head_dim]` and `k`, `v` `[batch, heads, keys, head_dim]` (key/value heads already repeated),
/// with `key_padding` `[batch, keys]` (true = hidden), returned as `[batch, len, heads *
/// head_dim]`, the layout the output projection reads.
///
/// Each (batch, head) pair is one task: two single-threaded `gemm` calls around a softmax over
/// rows held in cache, writing its `head_dim` columns of the output in place. Returns `None`
/// where no fused kernel applies; the caller then uses tensor ops.
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
    flex_ops::attention_rows(q, k, v, key_padding, dims)
}

/// A bool tensor's values in row-major order.
pub(crate) fn host_mask<B: Backend, const D: usize>(m: &Tensor<B, D, Bool>) -> Vec<bool> {
    m.clone()
        .into_data()
        .into_vec::<bool>()
        .expect("a bool tensor reads as bool")
}

/// `scores <- softmax(scale * q k^T)` for one (batch, head) pair: `q` `[len, head_dim]`, `k`
/// `[keys, head_dim]`, `hidden` the keys to leave out.
pub(crate) fn attention_probs(
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

/// `cached` `[batch, heads, total, head_dim]` with positions `[start, start + span)` replaced
/// by `fresh` `[batch, heads, span, head_dim]` (a KV-cache read, spec §2).
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
    flex_ops::splice_positions(cached, fresh, start)
}

/// [`splice_positions`] on host views: `[batch, heads, total, head_dim]`, row-major.
pub(crate) fn splice_host(cached: HeadsView, fresh: HeadsView, start: usize) -> Vec<f32> {
    let [batch, heads, total, head_dim] = cached.dims;
    let span = fresh.dims[2];
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

/// A read-only `[batch, heads, rows, head_dim]` view with arbitrary non-negative strides, so
/// that attention reads a transposed tensor (`v` after `swap_dims`) without copying it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadsView<'a> {
    data: &'a [f32],
    offset: usize,
    dims: [usize; 4],
    strides: [usize; 4],
}

impl<'a> HeadsView<'a> {
    /// Element `[b, h, r, c]` at `data[offset + b s0 + h s1 + r s2 + c s3]`.
    pub(crate) fn new(
        data: &'a [f32],
        offset: usize,
        dims: [usize; 4],
        strides: [usize; 4],
    ) -> Self {
        let last: usize = dims
            .iter()
            .zip(&strides)
            .map(|(&d, &s)| d.saturating_sub(1) * s)
            .sum();
        assert!(
            dims.contains(&0) || offset + last < data.len(),
            "heads view out of bounds"
        );
        Self {
            data,
            offset,
            dims,
            strides,
        }
    }

    /// The `[rows, head_dim]` matrix of sequence `b`, head `h`.
    pub(crate) fn matrix(&self, b: usize, h: usize) -> Strided<'a> {
        let base = self.offset + b * self.strides[0] + h * self.strides[1];
        Strided::with_strides(
            &self.data[base..],
            self.dims[2],
            self.dims[3],
            self.strides[2],
            self.strides[3],
        )
    }
}

/// [`attention_rows`] on host views (`q`, `k`, `v` heads-first, `hidden` `[batch, keys]`).
pub(crate) fn attention_host(
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
                v.data.as_ptr(),
                v.col as isize,
                v.row as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
    out
}

/// `x w` for `x` `[rows, k]` and `w` `[k, cols]` (a linear layer's product).
///
/// On the CPU backend (plain or autodiff) the product — and under autodiff both gradient
/// products — is written straight into a fresh buffer that becomes the output tensor; flex's
/// `matmul` zero-fills a byte buffer and copies it into an aligned one first, two extra passes
/// over every output (docs/performance.md). `None` elsewhere.
pub fn matmul_2d<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    let ([rows, k], [k2, cols]) = (x.dims(), w.dims());
    if k != k2 || rows == 0 || cols == 0 || k == 0 || !all_f32(&[x.dtype(), w.dtype()]) {
        return None;
    }
    flex_ops::matmul_2d(x, w)
}

/// Products at least this large (`rows k cols`) use both cores, as flex's own `matmul` does.
const PARALLEL_GEMM: usize = 192 * 192 * 192;

/// `a b` into a new row-major buffer, on all cores when large enough.
pub(crate) fn matmul_host(a: Strided, b: Strided) -> Vec<f32> {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
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
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.data.as_ptr(),
            a.col as isize,
            a.row as isize,
            b.data.as_ptr(),
            b.col as isize,
            b.row as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
        out.set_len(m * n);
    }
    out
}

/// A read-only strided matrix over a slice: element `(i, j)` is `data[i * row + j * col]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Strided<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row: usize,
    col: usize,
}

impl<'a> Strided<'a> {
    /// `rows x cols`, row-major and contiguous.
    pub(crate) fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::with_strides(data, rows, cols, cols, 1)
    }

    /// `rows x cols` with rows `row` apart and columns `col` apart.
    pub(crate) fn with_strides(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row: usize,
        col: usize,
    ) -> Self {
        let last = (rows.max(1) - 1) * row + (cols.max(1) - 1) * col;
        assert!(
            rows == 0 || cols == 0 || last < data.len(),
            "strided view out of bounds"
        );
        Self {
            data,
            rows,
            cols,
            row,
            col,
        }
    }

    /// `[rows, cols]`.
    pub(crate) fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Appends row `i` to `out`.
    pub(crate) fn push_row(&self, i: usize, out: &mut Vec<f32>) {
        let first = i * self.row;
        if self.col == 1 {
            out.extend_from_slice(&self.data[first..first + self.cols]);
        } else {
            out.extend((0..self.cols).map(|j| self.data[first + j * self.col]));
        }
    }

    /// The transpose (a view, nothing moves).
    pub(crate) fn transposed(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row: self.col,
            col: self.row,
            ..self
        }
    }
}

/// `dst <- scale * a b` on one thread, `dst` row-major with rows `dst_row` apart.
pub(crate) fn gemm_into(dst: &mut [f32], dst_row: usize, a: Strided, b: Strided, scale: f32) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    let (m, n) = (a.rows, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * dst_row + n <= dst.len(),
        "gemm output out of bounds"
    );
    if a.cols == 0 {
        for i in 0..m {
            dst[i * dst_row..i * dst_row + n].fill(0.0);
        }
        return;
    }
    // SAFETY: `Strided::with_strides` and the assert above keep every element gemm reads or
    // writes inside its slice; `dst` is borrowed mutably, the inputs immutably.
    unsafe {
        gemm::gemm(
            m,
            n,
            a.cols,
            dst.as_mut_ptr(),
            1,
            dst_row as isize,
            false,
            a.data.as_ptr(),
            a.col as isize,
            a.row as isize,
            b.data.as_ptr(),
            b.col as isize,
            b.row as isize,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
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
///
/// Written as three loops without a loop-carried float dependency (the reductions keep eight
/// partial results), so that each vectorises.
fn softmax_in_place(row: &mut [f32]) {
    let max = lanes_reduce(row, f32::NEG_INFINITY, f32::max);
    for x in row.iter_mut() {
        *x = exp_f32(*x - max);
    }
    let inv = 1.0 / lanes_reduce(row, 0.0, |a, b| a + b);
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// `sum_i a_i b_i`, vectorised like [`lanes_reduce`].
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for ((lane, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *lane += x * y;
        }
    }
    for ((lane, &x), &y) in lanes.iter_mut().zip(ca.remainder()).zip(cb.remainder()) {
        *lane += x * y;
    }
    lanes.into_iter().sum()
}

/// Reduces `values` with `op` over eight interleaved partial results, then combines those.
#[inline(always)]
fn lanes_reduce(values: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; 8];
    let mut chunks = values.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = op(*lane, v);
        }
    }
    for (lane, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane = op(*lane, v);
    }
    lanes.into_iter().fold(init, op)
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
    // `2^n` from the bits of `n + 127 + 2^23`, whose low mantissa bits hold `n + 127` (an
    // integer in 1..=254 after the clamp): shifted into the exponent field. Integer ops only,
    // unlike `n as i32`, whose saturating conversion does not vectorise.
    let biased = (n + (127.0 + 8_388_608.0)).to_bits();
    p * f32::from_bits(biased << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{TensorData, Tolerance};

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

    #[test]
    fn argmax_with_confidence_matches_the_tensor_expression() {
        let (batch, n, vocab) = (3, 5, 301);
        let mut logits = sample([batch, n, vocab], 13);
        // A tie in row 0: the first index wins, as with `argmax`.
        logits = logits.slice_assign(
            [0..1, 0..1, 7..8],
            Tensor::full([1, 1, 1], 100.0, &Default::default()),
        );
        logits = logits.slice_assign(
            [0..1, 0..1, 9..10],
            Tensor::full([1, 1, 1], 100.0, &Default::default()),
        );
        let noise: Vec<f32> = sample([batch, n, vocab], 14)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        for noise in [None, Some(noise.as_slice())] {
            let scores = match noise {
                Some(z) => {
                    logits.clone()
                        + Tensor::from_data(
                            TensorData::new(z.to_vec(), [batch, n, vocab]),
                            &Default::default(),
                        )
                }
                None => logits.clone(),
            };
            let x0 = scores.argmax(2);
            let conf = burn::tensor::activation::softmax(logits.clone(), 2)
                .gather(2, x0.clone())
                .reshape([batch * n]);
            let (got_x0, got_conf) =
                argmax_with_confidence(&logits, noise).expect("flex f32 is fused");
            assert_eq!(
                got_x0,
                x0.reshape([batch * n])
                    .into_data()
                    .convert::<i64>()
                    .to_vec::<i64>()
                    .unwrap()
            );
            TensorData::new(got_conf, [batch * n])
                .assert_approx_eq::<f32>(&conf.into_data(), Tolerance::relative(1e-5));
        }
        assert_eq!(argmax_with_confidence(&logits, None).unwrap().0[0], 7);
        assert!(argmax_with_confidence(&logits, Some(&noise[..10])).is_none());
    }

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
        type A = burn::backend::Autodiff<B>;
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
    fn other_dtypes_fall_back_and_autodiff_flex_is_fused() {
        let x = sample([1, 4, 8], 5).reshape([4, 8]).cast(DType::F64);
        let weight = Tensor::<B, 1>::ones([8], &Default::default()).cast(DType::F64);
        assert!(rms_norm_rows(&x, &weight, 1e-5).is_none());
        type A = burn::backend::Autodiff<B>;
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
