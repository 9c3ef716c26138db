//! The DMPO reference's other rollout samplers, token for token: Fast-dLLM's factor rule and
//! confidence threshold (no cache, prefix and dual cache), WINO and ROAR, greedy, on the tiny
//! Sudoku model and a batch of three left-padded prompts of different lengths
//! (`fixtures/samplers/samplers.json`, made by `scripts/sampler_golden.py` from the reference's
//! own code), with the reference's number of forward passes.

use std::path::PathBuf;

use dllm_model::tensor_file::{read_floats, read_ints};
use dllm_model::{load_model, DiffusionLm, LoadOptions};
use dllm_sample::{generate, CacheKind, Generation, Method, SamplerConfig};
use serde_json::Value;

type B = burn::backend::Flex;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden() -> PathBuf {
    repo().join("fixtures/samplers/samplers.safetensors")
}

fn meta() -> Value {
    let path = repo().join("fixtures/samplers/samplers.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn model() -> DiffusionLm<B> {
    let dir = repo().join(meta()["model"].as_str().unwrap());
    load_model::<B>(dir, LoadOptions::default(), &Default::default()).unwrap()
}

/// The prompts without their left padding (the sampler pads them again).
fn prompts() -> Vec<Vec<u32>> {
    let pad = meta()["pad_id"].as_i64().unwrap();
    let p = read_ints(golden(), "prompts").unwrap();
    p.values
        .chunks(p.shape[1])
        .map(|r| {
            r.iter()
                .skip_while(|&&t| t == pad)
                .map(|&t| t as u32)
                .collect()
        })
        .collect()
}

fn base_config() -> SamplerConfig {
    let m = meta();
    let gen_length = m["gen_length"].as_u64().unwrap() as usize;
    SamplerConfig {
        gen_length,
        block_length: m["block_length"].as_u64().unwrap() as usize,
        steps: gen_length,
        ..Default::default()
    }
}

/// Compares every row's whole sequence with the reference's output `case`.
fn assert_sequences(case: &str, got: &Generation) {
    let want = read_ints(golden(), case).unwrap();
    let width = want.shape[1];
    for (b, seq) in got.sequences().iter().enumerate() {
        let row: Vec<u32> = want.values[b * width..(b + 1) * width]
            .iter()
            .map(|&t| t as u32)
            .collect();
        assert_eq!(seq, &row, "{case}: row {b}");
    }
}

/// The cases of `samplers.json` whose name starts with `prefix`, with their settings.
fn cases(prefix: &str) -> Vec<(String, Value)> {
    let m = meta();
    let all = m["cases"].as_object().unwrap();
    let found: Vec<(String, Value)> = all
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(!found.is_empty(), "no {prefix} cases in samplers.json");
    found
}

fn cache(settings: &Value) -> CacheKind {
    settings["cache"].as_str().unwrap().parse().unwrap()
}

/// The reference's forward passes for `case` (per row, or one figure for the batch).
fn reference_nfe(case: &str) -> Vec<usize> {
    let n = read_ints(golden(), &format!("{case}_nfe")).unwrap();
    n.values.iter().map(|&v| v as usize).collect()
}

/// The batch at once against the reference's rows (run one at a time there), then each row
/// alone for its forward passes.
fn assert_rows_and_passes(model: &DiffusionLm<B>, case: &str, config: &SamplerConfig) {
    let prompts = prompts();
    assert_sequences(case, &generate(model, &prompts, config).unwrap());
    let alone: Vec<usize> = prompts
        .iter()
        .map(|p| {
            let placement = dllm_sample::RowPlacement {
                first_row: 0,
                prompt_len: Some(prompts.iter().map(Vec::len).max().unwrap()),
            };
            dllm_sample::generate_rows(model, std::slice::from_ref(p), config, placement)
                .unwrap()
                .nfe
        })
        .collect();
    assert_eq!(alone, reference_nfe(case), "{case}: forward passes per row");
}

#[test]
fn factor_decoding_matches_fast_dllm_without_and_with_caches() {
    let model = model();
    for (case, settings) in cases("factor_") {
        let config = SamplerConfig {
            cache: cache(&settings),
            factor: settings["factor"].as_f64(),
            ..base_config()
        };
        // The batch holds rows whose block is decoded while another's is not: they commit
        // nothing (the reference's batched call stops with an IndexError there).
        assert_rows_and_passes(&model, &case, &config);
    }
}

#[test]
fn threshold_decoding_matches_fast_dllm_without_and_with_caches() {
    let model = model();
    for (case, settings) in cases("threshold_") {
        let config = SamplerConfig {
            cache: cache(&settings),
            threshold: settings["threshold"].as_f64(),
            ..base_config()
        };
        let got = generate(&model, &prompts(), &config).unwrap();
        assert_sequences(&case, &got);
        assert_eq!(
            vec![got.nfe],
            reference_nfe(&case),
            "{case}: forward passes"
        );
    }
}

#[test]
fn wino_matches_the_reference() {
    let model = model();
    for (case, settings) in cases("wino_") {
        let config = SamplerConfig {
            method: Method::Wino,
            wino_threshold: settings["wino_threshold"].as_f64(),
            wino_threshold_back: settings["wino_threshold_back"].as_f64(),
            ..base_config()
        };
        assert_rows_and_passes(&model, &case, &config);
    }
}

#[test]
fn roar_matches_the_reference_tokens_and_log_probabilities() {
    let model = model();
    for (case, settings) in cases("roar_") {
        let config = SamplerConfig {
            method: Method::Roar,
            seed: settings["seed"].as_u64().unwrap(),
            ..base_config()
        };
        let got = generate(&model, &prompts(), &config).unwrap();
        assert_sequences(&case, &got);
        assert_eq!(
            got.nfe, config.gen_length,
            "{case}: one evaluation per token"
        );
        let want = read_floats(golden(), &format!("{case}_log_probs")).unwrap();
        let got = got.token_log_probs.expect("ROAR records log-probabilities");
        for (b, row) in got.iter().enumerate() {
            for (j, &lp) in row.iter().enumerate() {
                let w = want.values[b * config.gen_length + j];
                assert!(
                    (lp as f64 - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{case}: row {b}, token {j}: {lp} vs {w}"
                );
            }
        }
    }
}
