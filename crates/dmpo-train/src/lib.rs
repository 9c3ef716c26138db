//! DMPO training for diffusion LLMs (spec §5): trainer, recipes, checkpoints, metrics, and the
//! `dmpo` command line.
#![warn(missing_docs)]

pub mod cli;
