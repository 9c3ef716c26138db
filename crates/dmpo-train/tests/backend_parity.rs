//! The same code on every backend compiled in: golden logits, a greedy generation and one DMPO
//! loss + gradient agree with flex (f32, 1e-4). In CI this runs flex and ndarray (and WGPU or
//! CUDA where those features are built, e.g. by `scripts/gpu-check.sh`).

use std::path::PathBuf;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::{backend::Backend, ElementConversion, Int, Tensor, TensorData};
use dllm_model::backend::{dispatch, BackendKind, BackendTask};
use dllm_model::tensor_file::{read_floats, read_ints};
use dllm_model::{load_model, DiffusionLm, LoadOptions};
use dllm_sample::{generate, SamplerConfig};
use dmpo_core::{
    wdce_loss_with_masks, DmpoConfig, ModelView, ReplicateMasks, RolloutWeights, SequenceBatch,
};

/// The repository root: `DMPO_REPO` when set (a GPU bundle), else this checkout.
fn tiny() -> PathBuf {
    let root = std::env::var_os("DMPO_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."));
    root.join("fixtures/llada-tiny")
}

/// What each backend computes.
#[derive(Debug, Clone)]
struct Outputs {
    logits: Vec<f32>,
    generation: Vec<Vec<u32>>,
    loss: f64,
    grad_head: Vec<f32>,
}

struct Run;

impl BackendTask for Run {
    type Output = Outputs;
    fn run<B: Backend>(self, device: B::Device) -> Outputs {
        let golden = tiny().join("golden.safetensors");
        let model = load_model::<Autodiff<B>>(tiny(), LoadOptions::default(), &device).unwrap();
        let ids = read_ints(&golden, "input_ids").unwrap();
        let inner = model.valid();
        let input =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids.values.clone(), [2, 24]), &device);
        let logits = inner
            .forward(input)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap();

        let p = read_ints(&golden, "gen_prompts").unwrap();
        let prompts: Vec<Vec<u32>> = p
            .values
            .chunks(8)
            .map(|r| r.iter().map(|&t| t as u32).collect())
            .collect();
        let cfg = SamplerConfig {
            gen_length: 16,
            block_length: 8,
            steps: 16,
            ..Default::default()
        };
        let generation = generate(&inner, &prompts, &cfg).unwrap().completions;

        // One WDCE loss and gradient on fixed masks and weights (a group of 2).
        let loss = fixed_wdce_loss(&model, &device);
        let value: f64 = loss.clone().into_scalar().elem();
        let grads = loss.backward();
        let head = model.head.as_ref().unwrap().weight.val();
        let grad_head = head
            .grad(&grads)
            .unwrap()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap();
        Outputs {
            logits,
            generation,
            loss: value,
            grad_head,
        }
    }
}

/// The WDCE loss of `model` on the golden targets with fixed masks and weights (a group of 2).
fn fixed_wdce_loss<B: Backend>(
    model: &DiffusionLm<Autodiff<B>>,
    device: &B::Device,
) -> Tensor<Autodiff<B>, 1> {
    let golden = tiny().join("golden.safetensors");
    let seq = read_ints(&golden, "targets").unwrap();
    let x = Tensor::<Autodiff<B>, 2, Int>::from_data(TensorData::new(seq.values, [2, 24]), device);
    let batch = SequenceBatch::with_eos_index(x, 8, vec![16, 16]).unwrap();
    let masked: Vec<bool> = (0..2 * 2 * 16).map(|i| (i * 7) % 3 == 0).collect();
    let masks = ReplicateMasks::from_rows(2, 2, 16, masked).unwrap();
    let weights = RolloutWeights {
        group_size: 2,
        w_plus: vec![0.7, 0.3],
        w_minus: vec![0.2, 0.8],
        ell_cur: vec![-10.0, -12.0],
        coeffs: vec![1.0],
    };
    let config = DmpoConfig {
        num_replicates: 2,
        ..Default::default()
    };
    wdce_loss_with_masks(&ModelView::policy(model), &batch, &weights, &config, &masks)
        .unwrap()
        .loss
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn every_compiled_backend_matches_flex() {
    let reference = dispatch(BackendKind::Flex, Run).unwrap();
    // Flex itself against the PyTorch golden logits.
    let want = read_floats(tiny().join("golden.safetensors"), "logits").unwrap();
    let w: Vec<f32> = want.values.iter().map(|&v| v as f32).collect();
    assert!(max_diff(&reference.logits, &w) <= 1e-4);
    let others: Vec<BackendKind> = BackendKind::compiled()
        .into_iter()
        .filter(|b| *b != BackendKind::Flex)
        .collect();
    assert!(
        others.contains(&BackendKind::Ndarray),
        "tests build ndarray beside flex"
    );
    for kind in others {
        let got = dispatch(kind, Run).unwrap();
        let d = max_diff(&got.logits, &reference.logits);
        assert!(d <= 1e-4, "{kind}: logits differ by {d}");
        assert_eq!(
            got.generation, reference.generation,
            "{kind}: greedy generation differs"
        );
        assert!(
            (got.loss - reference.loss).abs() <= 1e-4 * reference.loss.abs().max(1.0),
            "{kind}: loss {} vs {}",
            got.loss,
            reference.loss
        );
        let g = max_diff(&got.grad_head, &reference.grad_head);
        assert!(g <= 1e-4, "{kind}: gradient differs by {g}");
        eprintln!(
            "{kind}: logits {d:.2e}, loss {:.2e}, grad {g:.2e}",
            (got.loss - reference.loss).abs()
        );
    }
}

/// bf16 and f16 weights on every compiled backend: where the backend computes in that dtype,
/// sampling at temperature 1 (prefix cache) and a LoRA WDCE loss and gradient run and are
/// finite; where it does not (burn's WGPU has no bf16 arithmetic, ndarray no half types), loading
/// is refused with an error that says so, never a panic inside a kernel.
struct HalfPrecision(dllm_model::WeightDType);

impl BackendTask for HalfPrecision {
    type Output = Result<f64, String>;
    fn run<B: Backend>(self, device: B::Device) -> Result<f64, String> {
        let options = LoadOptions { dtype: self.0 };
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

        let loss = fixed_wdce_loss(&model, &device);
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
        for dtype in [dllm_model::WeightDType::BF16, dllm_model::WeightDType::F16] {
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
