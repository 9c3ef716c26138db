//! NF4 against bitsandbytes itself: `fixtures/nf4/reference.safetensors`, written by
//! `scripts/nf4_reference.py` with bitsandbytes 0.50 on the CPU.

mod common;

use dllm_model::nf4::{dynamic_map, Absmax, NestedAbsmax, Nf4DType, Nf4Tensor, NF4_CODE};
use half::bf16;
use safetensors::{Dtype, SafeTensors};

fn reference() -> Vec<u8> {
    std::fs::read(common::fixtures().join("nf4/reference.safetensors")).expect("nf4 fixture")
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    match t.dtype() {
        Dtype::F32 => t
            .data()
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::BF16 => t
            .data()
            .chunks(2)
            .map(|b| bf16::from_le_bytes(b.try_into().unwrap()).to_f32())
            .collect(),
        other => panic!("{name}: {other:?}"),
    }
}

fn bytes(st: &SafeTensors, name: &str) -> Vec<u8> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::U8, "{name}");
    t.data().to_vec()
}

/// Every quantised tensor of the fixture: its prefix, the case's input shape and dtype.
fn cases(st: &SafeTensors) -> Vec<(String, [usize; 2], Nf4DType)> {
    let mut out: Vec<_> = st
        .names()
        .into_iter()
        .filter_map(|n| n.strip_suffix(".input").map(str::to_string))
        .map(|prefix| {
            let t = st.tensor(&format!("{prefix}.input")).unwrap();
            let shape = [t.shape()[0], t.shape()[1]];
            let dtype = match t.dtype() {
                Dtype::BF16 => Nf4DType::BF16,
                Dtype::F32 => Nf4DType::F32,
                other => panic!("{prefix}: {other:?}"),
            };
            (prefix, shape, dtype)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn codebooks_equal_bitsandbytes() {
    let data = reference();
    let st = SafeTensors::deserialize(&data).unwrap();
    let (prefix, _, _) = &cases(&st)[0];
    assert_eq!(f32s(&st, &format!("{prefix}.quant_map")), NF4_CODE.to_vec());
    let theirs = f32s(&st, &format!("{prefix}.nested_quant_map"));
    let ours = dynamic_map();
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "dynamic map entry {i}: {a} vs {b}"
        );
    }
}

#[test]
fn quantisation_equals_bitsandbytes() {
    let data = reference();
    let st = SafeTensors::deserialize(&data).unwrap();
    let (mut codes, mut differing) = (0usize, 0usize);
    let all = cases(&st);
    assert!(all.len() > 20, "{} cases", all.len());
    for (prefix, shape, dtype) in all {
        let input = f32s(&st, &format!("{prefix}.input"));
        let ours = Nf4Tensor::quantize(&input, shape, dtype);
        assert_eq!(
            ours.packed,
            bytes(&st, &format!("{prefix}.packed")),
            "{prefix}: packed nibbles"
        );
        let (_, plain) = dllm_model::nf4::quantize_4bit(&input);
        let theirs = f32s(&st, &format!("{prefix}.absmax"));
        assert_eq!(plain, theirs, "{prefix}: first-level absmax");
        let Absmax::Nested(nested) = &ours.absmax else {
            panic!("double quantised")
        };
        let offset = f32s(&st, &format!("{prefix}.nested_offset"))[0];
        assert!(
            (nested.offset - offset).abs() <= f32::EPSILON * offset.abs(),
            "{prefix}: offset {} vs {offset}",
            nested.offset
        );
        assert_eq!(
            nested.absmax,
            f32s(&st, &format!("{prefix}.nested_absmax")),
            "{prefix}: second-level absmax"
        );
        // bitsandbytes' CPU backend picks the nested codes from a lookup table: where it
        // differs from the exact nearest code, it is a neighbour.
        let theirs = bytes(&st, &format!("{prefix}.nested_codes"));
        for (a, b) in nested.codes.iter().zip(&theirs) {
            codes += 1;
            if a != b {
                differing += 1;
                assert_eq!(a.abs_diff(*b), 1, "{prefix}: nested code {a} vs {b}");
            }
        }
    }
    // Measured with bitsandbytes 0.50.2: see docs/quantization.md.
    println!("nested absmax codes differing from bitsandbytes' CPU table: {differing} of {codes}");
    assert!(differing * 20 <= codes, "{differing} of {codes}");
}

#[test]
fn dequantisation_equals_bitsandbytes_given_its_codes() {
    let data = reference();
    let st = SafeTensors::deserialize(&data).unwrap();
    for (prefix, shape, dtype) in cases(&st) {
        let theirs = Nf4Tensor {
            shape,
            packed: bytes(&st, &format!("{prefix}.packed")),
            absmax: Absmax::Nested(NestedAbsmax {
                codes: bytes(&st, &format!("{prefix}.nested_codes")),
                absmax: f32s(&st, &format!("{prefix}.nested_absmax")),
                map: f32s(&st, &format!("{prefix}.nested_quant_map")),
                offset: f32s(&st, &format!("{prefix}.nested_offset"))[0],
                block: 256,
            }),
            dtype,
        };
        let want = f32s(&st, &format!("{prefix}.dequantized"));
        let got = theirs.dequantize();
        let bad = got
            .iter()
            .zip(&want)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(bad, None, "{prefix}: dequantised value differs");
    }
}

/// The golden model's logits for the fixture's ids, loaded from `dir` with `options`.
fn logits<B: burn::tensor::backend::Backend>(
    dir: &std::path::Path,
    options: dllm_model::LoadOptions,
) -> Vec<f32> {
    use burn::tensor::{Int, Tensor, TensorData};
    let device = Default::default();
    let model = dllm_model::load_model::<B>(dir, options, &device).expect("load");
    let ids = dllm_model::tensor_file::read_ints(
        common::fixtures().join("nf4/reference.safetensors"),
        "model.input_ids",
    )
    .unwrap()
    .values;
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [2, 24]), &device);
    model
        .forward(input)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap()
}

