//! The DMPO training loop (spec §5), readable top to bottom:
//!
//! for each rollout step: sample prompts → `G` rollouts each → rewards → ELBO log-likelihoods
//! under the rollout policy and the reference on shared masks → importance weights → reuse the
//! batch for `num_iterations` optimiser updates with fresh masks. diffu-GRPO and wd1 replace the
//! last three stages with their own (spec §6).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams};
use burn::tensor::{
    backend::AutodiffBackend, backend::Backend, Bool, ElementConversion, Int, Tensor, TensorData,
};
use dllm_model::{load_model, Llada, LladaTokenizer, LoadOptions};
use dllm_sample::generate;
use dmpo_core::{
    diffu_grpo_loss, elbo_log_likelihood, grpo_advantages, mean_field_logprobs, rollout_weights,
    sample_prompt_mask, wd1_loss, DmpoLoss, MaskOptions, ModelView, RolloutWeights, SequenceBatch,
};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rewards::Task;
use serde::Serialize;

use crate::checkpoint::{self, TrainState};
use crate::error::{Result, TrainError};
use crate::eval::{evaluate, EvalResult};
use crate::optim::{apply_update, learning_rate, UpdateOutcome};
use crate::recipe::{Algorithm, Finetune, Recipe};
use crate::reference::Reference;
use crate::tasks::{completion_text, eval_items, prompt_ids, TrainData};

/// Options of a run that are not hyperparameters.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the latest checkpoint of the run directory.
    pub resume: bool,
    /// No progress bar.
    pub quiet: bool,
    /// Skip the evaluations before and after training.
    pub skip_eval: bool,
    /// Stop once this many steps are done (counted from step 0), with a checkpoint there, as if
    /// the run were interrupted: the learning-rate schedule still spans `train.steps`, so a
    /// later `resume` continues exactly where an uninterrupted run would be.
    pub stop_after: Option<usize>,
}

/// What a finished run reports (also written to `summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Run directory.
    pub run_dir: PathBuf,
    /// Evaluation before training (absent when resumed past it or skipped).
    pub before: Vec<EvalResult>,
    /// Evaluation after training.
    pub after: Vec<EvalResult>,
    /// Rollout steps completed.
    pub steps: usize,
    /// Optimiser updates applied.
    pub updates: usize,
    /// Updates skipped for non-finite loss or gradient.
    pub skipped: usize,
    /// Mean reward over the last quarter of the steps.
    pub final_reward: f64,
    /// Wall-clock seconds of this invocation.
    pub seconds: f64,
}

