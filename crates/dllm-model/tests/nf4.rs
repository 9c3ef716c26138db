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
