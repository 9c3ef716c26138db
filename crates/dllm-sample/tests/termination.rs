//! The samplers whose reference loops run until a block is decoded end when the model keeps
//! predicting the mask token itself (the reference loops forever there).
//!
//! The model: the tiny LLaDA checkpoint with its final norm's weight zeroed, so every logit is 0
//! and the greedy candidate everywhere is token 0, made the mask id.

use std::path::PathBuf;

use burn::module::Param;
use burn::tensor::Tensor;
use dllm_model::{load_model, DiffusionLm, LoadOptions};
use dllm_sample::{generate, CacheKind, Method, SamplerConfig};

type B = burn::backend::Flex;

fn mask_predicting_model() -> DiffusionLm<B> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llada-tiny");
    let mut model = load_model::<B>(dir, LoadOptions::default(), &Default::default()).unwrap();
    let d = model.config.d_model;
    model.ln_f.weight = Param::from_tensor(Tensor::zeros([d], &Default::default()));
    model.config.mask_token_id = 0;
    model
}

fn prompts() -> Vec<Vec<u32>> {
    vec![vec![5, 6, 7, 8], vec![9, 10]]
}

fn config() -> SamplerConfig {
    SamplerConfig {
        gen_length: 16,
        block_length: 8,
        steps: 16,
        ..Default::default()
    }
}

#[test]
fn greedy_factor_and_threshold_decoding_end_a_block_that_makes_no_progress() {
    let model = mask_predicting_model();
    for (cache, steps_per_block) in [
        (CacheKind::None, 1),
        // The first step of a block is a full pass, the second a cached one: the block ends
        // once a step has changed nothing and the next would run the same pass.
        (CacheKind::Prefix, 2),
        (CacheKind::Dual, 2),
    ] {
        for (factor, threshold) in [(Some(1.0), None), (None, Some(0.9))] {
            let config = SamplerConfig {
                cache,
                factor,
                threshold,
                ..config()
            };
            let out = generate(&model, &prompts(), &config).unwrap();
            assert_eq!(
                out.steps,
                2 * steps_per_block,
                "{cache:?} {factor:?} {threshold:?}"
            );
            for completion in &out.completions {
                assert!(completion.iter().all(|&t| t == 0), "{completion:?}");
            }
            assert!(out.decode_step.iter().flatten().all(Option::is_none));
        }
    }
}

#[test]
fn sampled_factor_decoding_ends_at_its_step_bound() {
    // At a temperature the candidates are drawn: ties between equal logits go to any token, so
    // blocks are decoded; the bound of 4 steps per position is never the answer here.
    let model = mask_predicting_model();
    let config = SamplerConfig {
        factor: Some(1.0),
        temperature: 1.0,
        ..config()
    };
    let out = generate(&model, &prompts(), &config).unwrap();
    assert!(out.steps <= 2 * 8 * 4, "{}", out.steps);
    assert!(out.completions.iter().flatten().any(|&t| t != 0));
}

#[test]
fn wino_and_roar_finish_when_the_mask_token_is_predicted() {
    let model = mask_predicting_model();
    let wino = SamplerConfig {
        method: Method::Wino,
        ..config()
    };
    let out = generate(&model, &prompts(), &wino).unwrap();
    // One position a step (every confidence is 1/vocab, below the threshold), each accepted;
    // the second block decodes the first block's positions again (they still hold the mask
    // id), as the reference does: 8 + 16 steps.
    assert_eq!(out.steps, 24);
    assert!(out.completions.iter().flatten().all(|&t| t == 0));
    let roar = SamplerConfig {
        method: Method::Roar,
        ..config()
    };
    let out = generate(&model, &prompts(), &roar).unwrap();
    assert_eq!((out.steps, out.nfe), (16, 16));
    let uniform = -(model.config.embed_size() as f32).ln();
    for row in out.token_log_probs.unwrap() {
        assert!(row.iter().all(|&lp| (lp - uniform).abs() < 1e-4), "{row:?}");
    }
}

#[test]
fn wino_and_roar_refuse_a_dream_model_and_factor_refuses_dreams_sampler() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden-dream");
    let model = load_model::<B>(dir, LoadOptions::default(), &Default::default()).unwrap();
    for method in [Method::Wino, Method::Roar] {
        let config = SamplerConfig { method, ..config() };
        let err = generate(&model, &prompts(), &config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("LLaDA") && err.contains("Dream"), "{err}");
    }
    let config = SamplerConfig {
        method: Method::Dream,
        cache: CacheKind::Prefix,
        factor: Some(1.0),
        ..config()
    };
    let err = generate(&model, &prompts(), &config)
        .unwrap_err()
        .to_string();
    assert!(err.contains("factor"), "{err}");
}
