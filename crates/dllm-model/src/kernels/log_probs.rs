//! Per-token log-likelihoods `log softmax(logits)[target]` over the vocabulary, the quantity
//! the ELBO and the training losses sum (docs/algorithm.md §3, §4, §6).
//!
//! Gradient: `d logits = g (onehot(target) - softmax(logits))` per row, written only for rows
//! with `g ≠ 0` (positions the loss counts); checked against autodiff of `log_softmax` then
//! `gather` in the tests.

use burn::tensor::{activation::log_softmax, backend::Backend, Int, Tensor};
use rayon::prelude::*;

use super::simd::{exp_f32, row_max_and_exp_sum};
use super::{all_f32, CHUNK};

#[cfg(feature = "flex")]
use super::flex::op_prelude::*;
#[cfg(feature = "flex")]
use super::flex::{
    flex_tensor, from_ad, from_flex, is_flex, read, record, runs_on_flex, to_ad, to_flex,
    with_autodiff_flex,
};

/// `log softmax(logits)[target]` over the vocabulary: `logits` `[n, len, vocab]`, `targets`
/// `[n, len, 1]`, result `[n, len]` — the per-token log-likelihood of the ELBO and of the
/// training losses (docs/algorithm.md §3, §4, §6).
///
/// On the CPU backend (plain or autodiff) one parallel pass per row computes the log-sum-exp
/// and picks the target, and the backward pass writes `g (onehot - softmax)` only for rows with
/// a non-zero gradient (the masked positions); elsewhere it is `log_softmax` then `gather`.
pub fn token_log_probs<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 3, Int>,
) -> Tensor<B, 2> {
    let [n, len, vocab] = logits.dims();
    if targets.dims() == [n, len, 1] && vocab > 0 && all_f32(&[logits.dtype()]) {
        if let Some(out) = on_flex!(flex_token_log_probs(&logits, &targets)) {
            return out;
        }
    }
    log_softmax(logits, 2).gather(2, targets).reshape([n, len])
}

/// [`token_log_probs`] `[n, len]` on flex (plain or autodiff); `None` elsewhere and when a
/// target lies outside the vocabulary (the caller's `gather` then reports it).
#[cfg(feature = "flex")]
fn flex_token_log_probs<B: Backend>(
    logits: &Tensor<B, 3>,
    targets: &Tensor<B, 3, Int>,
) -> Option<Tensor<B, 2>> {
    if !runs_on_flex::<B>() {
        return None;
    }
    let [n, len, vocab] = logits.dims();
    let targets: Vec<usize> = targets
        .clone()
        .into_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .ok()?
        .into_iter()
        .map(|t| usize::try_from(t).ok().filter(|&t| t < vocab))
        .collect::<Option<_>>()?;
    if is_flex::<B>() {
        let out = token_log_probs_host(&read(&to_flex(logits)), &targets, vocab);
        return Some(from_flex(flex_tensor(out, [n, len])));
    }
    with_autodiff_flex!(B, C => {
        let logits = to_ad::<B, C, 3>(logits);
        let out = token_log_probs_host(&read(&logits.primitive), &targets, vocab);
        let out = flex_tensor(out, [n, len]);
        let out = record::<C, _, _, 1>(TokenLogProbsBackward, [&logits], out, |[l]| {
            (l, Arc::new(targets), [n, len, vocab])
        });
        from_ad::<B, C, 2>(out)
    })
}

/// [`token_log_probs`] on host rows of `vocab` logits, one target per row.
fn token_log_probs_host(logits: &[f32], targets: &[usize], vocab: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; targets.len()];
    let rows_per_task = (CHUNK / vocab).max(1);
    out.par_chunks_mut(rows_per_task)
        .zip(logits.par_chunks(rows_per_task * vocab))
        .zip(targets.par_chunks(rows_per_task))
        .for_each(|((out, logits), targets)| {
            for ((o, row), &t) in out.iter_mut().zip(logits.chunks(vocab)).zip(targets) {
                let (max, sum) = row_max_and_exp_sum(row);
                *o = row[t] - max - sum.ln();
            }
        });
    out
}

/// Backward of [`token_log_probs`]; state: the logits, the targets and the logits' shape.
#[cfg(feature = "flex")]
#[derive(Debug)]
struct TokenLogProbsBackward;

#[cfg(feature = "flex")]
impl Backward<Flex, 1> for TokenLogProbsBackward {
    type State = (NodeId, Arc<Vec<usize>>, [usize; 3]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let (logits, targets, shape) = ops.state;
        let grad = grads.consume::<Flex>(&ops.node);
        let [logits_node] = ops.parents;
        if let Some(node) = logits_node {
            let logits: FlexTensor = ckpt.retrieve_node_output(logits);
            let d = token_log_probs_backward_host(&read(&logits), &targets, &read(&grad), shape[2]);
            grads.register::<Flex>(node.id, flex_tensor(d, shape));
        }
    }
}

/// The logits' gradient `g (onehot(target) - softmax(row))` per row, zero for rows with `g = 0`
/// (positions the loss does not count, e.g. unmasked ones).
fn token_log_probs_backward_host(
    logits: &[f32],
    targets: &[usize],
    grad: &[f32],
    vocab: usize,
) -> Vec<f32> {
    let mut d = vec![0.0f32; logits.len()];
    let rows_per_task = (CHUNK / vocab).max(1);
    d.par_chunks_mut(rows_per_task * vocab)
        .zip(logits.par_chunks(rows_per_task * vocab))
        .zip(
            targets
                .par_chunks(rows_per_task)
                .zip(grad.par_chunks(rows_per_task)),
        )
        .for_each(|((d, logits), (targets, grad))| {
            for (((d, row), &t), &g) in d
                .chunks_mut(vocab)
                .zip(logits.chunks(vocab))
                .zip(targets)
                .zip(grad)
            {
                if g == 0.0 {
                    continue;
                }
                let (max, sum) = row_max_and_exp_sum(row);
                let scale = -g / sum;
                for (d, &x) in d.iter_mut().zip(row) {
                    *d = scale * exp_f32(x - max);
                }
                d[t] += g;
            }
        });
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{assert_close, output_and_grads, random};
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::TensorData;

    type A = Autodiff<Flex>;

    #[test]
    fn token_log_probs_and_gradients_match_autodiff() {
        let (n, len, vocab) = (3, 7, 37);
        let logits = random::<Flex, 3>([n, len, vocab], 15).mul_scalar(3.0);
        let ids: Vec<i64> = (0..n * len).map(|i| ((i * 7 + 3) % vocab) as i64).collect();
        let targets = Tensor::<A, 3, burn::tensor::Int>::from_data(
            TensorData::new(ids, [n, len, 1]),
            &Default::default(),
        );
        // Zero weight on some positions: their rows take the skip path of the backward pass.
        let r = random::<Flex, 2>([n, len], 16)
            .mask_fill(random::<Flex, 2>([n, len], 17).greater_elem(0.5), 0.0);
        let fused = output_and_grads::<A, 3, 2>(std::slice::from_ref(&logits), &r, |t| {
            token_log_probs(t[0].clone(), targets.clone())
        });
        let plain = output_and_grads::<A, 3, 2>(std::slice::from_ref(&logits), &r, |t| {
            burn::tensor::activation::log_softmax(t[0].clone(), 2)
                .gather(2, targets.clone())
                .reshape([n, len])
        });
        assert_close(fused.0, plain.0, "output");
        assert_close(fused.1[0].clone(), plain.1[0].clone(), "gradient");
    }
}
