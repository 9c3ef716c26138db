//! A run directory owned by one process at a time, which a new run never silently replaces.
//!
//! - **Exclusive lock.** [`RunDir::open`] takes an exclusive advisory lock on `RUN/.lock`
//!   (`std::fs::File::try_lock`, `flock` on Linux); a second `dmpo train` into the same
//!   directory fails at once with [`TrainError::RunLocked`]. The lock dies with the process, so a
//!   `kill -9` leaves nothing to clean up by hand.
//! - **No silent overwrite.** A directory that holds a run (its `recipe.toml`, `metrics.jsonl` or
//!   a checkpoint) is refused unless the caller asks to [`StartMode::Resume`] it or to
//!   [`StartMode::Overwrite`] it; overwriting removes only the files a run writes, and only
//!   when the new run starts ([`RunDir::start`]), after its inputs are checked.
//! - **Checked before work.** The directory and `checkpoints/` must be writable (the lock file
//!   and a probe file prove it), and
//!   leftovers of an interrupted checkpoint write (`checkpoints/.tmp-*`, `checkpoints/.trash-*`)
//!   are removed once the lock is held.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::error::{Result, TrainError};

/// How a run treats a directory that already holds one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartMode {
    /// Start a new run; refuse a directory that holds one.
    #[default]
    Fresh,
    /// Continue the run from its latest checkpoint.
    Resume,
    /// Remove the previous run's files and start a new run.
    Overwrite,
}

impl StartMode {
    /// The mode `--resume` / `--overwrite` ask for (never both: the CLI refuses that).
    pub fn from_flags(resume: bool, overwrite: bool) -> Self {
        match (resume, overwrite) {
            (true, _) => Self::Resume,
            (false, true) => Self::Overwrite,
            (false, false) => Self::Fresh,
        }
    }
}

/// Whether `path` holds a run (what [`StartMode::Fresh`] refuses): its recipe, its metrics, or
/// a checkpoint.
pub fn holds_run(path: &Path) -> bool {
    let has_checkpoint = std::fs::read_dir(path.join("checkpoints"))
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
        })
        .unwrap_or(false);
    has_checkpoint || RUN_MARKERS.iter().any(|m| path.join(m).exists())
}

/// Files and directories a run writes directly under its directory (what
/// [`StartMode::Overwrite`] removes, with the evaluation files of [`is_run_evaluation`]).
const RUN_FILES: [&str; 7] = [
    "recipe.toml",
    "metrics.jsonl",
    "eval.jsonl",
    "summary.json",
    "checkpoints",
    "accuracy.png",
    "reward.png",
];

/// Whether `name` is an evaluation file a run writes: `eval_{before,after,stepN}_len{L}.json`
/// (a user's own `eval_notes.json` is not one).
fn is_run_evaluation(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("eval_")
        .and_then(|r| r.strip_suffix(".json"))
    else {
        return false;
    };
    let Some((label, len)) = rest.rsplit_once("_len") else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let label_ok =
        label == "before" || label == "after" || label.strip_prefix("step").is_some_and(digits);
    label_ok && digits(len)
}

/// The files whose presence means the directory holds a run (besides a checkpoint).
const RUN_MARKERS: [&str; 2] = ["recipe.toml", "metrics.jsonl"];

/// A locked run directory; the lock is released when this is dropped.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    mode: StartMode,
    _lock: File,
}

