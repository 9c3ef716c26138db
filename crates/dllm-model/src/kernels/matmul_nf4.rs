//! The linear product `y = x W` with f32 activations and a frozen NF4 weight
//! ([`Nf4Weight`], docs/algorithm.md §1), decoded panel by panel inside the product
//! ([`matmul_half`](super::matmul_half)'s panel loop over an [`Nf4Slice`]): no decoded copy
//! of the layer is made.
//!
//! Gradients: `dx = dy Wᵀ` by the same panel loop over the stored `[out, in]` layout, decoded
//! again; the weight is frozen (bitsandbytes' `Params4bit` has no gradient), so the backward
//! pass keeps only the packed weight, never `x`. Checked against autodiff of `matmul` on the
//! decoded weight in the tests.

use burn::tensor::{backend::Backend, Tensor};

use super::all_f32;
use crate::nf4_weight::Nf4Weight;

#[cfg(feature = "flex")]
use super::flex::op_prelude::*;
#[cfg(feature = "flex")]
use super::flex::{
    flex_tensor, forward_strided, from_ad, from_flex, int_to_flex, is_flex, matrix_view, to_ad,
    to_flex, with_autodiff_flex,
};
#[cfg(feature = "flex")]
use super::matmul_half::{matmul_half_host, HalfMatrix, HalfSlice, Nf4Slice};
#[cfg(feature = "flex")]
use crate::nf4::Nf4DType;

/// `x W` for `x` `[rows, in]` and an NF4 weight of `[in, out]`, in f32, on the CPU backend
/// (plain or autodiff); `None` elsewhere (the caller decodes the layer and multiplies).
pub fn matmul_nf4<B: Backend>(x: &Tensor<B, 2>, weight: &Nf4Weight<B>) -> Option<Tensor<B, 2>> {
    let ([rows, k], [k2, cols]) = (x.dims(), weight.dims());
    if k != k2 || rows == 0 || cols == 0 || k == 0 || !all_f32(&[x.dtype()]) {
        return None;
    }
    on_flex!({
        let packed = int_to_flex(&weight.packed)?;
        let absmax = if is_flex::<B>() {
            to_flex(&weight.absmax)
        } else {
            with_autodiff_flex!(B, C => to_ad::<B, C, 1>(&weight.absmax).primitive)?
        };
        let stored = StoredNf4 {
            packed,
            absmax,
            shape: weight.shape,
            dtype: weight.dtype,
        };
        let product = |x: FlexTensor| {
            let x = forward_strided(x);
            let values = matmul_half_host(matrix_view(&x), stored.view().transposed());
            flex_tensor(values, [rows, cols])
        };
        if is_flex::<B>() {
            return Some(from_flex(product(to_flex(x))));
        }
        with_autodiff_flex!(B, C => {
            let x = to_ad::<B, C, 2>(x);
            let out = product(x.primitive.clone());
            let out = match MatmulNf4Backward
                .prepare::<C>([x.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(stored, out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            };
            from_ad::<B, C, 2>(out)
        })
    })
}

// The packed words are read as the bytes they were made from (`Nf4Weight::new`: little-endian).
#[cfg(feature = "flex")]
const _: () = assert!(
    cfg!(target_endian = "little"),
    "NF4 words are read as little-endian bytes"
);

/// The packed weight and its absmax as flex tensors (shared storage, nothing copied).
#[cfg(feature = "flex")]
#[derive(Clone)]
struct StoredNf4 {
    packed: FlexTensor,
    absmax: FlexTensor,
    shape: [usize; 2],
    dtype: Nf4DType,
}

#[cfg(feature = "flex")]
impl StoredNf4 {
    /// The weight as stored, `[out, in]` row-major.
    fn view(&self) -> HalfMatrix<'_> {
        let [rows, cols] = self.shape;
        let slice = Nf4Slice {
            packed: &bytemuck::cast_slice::<i32, u8>(
                self.packed
                    .as_slice::<i32>()
                    .expect("packed NF4 weights are contiguous i32 words"),
            )[..(rows * cols).div_ceil(2)],
            absmax: self
                .absmax
                .as_slice::<f32>()
                .expect("NF4 absmax is contiguous f32"),
            len: rows * cols,
            dtype: self.dtype,
        };
        HalfMatrix::with_strides(HalfSlice::Nf4(slice), rows, cols, cols, 1)
    }
}

// `FlexTensor` does not implement `Debug`: the state prints its shape and dtype.
#[cfg(feature = "flex")]
impl std::fmt::Debug for StoredNf4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredNf4")
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .finish()
    }
}

