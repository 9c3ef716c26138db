//! Rotary position embeddings in the rotate-half convention (spec §1; BURN_NOTES: burn's own
//! `RotaryEncoding` pairs adjacent channels, LLaDA pairs channel `i` with `i + head_dim/2`).

use burn::tensor::{backend::Backend, Tensor, TensorData};

/// Cosine and sine tables for a run of positions, each `[len, head_dim]`.
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    /// `cos(pos * inv_freq)`, repeated over the two halves.
    pub cos: Tensor<B, 2>,
    /// `sin(pos * inv_freq)`, repeated over the two halves.
    pub sin: Tensor<B, 2>,
}

impl<B: Backend> RopeTables<B> {
    /// Tables for positions `start..start + len`, computed in f32 exactly as the reference:
    /// `inv_freq_j = 1 / theta^(2j / head_dim)`, angle = `pos * inv_freq_j`.
    pub fn new(theta: f64, head_dim: usize, start: usize, len: usize, device: &B::Device) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|j| 1.0 / (theta as f32).powf((2 * j) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(len * head_dim);
        let mut sin = Vec::with_capacity(len * head_dim);
        for p in start..start + len {
            for _ in 0..2 {
                for f in &inv_freq {
                    let angle = p as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        Self {
            cos: Tensor::from_data(TensorData::new(cos, [len, head_dim]), device),
            sin: Tensor::from_data(TensorData::new(sin, [len, head_dim]), device),
        }
    }

    /// Rotates `x` `[batch, heads, len, head_dim]`: `x * cos + rotate_half(x) * sin`, where
    /// `rotate_half([x1, x2]) = [-x2, x1]`.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, _, hd] = x.dims();
        let half = hd / 2;
        let dtype = x.dtype();
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        let cos = self.cos.clone().cast(dtype).unsqueeze::<4>();
        let sin = self.sin.clone().cast(dtype).unsqueeze::<4>();
        x * cos + rotated * sin
    }
}
