//! The algorithms' update of a scored [`Rollout`]: DMPO (docs/algorithm.md §4, [`dmpo`]) and the diffu-GRPO /
//! wd1 baselines (docs/algorithm.md §6, [`diffu_grpo`]). Each scores the rollout under the no-grad policy and
//! the reference, then applies `num_iterations` optimiser updates through a [`Learner`], and
//! reports its own diagnostics.

pub mod diffu_grpo;
pub mod dmpo;

use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::{backend::AutodiffBackend, ElementConversion, Tensor};
use dllm_model::{BlockCheckpoints, DiffusionLm};
use dmpo_core::ModelView;
use rand_chacha::ChaCha8Rng;

use crate::checkpoint::TrainState;
use crate::distributed::Peer;
use crate::error::Result;
use crate::optim::{apply_update, learning_rate, UpdateOutcome};
use crate::recipe::{Recipe, TrainSection};
use crate::rollout::Rollout;

pub use diffu_grpo::DiffuGrpoDiagnostics;

/// How a loss reduces the rows of one loss unit (docs/algorithm.md §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitReduction {
    /// The unit's loss is the sum of its rows' losses (DMPO's WDCE, wd1).
    Sum,
    /// The unit's loss is the mean of its rows' losses (DDO).
    Mean,
}

/// The factor on a micro-batch's loss (a sum over its `pass_rows` rows for
/// [`UnitReduction::Sum`], a mean for [`UnitReduction::Mean`]) that makes the update's gradient
/// the mean over the step's units of `unit_rows` rows of each unit's loss (docs/algorithm.md §5.2).
///
/// Worked example, the paper's geometry: 64 rows per step, units of 4 (the reference's 4 rows per
/// GPU), WDCE: every pass is scaled by `4 / 64`, so the gradient is `Σ over the 64 rows / 16`, as
/// the reference's sum over 4 rows, divided by 2 accumulation steps, averaged over 8 GPUs.
pub fn pass_loss_factor(
    reduction: UnitReduction,
    pass_rows: usize,
    step_rows: usize,
    unit_rows: usize,
) -> f64 {
    match reduction {
        UnitReduction::Sum => unit_rows as f64 / step_rows as f64,
        UnitReduction::Mean => pass_rows as f64 / step_rows as f64,
    }
}
pub use dmpo::DmpoDiagnostics;

/// What an algorithm reads to update the policy on a rollout.
pub struct UpdateInputs<'a, AB: AutodiffBackend> {
    /// The run's recipe (algorithm settings).
    pub recipe: &'a Recipe,
    /// The scored rollout.
    pub rollout: &'a Rollout,
    /// The no-grad policy that generated the rollout.
    pub policy: ModelView<'a, AB::InnerBackend>,
    /// The reference policy.
    pub reference: ModelView<'a, AB::InnerBackend>,
    /// Where batches are built.
    pub device: &'a AB::Device,
    /// The peer computing this update: every peer holds the whole rollout and computes
    /// log-likelihoods and losses of its share of the rows only ([`Self::own_rows`]).
    pub peer: Peer,
}

impl<AB: AutodiffBackend> UpdateInputs<'_, AB> {
    /// The rows of the rollout this peer computes: its share of the rows, in whole
    /// [`Recipe::share_unit`]s.
    pub fn own_rows(&self) -> std::ops::Range<usize> {
        self.peer
            .share_rows(self.rollout.len(), self.recipe.share_unit())
    }
}

/// Seconds an algorithm spent scoring the rollout under the no-grad models (`elbo`) and in its
/// optimiser updates (`optimize`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseSeconds {
    /// Log-likelihoods (DMPO: ELBOs; diffu-GRPO: old and reference log-probs).
    pub elbo: f64,
    /// The `num_iterations` updates.
    pub optimize: f64,
}

/// What an algorithm's update of one rollout reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Diagnostics {
    /// DMPO's.
    Dmpo(DmpoDiagnostics),
    /// diffu-GRPO's or wd1's.
    DiffuGrpo(DiffuGrpoDiagnostics),
}

