//! `cargo xtask pretrain`: trains the embedded tiny model from scratch.
//!
//! A character-level tokenizer is trained with the `tokenizers` crate over the formatted
//! training text, then a small LLaDA-layout model learns 4x4 Sudoku with LLaDA's supervised
//! masked-diffusion objective (spec §1): per sequence `t ~ U(eps, 1)`, each completion token
//! masked with probability `t`, loss = sum of masked cross-entropies / `t`, divided by
//! `batch * gen_length`. Training stops at the first periodic evaluation whose greedy cell
//! accuracy on the held-out test puzzles reaches `--target-accuracy` (with well-formed answers),
//! so that the base stays clearly imperfect and RL has headroom. The result is written to
//! `models/tiny-<task>/` in the Hugging Face layout, with `README.md` and `pretrain.json`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use dllm_model::backend::{dispatch, BackendKind, BackendTask};
use dllm_model::{
    load_model, save_model, ForwardOptions, Llada, LladaConfig, LladaTokenizer, LoadOptions,
    LogitPositions,
};
use dllm_sample::{generate, SamplerConfig};
use dmpo_train::recipe::PromptStyle;
use dmpo_train::tasks::{completion_text, prompt_ids};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rewards::{GroundTruth, Task, TaskItem};
use serde::{Deserialize, Serialize};
use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::wordlevel::{WordLevel, WordLevelTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// Tokens generated per prompt, by the RL recipe and by the evaluation here.
pub const GEN_LENGTH: usize = 24;
/// Semi-autoregressive block length of the evaluation sampler.
pub const BLOCK_LENGTH: usize = 8;
/// Denoising steps of the evaluation sampler (2 tokens per step).
pub const SAMPLER_STEPS: usize = 12;
/// Smallest masking ratio of the diffusion objective.
const T_EPS: f64 = 1e-3;
/// Longest prompt in tokens (the recipes' `max_prompt_tokens`).
const MAX_PROMPT_TOKENS: usize = 200;
/// Blank cells of the generated training puzzles (inclusive).
const TRAIN_BLANKS: [usize; 2] = [6, 10];
/// Formatted training examples the tokenizer is trained on.
const TOKENIZER_CORPUS: usize = 512;
/// Rows per sampler call during evaluation.
const EVAL_CHUNK: usize = 128;

/// The mask token of the diffusion model.
pub const MASK_TOKEN: &str = "<|mdm_mask|>";
/// The unknown-character token of the word-level model.
pub const UNK_TOKEN: &str = "<unk>";
/// Special tokens, in id order (ids 0..).
pub const SPECIAL_TOKENS: [&str; 7] = [
    "<|startoftext|>",
    "<|endoftext|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    MASK_TOKEN,
    UNK_TOKEN,
];
/// Normal added tokens (kept by `decode(.., skip_special = true)`), after the special ones.
pub const ANSWER_TOKENS: [&str; 2] = ["<answer>", "</answer>"];

/// Arguments of `cargo xtask pretrain`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Task to pretrain on (only `sudoku`).
    #[arg(long, default_value = "sudoku")]
    pub task: String,
    /// Seed of the tokenizer corpus, the model initialisation, the data and the masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory (default `models/tiny-<task>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Most optimiser steps.
    #[arg(long, default_value_t = 1000)]
    pub max_steps: usize,
    /// Stop at the first evaluation whose greedy cell accuracy reaches this (0..1).
    #[arg(long, default_value_t = 0.40)]
    pub target_accuracy: f64,
    /// Smallest share of well-formed answers (`<answer>` + 16 digits + `</answer>`) for stopping.
    #[arg(long, default_value_t = 0.95)]
    pub min_well_formed: f64,
    /// Sequences per optimiser step.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    /// Evaluate every this many steps.
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    /// Held-out test puzzles evaluated (the first N of the shipped 4x4 test set).
    #[arg(long, default_value_t = 256)]
    pub eval_items: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 64)]
    pub d_model: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 4)]
    pub n_layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    pub n_heads: usize,
    /// Inner MLP size.
    #[arg(long, default_value_t = 192)]
    pub mlp_hidden: usize,
    /// Backend to train on.
    #[arg(long, default_value = "flex")]
    pub backend: BackendKind,
    /// Share (0..1) of training completions written by a flawed solver instead of the true
    /// solution: the row-only heuristic of [`row_only_fill`]. A base that imitated such mixed
    /// demonstrations can produce correct answers but prefers the flawed ones, the situation
    /// RL fine-tuning is meant for.
    #[arg(long, default_value_t = 0.0)]
    pub flawed_share: f64,
    /// Do not train: rewrite `README.md` in the output directory from its `pretrain.json` and
    /// `config.json` (after a change to the README text).
    #[arg(long)]
    pub readme_only: bool,
}

