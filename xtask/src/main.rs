//! `cargo xtask`: the project's recipes runner (train, eval, pretrain, bench, compare, study, random-checkpoint, scale, gpu-check).

mod bench;
mod bench_cache;
mod bench_ddp;
mod compare;
mod eval;
mod gpu_check;
mod memory;
mod pretrain;
mod random_checkpoint;
mod runs;
mod scale;
mod study;
mod train;
mod update;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "dmpo-rs recipes runner")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmarks on the fixtures/bench model, printed beside the PyTorch reference.
    Bench(bench::Args),
    /// Train with a recipe (default: recipes/tiny-sudoku.toml) and print before/after accuracy.
    Train(train::Args),
    /// Evaluate a model or adapter at chosen generation lengths.
    Eval(eval::Args),
    /// Accuracy of several runs against rollouts, grouped by algorithm: table and plot.
    Compare(compare::Args),
    /// Trains the embedded tiny model from scratch and writes `models/tiny-<task>/`.
    Pretrain(pretrain::Args),
    /// Writes a random-weight checkpoint in the exact LLaDA or Dream layout (bf16, optionally sharded).
    RandomCheckpoint(random_checkpoint::Args),
    /// Loads a model, generates with each sampler cache and runs one LoRA DMPO update,
    /// printing seconds and peak resident memory per phase.
    Scale(scale::Args),
    /// The learning evidence of docs/results/: DMPO, d1's diffu-GRPO and wd1 over seeds on the
    /// tiny Sudoku and Countdown models, tables and plots.
    Study(study::Args),
    /// The steps of `scripts/gpu-check.sh`: backend parity, the measured geometry, one measured
    /// operation, the report (docs/gpu.md).
    GpuCheck(gpu_check::Args),
}

fn main() -> anyhow::Result<()> {
    dmpo_train::cli::init_tracing();
    match Cli::parse().command {
        Command::Bench(a) => bench::run(a),
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Pretrain(a) => pretrain::run(a),
        Command::Compare(a) => compare::run(a),
        Command::RandomCheckpoint(a) => random_checkpoint::run(a),
        Command::Scale(a) => scale::run(a),
        Command::Study(a) => study::run(a),
        Command::GpuCheck(a) => gpu_check::run(a),
    }
}
