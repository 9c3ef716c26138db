//! Bidirectional multi-head attention with grouped-query support (docs/algorithm.md §1).

use burn::module::Module;
use burn::tensor::{
    activation::softmax, backend::Backend, module::attention, ops::AttentionModuleOptions, Bool,
    Tensor, TensorData,
};

use crate::cache::{splice, CacheUse, LayerKv};
use crate::config::ModelConfig;
use crate::linear::Linear;
use crate::ops::attention_rows;
use crate::params::ParamSource;
use crate::rope::RopeTables;

/// The attention of both families: `attn_out(softmax(q k^T / sqrt(hd)) v)` with RoPE on `q` and `k`,
/// no causal mask, and `n_heads / n_kv_heads` query heads sharing each key/value head.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query projection `[d, n_heads * hd]`.
    pub q_proj: Linear<B>,
    /// Key projection `[d, n_kv_heads * hd]`.
    pub k_proj: Linear<B>,
    /// Value projection `[d, n_kv_heads * hd]`.
    pub v_proj: Linear<B>,
    /// Output projection `[n_heads * hd, d]`.
    pub attn_out: Linear<B>,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads.
    pub n_kv_heads: usize,
    /// Channels per head.
    pub head_dim: usize,
}

impl<B: Backend> Attention<B> {
    /// The attention of the block named `block` for `config`, from `source`: the query, key,
    /// value (with their biases when `include_qkv_bias`) and output projections, by the
    /// family's names (`{block}.q_proj`, … for LLaDA; `{block}.self_attn.q_proj`, … for Dream).
    pub fn build<S: ParamSource<B> + ?Sized>(
        config: &ModelConfig,
        block: &str,
        source: &mut S,
    ) -> Result<Self, S::Error> {
        let d = config.d_model;
        let hd = config.head_dim();
        let kv = config.num_kv_heads() * hd;
        let [q, k, v, o, ..] = config.family.linear_paths();
        let mut qkv = |path: &str, d_out: usize| {
            let name = format!("{block}.{path}");
            if config.include_qkv_bias {
                Linear::build_with_bias(&name, d, d_out, source)
            } else {
                Linear::build(&name, d, d_out, source)
            }
        };
        let (q_proj, k_proj, v_proj) = (qkv(q, d)?, qkv(k, kv)?, qkv(v, kv)?);
        Ok(Self {
            q_proj,
            k_proj,
            v_proj,
            attn_out: Linear::build(&format!("{block}.{o}"), d, d, source)?,
            n_heads: config.n_heads,
            n_kv_heads: config.num_kv_heads(),
            head_dim: hd,
        })
    }