fn nf4_options() -> dllm_model::LoadOptions {
    dllm_model::LoadOptions {
        dtype: dllm_model::WeightDType::BF16,
        quantize: Some(dllm_model::quantization::Quantize::Nf4),
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn bnb_checkpoint() -> std::path::PathBuf {
    common::fixtures().join("nf4/llada-tiny-nf4")
}

fn options(dtype: dllm_model::WeightDType) -> dllm_model::LoadOptions {
    dllm_model::LoadOptions {
        dtype,
        quantize: None,
    }
}

#[test]
fn a_bitsandbytes_checkpoint_loads_directly_and_gives_its_logits() {
    use dllm_model::WeightDType::{BF16, F32};
    let data = reference();
    let st = SafeTensors::deserialize(&data).unwrap();
    let want = f32s(&st, "model.logits");
    // The CPU kernel decodes panel by panel.
    let got = logits::<burn::backend::Flex>(&bnb_checkpoint(), options(BF16));
    let diff = max_diff(&got, &want);
    assert!(diff <= 1e-4, "flex: max |diff| {diff}");
    // ndarray has neither bf16 nor the kernel: the generic decoding, rounded to bf16 in f32.
    let generic = logits::<burn::backend::NdArray>(&bnb_checkpoint(), options(F32));
    let diff = max_diff(&generic, &want);
    assert!(diff <= 1e-4, "ndarray: max |diff| {diff}");
    // The control: without quantisation the logits are far from these.
    let dense = f32s(&st, "model.logits_bf16");
    let ours = logits::<burn::backend::Flex>(&common::tiny_dir(), options(BF16));
    assert!(max_diff(&ours, &dense) <= 1e-4);
    assert!(max_diff(&dense, &want) > 1.0);
}

#[test]
fn quantised_at_load_the_tiny_model_is_close_to_bitsandbytes() {
    let data = reference();
    let st = SafeTensors::deserialize(&data).unwrap();
    let want = f32s(&st, "model.logits");
    let got = logits::<burn::backend::Flex>(&common::tiny_dir(), nf4_options());
    // Every packed nibble equals bitsandbytes'; the model's double-quantised absmax differ
    // from its CPU lookup table's in a few codes (`quantisation_equals_bitsandbytes`), which
    // moves these random-weight logits by a few thousandths (the quantisation itself moves
    // them by more than 1).
    let diff = max_diff(&got, &want);
    assert!(diff <= 2e-2, "flex: max |diff| {diff}");
    println!("quantised at load vs bitsandbytes' own codes: max |logit diff| {diff:.2e}");
}

#[test]
fn a_quantised_checkpoint_holds_bitsandbytes_bytes_and_loads_directly() {
    let data = reference();
    let st = SafeTensors::deserialize(&data).unwrap();
    // The golden model in bf16 (bitsandbytes quantises the weights in their own dtype).
    let tmp = tempfile::tempdir().unwrap();
    let bf16_dir = tmp.path().join("bf16");
    let model = dllm_model::load_model::<burn::backend::Flex>(
        common::tiny_dir(),
        dllm_model::LoadOptions {
            dtype: dllm_model::WeightDType::BF16,
            quantize: None,
        },
        &Default::default(),
    )
    .unwrap();
    dllm_model::save_model(&model, &bf16_dir).unwrap();
    let out = tmp.path().join("nf4");
    let mut calls = 0;
    let report =
        dllm_model::quantize_checkpoint::quantize_checkpoint(&bf16_dir, &out, |_, _| calls += 1)
            .unwrap();
    assert_eq!((report.quantized, report.copied), (14, 7));
    assert_eq!(calls, 21);
    let written = std::fs::read(out.join("model.safetensors")).unwrap();
    let ours = SafeTensors::deserialize(&written).unwrap();
    for name in ours.names() {
        if let Some(prefix) = name.strip_suffix(".quant_state.bitsandbytes__nf4") {
            let state: serde_json::Value =
                serde_json::from_slice(ours.tensor(name).unwrap().data()).unwrap();
            assert_eq!(state["quant_type"], "nf4");
            assert_eq!(state["dtype"], "bfloat16");
            assert_eq!(
                bytes(&ours, prefix),
                bytes(&st, &format!("model.{prefix}.packed")),
                "{prefix}: packed nibbles"
            );
        }
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["quantization_config"]["bnb_4bit_quant_type"], "nf4");
    // Loaded as it is stored, with no quantisation asked for: the model quantised at load.
    let got = logits::<burn::backend::Flex>(&out, options(dllm_model::WeightDType::BF16));
    let at_load = logits::<burn::backend::Flex>(&common::tiny_dir(), nf4_options());
    assert_eq!(got, at_load);
    // Quantising it again is refused.
    let again = dllm_model::quantize_checkpoint::quantize_checkpoint(
        &out,
        &tmp.path().join("again"),
        |_, _| {},
    );
    assert!(again.unwrap_err().to_string().contains("already quantised"));
}

#[test]
fn quantisation_configs_that_are_not_nf4_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(common::tiny_dir().join(f), dir.join(f)).unwrap();
    }
    let base: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::tiny_dir().join("config.json")).unwrap(),
    )
    .unwrap();
    for (q, key, word) in [
        (
            serde_json::json!({"quant_method": "gptq", "bits": 4}),
            "quant_method",
            "gptq",
        ),
        (
            serde_json::json!({"quant_method": "awq"}),
            "quant_method",
            "awq",
        ),
        (
            serde_json::json!({"quant_method": "bitsandbytes", "load_in_8bit": true}),
            "load_in_8bit",
            "8-bit",
        ),
        (
            serde_json::json!({"quant_method": "bitsandbytes", "load_in_4bit": true,
                "bnb_4bit_quant_type": "fp4"}),
            "bnb_4bit_quant_type",
            "fp4",
        ),
    ] {
        let mut config = base.clone();
        config["quantization_config"] = q;
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let err = dllm_model::load_model::<burn::backend::Flex>(
            dir,
            dllm_model::LoadOptions::default(),
            &Default::default(),
        )
        .expect_err("refused")
        .to_string();
        assert!(
            err.contains(&format!("quantization_config.{key}")) && err.contains(word),
            "{err}"
        );
    }
}

