//! Data parallelism on CPU peers in one process (threads meeting in a rendezvous): 2 and 6 peers
//! train as 1 — the same metrics and the same weights after 3 steps of 2 updates each, for DMPO and diffu-GRPO — and
//! settings the peers cannot honour are refused before any work.

mod common;

use std::path::Path;

use common::{assert_close, assert_same_weights, final_weights, metrics, root, weights};
use dmpo_train::run_dir::StartMode;
use dmpo_train::trainer::{train, RunOptions};
use dmpo_train::Recipe;

type AB = burn::backend::Autodiff<burn::backend::Flex>;

fn recipe(out: &Path, name: &str, algorithm: &str, extra: &[&str]) -> Recipe {
    let mut overrides = common::three_step_overrides(&out.display().to_string(), name, algorithm);
    overrides.extend(extra.iter().map(|s| s.to_string()));
    Recipe::load(&root().join("recipes/tiny-sudoku.toml"), &overrides).unwrap()
}

fn options() -> RunOptions {
    RunOptions {
        start: StartMode::from_flags(false, false),
        quiet: true,
        skip_eval: true,
        stop_after: None,
    }
}

#[test]
fn two_and_six_peers_give_the_metrics_and_weights_of_one() {
    // 16 rows: 2 peers hold two groups each; 6 peers hold 2 or 3 rows, most of them parts of
    // a group (negative centering and diffu-GRPO share by row).
    for algorithm in ["dmpo", "diffu_grpo"] {
        let tmp = tempfile::tempdir().unwrap();
        let runs: Vec<(usize, Vec<serde_json::Value>, Vec<f32>)> = [1, 2, 6]
            .iter()
            .map(|&devices| {
                let name = format!("{algorithm}-{devices}");
                let set = format!("distributed.devices={devices}");
                let r = recipe(tmp.path(), &name, algorithm, &[&set]);
                let summary = train::<AB>(&r, Default::default(), &options()).unwrap();
                assert_eq!(summary.updates, 6, "{name}");
                (devices, metrics(&r.run_dir()), final_weights(&r.run_dir()))
            })
            .collect();
        let (_, one, w1) = &runs[0];
        assert_eq!(one.len(), 3);
        // The runs moved the weights.
        let initial = weights(&root().join("models/tiny-sudoku"));
        assert_ne!(w1, &initial, "{algorithm}: training changed nothing");
        for (devices, many, w) in &runs[1..] {
            for (step, (a, b)) in one.iter().zip(many).enumerate() {
                // The sample completion is the first row's on all; losses and rewards agree
                // to the order of float sums: one peer adds a step's gradients pass by pass,
                // several add their own passes and then the peers' sums.
                assert_close(
                    a,
                    b,
                    3e-5,
                    &format!("{algorithm} {devices} peers, step {step}"),
                );
            }
            assert_same_weights(w1, w, &format!("{algorithm} {devices} peers"));
        }
    }
}