impl RunDir {
    /// Creates (if needed) and locks `path` for a run started in `mode`.
    pub fn open(path: &Path, mode: StartMode) -> Result<Self> {
        // A run that started here left its lock file (even one killed before its first file).
        let started_before = path.join(".lock").is_file();
        if mode == StartMode::Resume && !started_before && !holds_run(path) {
            return Err(TrainError::NothingToResume {
                path: path.to_path_buf(),
            });
        }
        std::fs::create_dir_all(path).map_err(|e| TrainError::io(path, e))?;
        let lock_path = path.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| TrainError::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(TrainError::RunLocked {
                    path: path.to_path_buf(),
                })
            }
            Err(TryLockError::Error(e)) => return Err(TrainError::io(&lock_path, e)),
        }
        let dir = Self {
            path: path.to_path_buf(),
            mode,
            _lock: lock,
        };
        let holds_run = holds_run(path);
        match mode {
            StartMode::Fresh if holds_run => {
                return Err(TrainError::RunExists {
                    path: path.to_path_buf(),
                })
            }
            _ => {}
        }
        dir.remove_interrupted_writes()?;
        dir.check_checkpoints_writable()?;
        Ok(dir)
    }

    /// Creates `checkpoints/` and proves a file can be written there, so that a read-only
    /// location fails now rather than after the first step.
    fn check_checkpoints_writable(&self) -> Result<()> {
        let root = self.path.join("checkpoints");
        std::fs::create_dir_all(&root).map_err(|e| TrainError::io(&root, e))?;
        let probe = root.join(".tmp-probe");
        std::fs::write(&probe, b"").map_err(|e| TrainError::io(&probe, e))?;
        std::fs::remove_file(&probe).map_err(|e| TrainError::io(&probe, e))
    }

    /// Starts the run once its inputs are checked: under [`StartMode::Overwrite`] the previous
    /// run's files are removed now, so that a run refused for a bad input (a mistyped data
    /// path, say) leaves the previous run as it was.
    pub fn start(&self) -> Result<()> {
        if self.mode == StartMode::Overwrite && holds_run(&self.path) {
            tracing::info!(
                "--overwrite: removing the previous run in {}",
                self.path.display()
            );
            self.remove_run_files()?;
            // `checkpoints/` itself was removed: it is where the run writes next.
            self.check_checkpoints_writable()?;
        }
        Ok(())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes what a previous run wrote ([`RUN_FILES`] and its evaluation files), nothing
    /// else.
    fn remove_run_files(&self) -> Result<()> {
        let entries = std::fs::read_dir(&self.path).map_err(|e| TrainError::io(&self.path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| TrainError::io(&self.path, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_eval = is_run_evaluation(&name);
            if !(RUN_FILES.contains(&name.as_str()) || is_eval) {
                continue;
            }
            let p = entry.path();
            let removed = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            removed.map_err(|e| TrainError::io(&p, e))?;
        }
        Ok(())
    }

    /// Removes `checkpoints/.tmp-*` and `checkpoints/.trash-*` left by a killed checkpoint write.
    fn remove_interrupted_writes(&self) -> Result<()> {
        let root = self.path.join("checkpoints");
        let Ok(entries) = std::fs::read_dir(&root) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") || name.starts_with(".trash-") {
                let p = entry.path();
                tracing::info!("removing an interrupted checkpoint write: {}", p.display());
                std::fs::remove_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run directory inside a fresh temporary directory (kept alive by the returned guard).
    fn scratch() -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("run");
        (root, dir)
    }

    #[test]
    fn a_second_open_of_a_locked_directory_fails_at_once() {
        let (_root, dir) = scratch();
        let first = RunDir::open(&dir, StartMode::Fresh).unwrap();
        let err = RunDir::open(&dir, StartMode::Resume).unwrap_err();
        assert!(matches!(err, TrainError::RunLocked { .. }), "{err}");
        drop(first);
        RunDir::open(&dir, StartMode::Resume).unwrap();
    }

    #[test]
    fn a_directory_holding_a_run_is_refused_unless_resumed_or_overwritten() {
        let (_root, dir) = scratch();
        std::fs::create_dir_all(dir.join("checkpoints/step-000001")).unwrap();
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        let err = RunDir::open(&dir, StartMode::Fresh).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("--resume") && text.contains("--overwrite"),
            "{text}"
        );
        assert!(
            dir.join("checkpoints/step-000001").is_dir(),
            "refusal removed nothing"
        );
        drop(RunDir::open(&dir, StartMode::Resume).unwrap());
        assert!(dir.join("checkpoints/step-000001").is_dir());
        let overwriting = RunDir::open(&dir, StartMode::Overwrite).unwrap();
        assert!(
            holds_run(&dir),
            "nothing is removed before the inputs are checked"
        );
        overwriting.start().unwrap();
        drop(overwriting);
        assert!(!holds_run(&dir), "overwrite removed the previous run");
        std::fs::write(dir.join("metrics.jsonl"), "{}\n").unwrap();
        assert!(
            RunDir::open(&dir, StartMode::Fresh).is_err(),
            "metrics alone mark a run"
        );
        assert!(
            dir.join("notes.txt").is_file(),
            "files a run does not write are kept"
        );
    }

    #[test]
    fn only_a_runs_own_evaluation_files_count_as_its_files() {
        for name in [
            "eval_before_len256.json",
            "eval_after_len8.json",
            "eval_step40_len128.json",
        ] {
            assert!(is_run_evaluation(name), "{name}");
        }
        for name in [
            "eval_notes.json",
            "eval_before_len.json",
            "eval_stepx_len8.json",
            "eval_after_len8.jsonl",
        ] {
            assert!(!is_run_evaluation(name), "{name}");
        }
    }

    #[test]
    fn resuming_where_no_run_started_is_refused() {
        let (_tmp, dir) = scratch();
        let fresh = dir.join("never-ran");
        let e = RunDir::open(&fresh, StartMode::Resume).unwrap_err();
        assert!(e.to_string().contains("nothing to resume"), "{e}");
        assert!(!fresh.exists(), "a refused resume creates nothing");
        // A run killed before it wrote a file left its lock: resuming it starts it again.
        drop(RunDir::open(&fresh, StartMode::Fresh).unwrap());
        RunDir::open(&fresh, StartMode::Resume).unwrap();
    }

    #[test]
    fn interrupted_checkpoint_writes_are_removed() {
        let (_root, dir) = scratch();
        std::fs::create_dir_all(dir.join("checkpoints/.tmp-step-000002")).unwrap();
        std::fs::create_dir_all(dir.join("checkpoints/.trash-step-000001")).unwrap();
        std::fs::create_dir_all(dir.join("checkpoints/step-000001")).unwrap();
        drop(RunDir::open(&dir, StartMode::Resume).unwrap());
        let left: Vec<_> = std::fs::read_dir(dir.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["step-000001"]);
    }
}
