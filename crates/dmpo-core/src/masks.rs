//! Mask sampling for the ELBO estimator and the losses (docs/algorithm.md §3) and for diffu-GRPO's prompt
//! masking (docs/algorithm.md §6). All randomness comes from an explicit, seedable RNG so that training is
//! deterministic (use `rand_chacha::ChaCha8Rng::seed_from_u64`).

use burn::tensor::{backend::Backend, Bool, Tensor, TensorData};
use rand::Rng;

use crate::config::DmpoConfig;
use crate::error::{DmpoError, Result};

/// How replicate masks are drawn (docs/algorithm.md §3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskOptions {
    /// Number of replicates `K`.
    pub replicates: usize,
    /// Replicates `K/2..K` are the complements of replicates `0..K/2`.
    pub antithetic: bool,
    /// `lambda <- 0.1 + 0.9 lambda`.
    pub clamp: bool,
    /// Whether positions after the first EOS may be masked.
    pub mask_after_eos: bool,
}

impl MaskOptions {
    /// The options of the rollout-time ELBO: `rollout_elbo_replicates` replicates when set.
    pub fn rollout(c: &DmpoConfig) -> Self {
        let mut options = Self::from(c);
        if c.rollout_elbo_replicates > 0 {
            options.replicates = c.rollout_elbo_replicates;
        }
        options
    }
}

impl From<&DmpoConfig> for MaskOptions {
    fn from(c: &DmpoConfig) -> Self {
        Self {
            replicates: c.num_replicates,
            antithetic: c.antithetic,
            clamp: c.clamp_mask_prob,
            mask_after_eos: c.mask_after_eos,
        }
    }
}

/// Masks of `K` replicates of a batch over its completion positions, replicate-major:
/// row `r = k * batch + i` is replicate `k` of sample `i`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicateMasks {
    /// Number of replicates `K`.
    pub replicates: usize,
    /// Number of samples.
    pub batch: usize,
    /// Completion length `L`.
    pub gen_len: usize,
    /// `[K * batch * L]`, true where the completion token is replaced by MASK.
    pub masked: Vec<bool>,
}

/// The clamped masking probability `0.1 + 0.9 u` (docs/algorithm.md §3).
pub fn clamp_lambda(u: f64) -> f64 {
    0.1 + 0.9 * u
}

/// One mask row of `gen_len` positions, each masked independently with probability `lambda`
/// (one uniform draw per position, in order; docs/algorithm.md §3).
pub fn mask_row<R: Rng + ?Sized>(rng: &mut R, lambda: f64, gen_len: usize) -> Vec<bool> {
    (0..gen_len).map(|_| rng.random::<f64>() < lambda).collect()
}

impl ReplicateMasks {
    /// Fresh masks for `batch` with the configured replicate scheme (one draw per optimisation
    /// step of WDCE and DDO, docs/algorithm.md §4).
    pub fn for_batch<B: Backend, R: Rng + ?Sized>(
        rng: &mut R,
        batch: &crate::batch::SequenceBatch<B>,
        config: &DmpoConfig,
    ) -> Result<Self> {
        Self::sample(
            rng,
            &batch.eos_index,
            batch.gen_len(),
            &MaskOptions::from(config),
        )
    }

    /// Masks from explicit rows (`[K * batch * L]`, replicate-major).
    pub fn from_rows(
        replicates: usize,
        batch: usize,
        gen_len: usize,
        masked: Vec<bool>,
    ) -> Result<Self> {
        if masked.len() != replicates * batch * gen_len {
            return Err(DmpoError::shape(format!(
                "{} mask entries for {replicates} x {batch} x {gen_len}",
                masked.len()
            )));
        }
        if replicates == 0 {
            return Err(DmpoError::shape("zero replicates"));
        }
        Ok(Self {
            replicates,
            batch,
            gen_len,
            masked,
        })
    }

    /// One replicate from a whole-sequence 0/1 mask `[batch * seq]` (non-zero = masked) whose
    /// first `prompt` positions of every row must be unmasked (docs/algorithm.md §3: the prompt is never
    /// masked); the completion part becomes the replicate.
    pub fn from_sequence_mask(
        mask: &[i64],
        batch: usize,
        seq: usize,
        prompt: usize,
    ) -> Result<Self> {
        if mask.len() != batch * seq || prompt > seq {
            return Err(DmpoError::shape(format!(
                "{} mask entries for {batch} x {seq} with a prompt of {prompt}",
                mask.len()
            )));
        }
        let mut masked = Vec::with_capacity(batch * (seq - prompt));
        for (i, row) in mask.chunks(seq).enumerate() {
            if row[..prompt].iter().any(|&m| m != 0) {
                return Err(DmpoError::shape(format!(
                    "row {i} masks a prompt position (the first {prompt} must be 0)"
                )));
            }
            masked.extend(row[prompt..].iter().map(|&m| m != 0));
        }
        Self::from_rows(1, batch, seq - prompt, masked)
    }

