//! Which quantisation a model is loaded with, and the bitsandbytes layout of a quantised
//! checkpoint.
//!
//! - A checkpoint's `quantization_config` (transformers writes it into `config.json`): 4-bit
//!   NF4 from bitsandbytes is read (double-quantised or not, blocks of 64); every other method
//!   or setting (8-bit, FP4, GPTQ, AWQ, other block sizes or storage types) is refused by name.
//! - [`Quantize::Nf4`] (`model.quantize = "nf4"`, `--quantize nf4`): a dense checkpoint's block
//!   linears are quantised while it loads, one tensor at a time, as transformers does with
//!   `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
//!   bnb_4bit_use_double_quant=True)`: the seven linear layers of every block, never the
//!   embeddings, the norms or the LM head (transformers' `get_keys_to_not_convert` keeps the
//!   output embedding and the last module dense; LLaDA's and Dream's embeddings are not linear
//!   layers). The values are quantised in the load dtype and decode to it.
//!
//! In a checkpoint, linear weight `X.weight` in NF4 is the tensors bitsandbytes' `Params4bit`
//! saves: `X.weight` (packed uint8 `[n/2, 1]`), `X.weight.absmax`, `X.weight.quant_map`,
//! `X.weight.nested_absmax`, `X.weight.nested_quant_map` and
//! `X.weight.quant_state.bitsandbytes__nf4` (the JSON of the other fields, as uint8).

use std::path::Path;

use serde_json::{json, Value};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::nf4::{Absmax, NestedAbsmax, Nf4DType, Nf4Tensor, BLOCK_SIZE, NF4_CODE};
use crate::weights::WeightFiles;

/// A quantisation applied while loading a dense checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantize {
    /// bitsandbytes' NF4 with double quantisation, blocks of 64.
    Nf4,
}

impl std::str::FromStr for Quantize {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "nf4" => Ok(Self::Nf4),
            other => Err(format!(
                "unknown quantisation `{other}` (the one implemented: nf4)"
            )),
        }
    }
}

impl Quantize {
    /// Its name in recipes and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nf4 => "nf4",
        }
    }
}

/// Checks a checkpoint's `quantization_config` (if any): `Ok(true)` for bitsandbytes 4-bit NF4,
/// `Ok(false)` without one, an error naming the setting for anything else.
pub fn checkpoint_is_nf4(config: &ModelConfig, path: &Path) -> Result<bool> {
    let Some(q) = config.extra.get("quantization_config") else {
        return Ok(false);
    };
    let key = |k: &str| format!("quantization_config.{k}");
    let refuse = |k: &str, what: String| Err(ModelError::config(path, key(k), what));
    let Some(q) = q.as_object() else {
        return refuse("", "not an object".into());
    };
    let text = |k: &str| q.get(k).and_then(Value::as_str);
    let flag = |k: &str| q.get(k).and_then(Value::as_bool).unwrap_or(false);
    match text("quant_method") {
        Some("bitsandbytes") => {}
        Some(other) => {
            return refuse(
                "quant_method",
                format!("`{other}` checkpoints are not supported (bitsandbytes NF4 is)"),
            )
        }
        None => return refuse("quant_method", "missing".into()),
    }
    if flag("load_in_8bit") {
        return refuse(
            "load_in_8bit",
            "8-bit (LLM.int8) checkpoints are not supported (bitsandbytes NF4 is)".into(),
        );
    }
    if !flag("load_in_4bit") {
        return refuse("load_in_4bit", "neither 4-bit nor 8-bit is set".into());
    }
    match text("bnb_4bit_quant_type").unwrap_or("fp4") {
        "nf4" => {}
        other => {
            return refuse(
                "bnb_4bit_quant_type",
                format!("`{other}` is not supported (nf4 is)"),
            )
        }
    }
    if let Some(storage) = text("bnb_4bit_quant_storage").filter(|s| *s != "uint8") {
        return refuse(
            "bnb_4bit_quant_storage",
            format!("`{storage}` is not supported (uint8 is)"),
        );
    }
    Ok(true)
}

