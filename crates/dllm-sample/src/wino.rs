//! WINO, wide-in narrow-out decoding (docs/algorithm.md §2.8): the reference's `decoding_wino`
//! (DMPO's `fast_samplers/wino/generate.py`), one row at a time as there, the rows of a batch
//! run side by side.
//!
//! Per block, a shadow of the block — `block_length` mask tokens standing at the block's
//! positions — is scored with the sequence. The sequence does not see the shadow; shadow token
//! `i` sees the whole sequence but block position `i`, and the whole shadow. Each step:
//!
//! 1. wide in: every masked position up to the block's end whose confidence `p(x0)` is above
//!    `wino_threshold` (`>`) is accepted, at most `min(max(⌊0.7 · masked⌋, 5), 20)` of them (the
//!    most confident), at least one (the most confident);
//! 2. narrow out, when more than one was accepted: tokens accepted in earlier steps whose shadow
//!    gives them a probability below `wino_threshold_back` (`<`) are masked again; when they
//!    are as many as the previous step accepted (30 before the first), only the `that − 1`
//!    least probable are.
//!
//! The block ends when no position up to its end is masked. A position whose accepted token is
//! the mask id counts as decoded (as in the reference), and is decoded again in the next block.
//!
//! The reference runs the sequence and its shadow as one input; here the shadow is a second
//! pass over the first pass's keys and values ([`DiffusionLm::forward_shadow`]), equal in
//! value, counted with it as one model evaluation, and run only in the steps whose scores it
//! decides (a row accepted more than one token and holds tokens accepted earlier), with the LM
//! head only at those tokens. Neither caches across steps: a prefix cache
//! would serve the sequence's prefix as in Fast-dLLM, but the shadow's scores of accepted tokens
//! would then come from stale keys, which the reference never computes.
//!
//! [`DiffusionLm::forward_shadow`]: dllm_model::DiffusionLm::forward_shadow

use burn::tensor::{activation::log_softmax, backend::Backend, Int, Tensor, TensorData};
use dllm_model::{ForwardOptions, KvCache, LogitPositions};

use crate::generate::{host_floats, Generation, Sampler, StepEvent};
use crate::SampleError;

/// How many tokens the step before the first is taken to have accepted (the reference's
/// `last_accept = 30`).
const FIRST_LAST_ACCEPT: usize = 30;

/// One row's state inside a block.
struct RowState {
    /// Masked (not yet accepted) positions of the sequence, up to the block's end.
    masked: Vec<bool>,
    /// Block offsets whose token was accepted (the shadow scores them).
    accepted: Vec<bool>,
    /// Tokens accepted by the row's previous step.
    last_accept: usize,
}

