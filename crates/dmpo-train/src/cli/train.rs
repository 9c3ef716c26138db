//! `dmpo train`.

/// Arguments of `dmpo train`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Recipe TOML file.
    pub recipe: std::path::PathBuf,
}

/// Runs `dmpo train`.
pub fn run(a: Args) -> anyhow::Result<()> {
    anyhow::bail!("{}: training is not wired yet", a.recipe.display())
}