impl Diagnostics {
    /// Seconds per phase.
    pub fn seconds(&self) -> PhaseSeconds {
        match self {
            Self::Dmpo(d) => d.seconds,
            Self::DiffuGrpo(d) => d.seconds,
        }
    }

    /// The per-row advantages the update used (`None` when they could not be formed).
    pub fn advantages(&self) -> Option<&[f64]> {
        match self {
            Self::Dmpo(d) => d.advantages.as_deref(),
            Self::DiffuGrpo(d) => Some(&d.advantages),
        }
    }
}

/// What the optimiser updates of one rollout step did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateLog {
    /// Loss of every update (applied or skipped).
    pub losses: Vec<f64>,
    /// Pre-clip global gradient norm of every applied update.
    pub grad_norms: Vec<f64>,
    /// Learning rate of the last update (0 before any).
    pub lr: f64,
}

/// The model a loss pass differentiates, and where its training forwards checkpoint their
/// blocks when the recipe turns gradient checkpointing on (`train.gradient_checkpointing`).
pub struct PolicyPass<'a, AB: AutodiffBackend> {
    /// The trained model.
    pub model: &'a DiffusionLm<AB>,
    checkpoints: Option<&'a BlockCheckpoints<AB>>,
}

impl<'a, AB: AutodiffBackend> PolicyPass<'a, AB> {
    /// The policy as a denoiser (adapters on), its blocks checkpointed when asked.
    pub fn view(&self) -> ModelView<'a, AB> {
        ModelView::policy_checkpointed(self.model, self.checkpoints)
    }
}

/// The optimiser side of the updates: the optimiser, the schedule, the run's update counters
/// and the step's [`UpdateLog`].
pub struct Learner<'a, O> {
    optimizer: &'a mut O,
    train: &'a TrainSection,
    total_updates: usize,
    state: &'a mut TrainState,
    log: UpdateLog,
    peer: Peer,
}

impl<'a, O> Learner<'a, O> {
    /// A learner for one rollout step; `total_updates` spans the learning-rate schedule.
    pub fn new(
        optimizer: &'a mut O,
        train: &'a TrainSection,
        total_updates: usize,
        state: &'a mut TrainState,
    ) -> Self {
        Self {
            optimizer,
            train,
            total_updates,
            state,
            log: UpdateLog::default(),
            peer: Peer::single(),
        }
    }

    /// This learner on `peer` of a data-parallel run: losses and gradients are summed over the
    /// peers before the update, which every peer then applies alike.
    pub fn on_peer(mut self, peer: Peer) -> Self {
        self.peer = peer;
        self
    }

