//! The pretraining run: tokenizer and model set-up, the SFT training loop
//! ([`dmpo_core::sft_loss`]) with periodic greedy evaluation and an early stop, then the saved
//! model, re-measured from its files, and its record and model card.

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context};
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use dllm_model::{load_model, save_model, ChatTokenizer, DiffusionLm, LoadOptions, ModelConfig};
use dmpo_core::SequenceBatch;
use dmpo_train::recipe::PromptStyle;
use dmpo_train::tasks::prompt_ids;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rewards::TaskItem;

use super::data::{step_rng, Encoder};
use super::evaluate::{evaluate, Scores};
use super::model_card::{readme, EvalPoint, Record};
use super::optimiser::Optimiser;
use super::task::{
    PretrainTask, COUNTDOWN_NUMBERS, COUNTDOWN_OPERATORS, COUNTDOWN_TARGETS, SUDOKU_BLANKS,
};
use super::tokenizer::{build_tokenizer, MASK_TOKEN};
use super::{command_line, eval_sampler, Args, MAX_PROMPT_TOKENS};

/// Smallest masking ratio of the diffusion objective.
const T_EPS: f64 = 1e-3;

/// The fixed inputs of the training loop: the encoder, the keys of the held-out items (never
/// trained on) and the evaluated ones.
struct Inputs<'a> {
    encoder: Encoder<'a>,
    excluded: HashSet<String>,
    eval_items: Vec<TaskItem>,
}

/// What the training loop leaves: the trained model and the facts of the run.
struct Trained<B: AutodiffBackend> {
    model: DiffusionLm<B>,
    steps: usize,
    stop_reason: String,
    last_loss: f64,
    train_seconds: f64,
    evals: Vec<EvalPoint>,
}

