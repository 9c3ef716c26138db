//! `cargo xtask scale --model DIR`: the full-size paths, run once each and measured — loading,
//! greedy generation with each sampler cache, and LoRA DMPO updates with the paper's adapter
//! (r 128, alpha 64, the recipe's targets), gradient checkpointing on — the first update creates
//! AdamW's moments, the second runs with them resident as every later training step does —
//! printing seconds and peak resident memory per phase (docs/memory.md holds LLaDA-8B's figures).
//!
//! The model is usually a random checkpoint (`cargo xtask random-checkpoint`): a random model's
//! completions mean nothing, so the update's rewards are set (`1, 0, 1, 0, …` within each group)
//! rather than scored; every tensor the update computes is the real one. Peak memory is the
//! process's resident set: the kernel's exact high-water mark of each phase (reset at its start
//! through `/proc/self/clear_refs`), and samples every 10 ms by a thread where phases share one
//! call — an update's ELBO is sampled, its loss pass reports the whole update's high-water mark.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::Parser;
use dllm_model::backend::{dispatch, BackendKind, BackendTask};
use dllm_model::quantization::Quantize;
use dllm_model::{load_model, DiffusionLm, LoadOptions, WeightDType};
use dllm_sample::{generate, CacheKind, SamplerConfig};
use dmpo_train::checkpoint::TrainState;
use dmpo_train::plan::plan;
use dmpo_train::rollout::{host_batch, Rollout};
use dmpo_train::Recipe;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::memory::{high_water_bytes, reset_high_water_mark, resident_bytes, RssMonitor};
use crate::update::{dmpo_update, UpdateState};

/// Arguments of `cargo xtask scale`.
#[derive(Debug, Parser)]
pub struct Args {
    /// Model directory (config.json and safetensors, single or sharded).
    #[arg(long)]
    pub model: PathBuf,
    /// Element type of the resident weights.
    #[arg(long, default_value = "bf16")]
    pub dtype: WeightDType,
    /// Quantise the block linears while loading (nf4): the reference's 4-bit base.
    #[arg(long)]
    pub quantize: Option<Quantize>,
    /// Backend.
    #[arg(long, default_value = "flex")]
    pub backend: BackendKind,
    /// The recipe whose LoRA, DMPO and optimiser settings the update uses.
    #[arg(long, default_value = "recipes/llada8b-countdown.toml")]
    pub recipe: PathBuf,
    /// Prompt tokens.
    #[arg(long, default_value_t = 32)]
    pub prompt_len: usize,
    /// Generated tokens.
    #[arg(long, default_value_t = 64)]
    pub gen_length: usize,
    /// Semi-autoregressive block length.
    #[arg(long, default_value_t = 32)]
    pub block_length: usize,
    /// Denoising steps of every generation (default: one token per step).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Samplers of the greedy generations (`exact`, `prefix`, `dual`).
    #[arg(long, value_delimiter = ',', default_value = "exact,dual")]
    pub caches: Vec<String>,
    /// Completions per prompt `G` of the update.
    #[arg(long, default_value_t = 2)]
    pub group_size: usize,
    /// Masked replicates per completion `K` of the update's losses.
    #[arg(long, default_value_t = 4)]
    pub replicates: usize,
    /// DMPO updates on the rollout: the first creates AdamW's moments, the second runs with
    /// them resident (the peak of every later training step); 0 measures the generations only
    /// (no adapter, rollout or update).
    #[arg(long, default_value_t = 2)]
    pub updates: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// What ran.
    pub name: String,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// What `dmpo plan` predicts for this phase's peak, bytes (phases it models only).
    pub planned_bytes: Option<u64>,
    /// Largest resident set during the phase, bytes.
    pub peak_rss_bytes: u64,
    /// Generated tokens per second (generation phases).
    pub tokens_per_second: Option<f64>,
}

/// What `scale` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The model directory.
    pub model: String,
    /// Parameters of the base model.
    pub parameters: usize,
    /// Trainable LoRA parameters.
    pub lora_parameters: usize,
    /// Resident set before loading, bytes.
    pub baseline_rss_bytes: u64,
    /// Every phase in order.
    pub phases: Vec<Phase>,
    /// Largest resident set of the whole run, bytes.
    pub peak_rss_bytes: u64,
}

/// Phases recorded in order, each with its time window.
struct Recorder {
    monitor: RssMonitor,
    phases: Vec<Phase>,
    quiet: bool,
}

impl Recorder {
    /// The report of the phases recorded.
    fn report(self, a: &Args, parameters: usize, lora_parameters: usize, baseline: u64) -> Report {
        let peak = self
            .phases
            .iter()
            .map(|p| p.peak_rss_bytes)
            .max()
            .unwrap_or(0);
        Report {
            model: a.model.display().to_string(),
            parameters,
            lora_parameters,
            baseline_rss_bytes: baseline,
            phases: self.phases,
            peak_rss_bytes: peak,
        }
    }

