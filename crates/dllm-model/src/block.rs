//! One LLaDA transformer block (docs/algorithm.md §1): pre-norm attention and SwiGLU MLP, both residual.

use burn::module::Module;
use burn::tensor::{activation::silu, backend::Backend, Bool, Tensor};

use crate::attention::Attention;
use crate::cache::CacheUse;
use crate::config::LladaConfig;
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
}

impl<B: Backend> Block<B> {
    /// The block named `name` (`model.transformer.blocks.{i}`) for `config`, from `source`:
    /// `attn_norm`, the attention, `ff_norm`, `ff_proj`, `up_proj`, then `ff_out`.
    pub fn build<S: ParamSource<B> + ?Sized>(
        config: &LladaConfig,
        name: &str,
        source: &mut S,
    ) -> Result<Self, S::Error> {
        let d = config.d_model;
        let hidden = config.mlp_hidden();
        let eps = config.rms_norm_eps;
        Ok(Self {
            attn_norm: RmsNorm::build(&format!("{name}.attn_norm"), d, eps, source)?,
            attn: Attention::build(config, name, source)?,
            ff_norm: RmsNorm::build(&format!("{name}.ff_norm"), d, eps, source)?,
            ff_proj: Linear::build(&format!("{name}.ff_proj"), d, hidden, source)?,
            up_proj: Linear::build(&format!("{name}.up_proj"), d, hidden, source)?,
            ff_out: Linear::build(&format!("{name}.ff_out"), hidden, d, source)?,
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

    /// The seven linear layers with their LLaDA names, in checkpoint order.
    pub fn linears(&self) -> [(&'static str, &Linear<B>); 7] {
        [
            ("q_proj", &self.attn.q_proj),
            ("k_proj", &self.attn.k_proj),
            ("v_proj", &self.attn.v_proj),
            ("attn_out", &self.attn.attn_out),
            ("ff_proj", &self.ff_proj),
            ("up_proj", &self.up_proj),
            ("ff_out", &self.ff_out),
        ]
    }

    /// Mutable access to the seven linear layers.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut Linear<B>); 7] {
        [
            ("q_proj", &mut self.attn.q_proj),
            ("k_proj", &mut self.attn.k_proj),
            ("v_proj", &mut self.attn.v_proj),
            ("attn_out", &mut self.attn.attn_out),
            ("ff_proj", &mut self.ff_proj),
            ("up_proj", &mut self.up_proj),
            ("ff_out", &mut self.ff_out),
        ]
    }
}
