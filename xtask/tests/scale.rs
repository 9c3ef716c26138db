//! `cargo xtask random-checkpoint` writes a sharded checkpoint in the exact LLaDA layout that
//! loads and validates, and `cargo xtask scale` runs every phase on it (the bench geometry here;
//! LLaDA-8B's figures are in docs/memory.md).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn xtask(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run xtask");
    assert!(
        out.status.success(),
        "xtask {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn random_checkpoint_then_scale_on_the_bench_geometry() {
    let dir = std::env::temp_dir().join(format!("dmpo-xtask-scale-{}", std::process::id()));
    let out = dir.to_str().unwrap();
    let config = "fixtures/bench/config.json";
    xtask(&[
        "random-checkpoint",
        "--config",
        config,
        "--out",
        out,
        "--shards",
        "3",
    ]);
    for shard in 1..=3 {
        assert!(dir
            .join(format!("model-{shard:05}-of-00003.safetensors"))
            .is_file());
    }
    // The index and the shards pass the loader's checks (names, shapes, dtypes, nothing left
    // over), and the same seed writes the same bytes.
    let config_path = repo_root().join(config);
    let checked =
        dllm_model::load::verify_model::<burn::backend::Flex>(&dir, &Default::default()).unwrap();
    assert_eq!(
        checked,
        dllm_model::ModelConfig::from_file(&config_path).unwrap()
    );
    let first = std::fs::read(dir.join("model-00002-of-00003.safetensors")).unwrap();
    xtask(&[
        "random-checkpoint",
        "--config",
        config,
        "--out",
        out,
        "--shards",
        "3",
    ]);
    let second = std::fs::read(dir.join("model-00002-of-00003.safetensors")).unwrap();
    assert!(first == second, "the same seed writes the same weights");

    let report = xtask(&[
        "scale",
        "--model",
        out,
        "--steps",
        "8",
        "--caches",
        "exact,prefix,dual",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&report).expect("JSON report");
    let names: Vec<&str> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "load",
            "generate (exact)",
            "generate (prefix cache)",
            "generate (dual cache)",
            "attach LoRA",
            "rollout",
            "update 1: rollout ELBO",
            "update 1: loss + backward + AdamW",
            "update 2: rollout ELBO",
            "update 2: loss + backward + AdamW",
        ]
    );
    // `dmpo plan`'s prediction beside the phases it models: loading, the rollout, and the second
    // update (AdamW's moments resident, as in every later step).
    let planned: Vec<bool> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["planned_bytes"].as_u64().is_some_and(|b| b > 0))
        .collect();
    assert_eq!(
        planned,
        [true, false, false, false, false, true, false, false, true, true]
    );
    let params = dllm_model::ModelConfig::from_file(&config_path)
        .unwrap()
        .num_params();
    assert_eq!(report["parameters"].as_u64().unwrap() as usize, params);
    // r 128 on q/k/v/up_proj (the paper recipe's targets), 4 layers of d 256, MLP 768.
    assert_eq!(
        report["lora_parameters"].as_u64().unwrap(),
        4 * (3 * 128 * (256 + 256) + 128 * (256 + 768))
    );
    for phase in report["phases"].as_array().unwrap() {
        assert!(phase["peak_rss_bytes"].as_u64().unwrap() > 0, "{phase}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
