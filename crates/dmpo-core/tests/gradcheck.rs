//! Finite-difference gradient checks of WDCE (docs/algorithm.md §4) and diffu-GRPO (docs/algorithm.md §6) on a tiny
//! LLaDA with LoRA adapters, in f64 (Flex computes in the device's default float dtype, set to
//! F64 for this test binary), central differences on LoRA parameters.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Param};
use burn::tensor::{backend::Backend, DType, Distribution, Tensor, TensorData};
use common::*;
use dllm_model::{DiffusionLm, LoraConfig, ModelConfig};
use dmpo_core::masks::{sample_prompt_mask, MaskOptions, ReplicateMasks};
use dmpo_core::{
    diffu_grpo_loss, mean_field_logprobs, wdce_loss_with_masks, Baseline, DmpoConfig, GrpoConfig,
    ModelView, RolloutWeights, SequenceBatch,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

type AB = Autodiff<Flex>;

/// Makes F64 the default float dtype of the CPU device (once per test binary).
fn use_f64() {
    let device = Default::default();
    let _ = burn::tensor::set_default_dtypes::<Flex>(&device, DType::F64, DType::I32);
    let _ = burn::tensor::set_default_dtypes::<AB>(&device, DType::F64, DType::I32);
    assert_eq!(Tensor::<AB, 1>::zeros([1], &device).dtype(), DType::F64);
    assert_eq!(Tensor::<Flex, 1>::zeros([1], &device).dtype(), DType::F64);
}

fn model() -> DiffusionLm<AB> {
    let device = Default::default();
    <AB as Backend>::seed(&device, 5);
    let config = ModelConfig::tiny(32, 2, 4, 64, 50, 49, 48);
    let lora = LoraConfig {
        r: 2,
        lora_alpha: 4.0,
        lora_dropout: 0.0,
        ..LoraConfig::default()
    };
    let mut m = DiffusionLm::<AB>::init(&config, &device)
        .with_lora(&lora, &device)
        .unwrap();
    for block in &mut m.blocks {
        for (_, lin) in block.linears_mut() {
            if let Some(l) = lin.lora.as_mut() {
                let dims = l.b.val().dims();
                l.b = Param::from_tensor(Tensor::random(
                    dims,
                    Distribution::Normal(0.0, 0.5),
                    &device,
                ));
            }
        }
    }
    assert_eq!(m.wte.val().dtype(), DType::F64);
    m
}

/// (block, linear name, "a" or "b", flat index) of the parameters checked.
const PROBES: [(usize, &str, &str, usize); 6] = [
    (0, "q_proj", "a", 3),
    (0, "q_proj", "b", 17),
    (0, "ff_out", "b", 5),
    (1, "v_proj", "a", 40),
    (1, "up_proj", "b", 9),
    (1, "attn_out", "a", 21),
];

fn lora_param<'a, Bk: Backend>(
    model: &'a mut DiffusionLm<Bk>,
    block: usize,
    name: &str,
    which: &str,
) -> &'a mut Param<Tensor<Bk, 2>> {
    let lin = model.blocks[block]
        .linears_mut()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap()
        .1;
    let lora = lin.lora.as_mut().unwrap();
    if which == "a" {
        &mut lora.a
    } else {
        &mut lora.b
    }
}

/// Autodiff gradient vs central difference at every probe; returns the largest relative error.
fn check<F: Fn(&DiffusionLm<Flex>) -> f64>(
    model: &DiffusionLm<AB>,
    loss_ad: Tensor<AB, 1>,
    loss_inner: F,
) -> f64 {
    let grads = loss_ad.backward();
    // The whole model runs in f64 (RMSNorm upcasts only half precision), so a small step keeps
    // both rounding noise and the O(eps^2) truncation error far below 1e-3 of the gradient
    // (measured with eps 1e-4: worst relative errors 3e-7 WDCE, 5e-7 diffu-GRPO).
    let eps = 1e-4;
    let mut worst: f64 = 0.0;
    let mut big = 0;
    for (block, name, which, idx) in PROBES {
        let mut m = model.clone();
        let g_ad = values(lora_param(&mut m, block, name, which).grad(&grads).unwrap())[idx];
        let base = model.valid();
        let shifted = |delta: f64| {
            let mut m = base.clone();
            let p = lora_param(&mut m, block, name, which);
            let val = p.val();
            let dims = val.dims();
            let mut bump = vec![0.0f64; dims[0] * dims[1]];
            bump[idx] = delta;
            let bump = Tensor::<Flex, 2>::from_data(TensorData::new(bump, dims), &val.device());
            *p = Param::from_tensor(val + bump);
            loss_inner(&m)
        };
        let g_fd = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
        let rel = (g_ad - g_fd).abs() / g_ad.abs().max(g_fd.abs());
        eprintln!("{name}.{which}[{idx}] block {block}: autodiff {g_ad:.8e}  fd {g_fd:.8e}  rel {rel:.2e}");
        if g_ad.abs() > 1e-5 {
            // Relative error on gradients that stand out of the rounding noise.
            big += 1;
            worst = worst.max(rel);
        } else {
            assert!(
                (g_ad - g_fd).abs() < 1e-6,
                "{name}.{which}[{idx}]: {g_ad} vs {g_fd}"
            );
        }
    }
    assert!(
        big >= 4,
        "too few probes with a non-negligible gradient ({big})"
    );
    worst
}