/// One periodic evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalPoint {
    /// Optimiser steps taken.
    pub step: usize,
    /// Correct empty cells over empty cells, all items together.
    pub accuracy: f64,
    /// Empty cells filled as the flawed row-only solver fills them, over empty cells.
    #[serde(default)]
    pub flawed_agreement: f64,
    /// Items whose extracted answer is 16 digits inside `<answer>…</answer>`.
    pub well_formed: f64,
    /// Items solved completely.
    pub solved: f64,
    /// Mean training loss over the steps since the previous evaluation.
    pub train_loss: f64,
}

/// The facts recorded in `pretrain.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    command: String,
    task: String,
    seed: u64,
    backend: String,
    steps: usize,
    stop_reason: String,
    final_loss: f64,
    #[serde(default)]
    flawed_share: f64,
    /// Where and with what code the files were built, when that matters for rebuilding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provenance: Option<String>,
    base_accuracy: f64,
    #[serde(default)]
    base_flawed_agreement: f64,
    base_well_formed: f64,
    base_solved: f64,
    eval_items: usize,
    sampler: SamplerConfig,
    batch_size: usize,
    lr: f64,
    warmup: usize,
    adamw: serde_json::Value,
    train_blanks: [usize; 2],
    gen_length: usize,
    prompt_tokens: usize,
    vocab_size: usize,
    parameters: usize,
    model_bytes: u64,
    train_seconds: f64,
    evals: Vec<EvalPoint>,
}

/// Runs `cargo xtask pretrain`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.task != "sudoku" {
        bail!(
            "pretraining is only implemented for `sudoku` (asked for `{}`)",
            args.task
        );
    }
    ensure!(args.batch_size > 0, "--batch-size must be positive");
    ensure!(args.eval_every > 0, "--eval-every must be positive");
    ensure!(
        (0.0..1.0).contains(&args.flawed_share),
        "--flawed-share must be in [0, 1)"
    );
    ensure!(
        (0.0..=1.0).contains(&args.target_accuracy),
        "--target-accuracy must be in [0, 1]"
    );
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("models/tiny-{}", args.task)));
    if args.readme_only {
        return rewrite_readme(&out);
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    dispatch(args.backend, Pretrain { args, out })?
}

struct Pretrain {
    args: Args,
    out: PathBuf,
}

impl BackendTask for Pretrain {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<()> {
        pretrain::<Autodiff<B>>(&self.args, &self.out, &device)
    }
}

/// The sampler the RL recipe uses, greedy.
pub fn eval_sampler() -> SamplerConfig {
    SamplerConfig {
        gen_length: GEN_LENGTH,
        block_length: BLOCK_LENGTH,
        steps: SAMPLER_STEPS,
        temperature: 0.0,
        ..Default::default()
    }
}

/// The completion text the model is taught: `<answer>` + solution + `</answer>`, the true
/// solution or, when `flawed`, the row-only heuristic's fill of the puzzle.
pub fn target_text(item: &TaskItem, flawed: bool) -> anyhow::Result<String> {
    match &item.truth {
        GroundTruth::Sudoku { solution, puzzle } => {
            let answer = if flawed {
                row_only_fill(puzzle)
            } else {
                solution.clone()
            };
            Ok(format!("{}{answer}{}", ANSWER_TOKENS[0], ANSWER_TOKENS[1]))
        }
        other => bail!("not a Sudoku item: {other:?}"),
    }
}

