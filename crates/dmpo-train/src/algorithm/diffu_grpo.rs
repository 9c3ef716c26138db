//! The diffu-GRPO and wd1 updates of a rollout (docs/algorithm.md §6): group-normalised advantages; per
//! iteration a prompt mask with the old policy's (and, for diffu-GRPO with a KL term, the
//! reference's) one-step mean-field log-probs; then one update per iteration.

use std::time::Instant;

use burn::optim::Optimizer;
use burn::tensor::{backend::AutodiffBackend, backend::Backend, Tensor, TensorData};
use dllm_model::DiffusionLm;
use dmpo_core::batch::gather_rows;
use dmpo_core::{
    diffu_grpo_loss, grpo_advantages, mask_iteration, mean_field_logprobs, sample_prompt_mask,
    wd1_loss, ModelView, SequenceBatch,
};
use rand_chacha::ChaCha8Rng;

use super::{pass_loss_factor, Learner, PhaseSeconds, PolicyPass, UnitReduction, UpdateInputs};
use crate::error::Result;
use crate::recipe::Algorithm;

/// What a diffu-GRPO or wd1 update reports.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffuGrpoDiagnostics {
    /// Per-row group-normalised advantages (docs/algorithm.md §6).
    pub advantages: Vec<f64>,
    /// Mean over the updates' units of each unit's mean k3 KL to the reference over its
    /// completion tokens (`None` without a KL term, and for wd1).
    pub kl: Option<f64>,
    /// Mean over the updates' units of each unit's fraction of clipped completion tokens
    /// (`NaN` for wd1).
    pub clip_ratio: f64,
    /// Seconds per phase.
    pub seconds: PhaseSeconds,
}

/// One iteration's prompt mask and the no-grad log-probs `[rows, gen_len]` (row-major, on the
/// host) computed on it.
struct Iteration {
    /// `[rows * prompt_len]`: prompt positions masked in this iteration.
    prompt_mask: Vec<bool>,
    /// The rollout policy's log-probs.
    old_logp: Vec<f32>,
    /// The reference's log-probs, when the loss has a KL term.
    ref_logp: Option<Vec<f32>>,
}

