//! docs/reference-parity.md, row "padding": with the key padding mask that training uses by
//! default, a batch of left-padded prompts gives every row the greedy rollout, the ELBO values and
//! the loss gradient it gets alone, unpadded (the reference generates one prompt per process, so
//! its rows are never padded). Without the mask, pads are attended and the padded rows differ.

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use dllm_model::{load_model, DiffusionLm, LoadOptions};
use dllm_sample::{generate, CacheKind, Generation, SamplerConfig};
use dmpo_core::{
    elbo_with_masks, wdce_loss_with_masks, Baseline, DmpoConfig, LogitsModel, ModelView,
    ReplicateMasks, RolloutWeights, SequenceBatch,
};

type AB = Autodiff<Flex>;

const GEN: usize = 8;

fn model() -> DiffusionLm<AB> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llada-tiny");
    load_model::<AB>(dir, LoadOptions::default(), &Default::default()).expect("tiny model")
}

/// Three prompts of 5, 9 and 12 tokens (no MASK, no EOS).
fn prompts() -> Vec<Vec<u32>> {
    [5usize, 9, 12]
        .iter()
        .enumerate()
        .map(|(r, &n)| (0..n).map(|i| ((r * 37 + i * 11) % 290) as u32).collect())
        .collect()
}

fn sampler(cache: CacheKind, padding_mask: bool) -> SamplerConfig {
    SamplerConfig {
        gen_length: GEN,
        block_length: 4,
        steps: GEN,
        temperature: 0.0,
        cache,
        padding_mask,
        ..Default::default()
    }
}

/// The sequences of `g` as a batch, with its key padding when `padding`.
fn batch<B: burn::tensor::backend::Backend>(
    g: &Generation,
    padding: bool,
    device: &B::Device,
) -> SequenceBatch<B> {
    let (rows, p) = (g.completions.len(), g.prompt_len());
    let seq = p + GEN;
    let ids: Vec<i64> = g.sequences().concat().iter().map(|&t| t as i64).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, seq]), device);
    let eos = vec![GEN; rows];
    let b = SequenceBatch::with_eos_index(ids, p, eos).expect("batch");
    if !padding {
        return b;
    }
    let pad: Vec<bool> = g
        .pad_lengths
        .iter()
        .flat_map(|&n| (0..seq).map(move |i| i < n))
        .collect();
    b.with_key_padding(Tensor::<B, 2, Bool>::from_data(
        TensorData::new(pad, [rows, seq]),
        device,
    ))
    .expect("padding")
}

/// Two replicates per row, fixed and distinct, rows of `rows`' masks in `rows` order.
fn masks(rows: &[usize]) -> ReplicateMasks {
    let mut masked = Vec::new();
    for k in 0..2 {
        for &r in rows {
            masked.extend((0..GEN).map(|j| (j * 3 + r * 5 + k * 7) % 4 < 2));
        }
    }
    ReplicateMasks::from_rows(2, rows.len(), GEN, masked).expect("masks")
}

fn weights(rows: &[usize]) -> RolloutWeights {
    let w = [0.5, -0.3, 0.8];
    RolloutWeights {
        group_size: 1,
        w_plus: rows.iter().map(|&r| w[r]).collect(),
        w_minus: vec![0.0; rows.len()],
        ell_cur: vec![0.0; rows.len()],
        coeffs: vec![1.0; rows.len()],
    }
}

fn config() -> DmpoConfig {
    DmpoConfig {
        num_replicates: 2,
        baseline: Baseline::None,
        ..Default::default()
    }
}

/// The gradients of the WDCE loss of `rows` of `b` on the head and on block 0's query
/// projection (attention sees the pads there first), flattened.
fn loss_gradient(model: &DiffusionLm<AB>, b: &SequenceBatch<AB>, rows: &[usize]) -> Vec<f32> {
    let loss = wdce_loss_with_masks(
        &ModelView::policy(model),
        b,
        &weights(rows),
        &config(),
        &masks(rows),
    )
    .expect("loss")
    .loss;
    let grads = loss.backward();
    let mut out = Vec::new();
    for p in [
        model.head.as_ref().expect("untied head").weight.val(),
        model.blocks[0].attn.q_proj.weight.val(),
    ] {
        let g = p.grad(&grads).expect("gradient");
        out.extend(g.into_data().convert::<f32>().to_vec::<f32>().unwrap());
    }
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn sum(parts: &[Vec<f32>]) -> Vec<f32> {
    let mut out = vec![0.0; parts[0].len()];
    for p in parts {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

#[test]
fn masked_padding_gives_every_row_what_it_gets_alone() {
    let model = model();
    let inner = model.valid();
    let device = Default::default();
    let prompts = prompts();
    for cache in [CacheKind::None, CacheKind::Prefix, CacheKind::Dual] {
        // Greedy rollout: the padded batch decodes every row as that row alone.
        let together = generate(&inner, &prompts, &sampler(cache, true)).unwrap();
        assert_eq!(together.pad_lengths, vec![7, 3, 0]);
        for (r, p) in prompts.iter().enumerate() {
            let alone = generate(&inner, std::slice::from_ref(p), &sampler(cache, true)).unwrap();
            assert_eq!(
                together.completions[r], alone.completions[0],
                "{cache:?}: row {r}"
            );
        }
    }
    let together = generate(&inner, &prompts, &sampler(CacheKind::None, true)).unwrap();
    let alone: Vec<Generation> = prompts
        .iter()
        .map(|p| {
            generate(
                &inner,
                std::slice::from_ref(p),
                &sampler(CacheKind::None, true),
            )
            .unwrap()
        })
        .collect();

    // ELBO of the rollout under the policy, on fixed masks: padded batch vs each row alone.
    let views: [&dyn LogitsModel<Flex>; 1] = [&ModelView::policy(&inner)];
    let all = [0, 1, 2];
    let padded = batch::<Flex>(&together, true, &device);
    let ell = elbo_with_masks(&views, &padded, &masks(&all), 1 << 30).unwrap()[0].clone();
    let unmasked = batch::<Flex>(&together, false, &device);
    let ell_attending =
        elbo_with_masks(&views, &unmasked, &masks(&all), 1 << 30).unwrap()[0].clone();
    let mut attended_differs = false;
    for (r, g) in alone.iter().enumerate() {
        let one = batch::<Flex>(g, false, &device);
        let e = elbo_with_masks(&views, &one, &masks(&[r]), 1 << 30).unwrap()[0][0];
        assert!(
            (ell[r] - e).abs() <= 1e-5,
            "row {r}: ELBO {} vs {e} alone",
            ell[r]
        );
        attended_differs |= r < 2 && (ell_attending[r] - e).abs() > 1e-3;
    }
    assert!(
        attended_differs,
        "attending the pads should change the padded rows' ELBO"
    );

    // The loss gradient of the padded batch equals the sum of the rows' gradients alone.
    let padded = batch::<AB>(&together, true, &device);
    let grad = loss_gradient(&model, &padded, &all);
    let parts: Vec<Vec<f32>> = alone
        .iter()
        .enumerate()
        .map(|(r, g)| loss_gradient(&model, &batch::<AB>(g, false, &device), &[r]))
        .collect();
    let d = max_diff(&grad, &sum(&parts));
    assert!(d <= 1e-5, "gradient differs by {d}");
}
