//! The DMPO training loop (docs/algorithm.md §5), readable top to bottom:
//!
//! for each rollout step: sample prompts → `G` rollouts each → rewards ([`crate::rollout`]) →
//! the algorithm's updates ([`crate::algorithm`]: DMPO's ELBOs under the rollout policy and the
//! reference on shared masks, importance weights, `num_iterations` optimiser updates with fresh
//! masks; or diffu-GRPO's and wd1's, docs/algorithm.md §6) → one metrics row ([`crate::metrics`]); then
//! evaluation, reference sync and checkpoints as the recipe asks.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::tensor::backend::AutodiffBackend;
use dllm_model::{load_model, Llada, LladaTokenizer, LoadOptions, WeightDType};
use dmpo_core::ModelView;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rewards::Task;
use serde::Serialize;

use crate::algorithm::{self, Diagnostics, Learner, UpdateInputs};
use crate::checkpoint::{self, Snapshot, TrainState};
use crate::distributed::{exclusive_collective, trainable_digest, Peer};
use crate::error::{Result, TrainError};
use crate::eval::{evaluate, EvalResult};
use crate::metrics::{self, RolloutSeconds, StepMetrics};
use crate::recipe::{Algorithm, Finetune, Recipe};
use crate::reference::Reference;
use crate::rollout::RolloutSource;
use crate::run_dir::{RunDir, StartMode};
use crate::tasks::{eval_items, TrainData};

/// Options of a run that are not hyperparameters.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Whether to start a new run, continue the directory's run, or replace it.
    pub start: StartMode,
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

/// [`stream_seed`] purpose of the backend's seed for a step.
pub const BACKEND_STREAM: u64 = 1;
/// [`stream_seed`] purpose of a step's host RNG (masks).
pub const STEP_RNG_STREAM: u64 = 2;
/// [`stream_seed`] purpose of a step's rollout sampler.
pub const SAMPLER_STREAM: u64 = 3;
/// [`stream_seed`] purpose of a fresh LoRA adapter's initialisation.
pub const LORA_INIT_STREAM: u64 = 4;

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
    // Locked for the whole run; a directory holding a run is refused unless resumed or
    // overwritten (crate::run_dir).
    let locked = RunDir::open(&recipe.run_dir(), options.start)?;
    let run_dir = locked.path().to_path_buf();
    let resume = options.start == StartMode::Resume;
    if resume {
        check_resumable(recipe, &run_dir)?;
    }
    let task: Task = recipe
        .task
        .name
        .parse()
        .map_err(|e: rewards::Error| TrainError::Data(e.to_string()))?;

    // Everything that can be wrong with the inputs fails here, before any training.
    let tokenizer = LladaTokenizer::from_file(recipe.model.path.join("tokenizer.json"))?;
    let data = TrainData::open(&recipe.task, task)?;
    let eval_set = eval_items(&recipe.task, task, recipe.eval.order, recipe.eval.limit)?;
    let (mut model, mut reference) = load_policy_and_reference::<AB>(recipe, &device)?;
    tokenizer.check_model(&model.config)?;
    check_context(recipe, model.config.max_sequence_length)?;
    let t = &recipe.train;
    let mut optimizer = crate::optim::adamw(t).init::<AB, Llada<AB>>();

    let resolved = toml::to_string_pretty(recipe).expect("serialisable recipe");
    dllm_model::load::write_atomic(&run_dir.join("recipe.toml"), resolved.as_bytes())?;
    let metrics_path = run_dir.join("metrics.jsonl");
    let eval_path = run_dir.join("eval.jsonl");
    let mut state = TrainState::default();
    if resume {
        (model, optimizer, state) =
            resume_latest(&run_dir, model, optimizer, &mut reference, &device)?;
        // Rows of steps the checkpoint does not hold (metrics rows count from 0, evaluation
        // rows from 1: the evaluation after step `s` is written before its checkpoint).
        metrics::truncate_from_step(&metrics_path, state.step)?;
        metrics::truncate_from_step(&eval_path, state.step + 1)?;
    }
    let mut run = StepContext {
        source: RolloutSource {
            recipe,
            task,
            tokenizer: &tokenizer,
            data: &data,
        },
        reference,
        optimizer,
        state,
        total_updates: t.steps * t.num_iterations,
        device,
        peer: Peer::single(),
    };
    let files = RunFiles {
        recipe,
        run_dir: &run_dir,
        tokenizer: &tokenizer,
        task,
        eval_set: &eval_set,
        metrics: metrics_path.clone(),
        evaluations: eval_path,
        skip_eval: options.skip_eval,
    };

    let before = if options.skip_eval {
        Vec::new()
    } else if run.state.step > 0 {
        // Resumed: the first invocation's evaluation before training.
        read_evaluations(&run_dir, "before", &recipe.eval.gen_lengths)?
    } else {
        files.evaluate(&model, "before")?
    };
    for r in &before {
        tracing::info!(
            "before training: len {} accuracy {:.2}%",
            r.gen_length,
            r.accuracy_pct
        );
    }

    let bar = progress_bar(options.quiet, t.steps, run.state.step);
    let last_step = options.stop_after.map_or(t.steps, |n| n.min(t.steps));
    let model = match recipe.distributed.devices {
        1 => run.run_steps(model, last_step, &files, &bar)?,
        devices => {
            let (model, state) = run_peers(&run, model, devices, last_step, &files, &bar)?;
            run.state = state;
            model
        }
    };
    bar.finish_and_clear();

    let after = if options.skip_eval {
        Vec::new()
    } else {
        files.evaluate(&model, "after")?
    };
    let summary = Summary {
        run_dir: run_dir.clone(),
        before,
        after,
        steps: run.state.step,
        updates: run.state.updates,
        skipped: run.state.skipped,
        final_reward: last_quarter_mean(&metrics::rewards(&metrics_path)?),
        seconds: started.elapsed().as_secs_f64(),
    };
    let text = serde_json::to_string_pretty(&summary).expect("serialisable");
    dllm_model::load::write_atomic(&run_dir.join("summary.json"), text.as_bytes())?;
    crate::plot::plot_run(&run_dir)?;
    Ok(summary)
}

