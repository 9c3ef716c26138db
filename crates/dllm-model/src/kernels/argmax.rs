//! A sampler step's candidates (docs/algorithm.md §2, steps 2–3): per row of logits, the argmax of the
//! (noised) logits and the softmax probability of that pick, in one pass. The sampler runs
//! outside autodiff, so there is no backward pass.

use burn::tensor::{backend::Backend, Tensor};
use rayon::prelude::*;

use super::simd::{exp_f32, row_max_and_exp_sum};
use super::{all_f32, CHUNK};

#[cfg(feature = "flex")]
use super::flex::{is_flex, read, to_flex};

/// A sampler step's candidates (docs/algorithm.md §2, steps 2–3): per row of `logits` `[batch, n, vocab]`,
/// the index of the largest `logits + noise` (the first on ties; `noise` is the tempered Gumbel
/// noise, row-major like `logits`, or `None` at temperature 0; the sum is taken in f64, as LLaDA's
/// and Fast-dLLM's samplers add their noise in float64) and its untempered probability
/// `softmax(logits)[index]`.
///
/// On the CPU backend one parallel pass per row replaces the argmax, log-sum-exp and gather
/// passes over `[batch, n, vocab]`; `None` elsewhere (the logits stay on the device).
pub fn argmax_with_confidence<B: Backend>(
    logits: &Tensor<B, 3>,
    noise: Option<&[f64]>,
) -> Option<(Vec<i64>, Vec<f32>)> {
    let [batch, n, vocab] = logits.dims();
    if vocab == 0
        || noise.is_some_and(|z| z.len() != batch * n * vocab)
        || !all_f32(&[logits.dtype()])
    {
        return None;
    }
    on_flex!({
        if !is_flex::<B>() {
            return None;
        }
        let vocab = logits.dims()[2];
        Some(argmax_with_confidence_host(
            &read(&to_flex(logits)),
            noise,
            vocab,
        ))
    })
}

/// [`argmax_with_confidence`] on host rows of `vocab` logits.
fn argmax_with_confidence_host(
    logits: &[f32],
    noise: Option<&[f64]>,
    vocab: usize,
) -> (Vec<i64>, Vec<f32>) {
    let rows = logits.len() / vocab;
    let mut picked = vec![(0i64, 0.0f32); rows];
    let rows_per_task = (CHUNK / vocab).max(1);
    picked
        .par_chunks_mut(rows_per_task)
        .enumerate()
        .for_each(|(task, out)| {
            let first = task * rows_per_task;
            for (i, o) in out.iter_mut().enumerate() {
                let at = (first + i) * vocab;
                let row = &logits[at..at + vocab];
                let best = match noise {
                    None => first_argmax(row.iter().map(|&l| l as f64)),
                    Some(z) => {
                        let z = &z[at..at + vocab];
                        first_argmax(row.iter().zip(z).map(|(&l, z)| l as f64 + z))
                    }
                };
                let (max, sum) = row_max_and_exp_sum(row);
                *o = (best as i64, exp_f32(row[best] - max) / sum);
            }
        });
    picked.into_iter().unzip()
}

/// Index of the first largest value (NaN never wins).
fn first_argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::sample;
    use burn::tensor::{TensorData, Tolerance};

    #[test]
    fn argmax_with_confidence_matches_the_tensor_expression() {
        let (batch, n, vocab) = (3, 5, 301);
        let mut logits = sample([batch, n, vocab], 13);
        // A tie in row 0: the first index wins, as with `argmax`.
        logits = logits.slice_assign(
            [0..1, 0..1, 7..8],
            Tensor::full([1, 1, 1], 100.0, &Default::default()),
        );
        logits = logits.slice_assign(
            [0..1, 0..1, 9..10],
            Tensor::full([1, 1, 1], 100.0, &Default::default()),
        );
        let noise: Vec<f32> = sample([batch, n, vocab], 14)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let noise64: Vec<f64> = noise.iter().map(|&z| z as f64).collect();
        for (noise, noise64) in [
            (None, None),
            (Some(noise.as_slice()), Some(noise64.as_slice())),
        ] {
            let scores = match noise {
                Some(z) => {
                    logits.clone()
                        + Tensor::from_data(
                            TensorData::new(z.to_vec(), [batch, n, vocab]),
                            &Default::default(),
                        )
                }
                None => logits.clone(),
            };
            let x0 = scores.argmax(2);
            let conf = burn::tensor::activation::softmax(logits.clone(), 2)
                .gather(2, x0.clone())
                .reshape([batch * n]);
            let (got_x0, got_conf) =
                argmax_with_confidence(&logits, noise64).expect("flex f32 is fused");
            assert_eq!(
                got_x0,
                x0.reshape([batch * n])
                    .into_data()
                    .convert::<i64>()
                    .to_vec::<i64>()
                    .unwrap()
            );
            TensorData::new(got_conf, [batch * n])
                .assert_approx_eq::<f32>(&conf.into_data(), Tolerance::relative(1e-5));
        }
        assert_eq!(argmax_with_confidence(&logits, None).unwrap().0[0], 7);
        assert!(argmax_with_confidence(&logits, Some(&noise64[..10])).is_none());
    }

    #[test]
    fn noise_is_added_in_f64() {
        // 1.0 + 1e-9 rounds to 1.0 in f32 (a tie, the first index would win); in f64 it is larger.
        let logits: Tensor<burn::backend::Flex, 3> = Tensor::from_data(
            TensorData::new(vec![1.0f32, 1.0], [1, 1, 2]),
            &Default::default(),
        );
        let (x0, _) = argmax_with_confidence(&logits, Some(&[0.0, 1e-9])).expect("fused");
        assert_eq!(x0, [1]);
    }
}
