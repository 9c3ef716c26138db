//! The `dmpo` command line: inspect, parity logits, generation, scoring, training, download.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    dmpo_train::cli::init_tracing();
    let cli = dmpo_train::cli::Cli::parse();
    dmpo_train::cli::run(cli)
}
