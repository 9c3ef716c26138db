//! The ELBO estimator (docs/algorithm.md §3): hand-computed values, the oracle property, one call for two
//! models on the same masks, chunking, and its mean against exact enumeration of all masks.

mod common;

use common::*;
use dmpo_core::elbo::{ell_from_row_sums, masked_logprob_sums, row_weights};
use dmpo_core::masks::{MaskOptions, ReplicateMasks};
use dmpo_core::{elbo_log_likelihood, elbo_with_masks, LogitsModel, ModelView};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const BUDGET: usize = 1 << 30;

fn opts(k: usize, antithetic: bool) -> MaskOptions {
    MaskOptions {
        replicates: k,
        antithetic,
        clamp: true,
        mask_after_eos: true,
    }
}

#[test]
fn elbo_by_hand_on_a_logit_table() {
    // L = 2, V = 3, completion [0, 2]; logits per position fixed.
    let table = [1.0, 0.0, 0.0, 0.0, 0.0, 2.0];
    let model = TableModel {
        logits: table.iter().map(|&x| x as f32).collect(),
        gen_len: 2,
        vocab: 3,
        mask_id: 9,
    };
    let batch = batch_of::<B>(&[5, 6], &[0, 2], 1, 8);
    // Replicate 0 masks position 0, replicate 1 masks both.
    let masks = ReplicateMasks::from_rows(2, 1, 2, vec![true, false, true, true]).unwrap();
    let lp0 = log_softmax(&table[..3])[0];
    let lp1 = log_softmax(&table[3..])[2];
    let want = 0.5 * (2.0 / 1.0 * lp0 + 2.0 / 2.0 * (lp0 + lp1));
    let got = elbo_with_masks::<B>(&[&model], &batch, &masks, BUDGET).unwrap();
    assert_close(got[0][0], want, 1e-6);
    assert_eq!(row_weights(&masks), vec![1.0, 0.5]);
}

