//! NF4 ("4-bit NormalFloat") with double quantisation, stored and decoded exactly as
//! bitsandbytes does (`bitsandbytes/functional.py`: `quantize_4bit`, `dequantize_4bit`,
//! `quantize_blockwise`, `create_dynamic_map`; `csrc/kernels.cu`: the codebook and
//! `dQuantizeNF4`, `dQuantize`).
//!
//! A tensor's values, read row-major, are cut into blocks of [`BLOCK_SIZE`] (the last may be
//! shorter). Each block keeps its largest magnitude `absmax`; every value `v` becomes the index
//! of the codebook entry nearest to `v / absmax` ([`NF4_CODE`], 16 quantiles of a normal
//! distribution), two indices per byte, the first in the high nibble. Decoding is
//! `NF4_CODE[i] * absmax` in f32, rounded to the checkpoint's dtype (to nearest, ties to even).
//!
//! Double quantisation stores the per-block `absmax` themselves in 8 bits: their mean is
//! subtracted (`offset`), and the differences are quantised in blocks of
//! [`NESTED_BLOCK_SIZE`] against bitsandbytes' signed 8-bit dynamic map ([`dynamic_map`]), with
//! one f32 absmax per second-level block. Decoding is `map[code] * nested_absmax + offset` in f32.
//!
//! Where bitsandbytes' backends disagree this follows a stated one:
//! - 4-bit indices: the CUDA kernel's decision tree and the CPU backend's bucketing use the same
//!   thresholds (the f32 midpoints of neighbouring codes, a value on a midpoint going down);
//!   a block whose absmax is zero encodes every value as the code of 0.0, as the CPU backend does
//!   (the CUDA kernel divides by zero and stores code 0, which also decodes to 0).
//! - 8-bit indices of the nested absmax: the CUDA kernel's exact nearest-code search
//!   (`dQuantize`); the CPU backend's lookup table of 65 536 bins is nearly nearest and picks the
//!   neighbouring code for a small share of values (measured by the tests against bitsandbytes).
//!
//! Written by hand: no Rust crate reads or writes bitsandbytes' format.

use half::{bf16, f16};

/// Values per first-level block (bitsandbytes' default for `quantize_4bit`, and transformers').
pub const BLOCK_SIZE: usize = 64;

/// First-level absmax values per second-level block (`quantize_4bit(compress_statistics=True)`).
pub const NESTED_BLOCK_SIZE: usize = 256;

/// bitsandbytes' NF4 codebook (`get_4bit_type("nf4")`), in index order.
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// The index of the code nearest to `x` (`x` in [-1, 1]): above a midpoint goes up, on it stays
/// down (`dQuantizeNF4`'s `x > threshold`, `torch.bucketize(.., right=False)`).
fn nf4_index(x: f32) -> u8 {
    let mut i = 0;
    while i < 15 && x > 0.5 * (NF4_CODE[i] + NF4_CODE[i + 1]) {
        i += 1;
    }
    i as u8
}

/// `torch.linspace(start, end, steps, dtype=torch.float32)` as torch's vectorised CPU kernel
/// computes it: the first half counts up from `start`, the second down from `end`, each value
/// one fused multiply-add of the f32 step (one rounding). Scalar torch builds round twice and
/// differ in the last bit of a few values: a checkpoint's own map is always the one decoded.
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

/// bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map(signed=True)`): for exponents
/// 10^-6 … 10^0, the midpoints of `2^i + 1` evenly spaced points of [0.1, 1] scaled by the
/// exponent, both signs, then 0 and 1, sorted. 256 values in [-1, 1].
pub fn dynamic_map() -> [f32; 256] {
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..7 {
        let bounds = linspace_f32(0.1, 1.0, (1 << i) + 1);
        let scale = 10f64.powi(i - 6) as f32;
        let means: Vec<f32> = bounds.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        data.extend(means.iter().map(|&m| scale * m));
        data.extend(means.iter().map(|&m| -scale * m));
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    let mut out = [0.0; 256];
    out.copy_from_slice(&data);
    out
}

/// The index of the code of the sorted 256-entry `map` nearest to `x`: bitsandbytes' CUDA
/// `dQuantize<0>`, its binary search and its tie rules.
fn dynamic_index(map: &[f32; 256], x: f32) -> u8 {
    let (mut pivot, mut upper_pivot, mut lower_pivot) = (127usize, 255usize, 0usize);
    let (mut lower, mut upper) = (-1.0f32, 1.0f32);
    let mut val = map[pivot];
    let mut i = 64;
    while i > 0 {
        if x > val {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = map[pivot];
        i >>= 1;
    }
    if upper_pivot == 255 {
        upper = map[upper_pivot];
    }
    if lower_pivot == 0 {
        lower = map[lower_pivot];
    }
    let chosen = if x > val {
        if x > (upper + val) * 0.5 {
            upper_pivot
        } else {
            pivot
        }
    } else if x < (lower + val) * 0.5 {
        lower_pivot
    } else {
        pivot
    };
    chosen as u8
}

/// The largest magnitude of a block.
fn block_absmax(block: &[f32]) -> f32 {
    block.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// First-level NF4 of `values`: packed indices (`ceil(n / 2)` bytes, the first value of a pair
/// in the high nibble, a missing last value as code 0.0) and one absmax per block of 64.
/// bitsandbytes' `quantize_4bit(.., quant_type="nf4")`: a full block is scaled by the f32
/// reciprocal of its absmax, the shorter last block divided by its absmax; scaled values are
/// clamped to [-1, 1]; an absmax of zero scales by 1e38.
pub fn quantize_4bit(values: &[f32]) -> (Vec<u8>, Vec<f32>) {
    use rayon::prelude::*;
    // Independent blocks, quantised in parallel chunks of whole blocks (an even number of
    // values, so every chunk's bytes are its own) and concatenated in order.
    const CHUNK: usize = 1024 * BLOCK_SIZE;
    let parts: Vec<(Vec<u8>, Vec<f32>)> =
        values.par_chunks(CHUNK).map(quantize_4bit_serial).collect();
    let mut packed = Vec::with_capacity(values.len().div_ceil(2));
    let mut absmax = Vec::with_capacity(values.len().div_ceil(BLOCK_SIZE));
    for (p, a) in parts {
        packed.extend(p);
        absmax.extend(a);
    }
    (packed, absmax)
}

/// [`quantize_4bit`] on one thread.
fn quantize_4bit_serial(values: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut indices = Vec::with_capacity(values.len() + 1);
    let mut absmax = Vec::with_capacity(values.len().div_ceil(BLOCK_SIZE));
    for block in values.chunks(BLOCK_SIZE) {
        let stored = block_absmax(block);
        absmax.push(stored);
        let am = stored.max(1e-38);
        let inv = 1.0 / am;
        let full = block.len() == BLOCK_SIZE;
        indices.extend(block.iter().map(|&v| {
            let scaled = if full { v * inv } else { v / am };
            nf4_index(scaled.clamp(-1.0, 1.0))
        }));
    }
    if indices.len() % 2 == 1 {
        indices.push(nf4_index(0.0));
    }
    let packed = indices.chunks(2).map(|p| (p[0] << 4) | p[1]).collect();
    (packed, absmax)
}

/// 8-bit blockwise quantisation of `values` against the sorted `map` in blocks of `block`:
/// one absmax per block and one code per value (bitsandbytes' `quantize_blockwise`; a block
/// of zeros gets code 0 and absmax 0, as its CPU kernel).
pub fn quantize_blockwise(values: &[f32], map: &[f32; 256], block: usize) -> (Vec<u8>, Vec<f32>) {
    let mut codes = Vec::with_capacity(values.len());
    let mut absmax = Vec::with_capacity(values.len().div_ceil(block));
    for chunk in values.chunks(block) {
        let am = block_absmax(chunk);
        absmax.push(am);
        if am == 0.0 {
            codes.extend(std::iter::repeat_n(0u8, chunk.len()));
            continue;
        }
        let inv = 1.0 / am;
        codes.extend(chunk.iter().map(|&v| dynamic_index(map, v * inv)));
    }
    (codes, absmax)
}

/// The per-block absmax of an NF4 tensor, as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    /// One f32 per block (`bnb_4bit_use_double_quant = false`).
    Plain(Vec<f32>),
    /// Double quantised (`bnb_4bit_use_double_quant = true`).
    Nested(NestedAbsmax),
}

/// Double-quantised absmax: 8-bit codes of `absmax - offset` in blocks of
/// [`NESTED_BLOCK_SIZE`].
#[derive(Debug, Clone, PartialEq)]
pub struct NestedAbsmax {
    /// One code per first-level block (`weight.absmax`, uint8).
    pub codes: Vec<u8>,
    /// One f32 per second-level block (`weight.nested_absmax`).
    pub absmax: Vec<f32>,
    /// The 256-entry map the codes index (`weight.nested_quant_map`).
    pub map: Vec<f32>,
    /// The mean subtracted before quantising (`nested_offset`).
    pub offset: f32,
    /// Codes per second-level block (`nested_blocksize`).
    pub block: usize,
}

impl NestedAbsmax {
    /// Double quantisation of first-level `absmax` (`quantize_4bit(compress_statistics=True)`):
    /// the f32 mean (summed in f64) is subtracted, the differences quantised against
    /// [`dynamic_map`] in blocks of 256.
    pub fn quantize(absmax: &[f32]) -> Self {
        let offset =
            (absmax.iter().map(|&a| f64::from(a)).sum::<f64>() / absmax.len() as f64) as f32;
        let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
        let map = dynamic_map();
        let (codes, nested) = quantize_blockwise(&centred, &map, NESTED_BLOCK_SIZE);
        Self {
            codes,
            absmax: nested,
            map: map.to_vec(),
            offset,
            block: NESTED_BLOCK_SIZE,
        }
    }

    /// The first-level absmax: `map[code] * nested_absmax` in f32, plus `offset`
    /// (`dequantize_blockwise`, then `absmax += offset`).
    pub fn decode(&self) -> Vec<f32> {
        self.codes
            .iter()
            .enumerate()
            .map(|(i, &c)| self.map[c as usize] * self.absmax[i / self.block] + self.offset)
            .collect()
    }
}

impl Absmax {
    /// The per-block absmax in f32.
    pub fn decode(&self) -> Vec<f32> {
        match self {
            Self::Plain(v) => v.clone(),
            Self::Nested(n) => n.decode(),
        }
    }

    /// How many first-level blocks it covers.
    pub fn len(&self) -> usize {
        match self {
            Self::Plain(v) => v.len(),
            Self::Nested(n) => n.codes.len(),
        }
    }

    /// Whether it covers no block.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The dtype an NF4 tensor decodes to (bitsandbytes' `quant_state.dtype`: the weight's dtype
/// when it was quantised).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nf4DType {
    /// `bfloat16` (LLaDA's and Dream's checkpoints).
    BF16,
    /// `float16`.
    F16,
    /// `float32`.
    F32,
}

impl Nf4DType {
    /// bitsandbytes' name (`str(torch.dtype)` without `torch.`).
    pub fn name(self) -> &'static str {
        match self {
            Self::BF16 => "bfloat16",
            Self::F16 => "float16",
            Self::F32 => "float32",
        }
    }

    /// The dtype of bitsandbytes' name, if it is one of the three.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::BF16, Self::F16, Self::F32]
            .into_iter()
            .find(|d| d.name() == name)
    }

    /// `v` rounded to this dtype (to nearest, ties to even) and widened back to f32.
    #[inline]
    pub fn round(self, v: f32) -> f32 {
        match self {
            Self::BF16 => round_bf16(v),
            Self::F16 => f16::from_f32(v).to_f32(),
            Self::F32 => v,
        }
    }
}

