//! `ModelConfig`: the Hugging Face `config.json` of a LLaDA or Dream checkpoint
//! (docs/algorithm.md §1). LLaDA's keys are the fields; a Dream file (`model_type = "Dream"`) is
//! read through [`DreamConfig`] and written back with its own keys.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dream_config::{dream_key, DreamConfig};
use crate::error::{ModelError, Result};
use crate::family::Family;

/// The architecture of a model, named by the real keys of `GSAI-ML/LLaDA-8B-Instruct`'s
/// `config.json` (a Dream config is translated, [`DreamConfig`]). Keys we do not use are kept in
/// `extra` and written back on save.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The family of the checkpoint (from `model_type`): names, biases, logit shift.
    #[serde(skip)]
    pub family: Family,
    /// Hidden size.
    pub d_model: usize,
    /// Number of attention (query) heads.
    pub n_heads: usize,
    /// Number of key/value heads (`null` means `n_heads`); fewer gives grouped-query attention.
    #[serde(default)]
    pub n_kv_heads: Option<usize>,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Inner size of the SwiGLU MLP (`null` means `mlp_ratio * d_model`).
    #[serde(default)]
    pub mlp_hidden_size: Option<usize>,
    /// MLP ratio used when `mlp_hidden_size` is absent.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: usize,
    /// Size of the tokenizer's vocabulary.
    pub vocab_size: usize,
    /// Rows of the embedding matrix and columns of the LM head (`null` means `vocab_size`).
    #[serde(default)]
    pub embedding_size: Option<usize>,
    /// RoPE base frequency.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Id of the `[MASK]` token the diffusion model denoises.
    pub mask_token_id: u32,
    /// Id of the end-of-sequence token.
    pub eos_token_id: u32,
    /// Id of the padding token.
    pub pad_token_id: u32,
    /// Id of the beginning-of-sequence token, when the config states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Whether the LM head shares the input embedding matrix.
    #[serde(default)]
    pub weight_tying: bool,
    /// Longest sequence the model was trained for.
    #[serde(default = "default_max_seq")]
    pub max_sequence_length: usize,
    /// Block architecture; only `llama` is supported.
    #[serde(default = "default_block_type")]
    pub block_type: String,
    /// Normalisation; only `rms` is supported.
    #[serde(default = "default_norm")]
    pub layer_norm_type: String,
    /// MLP activation; only `silu` is supported.
    #[serde(default = "default_act")]
    pub activation_type: String,
    /// Rotary position embeddings; must be `true`.
    #[serde(default = "default_true")]
    pub rope: bool,
    /// ALiBi biases; must be `false`.
    #[serde(default)]
    pub alibi: bool,
    /// Biases in linear layers; must be `false`.
    #[serde(default)]
    pub include_bias: bool,
    /// Biases in the q/k/v projections; `true` only for Dream.
    #[serde(default)]
    pub include_qkv_bias: bool,
    /// Norms on q and k; must be `false`.
    #[serde(default)]
    pub attention_layer_norm: bool,
    /// Logit scaling; must be `false`.
    #[serde(default)]
    pub scale_logits: bool,
    /// Norm on the input embeddings; must be `false`.
    #[serde(default)]
    pub input_emb_norm: bool,
    /// Multi-query attention flag of the OLMo lineage (`true` means one KV head).
    #[serde(default)]
    pub multi_query_attention: Option<bool>,
    /// Every other key of the file, kept so that a saved config round-trips.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_mlp_ratio() -> usize {
    4
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_eps() -> f64 {
    1e-5
}
fn default_max_seq() -> usize {
    4096
}
fn default_block_type() -> String {
    "llama".into()
}
fn default_norm() -> String {
    "rms".into()
}
fn default_act() -> String {
    "silu".into()
}
fn default_true() -> bool {
    true
}

