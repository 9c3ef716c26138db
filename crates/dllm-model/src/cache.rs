//! Key/value cache for Fast-dLLM style decoding (docs/algorithm.md §2: prefix and dual cache).
//!
//! A full forward pass records every layer's keys and values (after RoPE) for the whole
//! sequence. A later pass over a span `[start, end)` recomputes keys and values only for that
//! span and reads all other positions from the cache. With a prefix cache the span is
//! `[block_start, len)`; with a dual cache it is the current block only.

use burn::tensor::{backend::Backend, Tensor};

/// Keys and values of one layer, each `[batch, kv_heads, len, head_dim]`.
#[derive(Debug, Clone)]
pub struct LayerKv<B: Backend> {
    /// Rotated keys.
    pub k: Tensor<B, 4>,
    /// Values.
    pub v: Tensor<B, 4>,
}

/// Keys and values of every layer for a whole sequence.
#[derive(Debug, Clone, Default)]
pub struct KvCache<B: Backend> {
    /// One entry per transformer block.
    pub layers: Vec<LayerKv<B>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache, filled by [`crate::DiffusionLm::forward_fill_cache`].
    pub fn new() -> Self {
        Self { layers: Vec::new() }
    }

    /// Sequence length the cache covers (0 when empty).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.k.dims()[2])
    }

    /// Whether the cache holds nothing yet.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

/// How a forward pass uses the cache.
pub(crate) enum CacheUse<'a, B: Backend> {
    /// No cache.
    None,
    /// Record every layer's keys and values.
    Fill(&'a mut KvCache<B>),
    /// The input is the span starting at `start`; other positions come from the cache.
    Read(&'a KvCache<B>, usize),
    /// The input is a shadow of the span starting at `start` (WINO): its tokens sit at the
    /// span's positions and attend to every cached position but their own counterpart, and to
    /// each other; nothing attends to them.
    Shadow(&'a KvCache<B>, usize),
}

/// Splices freshly computed `[start, start + span)` entries into cached ones along dim 2.
pub(crate) fn splice<B: Backend>(
    cached: &Tensor<B, 4>,
    fresh: Tensor<B, 4>,
    start: usize,
) -> Tensor<B, 4> {
    if let Some(out) = crate::ops::splice_positions(cached, &fresh, start) {
        return out;
    }
    let total = cached.dims()[2];
    let span = fresh.dims()[2];
    let mut parts = Vec::with_capacity(3);
    if start > 0 {
        parts.push(cached.clone().narrow(2, 0, start));
    }
    parts.push(fresh);
    if start + span < total {
        parts.push(cached.clone().narrow(2, start + span, total - start - span));
    }
    if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        Tensor::cat(parts, 2)
    }
}
