//! Properties of the sampler on a real (tiny) model across random settings.

use std::path::PathBuf;

use dllm_model::{load_model, DiffusionLm, LoadOptions};
use dllm_sample::{
    generate_with_observer, num_transfer_tokens, CacheKind, Method, Remasking, SamplerConfig,
};
use proptest::prelude::*;

type B = burn::backend::Flex;
const MASK: u32 = 299;

fn model() -> DiffusionLm<B> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llada-tiny");
    load_model::<B>(dir, LoadOptions::default(), &Default::default()).unwrap()
}

fn settings() -> impl Strategy<Value = (SamplerConfig, Vec<Vec<u32>>)> {
    (
        prop::sample::select(vec![(16usize, 8usize), (16, 16), (24, 8), (12, 4)]),
        1usize..4,
        prop::sample::select(vec![0.0f64, 0.8]),
        prop::bool::ANY,
        prop::sample::select(vec![CacheKind::None, CacheKind::Prefix, CacheKind::Dual]),
        prop::option::of(0.2f64..0.95),
        any::<u64>(),
        prop::collection::vec(prop::collection::vec(0u32..298, 1..8), 1..4),
    )
        .prop_map(
            |((gen, block), spb, temperature, random, cache, threshold, seed, prompts)| {
                let config = SamplerConfig {
                    gen_length: gen,
                    block_length: block,
                    steps: spb * (gen / block),
                    temperature,
                    remasking: if random {
                        Remasking::Random
                    } else {
                        Remasking::LowConfidence
                    },
                    cache,
                    threshold,
                    padding_mask: seed % 2 == 0,
                    seed,
                    ..Default::default()
                };
                (config, prompts)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn schedule_commits_each_position_once_inside_the_current_block((config, prompts) in settings()) {
        let model = model();
        let gen = config.gen_length;
        let mut prev: Vec<Vec<u32>> = vec![vec![MASK; gen]; prompts.len()];
        let mut commits = vec![0usize; prompts.len()];
        let mut violations = Vec::new();
        let out = generate_with_observer(&model, &prompts, &config, &mut |e| {
            let block_end = (e.block + 1) * config.block_length;
            for (b, row) in e.completions.iter().enumerate() {
                let mut this_step = 0;
                for j in 0..gen {
                    if prev[b][j] != MASK && row[j] != prev[b][j] {
                        violations.push(format!("row {b} pos {j} changed after commit"));
                    }
                    if prev[b][j] == MASK && row[j] != MASK {
                        this_step += 1;
                        if j >= block_end {
                            violations.push(format!("row {b} pos {j} committed in block {}", e.block));
                        }
                    }
                }
                if config.threshold.is_none() {
                    let want = num_transfer_tokens(config.block_length, config.steps_per_block());
                    let s = e.step % config.steps_per_block();
                    if this_step > want[s] {
                        violations.push(format!("row {b} step {} committed {this_step} > {}", e.step, want[s]));
                    }
                }
                commits[b] += this_step;
            }
            prev = e.completions.to_vec();
        }).unwrap();
        prop_assert!(violations.is_empty(), "{:?}", violations);
        for (b, c) in out.completions.iter().enumerate() {
            let left = c.iter().filter(|&&t| t == MASK).count();
            prop_assert_eq!(commits[b] + left, gen);
            prop_assert_eq!(out.decode_step[b].iter().filter(|s| s.is_some()).count(), commits[b]);
            prop_assert_eq!(out.eos_position[b], c.iter().position(|&t| t == 298));
        }
    }
}

#[test]
fn bad_settings_are_refused() {
    let model = model();
    let p = vec![vec![1u32, 2]];
    let cases = [
        (
            SamplerConfig {
                gen_length: 10,
                block_length: 4,
                ..Default::default()
            },
            "not a multiple of block_length",
        ),
        (
            SamplerConfig {
                gen_length: 16,
                block_length: 8,
                steps: 3,
                ..Default::default()
            },
            "multiple of the number of blocks",
        ),
        (
            SamplerConfig {
                temperature: -1.0,
                ..Default::default()
            },
            "temperature",
        ),
    ];
    for (cfg, msg) in cases {
        let e = dllm_sample::generate(&model, &p, &cfg)
            .unwrap_err()
            .to_string();
        assert!(e.contains(msg), "{e}");
    }
    let cfg = SamplerConfig {
        gen_length: 8,
        block_length: 8,
        steps: 8,
        ..Default::default()
    };
    let e = dllm_sample::generate(&model, &[vec![1, 299]], &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("contains id 299"), "{e}");
    let e = dllm_sample::generate(&model, &[vec![]], &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty"), "{e}");
}

#[test]
fn same_seed_same_samples_and_threshold_saves_steps() {
    let model = model();
    let p = vec![vec![5u32, 6, 7], vec![9u32]];
    let cfg = SamplerConfig {
        gen_length: 16,
        block_length: 8,
        steps: 16,
        temperature: 1.0,
        seed: 7,
        ..Default::default()
    };
    let a = dllm_sample::generate(&model, &p, &cfg).unwrap();
    let b = dllm_sample::generate(&model, &p, &cfg).unwrap();
    assert_eq!(a, b);
    let c = dllm_sample::generate(
        &model,
        &p,
        &SamplerConfig {
            seed: 8,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_ne!(a.completions, c.completions);
    let fast = dllm_sample::generate(
        &model,
        &p,
        &SamplerConfig {
            threshold: Some(0.05),
            temperature: 0.0,
            ..cfg
        },
    )
    .unwrap();
    assert!(fast.nfe < 16, "threshold decoding took {} steps", fast.nfe);
}

#[test]
fn cfg_runs_two_evaluations_per_step() {
    let model = model();
    let cfg = SamplerConfig {
        gen_length: 8,
        block_length: 8,
        steps: 4,
        cfg_scale: 1.0,
        ..Default::default()
    };
    let out = dllm_sample::generate(&model, &[vec![3u32, 4]], &cfg).unwrap();
    assert_eq!(out.nfe, 8);
    let plain = dllm_sample::generate(
        &model,
        &[vec![3u32, 4]],
        &SamplerConfig {
            cfg_scale: 0.0,
            ..cfg
        },
    )
    .unwrap();
    assert_eq!(plain.nfe, 4);
}

#[test]
fn logits_eos_inf_never_generates_eos() {
    let model = model();
    let eos = model.config.eos_token_id;
    let prompts: Vec<Vec<u32>> = (0..4u32)
        .map(|r| (0..6).map(|i| (r * 31 + i * 7) % 290).collect())
        .collect();
    for temperature in [0.0, 1.0] {
        let config = SamplerConfig {
            gen_length: 16,
            block_length: 8,
            steps: 16,
            temperature,
            logits_eos_inf: true,
            seed: 3,
            ..Default::default()
        };
        let out = dllm_sample::generate(&model, &prompts, &config).unwrap();
        assert!(out
            .completions
            .iter()
            .flatten()
            .all(|&t| t != eos && t != MASK));
    }
    let needs_eot = SamplerConfig {
        confidence_eos_eot_inf: true,
        ..Default::default()
    };
    assert!(needs_eot
        .validate()
        .unwrap_err()
        .to_string()
        .contains("eot_token_id"));
}

/// The tiny Sudoku model: confident enough for threshold, factor and WINO to commit several
/// tokens a step and for WINO to re-mask.
fn sudoku_model() -> DiffusionLm<B> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-sudoku");
    load_model::<B>(dir, LoadOptions::default(), &Default::default()).unwrap()
}

/// Factor, threshold, WINO and ROAR settings with prompts of the Sudoku vocabulary (mask id 5).
fn reference_sampler_settings() -> impl Strategy<Value = (SamplerConfig, Vec<Vec<u32>>)> {
    (
        0usize..5,
        prop::sample::select(vec![(16usize, 8usize), (24, 8), (16, 16)]),
        prop::sample::select(vec![0.0f64, 1.0]),
        prop::sample::select(vec![CacheKind::None, CacheKind::Prefix, CacheKind::Dual]),
        0.05f64..3.0,
        0.0f64..1.0,
        any::<u64>(),
        prop::collection::vec(
            prop::collection::vec(
                prop::sample::select(vec![0u32, 2, 3, 7, 9, 10, 11, 12, 13, 14]),
                1..12,
            ),
            1..4,
        ),
    )
        .prop_map(
            |(kind, (gen, block), temperature, cache, factor, t, seed, prompts)| {
                let base = SamplerConfig {
                    gen_length: gen,
                    block_length: block,
                    steps: gen,
                    temperature,
                    seed,
                    padding_mask: seed % 2 == 0,
                    ..Default::default()
                };
                let config = match kind {
                    0 => SamplerConfig {
                        factor: Some(factor),
                        cache,
                        ..base
                    },
                    1 => SamplerConfig {
                        threshold: Some(t),
                        cache,
                        ..base
                    },
                    2 => SamplerConfig {
                        method: Method::Wino,
                        wino_threshold: Some(t),
                        wino_threshold_back: Some((t + factor / 3.0).min(1.0)),
                        ..base
                    },
                    _ => SamplerConfig {
                        method: Method::Roar,
                        ..base
                    },
                };
                (config, prompts)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn the_reference_samplers_finish_and_account_for_every_position(
        (config, prompts) in reference_sampler_settings()
    ) {
        const SUDOKU_MASK: u32 = 5;
        let model = sudoku_model();
        let gen = config.gen_length;
        let mut steps = 0usize;
        let out = generate_with_observer(&model, &prompts, &config, &mut |e| {
            steps = e.step + 1;
            assert!(e.completions.iter().all(|c| c.len() == gen));
        }).unwrap();
        prop_assert_eq!(out.steps, steps);
        for (b, c) in out.completions.iter().enumerate() {
            prop_assert_eq!(c.len(), gen);
            for (j, &t) in c.iter().enumerate() {
                // A position holds a token exactly when its decode step is recorded.
                prop_assert_eq!(out.decode_step[b][j].is_some(), t != SUDOKU_MASK, "row {} pos {}", b, j);
                if let Some(s) = out.decode_step[b][j] {
                    prop_assert!(s < out.steps);
                }
            }
        }
        match config.method {
            Method::Roar => {
                // One token per step in a block-wise random order: every position once.
                prop_assert_eq!(out.nfe, gen);
                for row in &out.decode_step {
                    let mut seen: Vec<usize> = row.iter().flatten().copied().collect();
                    seen.sort_unstable();
                    seen.dedup();
                    prop_assert_eq!(seen.len(), row.iter().flatten().count());
                }
                let lp = out.token_log_probs.as_ref().unwrap();
                prop_assert!(lp.iter().flatten().all(|&v| v <= 0.0 && v.is_finite()));
            }
            _ => {
                prop_assert!(out.token_log_probs.is_none());
                prop_assert!(out.nfe >= gen / config.block_length);
            }
        }
    }
}
