//! Dream's sampler (docs/algorithm.md §2, "Dream"): `diffusion_generate`
//! (`generation_utils.py`, `DreamGenerationMixin._sample`) and, with a cache, Fast-dLLM's
//! block-wise Dream sampler (`dream/model/generation_utils_block.py`), on the shared state of
//! [`crate::generate`].
//!
//! Step `i` of `steps` (per block), with `t = ts[i]`, `s = ts[i + 1]`, `ts = linspace(1, eps,
//! steps + 1)`: `sample_tokens` gives a candidate `x0` and a confidence `c` at every masked
//! position (temperature, top-p, top-k; `c` = `max p` for `maskgit_plus`, `p1 - p2` for
//! `topk_margin`, `sum p log p` for `entropy`). `origin` unmasks each masked position with
//! probability `1 - s / t`; the others unmask the `k = floor(m (1 - s / t))` most confident of the
//! `m` masked positions (all `m` at the last step), or draw the `k` without replacement from
//! `softmax(c / alg_temp)`. Worked example: `steps = 4`, `eps = 1e-3`, 12 masked tokens:
//! `ts = [1, 0.75025, 0.5005, 0.25075, 0.001]`; `k = floor(12 * 0.24975) = 2`, then
//! `floor(10 * 0.3329) = 3`, `floor(7 * 0.4990) = 3`, and the last 4.
//!
//! The block-wise variant (`cache = prefix | dual`) runs, per block, one full pass that fills
//! the cache and commits the block's first token, then cached passes over the block: with
//! `threshold`, every masked position whose probability reaches it (at least one); otherwise the
//! entropy schedule above from `i = 1` (Fast-dLLM's loop).
//!
//! Departures, each so that a row's generation does not depend on the rows beside it: `k`
//! counts the row's own masked positions (the reference takes the batch mean, which is the same
//! unless the model predicts the mask token); random draws (Gumbel-max for `Categorical`, the
//! `origin` coins, `multinomial`) come from the row's own stream; top-p and top-k keep every
//! token whose logit ties the cut-off.

use burn::tensor::{activation::softmax, backend::Backend, Int, Tensor, TensorData};
use dllm_model::{ForwardOptions, LogitPositions};
use rand::Rng;

use crate::config::{CacheKind, DreamAlg};
use crate::generate::{check_finite, host_floats, host_ids, Generation, Sampler, StepEvent};
use crate::SampleError;

/// `torch.linspace(start, end, n)` in f32 on the CPU: the first half counted up from `start`,
/// the second half down from `end` (ATen's `linspace` kernel), so the ratios `s / t` and the
/// `floor` of the token counts are the reference's.
pub fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - i - 1) as f32
            }
        })
        .collect()
}

/// How many of `masked` positions step `i` of `steps` unmasks (`int(m * (1 - s / t))` in f32,
/// every one at the last step).
pub fn tokens_to_unmask(masked: usize, i: usize, steps: usize, ts: &[f32]) -> usize {
    if i + 1 >= steps {
        return masked;
    }
    let ratio = 1.0f32 - ts[i + 1] / ts[i];
    ((masked as f32 * ratio) as usize).min(masked)
}

/// The confidence `sample_tokens` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Confidence {
    /// The chosen token's probability.
    Probability,
    /// `p1 - p2`.
    Margin,
    /// `sum p log(p + 1e-10)`.
    NegEntropy,
}

impl Confidence {
    fn of(alg: DreamAlg) -> Self {
        match alg {
            DreamAlg::TopkMargin => Self::Margin,
            DreamAlg::Entropy => Self::NegEntropy,
            DreamAlg::Origin | DreamAlg::MaskgitPlus => Self::Probability,
        }
    }
}

