//! LLaDA's supervised masked-diffusion objective, the loss that trains a base denoiser (docs/algorithm.md §1)
//! on prompt + completion pairs:
//!
//! `L = -(1/(B * L)) * sum_i (1/t_i) * sum_{j in M_i} log softmax(f(x~_i))_j[x_ij]`,
//!
//! `t_i = t_min + (1 - t_min) u_i` with `u_i ~ U(0, 1)`, each completion position of sample `i` in
//! `M_i` independently with probability `t_i`, and `x~_i` = `x_i` with the positions of `M_i`
//! replaced by MASK, the prompt never masked (the masking of docs/algorithm.md §3, one replicate, every
//! completion position maskable). A mean over the `B * L` completion positions.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::batch::SequenceBatch;
use crate::elbo::check_masks;
use crate::error::{DmpoError, Result};
use crate::loss::{tensor_from, LossOutput};
use crate::masks::{mask_row, ReplicateMasks};
use crate::model::LogitsModel;

/// The masks of one SFT step: a masking ratio per sample and one replicate drawn with it.
#[derive(Debug, Clone, PartialEq)]
pub struct SftMasks {
    /// `t_i`, the masking ratio of sample `i`.
    pub ratios: Vec<f64>,
    /// One replicate of masks over the completions (`replicates == 1`).
    pub masks: ReplicateMasks,
}

impl SftMasks {
    /// Ratios and masks given by the caller (one replicate, one ratio in `(0, 1]` per sample).
    pub fn new(ratios: Vec<f64>, masks: ReplicateMasks) -> Result<Self> {
        if masks.replicates != 1 || ratios.len() != masks.batch {
            return Err(DmpoError::shape(format!(
                "{} ratios and {} replicates of {} samples (one ratio per sample, one replicate)",
                ratios.len(),
                masks.replicates,
                masks.batch
            )));
        }
        if let Some(t) = ratios.iter().find(|t| !(**t > 0.0 && **t <= 1.0)) {
            return Err(DmpoError::shape(format!(
                "masking ratio {t} outside (0, 1]"
            )));
        }
        Ok(Self { ratios, masks })
    }

    /// Draws per sample `t = min_ratio + (1 - min_ratio) u`, `u ~ U(0, 1)`, then its row of
    /// `gen_len` positions each masked with probability `t` (sample by sample, in that order).
    pub fn sample<R: Rng + ?Sized>(
        rng: &mut R,
        batch: usize,
        gen_len: usize,
        min_ratio: f64,
    ) -> Result<Self> {
        if !(min_ratio > 0.0 && min_ratio <= 1.0) {
            return Err(DmpoError::config(
                "min_ratio",
                format!("{min_ratio} is outside (0, 1]"),
            ));
        }
        let mut ratios = Vec::with_capacity(batch);
        let mut masked = Vec::with_capacity(batch * gen_len);
        for _ in 0..batch {
            let t = min_ratio + (1.0 - min_ratio) * rng.random::<f64>();
            masked.extend(mask_row(rng, t, gen_len));
            ratios.push(t);
        }
        Self::new(
            ratios,
            ReplicateMasks::from_rows(1, batch, gen_len, masked)?,
        )
    }
}

/// What [`sft_loss`] reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftDiagnostics {
    /// Fraction of completion positions masked.
    pub masked_fraction: f64,
}

/// The SFT loss on explicit masks (use [`sft_loss`] in training; this form serves tests).
pub fn sft_loss_with_masks<B: Backend, M: LogitsModel<B> + ?Sized>(
    model: &M,
    batch: &SequenceBatch<B>,
    masks: &SftMasks,
) -> Result<LossOutput<B, SftDiagnostics>> {
    check_masks(batch, &masks.masks)?;
    let device = batch.input_ids.device();
    let (n, prompt_len, gen_len) = (batch.batch_size(), batch.prompt_len, batch.gen_len());
    let full_mask = masks.masks.full_mask_tensor::<B>(0..n, prompt_len, &device);
    let noisy = batch
        .input_ids
        .clone()
        .mask_fill(full_mask, model.mask_token_id() as i64);
    let logits = model.completion_logits(noisy, prompt_len, batch.key_padding.clone());
    let targets = batch.completion_ids().reshape([n, gen_len, 1]);
    // `log_softmax` then `gather`, not `dllm_model::ops::token_log_probs`: on flex that kernel
    // differs in the last bit, and `cargo xtask pretrain` rebuilds the embedded model bit for bit
    // with this arithmetic.
    let token_logp = log_softmax(logits, 2)
        .gather(2, targets)
        .reshape([n, gen_len]);
    // docs/algorithm.md §1: a masked position of sample i weighs 1/t_i, an unmasked one 0.
    let weights: Vec<f64> = (0..n)
        .flat_map(|i| {
            let t = masks.ratios[i];
            masks
                .masks
                .row(i)
                .iter()
                .map(move |&m| if m { 1.0 / t } else { 0.0 })
        })
        .collect();
    let weights = tensor_from::<B, 2>(&weights, [n, gen_len], &device);
    let loss = (token_logp * weights)
        .sum()
        .neg()
        .div_scalar((n * gen_len) as f64);
    let masked = masks.masks.masked.iter().filter(|&&m| m).count();
    Ok(LossOutput {
        loss,
        diagnostics: SftDiagnostics {
            masked_fraction: masked as f64 / masks.masks.masked.len().max(1) as f64,
        },
    })
}

