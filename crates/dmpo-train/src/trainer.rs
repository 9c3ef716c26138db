//! The DMPO training loop (docs/algorithm.md §5), readable top to bottom:
//!
//! for each rollout step: sample prompts → `G` rollouts each → rewards ([`crate::rollout`]) →
//! the algorithm's updates ([`crate::algorithm`]: DMPO's ELBOs under the rollout policy and the
//! reference on shared masks, importance weights, `num_iterations` optimiser updates with fresh
//! masks; or diffu-GRPO's and wd1's, docs/algorithm.md §6) → one metrics row ([`crate::metrics`]); then
//! evaluation, reference sync and checkpoints as the recipe asks.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::Optimizer;
use burn::tensor::backend::AutodiffBackend;
use dllm_model::{load_model, ChatTokenizer, DiffusionLm, LoadOptions, WeightDType};
use dmpo_core::ModelView;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rewards::Task;
use serde::Serialize;

use crate::algorithm::{self, Diagnostics, Learner, UpdateInputs};
use crate::checkpoint::{self, Snapshot, TrainState, TrainedOn};
use crate::distributed::{trainable_digest, Layout, Peer};
use crate::error::{Result, TrainError};
use crate::eval::{EvalResult, EvalSetup};
use crate::metrics::{self, RolloutSeconds, StepMetrics};
use crate::recipe::{Algorithm, EvalBase, Finetune, Recipe};
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
    /// Whether this process leads the run (the only one of an MPI job that prints the summary).
    #[serde(skip)]
    pub leader: bool,
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
    // Where the peers are (an MPI job starts MPI here), and whether this process writes files.
    let layout = Layout::from_section(&recipe.distributed)?;
    recipe
        .check_peers(layout.peers())
        .map_err(|e| TrainError::Recipe {
            path: recipe.run_dir().join("recipe.toml"),
            message: format!("`distributed.devices` {e}"),
        })?;
    // Locked for the whole run by the process that writes it; a directory holding a run is
    // refused unless resumed or overwritten (crate::run_dir).
    let locked = match layout.writes_files {
        true => Some(RunDir::open(&recipe.run_dir(), options.start)?),
        false => None,
    };
    let run_dir = recipe.run_dir();
    let resume = options.start == StartMode::Resume;
    if resume && locked.is_some() {
        check_resumable(recipe, &run_dir, &layout)?;
    }
    let task: Task = recipe
        .task
        .name
        .parse()
        .map_err(|e: rewards::Error| TrainError::Data(e.to_string()))?;

    // Everything that can be wrong with the inputs fails here, before any training.
    let tokenizer = ChatTokenizer::from_file(recipe.model.path.join("tokenizer.json"))?;
    let eval_set = eval_items(&recipe.task, task, recipe.eval.order, recipe.eval.limit)?;
    let data = TrainData::open(&recipe.task, task, &eval_set)?;
    let (model, reference) = load_policy_and_reference::<AB>(recipe, &device)?;
    tokenizer.check_model(&model.config)?;
    recipe.check_model(&model.config, &recipe.model.path.join("config.json"))?;
    let t = &recipe.train;
    let optimizer = crate::optim::adamw(t).init::<AB, DiffusionLm<AB>>();

    let trained_on = TrainedOn::of(&model, recipe.model.finetune, &recipe.model.path)?;
    // The inputs are good: a run being overwritten is removed only now.
    if let Some(locked) = &locked {
        locked.start()?;
        let resolved = recipe.to_run_toml();
        dllm_model::load::write_atomic(&run_dir.join("recipe.toml"), resolved.as_bytes())?;
        write_layout(&run_dir, &layout)?;
    }
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut run = StepContext {
        source: RolloutSource {
            recipe,
            task,
            tokenizer: &tokenizer,
            data: &data,
        },
        reference,
        optimizer,
        state: TrainState::default(),
        total_updates: t.steps * t.num_iterations,
        device,
        peer: Peer::single(),
        trained_on: &trained_on,
    };
    let files = RunFiles {
        recipe,
        run_dir: &run_dir,
        tokenizer: &tokenizer,
        task,
        eval_set: &eval_set,
        metrics: metrics_path.clone(),
        evaluations: run_dir.join("eval.jsonl"),
        resume,
        skip_eval: options.skip_eval,
        last_step: options.stop_after.map_or(t.steps, |n| n.min(t.steps)),
    };

    let bar = progress_bar(options.quiet || layout.process > 0, t.steps, 0);
    let outcome = match layout.peers() {
        1 => run.run_peer(model, &files, &bar)?,
        _ => run_peers(&run, model, &layout, &files, &bar)?,
    };
    bar.finish_and_clear();

    let leader = layout.process == 0;
    let final_reward = match layout.writes_files {
        true => last_quarter_mean(&metrics::rewards(&metrics_path)?),
        false => f64::NAN,
    };
    let summary = Summary {
        leader,
        run_dir: run_dir.clone(),
        before: outcome.before,
        after: outcome.after,
        steps: outcome.state.step,
        updates: outcome.state.updates,
        skipped: outcome.state.skipped,
        final_reward,
        seconds: started.elapsed().as_secs_f64(),
    };
    if layout.writes_files {
        let text = serde_json::to_string_pretty(&summary).expect("serialisable");
        dllm_model::load::write_atomic(&run_dir.join("summary.json"), text.as_bytes())?;
        crate::plot::plot_run(&run_dir)?;
    }
    Ok(summary)
}