/// Refuses a recipe whose longest sequence (the prompt cap plus the rollout's or an
/// evaluation's generation length) exceeds the model's context, before any work.
fn check_context(recipe: &Recipe, context: usize) -> Result<()> {
    let prompt = recipe.task.max_prompt_tokens;
    let lengths = std::iter::once(("rollout.gen_length", recipe.rollout.gen_length)).chain(
        recipe
            .eval
            .gen_lengths
            .iter()
            .map(|&l| ("eval.gen_lengths", l)),
    );
    for (key, len) in lengths {
        if prompt.saturating_add(len) > context {
            return Err(TrainError::Recipe {
                path: recipe.model.path.join("config.json"),
                message: format!(
                    "`{key}` {len} + `task.max_prompt_tokens` {prompt} exceeds the model's \
                     context (max_sequence_length {context})"
                ),
            });
        }
    }
    Ok(())
}

/// Refuses to resume `run_dir` with a recipe whose settings differ from the run's
/// `recipe.toml` in anything but [`crate::recipe::RESUMABLE_KEYS`], naming the keys, and any
/// resume of full fine-tuning in half precision.
fn check_resumable(recipe: &Recipe, run_dir: &Path) -> Result<()> {
    let saved_path = run_dir.join("recipe.toml");
    // burn 0.21 restores optimiser state in the backend's default float type (f32); the
    // moments of bf16/f16 parameters would then meet bf16 gradients. LoRA's trainable factors
    // are f32 on any base, so only full fine-tuning in half precision is affected.
    if recipe.model.finetune == Finetune::Full && recipe.model.dtype != WeightDType::F32 {
        return Err(TrainError::Recipe {
            path: saved_path,
            message: format!(
                "--resume of full fine-tuning with `model.dtype` {:?} is not supported (its \
                 AdamW state would come back in f32); use LoRA or f32 weights for runs you \
                 need to resume",
                recipe.model.dtype
            ),
        });
    }
    if !saved_path.is_file() {
        return Ok(());
    }
    let saved = Recipe::load(&saved_path, &[])?;
    let changed = recipe.resume_differences(&saved);
    if changed.is_empty() {
        return Ok(());
    }
    Err(TrainError::Recipe {
        path: saved_path,
        message: format!(
            "--resume with settings that differ from the run's: {} (only {} may change; \
             start a new run, or --overwrite this one)",
            changed.join(", "),
            crate::recipe::RESUMABLE_KEYS.join(", ")
        ),
    })
}

