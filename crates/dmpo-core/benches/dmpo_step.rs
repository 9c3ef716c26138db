//! One DMPO optimisation step (WDCE forward + backward + AdamW) on the benchmark model of
//! `fixtures/bench` (batch 4 x seq 256, prompt 64, ~50% of the last 192 positions masked, the
//! golden `bench_loss_mask`), next to the PyTorch reference figure (b) of
//! `fixtures/bench/reference_pytorch_cpu.json`.

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Int, Tensor, TensorData};
use criterion::{criterion_group, criterion_main, Criterion};
use dllm_model::tensor_file::read_ints;
use dllm_model::{load_model, DiffusionLm, LoadOptions};
use dmpo_core::masks::ReplicateMasks;
use dmpo_core::{wdce_loss_with_masks, DmpoConfig, ModelView, RolloutWeights, SequenceBatch};

type AB = Autodiff<Flex>;
const PROMPT: usize = 64;

fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/bench")
}

struct Inputs {
    batch: SequenceBatch<AB>,
    masks: ReplicateMasks,
    rollout: RolloutWeights,
    config: DmpoConfig,
}

fn inputs() -> Inputs {
    let golden = bench_dir().join("golden_bench.safetensors");
    let tokens = read_ints(&golden, "bench_tokens").expect("bench_tokens");
    let mask = read_ints(&golden, "bench_loss_mask").expect("bench_loss_mask");
    let (b, s) = (tokens.shape[0], tokens.shape[1]);
    let ids = Tensor::<AB, 2, Int>::from_data(
        TensorData::new(tokens.values, [b, s]),
        &Default::default(),
    );
    // No EOS handling needed: every completion position may be masked.
    let batch = SequenceBatch::with_eos_index(ids, PROMPT, vec![s - PROMPT; b]).expect("batch");
    let masks = ReplicateMasks::from_sequence_mask(&mask.values, b, s, PROMPT).expect("masks");
    let rollout = RolloutWeights {
        group_size: b,
        w_plus: vec![0.4, 0.3, 0.2, 0.1],
        w_minus: vec![0.1, 0.2, 0.3, 0.4],
        ell_cur: vec![0.0; b],
        coeffs: vec![1.0],
    };
    let config = DmpoConfig {
        num_replicates: 1,
        antithetic: false,
        ..DmpoConfig::default()
    };
    Inputs {
        batch,
        masks,
        rollout,
        config,
    }
}

fn reference_seconds() -> f64 {
    let text = std::fs::read_to_string(bench_dir().join("reference_pytorch_cpu.json"))
        .expect("reference json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    json["b_train_step_b4_s256_s"]
        .as_f64()
        .expect("b_train_step_b4_s256_s")
}

fn bench(c: &mut Criterion) {
    let device = Default::default();
    let model: DiffusionLm<AB> =
        load_model(bench_dir(), LoadOptions::default(), &device).expect("bench model");
    let inp = inputs();
    let mut optim = AdamWConfig::new()
        .with_weight_decay(0.01)
        .init::<AB, DiffusionLm<AB>>();
    let mut model = Some(model);
    let mut step = |model: DiffusionLm<AB>| -> DiffusionLm<AB> {
        let policy = ModelView::policy(&model);
        let out = wdce_loss_with_masks(&policy, &inp.batch, &inp.rollout, &inp.config, &inp.masks)
            .expect("loss");
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        optim.step(1e-4, model, grads)
    };
    // Median of 5 after one warm-up, as the reference measured.
    model = Some(step(model.take().unwrap()));
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        model = Some(step(model.take().unwrap()));
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let ours = times[2];
    let reference = reference_seconds();
    println!(
        "DMPO step (WDCE fwd+bwd+AdamW, batch 4 x 256, flex CPU): median {ours:.3} s; \
         PyTorch reference (b) {reference:.3} s; ratio ours/reference {:.2}",
        ours / reference
    );
    let mut group = c.benchmark_group("dmpo_step");
    group.sample_size(10);
    group.bench_function("wdce_fwd_bwd_adamw_b4_s256", |b| {
        b.iter(|| model = Some(step(model.take().unwrap())))
    });
    group.bench_function("wdce_fwd_bwd_b4_s256", |b| {
        b.iter(|| {
            let policy = ModelView::policy(model.as_ref().unwrap());
            let out =
                wdce_loss_with_masks(&policy, &inp.batch, &inp.rollout, &inp.config, &inp.masks)
                    .expect("loss");
            out.loss.backward()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