/// A flawed 4x4 Sudoku solver: each row's empty cells (`0`) get the digits missing from that
/// row, in ascending order, ignoring columns and boxes. On the first 256 test puzzles it fills
/// 47.2% of the empty cells correctly and solves 1.6% of the puzzles.
pub fn row_only_fill(puzzle: &str) -> String {
    let cells: Vec<u8> = puzzle.bytes().collect();
    let mut out = cells.clone();
    for (row, chunk) in cells.chunks(4).enumerate() {
        let mut missing = (b'1'..=b'4').filter(|d| !chunk.contains(d));
        for (col, &c) in chunk.iter().enumerate() {
            if c == b'0' {
                out[row * 4 + col] = missing.next().unwrap_or(b'1');
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn puzzle_of(item: &TaskItem) -> &str {
    match &item.truth {
        GroundTruth::Sudoku { puzzle, .. } => puzzle,
        _ => "",
    }
}

/// A generated training item for `(seed, step, row)`, never a puzzle of the test set.
fn train_item(rng: &mut ChaCha8Rng, excluded: &HashSet<String>) -> anyhow::Result<TaskItem> {
    loop {
        let blanks = rng.random_range(TRAIN_BLANKS[0]..=TRAIN_BLANKS[1]);
        let item_seed: u64 = rng.random();
        let item = rewards::generate::sudoku_items(item_seed, 1, blanks)?
            .pop()
            .context("the generator returned no item")?;
        if !excluded.contains(puzzle_of(&item)) {
            return Ok(item);
        }
    }
}

/// The data stream of step `step`: independent of every other step, fixed by the seed.
fn step_rng(seed: u64, step: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (step as u64 + 1))
}

/// Trains the character-level tokenizer over formatted training text and saves it.
fn build_tokenizer(
    seed: u64,
    excluded: &HashSet<String>,
    path: &Path,
) -> anyhow::Result<LladaTokenizer> {
    let added: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .chain(ANSWER_TOKENS.iter().map(|t| AddedToken::from(*t, false)))
        .collect();
    let model = WordLevel::builder()
        .unk_token(UNK_TOKEN.to_string())
        .build()
        .map_err(anyhow::Error::msg)?;
    let mut tokenizer = Tokenizer::new(model);
    let split = Split::new(
        SplitPattern::Regex("(?s).".into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(anyhow::Error::msg)?;
    tokenizer.with_pre_tokenizer(Some(split));
    tokenizer.with_decoder(Some(Fuse::new()));

    // The chat template comes from `LladaTokenizer`, which only needs the special tokens: a
    // throw-away copy carrying them renders the corpus.
    let mut with_added = tokenizer.clone();
    with_added.add_tokens(&added);
    let templater = LladaTokenizer::from_tokenizer(with_added, path)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x746F_6B65_6E69_7A65);
    let mut corpus = Vec::with_capacity(TOKENIZER_CORPUS);
    for _ in 0..TOKENIZER_CORPUS {
        let item = train_item(&mut rng, excluded)?;
        let prompt = dmpo_train::tasks::prompt_text(&item, PromptStyle::Compact, false);
        corpus.push(format!(
            "{}{}{}",
            templater.chat_template(&[dllm_model::ChatMessage::user(prompt)], true),
            target_text(&item, false)?,
            templater.eos
        ));
    }
    // The trainer counts characters; the added tokens are not characters, and it puts them
    // first in the vocabulary itself (ids 0.. in `added`'s order), then registers them.
    let characters: Vec<String> = corpus
        .iter()
        .map(|text| {
            added
                .iter()
                .fold(text.clone(), |t, a| t.replace(&a.content, ""))
        })
        .collect();
    let mut trainer: TrainerWrapper = WordLevelTrainer::builder()
        .show_progress(false)
        .special_tokens(added.clone())
        .build()
        .map_err(anyhow::Error::msg)?
        .into();
    tokenizer
        .train(&mut trainer, characters.iter())
        .map_err(anyhow::Error::msg)?;
    for (i, t) in added.iter().enumerate() {
        ensure!(
            tokenizer.token_to_id(&t.content) == Some(i as u32),
            "token {} did not get id {i}",
            t.content
        );
    }
    tokenizer
        .save(path, true)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("writing {}", path.display()))?;
    let loaded = LladaTokenizer::from_file(path)?;
    for (i, t) in added.iter().enumerate() {
        ensure!(
            loaded.token_id(&t.content) == Some(i as u32),
            "token {} has id {:?} after reloading, not {i}",
            t.content,
            loaded.token_id(&t.content)
        );
    }
    let vocab = loaded.inner().get_vocab(true);
    ensure!(
        vocab.values().all(|&i| (i as usize) < loaded.vocab_size()),
        "the reloaded vocabulary has ids beyond its size {}",
        loaded.vocab_size()
    );
    for text in &corpus[..8] {
        let ids = loaded.encode(text)?;
        ensure!(
            loaded.decode(&ids, false)? == *text,
            "the tokenizer does not round-trip {text:?}"
        );
        ensure!(
            ids.iter()
                .all(|&i| loaded.inner().id_to_token(i).as_deref() != Some(UNK_TOKEN)),
            "the tokenizer maps a character of {text:?} to {UNK_TOKEN}"
        );
    }
    Ok(loaded)
}

/// Prompt and completion ids of training items, every prompt `prompt_len` tokens.
struct Encoder<'a> {
    tokenizer: &'a LladaTokenizer,
    prompt_len: usize,
    eos: u32,
}

impl Encoder<'_> {
    fn prompt(&self, item: &TaskItem) -> anyhow::Result<Vec<u32>> {
        let ids = prompt_ids(
            self.tokenizer,
            item,
            PromptStyle::Compact,
            false,
            MAX_PROMPT_TOKENS,
        )?;
        ensure!(
            ids.len() == self.prompt_len,
            "prompt of {} tokens, expected {} (prompts must not need padding)",
            ids.len(),
            self.prompt_len
        );
        Ok(ids)
    }

    fn completion(&self, item: &TaskItem, flawed: bool) -> anyhow::Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(&target_text(item, flawed)?)?;
        ensure!(
            ids.len() <= GEN_LENGTH,
            "target of {} tokens does not fit gen_length {GEN_LENGTH}",
            ids.len()
        );
        ids.resize(GEN_LENGTH, self.eos);
        Ok(ids)
    }
}

