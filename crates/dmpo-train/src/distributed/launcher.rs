//! Whether this process is one rank of an MPI job: from `distributed.launcher`, and under
//! `"auto"` from the environment the launchers set — OpenMPI's `mpirun`
//! (`OMPI_COMM_WORLD_SIZE`), MPICH's and Intel MPI's Hydra (`PMI_SIZE`), Slurm's `srun`
//! (`SLURM_STEP_NUM_TASKS` inside a job step). A job of one process is not a distributed run.
//! Compiled with or without the `mpi` feature, so that a build without it refuses such a launch
//! by name instead of running N unrelated copies of the same training.

use crate::error::{Result, TrainError};

/// The launch this process is part of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// One process (the run's peers, if several, are its threads).
    Single,
    /// A rank of an MPI job; `evidence` says what told so (for messages).
    Mpi {
        /// The variable (and value) or the recipe key that made this an MPI launch.
        evidence: String,
    },
}

/// The environment variables that give an MPI job's size, in the order they are read.
pub const SIZE_VARIABLES: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"];

/// The launch `launcher` (`"auto"`, `"mpi"` or `"none"`) means in an environment read by `var`.
pub fn detect(launcher: &str, var: impl Fn(&str) -> Option<String>) -> Result<Launch> {
    match launcher {
        "none" => Ok(Launch::Single),
        "mpi" => Ok(Launch::Mpi {
            evidence: "distributed.launcher = \"mpi\"".into(),
        }),
        "auto" => {
            for name in SIZE_VARIABLES {
                let Some(value) = var(name) else { continue };
                let size: usize = value.trim().parse().map_err(|_| {
                    TrainError::Distributed(format!(
                        "the environment variable {name}={value:?} is not a process count"
                    ))
                })?;
                return Ok(match size {
                    0 | 1 => Launch::Single,
                    _ => Launch::Mpi {
                        evidence: format!("{name}={size}"),
                    },
                });
            }
            Ok(Launch::Single)
        }
        other => Err(TrainError::Distributed(format!(
            "distributed.launcher = {other:?}: expected \"auto\", \"mpi\" or \"none\""
        ))),
    }
}

/// [`detect`] on this process's environment.
pub fn detect_here(launcher: &str) -> Result<Launch> {
    detect(launcher, |name| std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn launchers_are_recognised_from_their_variables() {
        let mpi = |e: &str| Launch::Mpi { evidence: e.into() };
        assert_eq!(detect("auto", env(&[])).unwrap(), Launch::Single);
        assert_eq!(
            detect("auto", env(&[("OMPI_COMM_WORLD_SIZE", "2")])).unwrap(),
            mpi("OMPI_COMM_WORLD_SIZE=2")
        );
        assert_eq!(
            detect("auto", env(&[("PMI_SIZE", "16")])).unwrap(),
            mpi("PMI_SIZE=16")
        );
        assert_eq!(
            detect("auto", env(&[("SLURM_STEP_NUM_TASKS", "8")])).unwrap(),
            mpi("SLURM_STEP_NUM_TASKS=8")
        );
        // A job of one, or a Slurm allocation outside a job step, is one process.
        assert_eq!(
            detect("auto", env(&[("OMPI_COMM_WORLD_SIZE", "1")])).unwrap(),
            Launch::Single
        );
        assert_eq!(
            detect("auto", env(&[("SLURM_JOB_ID", "7"), ("SLURM_NTASKS", "4")])).unwrap(),
            Launch::Single
        );
        assert_eq!(
            detect("mpi", env(&[])).unwrap(),
            mpi("distributed.launcher = \"mpi\"")
        );
        assert_eq!(
            detect("none", env(&[("OMPI_COMM_WORLD_SIZE", "4")])).unwrap(),
            Launch::Single
        );
    }

    #[test]
    fn unreadable_settings_are_refused_by_name() {
        let e = detect("auto", env(&[("PMI_SIZE", "two")])).unwrap_err();
        assert!(e.to_string().contains("PMI_SIZE=\"two\""), "{e}");
        let e = detect("slurm", env(&[])).unwrap_err();
        assert!(
            e.to_string().contains("distributed.launcher = \"slurm\""),
            "{e}"
        );
    }
}
