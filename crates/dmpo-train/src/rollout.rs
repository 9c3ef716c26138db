//! The data of a rollout step (docs/algorithm.md §5): the step's prompts, `G` completions of each sampled
//! from the policy, their rewards, gathered into one [`Rollout`] that the algorithms read.

use std::collections::BTreeMap;
use std::ops::Range;

use burn::tensor::backend::Backend;
use dllm_model::{ChatTokenizer, DiffusionLm};
use dllm_sample::{generate_rows, Generation, RowPlacement, SamplerConfig};
use dmpo_core::weights::{mean_group_std, zero_variance_fraction};
use dmpo_core::HostBatch;
use rewards::{Task, TaskItem};

use crate::distributed::Peer;
use crate::error::{Result, TrainError};
use crate::recipe::Recipe;
use crate::tasks::{completion_text_as, prompt_ids, TrainData};
use crate::trainer::{stream_seed, SAMPLER_STREAM};

/// Where a run's rollouts come from: the recipe, its task and training data, the tokenizer.
#[derive(Clone)]
pub struct RolloutSource<'a> {
    /// The run's recipe (prompt style, sampler, group size, seed).
    pub recipe: &'a Recipe,
    /// The task whose rewards score the completions.
    pub task: Task,
    /// Encodes prompts and decodes completions.
    pub tokenizer: &'a ChatTokenizer,
    /// The training prompts.
    pub data: &'a TrainData,
}

/// The completions sampled for a step's rows (or a peer's share of them), not yet scored.
pub struct Samples {
    /// The task items of the whole step, one per prompt (group).
    items: Vec<TaskItem>,
    /// The step's row index of the first sampled row.
    first_row: usize,
    /// Whether some prompt of the whole step is left-padded (the step's rows then carry a key
    /// padding mask when the sampler masks padding).
    step_padded: bool,
    /// `G` completions per prompt, contiguous.
    generation: Generation,
    /// The policy's end-of-sequence id.
    eos_token_id: u32,
}

/// A scored rollout: the sequences and rewards of a step, groups of `G` rows contiguous.
pub struct Rollout {
    /// Padded prompt + completion of every row, in the layout of [`dmpo_core::SequenceBatch`].
    pub sequences: HostBatch,
    /// Completions per prompt `G`.
    pub group_size: usize,
    /// Reward of each row.
    pub rewards: Vec<f64>,
    /// Mean over the rows of each reward component.
    pub reward_components: BTreeMap<String, f64>,
    /// Each reward component of every row (0 where a row's reward has no such component).
    pub reward_component_rows: BTreeMap<String, Vec<f64>>,
    /// The text the reward read for the step's first row (logged as a sample, as TRL's
    /// `log_completions`).
    pub sample_completion: String,
    /// With `dmpo.rollout_elbo = false`: each row's log-likelihood under the rollout policy and
    /// under the reference, the sums of the per-token log-probabilities ROAR recorded.
    pub sampler_log_likelihoods: Option<SamplerLogLikelihoods>,
}

/// Per-row sequence log-likelihoods recorded by the sampler (ROAR), in row order.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerLogLikelihoods {
    /// Under the policy that sampled the rows.
    pub policy: Vec<f64>,
    /// Under the reference (the model without its adapter).
    pub reference: Vec<f64>,
}