/// Scores of one greedy evaluation.
#[derive(Debug, Clone, Copy)]
pub struct Scores {
    /// Correct empty cells over empty cells.
    pub accuracy: f64,
    /// Items whose answer is 16 digits inside `<answer>…</answer>`.
    pub well_formed: f64,
    /// Items solved completely.
    pub solved: f64,
    /// Empty cells filled as [`row_only_fill`] fills them, over empty cells.
    pub flawed_agreement: f64,
}

/// Greedy evaluation with the RL sampler.
pub fn evaluate<B: Backend>(
    model: &Llada<B>,
    tokenizer: &LladaTokenizer,
    items: &[TaskItem],
) -> anyhow::Result<Scores> {
    let config = eval_sampler();
    let eos = tokenizer.eos_id();
    let (mut correct, mut total, mut well, mut solved) = (0u64, 0u64, 0usize, 0usize);
    let mut flawed = 0u64;
    for chunk in items.chunks(EVAL_CHUNK) {
        let prompts = chunk
            .iter()
            .map(|it| prompt_ids(tokenizer, it, PromptStyle::Compact, true, MAX_PROMPT_TOKENS))
            .collect::<Result<Vec<_>, _>>()?;
        let generation = generate(model, &prompts, &config)?;
        for (item, ids) in chunk.iter().zip(&generation.completions) {
            let text = completion_text(tokenizer, ids, eos)?;
            let score = rewards::eval_correct(Task::Sudoku, &text, item)?;
            correct += u64::from(score.correct);
            total += u64::from(score.total);
            solved += usize::from(score.total > 0 && score.correct == score.total);
            let digits = rewards::sudoku::extract_answer(&text);
            let is_well = text.starts_with(ANSWER_TOKENS[0])
                && text.ends_with(ANSWER_TOKENS[1])
                && digits.as_ref().is_some_and(|d| d.len() == 16);
            well += usize::from(is_well);
            if let (true, Some(d)) = (is_well, digits) {
                let puzzle = puzzle_of(item);
                let fill = row_only_fill(puzzle);
                flawed += puzzle
                    .bytes()
                    .zip(fill.bytes().zip(d.bytes()))
                    .filter(|&(p, (f, g))| p == b'0' && f == g)
                    .count() as u64;
            }
        }
    }
    let n = items.len().max(1) as f64;
    Ok(Scores {
        accuracy: correct as f64 / total.max(1) as f64,
        well_formed: well as f64 / n,
        solved: solved as f64 / n,
        flawed_agreement: flawed as f64 / total.max(1) as f64,
    })
}

