//! DMPO's update of a rollout (docs/algorithm.md §3–§4): ELBOs under the rollout policy and the reference on
//! shared masks, importance weights per group, then `num_iterations` WDCE or DDO updates with
//! fresh masks each.

use std::time::Instant;

use burn::optim::Optimizer;
use burn::tensor::{backend::AutodiffBackend, Tensor};
use dllm_model::DiffusionLm;
use dmpo_core::{
    ddo_loss_with_masks, elbo_with_masks, rollout_weights, wdce_loss_with_masks, DmpoConfig,
    DmpoLoss, LogitsModel, MaskOptions, ReplicateMasks, WeightDiagnostics,
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
    mut model: DiffusionLm<AB>,
    inputs: &UpdateInputs<'_, AB>,
    learner: &mut Learner<'_, O>,
    rng: &mut ChaCha8Rng,
) -> Result<(DiffusionLm<AB>, DmpoDiagnostics)>
where
    AB: AutodiffBackend,
    O: Optimizer<DiffusionLm<AB>, AB>,
{
    let (config, t, rollout) = (&inputs.recipe.dmpo, &inputs.recipe.train, inputs.rollout);
    let (peer, device) = (&inputs.peer, inputs.device);
    let (rows, own) = (rollout.len(), inputs.own_rows());
    let own_rows: Vec<usize> = own.clone().collect();
    let (eos, gen_len) = (rollout.sequences.eos_index(), rollout.sequences.gen_len());

    // ELBO of each rollout under the rollout policy and the reference, same masks (§3). The
    // masks of every row are drawn (on every peer alike); a peer evaluates its own rows. With
    // `rollout_elbo = false`, the log-likelihoods ROAR recorded while sampling instead (§4.2).
    let clock = Instant::now();
    let (ell_cur, ell_ref) = match (&rollout.sampler_log_likelihoods, config.rollout_elbo) {
        (Some(recorded), false) => (recorded.policy.clone(), recorded.reference.clone()),
        (None, false) => {
            return Err(crate::error::TrainError::Data(
                "dmpo.rollout_elbo = false, but the rollout recorded no log-likelihoods (it \
                 needs rollout.method = \"roar\")"
                    .into(),
            ))
        }
        (_, true) => {
            let batch = rollout
                .sequences
                .select::<AB::InnerBackend>(&own_rows, device)?;
            let masks = ReplicateMasks::sample(rng, eos, gen_len, &MaskOptions::rollout(config))?;
            let models: [&dyn LogitsModel<AB::InnerBackend>; 2] =
                [&inputs.policy, &inputs.reference];
            let elbo = elbo_with_masks(
                &models,
                &batch,
                &masks.select_samples(&own_rows)?,
                config.elbo_memory_budget_bytes,
            )?;
            (
                peer.gather(&elbo[0], own.start, rows)?,
                peer.gather(&elbo[1], own.start, rows)?,
            )
        }
    };
    let elbo_seconds = clock.elapsed().as_secs_f64();

    // Importance weights per group (§4), over the whole rollout on every peer.
    let (weights, weight_diagnostics) = rollout_weights(
        &ell_cur,
        &ell_ref,
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

    // num_iterations updates, fresh masks each (§4 WDCE / DDO): every row's drawn, each pass
    // takes its rows', so a row's masks do not depend on the pass or the peer it falls in.
    let clock = Instant::now();
    let passes = rollout.micro_batches(own, t.micro_batch);
    let unit = t.loss_unit_rows();
    // A pass holds whole baseline slices (a peer's share may end inside a group): its weights
    // are grouped by slice, so its advantages are the whole rollout's.
    let slice = config.baseline_slice(rollout.group_size);
    let pass_config = DmpoConfig {
        baseline_rows: 0,
        ..config.clone()
    };
    for _ in 0..t.num_iterations {
        let masks = ReplicateMasks::sample(rng, eos, gen_len, &MaskOptions::from(config))?;
        let loss_of = |model: &PolicyPass<'_, AB>,
                       pass: &[usize],
                       _: &mut ChaCha8Rng|
         -> Result<Tensor<AB, 1>> {
            let sub = rollout.sequences.select::<AB>(pass, device)?;
            let sub_weights = weights.select_slices(pass, slice)?;
            let sub_masks = masks.select_samples(pass)?;
            let policy = model.view();
            // §5.2: the step's loss is the mean over units of `unit` rows of each unit's
            // loss; WDCE sums a unit's rows, DDO averages them.
            let (loss, reduction) = match config.loss {
                DmpoLoss::Wdce => (
                    wdce_loss_with_masks(&policy, &sub, &sub_weights, &pass_config, &sub_masks)?
                        .loss,
                    UnitReduction::Sum,
                ),
                DmpoLoss::Ddo => (
                    ddo_loss_with_masks(&policy, &sub, &sub_weights, &pass_config, &sub_masks)?
                        .loss,
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
