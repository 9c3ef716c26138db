//! `dmpo generate`.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use burn::tensor::backend::Backend;
use dllm_model::backend::{dispatch, BackendTask};
use dllm_model::{ChatMessage, ChatTokenizer};
use dllm_sample::{generate_with_observer, CacheKind, DreamAlg, Method, Remasking, SamplerConfig};

use super::{DecodingArgs, ModelArgs};

/// Arguments of `dmpo generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt text; the chat template is applied (needs `tokenizer.json`).
    #[arg(
        long,
        conflicts_with = "prompt_ids",
        required_unless_present = "prompt_ids"
    )]
    pub prompt: Option<String>,
    /// Prompt token ids, comma separated, used as they are.
    #[arg(long, value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
    /// Tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub gen_length: usize,
    /// Block length (default: 32 for LLaDA's sampler; for Dream's, the whole completion
    /// without a cache, 32 with one).
    #[arg(long)]
    pub block_length: Option<usize>,
    /// Denoising steps (default: gen_length / 2, the d1 evaluation setting); refused with
    /// `--method wino` or `roar`, which set their own.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// low_confidence or random.
    #[arg(long, default_value = "low_confidence")]
    pub remasking: Remasking,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 0.0)]
    pub cfg: f64,
    /// none, prefix or dual.
    #[arg(long, default_value = "none")]
    pub cache: CacheKind,
    /// Threshold, factor and WINO settings.
    #[command(flatten)]
    pub decoding: DecodingArgs,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// llada, dream, wino or roar (default: the model family's own sampler).
    #[arg(long)]
    pub method: Option<Method>,
    /// Dream: origin, maskgit_plus, topk_margin or entropy (default entropy).
    #[arg(long)]
    pub alg: Option<DreamAlg>,
    /// Dream: temperature of the position draw (default 0: the most confident).
    #[arg(long)]
    pub alg_temp: Option<f64>,
    /// Dream: the last timestep (default 1e-3).
    #[arg(long)]
    pub eps: Option<f64>,
    /// Dream: nucleus filtering.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Dream: top-k filtering.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Print `{"ids", "text", "nfe", "seconds"}` as JSON.
    #[arg(long)]
    pub json: bool,
}

struct Task(Args);

impl BackendTask for Task {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<()> {
        let a = self.0;
        let tokenizer_path = a.model.model.join("tokenizer.json");
        let tokenizer = if tokenizer_path.is_file() {
            Some(ChatTokenizer::from_file(&tokenizer_path)?)
        } else {
            None
        };
        let prompt = match (&a.prompt, &a.prompt_ids) {
            (Some(text), _) => {
                let tok = tokenizer.as_ref().ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: needed for --prompt (or pass --prompt-ids)",
                        tokenizer_path.display()
                    )
                })?;
                tok.encode_chat(&[ChatMessage::user(text.clone())])?
            }
            (None, Some(ids)) => ids.clone(),
            (None, None) => anyhow::bail!("give --prompt or --prompt-ids"),
        };
        let model = a.model.load::<B>(&device)?;
        if let Some(tok) = &tokenizer {
            tok.check_model(&model.config)?;
        }
        let method = a.method.unwrap_or(Method::of_family(model.config.family));
        let own_schedule = match method {
            Method::Wino => Some("wino: each block is decoded until it is done"),
            Method::Roar => Some("roar: one token per pass"),
            Method::Llada | Method::Dream => None,
        };
        if let (Some(_), Some(schedule)) = (a.steps, own_schedule) {
            anyhow::bail!("--steps is not a setting of --method {schedule}; leave it unset");
        }
        let block_length = a.block_length.unwrap_or(match (method, a.cache) {
            (Method::Dream, CacheKind::None) => a.gen_length,
            _ => 32,
        });
        let config = SamplerConfig {
            gen_length: a.gen_length,
            block_length,
            steps: a.steps.unwrap_or((a.gen_length / 2).max(1)),
            temperature: a.temperature,
            remasking: a.remasking,
            cfg_scale: a.cfg,
            cache: a.cache,
            seed: a.seed,
            method,
            ..Default::default()
        };
        let config = a.decoding.apply(config);
        // Dream's settings given to LLaDA's sampler are refused by `validate`, not ignored.
        let config = SamplerConfig {
            alg: a.alg.unwrap_or(config.alg),
            alg_temp: a.alg_temp.unwrap_or(config.alg_temp),
            eps: a.eps.unwrap_or(config.eps),
            top_p: a.top_p,
            top_k: a.top_k,
            ..config
        };
        let stream = !a.json && std::io::stderr().is_terminal() && tokenizer.is_some();
        let mask = model.config.mask_token_id;
        let start = Instant::now();
        let out = generate_with_observer(&model, &[prompt], &config, &mut |e| {
            if let (true, Some(tok)) = (stream, &tokenizer) {
                let shown: Vec<u32> = e.completions[0]
                    .iter()
                    .map(|&t| if t == mask { 0 } else { t })
                    .collect();
                if let Ok(text) = tok.decode(&shown, true) {
                    let line: String = text.replace('\n', " ").chars().take(150).collect();
                    eprint!("\r\x1b[2K[step {}] {line}", e.step + 1);
                    let _ = std::io::stderr().flush();
                }
            }
        })?;
        if stream {
            eprintln!();
        }
        let seconds = start.elapsed().as_secs_f64();
        let ids = &out.completions[0];
        let text = match &tokenizer {
            Some(tok) => Some(tok.decode(ids, true)?),
            None => None,
        };
        if a.json {
            let v =
                serde_json::json!({"ids": ids, "text": text, "nfe": out.nfe, "seconds": seconds});
            println!("{v}");
        } else {
            match text {
                Some(t) => println!("{t}"),
                None => println!("{ids:?}"),
            }
            eprintln!(
                "{} tokens, {} model calls, {:.2} s ({:.1} tokens/s)",
                ids.len(),
                out.nfe,
                seconds,
                ids.len() as f64 / seconds
            );
        }
        Ok(())
    }
}

/// Runs `dmpo generate`.
pub fn run(a: Args) -> anyhow::Result<()> {
    dispatch(a.model.backend, Task(a))?
}