    /// Attends from the tokens of `x` (`[batch, len, d]`) to every key position.
    ///
    /// `key_padding` (`[batch, total_len]`, true = padding) hides keys; `None` reproduces the
    /// reference, which attends to padding.
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &(RopeTables<B>, RopeTables<B>),
        key_padding: Option<&Tensor<B, 2, Bool>>,
        cache: &mut CacheUse<'_, B>,
        layer: usize,
        adapter: bool,
    ) -> Tensor<B, 3> {
        let [batch, len, _] = x.dims();
        // [batch, len, heads, head_dim]; RoPE is applied before moving heads forward.
        let split = |t: Tensor<B, 3>, n: usize| t.reshape([batch, len, n, self.head_dim]);
        let q = rope
            .0
            .apply_heads_first(split(self.q_proj.forward(x.clone(), adapter), self.n_heads));
        let k = rope.1.apply_heads_first(split(
            self.k_proj.forward(x.clone(), adapter),
            self.n_kv_heads,
        ));
        let v = split(self.v_proj.forward(x, adapter), self.n_kv_heads).swap_dims(1, 2);

        let (k, v) = match cache {
            CacheUse::None => (k, v),
            CacheUse::Fill(c) => {
                c.layers.push(LayerKv {
                    k: k.clone(),
                    v: v.clone(),
                });
                (k, v)
            }
            CacheUse::Read(c, start) => {
                let entry = &c.layers[layer];
                (splice(&entry.k, k, *start), splice(&entry.v, v, *start))
            }
            CacheUse::Shadow(c, _) => {
                let entry = &c.layers[layer];
                (
                    Tensor::cat(vec![entry.k.clone(), k], 2),
                    Tensor::cat(vec![entry.v.clone(), v], 2),
                )
            }
        };
        let k = self.repeat_kv(k);
        let v = self.repeat_kv(v);
        let total = k.dims()[2];

        let mask = match cache {
            CacheUse::Shadow(_, start) => Some(shadow_mask::<B>(
                key_padding,
                *start,
                [batch, self.n_heads, len, total],
                &q.device(),
            )),
            _ => {
                if let Some(out) = attention_rows(&q, &k, &v, key_padding) {
                    return self.attn_out.forward(out, adapter);
                }
                key_padding.map(|m| {
                    m.clone().reshape([batch, 1, 1, total]).expand([
                        batch,
                        self.n_heads,
                        len,
                        total,
                    ])
                })
            }
        };
        let out = if decomposed_attention_is_faster::<B>(&q.device()) {
            scaled_dot_product_attention(q, k, v, mask, self.head_dim)
        } else {
            attention(q, k, v, mask, None, AttentionModuleOptions::default())
        };
        let out = out
            .swap_dims(1, 2)
            .reshape([batch, len, self.n_heads * self.head_dim]);
        self.attn_out.forward(out, adapter)
    }

    /// Repeats each key/value head for its group of query heads (`repeat_interleave`).
    fn repeat_kv(&self, t: Tensor<B, 4>) -> Tensor<B, 4> {
        let groups = self.n_heads / self.n_kv_heads;
        if groups == 1 {
            return t;
        }
        let [b, kv, len, hd] = t.dims();
        t.unsqueeze_dim::<5>(2)
            .expand([b, kv, groups, len, hd])
            .reshape([b, kv * groups, len, hd])
    }
}

/// The keys a shadow span hides, `[batch, heads, len, total]` (true = hidden): query `i` of the
/// span at `start` does not see the sequence's position `start + i` (the token it stands in
/// for), nor padded keys of the sequence (`key_padding`, `[batch, total - len]`); the span's own
/// keys, the last `len`, are all visible.
fn shadow_mask<B: Backend>(
    key_padding: Option<&Tensor<B, 2, Bool>>,
    start: usize,
    [batch, heads, len, total]: [usize; 4],
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let main = total - len;
    let padding: Vec<bool> = match key_padding {
        Some(m) => m.to_data().iter::<bool>().collect(),
        None => vec![false; batch * main],
    };
    let mut hidden = vec![false; batch * len * total];
    for b in 0..batch {
        for i in 0..len {
            let row = &mut hidden[(b * len + i) * total..(b * len + i + 1) * total];
            row[..main].copy_from_slice(&padding[b * main..(b + 1) * main]);
            row[start + i] = true;
        }
    }
    Tensor::<B, 3, Bool>::from_data(TensorData::new(hidden, [batch, len, total]), device)
        .unsqueeze_dim::<4>(1)
        .expand([batch, heads, len, total])
}

/// Whether to spell attention out as matmul, softmax, matmul rather than call the backend's
/// fused op. flex's fused op walks the (batch, head) pairs on one thread, while its batched
/// matmul and elementwise ops use every core: on the bench model the decomposed form makes the
/// forward pass ~20% faster (docs/performance.md). GPU backends keep their fused kernels, and
/// autodiff backends decompose the op themselves.
fn decomposed_attention_is_faster<B: Backend>(device: &B::Device) -> bool {
    B::name(device) == "flex"
}

/// `softmax(q k^T / sqrt(head_dim), masked) v` over `[batch, heads, len, head_dim]`, with
/// `mask` true where a key must not be attended (the semantics of burn's `attention`).
fn scaled_dot_product_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    head_dim: usize,
) -> Tensor<B, 4> {
    let scores = q
        .matmul(k.swap_dims(2, 3))
        .mul_scalar((head_dim as f64).powf(-0.5));
    let scores = match mask {
        Some(m) => scores.mask_fill(m, f32::NEG_INFINITY),
        None => scores,
    };
    softmax(scores, 3).matmul(v)
}