/// The evaluations `eval_{label}_len{len}.json` a previous invocation wrote, for every
/// evaluated length that has one.
fn read_evaluations(run_dir: &Path, label: &str, lengths: &[usize]) -> Result<Vec<EvalResult>> {
    lengths
        .iter()
        .map(|len| run_dir.join(format!("eval_{label}_len{len}.json")))
        .filter(|path| path.is_file())
        .map(|path| EvalResult::read(&path))
        .collect()
}

/// The policy to train and its reference: with LoRA, the base model with a new (or the
/// recipe's) adapter and the adapter-disabled view; fully fine-tuned, the base model and a
/// frozen copy of it.
fn load_policy_and_reference<AB: AutodiffBackend>(
    recipe: &Recipe,
    device: &AB::Device,
) -> Result<(Llada<AB>, Reference<AB::InnerBackend>)> {
    let load = LoadOptions {
        dtype: recipe.model.dtype,
    };
    let base = load_model::<AB>(&recipe.model.path, load, device)?;
    Ok(match recipe.model.finetune {
        Finetune::Lora => {
            let m = match &recipe.model.adapter {
                Some(a) => base.load_adapter(a, device)?,
                None => {
                    // A fresh adapter's `A ~ U(..)` is drawn from the seeded backend, so two
                    // runs with the same seed start from the same adapter.
                    AB::seed(device, stream_seed(recipe.run.seed, 0, LORA_INIT_STREAM));
                    base.with_lora(&recipe.lora.config(), device)?
                }
            };
            (m, Reference::AdapterOff)
        }
        Finetune::Full => {
            let frozen = load_model::<AB::InnerBackend>(&recipe.model.path, load, device)?;
            (base, Reference::Frozen(Box::new(frozen)))
        }
    })
}

/// The run's progress bar (hidden when `quiet`), at `position` of `steps`.
fn progress_bar(quiet: bool, steps: usize, position: usize) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    bar.set_position(position as u64);
    bar
}

/// Mean of the last quarter (at least one) of `rewards`; `NaN` when empty.
fn last_quarter_mean(rewards: &[f64]) -> f64 {
    let quarter = rewards.len().div_ceil(4).max(1);
    let tail = &rewards[rewards.len().saturating_sub(quarter)..];
    if tail.is_empty() {
        f64::NAN
    } else {
        tail.iter().sum::<f64>() / tail.len() as f64
    }
}

/// What the leader writes, and the evaluation it runs: the run directory's files.
struct RunFiles<'a> {
    recipe: &'a Recipe,
    run_dir: &'a Path,
    tokenizer: &'a LladaTokenizer,
    task: Task,
    eval_set: &'a [rewards::TaskItem],
    /// `metrics.jsonl`.
    metrics: PathBuf,
    /// `eval.jsonl`.
    evaluations: PathBuf,
    skip_eval: bool,
}