/// diffu-GRPO's (`Algorithm::DiffuGrpo`) or wd1's (`Algorithm::Wd1`) `num_iterations` updates
/// of `model` on `inputs.rollout`.
pub fn update<AB, O>(
    mut model: DiffusionLm<AB>,
    inputs: &UpdateInputs<'_, AB>,
    learner: &mut Learner<'_, O>,
    rng: &mut ChaCha8Rng,
) -> Result<(DiffusionLm<AB>, DiffuGrpoDiagnostics)>
where
    AB: AutodiffBackend,
    O: Optimizer<DiffusionLm<AB>, AB>,
{
    let (recipe, rollout) = (inputs.recipe, inputs.rollout);
    let (config, t) = (&recipe.grpo, &recipe.train);
    let (peer, own) = (&inputs.peer, inputs.own_rows());
    let own_rows: Vec<usize> = own.clone().collect();
    let batch = rollout
        .sequences
        .select::<AB::InnerBackend>(&own_rows, inputs.device)?;
    let (rows, prompt_len, gen_len) = (rollout.len(), batch.prompt_len, batch.gen_len());

    let clock = Instant::now();
    let advantages = grpo_advantages(&rollout.rewards, rollout.group_size, config.scale_rewards)?;
    // Per iteration: a prompt mask, the old policy's and the reference's log-probs (§6).
    let with_reference = config.beta > 0.0 && t.algorithm == Algorithm::DiffuGrpo;
    let mut iterations = Vec::with_capacity(t.num_iterations);
    for _ in 0..t.num_iterations {
        // Every row's prompt mask is drawn (on every peer alike); a peer scores its own rows
        // and leaves the others' log-probs at zero (its passes never read them).
        let prompt_mask = sample_prompt_mask(rng, rows, prompt_len, config.p_mask_prompt);
        let own_mask = &prompt_mask[own.start * prompt_len..own.end * prompt_len];
        let all_rows = |logp: Vec<f32>| {
            let mut out = vec![0f32; rows * gen_len];
            out[own.start * gen_len..own.end * gen_len].copy_from_slice(&logp);
            out
        };
        let old_logp = all_rows(host_logprobs(&inputs.policy, &batch, own_mask)?);
        let ref_logp = if with_reference {
            Some(all_rows(host_logprobs(
                &inputs.reference,
                &batch,
                own_mask,
            )?))
        } else {
            None
        };
        iterations.push(Iteration {
            prompt_mask,
            old_logp,
            ref_logp,
        });
    }
    let elbo_seconds = clock.elapsed().as_secs_f64();

    let clock = Instant::now();
    let passes = rollout.micro_batches(own.clone(), t.micro_batch);
    let unit = t.loss_unit_rows();
    let units = (rows / unit) as f64;
    // Completion tokens of each row (up to and including the first EOS) and of each unit.
    let tokens: Vec<f64> = rollout
        .sequences
        .eos_index()
        .iter()
        .map(|&e| (e + 1).min(gen_len) as f64)
        .collect();
    let unit_tokens: Vec<f64> = tokens.chunks(unit).map(|c| c.iter().sum()).collect();
    // Per update and unit: clipped tokens and KL summed over the unit's tokens, from this
    // peer's runs of the unit (a unit may be split over passes and peers).
    let units_n = rows / unit;
    let mut clipped = vec![0f64; t.num_iterations * units_n];
    let mut kl_tokens = vec![0f64; t.num_iterations * units_n];
    let mut with_kl = false;
    for k in 0..t.num_iterations {
        // The iteration whose prompt mask (and log-probs on it) row `r` uses at this update.
        let source = |r: usize| {
            let i = mask_iteration(k, r, rows, config.d1_accumulation_steps, t.num_iterations);
            &iterations[i]
        };
        let loss_of = |model: &PolicyPass<'_, AB>,
                       pass: &[usize],
                       _: &mut ChaCha8Rng|
         -> Result<Tensor<AB, 1>> {
            let sub = rollout.sequences.select::<AB>(pass, inputs.device)?;
            let sub_mask = rows_of(pass, prompt_len, |r| &source(r).prompt_mask)?;
            let logp = mean_field_logprobs(&model.view(), &sub, &sub_mask)?;
            let sub_advantages: Vec<f64> = pass.iter().map(|&r| advantages[r]).collect();
            let completion_mask = sub.completion_mask_tensor();
            if t.algorithm == Algorithm::Wd1 {
                // §5.2: wd1 sums its rows, so a unit's loss is the sum over its rows.
                let loss = wd1_loss(logp, &sub_advantages, t.group_size, completion_mask)?;
                let f = pass_loss_factor(UnitReduction::Sum, pass.len(), rows, unit);
                return Ok(loss.loss * f);
            }
            let logps = |values: Vec<f32>| {
                Tensor::<AB, 2>::from_data(
                    TensorData::new(values, [pass.len(), gen_len]),
                    inputs.device,
                )
            };
            let old = logps(rows_of(pass, gen_len, |r| &source(r).old_logp)?);
            let reference = if with_reference {
                let of = |r| source(r).ref_logp.as_deref().unwrap_or_default();
                Some(logps(rows_of(pass, gen_len, of)?))
            } else {
                None
            };
            // §5.2: diffu-GRPO averages over the completion tokens of each unit (d1: one
            // group per device), then over the step's units. A pass holds runs of rows of one
            // unit; a run's token mean counts for its share of the unit's tokens, so a unit may
            // span passes.
            let mut loss = None;
            let mut start = 0;
            while start < pass.len() {
                let u = pass[start] / unit;
                let end = (start..pass.len())
                    .find(|&i| pass[i] / unit != u)
                    .unwrap_or(pass.len());
                let part = |x: Tensor<AB, 2>| x.narrow(0, start, end - start);
                let out = diffu_grpo_loss(
                    part(logp.clone()),
                    Some(part(old.clone())),
                    reference.clone().map(part),
                    &sub_advantages[start..end],
                    part(completion_mask.clone()),
                    config,
                )?;
                let run_tokens: f64 = pass[start..end].iter().map(|&r| tokens[r]).sum();
                clipped[k * units_n + u] += out.diagnostics.clip_ratio * run_tokens;
                if let Some(kl) = out.diagnostics.kl {
                    kl_tokens[k * units_n + u] += kl * run_tokens;
                    with_kl = true;
                }
                let share = run_tokens / unit_tokens[u] / units;
                let run_loss = out.loss * share;
                loss = Some(match loss {
                    None => run_loss,
                    Some(l) => l + run_loss,
                });
                start = end;
            }
            Ok(loss.expect("a pass holds at least one unit"))
        };
        model = learner.update(model, &passes, rng, loss_of)?;
    }
    let seconds = PhaseSeconds {
        elbo: elbo_seconds,
        optimize: clock.elapsed().as_secs_f64(),
    };
    // Means over the updates' units of each unit's token mean, the same for any split of the
    // units over passes and peers: every peer's partial sums gathered by rank, summed per unit.
    let per_unit_mean = |partial: &[f64]| -> Result<f64> {
        let n = partial.len();
        let all = peer.gather(partial, peer.rank * n, peer.count * n)?;
        let means: Vec<f64> = (0..n)
            .map(|i| {
                let sum: f64 = (0..peer.count).map(|p| all[p * n + i]).sum();
                sum / unit_tokens[i % units_n].max(1.0)
            })
            .collect();
        Ok(means.iter().sum::<f64>() / means.len() as f64)
    };
    let wd1 = t.algorithm == Algorithm::Wd1;
    let clip_ratio = if wd1 {
        f64::NAN
    } else {
        per_unit_mean(&clipped)?
    };
    let with_kl = peer
        .gather_each(f64::from(u8::from(with_kl)))?
        .iter()
        .any(|&v| v > 0.0);
    let kl = if with_kl {
        Some(per_unit_mean(&kl_tokens)?)
    } else {
        None
    };
    Ok((
        model,
        DiffuGrpoDiagnostics {
            advantages,
            kl,
            clip_ratio,
            seconds,
        },
    ))
}

/// Row `r` of `source(r)` (a row-major host matrix of rows of `width`) for every row `r` of
/// `pass`, concatenated: each row reads the iteration its mask schedule picks.
fn rows_of<'a, T: Copy + 'a>(
    pass: &[usize],
    width: usize,
    source: impl Fn(usize) -> &'a [T],
) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(pass.len() * width);
    for &r in pass {
        out.extend(gather_rows(source(r), width, &[r])?);
    }
    Ok(out)
}

/// `model`'s one-step mean-field log-probs of `batch` under `prompt_mask`, as row-major `f32` on
/// the host.
fn host_logprobs<B: Backend>(
    model: &ModelView<'_, B>,
    batch: &SequenceBatch<B>,
    prompt_mask: &[bool],
) -> Result<Vec<f32>> {
    let logp = mean_field_logprobs(model, batch, prompt_mask)?;
    Ok(logp
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 data"))
}