#[test]
fn peer_counts_the_run_cannot_split_are_refused_by_name() {
    let r = root();
    let load = |extra: &[&str]| {
        let mut o = vec![format!(
            "model.path=\"{}\"",
            r.join("models/tiny-sudoku").display()
        )];
        o.extend(extra.iter().map(|s| s.to_string()));
        Recipe::load(&r.join("recipes/tiny-sudoku.toml"), &o)
    };
    for (extra, needle) in [
        (
            &["distributed.devices=0"][..],
            "must be 1..=64 — each peer takes whole runs of 1 row(s)",
        ),
        (
            // 8 groups of 8 rows, one row per peer at most under negative centering …
            &["distributed.devices=65"][..],
            "must be 1..=64 — each peer takes whole runs of 1 row(s) of the step's 64",
        ),
        (
            // … one group per peer under the group-mean baseline …
            &["distributed.devices=9", "dmpo.baseline=\"mean\""][..],
            "must be 1..=8 — each peer takes whole runs of 8 row(s)",
        ),
        (
            // … and one slice of `baseline_rows` rows per peer with it.
            &[
                "distributed.devices=17",
                "dmpo.baseline=\"mean\"",
                "dmpo.baseline_rows=4",
            ][..],
            "must be 1..=16 — each peer takes whole runs of 4 row(s)",
        ),
        (
            &[
                "distributed.devices=2",
                "model.finetune=\"lora\"",
                "train.sync_ref_model=false",
                "lora.dropout=0.05",
            ][..],
            "needs `lora.dropout = 0`",
        ),
        (
            &["distributed.devices=2", "run.device=\"ndarray\""][..],
            "runs on `run.device` flex (CPU peers), cuda (one GPU each) or wgpu, not ndarray",
        ),
    ] {
        let e = load(extra).unwrap_err().to_string();
        assert!(
            e.contains("distributed.devices") && e.contains(needle),
            "{extra:?}: {e}"
        );
    }
    assert!(load(&["distributed.devices=64"]).is_ok());

    for (extra, field, needle) in [
        (
            &[r#"distributed.launcher="slurm""#][..],
            "distributed.launcher",
            r#""slurm": expected "auto", "mpi" or "none""#,
        ),
        (
            &[r#"distributed.nodes=["10.0.0.1:3001", "10.0.0.2:3001"]"#][..],
            "distributed.nodes",
            "belongs to the multi-machine runs of earlier versions",
        ),
        (
            &["distributed.experimental_multi_machine=true"][..],
            "distributed.experimental_multi_machine",
            "a run over several machines is an MPI job now",
        ),
        (
            &["distributed.node_rank=1"][..],
            "distributed.node_rank",
            "belongs to the multi-machine runs",
        ),
        (
            &["distributed.timeout_s=0"][..],
            "distributed.timeout_s",
            "positive number of seconds",
        ),
    ] {
        let e = load(extra).unwrap_err().to_string();
        assert!(
            e.contains(&format!("`{field}`")) && e.contains(needle),
            "{extra:?}: {e}"
        );
    }
    // An earlier run's recipe.toml, which holds these keys unset, still loads.
    assert!(load(&[
        "distributed.nodes=[]",
        "distributed.node_rank=0",
        "distributed.experimental_multi_machine=false",
        r#"distributed.launcher="none""#,
        "distributed.save_on_each_node=true",
    ])
    .is_ok());
}

#[test]
fn from_the_command_line_two_peers_write_the_metrics_of_one() {
    let tmp = tempfile::tempdir().unwrap();
    let recipe = root().join("recipes/tiny-sudoku.toml");
    let model = root().join("models/tiny-sudoku");
    let runs: Vec<Vec<serde_json::Value>> = [1, 2]
        .iter()
        .map(|devices| {
            let name = format!("cli-{devices}");
            let sets = [
                format!("model.path=\"{}\"", model.display()),
                format!("run.output_dir=\"{}\"", tmp.path().display()),
                format!("run.name=\"{name}\""),
                "train.steps=2".into(),
                "train.prompts_per_step=4".into(),
                format!("distributed.devices={devices}"),
            ];
            let mut args = vec![
                "train".to_string(),
                recipe.display().to_string(),
                "--skip-eval".into(),
                "--quiet".into(),
            ];
            for s in sets {
                args.extend(["--set".to_string(), s]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = common::dmpo(tmp.path(), &args);
            common::succeeds(&name, &out);
            metrics(&tmp.path().join(&name))
        })
        .collect();
    assert_eq!(runs[0].len(), 2);
    for (step, (a, b)) in runs[0].iter().zip(&runs[1]).enumerate() {
        assert_close(a, b, 1e-5, &format!("step {step}"));
    }
}

#[test]
fn sharded_evaluation_scores_every_item_once_as_one_peer_does() {
    let tmp = tempfile::tempdir().unwrap();
    // 5 items in batches of 2: peer 0 generates batch 0, peer 1 batches 1 and 2 (one item).
    let eval = [
        "eval.limit=5",
        "eval.batch_size=2",
        "train.steps=1",
        "train.num_iterations=1",
    ];
    let runs: Vec<(serde_json::Value, serde_json::Value)> = [1, 2]
        .iter()
        .map(|devices| {
            let name = format!("eval-{devices}");
            let set = format!("distributed.devices={devices}");
            let mut extra = eval.to_vec();
            extra.push(&set);
            let r = recipe(tmp.path(), &name, "dmpo", &extra);
            let with_eval = RunOptions {
                skip_eval: false,
                ..options()
            };
            let summary = train::<AB>(&r, Default::default(), &with_eval).unwrap();
            assert_eq!(summary.before.len(), 1, "{name}");
            assert_eq!(summary.before[0].items, 5, "{name}");
            let read = |label: &str| -> serde_json::Value {
                let path = r.run_dir().join(format!("eval_{label}_len24.json"));
                serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
            };
            (read("before"), read("after"))
        })
        .collect();
    for (label, one, two) in [
        ("before", &runs[0].0, &runs[1].0),
        ("after", &runs[0].1, &runs[1].1),
    ] {
        let generations = two["generations"].as_array().unwrap();
        assert_eq!(generations.len(), 5, "{label}: every item once");
        // The same batches give the same completions, in item order, wherever they ran.
        assert_eq!(one, two, "{label}");
    }
}

#[test]
fn the_paper_recipes_split_over_the_reference_s_eight_devices() {
    let r = root();
    for task in ["gsm8k", "math", "countdown", "sudoku"] {
        for (file, rows) in [
            (format!("llada8b-{task}.toml"), 64),
            (format!("llada8b-{task}-d1.toml"), 96),
        ] {
            let path = r.join("recipes").join(&file);
            let one = Recipe::load(&path, &[]).unwrap();
            assert_eq!(one.distributed.devices, 1, "{file}");
            // Refused with the paper's adapter dropout, accepted without it.
            let e = Recipe::load(&path, &["distributed.devices=8".into()]).unwrap_err();
            assert!(e.to_string().contains("lora.dropout = 0"), "{file}: {e}");
            let eight = Recipe::load(
                &path,
                &["distributed.devices=8".into(), "lora.dropout=0".into()],
            )
            .unwrap();
            let shares: Vec<_> = (0..8)
                .map(|rank| dmpo_train::distributed::Peer::of(rank, 8))
                .map(|p| p.share_rows(rows, eight.share_unit()))
                .collect();
            assert!(
                shares.iter().all(|s| s.len() == rows / 8),
                "{file}: {shares:?}"
            );
        }
    }
}

#[test]
fn a_stopped_two_peer_run_resumes_exactly_and_another_layout_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let two = "distributed.devices=2";
    // Uninterrupted, on one peer.
    let whole = recipe(tmp.path(), "whole", "dmpo", &[]);
    train::<AB>(&whole, Default::default(), &options()).unwrap();
    // Two peers, stopped after step 2 (its checkpoint written), then resumed.
    let parted = recipe(tmp.path(), "parted", "dmpo", &[two]);
    let stopped = RunOptions {
        stop_after: Some(2),
        ..options()
    };
    train::<AB>(&parted, Default::default(), &stopped).unwrap();
    assert_eq!(metrics(&parted.run_dir()).len(), 2);
    let resume = RunOptions {
        start: StartMode::from_flags(true, false),
        ..options()
    };
    // Another peer count is refused, saying why.
    let other = recipe(tmp.path(), "parted", "dmpo", &["distributed.devices=3"]);
    let e = train::<AB>(&other, Default::default(), &resume)
        .unwrap_err()
        .to_string();
    for needle in [
        "--resume on 3 peer(s) per process in 1 process(es)",
        "where the run had 2",
        "continues exactly",
    ] {
        assert!(e.contains(needle), "{e}");
    }
    let summary = train::<AB>(&parted, Default::default(), &resume).unwrap();
    assert_eq!(summary.steps, 3);
    let (a, b) = (metrics(&whole.run_dir()), metrics(&parted.run_dir()));
    assert_eq!(b.len(), 3, "every step once");
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_close(x, y, 1e-5, &format!("step {step}"));
    }
}

/// A process an MPI launcher started, in a build without MPI, is refused by name instead of
/// training alone as if it were the whole run.
#[cfg(not(feature = "mpi"))]
#[test]
fn an_mpi_launch_of_a_build_without_mpi_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::model_copy(tmp.path(), "m", |_| {});
    let args = common::train_args(&model, &["train.steps=1"]);
    for (var, value) in [
        ("OMPI_COMM_WORLD_SIZE", "2"),
        ("PMI_SIZE", "4"),
        ("SLURM_STEP_NUM_TASKS", "8"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dmpo"))
            .args(&args)
            .arg("--skip-eval")
            .current_dir(tmp.path())
            .env("RUST_LOG", "warn")
            .env(var, value)
            .output()
            .unwrap();
        common::fails(
            var,
            &out,
            &[
                &format!("{var}={value}"),
                "built without MPI",
                "--features mpi",
            ],
        );
        assert!(
            !tmp.path().join("runs/r/metrics.jsonl").exists(),
            "{var}: it trained"
        );
    }
    // Told that it runs alone, it does.
    let mut args = args;
    args.extend(["--set".into(), r#"distributed.launcher="none""#.into()]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dmpo"))
        .args(&args)
        .arg("--skip-eval")
        .current_dir(tmp.path())
        .env("RUST_LOG", "warn")
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    common::succeeds("launcher none", &out);
}