/// The file recording how many peers per process and processes a run has.
const LAYOUT_FILE: &str = "layout.json";

/// Records `layout`'s size in `run_dir` (checked on resume).
fn write_layout(run_dir: &Path, layout: &Layout) -> Result<()> {
    let text = serde_json::json!({"devices": layout.devices, "processes": layout.processes});
    dllm_model::load::write_atomic(&run_dir.join(LAYOUT_FILE), text.to_string().as_bytes())?;
    Ok(())
}

/// The `(devices, processes)` a run recorded, if it did.
fn read_layout(run_dir: &Path) -> Result<Option<(usize, usize)>> {
    let path = run_dir.join(LAYOUT_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let bad = |why: String| TrainError::Recipe {
        path: path.clone(),
        message: why,
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("unreadable: {e}")))?;
    let field = |name: &str| {
        value[name]
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| bad(format!("`{name}` is not a count")))
    };
    Ok(Some((field("devices")?, field("processes")?)))
}

/// Refuses to resume `run_dir` with a recipe whose settings differ from the run's
/// `recipe.toml` in anything but [`crate::recipe::RESUMABLE_KEYS`], naming the keys, and any
/// resume of full fine-tuning in half precision.
fn check_resumable(recipe: &Recipe, run_dir: &Path, layout: &Layout) -> Result<()> {
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
        // A run writes its recipe before anything else: without it, checkpoints or metrics
        // cannot be checked against the settings they were made with.
        if crate::run_dir::holds_run(run_dir) {
            return Err(TrainError::Recipe {
                path: saved_path,
                message: "is missing, so the run's settings cannot be checked against this \
                          recipe: --resume needs the run's recipe.toml (restore it, or start a \
                          new run)"
                    .into(),
            });
        }
        return Ok(());
    }
    let saved = Recipe::load(&saved_path, &[])?;
    // A run started before the layout file records its peers in its recipe, in one process.
    let (devices, processes) = read_layout(run_dir)?.unwrap_or((saved.distributed.devices, 1));
    if (devices, processes) != (layout.devices, layout.processes) {
        return Err(TrainError::Recipe {
            path: run_dir.join(LAYOUT_FILE),
            message: format!(
                "--resume on {} peer(s) per process in {} process(es), where the run had {} \
                 in {}: a resumed run continues exactly only with the same \
                 `distributed.devices` and number of processes (the order of the sums over \
                 peers depends on them); start a new run for another layout",
                layout.devices, layout.processes, devices, processes
            ),
        });
    }
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

