//! `dmpo quantize`: writes an NF4 copy of a model directory in the layout transformers +
//! bitsandbytes save ([`dllm_model::quantize_checkpoint`]), which every command then loads
//! directly, as a pre-quantised checkpoint from the Hub.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `dmpo quantize`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory (config.json + safetensors; bf16, f16 or f32).
    #[arg(long)]
    pub model: PathBuf,
    /// Output directory (created; must not hold weights already).
    #[arg(long)]
    pub out: PathBuf,
    /// The quantisation: nf4 (double-quantised, blocks of 64, as `load_in_4bit`).
    #[arg(long, default_value = "nf4")]
    pub quantize: dllm_model::quantization::Quantize,
}

/// Quantises the block linears and copies everything else.
pub fn run(a: Args) -> anyhow::Result<()> {
    let dllm_model::quantization::Quantize::Nf4 = a.quantize;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} tensors [{elapsed_precise}]")
            .expect("valid template"),
    );
    let report =
        dllm_model::quantize_checkpoint::quantize_checkpoint(&a.model, &a.out, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })?;
    bar.finish_and_clear();
    println!(
        "{}: {} linear weights in NF4, {} tensors copied; {:.2} GB -> {:.2} GB",
        a.out.display(),
        report.quantized,
        report.copied,
        report.bytes_in as f64 / 1e9,
        report.bytes_out as f64 / 1e9
    );
    Ok(())
}
