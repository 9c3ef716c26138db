//! WDCE, DDO (docs/algorithm.md §4), diffu-GRPO and wd1 (docs/algorithm.md §6) against hand-computed values.

mod common;

use burn::tensor::{Tensor, TensorData};
use common::*;
use dmpo_core::elbo::masked_logprob_sums;
use dmpo_core::masks::ReplicateMasks;
use dmpo_core::weights::softmax;
use dmpo_core::{
    ddo_loss_with_masks, ddo_objective, diffu_grpo_loss, grpo_advantages, mean_field_logprobs,
    wd1_loss, wdce_loss, wdce_loss_with_masks, Baseline, DmpoConfig, GrpoConfig, ModelView,
    RolloutWeights,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const TABLE: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 0.0, 2.0];

fn table_model() -> TableModel {
    TableModel {
        logits: TABLE.iter().map(|&x| x as f32).collect(),
        gen_len: 2,
        vocab: 3,
        mask_id: 9,
    }
}

/// log p(token) at completion position `pos` under the table.
fn lp(token: usize, pos: usize) -> f64 {
    log_softmax(&TABLE[pos * 3..pos * 3 + 3])[token]
}

fn rollout(w_plus: Vec<f64>, w_minus: Vec<f64>, ell_cur: Vec<f64>) -> RolloutWeights {
    RolloutWeights {
        group_size: w_plus.len(),
        coeffs: vec![1.0],
        w_plus,
        w_minus,
        ell_cur,
    }
}

/// Two samples (completions [0, 2] and [1, 1]), K = 2; rows are replicate-major:
/// (k0,i0) = {0}, (k0,i1) = {1}, (k1,i0) = {0,1}, (k1,i1) = {}.
fn two_sample_setup() -> (dmpo_core::SequenceBatch<B>, ReplicateMasks) {
    let batch = batch_rows::<B>(&[vec![5, 0, 2], vec![5, 1, 1]], 1, 8);
    let masks = ReplicateMasks::from_rows(
        2,
        2,
        2,
        vec![true, false, false, true, true, true, false, false],
    )
    .unwrap();
    (batch, masks)
}

#[test]
fn wdce_by_hand() {
    let (batch, masks) = two_sample_setup();
    let config = DmpoConfig {
        baseline: Baseline::None,
        ..DmpoConfig::default()
    };
    let rw = rollout(vec![0.7, 0.3], vec![0.2, 0.8], vec![0.0, 0.0]);
    let out = wdce_loss_with_masks(&table_model(), &batch, &rw, &config, &masks).unwrap();
    // L = (1/K) sum_rows A_i (1/m) sum_{j in M} -log p.
    let want =
        0.5 * (0.7 * -lp(0, 0) + 0.3 * -lp(1, 1) + 0.7 * 0.5 * (-lp(0, 0) - lp(2, 1)) + 0.3 * 0.0);
    assert_close(scalar(out.loss), want, 1e-6);
    assert_eq!(out.diagnostics.masked_fraction, 4.0 / 8.0);

    // Negative centering: A = w+ - w- = [0.5, -0.5].
    let neg = DmpoConfig::default();
    let out = wdce_loss_with_masks(&table_model(), &batch, &rw, &neg, &masks).unwrap();
    let want = 0.5 * (0.5 * -lp(0, 0) - 0.5 * -lp(1, 1) + 0.5 * 0.5 * (-lp(0, 0) - lp(2, 1)));
    assert_close(scalar(out.loss), want, 1e-6);
    assert_close(out.diagnostics.advantages[0], 0.5, 1e-12);
    assert_close(out.diagnostics.advantages[1], -0.5, 1e-12);
}

#[test]
fn wdce_unbiased_baseline_uses_this_steps_ell_theta() {
    let (batch, masks) = two_sample_setup();
    let config = DmpoConfig {
        baseline: Baseline::Unbiased,
        ..DmpoConfig::default()
    };
    let rw = rollout(vec![0.7, 0.3], vec![0.2, 0.8], vec![-1.0, -2.0]);
    let out = wdce_loss_with_masks(&table_model(), &batch, &rw, &config, &masks).unwrap();
    // ell_theta_i = (1/K) sum_k (L/m) sum log p.
    let t0 = 0.5 * (2.0 * lp(0, 0) + 1.0 * (lp(0, 0) + lp(2, 1)));
    let t1 = 0.5 * (2.0 * lp(1, 1));
    let theta = out.diagnostics.ell_theta.clone().unwrap();
    assert_close(theta[0], t0, 1e-6);
    assert_close(theta[1], t1, 1e-6);
    let f = softmax(&[t0 + 1.0, t1 + 2.0]);
    let a = [0.7 - f[0], 0.3 - f[1]];
    let want = 0.5 * (a[0] * -lp(0, 0) + a[1] * -lp(1, 1) + a[0] * 0.5 * (-lp(0, 0) - lp(2, 1)));
    assert_close(scalar(out.loss), want, 1e-6);
}