/// A tensor as stored: dtype, shape, bytes.
type Stored = (Dtype, Vec<usize>, Vec<u8>);

/// The bitsandbytes checkpoint with one tensor replaced (`Some`) or removed (`None`).
fn edited_checkpoint(dir: &std::path::Path, name: &str, replacement: Option<Stored>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(
        bnb_checkpoint().join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let data = std::fs::read(bnb_checkpoint().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&data).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    tensors.retain(|t| t.0 != name);
    if let Some((dtype, shape, bytes)) = replacement {
        tensors.push((name.to_string(), dtype, shape, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

#[test]
fn a_damaged_nf4_checkpoint_is_refused_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let weight = "model.transformer.blocks.1.up_proj.weight";
    let state = format!("{weight}.quant_state.bitsandbytes__nf4");
    let json = |text: &str| Some((Dtype::U8, vec![text.len()], text.as_bytes().to_vec()));
    let cases: Vec<(&str, String, Option<Stored>, &str)> = vec![
        (
            "blocksize",
            state.clone(),
            json(
                r#"{"quant_type": "nf4", "blocksize": 128, "dtype": "bfloat16", "shape": [192, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.01}"#,
            ),
            "blocksize 128",
        ),
        (
            "shape",
            state.clone(),
            json(
                r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [64, 192], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.01}"#,
            ),
            "shape",
        ),
        ("not json", state.clone(), json("{nope"), "not JSON"),
        (
            "truncated",
            weight.to_string(),
            Some((Dtype::U8, vec![100, 1], vec![0; 100])),
            "packed bytes",
        ),
        (
            "missing nested absmax",
            format!("{weight}.nested_absmax"),
            None,
            "nested_absmax",
        ),
        (
            "fp4",
            state.clone(),
            json(
                r#"{"quant_type": "fp4", "blocksize": 64, "dtype": "bfloat16", "shape": [192, 64]}"#,
            ),
            "nf4",
        ),
    ];
    for (case, name, replacement, needle) in cases {
        let dir = tmp.path().join(case.replace(' ', "-"));
        edited_checkpoint(&dir, &name, replacement);
        let err = dllm_model::load_model::<burn::backend::Flex>(
            &dir,
            options(dllm_model::WeightDType::BF16),
            &Default::default(),
        )
        .expect_err(case)
        .to_string();
        assert!(
            err.contains(weight) && err.contains(needle),
            "{case}: {err}"
        );
    }
}