#[test]
fn uniform_model_gives_minus_l_log_v_per_nonempty_replicate() {
    let (l, v) = (3, 5);
    let model = TableModel {
        logits: vec![0.0; l * v],
        gen_len: l,
        vocab: v,
        mask_id: 9,
    };
    let batch = batch_of::<B>(&[1], &[0, 1, 2], 2, 8);
    // Sample 0: replicates {pos 0}, {} ; sample 1: {0,1,2}, {1}.
    let masks = ReplicateMasks::from_rows(
        2,
        2,
        3,
        vec![
            true, false, false, true, true, true, false, false, false, false, true, false,
        ],
    )
    .unwrap();
    let got = elbo_with_masks::<B>(&[&model], &batch, &masks, BUDGET).unwrap();
    let full = -(l as f64) * (v as f64).ln();
    assert_close(got[0][0], full / 2.0, 1e-6);
    assert_close(got[0][1], full, 1e-6);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn elbo_of_a_certain_sequence_is_zero(
        seed in any::<u64>(),
        completion in prop::collection::vec(0i64..16, 1..12),
        prompt in prop::collection::vec(0i64..16, 0..5),
        rows in 1usize..4,
        half in 1usize..3,
    ) {
        let model = oracle(&completion, 17, 16);
        let batch = batch_of::<B>(&prompt, &completion, rows, 99);
        let est = elbo_log_likelihood::<B, _>(&[&model], &batch, &opts(2 * half, true), BUDGET, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap();
        for ell in &est.ell[0] {
            prop_assert!(ell.abs() < 1e-6, "{ell}");
        }
    }
}

#[test]
fn oracle_of_another_sequence_gives_a_very_negative_elbo() {
    // The zero above is not vacuous: the same oracle scores a different completion far below 0.
    let model = oracle(&[1, 2, 3], 17, 16);
    let batch = batch_of::<B>(&[4], &[1, 2, 4], 1, 99);
    let est = elbo_log_likelihood::<B, _>(
        &[&model],
        &batch,
        &opts(4, true),
        BUDGET,
        &mut ChaCha8Rng::seed_from_u64(0),
    )
    .unwrap();
    assert!(est.ell[0][0] < -100.0, "{}", est.ell[0][0]);
}

fn llada_batch() -> dmpo_core::SequenceBatch<B> {
    batch_rows::<B>(
        &[
            vec![298, 298, 11, 12, 13, 40, 41, 42, 43, 298, 298],
            vec![21, 22, 23, 24, 25, 50, 51, 52, 53, 54, 55],
        ],
        5,
        298,
    )
}

#[test]
fn two_models_in_one_call_equal_separate_calls_on_the_same_masks() {
    let lora = tiny_llada_lora::<B>(1);
    let (policy, reference) = (ModelView::policy(&lora), ModelView::without_adapter(&lora));
    let base = tiny_llada::<B>();
    let base = ModelView::policy(&base);
    let batch = llada_batch();
    let est = elbo_log_likelihood::<B, _>(
        &[&policy, &reference],
        &batch,
        &opts(4, true),
        BUDGET,
        &mut ChaCha8Rng::seed_from_u64(3),
    )
    .unwrap();
    let alone_policy = elbo_with_masks::<B>(&[&policy], &batch, &est.masks, BUDGET).unwrap();
    let alone_base = elbo_with_masks::<B>(&[&base], &batch, &est.masks, BUDGET).unwrap();
    for i in 0..2 {
        assert_close(est.ell[0][i], alone_policy[0][i], 1e-6);
        // Adapter disabled = the base checkpoint.
        assert_close(est.ell[1][i], alone_base[0][i], 1e-5);
        // The adapter changes the likelihood.
        assert!((est.ell[0][i] - est.ell[1][i]).abs() > 1e-3);
        assert!(est.ell[0][i] < 0.0);
    }
    // Chunking to one row at a time gives the same numbers.
    let chunked = elbo_with_masks::<B>(&[&policy, &reference], &batch, &est.masks, 1).unwrap();
    for (got, want) in chunked.iter().flatten().zip(est.ell.iter().flatten()) {
        assert_close(*got, *want, 1e-5);
    }
}

/// Key padding for [`llada_batch`]: the two leading pads of row 0.
fn row_0_left_padding() -> burn::tensor::Tensor<B, 2, burn::tensor::Bool> {
    burn::tensor::Tensor::from_bool(
        burn::tensor::TensorData::new(
            (0..22).map(|i| i == 0 || i == 1).collect::<Vec<_>>(),
            [2, 11],
        ),
        &Default::default(),
    )
}

#[test]
fn key_padding_is_passed_to_the_model() {
    let llada = tiny_llada::<B>();
    let model = ModelView::policy(&llada);
    let batch = llada_batch();
    let masks = ReplicateMasks::sample(
        &mut ChaCha8Rng::seed_from_u64(1),
        &batch.eos_index,
        batch.gen_len(),
        &opts(2, true),
    )
    .unwrap();
    let plain = elbo_with_masks::<B>(&[&model], &batch, &masks, BUDGET).unwrap();
    let pad = row_0_left_padding();
    let padded = batch.clone().with_key_padding(pad).unwrap();
    let masked = elbo_with_masks::<B>(&[&model], &padded, &masks, BUDGET).unwrap();
    assert!(
        (plain[0][0] - masked[0][0]).abs() > 1e-5,
        "padding of row 0 must matter"
    );
    assert_close(plain[0][1], masked[0][1], 1e-5);
}

/// Sees a model only through its logits at every completion position, so that
/// `completion_logits_at` falls back to the trait's default (select after the full LM head).
struct FullLogits<'a>(&'a dyn LogitsModel<B>);

impl LogitsModel<B> for FullLogits<'_> {
    fn completion_logits(
        &self,
        input_ids: burn::tensor::Tensor<B, 2, burn::tensor::Int>,
        prompt_len: usize,
        key_padding: Option<burn::tensor::Tensor<B, 2, burn::tensor::Bool>>,
    ) -> burn::tensor::Tensor<B, 3> {
        self.0.completion_logits(input_ids, prompt_len, key_padding)
    }

    fn mask_token_id(&self) -> u32 {
        self.0.mask_token_id()
    }

    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }
}

#[test]
fn llada_logits_at_masked_positions_only_equal_the_full_logits() {
    let lora = tiny_llada_lora::<B>(1);
    let (policy, reference) = (ModelView::policy(&lora), ModelView::without_adapter(&lora));
    let pad = row_0_left_padding();
    let batch = llada_batch().with_key_padding(pad).unwrap();
    let masks = ReplicateMasks::sample(
        &mut ChaCha8Rng::seed_from_u64(4),
        &batch.eos_index,
        batch.gen_len(),
        &opts(4, true),
    )
    .unwrap();
    // Rows 1.. : the flat positions are relative to the chunk, not to the whole batch.
    let rows = 1..masks.rows();
    for model in [&policy as &dyn LogitsModel<B>, &reference] {
        let fast = values(masked_logprob_sums(model, &batch, &masks, rows.clone()));
        let full = values(masked_logprob_sums(
            &FullLogits(model),
            &batch,
            &masks,
            rows.clone(),
        ));
        assert_eq!(fast.len(), rows.len());
        for (a, b) in fast.iter().zip(&full) {
            assert_close(*a, *b, 1e-5);
        }
        assert!(fast.iter().any(|v| *v < -1e-3), "{fast:?}");
    }
    // A chunk without any masked position sums to zero.
    let none = ReplicateMasks::from_rows(1, 2, 6, vec![false; 12]).unwrap();
    let zero = values(masked_logprob_sums(&policy, &batch, &none, 0..2));
    assert_eq!(zero, vec![0.0, 0.0]);
}