/// `v` rounded to the nearest bf16 (ties to even), as f32: `half::bf16::from_f32` for finite
/// values, in four integer operations (NaN, which decoded weights never are, is passed to it).
#[inline]
pub fn round_bf16(v: f32) -> f32 {
    if v.is_nan() {
        return bf16::from_f32(v).to_f32();
    }
    round_bf16_not_nan(v)
}

/// [`round_bf16`] of a value known not to be NaN (branch-free, so loops of it vectorise).
#[inline]
pub fn round_bf16_not_nan(v: f32) -> f32 {
    let bits = v.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000;
    f32::from_bits(rounded)
}

/// The 16 values a block with this `absmax` decodes to, rounded to `dtype` (`absmax` finite).
#[inline]
pub fn block_values(absmax: f32, dtype: Nf4DType) -> [f32; 16] {
    match dtype {
        Nf4DType::BF16 => std::array::from_fn(|k| round_bf16_not_nan(NF4_CODE[k] * absmax)),
        Nf4DType::F32 => std::array::from_fn(|k| NF4_CODE[k] * absmax),
        Nf4DType::F16 => std::array::from_fn(|k| f16::from_f32(NF4_CODE[k] * absmax).to_f32()),
    }
}

/// The 4-bit index of value `i` of packed indices (the first of a pair in the high nibble).
#[inline]
pub fn packed_index(packed: &[u8], i: usize) -> u8 {
    let byte = packed[i / 2];
    if i.is_multiple_of(2) {
        byte >> 4
    } else {
        byte & 0x0f
    }
}

/// A matrix in NF4: what bitsandbytes keeps for one `Linear4bit` weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Tensor {
    /// Shape as stored by Hugging Face (`[out, in]` for a linear weight).
    pub shape: [usize; 2],
    /// Packed indices, `ceil(out * in / 2)` bytes, row-major.
    pub packed: Vec<u8>,
    /// Per-block absmax.
    pub absmax: Absmax,
    /// The dtype it decodes to.
    pub dtype: Nf4DType,
}