    /// Draws fresh masks: per replicate and sample `lambda ~ U(0,1)` (clamped to `[0.1, 1]` if
    /// asked), each completion position masked independently with probability `lambda`;
    /// antithetic replicates take the complement; positions after `eos_index[i]` are unmasked
    /// when `mask_after_eos` is false (docs/algorithm.md §3).
    pub fn sample<R: Rng + ?Sized>(
        rng: &mut R,
        eos_index: &[usize],
        gen_len: usize,
        options: &MaskOptions,
    ) -> Result<Self> {
        let k = options.replicates;
        if k == 0 {
            return Err(DmpoError::config("num_replicates", "must be positive"));
        }
        if options.antithetic && k % 2 == 1 {
            return Err(DmpoError::config(
                "num_replicates",
                "must be even when antithetic masks are on",
            ));
        }
        let batch = eos_index.len();
        let drawn = if options.antithetic { k / 2 } else { k };
        let mut masked = Vec::with_capacity(k * batch * gen_len);
        for _ in 0..drawn {
            for _ in 0..batch {
                let u: f64 = rng.random();
                let lambda = if options.clamp { clamp_lambda(u) } else { u };
                masked.extend(mask_row(rng, lambda, gen_len));
            }
        }
        if options.antithetic {
            // docs/algorithm.md §3: replicates K/2..K-1 are the complements of replicates 0..K/2-1.
            let first: Vec<bool> = masked.iter().map(|&m| !m).collect();
            masked.extend(first);
        }
        if !options.mask_after_eos {
            for r in 0..k * batch {
                let e = eos_index[r % batch];
                for m in &mut masked[r * gen_len..(r + 1) * gen_len][(e + 1).min(gen_len)..] {
                    *m = false;
                }
            }
        }
        Self::from_rows(k, batch, gen_len, masked)
    }

    /// Number of rows `K * batch`.
    pub fn rows(&self) -> usize {
        self.replicates * self.batch
    }

    /// The mask of row `r = k * batch + i`.
    pub fn row(&self, r: usize) -> &[bool] {
        &self.masked[r * self.gen_len..(r + 1) * self.gen_len]
    }

    /// Number of masked positions of row `r`.
    pub fn count(&self, r: usize) -> usize {
        self.row(r).iter().filter(|&&m| m).count()
    }

    /// `m = max(1, #masked)` of row `r` (docs/algorithm.md §3).
    pub fn m_clamped(&self, r: usize) -> usize {
        self.count(r).max(1)
    }

    /// The sample index of row `r`.
    pub fn sample_of(&self, r: usize) -> usize {
        r % self.batch
    }

    /// The masks of samples `samples` (in that order), every replicate: the masks of a
    /// sub-batch drawn as part of the whole batch's. An error when a sample is out of range.
    pub fn select_samples(&self, samples: &[usize]) -> Result<Self> {
        if let Some(&bad) = samples.iter().find(|&&i| i >= self.batch) {
            return Err(DmpoError::shape(format!(
                "sample {bad} of masks over {} samples",
                self.batch
            )));
        }
        let mut masked = Vec::with_capacity(self.replicates * samples.len() * self.gen_len);
        for k in 0..self.replicates {
            for &i in samples {
                masked.extend_from_slice(self.row(k * self.batch + i));
            }
        }
        Self::from_rows(self.replicates, samples.len(), self.gen_len, masked)
    }

    /// The rows `rows` over the whole sequence (prompt never masked) as a `[rows, prompt_len +
    /// gen_len]` bool tensor.
    pub fn full_mask_tensor<B: Backend>(
        &self,
        rows: std::ops::Range<usize>,
        prompt_len: usize,
        device: &B::Device,
    ) -> Tensor<B, 2, Bool> {
        let n = rows.len();
        let seq = prompt_len + self.gen_len;
        let mut data = Vec::with_capacity(n * seq);
        for r in rows {
            data.extend(std::iter::repeat_n(false, prompt_len));
            data.extend_from_slice(self.row(r));
        }
        Tensor::from_bool(TensorData::new(data, [n, seq]), device)
    }

    /// The rows `rows` over the completion as a `[rows, gen_len]` float tensor of 0/1.
    pub fn completion_mask_tensor<B: Backend>(
        &self,
        rows: std::ops::Range<usize>,
        device: &B::Device,
    ) -> Tensor<B, 2> {
        let n = rows.len();
        let data = self.masked[rows.start * self.gen_len..rows.end * self.gen_len].to_vec();
        Tensor::<B, 2, Bool>::from_bool(TensorData::new(data, [n, self.gen_len]), device).float()
    }
}

/// diffu-GRPO's prompt mask (docs/algorithm.md §6): `[batch * prompt_len]`, each prompt position masked
/// independently with probability `p` (the completion is always fully masked).
pub fn sample_prompt_mask<R: Rng + ?Sized>(
    rng: &mut R,
    batch: usize,
    prompt_len: usize,
    p: f64,
) -> Vec<bool> {
    (0..batch * prompt_len)
        .map(|_| rng.random::<f64>() < p)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_mask_keeps_the_completion_and_refuses_a_masked_prompt() {
        let m = ReplicateMasks::from_sequence_mask(&[0, 0, 1, 0, 0, 0, 0, 1], 2, 4, 2).unwrap();
        assert_eq!(
            (m.rows(), m.row(0), m.row(1)),
            (2, &[true, false][..], &[false, true][..])
        );
        let e = ReplicateMasks::from_sequence_mask(&[0, 1, 0, 0], 1, 4, 2).unwrap_err();
        assert!(
            e.to_string().contains("row 0 masks a prompt position"),
            "{e}"
        );
        assert!(ReplicateMasks::from_sequence_mask(&[0; 3], 1, 4, 2).is_err());
    }
}
