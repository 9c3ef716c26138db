//! Data parallelism across processes on MPI (feature `mpi`; OpenMPI's `mpirun` over TCP on this
//! machine): 2 and 3 processes train as one — the same metrics and final weights, DMPO and
//! diffu-GRPO — and evaluate every item once; a process killed mid-step ends the job in bounded
//! time with no half-written checkpoint, and the same launch with `--resume` finishes as an
//! uninterrupted run; a stopped process is named by the other at its timeout.
#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_close, assert_same_weights, final_weights, metrics, root, weights};

/// `mpirun` for `np` processes of `dmpo args…` in `dir`, over TCP on this machine (as root too);
/// every process carries `DMPO_MPI_TEST=tag`, by which the tests find them.
fn mpirun(dir: &Path, np: usize, tag: &str, args: &[String]) -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "--oversubscribe",
        "-np",
        &np.to_string(),
        "-x",
        "DMPO_MPI_TEST",
    ])
    .arg(env!("CARGO_BIN_EXE_dmpo"))
    .args(args)
    .current_dir(dir)
    .env("DMPO_MPI_TEST", tag)
    .env("OMPI_MCA_btl", "self,tcp")
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    .env("RUST_LOG", "warn");
    c
}

/// `dmpo train` arguments of a 3-step run of the tiny recipe named `name` in `dir/runs`.
fn train_args(name: &str, algorithm: &str, extra: &[&str]) -> Vec<String> {
    let sets = common::three_step_overrides("runs", name, algorithm);
    common::train_command(&root().join("recipes/tiny-sudoku.toml"), &sets, extra)
}

fn output(c: &mut Command) -> Output {
    c.output().expect("mpirun runs (OpenMPI's openmpi-bin)")
}

#[test]
fn two_and_three_processes_give_the_metrics_and_weights_of_one() {
    let tmp = tempfile::tempdir().unwrap();
    for algorithm in ["dmpo", "diffu_grpo"] {
        let one = format!("{algorithm}-1");
        let out = common::dmpo(
            tmp.path(),
            &refs(&train_args(&one, algorithm, &[]), &["--skip-eval"]),
        );
        common::succeeds(&one, &out);
        let run_one = tmp.path().join("runs").join(&one);
        let (m1, w1) = (metrics(&run_one), final_weights(&run_one));
        assert_eq!(m1.len(), 3);
        assert_ne!(
            w1,
            weights(&root().join("models/tiny-sudoku")),
            "{algorithm}: no change"
        );
        for np in [2, 3] {
            let name = format!("{algorithm}-{np}");
            let mut args = train_args(&name, algorithm, &[]);
            args.push("--skip-eval".into());
            let out = output(&mut mpirun(tmp.path(), np, &name, &args));
            common::succeeds(&name, &out);
            let run = tmp.path().join("runs").join(&name);
            let many = metrics(&run);
            assert_eq!(
                many.len(),
                3,
                "{name}: one metrics row per step, from rank 0 alone"
            );
            for (step, (a, b)) in m1.iter().zip(&many).enumerate() {
                assert_close(a, b, 1e-5, &format!("{name} step {step}"));
            }
            assert_same_weights(&w1, &final_weights(&run), &name);
            // Rank 0 alone prints the summary.
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(stdout.matches("run: ").count(), 1, "{name}: {stdout}");
        }
    }
}

