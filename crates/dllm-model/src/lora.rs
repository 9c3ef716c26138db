//! LoRA adapters on a block's seven linear layers, saved and loaded in the PEFT layout
//! (`adapter_config.json` + `adapter_model.safetensors`), so adapters move between this
//! toolkit and Python PEFT in both directions (docs/algorithm.md §5).
//!
//! `target_modules` may name the layers in either family's names (LLaDA's `attn_out` is
//! Dream's `o_proj`, `ff_proj` is `gate_proj`, `ff_out` is `down_proj`): a recipe written for
//! one family reaches the same layers of the other. Saved adapters list the model's own names.

use std::path::Path;

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::Dropout;
use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::family::{Family, DREAM_LINEARS};
use crate::linear::{LinearWeight, Lora};
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

    /// This model with `other`'s adapters (same geometry): each linear layer takes a copy of the
    /// adapter of `other`'s layer, or none where `other`'s has none. Evaluating a run's adapter on
    /// another base (the stored bf16 weights of a model trained on NF4) is this.
    pub fn with_adapters_of(mut self, other: &Self) -> Self {
        for (dst, src) in self.blocks.iter_mut().zip(&other.blocks) {
            for ((_, d), (_, s)) in dst.linears_mut().into_iter().zip(src.linears()) {
                d.lora = s.lora.clone();
            }
        }
        self
    }

    /// Folds every adapter into its base weight (`W += scale * A B`) and removes it. An NF4
    /// base weight is decoded first and the merged layer stays dense in the NF4 weight's dtype
    /// (bf16 for LLaDA and Dream): re-quantising would round the update away; quantise the
    /// saved model again (`dmpo quantize`) to get an NF4 checkpoint of it.
    pub fn merge_adapters(mut self) -> Self {
        for block in &mut self.blocks {
            for (_, lin) in block.linears_mut() {
                if let Some(lora) = lin.lora.take() {
                    let weight = lin.weight.val();
                    let merged = weight.clone() + lora.delta().cast(weight.dtype());
                    lin.weight = LinearWeight::Dense(Param::from_tensor(merged.detach()));
                }
            }
        }
        self
    }

    /// Every parameter trainable again (after [`load_adapter`](Self::load_adapter) froze the
    /// base and [`merge_adapters`](Self::merge_adapters) folded the adapter in: full
    /// fine-tuning from an adapter).
    pub fn all_trainable(self) -> Self {
        struct Trainable;
        impl<B: Backend> ModuleMapper<B> for Trainable {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                let (id, tensor, mapper) = param.consume();
                Param::from_mapped_value(id, tensor.set_require_grad(true), mapper)
            }
        }
        self.map(&mut Trainable)
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
        let adapter = AdapterFiles::open(dir.as_ref())?;
        let config = &adapter.config;
        let mut model = self.no_grad();
        // Adapters are f32 whatever the base's dtype (PEFT's `autocast_adapter_dtype`): they
        // are what training updates.
        let dtype = burn::tensor::DType::F32;
        let family = model.config.family;
        for (i, block) in model.blocks.iter_mut().enumerate() {
            for (name, lin) in block.linears_mut() {
                lin.lora = None;
                if !config.targets(name) {
                    continue;
                }
                let [d_in, d_out] = lin.dims();
                let (a, b) = adapter.matrices(family, i, name, d_in, d_out)?;
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
        adapter.check_all_used()?;
        Ok(model)
    }
}

/// A PEFT adapter directory opened for reading: its checked `adapter_config.json` and its
/// weights, read one pair of matrices at a time.
struct AdapterFiles {
    config: LoraConfig,
    file: std::path::PathBuf,
    weights: WeightFiles,
}

impl AdapterFiles {
    fn open(dir: &Path) -> Result<Self> {
        let config = read_adapter_config(dir)?;
        let file = dir.join("adapter_model.safetensors");
        if !file.is_file() {
            return Err(ModelError::io(
                &file,
                std::io::Error::new(std::io::ErrorKind::NotFound, "adapter weights not found"),
            ));
        }
        let weights = WeightFiles::open_file(&file)?;
        Ok(Self {
            config,
            file,
            weights,
        })
    }

    /// `lora_A` `[r, in]` and `lora_B` `[out, r]` of linear `name` of block `block`, in f32,
    /// shape-checked and finite.
    fn matrices(
        &self,
        family: Family,
        block: usize,
        name: &str,
        d_in: usize,
        d_out: usize,
    ) -> Result<(crate::weights::HostTensor, crate::weights::HostTensor)> {
        let r = self.config.r;
        let a = self.weights.read(
            &peft_key(family, block, name, "lora_A"),
            &[r, d_in],
            WeightDType::F32,
        )?;
        let b = self.weights.read(
            &peft_key(family, block, name, "lora_B"),
            &[d_out, r],
            WeightDType::F32,
        )?;
        Ok((a, b))
    }