impl RunFiles<'_> {
    /// Evaluates `model` at every length of `eval.gen_lengths`, writing
    /// `eval_{label}_len{len}.json`.
    fn evaluate<AB: AutodiffBackend>(
        &self,
        model: &Llada<AB>,
        label: &str,
    ) -> Result<Vec<EvalResult>> {
        let policy = model.valid();
        let recipe = self.recipe;
        recipe
            .eval
            .gen_lengths
            .iter()
            .map(|&len| {
                let out = self.run_dir.join(format!("eval_{label}_len{len}.json"));
                evaluate(
                    &policy,
                    self.tokenizer,
                    self.task,
                    self.eval_set,
                    recipe.task.prompt_style,
                    recipe.task.max_prompt_tokens,
                    &recipe.eval,
                    len,
                    Some(&out),
                )
            })
            .collect()
    }
}

/// Runs the steps up to `last_step` on `devices` peers, one thread each with its share of the
/// cores, all starting from `run`'s state and `model`; returns the leader's model and counters.
/// A peer that fails releases the others (burn-collective's operations then fail on them),
/// and the error reported is the first peer's own, not the ones it caused.
fn run_peers<AB, O>(
    run: &StepContext<'_, AB, O>,
    model: Llada<AB>,
    devices: usize,
    last_step: usize,
    files: &RunFiles<'_>,
    bar: &ProgressBar,
) -> Result<(Llada<AB>, TrainState)>
where
    AB: AutodiffBackend,
    O: Optimizer<Llada<AB>, AB>,
{
    let _collective = exclusive_collective();
    Peer::reset::<AB::InnerBackend>();
    let threads = (rayon::current_num_threads() / devices).max(1);
    let results: Vec<Result<(Llada<AB>, TrainState)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..devices)
            .map(|rank| {
                // Fresh autodiff leaves with the same parameter ids: peers whose parameters
                // shared autodiff nodes would contend for (and deadlock on) one graph.
                let model = Llada::<AB>::from_inner(model.valid());
                let mut peer_run = StepContext {
                    source: run.source.clone(),
                    reference: run.reference.clone(),
                    optimizer: run.optimizer.clone(),
                    state: run.state,
                    total_updates: run.total_updates,
                    device: run.device.clone(),
                    peer: Peer::single(),
                };
                scope.spawn(move || {
                    // Dropped on every exit, unwinding included: a failed peer resets the
                    // collective so that no other peer waits for it forever.
                    let release = ReleaseOnFailure::<AB::InnerBackend>::armed();
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .map_err(|e| TrainError::Distributed(format!("peer {rank}: {e}")))?;
                    let out = pool.install(|| {
                        peer_run.peer =
                            Peer::join::<AB::InnerBackend>(rank, devices, &peer_run.device)?;
                        let hidden = ProgressBar::hidden();
                        let bar = if rank == 0 { bar } else { &hidden };
                        let model = peer_run.run_steps(model, last_step, files, bar)?;
                        peer_run.peer.leave::<AB::InnerBackend>()?;
                        Ok((model, peer_run.state))
                    });
                    if out.is_ok() {
                        release.disarm();
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, h)| {
                h.join().unwrap_or_else(|_| {
                    Err(TrainError::Distributed(format!("peer {rank} panicked")))
                })
            })
            .collect()
    });
    // A peer's own failure outranks the collective errors it caused on the others.
    let (mut own_error, mut any_error, mut leader) = (None, None, None);
    for (rank, result) in results.into_iter().enumerate() {
        match result {
            Ok(out) if rank == 0 => leader = Some(out),
            Ok(_) => {}
            Err(e @ TrainError::Distributed(_)) => {
                any_error.get_or_insert(e);
            }
            Err(e) => {
                own_error.get_or_insert(e);
            }
        }
    }
    match (own_error.or(any_error), leader) {
        (Some(e), _) => Err(e),
        (None, Some(out)) => Ok(out),
        (None, None) => Err(TrainError::Distributed("peer 0 returned nothing".into())),
    }
}

