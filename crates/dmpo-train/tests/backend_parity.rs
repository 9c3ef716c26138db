//! The same code on every backend compiled in: golden logits, greedy generations (exact, prefix
//! and dual cache) and one DMPO loss + gradient agree with flex (f32, 1e-4;
//! `dmpo_train::backend_check`). In CI this runs flex and ndarray, and WGPU where that feature is
//! built (`cargo test -p dmpo-train --features wgpu --test backend_parity`).

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::{backend::Backend, ElementConversion};
use dllm_model::backend::{dispatch, BackendKind, BackendTask};
use dllm_model::{load_model, LoadOptions, WeightDType};
use dllm_sample::{generate, SamplerConfig};
use dmpo_train::backend_check::{
    check_outputs, compare_bf16, compare_f32, fixed_wdce_loss, golden_logits, max_abs_diff,
};

/// The golden tiny model of this checkout.
fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llada-tiny")
}

#[test]
fn every_compiled_backend_matches_flex() {
    let reference = check_outputs(BackendKind::Flex, &tiny(), WeightDType::F32).unwrap();
    // Flex itself against the PyTorch golden logits.
    let d = max_abs_diff(&reference.logits, &golden_logits(&tiny()).unwrap());
    assert!(d <= 1e-4, "flex: golden logits differ by {d}");
    let others: Vec<BackendKind> = BackendKind::compiled()
        .into_iter()
        .filter(|b| *b != BackendKind::Flex)
        .collect();
    assert!(
        others.contains(&BackendKind::Ndarray),
        "tests build ndarray beside flex"
    );
    for kind in others {
        let got = check_outputs(kind, &tiny(), WeightDType::F32).unwrap();
        for c in compare_f32(&got, &reference) {
            eprintln!(
                "{kind}: {}: {:.2e} (tolerance {:.0e})",
                c.name, c.difference, c.tolerance
            );
            assert!(c.passed, "{kind}: {c:?}");
        }
    }
}

#[test]
fn the_comparisons_catch_a_wrong_backend() {
    let flex = check_outputs(BackendKind::Flex, &tiny(), WeightDType::F32).unwrap();
    let flex_bf16 = check_outputs(BackendKind::Flex, &tiny(), WeightDType::BF16).unwrap();
    // Flex against itself passes in both precisions.
    assert!(compare_f32(&flex, &flex).iter().all(|c| c.passed));
    assert!(compare_bf16(&flex_bf16, &flex_bf16, &flex)
        .iter()
        .all(|c| c.passed));
    // bf16's own error is well above f32's tolerance: bf16 results fail the f32 comparison…
    let logits = &compare_f32(&flex_bf16, &flex)[0];
    assert!(!logits.passed, "bf16 logits within 1e-4 of f32: {logits:?}");
    // …and a backend off by a tenth of a logit, a wrong token or a scaled gradient fails either.
    let mut wrong = flex_bf16.clone();
    wrong.logits[7] += 0.1 + 4.0 * logits.difference as f32;
    wrong.dual_generation[1][3] ^= 1;
    wrong.grad_head.iter_mut().for_each(|g| *g *= 1.5);
    let failed: Vec<String> = compare_bf16(&wrong, &flex_bf16, &flex)
        .into_iter()
        .filter(|c| !c.passed)
        .map(|c| c.name)
        .collect();
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert!(failed[1].contains("dual cache"), "{failed:?}");
}

/// bf16 and f16 weights on every compiled backend: where the backend computes in that dtype,
/// sampling at temperature 1 (prefix cache) and a LoRA WDCE loss and gradient run and are
/// finite; where it does not (burn's WGPU has no bf16 arithmetic, ndarray no half types), loading
/// is refused with an error that says so, never a panic inside a kernel.
struct HalfPrecision(WeightDType);

