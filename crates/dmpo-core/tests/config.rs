//! `DmpoConfig` / `GrpoConfig`: reference defaults, serde embedding, validation.

use dmpo_core::{Baseline, DmpoConfig, DmpoLoss, GrpoConfig};

#[test]
fn reference_defaults() {
    let c = DmpoConfig::default();
    assert_eq!(c.alpha, 0.04);
    assert_eq!(c.coeff, 1.0);
    assert_eq!(c.num_replicates, 4);
    assert!(c.antithetic && c.clamp_mask_prob && c.mask_after_eos);
    assert!(!c.adaptive_coeff);
    assert_eq!(c.ess_threshold, 0.7);
    assert_eq!(c.baseline, Baseline::NegativeCentering);
    assert_eq!(c.centering_strength, 1.0);
    assert_eq!(c.loss, DmpoLoss::Wdce);
    assert_eq!((c.ddo_alpha, c.ddo_beta), (1.0, 1.0));
    assert!(
        c.ddo_independent_sets,
        "the reference yaml sets ddo_indep_set"
    );
    c.validate().unwrap();
    let g = GrpoConfig::default();
    assert_eq!((g.epsilon, g.beta, g.p_mask_prompt), (0.2, 0.04, 0.15));
    assert!(!g.scale_rewards, "d1 does not divide by the group std");
    g.validate().unwrap();
}

#[test]
fn partial_json_fills_defaults_and_unknown_fields_are_refused() {
    let c: DmpoConfig =
        serde_json::from_str(r#"{"alpha": 0.1, "baseline": "unbiased", "loss": "ddo"}"#).unwrap();
    assert_eq!(c.alpha, 0.1);
    assert_eq!(c.baseline, Baseline::Unbiased);
    assert_eq!(c.loss, DmpoLoss::Ddo);
    assert_eq!(c.num_replicates, 4);
    let err = serde_json::from_str::<DmpoConfig>(r#"{"alpah": 0.1}"#).unwrap_err();
    assert!(err.to_string().contains("alpah"), "{err}");
    assert!(serde_json::from_str::<GrpoConfig>(r#"{"eps": 0.1}"#).is_err());
    let back: DmpoConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn invalid_values_are_named() {
    let bad = [
        DmpoConfig {
            alpha: -0.5,
            ..Default::default()
        },
        DmpoConfig {
            coeff: 1.5,
            ..Default::default()
        },
        DmpoConfig {
            ess_threshold: 0.0,
            ..Default::default()
        },
        DmpoConfig {
            num_replicates: 3,
            ..Default::default()
        },
        DmpoConfig {
            num_replicates: 0,
            ..Default::default()
        },
    ];
    let fields = [
        "alpha",
        "coeff",
        "ess_threshold",
        "num_replicates",
        "num_replicates",
    ];
    for (c, f) in bad.iter().zip(fields) {
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(f), "{e}");
    }
    DmpoConfig {
        alpha: -1.0,
        ..Default::default()
    }
    .validate()
    .unwrap();
    DmpoConfig {
        num_replicates: 3,
        antithetic: false,
        ..Default::default()
    }
    .validate()
    .unwrap();
    assert!(GrpoConfig {
        p_mask_prompt: 1.5,
        ..Default::default()
    }
    .validate()
    .is_err());
}