/// Resets burn-collective when dropped armed: a peer leaving by error or panic releases the
/// peers blocked in an operation it will never join.
struct ReleaseOnFailure<B: burn::tensor::backend::Backend> {
    armed: std::cell::Cell<bool>,
    backend: std::marker::PhantomData<B>,
}

impl<B: burn::tensor::backend::Backend> ReleaseOnFailure<B> {
    fn armed() -> Self {
        Self {
            armed: std::cell::Cell::new(true),
            backend: std::marker::PhantomData,
        }
    }

    fn disarm(&self) {
        self.armed.set(false);
    }
}

impl<B: burn::tensor::backend::Backend> Drop for ReleaseOnFailure<B> {
    fn drop(&mut self) {
        if self.armed.get() {
            Peer::reset::<B>();
        }
    }
}

/// Everything a rollout step reads or updates besides the model: where rollouts come from, the
/// reference, the optimiser, the run's counters and the peer computing it.
struct StepContext<'a, AB: AutodiffBackend, O> {
    source: RolloutSource<'a>,
    reference: Reference<AB::InnerBackend>,
    optimizer: O,
    state: TrainState,
    /// Optimiser updates of the whole run (spans the learning-rate schedule).
    total_updates: usize,
    device: AB::Device,
    /// This peer (the only one without data parallelism).
    peer: Peer,
}