    /// Refuses a tensor no matrix read took (an adapter of another model or configuration).
    fn check_all_used(&self) -> Result<()> {
        match self.weights.unused().first() {
            Some(first) => Err(ModelError::Safetensors {
                path: self.file.clone(),
                message: format!(
                    "adapter tensor `{first}` does not match the model or adapter_config.json"
                ),
            }),
            None => Ok(()),
        }
    }
}

/// Checks the PEFT adapter in `dir` against a model of `model` exactly as
/// [`DiffusionLm::load_adapter`] reads it — configuration, every matrix's presence, shape and
/// values, no tensor left over — one pair of matrices in memory at a time, without the model.
pub fn verify_adapter(dir: &Path, model: &ModelConfig) -> Result<LoraConfig> {
    let adapter = AdapterFiles::open(dir)?;
    let family = model.family;
    for block in 0..model.n_layers {
        for name in family.linear_names() {
            if !adapter.config.targets(name) {
                continue;
            }
            let [d_in, d_out] = model
                .linear_dims(name)
                .expect("a family's linear names are linears");
            adapter.matrices(family, block, name, d_in, d_out)?;
        }
    }
    adapter.check_all_used()?;
    Ok(adapter.config)
}

/// Keys of PEFT's `LoraConfig` that describe an adapter without changing what it computes
/// (where it came from, how it was initialised, PEFT's bookkeeping).
const PEFT_INFORMATIONAL_KEYS: [&str; 14] = [
    "peft_type",
    "task_type",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "init_lora_weights",
    "auto_mapping",
    "peft_version",
    "layers_pattern",
    "loftq_config",
    "eva_config",
    "corda_config",
    "megatron_config",
    "megatron_core",
];

/// Keys of PEFT's `LoraConfig` that this implementation reads.
const PEFT_IMPLEMENTED_KEYS: [&str; 5] = [
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "use_rslora",
];

/// Whether a value of a key we do not implement leaves PEFT's computation as ours: PEFT's
/// off values (`null`, `false`, `{}`, `[]`, `"none"`).
fn is_off(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Object(o) => o.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s == "none",
        _ => false,
    }
}

/// Reads and validates a PEFT `adapter_config.json`. Every key is accounted for: the ones this
/// implementation reads, the informational ones, and any other (`use_dora`, `rank_pattern`,
/// `alpha_pattern`, `layers_to_transform`, `fan_in_fan_out`, `bias`, `modules_to_save`, …, or
/// one a later PEFT adds) only at PEFT's off value; otherwise it is refused by name, since
/// ignoring it would compute a different adapter than PEFT does. `target_modules =
/// "all-linear"` means every linear of every block, as PEFT (the LM head excluded).
pub fn read_adapter_config(dir: &Path) -> Result<LoraConfig> {
    let path = dir.join("adapter_config.json");
    let text = crate::text_file::read_text(&path)?;
    let mut json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.clone(),
            source,
        })?;
    let Some(object) = json.as_object_mut() else {
        return Err(ModelError::config(
            &path,
            "adapter_config.json",
            "is not a JSON object",
        ));
    };
    match object.get("peft_type").and_then(|v| v.as_str()) {
        Some("LORA") | None => {}
        Some(other) => {
            return Err(ModelError::config(
                &path,
                "peft_type",
                format!("`{other}` is not supported (only LORA)"),
            ))
        }
    }
    for (key, value) in object.iter() {
        let known = PEFT_IMPLEMENTED_KEYS.contains(&key.as_str())
            || PEFT_INFORMATIONAL_KEYS.contains(&key.as_str());
        if !known && !is_off(value) {
            return Err(ModelError::config(
                &path,
                key,
                format!(
                    "{value} is not supported: this implementation would compute a different \
                     adapter than PEFT (only r, lora_alpha, lora_dropout, target_modules and \
                     use_rslora are read; other keys must be at PEFT's default)"
                ),
            ));
        }
    }
    match object.get("target_modules") {
        Some(serde_json::Value::String(s)) if s == "all-linear" => {
            object.insert("target_modules".into(), all_targets().into());
        }
        Some(serde_json::Value::String(s)) => {
            return Err(ModelError::config(
                &path,
                "target_modules",
                format!(
                    "{s:?}: a regular expression of module names is not supported; list the \
                     module names, or use \"all-linear\""
                ),
            ));
        }
        _ => {}
    }
    object.retain(|k, _| PEFT_IMPLEMENTED_KEYS.contains(&k.as_str()));
    let config: LoraConfig = serde_json::from_value(json).map_err(|source| ModelError::Json {
        path: path.clone(),
        source,
    })?;
    config.validate(&path)?;
    Ok(config)
}
