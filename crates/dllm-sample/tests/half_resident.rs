//! bf16-resident weights on the CPU backend compute in f32 (docs/memory.md): the golden model
//! loaded as bf16 gives the logits of an f32 model holding the same (bf16-rounded) weights, stays
//! within bf16 rounding of the reference's f32 logits, and generates the reference's greedy
//! tokens.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::{DType, Int, Tensor, TensorData};
use dllm_model::tensor_file::{read_floats, read_ints};
use dllm_model::{load_model, save_model, DiffusionLm, LoadOptions, WeightDType};
use dllm_sample::{generate, SamplerConfig};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llada-tiny")
}

fn load(dir: &Path, dtype: WeightDType) -> DiffusionLm<Flex> {
    load_model::<Flex>(
        dir,
        LoadOptions {
            dtype,
            quantize: None,
        },
        &Default::default(),
    )
    .expect("load")
}

/// The golden model in bf16, and an f32 model holding exactly its bf16-rounded weights (the
/// bf16 model saved, then loaded as f32).
fn bf16_and_its_f32_twin() -> (DiffusionLm<Flex>, DiffusionLm<Flex>) {
    let bf16 = load(&fixtures(), WeightDType::BF16);
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("dmpo-half-resident-{}-{call}", std::process::id()));
    save_model(&bf16, &dir).expect("save");
    let twin = load(&dir, WeightDType::F32);
    let _ = std::fs::remove_dir_all(&dir);
    (bf16, twin)
}

fn logits(model: &DiffusionLm<Flex>, ids: &Tensor<Flex, 2, Int>) -> Vec<f32> {
    let out = model.forward(ids.clone());
    assert_eq!(out.dtype(), DType::F32, "logits come back in f32");
    out.into_data().to_vec::<f32>().expect("f32")
}

fn max_abs_diff(a: &[f32], b: impl IntoIterator<Item = f64>) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn bf16_resident_logits_equal_f32_on_the_same_weights_and_stay_within_bf16_of_the_reference() {
    let golden = fixtures().join("golden.safetensors");
    let ids = read_ints(&golden, "input_ids").unwrap();
    let want = read_floats(&golden, "logits").unwrap();
    let input = Tensor::<Flex, 2, Int>::from_data(
        TensorData::new(ids.values.clone(), [ids.shape[0], ids.shape[1]]),
        &Default::default(),
    );
    let (bf16, twin) = bf16_and_its_f32_twin();
    let resident = logits(&bf16, &input);
    let same_weights = logits(&twin, &input);
    let twin_diff = max_abs_diff(&resident, same_weights.iter().map(|&v| v as f64));
    assert!(
        twin_diff <= 1e-4,
        "bf16-resident vs f32 with the same weights: {twin_diff}"
    );
    // Against the reference's f32 weights: the rounding of every weight to 8 significant bits.
    let scale = want.values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let reference_diff = max_abs_diff(&resident, want.values.iter().copied());
    assert!(
        reference_diff <= 0.03 * scale,
        "bf16-resident vs the reference's f32 logits: {reference_diff} (largest logit {scale})"
    );
}

#[test]
fn bf16_resident_greedy_generations_equal_f32_on_the_same_weights() {
    let golden = fixtures().join("golden.safetensors");
    let p = read_ints(&golden, "gen_prompts").unwrap();
    let prompts: Vec<Vec<u32>> = p
        .values
        .chunks(p.shape[1])
        .map(|r| r.iter().map(|&t| t as u32).collect())
        .collect();
    let (bf16, twin) = bf16_and_its_f32_twin();
    for (case, steps, block_length) in [
        ("gen_s16_b8", 16, 8),
        ("gen_s8_b8", 8, 8),
        ("gen_s5_b16", 5, 16),
    ] {
        let config = SamplerConfig {
            gen_length: 16,
            block_length,
            steps,
            ..Default::default()
        };
        let resident = generate(&bf16, &prompts, &config).unwrap();
        let same_weights = generate(&twin, &prompts, &config).unwrap();
        assert_eq!(
            resident.completions, same_weights.completions,
            "{case}: bf16-resident vs f32 with the same weights"
        );
        // Against the reference's f32 weights, bf16 rounding can flip a near-tie: counted and
        // bounded (docs/memory.md records the count).
        let out = read_ints(&golden, &format!("{case}_out")).unwrap();
        let row = out.shape[1];
        let (mut differ, mut total) = (0, 0);
        for (b, seq) in resident.sequences().iter().enumerate() {
            for (got, want) in seq.iter().zip(&out.values[b * row..(b + 1) * row]) {
                total += 1;
                differ += usize::from(*got as i64 != *want);
            }
        }
        eprintln!("{case}: {differ} of {total} tokens differ from the f32 reference");
        assert!(
            differ * 4 <= total,
            "{case}: {differ} of {total} tokens differ"
        );
    }
}