/// The policy to train and its reference: with LoRA, the base model with a new (or the
/// recipe's) adapter and the adapter-disabled view; fully fine-tuned, the base model and a
/// frozen copy of it.
fn load_policy_and_reference<AB: AutodiffBackend>(
    recipe: &Recipe,
    device: &AB::Device,
) -> Result<(DiffusionLm<AB>, Reference<AB::InnerBackend>)> {
    let load = LoadOptions {
        dtype: recipe.model.dtype,
        quantize: recipe.model.quantize,
    };
    let base = load_model::<AB>(&recipe.model.path, load, device)?;
    if recipe.model.finetune == Finetune::Full && base.has_nf4_weights() {
        return Err(TrainError::Recipe {
            path: recipe.model.path.join("config.json"),
            message: "`model.finetune`: the checkpoint is quantised (NF4) and its weights are \
                      frozen; train it with LoRA (model.finetune = \"lora\")"
                .into(),
        });
    }
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
        // Full fine-tuning from an adapter starts from the base with the adapter merged in, and
        // so does its reference.
        Finetune::Full => {
            let frozen = load_model::<AB::InnerBackend>(&recipe.model.path, load, device)?;
            match &recipe.model.adapter {
                Some(a) => (
                    base.load_adapter(a, device)?
                        .merge_adapters()
                        .all_trainable(),
                    Reference::Frozen(Box::new(frozen.load_adapter(a, device)?.merge_adapters())),
                ),
                None => (base, Reference::Frozen(Box::new(frozen))),
            }
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
    tokenizer: &'a ChatTokenizer,
    task: Task,
    eval_set: &'a [rewards::TaskItem],
    /// `metrics.jsonl`.
    metrics: PathBuf,
    /// `eval.jsonl`.
    evaluations: PathBuf,
    /// Whether the run continues from the directory's checkpoints.
    resume: bool,
    skip_eval: bool,
    /// The step this invocation stops at.
    last_step: usize,
}

impl RunFiles<'_> {
    /// Evaluates `model` at every length of `eval.gen_lengths`: the peers share the batches of
    /// items, gather every completion, and score them all; the leader writes
    /// `eval_{label}_len{len}.json`.
    fn evaluate<AB: AutodiffBackend>(
        &self,
        model: &DiffusionLm<AB>,
        label: &str,
        peer: &Peer,
        device: &AB::Device,
    ) -> Result<Vec<EvalResult>> {
        let recipe = self.recipe;
        let policy = if recipe.model.quantize.is_some() && recipe.eval.base == EvalBase::Stored {
            // The references evaluate the adapter on the stored (bf16) base.
            let load = LoadOptions {
                dtype: recipe.model.dtype,
                quantize: None,
            };
            load_model::<AB::InnerBackend>(&recipe.model.path, load, device)?
                .with_adapters_of(&model.valid())
        } else {
            model.valid()
        };
        let setup = EvalSetup {
            tokenizer: self.tokenizer,
            task: self.task,
            items: self.eval_set,
            style: recipe.task.prompt_style,
            max_prompt_tokens: recipe.task.max_prompt_tokens,
            section: &recipe.eval,
        };
        let eos = policy.config.eos_token_id;
        recipe
            .eval
            .gen_lengths
            .iter()
            .map(|&len| {
                let batches = peer.share(setup.batches());
                let first = setup.items_of(batches.clone()).start;
                let own = setup.generate(&policy, batches, len)?.concat();
                let all = peer.gather_ids(&own, first * len, self.eval_set.len() * len)?;
                let completions: Vec<Vec<u32>> =
                    all.chunks(len.max(1)).map(<[u32]>::to_vec).collect();
                let out = self.run_dir.join(format!("eval_{label}_len{len}.json"));
                let out = peer.is_leader().then_some(out.as_path());
                setup.score(eos, len, &completions, out)
            })
            .collect()
    }

    /// The evaluations `eval_{label}_len{len}.json` a previous invocation wrote, for every
    /// evaluated length that has one.
    fn read_evaluations(&self, label: &str) -> Result<Vec<EvalResult>> {
        self.recipe
            .eval
            .gen_lengths
            .iter()
            .map(|len| self.run_dir.join(format!("eval_{label}_len{len}.json")))
            .filter(|path| path.is_file())
            .map(|path| EvalResult::read(&path))
            .collect()
    }
}

/// What one peer's part of a run ends with.
struct PeerOutcome {
    state: TrainState,
    /// The evaluation before training (this invocation's, or the first one's when resumed).
    before: Vec<EvalResult>,
    /// The evaluation after training.
    after: Vec<EvalResult>,
}

