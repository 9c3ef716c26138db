//! Importance weights (docs/algorithm.md §4): hand-computed values for every mode and baseline, and the
//! properties the paper relies on.

mod common;

use common::assert_close;
use dmpo_core::weights::{
    adaptive_coeff, apply_baseline, ess, group_weights, log_rnd, mean_group_std,
    rewards_are_constant, softmax, std_unbiased, zero_variance_fraction, ZERO_STD,
};
use dmpo_core::{rollout_weights, Baseline, DmpoConfig, RolloutWeights};
use proptest::prelude::*;

/// Two groups of two samples with distinct values everywhere.
fn two_groups() -> RolloutWeights {
    RolloutWeights {
        group_size: 2,
        w_plus: vec![0.1, 0.9, 0.3, 0.7],
        w_minus: vec![0.6, 0.4, 0.8, 0.2],
        ell_cur: vec![-1.0, -2.0, -3.0, -4.0],
        coeffs: vec![0.5, 0.25],
    }
}

#[test]
fn selected_rows_keep_their_weights_and_group_coefficients() {
    let w = two_groups();
    let second = w.select_rows(&[2, 3]).unwrap();
    assert_eq!(
        second,
        RolloutWeights {
            group_size: 2,
            w_plus: vec![0.3, 0.7],
            w_minus: vec![0.8, 0.2],
            ell_cur: vec![-3.0, -4.0],
            coeffs: vec![0.25],
        }
    );
    assert_eq!(w.select_rows(&[0, 1, 2, 3]).unwrap(), w);
    assert_eq!(w.select_rows(&[2, 3, 0, 1]).unwrap().coeffs, [0.25, 0.5]);
}

#[test]
fn selected_rows_must_be_whole_groups() {
    let w = two_groups();
    for rows in [&[0][..], &[1, 2], &[1, 0], &[2, 4], &[0, 1, 2]] {
        assert!(w.select_rows(rows).is_err(), "{rows:?}");
    }
    let mut short = two_groups();
    short.coeffs.pop();
    assert!(short.select_rows(&[0, 1]).is_err());
}

#[test]
fn selected_slices_are_groups_of_their_own_with_the_same_baselines() {
    let w = two_groups();
    // Row 1 alone (slices of one row): its weights and its group's coefficient.
    let one = w.select_slices(&[1], 1).unwrap();
    assert_eq!(
        (one.group_size, one.w_plus, one.coeffs),
        (1, vec![0.9], vec![0.5])
    );
    // Slices of a whole group are the group: the same advantages under every baseline.
    for baseline in [Baseline::NegativeCentering, Baseline::Mean, Baseline::None] {
        let whole = w.advantages(baseline, 1.0, 0, None).unwrap();
        let sliced = w
            .select_slices(&[2, 3], 2)
            .unwrap()
            .advantages(baseline, 1.0, 0, None)
            .unwrap();
        assert_eq!(sliced, whole[2..], "{baseline:?}");
    }
    for (rows, slice) in [
        (&[0][..], 2),
        (&[0, 1][..], 3),
        (&[0, 1][..], 0),
        (&[1, 2][..], 2),
    ] {
        assert!(w.select_slices(rows, slice).is_err(), "{rows:?} / {slice}");
    }
}

#[test]
fn zero_variance_groups_and_group_std() {
    assert!(rewards_are_constant(&[0.5, 0.5, 0.5]));
    assert!(rewards_are_constant(&[1.0]));
    assert!(!rewards_are_constant(&[0.5, 0.5 + 1e-3]));
    let rewards = [1.0, 0.0, 2.0, 2.0, 0.25, 0.25];
    assert_eq!(zero_variance_fraction(&rewards, 2), 2.0 / 3.0);
    assert_close(
        mean_group_std(&rewards, 2),
        std_unbiased(&[1.0, 0.0]) / 3.0,
        1e-15,
    );
    assert!(zero_variance_fraction(&rewards, 0).is_nan());
    assert!(mean_group_std(&[1.0], 2).is_nan());
}

/// Sudoku rewards are cell fractions `k / e` (`e` empty cells of a 4x4 grid): in groups of up to
/// 16 rewards, equal rewards leave a standard deviation far below [`ZERO_STD`] and unequal ones
/// one far above it, so every threshold between `1e-12` and `1e-6` classifies them alike.
#[test]
fn sudoku_reward_groups_are_far_from_the_zero_variance_threshold() {
    let mut largest_equal = 0.0f64;
    let mut smallest_unequal = f64::INFINITY;
    for empty in 1..=16u32 {
        let fraction = |k: u32| k as f64 / empty as f64;
        for group in 2..=16usize {
            for k in 0..=empty {
                largest_equal = largest_equal.max(std_unbiased(&vec![fraction(k); group]));
                // The closest unequal group: one reward off by one cell, the rest equal.
                for other in [k.wrapping_sub(1), k + 1] {
                    if other <= empty {
                        let mut g = vec![fraction(k); group];
                        g[0] = fraction(other);
                        smallest_unequal = smallest_unequal.min(std_unbiased(&g));
                    }
                }
            }
        }
    }
    assert!(largest_equal < 1e-12, "{largest_equal}");
    assert!(smallest_unequal > 1e-6, "{smallest_unequal}");
    assert!(largest_equal < ZERO_STD && ZERO_STD < smallest_unequal);
    assert!(smallest_unequal >= 1.0 / 64.0 - 1e-15, "{smallest_unequal}");
}

