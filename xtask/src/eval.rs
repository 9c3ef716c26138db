//! `cargo xtask eval`: evaluate a model (and adapter) on a task at chosen generation lengths.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use dllm_model::backend::{dispatch, BackendKind, BackendTask};
use dllm_model::{load_model, ChatTokenizer, LoadOptions};
use dmpo_train::eval::evaluate;
use dmpo_train::recipe::{CompletionText, EvalOrder, EvalSection, PromptStyle, TaskSection};
use dmpo_train::tasks::eval_items;

/// Arguments of `cargo xtask eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model directory.
    #[arg(long, default_value = "models/tiny-sudoku")]
    pub model: PathBuf,
    /// PEFT adapter directory.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Quantise the block linears while loading (nf4). The references evaluate on the bf16
    /// base, so evaluation does not quantise unless asked.
    #[arg(long)]
    pub quantize: Option<dllm_model::quantization::Quantize>,
    /// Task.
    #[arg(long, default_value = "sudoku")]
    pub task: String,
    /// Evaluation data (`builtin` for Countdown/Sudoku).
    #[arg(long, default_value = "builtin")]
    pub data: String,
    /// Prompt style: compact (tiny models) or reference.
    #[arg(long, default_value = "compact")]
    pub prompt_style: String,
    /// Generation lengths, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "24")]
    pub gen_lengths: Vec<usize>,
    /// Block length.
    #[arg(long, default_value_t = 8)]
    pub block_length: usize,
    /// Steps per generated token (1.0: DMPO's protocol and the tiny recipes'; 0.5: d1's).
    #[arg(long, default_value_t = 1.0)]
    pub steps_per_token: f64,
    /// Items (0 = all).
    #[arg(long, default_value_t = 256)]
    pub limit: usize,
    /// Backend.
    #[arg(long, default_value = "flex")]
    pub backend: BackendKind,
    /// KV cache used by the sampler: none, prefix or dual.
    #[arg(long, default_value = "none")]
    pub cache: dllm_sample::CacheKind,
    /// Item order: `file` (the first `--limit` items) or `reference` (d1's and DMPO's seed-42
    /// subset of the built-in Countdown and Sudoku sets).
    #[arg(long, value_enum, default_value = "file")]
    pub order: EvalOrder,
    /// Completion text scored: `until-eos` (special tokens removed), `whole` or
    /// `whole-with-special` (the reference evaluations').
    #[arg(long, value_enum, default_value = "until-eos")]
    pub completion_text: CompletionText,
    /// Hide left padding from attention (every item scores as it would alone; the reference
    /// evaluations attend the pads).
    #[arg(long)]
    pub padding_mask: bool,
    /// The sampler: llada, dream, wino or roar (default: the model family's own).
    #[arg(long)]
    pub method: Option<dllm_sample::Method>,
    /// Threshold, factor and WINO settings.
    #[command(flatten)]
    pub decoding: dmpo_train::cli::DecodingArgs,
    /// Directory for the d1-layout generation files.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

struct Eval(Args);

impl BackendTask for Eval {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<()> {
        let a = self.0;
        let task: rewards::Task = a.task.parse()?;
        let style: PromptStyle = a.prompt_style.parse().map_err(anyhow::Error::msg)?;
        let section = TaskSection {
            name: a.task.clone(),
            train: "generate".into(),
            eval: a.data.clone(),
            prompt_style: style,
            sudoku_blanks: [6, 10],
            max_prompt_tokens: 200,
            reward_text: a.completion_text,
            countdown_numbers: 0,
            shuffle_seed: None,
            holdout: 0,
            countdown_number_range: [1, 100],
            countdown_target_range: [1, 100],
            countdown_in_order: false,
            countdown_operators: rewards::generate::COUNTDOWN_OPERATORS.to_string(),
            exclude_eval: false,
        };
        let items = eval_items(&section, task, a.order, a.limit)?;
        let tokenizer = ChatTokenizer::from_file(a.model.join("tokenizer.json"))?;
        let options = LoadOptions {
            quantize: a.quantize,
            ..LoadOptions::default()
        };
        let mut model = load_model::<B>(&a.model, options, &device)?;
        tokenizer.check_model(&model.config)?;
        if let Some(ad) = &a.adapter {
            model = model.load_adapter(ad, &device)?;
        }
        let eval = EvalSection {
            limit: a.limit,
            order: a.order,
            completion_text: a.completion_text,
            gen_lengths: a.gen_lengths.clone(),
            block_length: a.block_length,
            steps_per_token: a.steps_per_token,
            batch_size: 64,
            cache: a.cache,
            padding_mask: a.padding_mask,
            // Each family's own sampler unless asked, greedy.
            method: a
                .method
                .unwrap_or(dllm_sample::Method::of_family(model.config.family)),
            threshold: a.decoding.threshold,
            factor: a.decoding.factor,
            wino_threshold: a.decoding.wino_threshold,
            wino_threshold_back: a.decoding.wino_threshold_back,
            ..EvalSection::default()
        };
        if let Some(d) = &a.out {
            std::fs::create_dir_all(d)?;
        }
        println!(
            "| model | task | gen length | sampler | accuracy (%) | correct/total | seconds |"
        );
        println!("|---|---|---|---|---|---|---|");
        for &len in &a.gen_lengths {
            let out = a
                .out
                .as_ref()
                .map(|d| d.join(format!("{}_len{len}.json", a.task)));
            let clock = std::time::Instant::now();
            let r = evaluate(
                &model,
                &tokenizer,
                task,
                &items,
                style,
                200,
                &eval,
                len,
                out.as_deref(),
            )?;
            println!(
                "| {} | {} | {} | {} | {:.2} | {}/{} | {:.1} |",
                a.model.display(),
                a.task,
                len,
                dmpo_train::eval::eval_sampler(&eval, len).label(),
                r.accuracy_pct,
                r.correct,
                r.total,
                clock.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }
}

/// Runs the evaluation.
pub fn run(a: Args) -> anyhow::Result<()> {
    dispatch(a.backend, Eval(a))?
}
