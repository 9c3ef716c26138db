//! Building a [`DiffusionLm`] from a Hugging Face model directory, and writing one back.

use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, DType, Tensor};
use safetensors::{Dtype, View};

use crate::config::{config_path, ModelConfig};
use crate::error::{ModelError, Result};
use crate::model::DiffusionLm;
use crate::params::Checkpoint;
use crate::quantization::{checkpoint_is_nf4, Quantize};
use crate::weights::{WeightDType, WeightFiles};

pub use crate::params::PREFIX;

/// Options for [`load_model`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Element type of the loaded weights (checkpoints in bf16 are upcast to f32 by default).
    pub dtype: WeightDType,
    /// Quantise the block linears of a dense checkpoint while loading (a checkpoint already
    /// quantised loads as it is stored, whatever this says).
    pub quantize: Option<Quantize>,
}

/// Loads `config.json` and the weights of a model directory.
pub fn load_model<B: Backend>(
    dir: impl AsRef<Path>,
    options: LoadOptions,
    device: &B::Device,
) -> Result<DiffusionLm<B>> {
    let dir = dir.as_ref();
    let config = ModelConfig::from_file(config_path(dir))?;
    let weights = WeightFiles::open_dir(dir)?;
    from_weights(&config, &weights, options, device)
}

/// Builds the model from opened weight files; every tensor's presence and shape is checked
/// against the config, and tensors the config does not account for are refused
/// ([`Checkpoint`] as the [`DiffusionLm::build`] source).
pub fn from_weights<B: Backend>(
    config: &ModelConfig,
    weights: &WeightFiles,
    options: LoadOptions,
    device: &B::Device,
) -> Result<DiffusionLm<B>> {
    check_dtype_supported::<B>(options.dtype, device)?;
    checkpoint_is_nf4(config, weights.origin())?;
    let mut source = Checkpoint::new(weights, options.dtype, device).quantized(options.quantize);
    DiffusionLm::build(config, &mut source)
}

/// Refuses a weight dtype the backend cannot compute in on `device` (burn's WGPU backend has
/// no bf16 arithmetic, for example), instead of a panic deep inside a kernel.
pub fn check_dtype_supported<B: Backend>(dtype: WeightDType, device: &B::Device) -> Result<()> {
    let burn = dtype.burn();
    if B::supports_dtype(device, burn) {
        return Ok(());
    }
    Err(ModelError::Input(format!(
        "the {} backend cannot compute in {burn:?} on this device; load the weights as f32 \
         (or f16 where the device supports it)",
        B::name(device)
    )))
}

/// Validates a model directory exactly as [`load_model`] would (config, every tensor's presence,
/// shape, dtype and finiteness, no tensor left over) without keeping any weight: one tensor is
/// in memory at a time. Returns the config.
pub fn verify_model<B: Backend>(dir: impl AsRef<Path>, device: &B::Device) -> Result<ModelConfig> {
    let dir = dir.as_ref();
    let config = ModelConfig::from_file(config_path(dir))?;
    let weights = WeightFiles::open_dir(dir)?;
    checkpoint_is_nf4(&config, weights.origin())?;
    DiffusionLm::<B>::build(&config, &mut Checkpoint::verifying(&weights, device))?;
    Ok(config)
}

/// A named tensor on the host, ready to be written to safetensors.
pub(crate) struct NamedTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl View for &NamedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Reads a tensor to the host in its own dtype (f32, bf16 or f16), optionally transposing a
/// matrix back to the Hugging Face `[out, in]` layout.
pub(crate) fn to_named<B: Backend, const D: usize>(
    name: String,
    tensor: Tensor<B, D>,
    transpose: bool,
) -> NamedTensor {
    let tensor = if transpose {
        tensor.transpose()
    } else {
        tensor
    };
    let shape = tensor.dims().to_vec();
    let data = tensor.into_data();
    let (dtype, bytes) = match data.dtype {
        DType::BF16 => (Dtype::BF16, data.as_bytes().to_vec()),
        DType::F16 => (Dtype::F16, data.as_bytes().to_vec()),
        DType::F32 => (Dtype::F32, data.as_bytes().to_vec()),
        _ => {
            let v: Vec<f32> = data.convert::<f32>().to_vec().unwrap_or_default();
            (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
    };
    NamedTensor {
        name,
        dtype,
        shape,
        bytes,
    }
}

/// Writes named tensors to a safetensors file atomically (temporary file, then rename).
pub(crate) fn write_safetensors(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let views: Vec<(&str, &NamedTensor)> = tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let bytes = safetensors::serialize(views, metadata).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so
/// a crash never leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp: PathBuf = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| ModelError::io(&tmp, e))?;
        f.sync_all().map_err(|e| ModelError::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
}

/// Saves the model in the Hugging Face layout: `config.json` and `model.safetensors`.
/// Adapters are not included (merge them first with [`DiffusionLm::merge_adapters`] to bake them in).
/// NF4 weights are written decoded, in their dtype (bf16 for LLaDA and Dream), and the config
/// loses its `quantization_config`: the saved model is dense (`dmpo quantize` makes an NF4 copy).
pub fn save_model<B: Backend>(model: &DiffusionLm<B>, dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let family = model.config.family;
    let mut out = vec![to_named(
        family.embedding_name().to_string(),
        model.wte.val(),
        false,
    )];
    let [attn_norm, ff_norm] = family.norm_paths();
    for (i, block) in model.blocks.iter().enumerate() {
        let p = family.block_prefix(i);
        for (path, norm) in [(attn_norm, &block.attn_norm), (ff_norm, &block.ff_norm)] {
            out.push(to_named(
                format!("{p}.{path}.weight"),
                norm.weight.val(),
                false,
            ));
        }
        for (path, (_, lin)) in family.linear_paths().iter().zip(block.linears()) {
            out.push(to_named(
                format!("{p}.{path}.weight"),
                lin.weight.val(),
                true,
            ));
            if let Some(bias) = &lin.bias {
                out.push(to_named(format!("{p}.{path}.bias"), bias.val(), false));
            }
        }
    }
    out.push(to_named(
        family.final_norm_name().to_string(),
        model.ln_f.weight.val(),
        false,
    ));
    if let Some(head) = &model.head {
        out.push(to_named(
            family.head_name().to_string(),
            head.weight.val(),
            true,
        ));
    }
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_safetensors(&dir.join("model.safetensors"), &out, Some(meta))?;
    let mut config = model.config.clone();
    config.extra.remove("quantization_config");
    config.save(config_path(dir))
}