/// The masked-diffusion SFT loss of one batch (spec §1), `[1]`.
fn sft_loss<B: Backend>(
    model: &Llada<B>,
    prompts: &[Vec<u32>],
    targets: &[Vec<u32>],
    mask_id: u32,
    rng: &mut ChaCha8Rng,
    device: &B::Device,
) -> Tensor<B, 1> {
    let batch = prompts.len();
    let prompt_len = prompts[0].len();
    let seq = prompt_len + GEN_LENGTH;
    let mut noisy = Vec::with_capacity(batch * seq);
    let mut target = Vec::with_capacity(batch * GEN_LENGTH);
    let mut weight = Vec::with_capacity(batch * GEN_LENGTH);
    for (p, c) in prompts.iter().zip(targets) {
        let t = T_EPS + (1.0 - T_EPS) * rng.random::<f64>();
        noisy.extend(p.iter().map(|&x| i64::from(x)));
        for &tok in c {
            let masked = rng.random::<f64>() < t;
            noisy.push(i64::from(if masked { mask_id } else { tok }));
            target.push(i64::from(tok));
            weight.push(if masked { (1.0 / t) as f32 } else { 0.0 });
        }
    }
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(noisy, [batch, seq]), device);
    let target =
        Tensor::<B, 3, Int>::from_data(TensorData::new(target, [batch, GEN_LENGTH, 1]), device);
    let weight = Tensor::<B, 2>::from_data(TensorData::new(weight, [batch, GEN_LENGTH]), device);
    let logits = model.forward_with(
        ids,
        &ForwardOptions::default(),
        &LogitPositions::Range(prompt_len..seq),
    );
    let logp = log_softmax(logits, 2)
        .gather(2, target)
        .reshape([batch, GEN_LENGTH]);
    (logp * weight)
        .sum()
        .neg()
        .div_scalar((batch * GEN_LENGTH) as f64)
}