/// `E_lambda E_M [f(M)]` with `lambda ~ U(0.1, 1)` (or `U(0, 1)`), `M ~ Bernoulli(lambda)^L`, and
/// `f` given on every subset; `complement` evaluates `f(M^c)` instead (antithetic replicates).
fn exact_expectation(f: &[f64], l: usize, clamp: bool, complement: bool) -> f64 {
    let (a, b) = if clamp { (0.1, 1.0) } else { (0.0, 1.0) };
    let n = 4000;
    let h = (b - a) / n as f64;
    let mut total = 0.0;
    for s in 0..=n {
        let lam: f64 = a + h * s as f64;
        let w = if s == 0 || s == n {
            1.0
        } else if s % 2 == 1 {
            4.0
        } else {
            2.0
        };
        let mut e = 0.0;
        for (subset, fv) in f.iter().enumerate() {
            let m = subset.count_ones() as i32;
            let p = lam.powi(m) * (1.0 - lam).powi(l as i32 - m);
            let fm = if complement {
                f[(1 << l) - 1 - subset]
            } else {
                *fv
            };
            e += p * fm;
        }
        total += w * e;
    }
    total * h / 3.0 / (b - a)
}

#[test]
fn estimator_mean_matches_exact_enumeration_of_masks() {
    let llada = tiny_llada::<B>();
    let model = ModelView::policy(&llada);
    let (prompt, completion) = ([5i64, 17, 42], [7i64, 100, 3, 298]);
    let l = completion.len();
    // f(M) = (L / max(1, |M|)) * sum_{j in M} log p(x_j | x~_M) for all 2^L subsets.
    let all: Vec<bool> = (0..1usize << l)
        .flat_map(|s| (0..l).map(move |j| s >> j & 1 == 1))
        .collect();
    let every = ReplicateMasks::from_rows(1 << l, 1, l, all).unwrap();
    let one = batch_of::<B>(&prompt, &completion, 1, 298);
    let sums = values(masked_logprob_sums(&model, &one, &every, 0..1 << l));
    let f: Vec<f64> = (0..1 << l)
        .map(|s| sums[s] * l as f64 / every.m_clamped(s) as f64)
        .collect();
    assert_eq!(f[0], 0.0);
    // Sanity of the per-row helper: K = 2^L replicates of one sample average f.
    let avg = ell_from_row_sums(&sums, &every)[0];
    assert_close(avg, f.iter().sum::<f64>() / f.len() as f64, 1e-9);

    let n = 1500;
    let batch = batch_of::<B>(&prompt, &completion, n, 298);
    for (antithetic, k) in [(true, 4), (false, 2)] {
        let exact = if antithetic {
            0.5 * (exact_expectation(&f, l, true, false) + exact_expectation(&f, l, true, true))
        } else {
            exact_expectation(&f, l, true, false)
        };
        let est = elbo_log_likelihood::<B, _>(
            &[&model],
            &batch,
            &opts(k, antithetic),
            BUDGET,
            &mut ChaCha8Rng::seed_from_u64(42),
        )
        .unwrap();
        let xs = &est.ell[0];
        let mean = xs.iter().sum::<f64>() / n as f64;
        let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
        let se = sd / (n as f64).sqrt();
        eprintln!("antithetic {antithetic}: MC mean {mean:.4} +- {se:.4}, exact {exact:.4}");
        assert!(
            (mean - exact).abs() < 4.0 * se + 1e-4,
            "MC {mean} vs exact {exact} (se {se})"
        );
        // The test can tell distributions apart: the unclamped expectation is elsewhere.
        let unclamped = exact_expectation(&f, l, false, false);
        if !antithetic {
            assert!(
                (unclamped - exact).abs() > 8.0 * se,
                "unclamped {unclamped} too close to {exact}"
            );
        }
    }
}

#[test]
fn mismatched_masks_are_refused() {
    let model = oracle(&[1, 2], 5, 4);
    let batch = batch_of::<B>(&[0], &[1, 2], 2, 9);
    let masks = ReplicateMasks::from_rows(1, 1, 2, vec![true, true]).unwrap();
    assert!(elbo_with_masks::<B>(&[&model], &batch, &masks, BUDGET).is_err());
    let no_models: [&dyn LogitsModel<B>; 0] = [];
    let ok = ReplicateMasks::from_rows(1, 2, 2, vec![true; 4]).unwrap();
    assert!(elbo_with_masks::<B>(&no_models, &batch, &ok, BUDGET).is_err());
}
