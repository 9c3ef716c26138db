//! Test inputs and comparisons shared by the kernels' tests: seeded tensors, and each kernel
//! under autodiff against autodiff of the tensor expression it replaces (same output, same
//! gradient for every input, for `loss = sum(out * r)` with random `r`).

use burn::backend::Flex;
use burn::tensor::{backend::Backend, Tensor, TensorData};

/// A seeded flex tensor of values in `[-12, 12)`.
pub(super) fn sample(shape: [usize; 3], seed: u64) -> Tensor<Flex, 3> {
    let n: usize = shape.iter().product();
    let mut state = seed;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 24.0
        })
        .collect();
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

/// A seeded tensor of values in `[-2, 2)`.
pub(super) fn random<B: Backend, const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect();
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

/// Asserts equal shapes and a worst relative difference below `2e-5`.
pub(super) fn assert_close<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
    what: &str,
) {
    let (a, b) = (a.into_data(), b.into_data());
    assert_eq!(a.shape, b.shape, "{what}: shapes differ");
    let (a, b) = (a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0f32, f32::max);
    assert!(worst < 2e-5, "{what}: worst relative difference {worst}");
}

/// Runs `op` on fresh leaves made from `inputs` and returns the output and each gradient.
pub(super) fn output_and_grads<
    B: burn::tensor::backend::AutodiffBackend,
    const D: usize,
    const O: usize,
>(
    inputs: &[Tensor<B::InnerBackend, D>],
    r: &Tensor<B::InnerBackend, O>,
    op: impl Fn(&[Tensor<B, D>]) -> Tensor<B, O>,
) -> (Tensor<B::InnerBackend, O>, Vec<Tensor<B::InnerBackend, D>>) {
    let leaves: Vec<Tensor<B, D>> = inputs
        .iter()
        .map(|t| Tensor::from_inner(t.clone()).require_grad())
        .collect();
    let out = op(&leaves);
    let grads = (out.clone() * Tensor::from_inner(r.clone()))
        .sum()
        .backward();
    let grads = leaves
        .iter()
        .map(|l| l.grad(&grads).expect("every input gets a gradient"))
        .collect();
    (out.inner(), grads)
}