    /// Runs `f` as phase `name`; `tokens` generated tokens give it a rate.
    fn phase<T>(
        &mut self,
        name: &str,
        tokens: Option<usize>,
        f: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        if !self.quiet {
            eprintln!("scale: {name} …");
        }
        reset_high_water_mark();
        let start = Instant::now();
        let out = f()?;
        let end = Instant::now();
        self.push(name, start, end, tokens, high_water_bytes());
        Ok(out)
    }

    /// Sets the planned peak of the phase recorded last.
    fn planned(&mut self, bytes: u64) {
        if let Some(p) = self.phases.last_mut() {
            p.planned_bytes = Some(bytes);
        }
    }

    /// Records phase `name` over `[start, end]`; `exact` is the kernel's high-water mark over
    /// it (0 when the phase shares one with another, its samples then stand alone).
    fn push(
        &mut self,
        name: &str,
        start: Instant,
        end: Instant,
        tokens: Option<usize>,
        exact: u64,
    ) {
        let seconds = (end - start).as_secs_f64();
        let phase = Phase {
            name: name.to_string(),
            seconds,
            peak_rss_bytes: self.monitor.peak(start, end).max(exact),
            tokens_per_second: tokens.map(|n| n as f64 / seconds),
            planned_bytes: None,
        };
        if !self.quiet {
            eprintln!(
                "scale: {name}: {seconds:.1} s, peak {:.2} GB",
                phase.peak_rss_bytes as f64 / 1e9
            );
        }
        self.phases.push(phase);
    }
}

struct Scale<'a> {
    args: &'a Args,
}

impl BackendTask for Scale<'_> {
    type Output = anyhow::Result<Report>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<Report> {
        run_on::<Autodiff<B>>(self.args, &device)
    }
}

/// The greedy sampler of the generation phases.
/// Greedy generation with the family's own sampler (Dream's block-wise one with a cache).
fn greedy(a: &Args, steps: usize, cache: CacheKind, family: dllm_model::Family) -> SamplerConfig {
    SamplerConfig {
        gen_length: a.gen_length,
        block_length: a.block_length,
        steps,
        temperature: 0.0,
        cache,
        method: dllm_sample::Method::of_family(family),
        ..SamplerConfig::default()
    }
}

