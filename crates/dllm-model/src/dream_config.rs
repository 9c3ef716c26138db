//! `DreamConfig`: the Hugging Face `config.json` of a Dream checkpoint (`configuration_dream.py`:
//! Qwen2's keys plus `mask_token_id`), read into the shared [`ModelConfig`] and written back
//! with Dream's keys.

use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::family::Family;

/// The keys of `Dream-org/Dream-v0-Instruct-7B`'s `config.json` this model uses, with the
/// defaults of `configuration_dream.py`; every other key is kept in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DreamConfig {
    /// Hidden size.
    pub hidden_size: usize,
    /// Inner size of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (`null` means `num_attention_heads`).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Vocabulary size (rows of the embedding table, columns of the head).
    pub vocab_size: usize,
    /// MLP activation; only `silu` is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Longest sequence.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Whether the head shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// RoPE base frequency.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// RoPE scaling; only `null` is supported.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Sliding-window attention; only `false` is supported.
    #[serde(default)]
    pub use_sliding_window: bool,
    /// Id of the `[MASK]` token.
    #[serde(default = "default_mask")]
    pub mask_token_id: u32,
    /// Id of the padding token.
    #[serde(default = "default_pad")]
    pub pad_token_id: u32,
    /// Id of the end-of-sequence token (`<|endoftext|>` when absent, as Dream's tokenizer).
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    /// Id of the beginning-of-sequence token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    /// Every other key of the file, written back on save.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_act() -> String {
    "silu".into()
}
fn default_max_positions() -> usize {
    32_768
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_mask() -> u32 {
    151_666
}
fn default_pad() -> u32 {
    151_643
}

/// How [`ModelConfig::validate`]'s field names read in a Dream `config.json`.
pub fn dream_key(field: &str) -> &str {
    match field {
        "d_model" => "hidden_size",
        "n_heads" => "num_attention_heads",
        "n_kv_heads" => "num_key_value_heads",
        "n_layers" => "num_hidden_layers",
        "mlp_hidden_size" => "intermediate_size",
        "embedding_size" => "vocab_size",
        "activation_type" => "hidden_act",
        "weight_tying" => "tie_word_embeddings",
        "max_sequence_length" => "max_position_embeddings",
        other => other,
    }
}

impl DreamConfig {
    /// The shared description of the architecture (`include_qkv_bias` on); the keys
    /// [`ModelConfig`] has no field for (`rope_scaling`, `use_sliding_window`, and the rest) are
    /// kept in its `extra`, so that [`DreamConfig::from_model`] writes the file back.
    pub fn into_model(self) -> ModelConfig {
        let mut extra = self.extra;
        extra.insert("rope_scaling".into(), self.rope_scaling.into());
        extra.insert("use_sliding_window".into(), self.use_sliding_window.into());
        let mut c = ModelConfig::tiny(
            self.hidden_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.intermediate_size,
            self.vocab_size,
            self.mask_token_id,
            self.eos_token_id.unwrap_or(default_pad()),
        );
        c.family = Family::Dream;
        c.n_kv_heads = self.num_key_value_heads;
        c.embedding_size = None;
        c.rope_theta = self.rope_theta;
        c.pad_token_id = self.pad_token_id;
        c.bos_token_id = self.bos_token_id;
        c.rms_norm_eps = self.rms_norm_eps;
        c.weight_tying = self.tie_word_embeddings;
        c.max_sequence_length = self.max_position_embeddings;
        c.activation_type = self.hidden_act;
        c.include_qkv_bias = true;
        c.extra = extra;
        c
    }

    /// Dream's keys for `config`, with its kept `extra` keys.
    pub fn from_model(config: &ModelConfig) -> Self {
        let mut extra = config.extra.clone();
        let rope_scaling = extra.remove("rope_scaling").filter(|v| !v.is_null());
        let use_sliding_window = extra
            .remove("use_sliding_window")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        Self {
            hidden_size: config.d_model,
            intermediate_size: config.mlp_hidden(),
            num_hidden_layers: config.n_layers,
            num_attention_heads: config.n_heads,
            num_key_value_heads: Some(config.num_kv_heads()),
            vocab_size: config.embed_size(),
            hidden_act: config.activation_type.clone(),
            max_position_embeddings: config.max_sequence_length,
            rms_norm_eps: config.rms_norm_eps,
            tie_word_embeddings: config.weight_tying,
            rope_theta: config.rope_theta,
            rope_scaling,
            use_sliding_window,
            mask_token_id: config.mask_token_id,
            pad_token_id: config.pad_token_id,
            eos_token_id: Some(config.eos_token_id),
            bos_token_id: config.bos_token_id,
            extra,
        }
    }
}