fn batch<Bk: Backend>() -> SequenceBatch<Bk> {
    batch_rows::<Bk>(
        &[
            vec![3, 4, 5, 10, 11, 12, 13, 48, 48],
            vec![3, 4, 5, 20, 21, 22, 23, 24, 25],
            vec![6, 7, 8, 30, 31, 48, 48, 48, 48],
            vec![6, 7, 8, 33, 34, 35, 36, 37, 48],
        ],
        3,
        48,
    )
}

#[test]
fn wdce_gradient_matches_finite_differences() {
    use_f64();
    let model = model();
    let masks = ReplicateMasks::sample(
        &mut ChaCha8Rng::seed_from_u64(1),
        &batch::<Flex>().eos_index,
        6,
        &MaskOptions {
            replicates: 4,
            antithetic: true,
            clamp: true,
            mask_after_eos: true,
        },
    )
    .unwrap();
    let rollout = RolloutWeights {
        group_size: 2,
        w_plus: vec![0.8, 0.2, 0.35, 0.65],
        w_minus: vec![0.3, 0.7, 0.6, 0.4],
        ell_cur: vec![-20.0, -22.0, -18.0, -25.0],
        coeffs: vec![1.0, 1.0],
    };
    for baseline in [Baseline::NegativeCentering, Baseline::None] {
        let config = DmpoConfig {
            baseline,
            ..DmpoConfig::default()
        };
        let loss = wdce_loss_with_masks(
            &ModelView::policy(&model),
            &batch::<AB>(),
            &rollout,
            &config,
            &masks,
        )
        .unwrap()
        .loss;
        let worst = check(&model, loss, |m| {
            scalar(
                wdce_loss_with_masks(
                    &ModelView::policy(m),
                    &batch::<Flex>(),
                    &rollout,
                    &config,
                    &masks,
                )
                .unwrap()
                .loss,
            )
        });
        eprintln!("WDCE ({baseline:?}) worst relative error {worst:.2e}");
        assert!(worst <= 1e-3, "WDCE gradient relative error {worst}");
    }
}

#[test]
fn diffu_grpo_gradient_matches_finite_differences() {
    use_f64();
    let model = model();
    let prompt_mask = sample_prompt_mask(&mut ChaCha8Rng::seed_from_u64(2), 4, 3, 0.15);
    // Old and reference log-probs: the current ones shifted by fixed offsets, so that some
    // ratios are clipped and the KL term is non-zero.
    let current = values(
        mean_field_logprobs(
            &ModelView::policy(&model.valid()),
            &batch::<Flex>(),
            &prompt_mask,
        )
        .unwrap(),
    );
    let old: Vec<f64> = current
        .iter()
        .enumerate()
        .map(|(i, v)| v + 0.3 * ((i % 5) as f64 - 2.0))
        .collect();
    let reference: Vec<f64> = current
        .iter()
        .enumerate()
        .map(|(i, v)| v + 0.1 * ((i % 3) as f64 - 1.0))
        .collect();
    let advantages = [1.2, -0.8, 0.5, -0.9];
    let config = GrpoConfig::default();
    let b_ad = batch::<AB>();
    let logp = mean_field_logprobs(&ModelView::policy(&model), &b_ad, &prompt_mask).unwrap();
    let out = grpo_on(logp, &b_ad, &old, &reference, &advantages, &config);
    eprintln!(
        "clip ratio {}, kl {:?}",
        out.diagnostics.clip_ratio, out.diagnostics.kl
    );
    assert!(out.diagnostics.clip_ratio > 0.0 && out.diagnostics.clip_ratio < 1.0);
    let worst = check(&model, out.loss, |m| {
        let b = batch::<Flex>();
        let logp = mean_field_logprobs(&ModelView::policy(m), &b, &prompt_mask).unwrap();
        scalar(grpo_on(logp, &b, &old, &reference, &advantages, &config).loss)
    });
    eprintln!("diffu-GRPO worst relative error {worst:.2e}");
    assert!(worst <= 1e-3, "diffu-GRPO gradient relative error {worst}");
}

fn grpo_on<Bk: Backend>(
    logp: Tensor<Bk, 2>,
    batch: &SequenceBatch<Bk>,
    old: &[f64],
    reference: &[f64],
    advantages: &[f64],
    config: &GrpoConfig,
) -> dmpo_core::LossOutput<Bk, dmpo_core::GrpoDiagnostics> {
    let device = logp.device();
    let t = |v: &[f64]| Tensor::from_data(TensorData::new(v.to_vec(), [4, 6]), &device);
    diffu_grpo_loss(
        logp,
        Some(t(old)),
        Some(t(reference)),
        advantages,
        batch.completion_mask_tensor(),
        config,
    )
    .unwrap()
}