fn pretrain<B: AutodiffBackend>(args: &Args, out: &Path, device: &B::Device) -> anyhow::Result<()> {
    let test = rewards::data::sudoku_4x4_test();
    ensure!(
        !test.is_empty(),
        "the built-in 4x4 Sudoku test set is empty"
    );
    let excluded: HashSet<String> = test.iter().map(|it| puzzle_of(it).to_string()).collect();
    let eval_items: Vec<TaskItem> = test.iter().take(args.eval_items).cloned().collect();

    let tokenizer = build_tokenizer(args.seed, &excluded, &out.join("tokenizer.json"))?;
    let id = |t: &str| {
        tokenizer
            .token_id(t)
            .with_context(|| format!("{t} is not in the tokenizer"))
    };
    let (mask_id, eos_id, bos_id) = (id(MASK_TOKEN)?, tokenizer.eos_id(), id(&tokenizer.bos)?);
    let vocab = tokenizer.vocab_size();
    let prompt_len = prompt_ids(
        &tokenizer,
        &eval_items[0],
        PromptStyle::Compact,
        true,
        MAX_PROMPT_TOKENS,
    )?
    .len();
    let encoder = Encoder {
        tokenizer: &tokenizer,
        prompt_len,
        eos: eos_id,
    };
    tracing::info!(vocab, mask_id, eos_id, prompt_len, "tokenizer trained");

    let mut config = LladaConfig::tiny(
        args.d_model,
        args.n_layers,
        args.n_heads,
        args.mlp_hidden,
        vocab,
        mask_id,
        eos_id,
    );
    config.bos_token_id = Some(bos_id);
    config.max_sequence_length = 512;
    config
        .validate(&out.join("config.json"))
        .context("tiny config")?;
    B::seed(device, args.seed);
    let mut model = Llada::<B>::init(&config, device);
    let parameters = config.num_params();
    tracing::info!(parameters, "model initialised");

    let adamw = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(0.01);
    let mut optim = adamw.init::<B, Llada<B>>();
    let mut mask_rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0x6D61_736B);

    let bar = ProgressBar::new(args.max_steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} steps {msg} (eta {eta})",
        )
        .context("progress template")?
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut evals: Vec<EvalPoint> = Vec::new();
    let (mut window_loss, mut window_n) = (0.0f64, 0usize);
    let mut ema: Option<f64> = None;
    let mut last_loss = f64::NAN;
    let mut stop_reason = format!("reached --max-steps {}", args.max_steps);
    let mut steps = 0;
    while steps < args.max_steps {
        let mut rng = step_rng(args.seed, steps);
        let mut prompts = Vec::with_capacity(args.batch_size);
        let mut targets = Vec::with_capacity(args.batch_size);
        for _ in 0..args.batch_size {
            let item = train_item(&mut rng, &excluded)?;
            prompts.push(encoder.prompt(&item)?);
            // Drawn only when asked, so that share 0 keeps the data stream of earlier builds.
            let flawed = args.flawed_share > 0.0 && rng.random::<f64>() < args.flawed_share;
            targets.push(encoder.completion(&item, flawed)?);
        }
        let loss = sft_loss(&model, &prompts, &targets, mask_id, &mut mask_rng, device);
        let value: f64 = loss.clone().into_scalar().elem();
        ensure!(value.is_finite(), "non-finite loss {value} at step {steps}");
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = args.lr * ((steps + 1) as f64 / args.warmup.max(1) as f64).min(1.0);
        model = optim.step(lr, model, grads);
        steps += 1;
        last_loss = value;
        window_loss += value;
        window_n += 1;
        let smooth = ema.map_or(value, |e| 0.95 * e + 0.05 * value);
        ema = Some(smooth);
        bar.set_position(steps as u64);
        bar.set_message(format!("loss {smooth:.4}"));

        if steps % args.eval_every == 0 || steps == args.max_steps {
            let Scores {
                accuracy,
                well_formed,
                solved,
                flawed_agreement,
            } = evaluate(&model.valid(), &tokenizer, &eval_items)?;
            let point = EvalPoint {
                step: steps,
                accuracy,
                flawed_agreement,
                well_formed,
                solved,
                train_loss: window_loss / window_n.max(1) as f64,
            };
            (window_loss, window_n) = (0.0, 0);
            let line = format!(
                "step {:>5}  loss {:.4}  cell accuracy {:.1}%  row-only agreement {:.1}%  well-formed {:.1}%  solved {:.1}%  ({:.0} s)",
                point.step,
                point.train_loss,
                100.0 * accuracy,
                100.0 * flawed_agreement,
                100.0 * well_formed,
                100.0 * solved,
                started.elapsed().as_secs_f64()
            );
            // A hidden bar (output not a terminal) prints nothing, so say it directly.
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
            evals.push(point);
            if accuracy >= args.target_accuracy && well_formed >= args.min_well_formed {
                stop_reason = format!(
                    "greedy cell accuracy {:.1}% reached --target-accuracy {:.1}%",
                    100.0 * accuracy,
                    100.0 * args.target_accuracy
                );
                break;
            }
        }
    }
    bar.finish_and_clear();
    let train_seconds = started.elapsed().as_secs_f64();

    let model = model.valid();
    save_model(&model, out)?;
    // Re-load what was written and measure it: the recorded figure is the committed model's.
    let reloaded = load_model::<B::InnerBackend>(out, LoadOptions::default(), device)?;
    let base = evaluate(&reloaded, &tokenizer, &eval_items)?;
    let (base_accuracy, base_well_formed, base_solved) =
        (base.accuracy, base.well_formed, base.solved);
    if let Some(last) = evals.last() {
        ensure!(
            last.step != steps || (last.accuracy - base_accuracy).abs() < 1e-9,
            "the saved model scores {base_accuracy}, the trained one {}",
            last.accuracy
        );
    }
    let model_bytes = std::fs::metadata(out.join("model.safetensors"))?.len();
    let command = command_line(args, out);
    let record = Record {
        command: command.clone(),
        task: args.task.clone(),
        seed: args.seed,
        backend: args.backend.to_string(),
        steps,
        stop_reason,
        final_loss: last_loss,
        flawed_share: args.flawed_share,
        provenance: None,
        base_accuracy,
        base_flawed_agreement: base.flawed_agreement,
        base_well_formed,
        base_solved,
        eval_items: eval_items.len(),
        sampler: eval_sampler(),
        batch_size: args.batch_size,
        lr: args.lr,
        warmup: args.warmup,
        adamw: serde_json::json!({"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-8, "weight_decay": 0.01}),
        train_blanks: TRAIN_BLANKS,
        gen_length: GEN_LENGTH,
        prompt_tokens: prompt_len,
        vocab_size: vocab,
        parameters,
        model_bytes,
        train_seconds,
        evals,
    };
    let json = serde_json::to_string_pretty(&record)?;
    std::fs::write(out.join("pretrain.json"), json + "\n")?;
    std::fs::write(out.join("README.md"), readme(&record, &config))?;
    println!(
        "wrote {}: {steps} steps in {train_seconds:.0} s, final loss {last_loss:.4}, \
         base cell accuracy {:.1}% (well-formed {:.1}%, solved {:.1}%) on {} test puzzles",
        out.display(),
        100.0 * base_accuracy,
        100.0 * base_well_formed,
        100.0 * base_solved,
        eval_items.len()
    );
    Ok(())
}

/// The command that reproduces this run, with every flag that differs from the defaults.
fn command_line(args: &Args, out: &Path) -> String {
    let mut s = format!(
        "cargo xtask pretrain --task {} --seed {}",
        args.task, args.seed
    );
    s.push_str(&format!(" --out {}", out.display()));
    s.push_str(&format!(
        " --max-steps {} --target-accuracy {}",
        args.max_steps, args.target_accuracy
    ));
    let d = <Defaults as clap::Parser>::parse_from(["pretrain"]).args;
    let mut flag = |name: &str, a: String, b: String| {
        if a != b {
            s.push_str(&format!(" --{name} {a}"));
        }
    };
    flag(
        "min-well-formed",
        args.min_well_formed.to_string(),
        d.min_well_formed.to_string(),
    );
    flag(
        "batch-size",
        args.batch_size.to_string(),
        d.batch_size.to_string(),
    );
    flag("lr", args.lr.to_string(), d.lr.to_string());
    flag("warmup", args.warmup.to_string(), d.warmup.to_string());
    flag(
        "eval-every",
        args.eval_every.to_string(),
        d.eval_every.to_string(),
    );
    flag(
        "eval-items",
        args.eval_items.to_string(),
        d.eval_items.to_string(),
    );
    flag("d-model", args.d_model.to_string(), d.d_model.to_string());
    flag(
        "n-layers",
        args.n_layers.to_string(),
        d.n_layers.to_string(),
    );
    flag("n-heads", args.n_heads.to_string(), d.n_heads.to_string());
    flag(
        "mlp-hidden",
        args.mlp_hidden.to_string(),
        d.mlp_hidden.to_string(),
    );
    flag("backend", args.backend.to_string(), d.backend.to_string());
    flag(
        "flawed-share",
        args.flawed_share.to_string(),
        d.flawed_share.to_string(),
    );
    s
}

/// `Args` on its own, to read the defaults back (for the reproduction command).
#[derive(clap::Parser)]
struct Defaults {
    #[command(flatten)]
    args: Args,
}

fn readme(r: &Record, c: &LladaConfig) -> String {
    let curve: String = r
        .evals
        .iter()
        .map(|e| {
            format!(
                "| {} | {:.4} | {:.1}% | {:.1}% | {:.1}% | {:.1}% |\n",
                e.step,
                e.train_loss,
                100.0 * e.accuracy,
                100.0 * e.flawed_agreement,
                100.0 * e.well_formed,
                100.0 * e.solved
            )
        })
        .collect();
    format!(
        "# tiny-{task}: the embedded tiny LLaDA-layout model\n\
\n\
A {params}-parameter masked-diffusion model in the LLaDA layout (d_model {d}, {l} layers, \
{h} heads, MLP {m}, vocabulary {v}), trained from scratch on generated 4x4 Sudoku so that \
`cargo xtask train` can show DMPO learning on a CPU with no downloads. It is deliberately \
stopped at an imperfect base, so that RL has headroom.\n\
\n\
## Rebuild\n\
\n\
```sh\n\
{command}\n\
```\n\
\n\
Seed {seed}, backend {backend}. The tokenizer corpus, the initialisation (`B::seed`), the \
training puzzles and the masks all derive from the seed (ChaCha8). The weights also depend on \
the backend's rounding: a change to the model's arithmetic or to the backend's kernels (SIMD, \
threading) gives a different model of similar quality, so the committed files are the \
reference and the RL figures in `docs/training.md` were measured on them.{provenance}\n\
\n\
## Facts\n\
\n\
- Steps: {steps} (batch {batch}, AdamW lr {lr} with {warmup} warm-up steps, betas 0.9/0.999, \
eps 1e-8, weight decay 0.01); stopped because {stop}.\n\
- Final training loss (last step): {loss:.4}.\n\
- **Base accuracy: {acc:.1}%** greedy cell accuracy (correct empty cells / empty cells) on the \
first {n} puzzles of the shipped 4x4 test set (8 blanks each); {well:.1}% of completions are \
well-formed (`<answer>` + 16 digits + `</answer>`), {solved:.1}% of puzzles fully solved. \
Measured on the saved files, sampler gen_length {gl}, block_length {bl}, steps {st}, \
temperature 0 (low-confidence remasking): d1's evaluation protocol, 2 tokens per step (the RL \
recipes evaluate at one token per step, DMPO's protocol: see `docs/training.md`).\n\
- Training wall time: {secs:.0} s on the machine that built it.\n\
- `model.safetensors`: {bytes} bytes (f32).\n\
\n\
## Format\n\
\n\
- Prompt: LLaDA's chat template around the bare 16-digit puzzle (0 = empty), i.e. \
`dmpo_train::tasks::prompt_ids(.., PromptStyle::Compact, ..)`: {pl} tokens.\n\
- Completion: `<answer>` + the 16-digit solution + `</answer>`, then `<|endoftext|>` up to \
{gl} tokens.\n\
- Tokenizer (`tokenizers` crate, WordLevel trained with `WordLevelTrainer`): one token per \
character (`Split` on `(?s).`, isolated; `Fuse` decoder). Special tokens `<|startoftext|>`, \
`<|endoftext|>` (EOS and pad), `<|start_header_id|>`, `<|end_header_id|>`, `<|eot_id|>`, \
`<|mdm_mask|>` (mask), `<unk>`; normal added tokens `<answer>`, `</answer>`.\n\
- Training data: `rewards::generate::sudoku_items` with 6 to 10 blanks, every puzzle of the \
test set excluded. {mixture}Objective: LLaDA's SFT masked-diffusion loss (t ~ U(1e-3, 1), each \
completion token masked with probability t, sum of CE / t over masked tokens divided by \
batch x gen_length; the prompt is never masked).\n\
\n\
## Learning curve\n\
\n\
| step | mean train loss | cell accuracy | row-only agreement | well-formed | solved |\n\
|---:|---:|---:|---:|---:|---:|\n\
{curve}",
        task = r.task,
        params = c.num_params(),
        d = c.d_model,
        l = c.n_layers,
        h = c.n_heads,
        m = c.mlp_hidden(),
        v = c.vocab_size,
        command = r.command,
        seed = r.seed,
        backend = r.backend,
        steps = r.steps,
        batch = r.batch_size,
        lr = r.lr,
        warmup = r.warmup,
        stop = r.stop_reason,
        loss = r.final_loss,
        acc = 100.0 * r.base_accuracy,
        n = r.eval_items,
        well = 100.0 * r.base_well_formed,
        solved = 100.0 * r.base_solved,
        gl = r.gen_length,
        bl = r.sampler.block_length,
        st = r.sampler.steps,
        secs = r.train_seconds,
        bytes = r.model_bytes,
        pl = r.prompt_tokens,
        curve = curve,
        mixture = mixture(r),
        provenance = r
            .provenance
            .as_deref()
            .map(|p| format!(" {p}"))
            .unwrap_or_default(),
    )
}

/// Rewrites `dir/README.md` from `dir/pretrain.json` and `dir/config.json`.
fn rewrite_readme(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("pretrain.json");
    let record: Record = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    let config = LladaConfig::from_file(dir.join("config.json"))?;
    std::fs::write(dir.join("README.md"), readme(&record, &config))?;
    println!("wrote {}", dir.join("README.md").display());
    Ok(())
}

/// The README paragraph on the flawed demonstrations, empty when there were none.
fn mixture(r: &Record) -> String {
    if r.flawed_share <= 0.0 {
        return String::new();
    }
    format!(
        "**{flawed:.0}% of the training completions are written by a flawed solver** \
(`row_only_fill`: each row's blanks get the row's missing digits in ascending order, ignoring \
columns and boxes; 47.2% of the test set's blank cells right), the other {good:.0}% are the true \
solutions. The base therefore knows how to solve but prefers the flawed answer: greedy \
decoding agrees with the row-only fill on {agree:.1}% of the blank cells. This is the setting \
RL fine-tuning is for (an SFT model that imitated mixed-quality demonstrations): the reward \
can raise the share of the correct behaviour that sampling already finds. ",
        flawed = 100.0 * r.flawed_share,
        good = 100.0 * (1.0 - r.flawed_share),
        agree = 100.0 * r.base_flawed_agreement,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_only_fill_fills_each_row_in_ascending_order() {
        // Row 0 misses 2 and 4 (filled in that order), row 1 is full, row 2 misses 1, row 3 all.
        let puzzle = "3010214320340000";
        assert_eq!(row_only_fill(puzzle), "3214214321341234");
        // It is wrong where a column or box constraint decides: the true solution differs.
        assert_ne!(row_only_fill("3102200002100320"), "3142243142131324");
    }

    #[test]
    fn flawed_targets_differ_from_true_ones_only_in_blank_cells() {
        let item = rewards::data::sudoku_4x4_test().swap_remove(0);
        let (good, bad) = (
            target_text(&item, false).unwrap(),
            target_text(&item, true).unwrap(),
        );
        assert_eq!(good.len(), bad.len());
        let puzzle = puzzle_of(&item);
        let strip = |s: &str| s[ANSWER_TOKENS[0].len()..ANSWER_TOKENS[0].len() + 16].to_string();
        for ((p, g), b) in puzzle
            .bytes()
            .zip(strip(&good).bytes())
            .zip(strip(&bad).bytes())
        {
            if p != b'0' {
                assert_eq!((g, b), (p, p));
            }
        }
    }
}