fn run_on<AB: AutodiffBackend>(a: &Args, device: &AB::Device) -> anyhow::Result<Report> {
    let steps = a.steps.unwrap_or(a.gen_length);
    let caches: Vec<CacheKind> = a
        .caches
        .iter()
        .map(|c| match c.as_str() {
            "exact" | "none" => Ok(CacheKind::None),
            "prefix" => Ok(CacheKind::Prefix),
            "dual" => Ok(CacheKind::Dual),
            other => anyhow::bail!("--caches: unknown sampler `{other}` (exact, prefix, dual)"),
        })
        .collect::<anyhow::Result<_>>()?;
    let overrides = [
        format!("model.path={:?}", a.model.display().to_string()),
        format!("model.dtype={:?}", dtype_name(a.dtype)),
        format!(
            "model.quantize=\"{}\"",
            a.quantize.map_or("none", Quantize::name)
        ),
        "model.finetune=\"lora\"".to_string(),
        "train.steps=1".to_string(),
        "train.num_iterations=1".to_string(),
        "train.prompts_per_step=1".to_string(),
        format!("train.group_size={}", a.group_size),
        format!("train.micro_batch={}", a.group_size),
        format!("train.loss_unit_rows={}", a.group_size),
        "train.gradient_checkpointing=true".to_string(),
        format!("dmpo.num_replicates={}", a.replicates),
        format!("rollout.gen_length={}", a.gen_length),
        format!("rollout.block_length={}", a.block_length),
        format!("rollout.steps={steps}"),
        format!("task.max_prompt_tokens={}", a.prompt_len),
        format!("run.device=\"{}\"", a.backend),
    ];
    if !a.json {
        eprintln!(
            "scale: the same settings for `dmpo plan`: dmpo plan {} {}",
            a.recipe.display(),
            overrides
                .iter()
                .map(|o| format!("--set '{o}'"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let recipe = Recipe::load(&a.recipe, &overrides)?;
    let baseline = resident_bytes();
    let mut rec = Recorder {
        monitor: RssMonitor::start(),
        phases: Vec::new(),
        quiet: a.json,
    };
    let options = LoadOptions {
        dtype: a.dtype,
        quantize: a.quantize,
    };
    let base: DiffusionLm<AB> = rec.phase("load", None, || {
        load_model::<AB>(&a.model, options, device)
            .with_context(|| format!("loading {}", a.model.display()))
    })?;
    let config = base.config.clone();
    let parameters = base.num_parameters();
    // The plan of these settings: steady-state peaks, AdamW's moments resident. Before the first
    // optimiser step they do not exist yet, so the rollout is compared without them.
    let planned = plan(&config, &recipe, a.group_size);
    let moments = planned.resident_part("AdamW moments");
    let planned_peak = |name: &str| planned.phase(name).map_or(0, |p| p.peak_bytes);
    rec.planned(planned_peak("load"));

    // A prompt of ordinary ids (below every special id of LLaDA's vocabulary).
    let top = config.vocab_size.min(config.mask_token_id as usize).max(2) as u32;
    let prompt: Vec<u32> = (0..a.prompt_len as u32)
        .map(|i| 1 + (i * 7919) % (top - 1))
        .collect();
    {
        let frozen = base.valid();
        for cache in &caches {
            let name = format!("generate ({})", cache_name(*cache));
            let sampler = greedy(a, steps, *cache, config.family);
            rec.phase(&name, Some(a.gen_length), || {
                Ok(generate(&frozen, std::slice::from_ref(&prompt), &sampler)?)
            })?;
        }
    }

    if a.updates == 0 {
        // Generations only: no adapter, rollout or update.
        return Ok(rec.report(a, parameters, 0, baseline));
    }
    AB::seed(device, recipe.run.seed);
    let policy = rec.phase("attach LoRA", None, || {
        Ok(base.with_lora(&recipe.lora.config(), device)?)
    })?;
    let lora_parameters = policy.num_parameters() - parameters;
    let rollout = rec.phase("rollout", Some(a.gen_length * a.group_size), || {
        let prompts = vec![prompt.clone(); a.group_size];
        let mut sampler = recipe.rollout.clone();
        sampler.adapter = true;
        let generation = generate(&policy.valid(), &prompts, &sampler)?;
        Ok(Rollout {
            sequences: host_batch(&generation, &sampler)?,
            group_size: a.group_size,
            rewards: (0..a.group_size).map(|i| ((i + 1) % 2) as f64).collect(),
            reward_components: Default::default(),
            reward_component_rows: Default::default(),
            sample_completion: String::new(),
            sampler_log_likelihoods: None,
        })
    })?;
    rec.planned(planned_peak("rollout").saturating_sub(moments));

    let mut s = UpdateState {
        optimizer: dmpo_train::optim::adamw(&recipe.train).init::<AB, DiffusionLm<AB>>(),
        state: TrainState::default(),
        rng: ChaCha8Rng::seed_from_u64(recipe.run.seed),
    };
    let mut policy = policy;
    for update in 1..=a.updates {
        reset_high_water_mark();
        let start = Instant::now();
        if !a.json {
            eprintln!("scale: DMPO update {update} (ELBO, then loss, backward and AdamW) …");
        }
        let (updated, diagnostics) = dmpo_update(policy, &recipe, &rollout, &mut s, device)?;
        policy = updated;
        let end = Instant::now();
        let elbo_end = start + Duration::from_secs_f64(diagnostics.seconds.elbo);
        rec.push(
            &format!("update {update}: rollout ELBO"),
            start,
            elbo_end,
            None,
            0,
        );
        if update > 1 {
            rec.planned(planned_peak("ELBO"));
        }
        rec.push(
            &format!("update {update}: loss + backward + AdamW"),
            elbo_end,
            end,
            None,
            // The whole update's high-water mark: the loss pass holds more than the ELBO.
            high_water_bytes(),
        );
        if update > 1 {
            rec.planned(planned_peak("update"));
        }
    }
    drop(policy);
    Ok(rec.report(a, parameters, lora_parameters, baseline))
}

fn dtype_name(d: WeightDType) -> &'static str {
    match d {
        WeightDType::F32 => "f32",
        WeightDType::BF16 => "bf16",
        WeightDType::F16 => "f16",
    }
}

fn cache_name(c: CacheKind) -> &'static str {
    match c {
        CacheKind::None => "exact",
        CacheKind::Prefix => "prefix cache",
        CacheKind::Dual => "dual cache",
    }
}

/// Runs the phases and prints the report.
pub fn run(a: Args) -> anyhow::Result<()> {
    let report = dispatch(a.backend, Scale { args: &a })??;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let gb = |b: u64| b as f64 / 1e9;
    println!(
        "{}: {:.2}B parameters, {:.1}M LoRA parameters; resident before loading {:.2} GB",
        report.model,
        report.parameters as f64 / 1e9,
        report.lora_parameters as f64 / 1e6,
        gb(report.baseline_rss_bytes)
    );
    println!(
        "{:<40} {:>10} {:>12} {:>10} {:>12} {:>8}",
        "phase", "seconds", "peak RSS GB", "tokens/s", "planned GB", "plan err"
    );
    for p in &report.phases {
        let rate = p
            .tokens_per_second
            .map_or(String::new(), |r| format!("{r:.3}"));
        let (planned, error) = match p.planned_bytes {
            Some(b) => (
                format!("{:.2}", gb(b)),
                format!(
                    "{:+.1}%",
                    100.0 * (b as f64 / p.peak_rss_bytes.max(1) as f64 - 1.0)
                ),
            ),
            None => (String::new(), String::new()),
        };
        println!(
            "{:<40} {:>10.1} {:>12.2} {:>10} {:>12} {:>8}",
            p.name,
            p.seconds,
            gb(p.peak_rss_bytes),
            rate,
            planned,
            error
        );
    }
    println!("peak resident memory: {:.2} GB", gb(report.peak_rss_bytes));
    Ok(())
}