#[test]
fn wdce_draws_fresh_masks_each_call() {
    let llada = tiny_llada::<B>();
    let model = ModelView::policy(&llada);
    let batch = batch_rows::<B>(
        &[
            vec![3, 4, 10, 11, 12, 13, 14, 15],
            vec![3, 4, 20, 21, 22, 23, 24, 25],
        ],
        2,
        298,
    );
    let rw = rollout(vec![0.6, 0.4], vec![0.3, 0.7], vec![0.0, 0.0]);
    let config = DmpoConfig::default();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let a = scalar(
        wdce_loss(&model, &batch, &rw, &config, &mut rng)
            .unwrap()
            .loss,
    );
    let b = scalar(
        wdce_loss(&model, &batch, &rw, &config, &mut rng)
            .unwrap()
            .loss,
    );
    let a2 = scalar(
        wdce_loss(
            &model,
            &batch,
            &rw,
            &config,
            &mut ChaCha8Rng::seed_from_u64(9),
        )
        .unwrap()
        .loss,
    );
    assert_ne!(a, b);
    assert_eq!(a, a2);
}

#[test]
fn ddo_objective_by_hand() {
    let device = Default::default();
    let t = |v: [f32; 2]| Tensor::<B, 1>::from_data(TensorData::new(v.to_vec(), [2]), &device);
    let ls = |x: f64| -(1.0 + (-x).exp()).ln();
    let out = ddo_objective(
        t([1.0, -1.0]),
        t([0.5, 2.0]),
        &[0.0, 1.0],
        &[0.7, 0.3],
        2.0,
        0.5,
    );
    // gap_real = [1, -2], gap_fake = [0.5, 1]; beta 2, alpha 0.5.
    let want = -(0.7 * ls(2.0) + 0.3 * ls(-4.0)) / 2.0 - 0.5 * (ls(-1.0) + ls(-2.0)) / 2.0;
    assert_close(scalar(out), want, 1e-6);
}

#[test]
fn ddo_loss_by_hand_shared_and_independent_sets() {
    let (batch, masks) = two_sample_setup();
    let rw = rollout(vec![0.7, 0.3], vec![0.2, 0.8], vec![-1.0, -2.0]);
    let ls = |x: f64| -(1.0 + (-x).exp()).ln();
    let ddo = |real: [f64; 2], fake: [f64; 2]| {
        let gr = [real[0] + 1.0, real[1] + 2.0];
        let gf = [fake[0] + 1.0, fake[1] + 2.0];
        -(0.7 * ls(gr[0]) + 0.3 * ls(gr[1])) / 2.0 - (ls(-gf[0]) + ls(-gf[1])) / 2.0
    };
    // Shared: ell_theta = mean over both replicates.
    let shared = DmpoConfig {
        loss: dmpo_core::DmpoLoss::Ddo,
        ddo_independent_sets: false,
        ..DmpoConfig::default()
    };
    let t0 = 0.5 * (2.0 * lp(0, 0) + (lp(0, 0) + lp(2, 1)));
    let t1 = 0.5 * (2.0 * lp(1, 1));
    let out = ddo_loss_with_masks(&table_model(), &batch, &rw, &shared, &masks).unwrap();
    assert_close(scalar(out.loss), ddo([t0, t1], [t0, t1]), 1e-6);
    assert_close(out.diagnostics.gap_real[0], t0 + 1.0, 1e-6);
    // Independent sets: real from replicate 0, fake from replicate 1.
    let indep = DmpoConfig {
        ddo_independent_sets: true,
        ..shared
    };
    let out = ddo_loss_with_masks(&table_model(), &batch, &rw, &indep, &masks).unwrap();
    let real = [2.0 * lp(0, 0), 2.0 * lp(1, 1)];
    let fake = [lp(0, 0) + lp(2, 1), 0.0];
    assert_close(scalar(out.loss), ddo(real, fake), 1e-6);
    assert_close(out.diagnostics.gap_fake[1], 2.0, 1e-6);
}

fn t2(v: [[f32; 2]; 2]) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(v.concat(), [2, 2]), &Default::default())
}

