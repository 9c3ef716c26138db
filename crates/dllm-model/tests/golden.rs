//! The tiny LLaDA checkpoint reproduces the reference PyTorch logits (docs/algorithm.md §1).

mod common;

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use common::*;
use dllm_model::tensor_file::{read_floats, read_ints};
use dllm_model::{load_model, ForwardOptions, LoadOptions, LogitPositions};

fn golden_logits<B: Backend>(dir: &std::path::Path) {
    let device = Default::default();
    let model = load_model::<B>(dir, LoadOptions::default(), &device).expect("load");
    let ids = read_ints(golden(), "input_ids").unwrap();
    let want = read_floats(golden(), "logits").unwrap();
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.values.clone(), [ids.shape[0], ids.shape[1]]),
        &device,
    );
    let logits = model.forward(input.clone());
    assert_eq!(logits.dims().to_vec(), want.shape);
    let got = logits.into_data().convert::<f32>().to_vec::<f32>().unwrap();
    let diff = max_abs_diff(&got, &want.values);
    assert!(diff <= 1e-4, "max abs diff {diff}");

    // Logits at a range of positions equal the same slice of the full logits.
    let part = model.forward_with(
        input,
        &ForwardOptions::default(),
        &LogitPositions::Range(10..24),
    );
    let part = part.into_data().to_vec::<f32>().unwrap();
    let vocab = want.shape[2];
    for b in 0..2 {
        for p in 10..24 {
            for v in 0..vocab {
                let full = got[(b * 24 + p) * vocab + v];
                let sub = part[(b * 14 + p - 10) * vocab + v];
                assert!((full - sub).abs() < 1e-5);
            }
        }
    }
}

#[test]
fn golden_logits_single_file_flex() {
    golden_logits::<burn::backend::Flex>(&tiny_dir());
}

#[test]
fn golden_logits_sharded_flex() {
    golden_logits::<burn::backend::Flex>(&tiny_dir().join("sharded"));
}

#[test]
fn golden_logits_single_file_ndarray() {
    golden_logits::<burn::backend::NdArray>(&tiny_dir());
}

#[test]
fn golden_logits_sharded_ndarray() {
    golden_logits::<burn::backend::NdArray>(&tiny_dir().join("sharded"));
}
