//! LoRA adapters on a block's seven linear layers, saved and loaded in the PEFT layout
//! (`adapter_config.json` + `adapter_model.safetensors`), so adapters move between this
//! toolkit and Python PEFT in both directions (docs/algorithm.md §5).
//!
//! `target_modules` may name the layers in either family's names (LLaDA's `attn_out` is
//! Dream's `o_proj`, `ff_proj` is `gate_proj`, `ff_out` is `down_proj`): a recipe written for
//! one family reaches the same layers of the other. Saved adapters list the model's own names.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::Dropout;
use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::family::{Family, DREAM_LINEARS};
use crate::linear::Lora;
use crate::load::{to_named, write_safetensors};
use crate::model::DiffusionLm;
use crate::weights::{WeightDType, WeightFiles};

/// The seven linear layers of a LLaDA block, by their checkpoint names.
pub const LINEAR_NAMES: [&str; 7] = crate::family::LLADA_LINEARS;

/// LoRA hyperparameters (PEFT's `LoraConfig` fields of the same names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r`.
    pub r: usize,
    /// Scaling numerator: the update is `alpha / r * A B`.
    pub lora_alpha: f64,
    /// Dropout on the adapter's input during training.
    #[serde(default)]
    pub lora_dropout: f64,
    /// Which of [`LINEAR_NAMES`] get an adapter (default: all seven).
    #[serde(default = "all_targets")]
    pub target_modules: Vec<String>,
    /// rsLoRA scaling `alpha / sqrt(r)` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
}

fn all_targets() -> Vec<String> {
    LINEAR_NAMES.iter().map(|s| s.to_string()).collect()
}