#[test]
fn log_rnd_is_ref_minus_cur() {
    assert_eq!(log_rnd(&[1.0, -2.0], &[0.5, -1.0]), vec![0.5, -1.0]);
}

#[test]
fn tilted_weights_by_hand() {
    // v+ = c (log_rnd + r / alpha) = [0.1 + 2, -0.2 + 0] -> w+_0 = sigmoid(2.3).
    let (p, m) = group_weights(&[0.1, -0.2], &[1.0, 0.0], 0.5, 1.0);
    assert_close(p[0], 0.908_877_038_985_143_8, 1e-12);
    assert_close(p[1], 1.0 - 0.908_877_038_985_143_8, 1e-12);
    // v- = [0.1 - 2, -0.2] -> w-_0 = sigmoid(-1.7).
    assert_close(m[0], 0.154_465_265_083_534_7, 1e-12);
    // c = 0.5 halves the logits.
    let (p, m) = group_weights(&[0.1, -0.2], &[1.0, 0.0], 0.5, 0.5);
    assert_close(p[0], 0.759_510_916_949_111, 1e-12);
    assert_close(m[0], 0.299_432_857_526_027_05, 1e-12);
}

#[test]
fn alpha_zero_uses_softmax_of_rewards() {
    // log_rnd is ignored when alpha = 0.
    let (p, m) = group_weights(&[5.0, -3.0, 0.0], &[1.0, 0.0, 0.5], 0.0, 1.0);
    let want_p = [
        0.506_480_391_055_654,
        0.186_323_723_225_847_56,
        0.307_195_885_718_498_4,
    ];
    for (a, b) in p.iter().zip(want_p) {
        assert_close(*a, b, 1e-12);
    }
    let want_m = [
        0.186_323_723_225_847_6,
        0.506_480_391_055_654,
        0.307_195_885_718_498_4,
    ];
    for (a, b) in m.iter().zip(want_m) {
        assert_close(*a, b, 1e-12);
    }
}

#[test]
fn alpha_minus_one_uses_raw_rewards() {
    let (p, m) = group_weights(&[5.0, -3.0], &[2.0, 0.5], -1.0, 0.3);
    assert_eq!(p, vec![2.0, 0.5]);
    assert_eq!(m, vec![-2.0, -0.5]);
}

#[test]
fn ess_by_hand() {
    assert_close(ess(&[0.9, 0.1]), 1.0 / (2.0 * 0.82), 1e-12);
    assert_close(ess(&[0.25; 4]), 1.0, 1e-12);
    assert_close(ess(&[1.0, 0.0, 0.0, 0.0]), 0.25, 1e-12);
}

#[test]
fn each_baseline_by_hand() {
    let wp = [0.7, 0.2, 0.1];
    let wm = [0.1, 0.3, 0.6];
    let neg = apply_baseline(&wp, &wm, Baseline::NegativeCentering, 1.0, None).unwrap();
    for (a, b) in neg.iter().zip([0.6, -0.1, -0.5]) {
        assert_close(*a, b, 1e-12);
    }
    let half = apply_baseline(&wp, &wm, Baseline::NegativeCentering, 0.5, None).unwrap();
    for (a, b) in half.iter().zip([0.65, 0.05, -0.2]) {
        assert_close(*a, b, 1e-12);
    }
    let mean = apply_baseline(&wp, &wm, Baseline::Mean, 1.0, None).unwrap();
    for (a, b) in mean
        .iter()
        .zip([0.7 - 1.0 / 3.0, 0.2 - 1.0 / 3.0, 0.1 - 1.0 / 3.0])
    {
        assert_close(*a, b, 1e-12);
    }
    let factor = [0.5, 0.25, 0.25];
    let unb = apply_baseline(&wp, &wm, Baseline::Unbiased, 1.0, Some(&factor)).unwrap();
    for (a, b) in unb.iter().zip([0.2, -0.05, -0.15]) {
        assert_close(*a, b, 1e-12);
    }
    assert!(apply_baseline(&wp, &wm, Baseline::Unbiased, 1.0, None).is_err());
    assert_eq!(
        apply_baseline(&wp, &wm, Baseline::None, 1.0, None).unwrap(),
        wp.to_vec()
    );
}