/// Mixes the run seed with a step and a purpose into an independent stream seed.
pub fn stream_seed(seed: u64, step: usize, purpose: u64) -> u64 {
    let mut z = seed
        ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ purpose.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Trains with `recipe` on autodiff backend `AB`.
pub fn train<AB: AutodiffBackend>(
    recipe: &Recipe,
    device: AB::Device,
    options: &RunOptions,
) -> Result<Summary> {
    let started = Instant::now();
    let run_dir = recipe.run_dir();
    std::fs::create_dir_all(&run_dir).map_err(|e| TrainError::io(&run_dir, e))?;
    let task: Task = recipe
        .task
        .name
        .parse()
        .map_err(|e: rewards::Error| TrainError::Data(e.to_string()))?;

    // Everything that can be wrong with the inputs fails here, before any training.
    let tokenizer = LladaTokenizer::from_file(recipe.model.path.join("tokenizer.json"))?;
    let data = TrainData::open(&recipe.task, task)?;
    let eval_set = eval_items(&recipe.task, task, recipe.eval.limit)?;
    let load = LoadOptions {
        dtype: recipe.model.dtype,
    };
    let base = load_model::<AB>(&recipe.model.path, load, &device)?;
    let (mut model, mut reference) = match recipe.model.finetune {
        Finetune::Lora => {
            let m = match &recipe.model.adapter {
                Some(a) => base.load_adapter(a, &device)?,
                None => base.with_lora(&recipe.lora.config(), &device)?,
            };
            (m, Reference::AdapterOff)
        }
        Finetune::Full => {
            let frozen = load_model::<AB::InnerBackend>(&recipe.model.path, load, &device)?;
            (base, Reference::Frozen(Box::new(frozen)))
        }
    };
    let t = &recipe.train;
    let mut optimizer = AdamWConfig::new()
        .with_beta_1(t.beta1 as f32)
        .with_beta_2(t.beta2 as f32)
        .with_epsilon(t.eps as f32)
        .with_weight_decay(t.weight_decay as f32)
        .init::<AB, Llada<AB>>();

    let resolved = toml::to_string_pretty(recipe).expect("serialisable recipe");
    std::fs::write(run_dir.join("recipe.toml"), resolved)
        .map_err(|e| TrainError::io(&run_dir, e))?;
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut state = TrainState {
        step: 0,
        updates: 0,
        skipped: 0,
    };
    if options.resume {
        if let Some(ckpt) = checkpoint::latest(&run_dir)? {
            let (m, o, s) = checkpoint::load(&ckpt, model, optimizer, &device)?;
            (model, optimizer, state) = (m, o, s);
            if let Reference::Frozen(frozen) = &mut reference {
                if let Some(r) = checkpoint::load_reference(&ckpt, frozen, &device)? {
                    **frozen = r;
                }
            }
            tracing::info!("resumed from {} at step {}", ckpt.display(), state.step);
        }
        truncate_metrics(&metrics_path, state.step)?;
    } else {
        let _ = std::fs::remove_file(&metrics_path);
        let _ = std::fs::remove_dir_all(run_dir.join("checkpoints"));
    }

    let run_eval = |model: &Llada<AB>, label: &str| -> Result<Vec<EvalResult>> {
        let policy = model.valid();
        recipe
            .eval
            .gen_lengths
            .iter()
            .map(|&len| {
                let out = run_dir.join(format!("eval_{label}_len{len}.json"));
                evaluate(
                    &policy,
                    &tokenizer,
                    task,
                    &eval_set,
                    recipe.task.prompt_style,
                    recipe.task.max_prompt_tokens,
                    &recipe.eval,
                    len,
                    Some(&out),
                )
            })
            .collect()
    };
    let before = if options.skip_eval || state.step > 0 {
        Vec::new()
    } else {
        run_eval(&model, "before")?
    };
    for r in &before {
        tracing::info!(
            "before training: len {} accuracy {:.2}%",
            r.gen_length,
            r.accuracy_pct
        );
    }

    let total_updates = t.steps * t.num_iterations;
    let bar = if options.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(t.steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    bar.set_position(state.step as u64);
    let mut rewards_seen = Vec::new();
    let last_step = options.stop_after.map_or(t.steps, |n| n.min(t.steps));
    while state.step < last_step {
        let step = state.step;
        let (m, line) = rollout_step(
            recipe,
            task,
            &tokenizer,
            &data,
            model,
            &reference,
            &mut optimizer,
            &mut state,
            total_updates,
            &device,
        )?;
        model = m;
        rewards_seen.push(line.reward_mean);
        append_metrics(&metrics_path, &line)?;
        bar.set_message(format!(
            "reward {:.3} ess {:.2}",
            line.reward_mean, line.ess_mean
        ));
        bar.inc(1);
        state.step = step + 1;
        if t.eval_every > 0
            && state.step % t.eval_every == 0
            && state.step < t.steps
            && !options.skip_eval
        {
            let r = run_eval(&model, &format!("step{}", state.step))?;
            append_metrics(
                &run_dir.join("eval.jsonl"),
                &serde_json::json!({"step": state.step, "eval": r}),
            )?;
        }
        if t.sync_ref_model && state.step % t.ref_model_sync_steps == 0 {
            reference.sync(&model.valid(), t.ref_model_mixup_alpha)?;
        }
        if state.step % t.checkpoint_every.max(1) == 0 || state.step == last_step {
            let moving_reference = match &reference {
                Reference::Frozen(r) if t.sync_ref_model => Some(r.as_ref()),
                _ => None,
            };
            checkpoint::save(
                &run_dir,
                &model,
                moving_reference,
                &optimizer,
                state,
                recipe.model.finetune,
                &recipe.model.path.display().to_string(),
                2,
            )?;
        }
    }
    bar.finish_and_clear();

    let after = if options.skip_eval {
        Vec::new()
    } else {
        run_eval(&model, "after")?
    };
    let quarter = rewards_seen.len().div_ceil(4).max(1);
    let tail = &rewards_seen[rewards_seen.len().saturating_sub(quarter)..];
    let summary = Summary {
        run_dir: run_dir.clone(),
        before,
        after,
        steps: state.step,
        updates: state.updates,
        skipped: state.skipped,
        final_reward: if tail.is_empty() {
            f64::NAN
        } else {
            tail.iter().sum::<f64>() / tail.len() as f64
        },
        seconds: started.elapsed().as_secs_f64(),
    };
    let text = serde_json::to_string_pretty(&summary).expect("serialisable");
    dllm_model::load::write_atomic(&run_dir.join("summary.json"), text.as_bytes())?;
    crate::plot::plot_run(&run_dir)?;
    Ok(summary)
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    /// Rollout step (0-based).
    pub step: usize,
    /// Mean reward over the rollouts.
    pub reward_mean: f64,
    /// Mean of each reward component.
    pub reward_components: std::collections::BTreeMap<String, f64>,
    /// Mean within-group reward standard deviation.
    pub reward_std: f64,
    /// Fraction of groups whose rewards are all equal.
    pub zero_variance_fraction: f64,
    /// Mean effective sample size of the DMPO weights (NaN for GRPO).
    pub ess_mean: f64,
    /// Mean of `log_rnd`.
    pub log_rnd_mean: f64,
    /// Standard deviation of `log_rnd`.
    pub log_rnd_std: f64,
    /// Pearson correlation between the per-rollout advantages (weights) and rewards.
    pub advantage_reward_corr: f64,
    /// Mean loss over the updates.
    pub loss: f64,
    /// Mean pre-clip global gradient norm over applied updates.
    pub grad_norm: f64,
    /// Learning rate of the last update.
    pub lr: f64,
    /// Updates skipped for non-finite values so far.
    pub skipped_total: usize,
    /// Generated tokens per second during rollout.
    pub rollout_tokens_per_s: f64,
    /// Seconds per phase.
    pub seconds: std::collections::BTreeMap<&'static str, f64>,
}

#[allow(clippy::too_many_arguments)]
fn rollout_step<AB: AutodiffBackend>(
    recipe: &Recipe,
    task: Task,
    tokenizer: &LladaTokenizer,
    data: &TrainData,
    mut model: Llada<AB>,
    reference: &Reference<AB::InnerBackend>,
    optimizer: &mut impl burn::optim::Optimizer<Llada<AB>, AB>,
    state: &mut TrainState,
    total_updates: usize,
    device: &AB::Device,
) -> Result<(Llada<AB>, StepMetrics)> {
    let t = &recipe.train;
    let step = state.step;
    let seed = recipe.run.seed;
    let mut seconds = std::collections::BTreeMap::new();
    AB::seed(device, stream_seed(seed, step, 1));
    let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(seed, step, 2));

    // 1. Prompts and rollouts: G completions per prompt, contiguous.
    let clock = Instant::now();
    let items = data.batch(seed, step, t.prompts_per_step)?;
    let mut prompts = Vec::with_capacity(items.len() * t.group_size);
    for item in &items {
        let ids = prompt_ids(
            tokenizer,
            item,
            recipe.task.prompt_style,
            false,
            recipe.task.max_prompt_tokens,
        )?;
        prompts.extend(std::iter::repeat_n(ids, t.group_size));
    }
    let policy = model.valid();
    let mut sampler = recipe.rollout.clone();
    sampler.seed = stream_seed(seed, step, 3);
    sampler.adapter = true;
    let generation = generate(&policy, &prompts, &sampler)?;
    let rollout_secs = clock.elapsed().as_secs_f64();
    seconds.insert("rollout", rollout_secs);

    // 2. Rewards, with their components.
    let clock = Instant::now();
    let eos = policy.config.eos_token_id;
    let mut rewards = Vec::with_capacity(prompts.len());
    let mut components: std::collections::BTreeMap<String, f64> = Default::default();
    for (row, ids) in generation.completions.iter().enumerate() {
        let text = completion_text(tokenizer, ids, eos)?;
        let r = rewards::training_reward(task, &text, &items[row / t.group_size])?;
        for (name, v) in &r.components {
            *components.entry(name.to_string()).or_default() += v / prompts.len() as f64;
        }
        rewards.push(r.total());
    }
    seconds.insert("reward", clock.elapsed().as_secs_f64());

    // Sequences as tensors for the no-grad (inner) and autodiff backends.
    let prompt_len = generation.prompt_len();
    let seqs = generation.sequences();
    let rows = seqs.len();
    let seq_len = prompt_len + sampler.gen_length;
    let flat: Vec<i64> = seqs.iter().flatten().map(|&t| t as i64).collect();
    let eos_index: Vec<usize> = generation
        .eos_position
        .iter()
        .map(|e| e.unwrap_or(sampler.gen_length))
        .collect();
    let padding: Option<Vec<bool>> = sampler.padding_mask.then(|| {
        generation
            .pad_lengths
            .iter()
            .flat_map(|&p| (0..seq_len).map(move |i| i < p))
            .collect()
    });
    let batch_on = |rows_sel: &[usize]| -> Result<SequenceBatch<AB>> {
        make_batch::<AB>(
            &flat,
            seq_len,
            prompt_len,
            &eos_index,
            padding.as_deref(),
            rows_sel,
            device,
        )
    };
    let all_rows: Vec<usize> = (0..rows).collect();
    let inner_batch = make_batch::<AB::InnerBackend>(
        &flat,
        seq_len,
        prompt_len,
        &eos_index,
        padding.as_deref(),
        &all_rows,
        device,
    )?;

    // Micro-batches hold whole groups.
    let groups_per_pass = (t.micro_batch / t.group_size).max(1);
    let passes: Vec<Vec<usize>> = (0..rows)
        .collect::<Vec<_>>()
        .chunks(groups_per_pass * t.group_size)
        .map(|c| c.to_vec())
        .collect();

    let mut losses = Vec::new();
    let mut norms = Vec::new();
    let mut lr = 0.0;
    let (mut ess_mean, mut lr_mean, mut lr_std) = (f64::NAN, f64::NAN, f64::NAN);
    let (zero_var, reward_std);
    let mut adv_corr = f64::NAN;

    let mut ctx = UpdateContext {
        optimizer,
        train: t,
        total_updates,
        state: &mut *state,
        norms: &mut norms,
        losses: &mut losses,
        lr: &mut lr,
    };
    match t.algorithm {
        Algorithm::Dmpo => {
            // 3. ELBO of each rollout under the rollout policy and the reference, same masks (§3).
            let clock = Instant::now();
            let (current, reference_model) = (ModelView::policy(&policy), reference.view(&policy));
            let elbo = elbo_log_likelihood(
                &[&current, &reference_model],
                &inner_batch,
                &MaskOptions::from(&recipe.dmpo),
                recipe.dmpo.elbo_memory_budget_bytes,
                &mut rng,
            )?;
            seconds.insert("elbo", clock.elapsed().as_secs_f64());
            // 4. Importance weights per group (§4).
            let (weights, diag) = rollout_weights(
                &elbo.ell[0],
                &elbo.ell[1],
                &rewards,
                t.group_size,
                &recipe.dmpo,
            )?;
            ess_mean = diag.ess_mean;
            lr_mean = diag.log_rnd_mean;
            lr_std = diag.log_rnd_std;
            zero_var = diag.zero_variance_fraction;
            if let Ok(a) = weights.advantages(
                recipe.dmpo.baseline,
                recipe.dmpo.centering_strength,
                Some(&weights.ell_cur),
            ) {
                adv_corr = pearson(&a, &rewards);
            }
            reward_std = dmpo_core::weights::mean(&diag.reward_std);
            // 5. num_iterations updates, fresh masks each (§4 WDCE / DDO).
            let clock = Instant::now();
            for _ in 0..t.num_iterations {
                let loss_of = |model: &Llada<AB>,
                               pass: &[usize],
                               rng: &mut ChaCha8Rng|
                 -> Result<Tensor<AB, 1>> {
                    let sub = batch_on(pass)?;
                    let sub_w = slice_weights(&weights, pass, t.group_size);
                    let model = ModelView::policy(model);
                    Ok(match recipe.dmpo.loss {
                        DmpoLoss::Wdce => {
                            dmpo_core::wdce_loss(&model, &sub, &sub_w, &recipe.dmpo, rng)?.loss
                        }
                        DmpoLoss::Ddo => {
                            dmpo_core::ddo_loss(&model, &sub, &sub_w, &recipe.dmpo, rng)?.loss
                        }
                    })
                };
                model = accumulate_and_update(model, &passes, &mut rng, loss_of, &mut ctx)?;
            }
            seconds.insert("optimize", clock.elapsed().as_secs_f64());
        }
        Algorithm::DiffuGrpo | Algorithm::Wd1 => {
            let clock = Instant::now();
            let adv = grpo_advantages(&rewards, t.group_size, recipe.grpo.scale_rewards)?;
            adv_corr = pearson(&adv, &rewards);
            reward_std = rewards
                .chunks(t.group_size)
                .map(dmpo_core::weights::std_unbiased)
                .sum::<f64>()
                / (rows / t.group_size) as f64;
            zero_var = rewards
                .chunks(t.group_size)
                .filter(|g| dmpo_core::weights::std_unbiased(g) < 1e-12)
                .count() as f64
                / (rows / t.group_size) as f64;
            // Per iteration: a prompt mask, the old policy's and the reference's log-probs (§6).
            let (current, reference_model) = (ModelView::policy(&policy), reference.view(&policy));
            let mut plan = Vec::new();
            for _ in 0..t.num_iterations {
                let mask =
                    sample_prompt_mask(&mut rng, rows, prompt_len, recipe.grpo.p_mask_prompt);
                let old = to_host(mean_field_logprobs(&current, &inner_batch, &mask)?);
                let reff = if recipe.grpo.beta > 0.0 && t.algorithm == Algorithm::DiffuGrpo {
                    Some(to_host(mean_field_logprobs(
                        &reference_model,
                        &inner_batch,
                        &mask,
                    )?))
                } else {
                    None
                };
                plan.push((mask, old, reff));
            }
            seconds.insert("elbo", clock.elapsed().as_secs_f64());
            let clock = Instant::now();
            let gen = sampler.gen_length;
            for (mask, old, reff) in &plan {
                let loss_of = |model: &Llada<AB>,
                               pass: &[usize],
                               _: &mut ChaCha8Rng|
                 -> Result<Tensor<AB, 1>> {
                    let sub = batch_on(pass)?;
                    let sub_mask: Vec<bool> = pass
                        .iter()
                        .flat_map(|&r| mask[r * prompt_len..(r + 1) * prompt_len].iter().copied())
                        .collect();
                    let logp = mean_field_logprobs(&ModelView::policy(model), &sub, &sub_mask)?;
                    let sub_adv: Vec<f64> = pass.iter().map(|&r| adv[r]).collect();
                    let cmask = sub.completion_mask_tensor();
                    let out = match t.algorithm {
                        Algorithm::DiffuGrpo => {
                            let pick = |v: &Vec<f32>| tensor_rows::<AB>(v, pass, gen, device);
                            diffu_grpo_loss(
                                logp,
                                Some(pick(old)),
                                reff.as_ref().map(pick),
                                &sub_adv,
                                cmask,
                                &recipe.grpo,
                            )?
                            .loss
                        }
                        _ => wd1_loss(logp, &sub_adv, t.group_size, cmask)?.loss,
                    };
                    // Mean-over-tokens losses: weight each pass by its share of the rows.
                    Ok(out * (pass.len() as f64 / rows as f64))
                };
                model = accumulate_and_update(model, &passes, &mut rng, loss_of, &mut ctx)?;
            }
            seconds.insert("optimize", clock.elapsed().as_secs_f64());
        }
    }
    let mean = |v: &[f64]| {
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let metrics = StepMetrics {
        step,
        reward_mean: mean(&rewards),
        reward_components: components,
        reward_std,
        zero_variance_fraction: zero_var,
        ess_mean,
        log_rnd_mean: lr_mean,
        log_rnd_std: lr_std,
        advantage_reward_corr: adv_corr,
        loss: mean(&losses),
        grad_norm: mean(&norms),
        lr,
        skipped_total: state.skipped,
        rollout_tokens_per_s: (rows * sampler.gen_length) as f64 / rollout_secs,
        seconds,
    };
    Ok((model, metrics))
}

/// What one optimiser update reads and records.
struct UpdateContext<'a, O> {
    optimizer: &'a mut O,
    train: &'a crate::recipe::TrainSection,
    total_updates: usize,
    state: &'a mut TrainState,
    norms: &'a mut Vec<f64>,
    losses: &'a mut Vec<f64>,
    lr: &'a mut f64,
}

/// One optimiser update: sums `loss_of` over the micro-batches (whole groups), accumulating
/// gradients of the finite ones, then clips globally and applies them (or skips the update when
/// the loss or the gradient is not finite).
fn accumulate_and_update<AB, O>(
    model: Llada<AB>,
    passes: &[Vec<usize>],
    rng: &mut ChaCha8Rng,
    mut loss_of: impl FnMut(&Llada<AB>, &[usize], &mut ChaCha8Rng) -> Result<Tensor<AB, 1>>,
    ctx: &mut UpdateContext<'_, O>,
) -> Result<Llada<AB>>
where
    AB: AutodiffBackend,
    O: burn::optim::Optimizer<Llada<AB>, AB>,
{
    let mut acc = GradientsAccumulator::<Llada<AB>>::new();
    let mut loss = 0.0;
    for pass in passes {
        let out = loss_of(&model, pass, rng)?;
        let value: f64 = out.clone().into_scalar().elem();
        loss += value;
        if value.is_finite() {
            acc.accumulate(&model, GradientsParams::from_grads(out.backward(), &model));
        }
    }
    let t = ctx.train;
    *ctx.lr = learning_rate(t, ctx.state.updates + ctx.state.skipped, ctx.total_updates);
    let (model, outcome) = apply_update(
        model,
        ctx.optimizer,
        acc.grads(),
        loss,
        *ctx.lr,
        t.max_grad_norm,
    );
    match outcome {
        UpdateOutcome::Applied { grad_norm } => {
            ctx.state.updates += 1;
            ctx.norms.push(grad_norm);
        }
        UpdateOutcome::SkippedNonFinite => {
            ctx.state.skipped += 1;
            tracing::warn!(
                "step {}: non-finite loss ({loss}) or gradient, update skipped",
                ctx.state.step
            );
        }
    }
    ctx.losses.push(loss);
    Ok(model)
}

/// Pearson correlation (NaN when either side is constant).
fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

fn make_batch<B: Backend>(
    flat: &[i64],
    seq_len: usize,
    prompt_len: usize,
    eos_index: &[usize],
    padding: Option<&[bool]>,
    rows: &[usize],
    device: &B::Device,
) -> Result<SequenceBatch<B>> {
    let ids: Vec<i64> = rows
        .iter()
        .flat_map(|&r| flat[r * seq_len..(r + 1) * seq_len].iter().copied())
        .collect();
    let tensor =
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows.len(), seq_len]), device);
    let eos: Vec<usize> = rows.iter().map(|&r| eos_index[r]).collect();
    let mut batch = SequenceBatch::with_eos_index(tensor, prompt_len, eos)?;
    if let Some(p) = padding {
        let m: Vec<bool> = rows
            .iter()
            .flat_map(|&r| p[r * seq_len..(r + 1) * seq_len].iter().copied())
            .collect();
        batch = batch.with_key_padding(Tensor::<B, 2, Bool>::from_data(
            TensorData::new(m, [rows.len(), seq_len]),
            device,
        ))?;
    }
    Ok(batch)
}

