//! `dmpo inspect`.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use dllm_model::backend::{dispatch, BackendKind, BackendTask};
use dllm_model::{ChatTokenizer, ModelConfig, WeightFiles};

/// [`dllm_model::load::verify_model`] on a backend (its placeholders are empty tensors).
struct VerifyTask(std::path::PathBuf);

impl BackendTask for VerifyTask {
    type Output = dllm_model::Result<ModelConfig>;
    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        dllm_model::load::verify_model::<B>(&self.0, &device)
    }
}

/// Arguments of `dmpo inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory.
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// Adapter directory (default: the model directory, if it holds `adapter_config.json`).
    #[arg(long)]
    pub adapter: Option<std::path::PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Prints the config summary, parameter count, stored dtypes and adapter.
pub fn run(a: Args) -> anyhow::Result<()> {
    // Validated exactly as the loaders do (one tensor in memory at a time), so a directory
    // inspect accepts is one `generate` and `train` load.
    let kind = *BackendKind::compiled()
        .first()
        .ok_or_else(|| anyhow::anyhow!("no backend compiled in"))?;
    let config = dispatch(kind, VerifyTask(a.model.clone()))??;
    let weights = WeightFiles::open_dir(&a.model)?;
    let mut dtypes: BTreeMap<String, u64> = BTreeMap::new();
    let mut stored = 0u64;
    for (dtype, shape) in weights.summary().values() {
        let n: u64 = shape.iter().map(|&d| d as u64).product();
        *dtypes.entry(dtype.clone()).or_default() += n;
        stored += n;
    }
    let adapter_dir = a.adapter.clone().or_else(|| {
        a.model
            .join("adapter_config.json")
            .is_file()
            .then(|| a.model.clone())
    });
    // The adapter's weights and the tokenizer are checked as `generate` and `train` load them.
    let adapter = match &adapter_dir {
        Some(d) => Some(dllm_model::lora::verify_adapter(d, &config)?),
        None => None,
    };
    let tokenizer_path = a.model.join("tokenizer.json");
    let tokenizer = if tokenizer_path.is_file() {
        let tokenizer = ChatTokenizer::from_file(&tokenizer_path)?;
        tokenizer.check_model(&config)?;
        Some(tokenizer.vocab_size())
    } else {
        None
    };
    let quantization = dllm_model::quantization::checkpoint_is_nf4(
        &config,
        &dllm_model::config::config_path(&a.model),
    )?
    .then_some("nf4");
    let summary = serde_json::json!({
        "model": a.model.display().to_string(),
        "quantization": quantization,
        "weights": weights.origin().display().to_string(),
        "tokenizer_tokens": tokenizer,
        "family": config.family.name(),
        "n_layers": config.n_layers,
        "d_model": config.d_model,
        "n_heads": config.n_heads,
        "n_kv_heads": config.num_kv_heads(),
        "mlp_hidden_size": config.mlp_hidden(),
        "vocab_size": config.vocab_size,
        "embedding_size": config.embed_size(),
        "rope_theta": config.rope_theta,
        "mask_token_id": config.mask_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "weight_tying": config.weight_tying,
        "parameters": config.num_params_u128() as u64,
        "stored_parameters": stored,
        "stored_dtypes": dtypes,
        "adapter": adapter,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!("model        {}", a.model.display());
    println!(
        "architecture {}: {} layers, d_model {}, {} heads ({} kv), mlp {}, vocab {} (embeddings {})",
        config.family.name(),
        config.n_layers,
        config.d_model,
        config.n_heads,
        config.num_kv_heads(),
        config.mlp_hidden(),
        config.vocab_size,
        config.embed_size()
    );
    println!(
        "tokens       mask {}, eos {}, pad {}; rope theta {}",
        config.mask_token_id, config.eos_token_id, config.pad_token_id, config.rope_theta
    );
    println!(
        "parameters   {} ({:.2}M); stored {}",
        config.num_params_u128(),
        config.num_params_u128() as f64 / 1e6,
        stored
    );
    if quantization.is_some() {
        println!("quantized    bitsandbytes NF4: the block linears (docs/quantization.md)");
    }
    match tokenizer {
        Some(n) => println!("tokenizer    {n} tokens"),
        None => println!("tokenizer    none (token ids only)"),
    }
    for (dtype, n) in dtypes {
        println!("dtype        {dtype}: {n} values");
    }
    match adapter {
        Some(l) => println!(
            "adapter      LoRA r {} alpha {} dropout {} on {}",
            l.r,
            l.lora_alpha,
            l.lora_dropout,
            l.target_modules.join(",")
        ),
        None => println!("adapter      none"),
    }
    Ok(())
}