/// The `quantization_config` transformers writes for NF4 with double quantisation, bf16
/// compute, as the DMPO and d1 references load LLaDA.
pub fn nf4_quantization_config() -> Value {
    json!({
        "_load_in_4bit": true,
        "_load_in_8bit": false,
        "bnb_4bit_compute_dtype": "bfloat16",
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": true,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": null,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": true,
        "load_in_8bit": false,
        "quant_method": "bitsandbytes"
    })
}

/// The name of the tensor holding `weight`'s packed quant state (`{weight}.quant_state.bitsandbytes__nf4`).
pub fn quant_state_name(weight: &str) -> String {
    format!("{weight}.quant_state.bitsandbytes__nf4")
}

/// Whether `weights` hold linear weight `name` in NF4 (a 4-bit quant state of another type
/// is refused by name).
pub fn holds_nf4(weights: &WeightFiles, name: &str) -> Result<bool> {
    let fp4 = format!("{name}.quant_state.bitsandbytes__fp4");
    if weights.contains(&fp4) {
        return Err(ModelError::Safetensors {
            path: weights.file_of(&fp4),
            message: format!("`{name}` is stored in FP4, which is not supported (NF4 is)"),
        });
    }
    Ok(weights.contains(&quant_state_name(name)))
}

/// Reads linear weight `name` (`[rows, cols]` as stored) in bitsandbytes' NF4 layout, every
/// part checked against the others and against the expected shape.
pub fn read_nf4(weights: &WeightFiles, name: &str, shape: [usize; 2]) -> Result<Nf4Tensor> {
    let state_name = quant_state_name(name);
    let file = weights.file_of(&state_name);
    let bad = |what: String| ModelError::Safetensors {
        path: file.clone(),
        message: format!("NF4 weight `{name}`: {what}"),
    };
    let (state_bytes, _) = weights.read_u8(&state_name)?;
    let state: Value = serde_json::from_slice(&state_bytes)
        .map_err(|e| bad(format!("quant state is not JSON: {e}")))?;
    let field = |k: &str| {
        state
            .get(k)
            .ok_or_else(|| bad(format!("quant state has no `{k}`")))
    };
    if field("quant_type")?.as_str() != Some("nf4") {
        return Err(bad(format!(
            "quant_type {} is not nf4",
            field("quant_type")?
        )));
    }
    if field("blocksize")?.as_u64() != Some(BLOCK_SIZE as u64) {
        return Err(bad(format!(
            "blocksize {} is not supported (64 is)",
            field("blocksize")?
        )));
    }
    let dtype = field("dtype")?
        .as_str()
        .and_then(Nf4DType::from_name)
        .ok_or_else(|| {
            bad(format!(
                "dtype {} is not bfloat16, float16 or float32",
                state["dtype"]
            ))
        })?;
    let stored_shape: Option<Vec<usize>> = field("shape")?.as_array().map(|a| {
        a.iter()
            .filter_map(|v| v.as_u64().map(|v| v as usize))
            .collect()
    });
    if stored_shape.as_deref() != Some(&shape[..]) {
        return Err(ModelError::Shape {
            path: file.clone(),
            tensor: name.to_string(),
            expected: shape.to_vec(),
            found: stored_shape.unwrap_or_default(),
        });
    }
    let n = shape[0] * shape[1];
    let (packed, packed_shape) = weights.read_u8(name)?;
    if packed.len() != n.div_ceil(2) {
        return Err(bad(format!(
            "{} packed bytes {packed_shape:?} for {n} values",
            packed.len()
        )));
    }
    let code = weights.read_f32(&format!("{name}.quant_map"))?;
    if code != NF4_CODE {
        return Err(bad("quant_map is not the NF4 codebook".into()));
    }
    let blocks = n.div_ceil(BLOCK_SIZE);
    let absmax_name = format!("{name}.absmax");
    let absmax = if state.get("nested_offset").is_some() {
        let (codes, _) = weights.read_u8(&absmax_name)?;
        let nested = weights.read_f32(&format!("{name}.nested_absmax"))?;
        let map = weights.read_f32(&format!("{name}.nested_quant_map"))?;
        let block = field("nested_blocksize")?
            .as_u64()
            .filter(|&b| b > 0)
            .ok_or_else(|| bad("nested_blocksize is not a positive integer".into()))?
            as usize;
        let offset = field("nested_offset")?
            .as_f64()
            .ok_or_else(|| bad("nested_offset is not a number".into()))?
            as f32;
        if codes.len() != blocks || nested.len() != blocks.div_ceil(block) || map.len() != 256 {
            return Err(bad(format!(
                "{} absmax codes, {} nested absmax, {} map entries for {blocks} blocks of 64",
                codes.len(),
                nested.len(),
                map.len()
            )));
        }
        Absmax::Nested(NestedAbsmax {
            codes,
            absmax: nested,
            map,
            offset,
            block,
        })
    } else {
        let plain = weights.read_f32(&absmax_name)?;
        if plain.len() != blocks {
            return Err(bad(format!("{} absmax for {blocks} blocks", plain.len())));
        }
        Absmax::Plain(plain)
    };
    let tensor = Nf4Tensor {
        shape,
        packed,
        absmax,
        dtype,
    };
    if let Some(i) = tensor.absmax.decode().iter().position(|a| !a.is_finite()) {
        return Err(bad(format!("absmax of block {i} is not finite")));
    }
    Ok(tensor)
}