fn slice_weights(w: &RolloutWeights, rows: &[usize], group: usize) -> RolloutWeights {
    RolloutWeights {
        group_size: w.group_size,
        w_plus: rows.iter().map(|&r| w.w_plus[r]).collect(),
        w_minus: rows.iter().map(|&r| w.w_minus[r]).collect(),
        ell_cur: rows.iter().map(|&r| w.ell_cur[r]).collect(),
        coeffs: rows
            .iter()
            .step_by(group)
            .map(|&r| w.coeffs[r / group])
            .collect(),
    }
}

fn to_host<B: Backend>(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 data")
}

fn tensor_rows<B: Backend>(
    v: &[f32],
    rows: &[usize],
    width: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let data: Vec<f32> = rows
        .iter()
        .flat_map(|&r| v[r * width..(r + 1) * width].iter().copied())
        .collect();
    Tensor::from_data(TensorData::new(data, [rows.len(), width]), device)
}

fn append_metrics(path: &Path, line: &impl Serialize) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainError::io(path, e))?;
    let text = serde_json::to_string(line).expect("serialisable");
    writeln!(f, "{text}").map_err(|e| TrainError::io(path, e))
}

/// Drops metrics lines of steps at or after `step` (work lost with an interrupted run).
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    if !path.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| (s as usize) < step)
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    dllm_model::load::write_atomic(path, out.as_bytes())?;
    Ok(())
}