impl<B: Backend> Sampler<'_, B> {
    /// Dream's loop: `diffusion_generate` without a cache, Fast-dLLM's block-wise one with.
    pub(crate) fn run_dream(
        mut self,
        observer: &mut dyn FnMut(&StepEvent<'_>),
    ) -> Result<Generation, SampleError> {
        let c = self.config;
        let spb = c.steps_per_block().max(1);
        let ts = linspace_f32(1.0, c.eps as f32, spb + 1);
        let mut step = 0usize;
        for block in 0..c.gen_length / c.block_length {
            let start = self.prompt_len + block * c.block_length;
            let end = start + c.block_length;
            if c.cache == CacheKind::None {
                for i in 0..spb {
                    if !self.any_masked_in(start, end) {
                        break;
                    }
                    let logits = self.dream_logits(start, end, false);
                    self.dream_step(logits, start, end, i, spb, &ts, c.alg, step)?;
                    self.observe(observer, step, block);
                    step += 1;
                }
            } else {
                // The full pass fills the cache and commits the block's first token.
                let logits = self.dream_logits(start, start + 1, true);
                let (x0, _) = self.sample_tokens(logits, Confidence::Probability)?;
                for (b, &token) in x0.iter().enumerate() {
                    self.put(b, start, token, step);
                }
                self.observe(observer, step, block);
                step += 1;
                let mut i = 1;
                let mut passes = 0;
                while self.any_masked_in(start, end) && passes < 4 * c.block_length {
                    passes += 1;
                    if c.threshold.is_none() && i == spb {
                        break;
                    }
                    let logits = self.dream_logits(start, end, false);
                    match c.threshold {
                        Some(th) => self.threshold_step(logits, start, end, th, step)?,
                        None => {
                            self.dream_step(logits, start, end, i, spb, &ts, c.alg, step)?;
                            i += 1;
                        }
                    }
                    self.observe(observer, step, block);
                    step += 1;
                }
            }
        }
        Ok(self.finish(step))
    }

    /// Aligned logits `[batch, end - start, vocab]` of positions `start..end`: a full pass
    /// (filling the cache when `fill`), or with a cache a pass over the block (dual) or the block
    /// and everything after it (prefix).
    fn dream_logits(&mut self, start: usize, end: usize, fill: bool) -> Tensor<B, 3> {
        let options = ForwardOptions {
            key_padding: self.key_padding(self.batch),
            adapter: self.config.adapter,
        };
        self.nfe += 1;
        let ids = |s: &Self, lo: usize, hi: usize| {
            let rows: Vec<i64> = (0..s.batch)
                .flat_map(|b| s.row(b)[lo..hi].to_vec())
                .collect();
            Tensor::<B, 2, Int>::from_data(TensorData::new(rows, [s.batch, hi - lo]), &s.device)
        };
        match self.config.cache {
            CacheKind::None => self.model.forward_with(
                ids(self, 0, self.total),
                &options,
                &LogitPositions::Range(start..end),
            ),
            _ if fill => {
                let input = ids(self, 0, self.total);
                self.model.forward_fill_cache(
                    input,
                    &options,
                    &LogitPositions::Range(start..end),
                    &mut self.cache,
                )
            }
            cache => {
                let span_end = if cache == CacheKind::Dual {
                    end
                } else {
                    self.total
                };
                self.model.forward_cached(
                    ids(self, start, span_end),
                    start,
                    &options,
                    &LogitPositions::Range(0..end - start),
                    &self.cache,
                )
            }
        }
    }

    /// One step of `_sample` over the masked positions of `start..end`.
    #[allow(clippy::too_many_arguments)]
    fn dream_step(
        &mut self,
        logits: Tensor<B, 3>,
        start: usize,
        end: usize,
        i: usize,
        steps: usize,
        ts: &[f32],
        alg: DreamAlg,
        step: usize,
    ) -> Result<(), SampleError> {
        let n = end - start;
        let (x0, conf) = self.sample_tokens(logits, Confidence::of(alg))?;
        for b in 0..self.batch {
            let masked: Vec<usize> = (0..n)
                .filter(|&j| self.row(b)[start + j] == self.mask_id)
                .collect();
            let chosen: Vec<usize> = if alg == DreamAlg::Origin {
                let p = if i + 1 < steps {
                    1.0f32 - ts[i + 1] / ts[i]
                } else {
                    1.0
                };
                let rng = &mut self.rngs[b];
                masked
                    .iter()
                    .copied()
                    .filter(|_| rng.random::<f32>() < p)
                    .collect()
            } else {
                let k = tokens_to_unmask(masked.len(), i, steps, ts);
                let scored: Vec<(usize, f32)> =
                    masked.iter().map(|&j| (j, conf[b * n + j])).collect();
                self.pick(b, scored, k)
            };
            for j in chosen {
                self.put(b, start + j, x0[b * n + j], step);
            }
        }
        Ok(())
    }

    /// Fast-dLLM's `confidence_threshold` step: the most probable masked position, and every
    /// other whose probability reaches `threshold`.
    fn threshold_step(
        &mut self,
        logits: Tensor<B, 3>,
        start: usize,
        end: usize,
        threshold: f64,
        step: usize,
    ) -> Result<(), SampleError> {
        let n = end - start;
        let (x0, conf) = self.sample_tokens(logits, Confidence::Probability)?;
        for b in 0..self.batch {
            let mut scored: Vec<(usize, f32)> = (0..n)
                .filter(|&j| self.row(b)[start + j] == self.mask_id)
                .map(|j| (j, conf[b * n + j]))
                .collect();
            scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            for (rank, &(j, c)) in scored.iter().enumerate() {
                if rank == 0 || c as f64 >= threshold {
                    self.put(b, start + j, x0[b * n + j], step);
                }
            }
        }
        Ok(())
    }

    /// `k` of the scored positions of row `b`: the most confident (ties to the earlier
    /// position), or with `alg_temp > 0` drawn one by one without replacement from
    /// `softmax(c / alg_temp)` (`torch.multinomial`).
    fn pick(&mut self, b: usize, mut scored: Vec<(usize, f32)>, k: usize) -> Vec<usize> {
        let temp = self.config.alg_temp;
        if temp == 0.0 {
            scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            return scored.into_iter().take(k).map(|(j, _)| j).collect();
        }
        let top = scored
            .iter()
            .map(|s| s.1 as f64 / temp)
            .fold(f64::MIN, f64::max);
        let mut weights: Vec<(usize, f64)> = scored
            .iter()
            .map(|&(j, c)| (j, (c as f64 / temp - top).exp()))
            .collect();
        let rng = &mut self.rngs[b];
        let mut out = Vec::with_capacity(k);
        while out.len() < k && !weights.is_empty() {
            let total: f64 = weights.iter().map(|w| w.1).sum();
            let mut u = rng.random::<f64>() * total;
            let mut at = weights.len() - 1;
            for (idx, w) in weights.iter().enumerate() {
                if u < w.1 {
                    at = idx;
                    break;
                }
                u -= w.1;
            }
            out.push(weights.remove(at).0);
        }
        out
    }

    /// `sample_tokens` over logits `[batch, n, vocab]`: the candidates (argmax, or a draw from
    /// the tempered, filtered distribution) and their confidence, read back as `[batch * n]`.
    fn sample_tokens(
        &mut self,
        logits: Tensor<B, 3>,
        confidence: Confidence,
    ) -> Result<(Vec<i64>, Vec<f32>), SampleError> {
        let [batch, n, vocab] = logits.dims();
        let c = self.config;
        let mut logits = logits;
        if c.temperature > 0.0 {
            logits = logits / c.temperature;
        }
        if let Some(p) = c.top_p.filter(|&p| p < 1.0) {
            logits = top_p_filter(logits, p);
        }
        if let Some(k) = c.top_k {
            logits = top_k_filter(logits, k);
        }
        let probs = softmax(logits.clone(), 2);
        let x0 = if c.temperature > 0.0 {
            // Categorical(probs) as Gumbel-max over the filtered logits, from each row's stream.
            let noise: Vec<f32> = self.rngs[..batch]
                .iter_mut()
                .flat_map(|rng| {
                    (0..n * vocab).map(move |_| {
                        let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                        -(-u.ln()).ln() as f32
                    })
                })
                .collect();
            let noise =
                Tensor::<B, 3>::from_data(TensorData::new(noise, [batch, n, vocab]), &self.device);
            (logits + noise).argmax(2)
        } else {
            probs.clone().argmax(2)
        };
        let conf = match confidence {
            Confidence::Probability => probs.gather(2, x0.clone()),
            Confidence::Margin => {
                let top = probs.topk(2, 2);
                top.clone().narrow(2, 0, 1) - top.narrow(2, 1, 1)
            }
            Confidence::NegEntropy => (probs.clone() * (probs + 1e-10).log()).sum_dim(2),
        };
        let conf = host_floats(conf);
        check_finite(&conf, n)?;
        Ok((host_ids(x0), conf))
    }

    fn any_masked_in(&self, start: usize, end: usize) -> bool {
        (0..self.batch).any(|b| self.row(b)[start..end].contains(&self.mask_id))
    }
}