#[test]
fn unbiased_advantages_use_softmax_of_theta_gap() {
    let config = DmpoConfig {
        alpha: 0.0,
        ..DmpoConfig::default()
    };
    let (rw, _) = rollout_weights(&[-3.0, -4.0], &[-3.0, -4.0], &[1.0, 0.0], 2, &config).unwrap();
    // ell_theta - ell_cur = [0.5, 0] -> factor softmax([0.5, 0]).
    let a = rw
        .advantages(Baseline::Unbiased, 1.0, 0, Some(&[-2.5, -4.0]))
        .unwrap();
    let f = softmax(&[0.5, 0.0]);
    let wp = softmax(&[1.0, 0.0]);
    assert_close(a[0], wp[0] - f[0], 1e-12);
    assert_close(a[1], wp[1] - f[1], 1e-12);
}

#[test]
fn rollout_weights_by_hand_with_diagnostics() {
    let config = DmpoConfig {
        alpha: 0.5,
        ..DmpoConfig::default()
    };
    // Two groups of two; group 2 has equal rewards.
    let ell_cur = [-1.0, -2.0, -1.0, -1.0];
    let ell_ref = [-0.9, -2.2, -1.5, -0.5];
    let rewards = [1.0, 0.0, 2.0, 2.0];
    let (rw, d) = rollout_weights(&ell_cur, &ell_ref, &rewards, 2, &config).unwrap();
    assert_close(rw.w_plus[0], 0.908_877_038_985_143_8, 1e-9);
    let a = rw
        .advantages(Baseline::NegativeCentering, 1.0, 0, None)
        .unwrap();
    assert_close(
        a[0],
        0.908_877_038_985_143_8 - 0.154_465_265_083_534_7,
        1e-9,
    );
    assert_eq!(&a[2..], &[0.0, 0.0]);
    assert_eq!(d.zero_variance_fraction, 0.5);
    assert_close(d.reward_std[0], std_unbiased(&[1.0, 0.0]), 1e-12);
    assert_eq!(d.reward_std[1], 0.0);
    // log_rnd = [0.1, -0.2, -0.5, 0.5]: group means -0.05 and 0, stds 0.2121 and 0.7071.
    assert_close(d.log_rnd_mean, -0.025, 1e-12);
    assert_close(
        d.log_rnd_std,
        (0.3f64.hypot(0.0) / 2f64.sqrt() + 1.0 / 2f64.sqrt()) / 2.0,
        1e-12,
    );
    let p = 0.908_877_038_985_143_8;
    assert_close(
        d.ess[0],
        1.0 / (2.0 * (p * p + (1.0 - p) * (1.0 - p))),
        1e-9,
    );
    assert_eq!(d.coeff_mean, 1.0);
    assert!(rollout_weights(&ell_cur, &ell_ref, &rewards, 3, &config).is_err());
}

#[test]
fn adaptive_coeff_by_hand_and_at_the_bounds() {
    // Two samples, v = [2.3, 0]: ESS(c) = 1 / (2 (s^2 + (1-s)^2)), s = sigmoid(2.3 c).
    let c = adaptive_coeff(&[0.1, -0.2], &[1.0, 0.0], 0.5, 0.7);
    let (p, _) = group_weights(&[0.1, -0.2], &[1.0, 0.0], 0.5, c);
    assert_close(ess(&p), 0.7, 1e-9);
    // Solve by hand: s^2 + (1-s)^2 = 1/1.4 -> s = (1 + sqrt(2/1.4 - 1)) / 2, c = logit(s) / 2.3.
    let s = (1.0 + (2.0 / 1.4 - 1.0f64).sqrt()) / 2.0;
    assert_close(c, (s / (1.0 - s)).ln() / 2.3, 1e-9);
    // Unreachable: huge spread -> even c = 0.01 is below the threshold.
    assert_eq!(adaptive_coeff(&[0.0, 0.0], &[100.0, 0.0], 0.01, 0.7), 0.01);
    // Unreachable: equal values -> ESS = 1 for every c.
    assert_eq!(adaptive_coeff(&[0.0, 0.0], &[1.0, 1.0], 0.5, 0.7), 0.99);
}

fn group() -> impl Strategy<Value = (Vec<f64>, Vec<f64>)> {
    (2usize..17).prop_flat_map(|g| {
        (
            prop::collection::vec(-5.0f64..5.0, g),
            prop::collection::vec(-1.0f64..4.0, g),
        )
    })
}