/// The tensors bitsandbytes saves for NF4 weight `name`, in its layout and dtypes.
pub(crate) fn nf4_tensors(name: &str, t: &Nf4Tensor) -> Vec<crate::load::NamedTensor> {
    use crate::load::NamedTensor;
    use safetensors::Dtype;
    let f32s = |name: String, v: &[f32]| NamedTensor {
        name,
        dtype: Dtype::F32,
        shape: vec![v.len()],
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    let u8s = |name: String, v: Vec<u8>, shape: Vec<usize>| NamedTensor {
        name,
        dtype: Dtype::U8,
        shape,
        bytes: v,
    };
    let mut out = vec![u8s(
        name.to_string(),
        t.packed.clone(),
        vec![t.packed.len(), 1],
    )];
    let mut state = vec![
        ("quant_type".to_string(), json!("nf4")),
        ("blocksize".to_string(), json!(BLOCK_SIZE)),
        ("dtype".to_string(), json!(t.dtype.name())),
        ("shape".to_string(), json!(t.shape)),
    ];
    match &t.absmax {
        Absmax::Plain(v) => out.push(f32s(format!("{name}.absmax"), v)),
        Absmax::Nested(n) => {
            out.push(u8s(
                format!("{name}.absmax"),
                n.codes.clone(),
                vec![n.codes.len()],
            ));
            out.push(f32s(format!("{name}.nested_absmax"), &n.absmax));
            out.push(f32s(format!("{name}.nested_quant_map"), &n.map));
            state.push(("nested_blocksize".to_string(), json!(n.block)));
            state.push(("nested_dtype".to_string(), json!("float32")));
            state.push(("nested_offset".to_string(), json!(f64::from(n.offset))));
        }
    }
    out.push(f32s(format!("{name}.quant_map"), &NF4_CODE));
    // bitsandbytes' `pack_dict_to_tensor`: `json.dumps` of the fields, in `as_dict`'s order.
    let body: Vec<String> = state
        .iter()
        .map(|(k, v)| format!("{}: {}", json!(k), python_json(v)))
        .collect();
    let text = format!("{{{}}}", body.join(", "));
    let bytes = text.into_bytes();
    let len = bytes.len();
    out.push(u8s(quant_state_name(name), bytes, vec![len]));
    out
}

/// `json.dumps` of a value: lists with `", "` between items.
fn python_json(v: &Value) -> String {
    match v {
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(python_json).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}