#[test]
fn grpo_clip_and_kl_by_hand() {
    let logp = [[0.0f32, -1.0], [0.0, -1.0]];
    let old = [[-0.5f32, -0.5], [-0.5, -0.5]];
    let reference = [[-0.2f32, -1.0], [0.1, 0.0]];
    let mask = [[1.0f32, 1.0], [1.0, 0.0]];
    let adv = [1.0, -2.0];
    let no_kl = GrpoConfig {
        beta: 0.0,
        ..GrpoConfig::default()
    };
    let out = diffu_grpo_loss(t2(logp), Some(t2(old)), None, &adv, t2(mask), &no_kl).unwrap();
    let (r0, r1) = (0.5f64.exp(), (-0.5f64).exp());
    // A = 1: ratio e^0.5 clipped to 1.2; ratio e^-0.5 < 0.8 keeps the smaller unclipped term.
    // A = -2: min(-2 e^0.5, -2.4) = -2 e^0.5 (unclipped); second token masked out.
    let per = [-(1.2f64).min(r0), -(r1.min(0.8)), -(-2.0 * r0).min(-2.4)];
    let want = per.iter().sum::<f64>() / 3.0;
    assert_close(scalar(out.loss), want, 1e-6);
    assert_close(out.diagnostics.clip_ratio, 2.0 / 3.0, 1e-6);
    assert!(out.diagnostics.kl.is_none());

    let with_kl = GrpoConfig::default();
    let out = diffu_grpo_loss(
        t2(logp),
        Some(t2(old)),
        Some(t2(reference)),
        &adv,
        t2(mask),
        &with_kl,
    )
    .unwrap();
    let k3 = |r: f64, l: f64| (r - l).exp() - (r - l) - 1.0;
    let kls = [k3(-0.2, 0.0), k3(-1.0, -1.0), k3(0.1, 0.0)];
    let want_kl = kls.iter().sum::<f64>() / 3.0;
    assert_close(out.diagnostics.kl.unwrap(), want_kl, 1e-6);
    assert_close(scalar(out.loss), want + 0.04 * want_kl, 1e-6);
    // A KL penalty without reference log-probs is an error.
    assert!(diffu_grpo_loss(t2(logp), None, None, &adv, t2(mask), &with_kl).is_err());
}

#[test]
fn grpo_without_old_logps_is_plain_policy_gradient() {
    let logp = [[-0.3f32, -1.0], [-2.0, -0.1]];
    let mask = [[1.0f32, 1.0], [1.0, 1.0]];
    let cfg = GrpoConfig {
        beta: 0.0,
        ..GrpoConfig::default()
    };
    let out = diffu_grpo_loss(t2(logp), None, None, &[1.0, -1.0], t2(mask), &cfg).unwrap();
    // ratio = 1 everywhere: loss = -mean(A) over tokens = 0, nothing clipped.
    assert_close(scalar(out.loss), 0.0, 1e-7);
    assert_eq!(out.diagnostics.clip_ratio, 0.0);
}

#[test]
fn grpo_advantages_by_hand() {
    let a = grpo_advantages(&[1.0, 0.0, 2.0, 2.0], 2, true).unwrap();
    let s = 0.5f64.sqrt();
    assert_close(a[0], 0.5 / (s + 1e-4), 1e-12);
    assert_close(a[1], -0.5 / (s + 1e-4), 1e-12);
    assert_eq!(&a[2..], &[0.0, 0.0]);
    assert_eq!(
        grpo_advantages(&[1.0, 0.0, 2.0], 3, false).unwrap(),
        vec![0.0, -1.0, 1.0]
    );
    assert!(grpo_advantages(&[1.0, 0.0, 3.0], 2, true).is_err());
}

#[test]
fn wd1_by_hand() {
    let out = wd1_loss(
        t2([[-1.0, -2.0], [-0.5, -0.5]]),
        &[1.0, -1.0],
        2,
        t2([[1.0, 1.0], [1.0, 1.0]]),
    )
    .unwrap();
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let net = sig(2.0) - sig(-2.0);
    assert_close(out.diagnostics[0], net, 1e-12);
    // S = [-3, -1]: L = -(net * S_0 - net * S_1).
    assert_close(scalar(out.loss), -(net * -3.0 + net), 1e-6);
}

#[test]
fn mean_field_logprobs_mask_the_whole_completion() {
    let llada = tiny_llada::<B>();
    let model = ModelView::policy(&llada);
    let batch = batch_rows::<B>(
        &[vec![3, 4, 5, 10, 11, 12], vec![6, 7, 8, 20, 21, 298]],
        3,
        298,
    );
    let logp = mean_field_logprobs(&model, &batch, &[false; 6]).unwrap();
    // Same as the ELBO row sums with every completion position masked and no prompt masked.
    let all = ReplicateMasks::from_rows(1, 2, 3, vec![true; 6]).unwrap();
    let sums = values(masked_logprob_sums(&model, &batch, &all, 0..2));
    let lp = values(logp);
    assert_close(lp[0] + lp[1] + lp[2], sums[0], 1e-5);
    assert_close(lp[3] + lp[4] + lp[5], sums[1], 1e-5);
    // Masking the prompt changes the log-probs; a wrong-sized prompt mask is refused.
    let masked_prompt = values(mean_field_logprobs(&model, &batch, &[true; 6]).unwrap());
    assert!((masked_prompt[0] - lp[0]).abs() > 1e-5);
    assert!(mean_field_logprobs(&model, &batch, &[true; 5]).is_err());
}
