//! One DMPO update on the tiny Dream model (`fixtures/golden-dream`) equals the update computed
//! by the reference's formulas on Dream's own PyTorch forward (`scripts/dream_golden.py`,
//! `golden_train.safetensors`): the WDCE loss on fixed masks and weights, its gradients, and
//! every parameter after one AdamW step.

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use dllm_model::tensor_file::{read_floats, read_ints};
use dllm_model::{load_model, save_model, DiffusionLm, Family, LoadOptions};
use dmpo_core::{
    wdce_loss_with_masks, DmpoConfig, ModelView, ReplicateMasks, RolloutWeights, SequenceBatch,
};

type AB = Autodiff<Flex>;

fn dream() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/golden-dream")
}

fn golden(name: &str) -> Vec<f64> {
    read_floats(dream().join("golden_train.safetensors"), name)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .values
}

/// The largest difference relative to the largest magnitude of `want`.
fn relative_diff(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0.0, f64::max)
        / scale
}

fn values<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

#[test]
fn one_dmpo_update_on_dream_equals_the_reference_formulas() {
    let device = Default::default();
    let model: DiffusionLm<AB> = load_model(dream(), LoadOptions::default(), &device).unwrap();
    assert_eq!(model.config.family, Family::Dream);
    let seq = read_ints(dream().join("golden.safetensors"), "generation_entropy").unwrap();
    let [n, total] = [seq.shape[0], seq.shape[1]];
    let (prompt_len, gen) = (6, total - 6);
    let ids = Tensor::<AB, 2, Int>::from_data(TensorData::new(seq.values, [n, total]), &device);
    let batch = SequenceBatch::with_eos_index(ids, prompt_len, vec![gen; n]).unwrap();
    let masks = read_ints(dream().join("golden_train.safetensors"), "train_masks").unwrap();
    let masks =
        ReplicateMasks::from_rows(2, n, gen, masks.values.iter().map(|&m| m != 0).collect())
            .unwrap();
    let weights = RolloutWeights {
        group_size: 2,
        w_plus: vec![0.7, 0.3],
        w_minus: vec![0.2, 0.8],
        ell_cur: vec![0.0, 0.0],
        coeffs: vec![1.0],
    };
    let config = DmpoConfig {
        num_replicates: 2,
        ..Default::default()
    };
    let out = wdce_loss_with_masks(
        &ModelView::policy(&model),
        &batch,
        &weights,
        &config,
        &masks,
    )
    .unwrap();
    let loss: f64 = out.loss.clone().into_scalar().elem();
    let want = golden("train_loss")[0];
    assert!(
        (loss - want).abs() <= 1e-5 * want.abs().max(1.0),
        "loss {loss} vs {want}"
    );

    let grads = out.loss.backward();
    // Gradients of a tensor of each kind: embeddings, a biased projection, the MLP, the head.
    let block0 = &model.blocks[0];
    let block1 = &model.blocks[1];
    let linear = |l: &dllm_model::linear::Linear<AB>| {
        values(l.weight.val().grad(&grads).unwrap().transpose())
    };
    let checks: Vec<(&str, Vec<f32>)> = vec![
        (
            "model.embed_tokens.weight",
            values(model.wte.val().grad(&grads).unwrap()),
        ),
        (
            "model.layers.0.self_attn.q_proj.weight",
            linear(&block0.attn.q_proj),
        ),
        (
            "model.layers.0.self_attn.k_proj.bias",
            values(
                block0
                    .attn
                    .k_proj
                    .bias
                    .as_ref()
                    .unwrap()
                    .val()
                    .grad(&grads)
                    .unwrap(),
            ),
        ),
        (
            "model.layers.1.mlp.down_proj.weight",
            linear(&block1.ff_out),
        ),
        (
            "model.layers.1.post_attention_layernorm.weight",
            values(block1.ff_norm.weight.val().grad(&grads).unwrap()),
        ),
        ("lm_head.weight", linear(model.head.as_ref().unwrap())),
    ];
    for (name, got) in checks {
        let diff = relative_diff(&got, &golden(&format!("grad.{name}")));
        assert!(
            diff <= 1e-4,
            "gradient of {name}: relative difference {diff}"
        );
    }

    let grads = GradientsParams::from_grads(grads, &model);
    let mut optimizer = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(0.01)
        .init::<AB, DiffusionLm<AB>>();
    let updated = optimizer.step(1e-3, model, grads);
    let dir = tempfile::tempdir().unwrap();
    save_model(&updated.valid(), dir.path()).unwrap();
    let file = dir.path().join("model.safetensors");
    let mut checked = 0;
    for (name, _, _) in dllm_model::checkpoint_tensors(&updated.config) {
        let got: Vec<f32> = read_floats(&file, &name)
            .unwrap()
            .values
            .iter()
            .map(|&v| v as f32)
            .collect();
        let want = golden(&format!("after.{name}"));
        let grad = golden(&format!("grad.{name}"));
        // The first AdamW step moves a weight by `lr * g / (|g| + eps)` (plus the decay): a
        // gradient known to `d` (1e-4 of the tensor's largest, as checked above) fixes it to
        // `lr * eps * d / (|g| + eps)^2`. Where |g| is far above eps that is far below 1e-6;
        // where the gradient is rounding noise (the k_proj bias, whose exact gradient is zero: a
        // per-query constant leaves the softmax unchanged; unused embedding rows) only the
        // step's size, lr, is fixed.
        let d = 1e-4 * grad.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let (lr, eps) = (1e-3, 1e-8);
        for ((g, w), dg) in got.iter().zip(&want).zip(&grad) {
            let tol = 1e-6 + 2.0 * lr * (eps * d / (dg.abs() + eps).powi(2)).min(1.0);
            let diff = (*g as f64 - w).abs();
            assert!(
                diff <= tol,
                "{name} after AdamW: difference {diff} (gradient {dg})"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 2 * 12 + 3);
}
