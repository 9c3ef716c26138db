//! `Family`: which released dLLM a checkpoint belongs to, and what that changes
//! (docs/architecture.md, "Model families").
//!
//! Both families run the same transformer — pre-norm blocks of RMSNorm, RoPE attention with
//! grouped-query heads and a SwiGLU MLP, bidirectional, with `[MASK]` tokens denoised — so one
//! [`DiffusionLm`](crate::DiffusionLm) computes either. What differs is listed here:
//!
//! | | LLaDA | Dream |
//! |---|---|---|
//! | `config.json` | `model_type = "llada"`, OLMo keys (`d_model`, `n_heads`, …) | `model_type = "Dream"`, Qwen2 keys (`hidden_size`, …) |
//! | tensor names | `model.transformer.blocks.N.q_proj` … | `model.layers.N.self_attn.q_proj` … |
//! | biases | none | on q/k/v |
//! | logit at position i | predicts token i | predicts token i + 1 (shifted back here) |
//! | left padding | positions counted from 0 at the left edge | positions counted from the first real token |

/// A model family: decides the config keys, the tensor names, the q/k/v biases, whether the
/// head's output is shifted, and how padded rows are positioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    /// `GSAI-ML/LLaDA-8B-*` (`modeling_llada.py`).
    #[default]
    Llada,
    /// `Dream-org/Dream-v0-*-7B` (`modeling_dream.py`, a Qwen2.5 layout).
    Dream,
}

/// The seven linear layers of a LLaDA block, by their checkpoint names, in the order
/// [`Block::linears`](crate::block::Block::linears) lists them (query, key, value, output,
/// gate, up, down).
pub const LLADA_LINEARS: [&str; 7] = [
    "q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out",
];

/// The seven linear layers of a Dream block, by the module names PEFT targets, in the same
/// order as [`LLADA_LINEARS`].
pub const DREAM_LINEARS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

impl Family {
    /// The family a `config.json`'s `model_type` names (`"Dream"` → Dream, anything else →
    /// LLaDA, whose released configs say `"llada"`).
    pub fn from_model_type(model_type: Option<&str>) -> Self {
        match model_type {
            Some(t) if t.eq_ignore_ascii_case("dream") => Self::Dream,
            _ => Self::Llada,
        }
    }

    /// The family's name as users write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Llada => "LLaDA",
            Self::Dream => "Dream",
        }
    }

    /// Short names of the block's linear layers (what LoRA's `target_modules` lists).
    pub fn linear_names(self) -> [&'static str; 7] {
        match self {
            Self::Llada => LLADA_LINEARS,
            Self::Dream => DREAM_LINEARS,
        }
    }

    /// Path of each linear layer inside a block, in [`Self::linear_names`] order.
    pub fn linear_paths(self) -> [&'static str; 7] {
        match self {
            Self::Llada => LLADA_LINEARS,
            Self::Dream => [
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ],
        }
    }

    /// Paths of the norm before attention and the norm before the MLP, inside a block.
    pub fn norm_paths(self) -> [&'static str; 2] {
        match self {
            Self::Llada => ["attn_norm", "ff_norm"],
            Self::Dream => ["input_layernorm", "post_attention_layernorm"],
        }
    }

    /// Name prefix of block `i` (`model.transformer.blocks.i`, `model.layers.i`).
    pub fn block_prefix(self, i: usize) -> String {
        match self {
            Self::Llada => format!("model.transformer.blocks.{i}"),
            Self::Dream => format!("model.layers.{i}"),
        }
    }

    /// Name of the token embedding table.
    pub fn embedding_name(self) -> &'static str {
        match self {
            Self::Llada => "model.transformer.wte.weight",
            Self::Dream => "model.embed_tokens.weight",
        }
    }

    /// Name of the final norm's weight.
    pub fn final_norm_name(self) -> &'static str {
        match self {
            Self::Llada => "model.transformer.ln_f.weight",
            Self::Dream => "model.norm.weight",
        }
    }

    /// Name of the (untied) LM head's weight.
    pub fn head_name(self) -> &'static str {
        match self {
            Self::Llada => "model.transformer.ff_out.weight",
            Self::Dream => "lm_head.weight",
        }
    }

    /// Whether the head's logit at position `i` predicts token `i + 1` (Dream, trained from an
    /// autoregressive model); the model shifts such logits back so that every caller sees the
    /// logit of position `i` predict token `i`, as Dream's sampler does with
    /// `cat(logits[:, :1], logits[:, :-1])`.
    pub fn shifts_logits(self) -> bool {
        self == Self::Dream
    }

    /// Whether a left-padded row's positions count from its first real token (Dream's
    /// `attention_mask.cumsum(-1) - 1`) rather than from the left edge (LLaDA, which passes no
    /// position ids).
    pub fn positions_skip_padding(self) -> bool {
        self == Self::Dream
    }

    /// The position (0..7) of a linear layer named in either family's names: LoRA targets
    /// written for one family reach the same layers of the other (`attn_out` is `o_proj`).
    pub fn linear_index(name: &str) -> Option<usize> {
        LLADA_LINEARS
            .iter()
            .position(|n| *n == name)
            .or_else(|| DREAM_LINEARS.iter().position(|n| *n == name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_each_checkpoint_layout() {
        let d = Family::Dream;
        assert_eq!(
            format!("{}.{}.weight", d.block_prefix(3), d.linear_paths()[3]),
            "model.layers.3.self_attn.o_proj.weight"
        );
        assert_eq!(
            Family::linear_index("attn_out"),
            Family::linear_index("o_proj")
        );
        assert_eq!(Family::linear_index("ff_out"), Some(6));
        assert_eq!(Family::linear_index("down_proj"), Some(6));
        assert_eq!(Family::linear_index("lm_head"), None);
        assert_eq!(Family::from_model_type(Some("Dream")), Family::Dream);
        assert_eq!(Family::from_model_type(Some("llada")), Family::Llada);
        assert_eq!(Family::from_model_type(None), Family::Llada);
    }
}
