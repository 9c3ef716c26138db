//! Every shipped recipe parses; malformed recipes are refused with the file and key named.

use std::path::{Path, PathBuf};

use dmpo_train::recipe::{Algorithm, Finetune};
use dmpo_train::Recipe;

fn recipes_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../recipes")
}

fn err(text: &str, overrides: &[&str]) -> String {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Recipe::parse(text, Path::new("bad.toml"), &o)
        .unwrap_err()
        .to_string()
}

const MINIMAL: &str = r#"
[model]
path = "m"
[task]
name = "sudoku"
"#;

#[test]
fn shipped_recipes_parse_with_reference_defaults() {
    let mut n = 0;
    for entry in std::fs::read_dir(recipes_dir()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let r = Recipe::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            if p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("llada8b")
            {
                assert_eq!(r.train.group_size, 16);
                assert_eq!(r.train.num_iterations, 8);
                assert_eq!(r.lora.r, 128);
                assert_eq!(r.train.max_grad_norm, 0.2);
                assert_eq!(r.model.finetune, Finetune::Lora);
                assert_eq!(r.dmpo.alpha, 0.04);
            }
            n += 1;
        }
    }
    assert!(n >= 6, "found {n} recipes");
}

#[test]
fn defaults_follow_the_spec() {
    let r = Recipe::parse(MINIMAL, Path::new("m.toml"), &[]).unwrap();
    assert_eq!(r.train.algorithm, Algorithm::Dmpo);
    assert_eq!(
        (r.train.beta1, r.train.beta2, r.train.weight_decay),
        (0.9, 0.99, 0.1)
    );
    assert_eq!(r.train.lr, 1e-6);
    assert_eq!(r.dmpo.num_replicates, 4);
    assert_eq!(r.rollout.gen_length, 256);
    assert_eq!(r.rollout.steps, 128);
    assert_eq!(r.rollout.temperature, 0.2);
    assert_eq!(r.lora.alpha, 64.0);
}

#[test]
fn overrides_apply_and_are_checked() {
    let r = Recipe::parse(
        MINIMAL,
        Path::new("m.toml"),
        &[
            "train.steps=7".into(),
            "run.name=x".into(),
            "dmpo.baseline=mean".into(),
        ],
    )
    .unwrap();
    assert_eq!(r.train.steps, 7);
    assert_eq!(r.run.name, "x");
    assert_eq!(r.dmpo.baseline, dmpo_core::Baseline::Mean);
    assert!(err(MINIMAL, &["train.stepz=7"]).contains("stepz"));
    assert!(err(MINIMAL, &["steps"]).contains("not section.key=value"));
}

#[test]
fn unknown_keys_and_bad_values_are_named() {
    let e = err(&format!("{MINIMAL}\n[train]\nlearning_rate = 1.0\n"), &[]);
    assert!(e.contains("bad.toml") && e.contains("learning_rate"), "{e}");
    let e = err(&format!("{MINIMAL}\n[dmpo]\nalpah = 1.0\n"), &[]);
    assert!(e.contains("alpah"), "{e}");
    let e = err(&format!("{MINIMAL}\n[trian]\nsteps = 1\n"), &[]);
    assert!(e.contains("trian"), "{e}");
    let e = err("[model]\npath = \"m\"\n[task]\nname = \"chess\"\n", &[]);
    assert!(e.contains("task.name"), "{e}");
    let e = err(MINIMAL, &["train.group_size=1"]);
    assert!(e.contains("train.group_size"), "{e}");
    let e = err(MINIMAL, &["rollout.block_length=100"]);
    assert!(e.contains("rollout") && e.contains("block_length"), "{e}");
    let e = err(MINIMAL, &["dmpo.num_replicates=3"]);
    assert!(e.contains("num_replicates"), "{e}");
    let e = err(
        MINIMAL,
        &["train.sync_ref_model=true", "model.finetune=\"lora\""],
    );
    assert!(e.contains("train.sync_ref_model"), "{e}");
    let e = err(
        MINIMAL,
        &[
            "train.sync_ref_model=true",
            "model.finetune=\"full\"",
            "train.ref_model_mixup_alpha=0",
        ],
    );
    assert!(e.contains("train.ref_model_mixup_alpha"), "{e}");
    let e = err("[model\npath=", &[]);
    assert!(e.contains("bad.toml"), "{e}");
    let e = err("[task]\nname = \"sudoku\"\n", &[]);
    assert!(e.contains("model"), "{e}");
}
