//! Kill -9 at every syscall that writes a checkpoint (`mkdir`, `fsync`, `rename`, `unlinkat` on
//! paths under `checkpoints/`), injected with `strace --inject` rather than timed: afterwards no
//! checkpoint under a final `step-N` name is partial, and `--resume` finishes the run with the
//! same metrics and byte-identical final weights as an uninterrupted run.
//!
//! Needs `strace` (Debian package `strace`; CI installs it): without it the test fails.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{dmpo, metrics, model_copy, succeeds, train_args};

/// The syscalls a checkpoint write makes, as strace names them on x86-64 Linux.
const SYSCALLS: [&str; 4] = ["mkdir", "fsync", "rename", "unlinkat"];

/// The files every complete checkpoint of a full fine-tuning run holds.
const CHECKPOINT_FILES: [&str; 5] = [
    "state.json",
    "model.bin",
    "optimizer.bin",
    "hf/model.safetensors",
    "hf/config.json",
];

/// `dmpo train` arguments for a 3-step run (a checkpoint every step, two kept, so the third
/// prunes the first).
fn args(model: &Path, flags: &[&str]) -> Vec<String> {
    let mut a = train_args(model, &["train.steps=3"]);
    a.extend(["--skip-eval".to_string()]);
    a.extend(flags.iter().map(|s| s.to_string()));
    a
}

/// `dmpo args` under strace in `dir`; `inject` kills it at the `n`-th call of `syscall`.
fn traced(dir: &Path, args: &[String], trace: &Path, inject: Option<(&str, usize)>) -> bool {
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-y", "-o"])
        .arg(trace)
        .arg("-e")
        .arg(format!("trace={}", SYSCALLS.join(",")));
    if let Some((syscall, n)) = inject {
        cmd.arg("-e")
            .arg(format!("inject={syscall}:signal=KILL:when={n}"));
    }
    let status = cmd
        .arg(env!("CARGO_BIN_EXE_dmpo"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("strace runs (install the `strace` package)")
        .status;
    status.success()
}

/// For each syscall, the per-thread call numbers (1-based, as `when=` counts them) of the calls
/// on a path under `checkpoints/`, read from an `strace -f -y` trace.
fn checkpoint_calls(trace: &Path) -> Vec<(String, usize)> {
    let text = std::fs::read_to_string(trace).unwrap();
    let mut counters: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut points = Vec::new();
    for line in text.lines() {
        // `PID  syscall(...)`: strace pads the pid, so the gap is one space or more.
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let Some(name) = SYSCALLS.iter().find(|s| rest.starts_with(&format!("{s}("))) else {
            continue;
        };
        let n = counters
            .entry((pid.to_string(), name.to_string()))
            .or_default();
        *n += 1;
        if rest.contains("checkpoints") {
            points.push((name.to_string(), *n));
        }
    }
    points
}

/// Every `step-N` directory under `run/checkpoints` is complete.
fn assert_no_partial_checkpoint(run: &Path, case: &str) {
    let Ok(entries) = std::fs::read_dir(run.join("checkpoints")) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("step-") {
            continue;
        }
        for f in CHECKPOINT_FILES {
            assert!(
                e.path().join(f).is_file(),
                "{case}: {name} is under its final name without {f}"
            );
        }
    }
}

#[test]
fn a_kill_at_any_checkpoint_write_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = model_copy(dir, "m", |_| {});

    // The uninterrupted run, traced to find the checkpoint-writing calls.
    let reference_dir = dir.join("reference");
    std::fs::create_dir_all(&reference_dir).unwrap();
    let trace = dir.join("trace.txt");
    assert!(traced(&reference_dir, &args(&model, &[]), &trace, None));
    let reference_run = reference_dir.join("runs/r");
    let want_metrics = metrics(&reference_run);
    let final_weights = "checkpoints/step-000003/hf/model.safetensors";
    let want_weights = std::fs::read(reference_run.join(final_weights)).unwrap();
    let points = checkpoint_calls(&trace);
    for syscall in SYSCALLS {
        assert!(
            points.iter().any(|(s, _)| s == syscall),
            "no `{syscall}` on a checkpoint path in the trace: the test would check nothing"
        );
    }

    let per_syscall: BTreeMap<&str, usize> = SYSCALLS
        .iter()
        .map(|s| (*s, points.iter().filter(|(p, _)| p == s).count()))
        .collect();
    eprintln!("{} kill points: {per_syscall:?}", points.len());
    for (i, (syscall, n)) in points.iter().enumerate() {
        let case = format!("kill at {syscall} #{n}");
        let work = dir.join(format!("kill-{i}"));
        std::fs::create_dir_all(&work).unwrap();
        let finished = traced(
            &work,
            &args(&model, &[]),
            &dir.join("t"),
            Some((syscall, *n)),
        );
        assert!(!finished, "{case}: the injected kill did not happen");
        let run = work.join("runs/r");
        assert_no_partial_checkpoint(&run, &case);

        let resume: Vec<String> = args(&model, &["--resume"]);
        let refs: Vec<&str> = resume.iter().map(String::as_str).collect();
        succeeds(&case, &dmpo(&work, &refs));
        assert_no_partial_checkpoint(&run, &case);
        assert_eq!(metrics(&run), want_metrics, "{case}: metrics after resume");
        let weights = std::fs::read(run.join(final_weights)).unwrap();
        assert!(
            weights == want_weights,
            "{case}: final weights differ after resume"
        );
        std::fs::remove_dir_all(&work).unwrap();
    }
}
