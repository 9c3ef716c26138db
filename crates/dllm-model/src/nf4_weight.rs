//! A frozen linear weight kept in NF4 on the device ([`crate::nf4`]'s format), multiplied as
//! bitsandbytes' `Linear4bit` does: the weight decoded to its dtype (bf16 for LLaDA and Dream),
//! then an ordinary product.
//!
//! - On the CPU backend (flex, plain or under autodiff) the product reads the packed weight
//!   panel by panel inside the matrix kernel (`kernels/matmul_nf4.rs`): no decoded copy of a
//!   layer exists, in the forward pass or in the backward pass (which re-decodes its panels for
//!   `dx = dy Wᵀ`).
//! - On every other backend (WGPU, CUDA) one layer's weight is decoded at a time with burn's
//!   integer and bitwise ops and a gather of the codebook ([`Nf4Weight::dequantize`]), then
//!   multiplied; the decoded layer lives until the product (and, under autodiff, until its
//!   backward pass) ends.
//!
//! The absmax is decoded from its double quantisation once, at load (f32, one per 64 values):
//! the same values bitsandbytes decodes before every product.

use burn::module::Module;
use burn::tensor::{backend::Backend, DType, ElementConversion, Int, Tensor, TensorData};

use crate::nf4::{Nf4DType, Nf4Tensor, BLOCK_SIZE, NF4_CODE};

/// A linear weight in NF4: packed indices and per-block absmax on the device.
#[derive(Module, Debug)]
pub struct Nf4Weight<B: Backend> {
    /// Packed 4-bit indices of the weight as Hugging Face stores it, `[out, in]` row-major: the
    /// bytes (two indices each, the first in the high nibble) four to an i32 word, little-endian
    /// (byte `k` of a word is bits `8k..8k + 8`). Words rather than bytes because WGSL has no
    /// 8-bit integers; the memory is the same.
    pub packed: Tensor<B, 1, Int>,
    /// Per-block absmax, f32, one per 64 values.
    pub absmax: Tensor<B, 1>,
    /// `[out, in]`.
    #[module(skip)]
    pub shape: [usize; 2],
    /// The dtype decoded values are rounded to.
    #[module(skip)]
    pub dtype: Nf4DType,
}

impl<B: Backend> Nf4Weight<B> {
    /// The weight of `tensor` on `device` (its absmax decoded).
    pub fn new(tensor: &Nf4Tensor, device: &B::Device) -> Self {
        let words: Vec<i32> = tensor
            .packed
            .chunks(4)
            .map(|c| {
                let mut b = [0u8; 4];
                b[..c.len()].copy_from_slice(c);
                i32::from_le_bytes(b)
            })
            .collect();
        let count = words.len();
        let packed = TensorData::new(words, [count]);
        let absmax = tensor.absmax.decode();
        let blocks = absmax.len();
        Self {
            packed: Tensor::from_data(packed, (device, DType::I32)),
            absmax: Tensor::from_data(TensorData::new(absmax, [blocks]), (device, DType::F32)),
            shape: tensor.shape,
            dtype: tensor.dtype,
        }
    }

    /// `[in, out]`, the layer's sizes.
    pub fn dims(&self) -> [usize; 2] {
        [self.shape[1], self.shape[0]]
    }

