//! DMPO's update of a rollout (docs/algorithm.md §3–§4): ELBOs under the rollout policy and the reference on
//! shared masks, importance weights per group, then `num_iterations` WDCE or DDO updates with
//! fresh masks each.

use std::time::Instant;

use burn::optim::Optimizer;
use burn::tensor::{backend::AutodiffBackend, Tensor};
use dllm_model::Llada;
use dmpo_core::{
    ddo_loss, elbo_log_likelihood, rollout_weights, wdce_loss, DmpoLoss, LogitsModel, MaskOptions,
    WeightDiagnostics,
};
use rand_chacha::ChaCha8Rng;

use super::{pass_loss_factor, Learner, PhaseSeconds, PolicyPass, UnitReduction, UpdateInputs};
use crate::error::Result;

/// What a DMPO update reports.
#[derive(Debug, Clone, PartialEq)]
pub struct DmpoDiagnostics {
    /// The importance weights' diagnostics (ESS, `log_rnd`; docs/algorithm.md §4).
    pub weights: WeightDiagnostics,
    /// Per-row advantages under the recipe's baseline (`None` when it cannot form them).
    pub advantages: Option<Vec<f64>>,
    /// Seconds per phase.
    pub seconds: PhaseSeconds,
}

/// DMPO's `num_iterations` updates of `model` on `inputs.rollout`.
pub fn update<AB, O>(
    mut model: Llada<AB>,
    inputs: &UpdateInputs<'_, AB>,
    learner: &mut Learner<'_, O>,
    rng: &mut ChaCha8Rng,
) -> Result<(Llada<AB>, DmpoDiagnostics)>
where
    AB: AutodiffBackend,
    O: Optimizer<Llada<AB>, AB>,
{
    let (config, t, rollout) = (&inputs.recipe.dmpo, &inputs.recipe.train, inputs.rollout);
    let batch = rollout
        .sequences
        .to_device::<AB::InnerBackend>(inputs.device)?;

    // ELBO of each rollout under the rollout policy and the reference, same masks (§3).
    let clock = Instant::now();
    let models: [&dyn LogitsModel<AB::InnerBackend>; 2] = [&inputs.policy, &inputs.reference];
    let elbo = elbo_log_likelihood(
        &models,
        &batch,
        &MaskOptions::rollout(config),
        config.elbo_memory_budget_bytes,
        rng,
    )?;
    let elbo_seconds = clock.elapsed().as_secs_f64();

    // Importance weights per group (§4).
    let (weights, weight_diagnostics) = rollout_weights(
        &elbo.ell[0],
        &elbo.ell[1],
        &rollout.rewards,
        rollout.group_size,
        config,
    )?;
    let advantages = weights
        .advantages(
            config.baseline,
            config.centering_strength,
            config.baseline_rows,
            Some(&weights.ell_cur),
        )
        .ok();

    // num_iterations updates, fresh masks each (§4 WDCE / DDO).
    let clock = Instant::now();
    let passes = rollout.micro_batches(t.micro_batch);
    let (rows, unit) = (rollout.len(), t.loss_unit_rows());
    for _ in 0..t.num_iterations {
        let loss_of = |model: &PolicyPass<'_, AB>,
                       pass: &[usize],
                       rng: &mut ChaCha8Rng|
         -> Result<Tensor<AB, 1>> {
            let sub = rollout.sequences.select::<AB>(pass, inputs.device)?;
            let sub_weights = weights.select_rows(pass)?;
            let policy = model.view();
            // §5.2: the step's loss is the mean over units of `unit` rows of each unit's
            // loss; WDCE sums a unit's rows, DDO averages them.
            let (loss, reduction) = match config.loss {
                DmpoLoss::Wdce => (
                    wdce_loss(&policy, &sub, &sub_weights, config, rng)?.loss,
                    UnitReduction::Sum,
                ),
                DmpoLoss::Ddo => (
                    ddo_loss(&policy, &sub, &sub_weights, config, rng)?.loss,
                    UnitReduction::Mean,
                ),
            };
            Ok(loss * pass_loss_factor(reduction, pass.len(), rows, unit))
        };
        model = learner.update(model, &passes, rng, loss_of)?;
    }
    let seconds = PhaseSeconds {
        elbo: elbo_seconds,
        optimize: clock.elapsed().as_secs_f64(),
    };
    Ok((
        model,
        DmpoDiagnostics {
            weights: weight_diagnostics,
            advantages,
            seconds,
        },
    ))
}