/// Trains the tokenizer and the model under `out`, then writes the model, `pretrain.json` and
/// `README.md` there.
pub fn pretrain<B: AutodiffBackend>(
    args: &Args,
    out: &Path,
    device: &B::Device,
) -> anyhow::Result<()> {
    let task = args.task;
    let heldout = task.heldout_items(out)?;
    ensure!(
        !heldout.is_empty(),
        "the held-out {} set is empty",
        task.name()
    );
    let excluded: HashSet<String> = heldout.iter().map(|it| task.key(it)).collect();
    let eval_items: Vec<TaskItem> = heldout.iter().take(args.eval_items).cloned().collect();

    let tokenizer = build_tokenizer(task, args.seed, &excluded, &out.join("tokenizer.json"))?;
    let id = |t: &str| {
        tokenizer
            .token_id(t)
            .with_context(|| format!("{t} is not in the tokenizer"))
    };
    let (mask_id, eos_id, bos_id) = (id(MASK_TOKEN)?, tokenizer.eos_id(), id(&tokenizer.bos)?);
    let vocab = tokenizer.vocab_size();
    let mut prompt_len = 0;
    for item in &heldout {
        let ids = prompt_ids(
            &tokenizer,
            item,
            PromptStyle::Compact,
            true,
            MAX_PROMPT_TOKENS,
        )?;
        prompt_len = prompt_len.max(ids.len());
    }
    let encoder = Encoder {
        task,
        tokenizer: &tokenizer,
        prompt_len,
        eos: eos_id,
    };
    tracing::info!(vocab, mask_id, eos_id, prompt_len, "tokenizer trained");

    let mut config = ModelConfig::tiny(
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
    let model = DiffusionLm::<B>::init(&config, device);
    let parameters = config.num_params();
    tracing::info!(parameters, "model initialised");

    let optimiser = Optimiser::new(args.lr, args.warmup);
    let inputs = Inputs {
        encoder,
        excluded,
        eval_items,
    };
    let trained = train(args, &optimiser, model, &inputs, device)?;
    let Trained {
        model,
        steps,
        stop_reason,
        last_loss,
        train_seconds,
        evals,
    } = trained;
    let eval_items = inputs.eval_items;

    let model = model.valid();
    save_model(&model, out)?;
    // Re-load what was written and measure it: the recorded figure is the committed model's.
    let reloaded = load_model::<B::InnerBackend>(out, LoadOptions::default(), device)?;
    let base = evaluate(task, &reloaded, &tokenizer, &eval_items)?;
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
    let (mut flawed_right, mut flawed_total) = (0u64, 0u64);
    for item in &eval_items {
        let score = task.score(item, &task.target_completion(item, true)?)?;
        flawed_right += score.correct;
        flawed_total += score.total;
    }
    let command = command_line(args, out);
    let record = Record {
        command: command.clone(),
        task: task.name().to_string(),
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
        sampler: eval_sampler(task),
        batch_size: args.batch_size,
        optimiser,
        train_blanks: (task == PretrainTask::Sudoku).then_some(SUDOKU_BLANKS),
        train_numbers: (task == PretrainTask::Countdown).then_some(COUNTDOWN_NUMBERS),
        train_targets: (task == PretrainTask::Countdown).then_some(COUNTDOWN_TARGETS),
        train_operators: (task == PretrainTask::Countdown).then(|| COUNTDOWN_OPERATORS.into()),
        gen_length: task.gen_length(),
        prompt_tokens: prompt_len,
        vocab_size: vocab,
        parameters,
        model_bytes,
        train_seconds,
        heldout_flawed_accuracy: Some(flawed_right as f64 / flawed_total.max(1) as f64),
        evals,
    };
    let json = serde_json::to_string_pretty(&record)?;
    std::fs::write(out.join("pretrain.json"), json + "\n")?;
    std::fs::write(out.join("README.md"), readme(&record, &config))?;
    println!(
        "wrote {}: {steps} steps in {train_seconds:.0} s, final loss {last_loss:.4}, \
         base accuracy {:.1}% (well-formed {:.1}%, solved {:.1}%, flawed-solver agreement {:.1}%) \
         on {} held-out items",
        out.display(),
        100.0 * base_accuracy,
        100.0 * base_well_formed,
        100.0 * base_solved,
        100.0 * base.flawed_agreement,
        eval_items.len()
    );
    Ok(())
}

/// The batch of step `step`: `batch_size` training items from the step's own stream, each
/// completion the flawed solver's with probability `flawed_share`, as prompt + completion ids.
fn step_batch<B: AutodiffBackend>(
    args: &Args,
    step: usize,
    inputs: &Inputs<'_>,
    device: &B::Device,
) -> anyhow::Result<SequenceBatch<B>> {
    let encoder = &inputs.encoder;
    let gen_length = encoder.task.gen_length();
    let mut rng = step_rng(args.seed, step);
    let mut ids = Vec::with_capacity(args.batch_size * (encoder.prompt_len + gen_length));
    for _ in 0..args.batch_size {
        let item = encoder.task.train_item(&mut rng, &inputs.excluded)?;
        ids.extend(encoder.prompt(&item)?.into_iter().map(i64::from));
        // Drawn only when asked, so that share 0 keeps the data stream of earlier builds.
        let flawed = args.flawed_share > 0.0 && rng.random::<f64>() < args.flawed_share;
        ids.extend(
            encoder
                .completion(&item, flawed)?
                .into_iter()
                .map(i64::from),
        );
    }
    let shape = [args.batch_size, encoder.prompt_len + gen_length];
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, shape), device);
    Ok(SequenceBatch::new(ids, encoder.prompt_len, encoder.eos)?)
}

/// The training loop: SFT steps until `--max-steps` or the first evaluation that reaches
/// `--target-accuracy` with `--min-well-formed` answers.
fn train<B: AutodiffBackend>(
    args: &Args,
    optimiser: &Optimiser,
    mut model: DiffusionLm<B>,
    inputs: &Inputs<'_>,
    device: &B::Device,
) -> anyhow::Result<Trained<B>> {
    let tokenizer: &ChatTokenizer = inputs.encoder.tokenizer;
    let mut optim = optimiser.adamw.config().init::<B, DiffusionLm<B>>();
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
        let batch = step_batch::<B>(args, steps, inputs, device)?;
        let loss = dmpo_core::sft_loss(
            &dmpo_core::ModelView::policy(&model),
            &batch,
            T_EPS,
            &mut mask_rng,
        )?
        .loss;
        let value: f64 = loss.clone().into_scalar().elem();
        ensure!(value.is_finite(), "non-finite loss {value} at step {steps}");
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(optimiser.lr_at(steps), model, grads);
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
            } = evaluate(args.task, &model.valid(), tokenizer, &inputs.eval_items)?;
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
                "step {:>5}  loss {:.4}  accuracy {:.1}%  flawed-solver agreement {:.1}%  well-formed {:.1}%  solved {:.1}%  ({:.0} s)",
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
                    "greedy accuracy {:.1}% reached --target-accuracy {:.1}%",
                    100.0 * accuracy,
                    100.0 * args.target_accuracy
                );
                break;
            }
        }
    }
    bar.finish_and_clear();
    Ok(Trained {
        model,
        steps,
        stop_reason,
        last_loss,
        train_seconds: started.elapsed().as_secs_f64(),
        evals,
    })
}
