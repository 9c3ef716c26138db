//! One transformer block of either family (docs/algorithm.md §1): pre-norm attention and SwiGLU MLP, both residual.

use burn::module::Module;
use burn::tensor::{activation::silu, backend::Backend, Bool, Tensor};

use crate::attention::Attention;
use crate::cache::CacheUse;
use crate::config::ModelConfig;
use crate::family::Family;
use crate::linear::Linear;
use crate::norm::RmsNorm;
use crate::ops::swiglu;
use crate::params::ParamSource;
use crate::rope::RopeTables;

/// `x += attn(attn_norm(x))`; `x += ff_out(silu(ff_proj(m)) * up_proj(m))`, `m = ff_norm(x)`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// Norm before attention.
    pub attn_norm: RmsNorm<B>,
    /// Self-attention.
    pub attn: Attention<B>,
    /// Norm before the MLP.
    pub ff_norm: RmsNorm<B>,
    /// Gate projection `[d, hidden]`.
    pub ff_proj: Linear<B>,
    /// Up projection `[d, hidden]`.
    pub up_proj: Linear<B>,
    /// Down projection `[hidden, d]`.
    pub ff_out: Linear<B>,
    /// Whose names the layers carry.
    #[module(skip)]
    pub family: Family,
}

impl<B: Backend> Block<B> {
    /// The block named `name` (`model.transformer.blocks.{i}`, `model.layers.{i}`) for `config`,
    /// from `source`: the attention norm, the attention, the MLP norm, then the gate, up and down
    /// projections, by the family's names.
    pub fn build<S: ParamSource<B> + ?Sized>(
        config: &ModelConfig,
        name: &str,
        source: &mut S,
    ) -> Result<Self, S::Error> {
        let d = config.d_model;
        let hidden = config.mlp_hidden();
        let eps = config.rms_norm_eps;
        let family = config.family;
        let [attn_norm, ff_norm] = family.norm_paths();
        let [.., gate, up, down] = family.linear_paths();
        Ok(Self {
            attn_norm: RmsNorm::build(&format!("{name}.{attn_norm}"), d, eps, source)?,
            attn: Attention::build(config, name, source)?,
            ff_norm: RmsNorm::build(&format!("{name}.{ff_norm}"), d, eps, source)?,
            ff_proj: Linear::build(&format!("{name}.{gate}"), d, hidden, source)?,
            up_proj: Linear::build(&format!("{name}.{up}"), d, hidden, source)?,
            ff_out: Linear::build(&format!("{name}.{down}"), hidden, d, source)?,
            family,
        })
    }

    /// Applies the block to `x` `[batch, len, d]`.
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &(RopeTables<B>, RopeTables<B>),
        key_padding: Option<&Tensor<B, 2, Bool>>,
        cache: &mut CacheUse<'_, B>,
        layer: usize,
        adapter: bool,
    ) -> Tensor<B, 3> {
        let h = self.attn_norm.forward(x.clone());
        let x = x + self
            .attn
            .forward(h, rope, key_padding, cache, layer, adapter);
        let m = self.ff_norm.forward(x.clone());
        let gate = self.ff_proj.forward(m.clone(), adapter);
        let up = self.up_proj.forward(m, adapter);
        let hidden = swiglu(&gate, &up).unwrap_or_else(|| silu(gate) * up);
        x + self.ff_out.forward(hidden, adapter)
    }

    /// The seven linear layers with their family's short names
    /// ([`Family::linear_names`]), in checkpoint order.
    pub fn linears(&self) -> [(&'static str, &Linear<B>); 7] {
        let [q, k, v, o, gate, up, down] = self.family.linear_names();
        [
            (q, &self.attn.q_proj),
            (k, &self.attn.k_proj),
            (v, &self.attn.v_proj),
            (o, &self.attn.attn_out),
            (gate, &self.ff_proj),
            (up, &self.up_proj),
            (down, &self.ff_out),
        ]
    }

    /// Mutable access to the seven linear layers.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut Linear<B>); 7] {
        let [q, k, v, o, gate, up, down] = self.family.linear_names();
        [
            (q, &mut self.attn.q_proj),
            (k, &mut self.attn.k_proj),
            (v, &mut self.attn.v_proj),
            (o, &mut self.attn.attn_out),
            (gate, &mut self.ff_proj),
            (up, &mut self.up_proj),
            (down, &mut self.ff_out),
        ]
    }
}