    /// The decoded weight `[in, out]` (a transposed view of `[out, in]`), in the weight's dtype
    /// where the backend computes in it, else in f32 holding the same values: burn's integer
    /// and bitwise ops, a gather of the codebook, the absmax product in f32, one rounding.
    pub fn dequantize(&self) -> Tensor<B, 2> {
        let device = self.absmax.device();
        let [rows, cols] = self.shape;
        let n = rows * cols;
        let words = self.packed.clone();
        let count = self.packed.dims()[0];
        // The eight indices of a word in value order: byte k's high nibble, then its low one.
        let indices: Vec<Tensor<B, 1, Int>> = [4, 0, 12, 8, 20, 16, 28, 24]
            .into_iter()
            .map(|shift| {
                words
                    .clone()
                    .bitwise_right_shift_scalar(shift.elem())
                    .bitwise_and_scalar(15.elem())
            })
            .collect();
        let indices = Tensor::stack::<2>(indices, 1).reshape([8 * count]);
        let blocks = self.absmax.dims()[0];
        let padded = blocks * BLOCK_SIZE;
        let indices = if padded > 8 * count {
            // The last block is short: pad with the index of 0.0.
            let fill =
                Tensor::<B, 1, Int>::full([padded - 8 * count], 7, &device).cast(indices.dtype());
            Tensor::cat(vec![indices, fill], 0)
        } else {
            indices.slice(0..padded)
        };
        let code = Tensor::<B, 1>::from_data(TensorData::new(NF4_CODE.to_vec(), [16]), &device);
        let values = code.select(0, indices).reshape([blocks, BLOCK_SIZE])
            * self.absmax.clone().reshape([blocks, 1]);
        let values = values.reshape([padded]).slice(0..n).reshape([rows, cols]);
        self.rounded(values).transpose()
    }

    /// f32 `values` rounded to the weight's dtype: a cast where the backend computes in it,
    /// else a Veltkamp split in f32 (nearest, as the cast; a value exactly halfway between two
    /// neighbours may round away from the even one).
    fn rounded(&self, values: Tensor<B, 2>) -> Tensor<B, 2> {
        let target = match self.dtype {
            Nf4DType::F32 => return values,
            Nf4DType::BF16 => DType::BF16,
            Nf4DType::F16 => DType::F16,
        };
        if B::supports_dtype(&values.device(), target) {
            return values.cast(target);
        }
        let bits = match self.dtype {
            Nf4DType::F16 => 11,
            _ => 8,
        };
        round_to_bits(values, bits)
    }
}

/// `values` rounded to `bits` significant bits in f32 arithmetic (a Veltkamp split: nearest;
/// a value exactly halfway between two neighbours may round away from the even one). Exponent
/// range is not narrowed: f16 weights beyond ±65504 were refused when the checkpoint was read.
fn round_to_bits<B: Backend>(values: Tensor<B, 2>, bits: u32) -> Tensor<B, 2> {
    let split = values.clone() * (f64::from(1u32 << (24 - bits)) + 1.0);
    split.clone() - (split - values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn the_generic_decoding_equals_the_host_decoding() {
        let device = Default::default();
        // 300 values: the last of five blocks holds 44.
        let values: Vec<f32> = (0..300)
            .map(|i| half::bf16::from_f32(((i * 37 % 101) as f32 - 50.0) / 17.0).to_f32())
            .collect();
        for dtype in [Nf4DType::BF16, Nf4DType::F32] {
            let host = Nf4Tensor::quantize(&values, [3, 100], dtype);
            let want = host.dequantize();
            let weight = Nf4Weight::<NdArray>::new(&host, &device);
            assert_eq!(weight.dims(), [100, 3]);
            let got: Vec<f32> = weight
                .dequantize()
                .transpose()
                .cast(DType::F32)
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap();
            assert_eq!(got, want, "{dtype:?}");
        }
    }

    #[test]
    fn rounding_in_f32_equals_the_bf16_cast() {
        let device = Default::default();
        let values: Vec<f32> = (0..4000)
            .map(|i| ((i as f32) * 0.618_034).sin() * 10f32.powi(i % 7 - 3))
            .collect();
        let t = Tensor::<NdArray, 1>::from_floats(values.as_slice(), &device).reshape([40, 100]);
        let got: Vec<f32> = round_to_bits(t, 8).into_data().to_vec().unwrap();
        for (v, g) in values.iter().zip(got) {
            assert_eq!(g, half::bf16::from_f32(*v).to_f32(), "{v}");
        }
    }
}
