//! `cargo xtask`: the project's recipes runner (train, eval, pretrain, bench, compare).

mod bench;
mod compare;
mod eval;
mod pretrain;
mod train;

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
}

fn main() -> anyhow::Result<()> {
    dmpo_train::cli::init_tracing();
    match Cli::parse().command {
        Command::Bench(a) => bench::run(a),
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Pretrain(a) => pretrain::run(a),
        Command::Compare(a) => compare::run(a),
    }
}
