//! Forward latency on the benchmark model (fixtures/bench: d_model 256, 4 layers, vocab 4096),
//! batch 4 × 256 — operation (a) of the PyTorch reference (0.0519 s on 2 cores).

use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData};
use criterion::{criterion_group, criterion_main, Criterion};
use dllm_model::tensor_file::read_ints;
use dllm_model::{load_model, ForwardOptions, LoadOptions, LogitPositions};

type B = burn::backend::Flex;

fn bench(c: &mut Criterion) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/bench");
    let device = Default::default();
    let model = load_model::<B>(&dir, LoadOptions::default(), &device).expect("bench model");
    let ids = read_ints(dir.join("golden_bench.safetensors"), "bench_noisy_ids").expect("inputs");
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.values, [4, 256]), &device);
    let mut g = c.benchmark_group("forward_b4_s256");
    g.sample_size(10);
    g.bench_function("all_logits", |b| {
        b.iter(|| model.forward(input.clone()).into_data())
    });
    g.bench_function("last_192_logits", |b| {
        b.iter(|| {
            model
                .forward_with(
                    input.clone(),
                    &ForwardOptions::default(),
                    &LogitPositions::Range(64..256),
                )
                .into_data()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
