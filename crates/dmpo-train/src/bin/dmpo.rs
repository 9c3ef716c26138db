//! The `dmpo` command line: inspect, parity logits, generation, scoring, training, download.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    restore_default_sigpipe();
    dmpo_train::cli::init_tracing();
    let cli = dmpo_train::cli::Cli::parse();
    dmpo_train::cli::run(cli)
}

/// Rust ignores SIGPIPE, so a write to a closed pipe (`dmpo plan | head -1`) fails and
/// `println!` panics; with the default action the process ends quietly, as other command-line
/// tools do. Run directories stay consistent either way: their files are written atomically.
fn restore_default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: sets a signal's disposition to the default before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