    /// One optimiser update: sums `loss_of` over the micro-batches `passes` (whole groups; a
    /// peer's own), accumulating gradients of the finite ones, sums losses and gradients over the
    /// peers, then clips globally and applies them (or skips the update when the loss or the
    /// gradient is not finite).
    pub fn update<AB>(
        &mut self,
        model: DiffusionLm<AB>,
        passes: &[Vec<usize>],
        rng: &mut ChaCha8Rng,
        mut loss_of: impl FnMut(&PolicyPass<'_, AB>, &[usize], &mut ChaCha8Rng) -> Result<Tensor<AB, 1>>,
    ) -> Result<DiffusionLm<AB>>
    where
        AB: AutodiffBackend,
        O: Optimizer<DiffusionLm<AB>, AB>,
    {
        let mut acc = GradientsAccumulator::<DiffusionLm<AB>>::new();
        let mut loss = 0.0;
        let checkpoints = self
            .train
            .gradient_checkpointing
            .then(BlockCheckpoints::<AB>::new);
        for pass in passes {
            let policy = PolicyPass {
                model: &model,
                checkpoints: checkpoints.as_ref(),
            };
            let out = loss_of(&policy, pass, rng)?;
            let value: f64 = out.clone().into_scalar().elem();
            loss += value;
            let grads = match (&checkpoints, value.is_finite()) {
                (_, false) => {
                    if let Some(c) = &checkpoints {
                        c.clear();
                    }
                    continue;
                }
                (Some(c), true) => c.gradients(&model, out.backward()),
                (None, true) => GradientsParams::from_grads(out.backward(), &model),
            };
            acc.accumulate(&model, grads);
        }
        // The peers' losses in rank order, and their gradients summed (identical on every
        // peer). A non-finite total skips the update on every peer alike, without the
        // all-reduce: a peer whose passes were all non-finite holds no gradient to send.
        let losses = self.peer.gather_each(loss)?;
        let loss: f64 = losses.iter().sum();
        let grads = if loss.is_finite() {
            self.peer.sum_gradients::<AB, _>(&model, acc.grads())?
        } else {
            acc.grads()
        };
        let t = self.train;
        self.log.lr = learning_rate(
            t,
            self.state.updates + self.state.skipped,
            self.total_updates,
        );
        let (model, outcome) = apply_update(
            model,
            self.optimizer,
            grads,
            loss,
            self.log.lr,
            t.max_grad_norm,
        );
        match outcome {
            UpdateOutcome::Applied { grad_norm } => {
                self.state.updates += 1;
                self.log.grad_norms.push(grad_norm);
            }
            UpdateOutcome::SkippedNonFinite => {
                self.state.skipped += 1;
                tracing::warn!(
                    "step {}: non-finite loss ({loss}) or gradient, update skipped",
                    self.state.step
                );
            }
        }
        self.log.losses.push(loss);
        Ok(model)
    }

    /// The log of the updates applied through this learner.
    pub fn finish(self) -> UpdateLog {
        self.log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference's gradient of one optimiser step, as a weight per row: `devices` GPUs, each
    /// taking `per_device` rows per micro-step; per device and micro-step the loss reduces its
    /// rows (`reduction`), HF divides by the accumulation steps, DDP averages over devices.
    fn reference_row_weights(
        reduction: UnitReduction,
        rows: usize,
        devices: usize,
        per_device: usize,
    ) -> Vec<f64> {
        let accumulation = rows / (devices * per_device);
        let within = match reduction {
            UnitReduction::Sum => 1.0,
            UnitReduction::Mean => 1.0 / per_device as f64,
        };
        vec![within / accumulation as f64 / devices as f64; rows]
    }

    /// Ours: every pass's loss (sum or mean over its rows) times [`pass_loss_factor`].
    fn our_row_weights(
        reduction: UnitReduction,
        rows: usize,
        pass: usize,
        unit: usize,
    ) -> Vec<f64> {
        let mut out = Vec::new();
        for start in (0..rows).step_by(pass) {
            let n = pass.min(rows - start);
            let within = match reduction {
                UnitReduction::Sum => 1.0,
                UnitReduction::Mean => 1.0 / n as f64,
            };
            let f = pass_loss_factor(reduction, n, rows, unit);
            out.extend(std::iter::repeat_n(within * f, n));
        }
        out
    }

    #[test]
    fn the_paper_geometry_gives_the_sum_over_64_rows_over_16() {
        // 64 rows = 8 GPUs x 4 rows x 2 accumulation steps; our passes of any size.
        for pass in [4, 16, 32, 64] {
            let ours = our_row_weights(UnitReduction::Sum, 64, pass, 4);
            assert!(
                ours.iter().all(|w| (w - 1.0 / 16.0).abs() < 1e-15),
                "pass {pass}"
            );
        }
    }

    #[test]
    fn any_device_count_and_micro_batch_give_the_reference_gradient() {
        for reduction in [UnitReduction::Sum, UnitReduction::Mean] {
            for devices in [1, 2, 4, 8, 16] {
                let reference = reference_row_weights(reduction, 64, devices, 4);
                for pass in [16, 32, 64] {
                    let ours = our_row_weights(reduction, 64, pass, 4);
                    for (a, b) in ours.iter().zip(&reference) {
                        assert!(
                            (a - b).abs() < 1e-15,
                            "{reduction:?} {devices} GPUs, pass {pass}"
                        );
                    }
                }
            }
        }
    }
}
