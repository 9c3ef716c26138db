//! Mask sampling (docs/algorithm.md §3, §6): antithetic complements, clamp, prompt and EOS handling,
//! determinism.

mod common;

use common::B;
use dmpo_core::masks::{clamp_lambda, sample_prompt_mask, MaskOptions, ReplicateMasks};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn opts(k: usize, antithetic: bool, clamp: bool, mask_after_eos: bool) -> MaskOptions {
    MaskOptions {
        replicates: k,
        antithetic,
        clamp,
        mask_after_eos,
    }
}

proptest! {
    #[test]
    fn antithetic_masks_are_exact_complements(seed in any::<u64>(), half in 1usize..4, batch in 1usize..5, gen_len in 1usize..40) {
        let k = 2 * half;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let eos = vec![gen_len; batch];
        let m = ReplicateMasks::sample(&mut rng, &eos, gen_len, &opts(k, true, true, true)).unwrap();
        for r in 0..half * batch {
            let a = m.row(r);
            let b = m.row(r + half * batch);
            prop_assert!(a.iter().zip(b).all(|(x, y)| *x != *y));
        }
    }

    #[test]
    fn no_mask_after_eos_keeps_complements_before_it(seed in any::<u64>(), gen_len in 2usize..30, eos_frac in 0.0f64..1.0) {
        let e = ((gen_len as f64 * eos_frac) as usize).min(gen_len - 1);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let m = ReplicateMasks::sample(&mut rng, &[e, gen_len], gen_len, &opts(2, true, true, false)).unwrap();
        // Sample 0 (rows 0 and 2): positions <= e complementary, positions after e never masked.
        prop_assert!(m.row(0)[..=e].iter().zip(&m.row(2)[..=e]).all(|(x, y)| x != y));
        prop_assert!(m.row(0)[e + 1..].iter().chain(&m.row(2)[e + 1..]).all(|x| !x));
        // Sample 1 has no EOS: exact complements everywhere.
        prop_assert!(m.row(1).iter().zip(m.row(3)).all(|(x, y)| x != y));
    }
}

#[test]
fn same_seed_same_masks_and_different_seed_different_masks() {
    let o = opts(4, true, true, true);
    let draw =
        |s| ReplicateMasks::sample(&mut ChaCha8Rng::seed_from_u64(s), &[64; 3], 64, &o).unwrap();
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
}

#[test]
fn clamped_lambda_lies_in_its_range() {
    assert_eq!(clamp_lambda(0.0), 0.1);
    assert_eq!(clamp_lambda(1.0), 1.0);
    // With the clamp every non-antithetic row masks at least ~10% of a long completion; without
    // it some rows mask far fewer.
    let l = 4000;
    let count_min = |clamp| {
        let m = ReplicateMasks::sample(
            &mut ChaCha8Rng::seed_from_u64(3),
            &[l; 200],
            l,
            &opts(1, false, clamp, true),
        )
        .unwrap();
        (0..m.rows()).map(|r| m.count(r)).min().unwrap()
    };
    assert!(
        count_min(true) as f64 >= 0.08 * l as f64,
        "{}",
        count_min(true)
    );
    assert!(
        (count_min(false) as f64) < 0.05 * l as f64,
        "{}",
        count_min(false)
    );
}

#[test]
fn mean_masked_fraction_matches_lambda_distribution() {
    // E[lambda] = 0.55 with the clamp, 0.5 without.
    for (clamp, want) in [(true, 0.55), (false, 0.5)] {
        let m = ReplicateMasks::sample(
            &mut ChaCha8Rng::seed_from_u64(11),
            &[100; 2000],
            100,
            &opts(1, false, clamp, true),
        )
        .unwrap();
        let frac = m.masked.iter().filter(|&&x| x).count() as f64 / m.masked.len() as f64;
        assert!((frac - want).abs() < 0.02, "{frac} vs {want}");
    }
}

#[test]
fn prompt_is_never_masked_in_the_full_mask() {
    let m = ReplicateMasks::from_rows(1, 2, 3, vec![true, false, true, true, true, true]).unwrap();
    let t = m.full_mask_tensor::<B>(0..2, 4, &Default::default());
    let v: Vec<bool> = t.into_data().to_vec().unwrap();
    assert_eq!(
        v,
        vec![
            false, false, false, false, true, false, true, false, false, false, false, true, true,
            true
        ]
    );
    assert_eq!(m.m_clamped(0), 2);
}

#[test]
fn empty_mask_counts_as_one() {
    let m = ReplicateMasks::from_rows(1, 1, 3, vec![false; 3]).unwrap();
    assert_eq!(m.count(0), 0);
    assert_eq!(m.m_clamped(0), 1);
}

#[test]
fn odd_antithetic_replicates_are_refused() {
    assert!(ReplicateMasks::sample(
        &mut ChaCha8Rng::seed_from_u64(0),
        &[4],
        4,
        &opts(3, true, true, true)
    )
    .is_err());
    assert!(ReplicateMasks::from_rows(1, 2, 3, vec![false; 5]).is_err());
}

#[test]
fn prompt_mask_probability() {
    let m = sample_prompt_mask(&mut ChaCha8Rng::seed_from_u64(5), 100, 200, 0.15);
    let frac = m.iter().filter(|&&x| x).count() as f64 / m.len() as f64;
    assert!((frac - 0.15).abs() < 0.01, "{frac}");
    assert!(
        sample_prompt_mask(&mut ChaCha8Rng::seed_from_u64(5), 3, 7, 0.0)
            .iter()
            .all(|x| !x)
    );
}

#[test]
fn rollout_elbo_replicates_are_counted_apart_from_the_loss_replicates() {
    use dmpo_core::{DmpoConfig, MaskOptions};
    let base = DmpoConfig::default();
    assert_eq!(MaskOptions::rollout(&base).replicates, base.num_replicates);
    let own = DmpoConfig {
        rollout_elbo_replicates: 8,
        ..DmpoConfig::default()
    };
    assert_eq!(MaskOptions::rollout(&own).replicates, 8);
    assert_eq!(MaskOptions::from(&own).replicates, 4);
    let odd = DmpoConfig {
        rollout_elbo_replicates: 3,
        ..DmpoConfig::default()
    };
    assert!(odd
        .validate()
        .unwrap_err()
        .to_string()
        .contains("rollout_elbo_replicates"));
}

#[test]
fn d1_mask_schedule_gives_each_micro_batch_half_the_masks_twice() {
    use dmpo_core::mask_iteration;
    // 96 rows, 2 accumulation slices of 48, mu = 12 (d1's GSM8K run).
    let seen =
        |row: usize| -> Vec<usize> { (0..12).map(|k| mask_iteration(k, row, 96, 2, 12)).collect() };
    assert_eq!(seen(0), [1, 3, 5, 7, 9, 11, 1, 3, 5, 7, 9, 11]);
    assert_eq!(seen(47), seen(0));
    assert_eq!(seen(48), [2, 4, 6, 8, 10, 0, 2, 4, 6, 8, 10, 0]);
    // Off: inner iteration k uses mask k, every row.
    assert_eq!(
        (0..12)
            .map(|k| mask_iteration(k, 50, 96, 0, 12))
            .collect::<Vec<_>>(),
        (0..12).collect::<Vec<_>>()
    );
}
