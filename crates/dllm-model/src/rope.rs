//! Rotary position embeddings in the rotate-half convention (docs/algorithm.md §1; BURN_NOTES: burn's own
//! `RotaryEncoding` pairs adjacent channels, LLaDA pairs channel `i` with `i + head_dim/2`).

use std::sync::Arc;

use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::ops::rope_heads_first;

/// Cosine and signed-sine tables for a run of positions, laid out `[1, len * heads * head_dim]`
/// (or one row per batch row, [`RopeTables::for_rows`]) to match a `[batch, len, heads,
/// head_dim]` tensor viewed as `[batch, len * heads * head_dim]`.
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    /// `cos(pos * inv_freq)`, repeated over the two halves of each head.
    pub cos: Tensor<B, 2>,
    /// `-sin` on the first half of each head and `+sin` on the second, so that
    /// `rotate_half(x) * sin == swap_halves(x) * signed_sin`.
    pub signed_sin: Tensor<B, 2>,
    /// Heads the tables were tiled for.
    pub heads: usize,
    /// Channels per head.
    pub head_dim: usize,
    /// Host copies of `cos` and `signed_sin` for the fused CPU kernel (`crate::ops`).
    host: Arc<(Vec<f32>, Vec<f32>)>,
}

impl<B: Backend> RopeTables<B> {
    /// Tables for positions `start..start + len` and `heads` heads, computed in f32 exactly as
    /// the reference: `inv_freq_j = 1 / theta^(2j / head_dim)`, angle = `pos * inv_freq_j`.
    pub fn new(
        theta: f64,
        head_dim: usize,
        heads: usize,
        start: usize,
        len: usize,
        device: &B::Device,
    ) -> Self {
        let positions: Vec<usize> = (start..start + len).collect();
        Self::for_rows(theta, head_dim, heads, &[positions], device)
    }

    /// Tables for explicit positions, one list per row (all of one length), laid out
    /// `[rows, len * heads * head_dim]`; one row broadcasts over the batch.
    pub fn for_rows(
        theta: f64,
        head_dim: usize,
        heads: usize,
        rows: &[Vec<usize>],
        device: &B::Device,
    ) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|j| 1.0 / (theta as f32).powf((2 * j) as f32 / head_dim as f32))
            .collect();
        let len = rows.first().map_or(0, Vec::len);
        let n = len * heads * head_dim;
        let mut cos = Vec::with_capacity(n * rows.len());
        let mut sin = Vec::with_capacity(n * rows.len());
        for &p in rows.iter().flatten() {
            let angles: Vec<f32> = inv_freq.iter().map(|f| p as f32 * f).collect();
            for _ in 0..heads {
                for (sign, _) in [(-1.0f32, 0), (1.0, 1)] {
                    for a in &angles {
                        cos.push(a.cos());
                        sin.push(sign * a.sin());
                    }
                }
            }
        }
        let shape = [rows.len(), n];
        Self {
            cos: Tensor::from_data(TensorData::new(cos.clone(), shape), device),
            signed_sin: Tensor::from_data(TensorData::new(sin.clone(), shape), device),
            heads,
            head_dim,
            host: Arc::new((cos, sin)),
        }
    }

    /// Rotates `x` `[batch, len, heads, head_dim]`: `x * cos + rotate_half(x) * sin`, where
    /// `rotate_half([x1, x2]) = [-x2, x1]` within each head.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, t, h, hd] = x.dims();
        let half = hd / 2;
        let dtype = x.dtype();
        let swapped = Tensor::cat(
            vec![
                x.clone().narrow(3, half, half),
                x.clone().narrow(3, 0, half),
            ],
            3,
        );
        let n = t * h * hd;
        let out = x.reshape([b, n]) * self.cos.clone().cast(dtype)
            + swapped.reshape([b, n]) * self.signed_sin.clone().cast(dtype);
        out.reshape([b, t, h, hd])
    }

    /// [`apply`](Self::apply), then heads moved before positions: `[batch, heads, len, head_dim]`,
    /// as attention consumes it. On flex in f32 one fused pass writes the result in that layout.
    pub fn apply_heads_first(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match rope_heads_first(&x, &self.host.0, &self.host.1) {
            Some(out) => out,
            None => self.apply(x).swap_dims(1, 2),
        }
    }
}