impl Default for LoraConfig {
    /// DMPO's LLaDA-8B recipe: r 128, alpha 64, dropout 0.05, all seven linears.
    fn default() -> Self {
        Self {
            r: 128,
            lora_alpha: 64.0,
            lora_dropout: 0.05,
            target_modules: all_targets(),
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    /// Checks rank, dropout and target names; `path` names the source in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        if self.r == 0 {
            return Err(ModelError::config(path, "r", "rank must be positive"));
        }
        if !(self.lora_alpha > 0.0 && self.lora_alpha.is_finite()) {
            return Err(ModelError::config(
                path,
                "lora_alpha",
                "must be positive and finite",
            ));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(ModelError::config(
                path,
                "lora_dropout",
                "must be in [0, 1)",
            ));
        }
        if self.target_modules.is_empty() {
            return Err(ModelError::config(path, "target_modules", "is empty"));
        }
        for t in &self.target_modules {
            if Family::linear_index(t).is_none() {
                return Err(ModelError::config(
                    path,
                    "target_modules",
                    format!(
                        "`{t}` is not a linear layer of a block (expected one of \
                         {LINEAR_NAMES:?} or Dream's {DREAM_LINEARS:?})"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The factor applied to `A B`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// Whether the layer named `name` (either family's name) is a target.
    fn targets(&self, name: &str) -> bool {
        let index = Family::linear_index(name);
        self.target_modules
            .iter()
            .any(|t| index.is_some() && Family::linear_index(t) == index)
    }
}

/// PEFT's key for one adapter matrix of the layer `linear` (the family's short name) of block
/// `block`: `base_model.model.{block prefix}.{layer path}.{matrix}.weight`.
pub fn peft_key(family: Family, block: usize, linear: &str, matrix: &str) -> String {
    let path = Family::linear_index(linear)
        .map(|i| family.linear_paths()[i])
        .unwrap_or(linear);
    format!(
        "base_model.model.{}.{path}.{matrix}.weight",
        family.block_prefix(block)
    )
}

impl<B: Backend> DiffusionLm<B> {
    /// Freezes the base weights and attaches fresh adapters (`B = 0`, so the output is
    /// unchanged) to the configured layers.
    pub fn with_lora(self, config: &LoraConfig, device: &B::Device) -> Result<Self> {
        config.validate(Path::new("<lora config>"))?;
        let mut model = self.no_grad();
        for block in &mut model.blocks {
            for (name, lin) in block.linears_mut() {
                if config.targets(name) {
                    let [d_in, d_out] = lin.dims();
                    if config.r > d_in.min(d_out) {
                        return Err(ModelError::config(
                            Path::new("<lora config>"),
                            "r",
                            format!(
                                "rank {} exceeds the rank of `{name}` ({d_in} x {d_out}): an \
                                 update of that rank cannot be more than min(in, out) = {}",
                                config.r,
                                d_in.min(d_out)
                            ),
                        ));
                    }
                    let mut lora = Lora::init(
                        d_in,
                        d_out,
                        config.r,
                        config.lora_alpha,
                        config.lora_dropout,
                        device,
                    );
                    lora.scale = config.scale();
                    lin.lora = Some(lora);
                }
            }
        }
        Ok(model)
    }

    /// Folds every adapter into its base weight (`W += scale * A B`) and removes it.
    pub fn merge_adapters(mut self) -> Self {
        for block in &mut self.blocks {
            for (_, lin) in block.linears_mut() {
                if let Some(lora) = lin.lora.take() {
                    let weight = lin.weight.val();
                    let merged = weight.clone() + lora.delta().cast(weight.dtype());
                    lin.weight = Param::from_tensor(merged.detach());
                }
            }
        }
        self
    }

    /// The adapter configuration implied by the attached adapters, if any.
    pub fn lora_config(&self) -> Option<LoraConfig> {
        let mut targets = Vec::new();
        let mut found: Option<&Lora<B>> = None;
        for (name, lin) in self.blocks.first()?.linears() {
            if let Some(l) = &lin.lora {
                targets.push(name.to_string());
                found = Some(l);
            }
        }
        let lora = found?;
        let r = lora.rank();
        Some(LoraConfig {
            r,
            lora_alpha: lora.scale * r as f64,
            lora_dropout: lora.dropout.prob,
            target_modules: targets,
            use_rslora: false,
        })
    }

    /// Writes the adapters in the PEFT layout into `dir`.
    pub fn save_adapter(&self, dir: impl AsRef<Path>, base_model: &str) -> Result<()> {
        let dir = dir.as_ref();
        let config = self
            .lora_config()
            .ok_or_else(|| ModelError::Input("the model has no adapter to save".into()))?;
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let mut tensors = Vec::new();
        let family = self.config.family;
        for (i, block) in self.blocks.iter().enumerate() {
            for (name, lin) in block.linears() {
                if let Some(lora) = &lin.lora {
                    tensors.push(to_named(
                        peft_key(family, i, name, "lora_A"),
                        lora.a.val(),
                        true,
                    ));
                    tensors.push(to_named(
                        peft_key(family, i, name, "lora_B"),
                        lora.b.val(),
                        true,
                    ));
                }
            }
        }
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        write_safetensors(&dir.join("adapter_model.safetensors"), &tensors, Some(meta))?;
        let json = serde_json::json!({
            "peft_type": "LORA",
            "task_type": null,
            "base_model_name_or_path": base_model,
            "r": config.r,
            "lora_alpha": config.lora_alpha,
            "lora_dropout": config.lora_dropout,
            "target_modules": config.target_modules,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "use_rslora": false,
            "init_lora_weights": true,
        });
        let text = serde_json::to_string_pretty(&json).expect("serialisable JSON");
        crate::load::write_atomic(&dir.join("adapter_config.json"), text.as_bytes())
    }

    /// Freezes the base and loads PEFT adapters from `dir` (any previous adapters are replaced).
    pub fn load_adapter(self, dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = read_adapter_config(dir)?;
        let file = dir.join("adapter_model.safetensors");
        if !file.is_file() {
            return Err(ModelError::io(
                &file,
                std::io::Error::new(std::io::ErrorKind::NotFound, "adapter weights not found"),
            ));
        }
        let weights = WeightFiles::open_file(&file)?;
        let mut model = self.no_grad();
        // Adapters are f32 whatever the base's dtype (PEFT's `autocast_adapter_dtype`): they
        // are what training updates.
        let (dtype, wdtype) = (burn::tensor::DType::F32, WeightDType::F32);
        let family = model.config.family;
        for (i, block) in model.blocks.iter_mut().enumerate() {
            for (name, lin) in block.linears_mut() {
                lin.lora = None;
                if !config.targets(name) {
                    continue;
                }
                let [d_in, d_out] = lin.dims();
                let a = weights.read(
                    &peft_key(family, i, name, "lora_A"),
                    &[config.r, d_in],
                    wdtype,
                )?;
                let b = weights.read(
                    &peft_key(family, i, name, "lora_B"),
                    &[d_out, config.r],
                    wdtype,
                )?;
                let t = |h: crate::weights::HostTensor| {
                    Tensor::<B, 2>::from_data(h.transposed().into_data(), (device, dtype))
                };
                lin.lora = Some(Lora {
                    a: Param::from_tensor(t(a)),
                    b: Param::from_tensor(t(b)),
                    scale: config.scale(),
                    dropout: Dropout {
                        prob: config.lora_dropout,
                    },
                    dropout_always: false,
                });
            }
        }
        if let Some(first) = weights.unused().first() {
            return Err(ModelError::Safetensors {
                path: file,
                message: format!(
                    "adapter tensor `{first}` does not match the model or adapter_config.json"
                ),
            });
        }
        Ok(model)
    }
}

/// Reads and validates a PEFT `adapter_config.json`.
pub fn read_adapter_config(dir: &Path) -> Result<LoraConfig> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.clone(),
            source,
        })?;
    match json.get("peft_type").and_then(|v| v.as_str()) {
        Some("LORA") | None => {}
        Some(other) => {
            return Err(ModelError::config(
                &path,
                "peft_type",
                format!("`{other}` is not supported (only LORA)"),
            ))
        }
    }
    if json.get("target_modules").is_some_and(|v| v.is_string()) {
        return Err(ModelError::config(
            &path,
            "target_modules",
            "a regular expression is not supported; list the module names",
        ));
    }
    let config: LoraConfig = serde_json::from_value(json).map_err(|source| ModelError::Json {
        path: path.clone(),
        source,
    })?;
    config.validate(&path)?;
    Ok(config)
}