impl BackendTask for HalfPrecision {
    type Output = Result<f64, String>;
    fn run<B: Backend>(self, device: B::Device) -> Result<f64, String> {
        let options = LoadOptions {
            dtype: self.0,
            quantize: None,
        };
        let base =
            load_model::<Autodiff<B>>(tiny(), options, &device).map_err(|e| e.to_string())?;
        let lora = dllm_model::LoraConfig {
            r: 4,
            ..Default::default()
        };
        let model = base.with_lora(&lora, &device).unwrap();
        let prompts = vec![vec![3u32, 4, 5, 6, 7, 8, 9, 10]; 2];
        let cfg = SamplerConfig {
            gen_length: 16,
            block_length: 8,
            steps: 8,
            temperature: 1.0,
            cache: dllm_sample::CacheKind::Prefix,
            ..Default::default()
        };
        let out = generate(&model.valid(), &prompts, &cfg).unwrap();
        assert!(out.completions.iter().all(|c| c.len() == 16));

        let loss = fixed_wdce_loss(&model, &tiny(), &device).unwrap();
        let value: f64 = loss.clone().into_scalar().elem();
        let grads = loss.backward();
        let a = model.blocks[0].attn.q_proj.lora.as_ref().unwrap().b.val();
        let grad = a.grad(&grads).expect("the adapter has a gradient");
        let grad: Vec<f32> = grad.into_data().convert::<f32>().to_vec().unwrap();
        assert!(grad.iter().all(|g| g.is_finite()) && grad.iter().any(|g| *g != 0.0));
        Ok(value)
    }
}

#[test]
fn half_precision_runs_or_is_refused_on_every_backend() {
    for kind in BackendKind::compiled() {
        for dtype in [WeightDType::BF16, WeightDType::F16] {
            match dispatch(kind, HalfPrecision(dtype)).unwrap() {
                Ok(loss) => {
                    assert!(loss.is_finite(), "{kind} {dtype:?}: loss {loss}");
                    eprintln!("{kind} {dtype:?}: runs, loss {loss:.4}");
                }
                Err(e) => {
                    assert!(kind != BackendKind::Flex, "flex must run {dtype:?}: {e}");
                    assert!(e.contains("cannot compute in"), "{kind} {dtype:?}: {e}");
                    eprintln!("{kind} {dtype:?}: refused: {e}");
                }
            }
        }
    }
}

/// A checkpoint quantised by bitsandbytes (NF4, double quantisation) on every compiled backend:
/// flex multiplies panel by panel inside its kernel, the others decode each layer with tensor
/// ops (WGPU rounds to bf16 in f32 arithmetic, having no bf16); logits, greedy generations and a
/// LoRA loss gradient through the frozen NF4 layers agree with flex, whose logits equal
/// bitsandbytes' own within 1e-4.
#[test]
fn an_nf4_checkpoint_on_every_backend_matches_flex() {
    let fixtures = tiny().join("..");
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(
            fixtures.join("nf4/llada-tiny-nf4").join(f),
            dir.path().join(f),
        )
        .unwrap();
    }
    for f in ["golden.safetensors", "golden_train.safetensors"] {
        std::fs::copy(tiny().join(f), dir.path().join(f)).unwrap();
    }
    let reference = check_outputs(BackendKind::Flex, dir.path(), WeightDType::F32).unwrap();
    let bitsandbytes = dllm_model::tensor_file::read_floats(
        fixtures.join("nf4/reference.safetensors"),
        "model.logits",
    )
    .unwrap();
    let bitsandbytes: Vec<f32> = bitsandbytes.values.iter().map(|&v| v as f32).collect();
    let d = max_abs_diff(&reference.logits, &bitsandbytes);
    assert!(d <= 1e-4, "flex: bitsandbytes' logits differ by {d}");
    for kind in BackendKind::compiled()
        .into_iter()
        .filter(|b| *b != BackendKind::Flex)
    {
        let got = check_outputs(kind, dir.path(), WeightDType::F32).unwrap();
        for c in compare_f32(&got, &reference) {
            eprintln!(
                "{kind} (NF4): {}: {:.2e} (tolerance {:.0e})",
                c.name, c.difference, c.tolerance
            );
            assert!(c.passed, "{kind} (NF4): {c:?}");
        }
    }
}