fn refs<'a>(args: &'a [String], more: &[&'a str]) -> Vec<&'a str> {
    args.iter()
        .map(String::as_str)
        .chain(more.iter().copied())
        .collect()
}

#[test]
fn sharded_evaluation_over_processes_scores_every_item_once() {
    let tmp = tempfile::tempdir().unwrap();
    // 5 items in batches of 2: 3 processes generate one batch each.
    let eval = [
        "eval.limit=5",
        "eval.batch_size=2",
        "train.steps=1",
        "train.num_iterations=1",
    ];
    let read = |name: &str, label: &str| -> serde_json::Value {
        let path = tmp
            .path()
            .join("runs")
            .join(name)
            .join(format!("eval_{label}_len24.json"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let out = common::dmpo(tmp.path(), &refs(&train_args("eval-1", "dmpo", &eval), &[]));
    common::succeeds("eval-1", &out);
    for np in [2, 3] {
        let name = format!("eval-{np}");
        let out = output(&mut mpirun(
            tmp.path(),
            np,
            &name,
            &train_args(&name, "dmpo", &eval),
        ));
        common::succeeds(&name, &out);
        for label in ["before", "after"] {
            let (one, many) = (read("eval-1", label), read(&name, label));
            let generations = many["generations"].as_array().unwrap();
            assert_eq!(generations.len(), 5, "{name} {label}: every item once");
            assert_eq!(one, many, "{name} {label}");
        }
    }
}

/// The PIDs of the `dmpo` processes of the job tagged `tag`, by MPI rank.
fn ranks(tag: &str) -> Vec<(usize, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let vars: Vec<String> = environ
            .split(|&b| b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        let exe = std::fs::read_link(entry.path().join("exe")).unwrap_or_default();
        if !exe.to_string_lossy().contains("dmpo") {
            continue;
        }
        if !vars.iter().any(|v| *v == format!("DMPO_MPI_TEST={tag}")) {
            continue;
        }
        if let Some(rank) = vars
            .iter()
            .find_map(|v| v.strip_prefix("OMPI_COMM_WORLD_RANK="))
        {
            found.push((rank.parse().unwrap(), pid));
        }
    }
    found.sort();
    found
}

/// Starts a 2-process job of `steps` steps, waits until its first step is written, and sends
/// `signal` to rank 1; returns the job and the signal's instant.
fn signal_rank_one(
    dir: &Path,
    name: &str,
    steps: usize,
    timeout_s: u32,
    signal: &str,
) -> (Child, Instant) {
    let steps = format!("train.steps={steps}");
    let timeout = format!("distributed.timeout_s={timeout_s}");
    let mut args = train_args(name, "dmpo", &[&steps, &timeout]);
    args.push("--skip-eval".into());
    let child = mpirun(dir, 2, name, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = dir.join("runs").join(name).join("metrics.jsonl");
    let started = Instant::now();
    loop {
        let lines = std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count());
        if lines >= 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{name}: no first step"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids = ranks(name);
    let (_, pid) = pids.iter().find(|(r, _)| *r == 1).expect("rank 1 runs");
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    (child, Instant::now())
}

fn finish(child: Child, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if started.elapsed() > limit {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("the job did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (waiter.join().unwrap(), started.elapsed())
}

#[test]
fn a_killed_process_ends_the_job_and_the_same_launch_resumes_it_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (steps, timeout_s) = (6, 30);
    // The uninterrupted run.
    let whole = format!("train.steps={steps}");
    let mut args = train_args("whole", "dmpo", &[&whole]);
    args.push("--skip-eval".into());
    common::succeeds("whole", &output(&mut mpirun(dir, 2, "whole", &args)));
    let expected = metrics(&dir.join("runs/whole"));

    let (child, killed) = signal_rank_one(dir, "cut", steps, timeout_s, "-KILL");
    let (out, _) = finish(child, Duration::from_secs(u64::from(timeout_s) + 30));
    let ended = killed.elapsed();
    let text = common::text(&out);
    assert!(!out.status.success(), "the job went on: {text}");
    assert!(
        ended < Duration::from_secs(u64::from(timeout_s) + 10),
        "ended {ended:?} after the kill"
    );
    assert!(
        text.contains("rank 1"),
        "the message names the rank: {text}"
    );
    let run = dir.join("runs/cut");
    // Whatever checkpoint `latest` names is whole.
    if let Some(path) = dmpo_train::checkpoint::latest(&run).unwrap() {
        assert!(
            path.join("hf/model.safetensors").is_file(),
            "{}",
            path.display()
        );
    }
    assert!(metrics(&run).len() < steps, "the kill came after the run");

    // The same launch with --resume finishes as the uninterrupted run did.
    let mut args = train_args("cut", "dmpo", &[&whole]);
    args.extend(["--skip-eval".to_string(), "--resume".to_string()]);
    let out = output(&mut mpirun(dir, 2, "cut-resume", &args));
    common::succeeds("resume", &out);
    let resumed = metrics(&run);
    assert_eq!(resumed.len(), steps);
    for (step, (a, b)) in expected.iter().zip(&resumed).enumerate() {
        assert_close(a, b, 1e-5, &format!("resumed step {step}"));
    }
    assert_same_weights(
        &final_weights(&dir.join("runs/whole")),
        &final_weights(&run),
        "resumed",
    );
}

#[test]
fn a_stopped_process_is_named_by_the_other_at_its_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let timeout_s = 5;
    let (child, stopped) = signal_rank_one(tmp.path(), "stop", 200, timeout_s, "-STOP");
    let (out, _) = finish(child, Duration::from_secs(120));
    let ended = stopped.elapsed();
    let text = common::text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!("no answer within {timeout_s} s from MPI rank 1")),
        "{text}"
    );
    assert!(text.contains("Aborting the job"), "{text}");
    assert!(
        ended < Duration::from_secs(u64::from(timeout_s) + 20),
        "ended {ended:?} after the stop"
    );
    // No process of the job is left.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        ranks("stop").is_empty(),
        "processes left: {:?}",
        ranks("stop")
    );
}
