//! DMPO on ROAR rollouts whose log-likelihoods come from the sampler (`dmpo.rollout_elbo =
//! false`, the reference's `compute_ref_log_prob_elbo = false`), end to end on the tiny model.

mod common;

use common::{dmpo, metrics, root, succeeds, train_command};

/// Two steps of the tiny recipe (4 rows of 24 tokens), ROAR rollouts, with `extra` overrides.
fn run(dir: &std::path::Path, name: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let sets = [
        format!(
            "model.path=\"{}\"",
            root().join("models/tiny-sudoku").display()
        ),
        "run.output_dir=\"runs\"".into(),
        format!("run.name=\"{name}\""),
        "train.steps=2".into(),
        "train.prompts_per_step=1".into(),
        "train.group_size=4".into(),
        "train.num_iterations=1".into(),
        "train.micro_batch=4".into(),
        "train.checkpoint_every=2".into(),
        "train.lr=0.05".into(),
        "dmpo.num_replicates=2".into(),
        "rollout.method=\"roar\"".into(),
        "model.finetune=\"lora\"".into(),
        "train.sync_ref_model=false".into(),
        "lora.r=8".into(),
        "rollout.gen_length=24".into(),
        "rollout.block_length=8".into(),
        "rollout.temperature=1.0".into(),
        "eval.limit=2".into(),
        "eval.gen_lengths=[24]".into(),
    ];
    let args = train_command(&root().join("recipes/tiny-sudoku.toml"), &sets, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    succeeds(name, &dmpo(dir, &refs));
    metrics(&dir.join("runs").join(name))
}

#[test]
fn roar_log_likelihoods_replace_the_rollout_elbo() {
    let tmp = tempfile::tempdir().unwrap();
    let recorded = run(tmp.path(), "recorded", &["dmpo.rollout_elbo=false"]);
    let elbo = run(tmp.path(), "elbo", &[]);
    let log_rnd = |rows: &[serde_json::Value], step: usize| {
        (
            rows[step]["log_rnd_mean"].as_f64().unwrap(),
            rows[step]["log_rnd_std"].as_f64().unwrap(),
        )
    };
    // Step 0: the adapter starts at zero, so the policy is the reference and both estimates of
    // log p_ref - log p_theta vanish (the recorded one exactly: the same passes twice).
    assert_eq!(log_rnd(&recorded, 0), (0.0, 0.0));
    // The same rollouts and rewards either way: the sampler's draws do not depend on the mode.
    for key in ["reward_mean", "sample_completion"] {
        assert_eq!(recorded[0][key], elbo[0][key], "{key}");
    }
    // Step 1, after an update: the recorded log-likelihood ratio moves, and differs from the
    // ELBO's estimate of it.
    let (mean, std) = log_rnd(&recorded, 1);
    assert!(mean.is_finite() && std.is_finite() && (mean != 0.0 || std != 0.0));
    assert_ne!(log_rnd(&recorded, 1), log_rnd(&elbo, 1));
}
