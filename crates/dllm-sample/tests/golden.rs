//! Greedy generations match the reference LLaDA `generate` token for token, step by step.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use dllm_model::tensor_file::read_ints;
use dllm_model::{load_model, LoadOptions};
use dllm_sample::{generate_with_observer, CacheKind, SamplerConfig};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llada-tiny")
}

fn prompts() -> Vec<Vec<u32>> {
    let p = read_ints(fixtures().join("golden.safetensors"), "gen_prompts").unwrap();
    p.values
        .chunks(p.shape[1])
        .map(|r| r.iter().map(|&t| t as u32).collect())
        .collect()
}

fn check_case<B: Backend>(case: &str, steps: usize, block_length: usize) {
    let model = load_model::<B>(fixtures(), LoadOptions::default(), &Default::default()).unwrap();
    let golden = fixtures().join("golden.safetensors");
    let out = read_ints(&golden, &format!("{case}_out")).unwrap();
    let trace = read_ints(&golden, &format!("{case}_trace")).unwrap();
    let config = SamplerConfig {
        gen_length: 16,
        block_length,
        steps,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let result = generate_with_observer(&model, &prompts(), &config, &mut |e| {
        seen.push(e.completions.to_vec());
    })
    .unwrap();
    assert_eq!(result.steps, steps);
    assert_eq!(result.nfe, steps);
    // Every intermediate state equals the reference trace (trace[s + 1] is after step s).
    let row = 24;
    for (s, state) in seen.iter().enumerate() {
        for (b, got) in state.iter().enumerate() {
            let want: Vec<u32> = trace.values
                [(s + 1) * 2 * row + b * row + 8..(s + 1) * 2 * row + (b + 1) * row]
                .iter()
                .map(|&t| t as u32)
                .collect();
            assert_eq!(got, &want, "{case}: step {s}, row {b}");
        }
    }
    for (b, seq) in result.sequences().iter().enumerate() {
        let want: Vec<u32> = out.values[b * row..(b + 1) * row]
            .iter()
            .map(|&t| t as u32)
            .collect();
        assert_eq!(seq, &want, "{case} row {b}");
    }
}

#[test]
fn golden_greedy_steps16_block8() {
    check_case::<burn::backend::Flex>("gen_s16_b8", 16, 8);
}

#[test]
fn golden_greedy_steps8_block8() {
    check_case::<burn::backend::Flex>("gen_s8_b8", 8, 8);
}

#[test]
fn golden_greedy_steps5_block16_uneven_schedule() {
    check_case::<burn::backend::Flex>("gen_s5_b16", 5, 16);
}

#[test]
fn golden_greedy_ndarray() {
    check_case::<burn::backend::NdArray>("gen_s16_b8", 16, 8);
    check_case::<burn::backend::NdArray>("gen_s5_b16", 5, 16);
}

#[test]
fn refreshed_caches_equal_the_exact_sampler() {
    type B = burn::backend::Flex;
    let model = load_model::<B>(fixtures(), LoadOptions::default(), &Default::default()).unwrap();
    let exact = SamplerConfig {
        gen_length: 16,
        block_length: 8,
        steps: 16,
        ..Default::default()
    };
    let want = dllm_sample::generate(&model, &prompts(), &exact).unwrap();
    for cache in [CacheKind::Prefix, CacheKind::Dual] {
        let cfg = SamplerConfig {
            cache,
            refresh_every: Some(1),
            ..exact.clone()
        };
        let got = dllm_sample::generate(&model, &prompts(), &cfg).unwrap();
        assert_eq!(got.completions, want.completions, "{cache:?}");
    }
}
