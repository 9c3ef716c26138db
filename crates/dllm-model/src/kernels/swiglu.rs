//! The SwiGLU product `y = silu(g) u = g σ(g) u` of the MLP (docs/algorithm.md §1), elementwise.
//!
//! Gradient (derived from the forward formula; checked against autodiff of the tensor
//! expression in the tests): `dg = dy u σ(g) (1 + g (1 - σ(g)))`, `du = dy g σ(g)`.

use burn::tensor::{backend::Backend, Tensor};
use rayon::prelude::*;

use super::simd::exp_f32;
use super::{all_f32, CHUNK};

#[cfg(feature = "flex")]
use super::flex::op_prelude::*;
#[cfg(feature = "flex")]
use super::flex::{
    flex_tensor, from_ad, from_flex, is_flex, read, record, to_ad, to_flex, with_autodiff_flex,
};

/// `silu(gate) * up`, elementwise, for tensors of the same shape.
///
/// On flex (plain or autodiff) one parallel pass; returns `None` where no kernel applies, and
/// the caller then uses tensor ops.
pub fn swiglu<B: Backend>(gate: &Tensor<B, 3>, up: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    if gate.dims() != up.dims() || !all_f32(&[gate.dtype(), up.dtype()]) {
        return None;
    }
    on_flex!({
        let shape = gate.dims();
        if is_flex::<B>() {
            let out = swiglu_host(&read(&to_flex(gate)), &read(&to_flex(up)));
            return Some(from_flex(flex_tensor(out, shape)));
        }
        with_autodiff_flex!(B, C => {
            let (gate, up) = (to_ad::<B, C, 3>(gate), to_ad::<B, C, 3>(up));
            let out = flex_tensor(swiglu_host(&read(&gate.primitive), &read(&up.primitive)), shape);
            let out = record::<C, _, _, 2>(SwigluBackward, [&gate, &up], out, |[g, u]| (g, u, shape));
            from_ad::<B, C, 3>(out)
        })
    })
}

/// `silu(gate) * up` over two slices of the same length, in parallel chunks.
fn swiglu_host(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut out = gate.to_vec();
    out.par_chunks_mut(CHUNK)
        .zip(up.par_chunks(CHUNK))
        .for_each(|(g, u)| {
            for (g, &u) in g.iter_mut().zip(u) {
                *g = *g / (1.0 + exp_f32(-*g)) * u;
            }
        });
    out
}

/// Backward of [`swiglu`]; state: the two inputs and the shape.
#[cfg(feature = "flex")]
#[derive(Debug)]
struct SwigluBackward;

#[cfg(feature = "flex")]
impl Backward<Flex, 2> for SwigluBackward {
    type State = (NodeId, NodeId, [usize; 3]);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let (gate, up, shape) = ops.state;
        let gate: FlexTensor = ckpt.retrieve_node_output(gate);
        let up: FlexTensor = ckpt.retrieve_node_output(up);
        let grad = grads.consume::<Flex>(&ops.node);
        let (d_gate, d_up) = swiglu_backward_host(&read(&gate), &read(&up), &read(&grad));
        let [gate_node, up_node] = ops.parents;
        if let Some(node) = gate_node {
            grads.register::<Flex>(node.id, flex_tensor(d_gate, shape));
        }
        if let Some(node) = up_node {
            grads.register::<Flex>(node.id, flex_tensor(d_up, shape));
        }
    }
}

/// `(d gate, d up)` of `silu(gate) * up` given the output gradient.
fn swiglu_backward_host(gate: &[f32], up: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut d_gate = vec![0.0f32; gate.len()];
    let mut d_up = vec![0.0f32; gate.len()];
    d_gate
        .par_chunks_mut(CHUNK)
        .zip(d_up.par_chunks_mut(CHUNK))
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .zip(grad.par_chunks(CHUNK))
        .for_each(|(((dg, du), (g, u)), dy)| {
            for i in 0..dg.len() {
                let sigmoid = 1.0 / (1.0 + exp_f32(-g[i]));
                du[i] = dy[i] * g[i] * sigmoid;
                dg[i] = dy[i] * u[i] * sigmoid * (1.0 + g[i] * (1.0 - sigmoid));
            }
        });
    (d_gate, d_up)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{assert_close, output_and_grads, random, sample};
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::activation::silu;
    use burn::tensor::{Distribution, Tolerance};

    type A = Autodiff<Flex>;

    #[test]
    fn swiglu_matches_the_tensor_expression() {
        let gate = sample([3, 70, 129], 1);
        let up = sample([3, 70, 129], 2);
        let expected = silu(gate.clone()) * up.clone();
        swiglu(&gate, &up)
            .expect("flex f32 uses the host kernel")
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::relative(1e-5));
    }

    #[test]
    fn swiglu_gradients_match_autodiff() {
        let shape = [2, 19, 40];
        let inputs = [random::<Flex, 3>(shape, 1), random(shape, 2)];
        let r = random::<Flex, 3>(shape, 3);
        let fused = output_and_grads::<A, 3, 3>(&inputs, &r, |t| {
            swiglu(&t[0], &t[1]).expect("autodiff flex is fused")
        });
        let plain = output_and_grads::<A, 3, 3>(&inputs, &r, |t| silu(t[0].clone()) * t[1].clone());
        assert_close(fused.0, plain.0, "output");
        for (i, (f, p)) in fused.1.into_iter().zip(plain.1).enumerate() {
            assert_close(f, p, &format!("gradient {i}"));
        }
    }

    #[test]
    fn untracked_inputs_stay_untracked() {
        let g = Tensor::<A, 3>::random([2, 3, 4], Distribution::Default, &Default::default());
        let u = g.clone();
        let out = swiglu(&g, &u).expect("fused");
        assert!(!out.is_require_grad());
        out.into_data().assert_approx_eq::<f32>(
            &(silu(g.clone()) * g).into_data(),
            Tolerance::relative(1e-5),
        );
    }
}