/// Runs the whole run on this process's peers of `layout`, one thread each with its share of
/// the cores, all starting from `run`'s state and `model`; returns the first peer's outcome. A
/// peer that fails releases the others waiting for it (their exchanges then fail), and the error
/// reported is the first peer's own, not the ones it caused.
fn run_peers<AB, O>(
    run: &StepContext<'_, AB, O>,
    model: DiffusionLm<AB>,
    layout: &Layout,
    files: &RunFiles<'_>,
    bar: &ProgressBar,
) -> Result<PeerOutcome>
where
    AB: AutodiffBackend,
    O: Optimizer<DiffusionLm<AB>, AB>,
{
    let devices = layout.devices;
    let rendezvous = layout.rendezvous();
    let threads = (rayon::current_num_threads() / devices).max(1);
    // Every process of the machine places its peers on the machine's devices in turn.
    let placed = (0..devices)
        .map(|local| {
            let index = layout.machine_slot * devices + local;
            let count = (layout.machine_slot + 1) * devices;
            crate::distributed::peer_device::<AB>(&run.device, index, count)
        })
        .collect::<Result<Vec<_>>>()?;
    let results: Vec<Result<PeerOutcome>> = std::thread::scope(|scope| {
        let handles: Vec<_> = placed
            .into_iter()
            .enumerate()
            .map(|(local, device)| {
                // Fresh autodiff leaves with the same parameter ids, on the peer's device:
                // peers whose parameters shared autodiff nodes would contend for (and deadlock
                // on) one graph.
                let model = DiffusionLm::<AB>::from_inner(model.valid()).fork(&device);
                let reference = match &run.reference {
                    Reference::Frozen(r) => {
                        Reference::Frozen(Box::new(r.as_ref().clone().to_device(&device)))
                    }
                    Reference::AdapterOff => Reference::AdapterOff,
                };
                let peer = Peer::on(layout, rendezvous.clone(), local);
                let mut peer_run = StepContext {
                    source: run.source.clone(),
                    reference,
                    optimizer: run.optimizer.clone(),
                    state: run.state,
                    total_updates: run.total_updates,
                    device,
                    peer: peer.clone(),
                    trained_on: run.trained_on,
                };
                scope.spawn(move || {
                    // Dropped on every exit, unwinding included: a failed peer releases the
                    // others instead of leaving them waiting for it.
                    let release = ReleaseOnFailure::armed(peer);
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .map_err(|e| TrainError::Distributed(format!("peer {local}: {e}")))?;
                    let out = pool.install(|| {
                        let hidden = ProgressBar::hidden();
                        let bar = if peer_run.peer.is_leader() {
                            bar
                        } else {
                            &hidden
                        };
                        peer_run.run_peer(model, files, bar)
                    });
                    match &out {
                        Ok(_) => release.disarm(),
                        Err(e) => release.fail(&e.to_string()),
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(local, h)| {
                h.join().unwrap_or_else(|_| {
                    Err(TrainError::Distributed(format!(
                        "peer {} panicked",
                        layout.rank_of(local)
                    )))
                })
            })
            .collect()
    });
    // A peer's own failure outranks the exchange errors it caused on the others.
    let (mut own_error, mut any_error, mut first) = (None, None, None);
    for result in results {
        match result {
            Ok(out) => {
                first.get_or_insert(out);
            }
            Err(e @ TrainError::Distributed(_)) => {
                any_error.get_or_insert(e);
            }
            Err(e) => {
                own_error.get_or_insert(e);
            }
        }
    }
    match (own_error.or(any_error), first) {
        (Some(e), _) => Err(e),
        (None, Some(out)) => Ok(out),
        (None, None) => Err(TrainError::Distributed("no peer returned".into())),
    }
}

/// Releases the run's other peers when dropped armed: a peer leaving by error or panic must not
/// leave the others waiting in an exchange it will never join.
struct ReleaseOnFailure {
    peer: Option<Peer>,
}

impl ReleaseOnFailure {
    fn armed(peer: Peer) -> Self {
        Self { peer: Some(peer) }
    }

    fn disarm(mut self) {
        self.peer = None;
    }

    fn fail(mut self, why: &str) {
        if let Some(peer) = self.peer.take() {
            peer.abandon(why);
        }
    }
}

impl Drop for ReleaseOnFailure {
    fn drop(&mut self) {
        if let Some(peer) = self.peer.take() {
            peer.abandon("it panicked");
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
    /// What the model is trained on (written into checkpoints, checked on resume).
    trained_on: &'a TrainedOn,
}

impl<AB: AutodiffBackend, O: Optimizer<DiffusionLm<AB>, AB>> StepContext<'_, AB, O> {
    /// One peer's part of the run, the same for one peer or many: resume from the checkpoint
    /// every machine holds, evaluate before training, the steps, evaluate after.
    fn run_peer(
        &mut self,
        model: DiffusionLm<AB>,
        files: &RunFiles<'_>,
        bar: &ProgressBar,
    ) -> Result<PeerOutcome> {
        let model = if files.resume {
            self.resume(model, files)?
        } else {
            model
        };
        bar.set_position(self.state.step as u64);
        let before = if files.skip_eval {
            Vec::new()
        } else if self.state.step > 0 {
            // Resumed: the first invocation's evaluation before training, when it scored the
            // items this one scores (`eval.*` may change on resume); otherwise there is nothing
            // to compare with.
            let items = files.eval_set.len();
            let (same, other): (Vec<_>, Vec<_>) = files
                .read_evaluations("before")?
                .into_iter()
                .partition(|r| r.items == items);
            for r in other.iter().filter(|_| self.peer.is_leader()) {
                tracing::warn!(
                    "the evaluation before training (len {}) scored {} items, this run scores \
                     {items} (eval settings changed on resume): no before/after comparison",
                    r.gen_length,
                    r.items
                );
            }
            same
        } else {
            files.evaluate(&model, "before", &self.peer, &self.device)?
        };
        for r in before.iter().filter(|_| self.peer.is_leader()) {
            tracing::info!(
                "before training: len {} accuracy {:.2}%",
                r.gen_length,
                r.accuracy_pct
            );
        }
        let model = self.run_steps(model, files.last_step, files, bar)?;
        let after = if files.skip_eval {
            Vec::new()
        } else {
            files.evaluate(&model, "after", &self.peer, &self.device)?
        };
        Ok(PeerOutcome {
            state: self.state,
            before,
            after,
        })
    }

    /// Loads the newest checkpoint that every machine holds into `model`, the optimiser, the
    /// counters (and a moving reference), and drops the metrics and evaluation rows of later
    /// steps. A machine can be one checkpoint ahead of another (stopped between the two
    /// writes); each keeps two, so the older one is there.
    fn resume(&mut self, model: DiffusionLm<AB>, files: &RunFiles<'_>) -> Result<DiffusionLm<AB>> {
        let own = checkpoint::latest_step(files.run_dir)?;
        checkpoint::latest(files.run_dir)?; // refuses an incomplete newest one
        let steps = self.peer.gather_each(own.map_or(-1.0, |s| s as f64))?;
        let without: Vec<usize> = (0..steps.len()).filter(|&p| steps[p] < 0.0).collect();
        if !without.is_empty() && without.len() < steps.len() {
            return Err(TrainError::Distributed(format!(
                "peer {}: resuming, peer(s) {without:?} find no checkpoint in {} where the others \
                 do (theirs: {steps:?}): every process must read the run's checkpoints — a \
                 file system shared by the machines, or `distributed.save_on_each_node = true` \
                 from the run's start",
                self.peer.rank,
                files.run_dir.display()
            )));
        }
        let agreed = steps.iter().copied().fold(f64::INFINITY, f64::min);
        let mut model = model;
        if agreed >= 0.0 {
            let step = agreed as usize;
            let path = checkpoint::at_step(files.run_dir, step).ok_or_else(|| {
                TrainError::Distributed(format!(
                    "peer {}: resuming at step {step}, the newest checkpoint every peer holds \
                     (theirs: {steps:?}), but {} does not keep it",
                    self.peer.rank,
                    files.run_dir.display()
                ))
            })?;
            let (m, o, state) = checkpoint::load(
                &path,
                model,
                self.optimizer.clone(),
                self.trained_on,
                &self.device,
            )?;
            (model, self.optimizer, self.state) = (m, o, state);
            if let Reference::Frozen(frozen) = &mut self.reference {
                if let Some(r) = checkpoint::load_reference(&path, frozen, &self.device)? {
                    **frozen = r;
                }
            }
            if self.peer.is_leader() {
                tracing::info!("resumed from {} at step {step}", path.display());
            }
        }
        if self.peer.is_node_leader() {
            // Rows of steps the checkpoint does not hold (metrics rows count from 0, evaluation
            // rows from 1: the evaluation after step `s` is written before its checkpoint).
            metrics::truncate_from_step(&files.metrics, self.state.step)?;
            metrics::truncate_from_step(&files.evaluations, self.state.step + 1)?;
        }
        Ok(model)
    }

    /// The rollout steps from the current one up to `last_step`: metrics rows, evaluations and
    /// checkpoints (written by the leader), reference syncs; the peers' weights compared at
    /// every checkpoint.
    fn run_steps(
        &mut self,
        mut model: DiffusionLm<AB>,
        last_step: usize,
        files: &RunFiles<'_>,
        bar: &ProgressBar,
    ) -> Result<DiffusionLm<AB>> {
        let t = &self.source.recipe.train;
        let (leader, node_leader) = (self.peer.is_leader(), self.peer.is_node_leader());
        while self.state.step < last_step {
            let step = self.state.step;
            let (m, line) = self.rollout_step(model)?;
            model = m;
            if node_leader {
                metrics::append_line(&files.metrics, &line)?;
            }
            bar.set_message(format!(
                "reward {:.3} ess {:.2}",
                line.reward_mean, line.ess_mean
            ));
            bar.inc(1);
            self.state.step = step + 1;
            let done = self.state.step;
            if t.eval_every > 0
                && done.is_multiple_of(t.eval_every)
                && done < t.steps
                && !files.skip_eval
            {
                let label = format!("step{done}");
                let r = files.evaluate(&model, &label, &self.peer, &self.device)?;
                if leader {
                    metrics::append_line(
                        &files.evaluations,
                        &serde_json::json!({"step": done, "eval": r}),
                    )?;
                }
            }
            if t.sync_ref_model && done.is_multiple_of(t.ref_model_sync_steps) {
                self.reference
                    .sync(&model.valid(), t.ref_model_mixup_alpha)?;
            }
            if done.is_multiple_of(t.checkpoint_every.max(1)) || done == last_step {
                let digest = trainable_digest::<AB, _>(&model);
                self.peer.check_same_weights(digest, done)?;
                if node_leader {
                    self.save_checkpoint(files.run_dir, &model)?;
                }
            }
        }
        Ok(model)
    }

    /// One rollout step (docs/algorithm.md §5): rollouts, rewards, the algorithm's updates, the metrics row.
    fn rollout_step(&mut self, model: DiffusionLm<AB>) -> Result<(DiffusionLm<AB>, StepMetrics)> {
        let recipe = self.source.recipe;
        let (seed, step) = (recipe.run.seed, self.state.step);
        AB::seed(&self.device, stream_seed(seed, step, BACKEND_STREAM));
        let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(seed, step, STEP_RNG_STREAM));

        // 1. Prompts and rollouts: G completions per prompt, contiguous.
        let clock = Instant::now();
        let policy = model
            .valid()
            .with_adapter_dropout_always(recipe.lora.rollout_dropout);
        let rows = recipe.train.prompts_per_step * recipe.train.group_size;
        let own = self.peer.share_rows(rows, recipe.share_unit());
        let samples = self.source.sample(&policy, step, own.clone())?;
        let rollout_secs = clock.elapsed().as_secs_f64();

        // 2. Rewards, with their components; every peer then holds the whole step's rollout.
        let clock = Instant::now();
        let rollout = self.source.score(samples)?;
        let rollout = rollout.gather(&self.peer, own.start, rows)?;
        let reward_secs = clock.elapsed().as_secs_f64();

        // 3. The algorithm's updates: DMPO (docs/algorithm.md §3–§4) or diffu-GRPO / wd1 (docs/algorithm.md §6).
        let inputs = UpdateInputs::<AB> {
            recipe,
            rollout: &rollout,
            policy: ModelView::policy(&policy),
            reference: self.reference.view(&policy),
            device: &self.device,
            peer: self.peer.clone(),
        };
        let mut learner = Learner::new(
            &mut self.optimizer,
            &recipe.train,
            self.total_updates,
            &mut self.state,
        )
        .on_peer(self.peer.clone());
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
    fn save_checkpoint(&self, run_dir: &Path, model: &DiffusionLm<AB>) -> Result<()> {
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
            trained_on: self.trained_on,
        };
        checkpoint::save(run_dir, &snapshot, 2)?;
        Ok(())
    }
}