impl<AB: AutodiffBackend, O: Optimizer<Llada<AB>, AB>> StepContext<'_, AB, O> {
    /// The rollout steps from the current one up to `last_step`: metrics rows, evaluations and
    /// checkpoints (written by the leader), reference syncs; the peers' weights compared at
    /// every checkpoint.
    fn run_steps(
        &mut self,
        mut model: Llada<AB>,
        last_step: usize,
        files: &RunFiles<'_>,
        bar: &ProgressBar,
    ) -> Result<Llada<AB>> {
        let t = &self.source.recipe.train;
        let leader = self.peer.is_leader();
        while self.state.step < last_step {
            let step = self.state.step;
            let (m, line) = self.rollout_step(model)?;
            model = m;
            if leader {
                metrics::append_line(&files.metrics, &line)?;
            }
            bar.set_message(format!(
                "reward {:.3} ess {:.2}",
                line.reward_mean, line.ess_mean
            ));
            bar.inc(1);
            self.state.step = step + 1;
            let done = self.state.step;
            if leader
                && t.eval_every > 0
                && done.is_multiple_of(t.eval_every)
                && done < t.steps
                && !files.skip_eval
            {
                let r = files.evaluate(&model, &format!("step{done}"))?;
                metrics::append_line(
                    &files.evaluations,
                    &serde_json::json!({"step": done, "eval": r}),
                )?;
            }
            if t.sync_ref_model && done.is_multiple_of(t.ref_model_sync_steps) {
                self.reference
                    .sync(&model.valid(), t.ref_model_mixup_alpha)?;
            }
            if done.is_multiple_of(t.checkpoint_every.max(1)) || done == last_step {
                let digest = trainable_digest::<AB, _>(&model);
                self.peer
                    .check_same_weights::<AB::InnerBackend>(digest, done, &self.device)?;
                if leader {
                    self.save_checkpoint(files.run_dir, &model)?;
                }
            }
        }
        Ok(model)
    }

    /// One rollout step (docs/algorithm.md §5): rollouts, rewards, the algorithm's updates, the metrics row.
    fn rollout_step(&mut self, model: Llada<AB>) -> Result<(Llada<AB>, StepMetrics)> {
        let recipe = self.source.recipe;
        let (seed, step) = (recipe.run.seed, self.state.step);
        AB::seed(&self.device, stream_seed(seed, step, BACKEND_STREAM));
        let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(seed, step, STEP_RNG_STREAM));

        // 1. Prompts and rollouts: G completions per prompt, contiguous.
        let clock = Instant::now();
        let policy = model
            .valid()
            .with_adapter_dropout_always(recipe.lora.rollout_dropout);
        let groups = recipe.train.prompts_per_step;
        let samples = self.source.sample(&policy, step, self.peer.share(groups))?;
        let rollout_secs = clock.elapsed().as_secs_f64();

        // 2. Rewards, with their components; every peer then holds the whole step's rollout.
        let clock = Instant::now();
        let rollout = self.source.score(samples)?;
        let rollout = rollout.gather::<AB::InnerBackend>(&self.peer, groups, &self.device)?;
        let reward_secs = clock.elapsed().as_secs_f64();

        // 3. The algorithm's updates: DMPO (docs/algorithm.md §3–§4) or diffu-GRPO / wd1 (docs/algorithm.md §6).
        let inputs = UpdateInputs::<AB> {
            recipe,
            rollout: &rollout,
            policy: ModelView::policy(&policy),
            reference: self.reference.view(&policy),
            device: &self.device,
            peer: self.peer,
        };
        let mut learner = Learner::new(
            &mut self.optimizer,
            &recipe.train,
            self.total_updates,
            &mut self.state,
        )
        .on_peer(self.peer);
        let (model, diagnostics) = match recipe.train.algorithm {
            Algorithm::Dmpo => {
                let (m, d) = algorithm::dmpo::update(model, &inputs, &mut learner, &mut rng)?;
                (m, Diagnostics::Dmpo(d))
            }
            Algorithm::DiffuGrpo | Algorithm::Wd1 => {
                let (m, d) = algorithm::diffu_grpo::update(model, &inputs, &mut learner, &mut rng)?;
                (m, Diagnostics::DiffuGrpo(d))
            }
        };
        let updates = learner.finish();

        // 4. The metrics row.
        let seconds = RolloutSeconds {
            rollout: rollout_secs,
            reward: reward_secs,
        };
        let metrics = StepMetrics::new(
            step,
            &rollout,
            &diagnostics,
            &updates,
            self.state.skipped,
            seconds,
        );
        Ok((model, metrics))
    }

    /// Saves the checkpoint of the current step: `model`, the optimiser, the counters, and the
    /// reference when it moves.
    fn save_checkpoint(&self, run_dir: &Path, model: &Llada<AB>) -> Result<()> {
        let recipe = self.source.recipe;
        let moving_reference = match &self.reference {
            Reference::Frozen(r) if recipe.train.sync_ref_model => Some(r.as_ref()),
            _ => None,
        };
        let base_model = recipe.model.path.display().to_string();
        let snapshot = Snapshot {
            model,
            reference: moving_reference,
            optimizer: &self.optimizer,
            state: self.state,
            finetune: recipe.model.finetune,
            base_model: &base_model,
        };
        checkpoint::save(run_dir, &snapshot, 2)?;
        Ok(())
    }
}

/// The model, optimiser and counters of the latest checkpoint of `run_dir` (the reference too,
/// when the checkpoint holds a moving one); the given ones and step 0 when there is none.
fn resume_latest<AB, O>(
    run_dir: &Path,
    model: Llada<AB>,
    optimizer: O,
    reference: &mut Reference<AB::InnerBackend>,
    device: &AB::Device,
) -> Result<(Llada<AB>, O, TrainState)>
where
    AB: AutodiffBackend,
    O: Optimizer<Llada<AB>, AB>,
{
    let Some(ckpt) = checkpoint::latest(run_dir)? else {
        return Ok((model, optimizer, TrainState::default()));
    };
    let (model, optimizer, state) = checkpoint::load(&ckpt, model, optimizer, device)?;
    if let Reference::Frozen(frozen) = reference {
        if let Some(r) = checkpoint::load_reference(&ckpt, frozen, device)? {
            **frozen = r;
        }
    }
    tracing::info!("resumed from {} at step {}", ckpt.display(), state.step);
    Ok((model, optimizer, state))
}