/// The most parameters a config may imply (10 trillion, beyond any released dLLM): larger
/// values are corrupt configs, refused before anything is allocated.
pub const MAX_PARAMETERS: u128 = 10_000_000_000_000;

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = crate::text_file::read_text(path)?;
        Self::from_json_str(&text, path)
    }

    /// Parses and validates a config from JSON text; `path` only names the source in errors.
    pub fn from_json_str(text: &str, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let json = |source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        };
        let value: serde_json::Value = serde_json::from_str(text).map_err(json)?;
        let model_type = value.get("model_type").and_then(|v| v.as_str());
        if let Some(t) = model_type
            .filter(|t| !t.eq_ignore_ascii_case("llada") && !t.eq_ignore_ascii_case("dream"))
        {
            return Err(ModelError::config(
                path,
                "model_type",
                format!("`{t}` is not a model this loads (LLaDA: `llada`, Dream: `Dream`)"),
            ));
        }
        let config: Self = match Family::from_model_type(model_type) {
            Family::Llada => serde_json::from_value(value).map_err(json)?,
            Family::Dream => serde_json::from_value::<DreamConfig>(value)
                .map_err(json)?
                .into_model(),
        };
        config.validate(path)?;
        Ok(config)
    }

    /// A small LLaDA-layout config, used for built-in demos and tests.
    #[allow(clippy::too_many_arguments)]
    pub fn tiny(
        d_model: usize,
        n_layers: usize,
        n_heads: usize,
        mlp_hidden_size: usize,
        vocab_size: usize,
        mask_token_id: u32,
        eos_token_id: u32,
    ) -> Self {
        let mut extra = serde_json::Map::new();
        extra.insert("model_type".into(), "llada".into());
        extra.insert("architectures".into(), serde_json::json!(["LLaDAModelLM"]));
        Self {
            family: Family::Llada,
            d_model,
            n_heads,
            n_kv_heads: Some(n_heads),
            n_layers,
            mlp_hidden_size: Some(mlp_hidden_size),
            mlp_ratio: 4,
            vocab_size,
            embedding_size: Some(vocab_size),
            rope_theta: 500_000.0,
            mask_token_id,
            eos_token_id,
            pad_token_id: eos_token_id,
            bos_token_id: None,
            rms_norm_eps: 1e-5,
            weight_tying: false,
            max_sequence_length: 4096,
            block_type: default_block_type(),
            layer_norm_type: default_norm(),
            activation_type: default_act(),
            rope: true,
            alibi: false,
            include_bias: false,
            include_qkv_bias: false,
            attention_layer_norm: false,
            scale_logits: false,
            input_emb_norm: false,
            multi_query_attention: None,
            extra,
        }
    }

    /// Refuses configurations this implementation does not compute exactly.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let key = |field: &'static str| match self.family {
            Family::Llada => field,
            Family::Dream => dream_key(field),
        };
        let bad = |field: &'static str, message: String| {
            Err(ModelError::config(path, key(field), message))
        };
        let must_be = |field: &'static str, value: &str, want: &str| -> Result<()> {
            if value == want {
                Ok(())
            } else {
                Err(ModelError::config(
                    path,
                    key(field),
                    format!("unsupported value `{value}` (only `{want}` is supported)"),
                ))
            }
        };
        must_be("block_type", &self.block_type, "llama")?;
        must_be("layer_norm_type", &self.layer_norm_type, "rms")?;
        must_be("activation_type", &self.activation_type, "silu")?;
        for (field, on) in [
            ("alibi", self.alibi),
            ("include_bias", self.include_bias),
            (
                "include_qkv_bias",
                self.include_qkv_bias && self.family != Family::Dream,
            ),
            ("attention_layer_norm", self.attention_layer_norm),
            ("scale_logits", self.scale_logits),
            ("input_emb_norm", self.input_emb_norm),
        ] {
            if on {
                return bad(field, "`true` is not supported".into());
            }
        }
        if self.family == Family::Llada {
            // OLMo-style switches of LLaDA's modeling code that change what a block computes:
            // each must be absent, `null`, or the value this computes.
            for (key, computed, meaning) in [
                ("clip_qkv", serde_json::Value::Null, "no clipping"),
                ("layer_norm_with_affine", true.into(), "norms with weights"),
                ("bias_for_layer_norm", false.into(), "norms without biases"),
            ] {
                if let Some(v) = self
                    .extra
                    .get(key)
                    .filter(|v| !v.is_null() && **v != computed)
                {
                    return Err(ModelError::config(
                        path,
                        key,
                        format!("{v} is not supported (only `{computed}`: {meaning})"),
                    ));
                }
            }
        }
        if self.family == Family::Dream {
            if self.extra.get("rope_scaling").is_some_and(|v| !v.is_null()) {
                return bad("rope_scaling", "only `null` is supported".into());
            }
            if self.extra.get("use_sliding_window") == Some(&serde_json::Value::Bool(true)) {
                return bad("use_sliding_window", "`true` is not supported".into());
            }
        }
        if !self.rope {
            return bad(
                "rope",
                "models without rotary embeddings are not supported".into(),
            );
        }
        for (field, v) in [
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("n_layers", self.n_layers),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 {
                return bad(field, "must be positive".into());
            }
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return bad(
                "n_heads",
                format!(
                    "d_model {} is not divisible by n_heads {}",
                    self.d_model, self.n_heads
                ),
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(
                "n_heads",
                format!("head dim {} must be even for RoPE", self.head_dim()),
            );
        }
        let kv = self.num_kv_heads();
        if kv == 0 || !self.n_heads.is_multiple_of(kv) {
            return bad(
                "n_kv_heads",
                format!("{kv} does not divide n_heads {}", self.n_heads),
            );
        }
        if self.mlp_hidden() == 0 {
            return bad("mlp_hidden_size", "must be positive".into());
        }
        if self.embed_size() < self.vocab_size {
            return bad(
                "embedding_size",
                format!(
                    "{} is smaller than vocab_size {}",
                    self.embed_size(),
                    self.vocab_size
                ),
            );
        }
        for (field, id) in [
            ("mask_token_id", self.mask_token_id),
            ("eos_token_id", self.eos_token_id),
            ("pad_token_id", self.pad_token_id),
        ] {
            if id as usize >= self.embed_size() {
                return bad(
                    field,
                    format!(
                        "id {id} is outside the embedding table ({})",
                        self.embed_size()
                    ),
                );
            }
        }
        // The mask token must be a token of its own: a mask id shared with EOS or BOS would
        // make every generated end-of-text (or the prompt's start) read as a masked position.
        for (field, other) in [
            ("eos_token_id", Some(self.eos_token_id)),
            ("bos_token_id", self.bos_token_id),
        ] {
            if other == Some(self.mask_token_id) {
                return bad(
                    "mask_token_id",
                    format!(
                        "{} is also the `{field}`: the mask token must be its own token",
                        self.mask_token_id
                    ),
                );
            }
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return bad("rope_theta", "must be positive".into());
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            return bad("rms_norm_eps", "must be in (0, 1)".into());
        }
        if self.max_sequence_length == 0 {
            return bad("max_sequence_length", "must be positive".into());
        }
        // Sizes are multiplied together below and when allocating: bound the product first.
        let params = self.num_params_u128();
        if params > MAX_PARAMETERS {
            return bad(
                "n_layers",
                format!(
                    "the config implies {params} parameters (n_layers {}, d_model {}, \
                     mlp hidden {}, embedding {}), more than any model this loads \
                     ({MAX_PARAMETERS})",
                    self.n_layers,
                    self.d_model,
                    self.mlp_hidden(),
                    self.embed_size()
                ),
            );
        }
        Ok(())
    }

    /// Dimension of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model.checked_div(self.n_heads).unwrap_or(0)
    }

    /// Number of key/value heads actually used.
    pub fn num_kv_heads(&self) -> usize {
        match (self.multi_query_attention, self.n_kv_heads) {
            (Some(true), _) => 1,
            (_, Some(n)) => n,
            _ => self.n_heads,
        }
    }

    /// Inner MLP size actually used.
    pub fn mlp_hidden(&self) -> usize {
        self.mlp_hidden_size
            .unwrap_or(self.mlp_ratio.saturating_mul(self.d_model))
    }

    /// `[in, out]` of a block's linear layer by either family's name (`q_proj`, `attn_out` or
    /// `o_proj`, `ff_proj` or `gate_proj`, …); `None` for a name that is not one.
    pub fn linear_dims(&self, name: &str) -> Option<[usize; 2]> {
        let (d, h, kv) = (
            self.d_model,
            self.mlp_hidden(),
            self.num_kv_heads() * self.head_dim(),
        );
        Some(match crate::Family::linear_index(name)? {
            0 | 3 => [d, d],
            1 | 2 => [d, kv],
            4 | 5 => [d, h],
            _ => [h, d],
        })
    }

    /// Rows of the embedding table (and columns of the logits).
    pub fn embed_size(&self) -> usize {
        self.embedding_size.unwrap_or(self.vocab_size)
    }

    /// Number of parameters of the base model.
    pub fn num_params(&self) -> usize {
        usize::try_from(self.num_params_u128()).unwrap_or(usize::MAX)
    }

    /// [`Self::num_params`] without overflow, for any config (validated or not).
    pub fn num_params_u128(&self) -> u128 {
        let d = self.d_model as u128;
        let kv = (self.num_kv_heads() as u128) * (self.head_dim() as u128);
        let mlp = self.mlp_hidden() as u128;
        let embed = self.embed_size() as u128;
        let bias = if self.include_qkv_bias { d + 2 * kv } else { 0 };
        let per_block = 2 * d + d * d * 2 + 2 * d * kv + 3 * d * mlp + bias;
        let head = if self.weight_tying { 0 } else { embed * d };
        embed * d + (self.n_layers as u128) * per_block + d + head
    }

    /// Writes the config as pretty JSON.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = match self.family {
            Family::Llada => serde_json::to_string_pretty(self),
            Family::Dream => serde_json::to_string_pretty(&DreamConfig::from_model(self)),
        }
        .map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        std::fs::write(path, text).map_err(|e| ModelError::io(path, e))
    }
}

/// The path of `config.json` in a model directory.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}
