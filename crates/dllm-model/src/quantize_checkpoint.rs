//! Writing a quantised copy of a model directory in the layout transformers + bitsandbytes
//! save (`model.save_pretrained` of a model loaded with `BitsAndBytesConfig(load_in_4bit=True,
//! bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)`): the block linears in NF4
//! ([`crate::quantization`]), every other tensor as stored, `quantization_config` in
//! `config.json`, the directory's other files (tokenizer, generation config) copied.
//!
//! One input shard is read at a time and written as the output shard of the same name, so the
//! dense model is never held whole; an index lists the new tensor names when the input was
//! sharded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::Dtype;

use crate::config::{config_path, ModelConfig};
use crate::error::{ModelError, Result};
use crate::load::{write_atomic, write_safetensors, NamedTensor};
use crate::nf4::Nf4Tensor;
use crate::params::{checkpoint_tensors, TensorRole};
use crate::quantization::{checkpoint_is_nf4, nf4_quantization_config, nf4_tensors};
use crate::weights::{WeightDType, WeightFiles};

/// What [`quantize_checkpoint`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeReport {
    /// Linear weights quantised.
    pub quantized: usize,
    /// Tensors copied as stored.
    pub copied: usize,
    /// Bytes of weights read.
    pub bytes_in: u64,
    /// Bytes of weights written.
    pub bytes_out: u64,
}

/// Quantises the block linears of the model in `dir` to NF4 into `out` (created; refused if it
/// already holds weights or is `dir`). `progress` is called after each tensor with the number
/// done and the total.
pub fn quantize_checkpoint(
    dir: &Path,
    out: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<QuantizeReport> {
    let config = ModelConfig::from_file(config_path(dir))?;
    if checkpoint_is_nf4(&config, &config_path(dir))? {
        return Err(ModelError::config(
            config_path(dir),
            "quantization_config",
            "the model is already quantised",
        ));
    }
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(dir, out) {
        return Err(ModelError::Input(format!(
            "{}: the output directory must differ from the model directory",
            out.display()
        )));
    }
    if out.join("model.safetensors").exists() || out.join("model.safetensors.index.json").exists() {
        return Err(ModelError::Input(format!(
            "{}: already holds model weights; choose an empty directory",
            out.display()
        )));
    }
    let weights = WeightFiles::open_dir(dir)?;
    let linears: BTreeMap<String, Vec<usize>> = checkpoint_tensors(&config)
        .into_iter()
        .filter(|(name, _, role)| {
            *role == TensorRole::Matrix
                && name != config.family.embedding_name()
                && name != config.family.head_name()
        })
        .map(|(name, shape, _)| (name, shape))
        .collect();
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;
    let files = weights.tensors_by_file();
    let total: usize = files.iter().map(|(_, names)| names.len()).sum();
    let mut report = QuantizeReport {
        quantized: 0,
        copied: 0,
        bytes_in: 0,
        bytes_out: 0,
    };
    let mut index = serde_json::Map::new();
    let mut done = 0;
    for (path, names) in &files {
        let file_name = path
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("model.safetensors"));
        let mut tensors = Vec::new();
        for name in names {
            let (dtype, shape) = weights.stored_layout(name)?;
            let written = match linears.get(name) {
                Some(expected) if *expected == shape => {
                    report.quantized += 1;
                    let stored = stored_dtype(dtype).ok_or_else(|| ModelError::DType {
                        path: path.clone(),
                        tensor: name.clone(),
                        dtype: format!("{dtype:?}"),
                    })?;
                    let values = weights.read(name, &shape, stored)?.values.to_f32();
                    report.bytes_in += (values.len() * dtype.bitsize() / 8) as u64;
                    let nf4 = Nf4Tensor::quantize(&values, [shape[0], shape[1]], stored.nf4());
                    nf4_tensors(name, &nf4)
                }
                Some(expected) => {
                    return Err(ModelError::Shape {
                        path: path.clone(),
                        tensor: name.clone(),
                        expected: expected.clone(),
                        found: shape,
                    })
                }
                None => {
                    report.copied += 1;
                    let (dtype, shape, bytes) = weights.read_stored(name)?;
                    report.bytes_in += bytes.len() as u64;
                    vec![NamedTensor {
                        name: name.clone(),
                        dtype,
                        shape,
                        bytes,
                    }]
                }
            };
            for t in &written {
                report.bytes_out += t.bytes.len() as u64;
                index.insert(
                    t.name.clone(),
                    file_name.to_string_lossy().into_owned().into(),
                );
            }
            tensors.extend(written);
            done += 1;
            progress(done, total);
        }
        let mut meta = std::collections::HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        write_safetensors(&out.join(&file_name), &tensors, Some(meta))?;
    }
    if files.len() > 1 || dir.join("model.safetensors.index.json").is_file() {
        let json = serde_json::json!({
            "metadata": {"total_size": report.bytes_out},
            "weight_map": index,
        });
        let text = serde_json::to_string_pretty(&json).expect("an index serialises");
        write_atomic(&out.join("model.safetensors.index.json"), text.as_bytes())?;
    }
    copy_other_files(dir, out)?;
    let mut config = config;
    config
        .extra
        .insert("quantization_config".into(), nf4_quantization_config());
    config.save(config_path(out))?;
    Ok(report)
}

/// The load dtype that keeps a stored float dtype's values exactly.
fn stored_dtype(dtype: Dtype) -> Option<WeightDType> {
    match dtype {
        Dtype::BF16 => Some(WeightDType::BF16),
        Dtype::F16 => Some(WeightDType::F16),
        Dtype::F32 => Some(WeightDType::F32),
        _ => None,
    }
}

/// Copies the files of `dir` that are not weights or the config (tokenizer, generation
/// config, chat template) into `out`.
fn copy_other_files(dir: &Path, out: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ModelError::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let weights = name.ends_with(".safetensors") || name == "model.safetensors.index.json";
        if !path.is_file() || weights || name == "config.json" {
            continue;
        }
        std::fs::copy(&path, out.join(&name)).map_err(|e| ModelError::io(&path, e))?;
    }
    Ok(())
}
