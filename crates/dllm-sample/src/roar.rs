//! ROAR, random-order autoregression per block (docs/algorithm.md §2.9): the rollout sampler of
//! DMPO's trainer (`generate_and_compute_log_rnd` in the reference's `dmpo_trainer.py`).
//!
//! Each block draws a uniformly random order of its positions per row (the argsort of uniform
//! draws); step `d` runs the model on the whole sequence and draws the token at each row's
//! `d`-th position from `softmax(logits)` at `temperature` (Gumbel-max; argmax at 0), so a
//! completion of `gen_length` tokens takes `gen_length` model evaluations. Each drawn token's
//! untempered log-probability is recorded ([`Generation::token_log_probs`]); with
//! [`SamplerConfig::reference_log_probs`], also its log-probability under the model without its
//! adapter on the same input, one more pass per step. Their sums over a completion are the
//! exact log-likelihoods of the random-order factorisation the completion was drawn by, which
//! DMPO can use in place of the ELBO (docs/algorithm.md §4.2). The reference keeps them in bf16;
//! here they stay f32.
//!
//! [`SamplerConfig::reference_log_probs`]: crate::SamplerConfig::reference_log_probs

use burn::tensor::{activation::log_softmax, backend::Backend, Int, Tensor, TensorData};
use dllm_model::{ForwardOptions, LogitPositions};
use rand::Rng;

use crate::generate::{host_floats, Generation, Sampler, StepEvent};
use crate::SampleError;

impl<'m, B: Backend> Sampler<'m, B> {
    /// ROAR over every block; see the module doc.
    pub(crate) fn run_roar(
        mut self,
        observer: &mut dyn FnMut(&StepEvent<'_>),
    ) -> Result<Generation, SampleError> {
        self.refuse_shifted_logits("roar")?;
        let c = self.config;
        let block_length = c.block_length;
        let mut policy = vec![vec![0f32; c.gen_length]; self.batch];
        let mut reference = c
            .reference_log_probs
            .then(|| vec![vec![0f32; c.gen_length]; self.batch]);
        let mut step = 0usize;
        for block in 0..c.gen_length / block_length {
            let start = self.prompt_len + block * block_length;
            let orders: Vec<Vec<usize>> = (0..self.batch)
                .map(|b| random_order(&mut self.rngs[b], block_length))
                .collect();
            for d in 0..block_length {
                let positions: Vec<usize> = orders.iter().map(|o| start + o[d]).collect();
                let logits = self.logits_at(&positions, c.adapter);
                let (x0, _) = self.candidates(logits.clone())?;
                let drawn = token_log_probs(logits, &x0, &self.device);
                let drawn_reference = match reference {
                    Some(_) => Some(token_log_probs(
                        self.logits_at(&positions, false),
                        &x0,
                        &self.device,
                    )),
                    None => None,
                };
                for (b, &p) in positions.iter().enumerate() {
                    self.put(b, p, x0[b], step);
                    let offset = p - self.prompt_len;
                    policy[b][offset] = drawn[b];
                    if let (Some(r), Some(lp)) = (reference.as_mut(), drawn_reference.as_ref()) {
                        r[b][offset] = lp[b];
                    }
                }
                self.observe(observer, step, block);
                step += 1;
            }
        }
        Ok(Generation {
            token_log_probs: Some(policy),
            reference_token_log_probs: reference,
            ..self.finish(step)
        })
    }

    /// Logits `[batch, 1, vocab]` at one position per row (`positions[b]`), with or without the
    /// adapter, classifier-free guidance applied.
    fn logits_at(&mut self, positions: &[usize], adapter: bool) -> Tensor<B, 3> {
        let cfg = self.config.cfg_scale > 0.0;
        let rows = if cfg { 2 * self.batch } else { self.batch };
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(self.model_input(cfg), [rows, self.total]),
            &self.device,
        );
        let at: Vec<i64> = (0..rows)
            .map(|r| positions[r % self.batch] as i64)
            .collect();
        let at = Tensor::<B, 2, Int>::from_data(TensorData::new(at, [rows, 1]), &self.device);
        let options = ForwardOptions {
            key_padding: self.key_padding(rows),
            adapter,
        };
        let logits = self
            .model
            .forward_with(ids, &options, &LogitPositions::Gather(at));
        self.nfe += if cfg { 2 } else { 1 };
        self.guided(logits)
    }
}

/// A uniformly random order of `0..n`: the positions sorted by one uniform draw each (the
/// reference's `torch.rand(...).argsort()`).
fn random_order(rng: &mut impl Rng, n: usize) -> Vec<usize> {
    let keys: Vec<f64> = (0..n).map(|_| rng.random::<f64>()).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| keys[i].total_cmp(&keys[j]));
    order
}

/// `log_softmax(logits)[x0]` per row, for logits `[batch, 1, vocab]`.
fn token_log_probs<B: Backend>(logits: Tensor<B, 3>, x0: &[i64], device: &B::Device) -> Vec<f32> {
    let index =
        Tensor::<B, 3, Int>::from_data(TensorData::new(x0.to_vec(), [x0.len(), 1, 1]), device);
    host_floats(log_softmax(logits, 2).gather(2, index))
}