impl Nf4Tensor {
    /// NF4 with double quantisation of a row-major `[rows, cols]` matrix whose values are
    /// exactly representable in `dtype` (bitsandbytes quantises the weight in its own dtype).
    pub fn quantize(values: &[f32], shape: [usize; 2], dtype: Nf4DType) -> Self {
        assert_eq!(
            values.len(),
            shape[0] * shape[1],
            "values do not fill the shape"
        );
        let (packed, absmax) = quantize_4bit(values);
        Self {
            shape,
            packed,
            absmax: Absmax::Nested(NestedAbsmax::quantize(&absmax)),
            dtype,
        }
    }

    /// Number of values.
    pub fn numel(&self) -> usize {
        self.shape[0] * self.shape[1]
    }

    /// The 4-bit index of value `i`.
    pub fn index(&self, i: usize) -> u8 {
        packed_index(&self.packed, i)
    }

    /// Every value decoded (`NF4_CODE[i] * absmax` in f32, rounded to the tensor's dtype),
    /// row-major, as f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let absmax = self.absmax.decode();
        (0..self.numel())
            .map(|i| {
                self.dtype
                    .round(NF4_CODE[self.index(i) as usize] * absmax[i / BLOCK_SIZE])
            })
            .collect()
    }

    /// Bytes it takes in memory or on disk (packed indices, absmax and their maps).
    pub fn stored_bytes(&self) -> usize {
        let absmax = match &self.absmax {
            Absmax::Plain(v) => 4 * v.len(),
            Absmax::Nested(n) => n.codes.len() + 4 * n.absmax.len() + 4 * n.map.len() + 4,
        };
        self.packed.len() + absmax + 4 * NF4_CODE.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codebook_is_sorted_and_indices_round_trip() {
        assert!(NF4_CODE.windows(2).all(|w| w[0] < w[1]));
        for (i, &c) in NF4_CODE.iter().enumerate() {
            assert_eq!(nf4_index(c), i as u8);
        }
        // On a midpoint a value goes down, just above it up.
        let mid = 0.5 * (NF4_CODE[7] + NF4_CODE[8]);
        assert_eq!(nf4_index(mid), 7);
        assert_eq!(nf4_index(f32::from_bits(mid.to_bits() + 1)), 8);
    }

    #[test]
    fn dynamic_map_has_the_shape_of_bitsandbytes_map() {
        let map = dynamic_map();
        assert!(map.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(
            (map[0], map[254], map[255]),
            (-0.992_968_75, 0.992_968_75, 1.0)
        );
        assert_eq!(map.iter().filter(|&&v| v == 0.0).count(), 1);
        for &v in &map {
            assert_eq!(
                dynamic_index(&map, v),
                map.iter().position(|&m| m == v).unwrap() as u8
            );
        }
    }

    #[test]
    fn bf16_rounding_equals_the_half_crate() {
        let mut x = 0x1234_5678u32;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let v = f32::from_bits(x);
            if v.is_finite() {
                assert_eq!(
                    round_bf16(v).to_bits(),
                    bf16::from_f32(v).to_f32().to_bits(),
                    "{v}"
                );
            }
        }
        // Ties go to even; values rounding past the largest bf16 become infinite.
        for bits in [0x3f80_8000u32, 0x3f81_8000, 0x7f7f_ffff, 0x0000_8000] {
            let v = f32::from_bits(bits);
            assert_eq!(
                round_bf16(v).to_bits(),
                bf16::from_f32(v).to_f32().to_bits()
            );
        }
    }

    #[test]
    fn packing_puts_the_first_value_in_the_high_nibble() {
        let values = [1.0, -1.0, 0.0];
        let (packed, absmax) = quantize_4bit(&values);
        assert_eq!(absmax, vec![1.0]);
        assert_eq!(packed, vec![0xf0, 0x77]);
    }

    #[test]
    fn double_quantisation_decodes_near_the_absmax() {
        let absmax: Vec<f32> = (0..600)
            .map(|i| 0.01 + (i as f32 * 0.37).sin().abs() * 0.05)
            .collect();
        let nested = NestedAbsmax::quantize(&absmax);
        assert_eq!((nested.codes.len(), nested.absmax.len()), (600, 3));
        for (a, b) in absmax.iter().zip(nested.decode()) {
            assert!((a - b).abs() < 2e-3, "{a} vs {b}");
        }
    }
}
