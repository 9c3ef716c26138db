//! Greedy generations of the tiny Dream model (`fixtures/golden-dream`) match Dream's own
//! `diffusion_generate` token for token, for each deterministic algorithm.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use dllm_model::tensor_file::read_ints;
use dllm_model::{load_model, LoadOptions};
use dllm_sample::{generate, CacheKind, DreamAlg, Method, SamplerConfig};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden-dream")
}

fn rows(name: &str) -> Vec<Vec<u32>> {
    let t = read_ints(fixtures().join("golden.safetensors"), name).unwrap();
    t.values
        .chunks(t.shape[1])
        .map(|r| r.iter().map(|&v| v as u32).collect())
        .collect()
}

/// The settings `scripts/dream_golden.py` generated with: 12 tokens, 12 steps, greedy.
fn dream(alg: DreamAlg) -> SamplerConfig {
    SamplerConfig {
        method: Method::Dream,
        alg,
        gen_length: 12,
        block_length: 12,
        steps: 12,
        ..Default::default()
    }
}

fn check<B: Backend>(alg: DreamAlg, name: &str) {
    let model = load_model::<B>(fixtures(), LoadOptions::default(), &Default::default()).unwrap();
    let prompts = rows("prompt_ids");
    let want = rows(&format!("generation_{name}"));
    let out = generate(&model, &prompts, &dream(alg)).unwrap();
    assert_eq!(out.sequences(), want, "{name}");
    assert_eq!(out.nfe, 12);
    assert!(out.decode_step.iter().flatten().all(Option::is_some));
}

#[test]
fn maskgit_plus_matches_the_reference() {
    check::<burn::backend::Flex>(DreamAlg::MaskgitPlus, "maskgit_plus");
}

#[test]
fn topk_margin_matches_the_reference() {
    check::<burn::backend::Flex>(DreamAlg::TopkMargin, "topk_margin");
}

#[test]
fn entropy_matches_the_reference() {
    check::<burn::backend::Flex>(DreamAlg::Entropy, "entropy");
}

#[test]
fn entropy_matches_the_reference_on_ndarray() {
    check::<burn::backend::NdArray>(DreamAlg::Entropy, "entropy");
}

#[test]
fn sampled_settings_are_reproducible_and_complete() {
    type B = burn::backend::Flex;
    let model = load_model::<B>(fixtures(), LoadOptions::default(), &Default::default()).unwrap();
    let prompts = rows("prompt_ids");
    for alg in [DreamAlg::Origin, DreamAlg::MaskgitPlus, DreamAlg::Entropy] {
        let config = SamplerConfig {
            temperature: 0.7,
            top_p: Some(0.9),
            top_k: Some(50),
            alg_temp: if alg == DreamAlg::Origin { 0.0 } else { 0.5 },
            seed: 3,
            ..dream(alg)
        };
        let a = generate(&model, &prompts, &config).unwrap();
        let b = generate(&model, &prompts, &config).unwrap();
        assert_eq!(a, b, "{alg:?}");
        let other = generate(
            &model,
            &prompts,
            &SamplerConfig {
                seed: 4,
                ..config.clone()
            },
        )
        .unwrap();
        assert_ne!(
            a.completions, other.completions,
            "{alg:?}: the seed changes the draws"
        );
        // Every position is unmasked by the last step (unless the model chose the mask id).
        assert!(
            a.decode_step.iter().flatten().all(Option::is_some),
            "{alg:?}"
        );
        // A row is generated the same alone as beside another.
        let alone = generate(&model, &prompts[..1], &config).unwrap();
        assert_eq!(alone.completions[0], a.completions[0], "{alg:?}");
    }
}

/// Fast-dLLM's block-wise Dream sampler (`generation_utils_block.py`, recorded by
/// `scripts/dream_golden.py --fast-dllm`): block length 4, 12 steps, greedy; entropy steps or
/// threshold 0.9 decoding, prefix or dual cache.
#[test]
fn block_wise_caches_match_fast_dllm() {
    type B = burn::backend::Flex;
    let model = load_model::<B>(fixtures(), LoadOptions::default(), &Default::default()).unwrap();
    let prompts = rows("prompt_ids");
    for (cache, name) in [(CacheKind::Prefix, "prefix"), (CacheKind::Dual, "dual")] {
        for (threshold, alg, kind) in [
            (None, DreamAlg::Entropy, "entropy"),
            (Some(0.9), DreamAlg::MaskgitPlus, "threshold"),
        ] {
            let config = SamplerConfig {
                cache,
                threshold,
                block_length: 4,
                ..dream(alg)
            };
            let out = generate(&model, &prompts, &config).unwrap();
            let want = rows(&format!("block_{name}_{kind}"));
            assert_eq!(out.sequences(), want, "{name} {kind}");
            if threshold.is_none() {
                // Per block: the full pass, then steps_per_block - 1 cached passes.
                assert_eq!(out.nfe, 12, "{name} {kind}");
            }
        }
    }
}

#[test]
fn settings_of_the_other_sampler_are_refused() {
    let e = SamplerConfig {
        alg: DreamAlg::Origin,
        ..Default::default()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(e.contains("alg is a setting of Dream's sampler"), "{e}");
    let e = SamplerConfig {
        cfg_scale: 1.0,
        ..dream(DreamAlg::Entropy)
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(e.contains("cfg_scale"), "{e}");
    let e = SamplerConfig {
        cache: CacheKind::Dual,
        ..dream(DreamAlg::TopkMargin)
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(e.contains("alg must be entropy"), "{e}");
}

#[test]
fn llada_cached_sampling_of_a_dream_model_is_refused() {
    type B = burn::backend::Flex;
    let model = load_model::<B>(fixtures(), LoadOptions::default(), &Default::default()).unwrap();
    let config = SamplerConfig {
        gen_length: 12,
        block_length: 4,
        steps: 12,
        cache: CacheKind::Prefix,
        ..Default::default()
    };
    let e = generate(&model, &rows("prompt_ids"), &config)
        .unwrap_err()
        .to_string();
    assert!(e.contains("method = \"dream\""), "{e}");
    // Without a cache LLaDA's sampler reads the aligned logits and runs.
    let plain = SamplerConfig {
        cache: CacheKind::None,
        ..config
    };
    let out = generate(&model, &rows("prompt_ids"), &plain).unwrap();
    assert_eq!(out.completions[0].len(), 12);
}