proptest! {
    #[test]
    fn negative_centering_weights_sum_to_zero((lr, r) in group(), alpha in 0.01f64..2.0, c in 0.0f64..1.0) {
        let (p, m) = group_weights(&lr, &r, alpha, c);
        let a = apply_baseline(&p, &m, Baseline::NegativeCentering, 1.0, None).unwrap();
        prop_assert!(a.iter().sum::<f64>().abs() < 1e-12);
    }

    #[test]
    fn equal_rewards_get_zero_weight((lr, _) in group(), reward in -1.0f64..4.0, alpha in 0.0f64..2.0, c in 0.0f64..1.0) {
        let r = vec![reward; lr.len()];
        let (p, m) = group_weights(&lr, &r, alpha, c);
        let a = apply_baseline(&p, &m, Baseline::NegativeCentering, 1.0, None).unwrap();
        for x in a {
            prop_assert!(x.abs() < 1e-12, "{x}");
        }
    }

    #[test]
    fn reward_shift_leaves_weights_unchanged((lr, r) in group(), shift in -10.0f64..10.0, alpha in 0.0f64..2.0, c in 0.0f64..1.0) {
        let shifted: Vec<f64> = r.iter().map(|x| x + shift).collect();
        let (p, m) = group_weights(&lr, &r, alpha, c);
        let (ps, ms) = group_weights(&lr, &shifted, alpha, c);
        for (a, b) in p.iter().zip(&ps).chain(m.iter().zip(&ms)) {
            prop_assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
        let config = DmpoConfig { alpha, coeff: c, ..DmpoConfig::default() };
        let cur: Vec<f64> = vec![0.0; lr.len()];
        let (w1, _) = rollout_weights(&cur, &lr, &r, lr.len(), &config).unwrap();
        let (w2, _) = rollout_weights(&cur, &lr, &shifted, lr.len(), &config).unwrap();
        for b in [Baseline::NegativeCentering, Baseline::Mean, Baseline::None] {
            let a1 = w1.advantages(b, 1.0, 0, None).unwrap();
            let a2 = w2.advantages(b, 1.0, 0, None).unwrap();
            for (x, y) in a1.iter().zip(&a2) {
                prop_assert!((x - y).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn adaptive_coeff_reaches_the_ess_threshold((lr, r) in group(), alpha in 0.0f64..1.0, threshold in 0.3f64..0.95) {
        let ess_at = |c: f64| ess(&group_weights(&lr, &r, alpha, c).0);
        let reachable = ess_at(0.99) <= threshold && threshold <= ess_at(0.01);
        let c = adaptive_coeff(&lr, &r, alpha, threshold);
        prop_assert!((0.01..=0.99).contains(&c));
        if reachable {
            prop_assert!((ess_at(c) - threshold).abs() < 1e-3, "ESS {} at c {c}", ess_at(c));
        } else if ess_at(0.01) < threshold {
            prop_assert_eq!(c, 0.01);
        } else {
            prop_assert_eq!(c, 0.99);
        }
    }

    #[test]
    fn ess_is_non_increasing_in_coeff((lr, r) in group(), alpha in 0.0f64..1.0, c1 in 0.0f64..1.0, c2 in 0.0f64..1.0) {
        let (lo, hi) = if c1 < c2 { (c1, c2) } else { (c2, c1) };
        let e = |c: f64| ess(&group_weights(&lr, &r, alpha, c).0);
        prop_assert!(e(hi) <= e(lo) + 1e-12);
    }
}

#[test]
fn baselines_over_slices_of_a_group_follow_the_reference_per_gpu_rows() {
    let config = DmpoConfig {
        alpha: 0.5,
        ..DmpoConfig::default()
    };
    let rewards = [1.0, 0.0, 0.5, 0.2];
    let (rw, _) = rollout_weights(&[0.0; 4], &[0.0; 4], &rewards, 4, &config).unwrap();
    let wp = rw.w_plus.clone();
    // Mean over slices of 2 rows: each row minus the mean of its slice's w+.
    let a = rw.advantages(Baseline::Mean, 1.0, 2, None).unwrap();
    let m = [(wp[0] + wp[1]) / 2.0, (wp[2] + wp[3]) / 2.0];
    for i in 0..4 {
        assert_close(a[i], wp[i] - m[i / 2], 1e-12);
    }
    // The whole group (0) is the group mean, 1/G.
    let a = rw.advantages(Baseline::Mean, 1.0, 0, None).unwrap();
    assert_close(a[0], wp[0] - 0.25, 1e-12);
    // Unbiased: softmax over the slice.
    let theta = [0.5, 0.0, 0.1, 0.3];
    let a = rw
        .advantages(Baseline::Unbiased, 1.0, 2, Some(&theta))
        .unwrap();
    let f = softmax(&theta[2..]);
    assert_close(a[3], wp[3] - f[1], 1e-12);
    // A slice must divide the group.
    let e = rw.advantages(Baseline::Mean, 1.0, 3, None).unwrap_err();
    assert!(e.to_string().contains("baseline_rows"), "{e}");
}
