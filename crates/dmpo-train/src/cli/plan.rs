//! `dmpo plan RECIPE [--device-memory GB]`: the predicted peak memory of each training phase and
//! the largest `train.micro_batch` that fits (the model in [`crate::plan`], docs/memory.md).

use std::path::PathBuf;

use dllm_model::ModelConfig;

use super::with_quantize;
use crate::plan::{largest_micro_batch, plan, MemoryPlan};
use crate::recipe::Recipe;

/// Arguments of `dmpo plan`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Recipe TOML file.
    pub recipe: PathBuf,
    /// Override a recipe value, e.g. `--set train.micro_batch=2` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Quantise the base while loading: `nf4` or `none` (sets `model.quantize`).
    #[arg(long, value_parser = ["nf4", "none"])]
    pub quantize: Option<String>,
    /// The model's `config.json` (default: the one in the recipe's `model.path`), so a recipe
    /// can be planned before the model is downloaded (`fixtures/configs/llada-8b-instruct.json`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Memory of the device to fit, in GB (default: this machine's RAM).
    #[arg(long)]
    pub device_memory: Option<f64>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// This machine's memory in bytes (`MemTotal` of `/proc/meminfo`).
fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn gb(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

/// Prints the plan.
pub fn run(a: Args) -> anyhow::Result<()> {
    let recipe = Recipe::load(
        &a.recipe,
        &with_quantize(&a.overrides, a.quantize.as_deref()),
    )?;
    let config_path = a
        .config
        .clone()
        .unwrap_or_else(|| recipe.model.path.join("config.json"));
    let config = ModelConfig::from_file(&config_path)?;
    recipe.check_model(&config, &config_path)?;
    let device = match a.device_memory {
        Some(g) if g.is_finite() && g > 0.0 => (g * 1e9) as u64,
        Some(g) => anyhow::bail!("--device-memory must be a positive number of GB, got {g}"),
        None => machine_memory().ok_or_else(|| {
            anyhow::anyhow!("cannot read this machine's memory; pass --device-memory GB")
        })?,
    };
    let micro_batch = recipe.train.micro_batch.min(recipe.train.rows_per_step());
    let p = plan(&config, &recipe, micro_batch);
    let fits = largest_micro_batch(&config, &recipe, device);
    if a.json {
        let out = serde_json::json!({
            "recipe": a.recipe.display().to_string(),
            "config": config_path.display().to_string(),
            "micro_batch": micro_batch,
            "device_bytes": device,
            "plan": p,
            "largest_micro_batch": fits,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    print_plan(&p, micro_batch);
    println!("device memory: {:.1} GB", gb(device));
    match fits {
        Some(m) => println!(
            "largest micro_batch that fits: {m} (recipe: {}){}",
            recipe.train.micro_batch,
            if p.peak_bytes > device {
                " -- the recipe as written does NOT fit"
            } else {
                ""
            }
        ),
        None => println!("does not fit: even micro_batch = 1 needs more than the device has"),
    }
    Ok(())
}

fn print_plan(p: &MemoryPlan, micro_batch: usize) {
    println!(
        "resident ({:.1}M trainable parameters):",
        p.trainable_parameters as f64 / 1e6
    );
    for r in &p.resident {
        println!("  {:<48} {:>9.2} GB", r.name, gb(r.bytes));
    }
    for phase in &p.phases {
        let label = if phase.name == "update" {
            format!("{} (micro_batch {micro_batch})", phase.name)
        } else {
            phase.name.to_string()
        };
        println!("{label}: peak {:.2} GB", gb(phase.peak_bytes));
        for t in &phase.transient {
            println!("  + {:<46} {:>9.2} GB", t.name, gb(t.bytes));
        }
    }
    println!("predicted peak: {:.2} GB", gb(p.peak_bytes));
}
