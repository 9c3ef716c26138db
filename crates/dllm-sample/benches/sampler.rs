//! Sampler throughput on the benchmark model: batch 4, prompt 64, gen 192, block 32, 192 steps
//! (operation (c) of the PyTorch reference: 12.90 s, 59.5 tokens/s), exact and cached.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use dllm_model::tensor_file::read_ints;
use dllm_model::{load_model, LoadOptions};
use dllm_sample::{generate, CacheKind, SamplerConfig};

type B = burn::backend::Flex;

fn bench(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/bench");
    let model =
        load_model::<B>(&dir, LoadOptions::default(), &Default::default()).expect("bench model");
    let p = read_ints(dir.join("golden_bench.safetensors"), "gen_prompts").expect("prompts");
    let prompts: Vec<Vec<u32>> = p
        .values
        .chunks(64)
        .map(|r| r.iter().map(|&t| t as u32).collect())
        .collect();
    let base = SamplerConfig {
        gen_length: 192,
        block_length: 32,
        steps: 192,
        ..Default::default()
    };
    let mut g = c.benchmark_group("generate_b4_gen192");
    g.sample_size(10);
    for (name, cache) in [
        ("exact", CacheKind::None),
        ("prefix", CacheKind::Prefix),
        ("dual", CacheKind::Dual),
    ] {
        let cfg = SamplerConfig {
            cache,
            ..base.clone()
        };
        g.bench_function(name, |b| {
            b.iter(|| generate(&model, &prompts, &cfg).expect("generate"))
        });
    }
    let cfg = SamplerConfig {
        cache: CacheKind::Prefix,
        threshold: Some(0.9),
        ..base
    };
    g.bench_function("threshold_prefix", |b| {
        b.iter(|| generate(&model, &prompts, &cfg).expect("generate"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