impl<'m, B: Backend> Sampler<'m, B> {
    /// WINO over every block; see the module doc.
    pub(crate) fn run_wino(
        mut self,
        observer: &mut dyn FnMut(&StepEvent<'_>),
    ) -> Result<Generation, SampleError> {
        self.refuse_shifted_logits("wino")?;
        let c = self.config;
        let block_length = c.block_length;
        let mut step = 0usize;
        for block in 0..c.gen_length / block_length {
            let start = self.prompt_len + block * block_length;
            let end = start + block_length;
            let mut states: Vec<RowState> = (0..self.batch)
                .map(|b| RowState {
                    masked: self.row(b)[..end]
                        .iter()
                        .map(|&t| t == self.mask_id)
                        .collect(),
                    accepted: vec![false; block_length],
                    last_accept: FIRST_LAST_ACCEPT,
                })
                .collect();
            // Each step accepts at least one position and re-masks fewer than the step before
            // accepted, so a block ends within (masked positions + 30) steps; the bound guards
            // against a hang should that reasoning ever fail.
            let bound = end + FIRST_LAST_ACCEPT + 1;
            for _ in 0..bound {
                let active: Vec<usize> = (0..self.batch)
                    .filter(|&b| states[b].masked.contains(&true))
                    .collect();
                if active.is_empty() {
                    break;
                }
                self.wino_step(&active, &mut states, start, end, step)?;
                self.observe(observer, step, block);
                step += 1;
            }
            if states.iter().any(|s| s.masked.contains(&true)) {
                return Err(SampleError::Config(format!(
                    "WINO did not finish block {block} within {bound} steps"
                )));
            }
        }
        Ok(self.finish(step))
    }

    /// One WINO step for the rows `active`.
    fn wino_step(
        &mut self,
        active: &[usize],
        states: &mut [RowState],
        start: usize,
        end: usize,
        step: usize,
    ) -> Result<(), SampleError> {
        let (threshold, threshold_back) = self.config.wino_thresholds();
        let lo = active
            .iter()
            .filter_map(|&b| states[b].masked.iter().position(|&m| m))
            .min()
            .unwrap_or(start)
            .min(start);
        let n = end - lo;

        // The sequence, its logits from `lo` to the block's end, its keys and values kept for
        // the shadow.
        let ids: Vec<i64> = active.iter().flat_map(|&b| self.row(b).to_vec()).collect();
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(ids, [active.len(), self.total]),
            &self.device,
        );
        let options = ForwardOptions {
            key_padding: self.key_padding_of(active),
            adapter: self.config.adapter,
        };
        let mut cache = KvCache::new();
        let logits = self.model.forward_fill_cache(
            ids,
            &options,
            &LogitPositions::Range(lo..end),
            &mut cache,
        );
        self.nfe += 1;
        let (x0, conf) = self.candidates_of(logits, active)?;

        // Wide in: each row's accepted positions, most confident first.
        let accepted_now: Vec<Vec<usize>> = active
            .iter()
            .enumerate()
            .map(|(a, &b)| {
                let state = &states[b];
                let masked_count = state.masked.iter().filter(|&&m| m).count();
                // `int(mask_index_block.sum() * 0.7)`: an integer times a float is f32 in torch.
                let wide = ((masked_count as f32 * 0.7) as usize).clamp(5, 20);
                let mut cands: Vec<(usize, f32)> = (lo..end)
                    .filter(|&p| state.masked[p])
                    .map(|p| (p, conf[a * n + p - lo]))
                    .collect();
                // Highest confidence first; ties go to the earlier position.
                cands.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
                let above = cands.iter().filter(|c| c.1 as f64 > threshold).count();
                let take = above.clamp(1, wide).min(cands.len());
                cands[..take].iter().map(|c| c.0).collect()
            })
            .collect();

        // Narrow out, where more than one was accepted: the shadow's probabilities of the
        // tokens accepted before this step. The shadow pass runs only when some row needs them.
        let scored: Vec<(usize, usize)> = active
            .iter()
            .enumerate()
            .filter(|&(a, _)| accepted_now[a].len() > 1)
            .flat_map(|(a, &b)| {
                let accepted = &states[b].accepted;
                (0..accepted.len())
                    .filter(move |&i| accepted[i])
                    .map(move |i| (a, i))
            })
            .collect();
        let back = self.shadow_probabilities(active, &scored, start, end, &options, &cache);

        for (a, &b) in active.iter().enumerate() {
            let state = &mut states[b];
            let take = accepted_now[a].len();
            let shadow_conf: Vec<(usize, f32)> = scored
                .iter()
                .zip(&back)
                .filter(|((row, _), _)| *row == a)
                .map(|(&(_, i), &p)| (i, p))
                .collect();
            let mut remask: Vec<(usize, f32)> = shadow_conf
                .iter()
                .copied()
                .filter(|c| (c.1 as f64) < threshold_back)
                .collect();
            if remask.len() >= state.last_accept {
                remask = shadow_conf;
                // Least probable first; ties go to the earlier offset.
                remask.sort_by(|x, y| x.1.total_cmp(&y.1).then(x.0.cmp(&y.0)));
                remask.truncate(state.last_accept - 1);
            }

            for &p in &accepted_now[a] {
                self.put(b, p, x0[a * n + p - lo], step);
                state.masked[p] = false;
                if p >= start {
                    state.accepted[p - start] = true;
                }
            }
            for &(i, _) in &remask {
                self.put(b, start + i, self.mask_id, step);
                state.masked[start + i] = true;
                state.accepted[i] = false;
            }
            state.last_accept = take;
        }
        Ok(())
    }

    /// The shadow's probability of the token at block offset `i` of row `active[a]`, for each
    /// `(a, i)` of `scored`: a shadow pass of the rows `active` against `cache` (their sequence's
    /// keys and values), the LM head only at those offsets. Nothing when `scored` is empty.
    fn shadow_probabilities(
        &self,
        active: &[usize],
        scored: &[(usize, usize)],
        start: usize,
        end: usize,
        options: &ForwardOptions<B>,
        cache: &KvCache<B>,
    ) -> Vec<f32> {
        if scored.is_empty() {
            return Vec::new();
        }
        let block_length = end - start;
        let shadow = Tensor::<B, 2, Int>::from_data(
            TensorData::new(
                vec![self.mask_id; active.len() * block_length],
                [active.len(), block_length],
            ),
            &self.device,
        );
        let at: Vec<i64> = scored
            .iter()
            .map(|&(a, i)| (a * block_length + i) as i64)
            .collect();
        let at = LogitPositions::Flat(Tensor::from_data(
            TensorData::new(at, [scored.len()]),
            &self.device,
        ));
        let logits = self
            .model
            .forward_shadow(shadow, start, options, &at, cache);
        let tokens: Vec<i64> = scored
            .iter()
            .map(|&(a, i)| self.row(active[a])[start + i])
            .collect();
        let index = Tensor::<B, 3, Int>::from_data(
            TensorData::new(tokens, [1, scored.len(), 1]),
            &self.device,
        );
        host_floats(log_softmax(logits, 2).gather(2, index).exp())
    }

    /// Refuses a model whose logits are shifted (Dream): `method`'s reference runs LLaDA's model.
    pub(crate) fn refuse_shifted_logits(&self, method: &str) -> Result<(), SampleError> {
        if self.model.config.family.shifts_logits() {
            return Err(SampleError::Config(format!(
                "the {method} sampler is defined on LLaDA's model (its reference runs LLaDA's code); \
                 a {} model is not supported: use method = \"dream\"",
                self.model.config.family.name()
            )));
        }
        Ok(())
    }
}