impl RolloutSource<'_> {
    /// Rows `rows` of step `step` (all of them on one device, a peer's share otherwise; row
    /// `r` is completion `r % G` of prompt `r / G`) from `policy`: the sampler seeded for the
    /// step, every row with its own random stream and the whole step's prompt length, so a
    /// row's completion does not depend on which peer samples it.
    pub fn sample<B: Backend>(
        &self,
        policy: &DiffusionLm<B>,
        step: usize,
        rows: Range<usize>,
    ) -> Result<Samples> {
        let (recipe, t) = (self.recipe, &self.recipe.train);
        let items = self.data.batch(recipe.run.seed, step, t.prompts_per_step)?;
        let ids = items
            .iter()
            .map(|item| {
                prompt_ids(
                    self.tokenizer,
                    item,
                    recipe.task.prompt_style,
                    false,
                    recipe.task.max_prompt_tokens,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let prompt_len = ids.iter().map(Vec::len).max().unwrap_or(0);
        let step_padded = ids.iter().any(|p| p.len() < prompt_len);
        let prompts: Vec<Vec<u32>> = rows
            .clone()
            .map(|r| ids[r / t.group_size].clone())
            .collect();
        let mut sampler = recipe.rollout.clone();
        sampler.seed = stream_seed(recipe.run.seed, step, SAMPLER_STREAM);
        sampler.adapter = true;
        sampler.reference_log_probs = !recipe.dmpo.rollout_elbo;
        let placement = RowPlacement {
            first_row: rows.start,
            prompt_len: Some(prompt_len),
        };
        Ok(Samples {
            items,
            first_row: rows.start,
            step_padded,
            generation: generate_rows(policy, &prompts, &sampler, placement)?,
            eos_token_id: policy.config.eos_token_id,
        })
    }

    /// Scores `samples` with the task's training reward and gathers them into a [`Rollout`].
    pub fn score(&self, samples: Samples) -> Result<Rollout> {
        let group_size = self.recipe.train.group_size;
        let generation = &samples.generation;
        let rows = generation.completions.len();
        let mut rewards = Vec::with_capacity(rows);
        let mut component_rows = BTreeMap::<String, Vec<f64>>::new();
        let mut sample_completion = String::new();
        for (row, ids) in generation.completions.iter().enumerate() {
            let text = completion_text_as(
                self.tokenizer,
                ids,
                samples.eos_token_id,
                self.recipe.task.reward_text,
            )?;
            let item = &samples.items[(samples.first_row + row) / group_size];
            let r = rewards::training_reward(self.task, &text, item)?;
            if row == 0 {
                sample_completion = text;
            }
            for (name, v) in &r.components {
                let values = component_rows.entry(name.to_string()).or_default();
                values.resize(row, 0.0);
                values.push(*v);
            }
            rewards.push(r.total());
        }
        for values in component_rows.values_mut() {
            values.resize(rows, 0.0);
        }
        let padded = samples.step_padded;
        Ok(Rollout {
            sequences: host_batch_padded(generation, &self.recipe.rollout, padded)?,
            group_size,
            rewards,
            reward_components: means(&component_rows),
            reward_component_rows: component_rows,
            sample_completion,
            sampler_log_likelihoods: sampler_log_likelihoods(generation),
        })
    }
}

/// The sums over each completion of the token log-probabilities `generation` recorded under
/// the policy and the reference, when it recorded both (every token of the completion, EOS and
/// what follows included, as the reference with its default `log_rnd_omit_eos = false`).
fn sampler_log_likelihoods(generation: &Generation) -> Option<SamplerLogLikelihoods> {
    let sums = |rows: &Vec<Vec<f32>>| -> Vec<f64> {
        rows.iter()
            .map(|r| r.iter().map(|&v| f64::from(v)).sum())
            .collect()
    };
    match (
        &generation.token_log_probs,
        &generation.reference_token_log_probs,
    ) {
        (Some(policy), Some(reference)) => Some(SamplerLogLikelihoods {
            policy: sums(policy),
            reference: sums(reference),
        }),
        _ => None,
    }
}

/// The mean of each component over its rows, summed in row order (the same for any split of
/// the rows over peers, once gathered).
fn means(rows: &BTreeMap<String, Vec<f64>>) -> BTreeMap<String, f64> {
    rows.iter()
        .map(|(name, values)| {
            let sum: f64 = values.iter().sum();
            (name.clone(), sum / values.len().max(1) as f64)
        })
        .collect()
}

impl Rollout {
    /// The whole step's `rows` rows on every peer, from each peer's rollout of its rows
    /// starting at `first`: ids, EOS positions, key padding, rewards and reward components
    /// gathered exactly; the sample completion is the leader's first row. The identity on one
    /// peer.
    pub fn gather(self, peer: &Peer, first: usize, rows: usize) -> Result<Self> {
        if peer.count == 1 {
            return Ok(self);
        }
        let g = self.group_size;
        let s = &self.sequences;
        let (seq_len, prompt_len) = (s.seq_len(), s.prompt_len());
        let ids: Vec<u32> = s.ids().iter().map(|&x| x as u32).collect();
        let ids = peer.gather_ids(&ids, first * seq_len, rows * seq_len)?;
        let eos: Vec<u32> = s.eos_index().iter().map(|&e| e as u32).collect();
        let eos = peer.gather_ids(&eos, first, rows)?;
        let padding = match s.key_padding() {
            Some(p) => {
                let p: Vec<u32> = p.iter().map(|&b| u32::from(b)).collect();
                let all = peer.gather_ids(&p, first * seq_len, rows * seq_len)?;
                Some(all.iter().map(|&b| b != 0).collect())
            }
            None => None,
        };
        let rewards = peer.gather(&self.rewards, first, rows)?;
        // Every row of a task scores the same components: the peers' maps share their keys.
        let names = peer.gather_each(self.reward_component_rows.len() as f64)?;
        if names
            .iter()
            .any(|&n| n != self.reward_component_rows.len() as f64)
        {
            return Err(TrainError::Distributed(format!(
                "the peers' rollouts score different reward components ({names:?} of them)"
            )));
        }
        let mut component_rows = BTreeMap::new();
        for (name, values) in self.reward_component_rows {
            component_rows.insert(name, peer.gather(&values, first, rows)?);
        }
        let sampler_log_likelihoods = match self.sampler_log_likelihoods {
            Some(l) => Some(SamplerLogLikelihoods {
                policy: peer.gather(&l.policy, first, rows)?,
                reference: peer.gather(&l.reference, first, rows)?,
            }),
            None => None,
        };
        let sequences = HostBatch::new(
            ids.iter().map(|&x| i64::from(x)).collect(),
            seq_len,
            prompt_len,
            eos.iter().map(|&e| e as usize).collect(),
            padding,
        )?;
        Ok(Self {
            sequences,
            group_size: g,
            rewards,
            reward_components: means(&component_rows),
            reward_component_rows: component_rows,
            sample_completion: self.sample_completion,
            sampler_log_likelihoods,
        })
    }
}

/// The sequences of `generation` (sampled with `sampler`) on the host, with the key padding of
/// the left-padded prompts when the sampler masks padding and some row is padded.
pub fn host_batch(generation: &Generation, sampler: &SamplerConfig) -> Result<HostBatch> {
    let padded = generation.pad_lengths.iter().any(|&p| p > 0);
    host_batch_padded(generation, sampler, padded)
}

/// [`host_batch`], with the key padding when the sampler masks padding and `padded` (some row
/// of the whole step is padded, whether or not one of these is).
fn host_batch_padded(
    generation: &Generation,
    sampler: &SamplerConfig,
    padded: bool,
) -> Result<HostBatch> {
    let prompt_len = generation.prompt_len();
    let gen_len = sampler.gen_length;
    let seq_len = prompt_len + gen_len;
    let ids: Vec<i64> = generation
        .sequences()
        .iter()
        .flatten()
        .map(|&t| t as i64)
        .collect();
    let eos_index = generation
        .eos_position
        .iter()
        .map(|e| e.unwrap_or(gen_len))
        .collect();
    // No row padded: no mask (the same computation, without the masked attention path).
    let padding = (sampler.padding_mask && padded).then(|| {
        generation
            .pad_lengths
            .iter()
            .flat_map(|&p| (0..seq_len).map(move |i| i < p))
            .collect()
    });
    Ok(HostBatch::new(
        ids, seq_len, prompt_len, eos_index, padding,
    )?)
}

impl Rollout {
    /// Number of rows (prompts times `G`).
    pub fn len(&self) -> usize {
        self.rewards.len()
    }

    /// Whether the rollout holds no row.
    pub fn is_empty(&self) -> bool {
        self.rewards.is_empty()
    }

    /// Mean completion length in tokens, up to and including the first EOS (TRL's
    /// `completion_length`).
    pub fn completion_length_mean(&self) -> f64 {
        let gen_len = self.sequences.gen_len();
        let eos = self.sequences.eos_index();
        eos.iter()
            .map(|&e| (e + 1).min(gen_len) as f64)
            .sum::<f64>()
            / eos.len().max(1) as f64
    }

    /// Completion tokens generated.
    pub fn generated_tokens(&self) -> usize {
        self.sequences.len() * self.sequences.gen_len()
    }

    /// Mean reward over the rows (`NaN` when empty).
    pub fn reward_mean(&self) -> f64 {
        if self.rewards.is_empty() {
            f64::NAN
        } else {
            self.rewards.iter().sum::<f64>() / self.rewards.len() as f64
        }
    }

    /// Mean within-group reward standard deviation.
    pub fn reward_std(&self) -> f64 {
        mean_group_std(&self.rewards, self.group_size)
    }

    /// Fraction of groups whose rewards are constant ([`dmpo_core::weights::rewards_are_constant`]).
    pub fn zero_variance_fraction(&self) -> f64 {
        zero_variance_fraction(&self.rewards, self.group_size)
    }

    /// The rows `rows` (all of them, or a peer's share) split into micro-batches of
    /// `micro_batch` rows rounded down to whole groups (one group at least), in order from
    /// `rows.start`: whole groups when `rows` starts at a group, runs of a group otherwise.
    pub fn micro_batches(&self, rows: Range<usize>, micro_batch: usize) -> Vec<Vec<usize>> {
        let groups_per_pass = (micro_batch / self.group_size).max(1);
        rows.collect::<Vec<_>>()
            .chunks(groups_per_pass * self.group_size)
            .map(|c| c.to_vec())
            .collect()
    }
}