/// Backward of [`matmul_nf4`]; state: the packed weight.
#[cfg(feature = "flex")]
#[derive(Debug)]
struct MatmulNf4Backward;

#[cfg(feature = "flex")]
impl Backward<Flex, 1> for MatmulNf4Backward {
    type State = StoredNf4;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = forward_strided(grads.consume::<Flex>(&ops.node));
        let [x_node] = ops.parents;
        if let Some(node) = x_node {
            let dy = matrix_view(&grad);
            let dx = matmul_half_host(dy, ops.state.view());
            grads.register::<Flex>(
                node.id,
                flex_tensor(dx, [dy.shape()[0], ops.state.shape[1]]),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{assert_close, random};
    use crate::nf4::{Nf4DType, Nf4Tensor};
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::DType;

    type A = Autodiff<Flex>;

    /// An NF4 weight of `[in, out]` and its decoded values as an f32 `[in, out]` tensor.
    fn weight<B: Backend>(d_in: usize, d_out: usize) -> (Nf4Weight<B>, Tensor<B, 2>) {
        let device = Default::default();
        let values: Vec<f32> = (0..d_in * d_out)
            .map(|i| half::bf16::from_f32((((i * 7919) % 1000) as f32 - 500.0) / 4000.0).to_f32())
            .collect();
        let host = Nf4Tensor::quantize(&values, [d_out, d_in], Nf4DType::BF16);
        let decoded = Tensor::<B, 1>::from_floats(host.dequantize().as_slice(), &device)
            .reshape([d_out, d_in])
            .transpose();
        (Nf4Weight::new(&host, &device), decoded)
    }

    #[test]
    fn the_panel_product_equals_the_product_of_the_decoded_weight() {
        for (rows, d_in, d_out) in [(5, 64, 3), (70, 320, 190)] {
            let (w, decoded) = weight::<Flex>(d_in, d_out);
            let x = random::<Flex, 2>([rows, d_in], 31);
            let want = x.clone().matmul(decoded);
            let got = matmul_nf4(&x, &w).expect("flex f32 is fused");
            assert_close(got, want, "output");
            assert_eq!(w.dequantize().dtype(), DType::BF16);
        }
    }

    #[test]
    fn the_input_gradient_matches_autodiff_and_the_weight_has_none() {
        let (rows, d_in, d_out) = (40, 128, 96);
        let (w, decoded) = weight::<A>(d_in, d_out);
        let x = random::<Flex, 2>([rows, d_in], 32);
        let r = Tensor::<A, 2>::from_inner(random::<Flex, 2>([rows, d_out], 33));
        let xa = Tensor::<A, 2>::from_inner(x.clone()).require_grad();
        let fused = matmul_nf4(&xa, &w).expect("autodiff flex is fused");
        let grads = (fused.clone() * r.clone()).sum().backward();
        let xb = Tensor::<A, 2>::from_inner(x).require_grad();
        let plain = xb.clone().matmul(decoded);
        let plain_grads = (plain.clone() * r).sum().backward();
        assert_close(fused.inner(), plain.inner(), "output");
        assert_close(
            xa.grad(&grads).expect("input gradient"),
            xb.grad(&plain_grads).expect("input gradient"),
            "input gradient",
        );
    }
}