/// `top_k_logits`: logits below the `k`-th largest of their row set to the dtype's minimum.
/// A `k` of the vocabulary or more keeps every logit (Hugging Face clamps `top_k` to the
/// vocabulary; burn's `topk` needs `k` below the dimension).
fn top_k_filter<B: Backend>(logits: Tensor<B, 3>, k: usize) -> Tensor<B, 3> {
    let vocab = logits.dims()[2];
    if k >= vocab {
        return logits;
    }
    let kth = logits.clone().topk(k, 2).narrow(2, k - 1, 1);
    let below = logits.clone().lower(kth);
    logits.mask_fill(below, f32::MIN)
}

/// `top_p_logits`: keeps the most probable tokens up to and including the first whose
/// cumulative probability exceeds `p` (at least one), the rest set to the dtype's minimum.
fn top_p_filter<B: Backend>(logits: Tensor<B, 3>, p: f64) -> Tensor<B, 3> {
    let vocab = logits.dims()[2];
    let sorted = logits.clone().sort_descending(2);
    let cumulative = softmax(sorted.clone(), 2).cumsum(2);
    // Kept: position 0, and j > 0 where the cumulative probability before j is <= p.
    let kept = if vocab > 1 {
        cumulative
            .narrow(2, 0, vocab - 1)
            .lower_equal_elem(p)
            .int()
            .sum_dim(2)
            + 1
    } else {
        Tensor::<B, 3, Int>::ones([logits.dims()[0], logits.dims()[1], 1], &logits.device())
    };
    let cut = sorted.gather(2, kept - 1);
    let below = logits.clone().lower(cut);
    logits.mask_fill(below, f32::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timesteps_and_counts_follow_the_reference() {
        let ts = linspace_f32(1.0, 1e-3, 5);
        let want = [1.0f32, 0.75025, 0.5005, 0.25075, 0.001];
        for (a, b) in ts.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{ts:?}");
        }
        assert_eq!(ts[4], 1e-3f32);
        let mut masked = 12;
        let ks: Vec<usize> = (0..4)
            .map(|i| {
                let k = tokens_to_unmask(masked, i, 4, &ts);
                masked -= k;
                k
            })
            .collect();
        assert_eq!(ks, [2, 3, 3, 4]);
        assert_eq!(masked, 0);
    }

    #[test]
    fn filters_keep_the_reference_tokens() {
        type B = burn::backend::Flex;
        let logits = Tensor::<B, 3>::from_data(
            TensorData::new(vec![0.0f32, 3.0, 1.0, 2.0], [1, 1, 4]),
            &Default::default(),
        );
        let kept = |t: Tensor<B, 3>| -> Vec<bool> {
            t.into_data()
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|&v| v > f32::MIN)
                .collect()
        };
        assert_eq!(
            kept(top_k_filter(logits.clone(), 2)),
            [false, true, false, true]
        );
        // A k of the vocabulary or more keeps everything (Hugging Face clamps it).
        for k in [4, 5, usize::MAX] {
            assert_eq!(kept(top_k_filter(logits.clone(), k)), [true; 4], "k {k}");
        }
        // p = (0.644, 0.237, 0.087, 0.032): cumulative 0.644, 0.881, …; top_p 0.7 keeps two.
        assert_eq!(
            kept(top_p_filter(logits.clone(), 0.7)),
            [false, true, false, true]
        );
        assert_eq!(
            kept(top_p_filter(logits.clone(), 0.5)),
            [false, true, false, false]
        );
        assert_eq!(kept(top_p_filter(logits, 0.95)), [false, true, true, true]);
    }
}