/// The SFT loss with fresh masks drawn from `rng`, ratios `t ~ U(min_ratio, 1)` (one call per
/// optimisation step).
pub fn sft_loss<B: Backend, M: LogitsModel<B> + ?Sized, R: Rng + ?Sized>(
    model: &M,
    batch: &SequenceBatch<B>,
    min_ratio: f64,
    rng: &mut R,
) -> Result<LossOutput<B, SftDiagnostics>> {
    let masks = SftMasks::sample(rng, batch.batch_size(), batch.gen_len(), min_ratio)?;
    sft_loss_with_masks(model, batch, &masks)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Bool, Int, Tensor, TensorData};
    use dllm_model::{DiffusionLm, ModelConfig};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::batch::{float_values, int_values};
    use crate::model::ModelView;

    type AB = Autodiff<Flex>;

    const MASK: u32 = 49;
    const EOS: u32 = 48;

    /// Two samples: a 2-token prompt and a 4-token completion each.
    fn batch<Bk: Backend>() -> SequenceBatch<Bk> {
        let ids = vec![
            1i64, 2, 10, 11, EOS as i64, EOS as i64, 3, 4, 20, 21, 22, 23,
        ];
        let ids =
            Tensor::<Bk, 2, Int>::from_data(TensorData::new(ids, [2, 6]), &Default::default());
        SequenceBatch::new(ids, 2, EOS).unwrap()
    }

    /// Sample 0 masks completion positions 0 and 3 at `t = 0.5`, sample 1 position 2 at `t = 0.25`.
    fn fixed_masks() -> SftMasks {
        let masked = vec![true, false, false, true, false, false, true, false];
        SftMasks::new(
            vec![0.5, 0.25],
            ReplicateMasks::from_rows(1, 2, 4, masked).unwrap(),
        )
        .unwrap()
    }

    /// Completion logits read from a trainable table `[rows, gen_len, vocab]`, whatever the
    /// input; records the last input it was given.
    struct TableModel<Bk: Backend> {
        table: Tensor<Bk, 3>,
        seen: RefCell<Vec<i64>>,
    }

    impl<Bk: Backend> LogitsModel<Bk> for TableModel<Bk> {
        fn completion_logits(
            &self,
            input_ids: Tensor<Bk, 2, Int>,
            _prompt_len: usize,
            _key_padding: Option<Tensor<Bk, 2, Bool>>,
        ) -> Tensor<Bk, 3> {
            *self.seen.borrow_mut() = int_values(input_ids);
            self.table.clone()
        }

        fn mask_token_id(&self) -> u32 {
            MASK
        }

        fn vocab_size(&self) -> usize {
            self.table.dims()[2]
        }
    }

    fn log_softmax_f64(xs: &[f64]) -> Vec<f64> {
        let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z = xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln() + m;
        xs.iter().map(|x| x - z).collect()
    }

    fn tiny_model<Bk: Backend>(seed: u64) -> DiffusionLm<Bk> {
        let device = Default::default();
        Bk::seed(&device, seed);
        DiffusionLm::<Bk>::init(&ModelConfig::tiny(32, 1, 4, 64, 50, MASK, EOS), &device)
    }

    #[test]
    fn loss_is_finite_and_positive_on_a_random_model() {
        let model = tiny_model::<AB>(0);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..4 {
            let out = sft_loss(&ModelView::policy(&model), &batch::<AB>(), 1e-3, &mut rng).unwrap();
            let loss = float_values(out.loss)[0];
            assert!(loss.is_finite() && loss >= 0.0, "loss {loss}");
            assert!((0.0..=1.0).contains(&out.diagnostics.masked_fraction));
        }
    }

    #[test]
    fn matches_a_direct_computation_on_a_random_model() {
        let model = tiny_model::<Flex>(2);
        let masks = fixed_masks();
        let out =
            sft_loss_with_masks(&ModelView::policy(&model), &batch::<Flex>(), &masks).unwrap();
        assert_eq!(out.diagnostics.masked_fraction, 3.0 / 8.0);

        // By hand: MASK at the masked completion positions, logits of the whole sequence, f64
        // log-softmax, sum of log p / t over masked positions, negated, over B * L.
        let mut noisy = int_values(batch::<Flex>().input_ids);
        for (r, row) in noisy.chunks_mut(6).enumerate() {
            for (j, m) in masks.masks.row(r).iter().enumerate() {
                if *m {
                    row[2 + j] = MASK as i64;
                }
            }
        }
        let ids =
            Tensor::<Flex, 2, Int>::from_data(TensorData::new(noisy, [2, 6]), &Default::default());
        let logits = float_values(model.forward(ids));
        let vocab = 50;
        let clean = int_values(batch::<Flex>().input_ids);
        let mut want = 0.0;
        for r in 0..2 {
            for j in 0..4 {
                if masks.masks.row(r)[j] {
                    let at = (r * 6 + 2 + j) * vocab;
                    let lp = log_softmax_f64(&logits[at..at + vocab]);
                    want += lp[clean[r * 6 + 2 + j] as usize] / masks.ratios[r];
                }
            }
        }
        let want = -want / 8.0;
        let got = float_values(out.loss)[0];
        assert!(
            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
            "{got} vs {want}"
        );
    }

    #[test]
    fn gradient_flows_only_through_masked_positions() {
        let vocab = 50;
        let device = Default::default();
        let values: Vec<f32> = (0..2 * 4 * vocab)
            .map(|i| ((i * 7) % 13) as f32 / 5.0)
            .collect();
        let table =
            Tensor::<AB, 3>::from_data(TensorData::new(values.clone(), [2, 4, vocab]), &device)
                .require_grad();
        let model = TableModel {
            table: table.clone(),
            seen: RefCell::new(Vec::new()),
        };
        let masks = fixed_masks();
        let out = sft_loss_with_masks(&model, &batch::<AB>(), &masks).unwrap();
        let grads = out.loss.backward();
        let grad = float_values(table.grad(&grads).unwrap());
        let clean = int_values(batch::<AB>().input_ids.inner());
        for r in 0..2 {
            for j in 0..4 {
                let g = &grad[(r * 4 + j) * vocab..(r * 4 + j + 1) * vocab];
                if !masks.masks.row(r)[j] {
                    assert!(g.iter().all(|&x| x == 0.0), "row {r} position {j}: {g:?}");
                    continue;
                }
                // d/dlogits of -(1/t) log p / (B L) = (softmax - onehot) / (t B L).
                let row: Vec<f64> = values[(r * 4 + j) * vocab..][..vocab]
                    .iter()
                    .map(|&x| x as f64)
                    .collect();
                let target = clean[r * 6 + 2 + j] as usize;
                for (k, (&got, lp)) in g.iter().zip(log_softmax_f64(&row)).enumerate() {
                    let onehot = if k == target { 1.0 } else { 0.0 };
                    let want = (lp.exp() - onehot) / (masks.ratios[r] * 8.0);
                    assert!(
                        (got - want).abs() < 1e-6,
                        "row {r} position {j} token {k}: {got} vs {want}"
                    );
                }
            }
        }
        // The model saw MASK exactly at the masked completion positions, the prompt untouched.
        let mut want = clean.clone();
        for (r, j) in [(0, 0), (0, 3), (1, 2)] {
            want[r * 6 + 2 + j] = MASK as i64;
        }
        assert_eq!(*model.seen.borrow(), want);
    }

    #[test]
    fn sampled_ratios_and_masks_follow_the_stream() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let masks = SftMasks::sample(&mut rng, 3, 5, 0.2).unwrap();
        let mut replay = ChaCha8Rng::seed_from_u64(7);
        for i in 0..3 {
            let t = 0.2 + 0.8 * replay.random::<f64>();
            assert_eq!(masks.ratios[i], t);
            assert_eq!(masks.masks.row(i), mask_row(&mut replay, t, 5));
        }
        assert_eq!(masks.masks.replicates, 1);
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            assert!(SftMasks::sample(&mut rng, 3, 5, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn masks_must_fit_the_batch() {
        let model = tiny_model::<Flex>(0);
        let three = SftMasks::sample(&mut ChaCha8Rng::seed_from_u64(0), 3, 4, 0.5).unwrap();
        assert!(sft_loss_with_masks(&ModelView::policy(&model), &batch::<Flex>(), &three).is_err());
        let masks = ReplicateMasks::from_rows(2, 1, 4, vec![true; 8]).unwrap();
        assert!(SftMasks::new(vec![0.5], masks).is_err());
        let masks = ReplicateMasks::from_rows(1, 2, 4, vec![true; 8]).unwrap();
        assert!(SftMasks::new(vec![0.5, 0.0], masks.clone()).is_err());
        assert!(SftMasks::new(vec![0.5], masks).is_err());
    }
}
