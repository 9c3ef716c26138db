//! The linear product `y = x w` with f32 activations and a bf16, f16 or NF4 weight
//! (docs/algorithm.md §1), for models whose weights stay in half precision in memory
//! (`model.dtype = "bf16"`) or in 4 bits (`model.quantize = "nf4"`, [`crate::nf4`]).
//!
//! The weight is never converted whole: the product runs over panels of `PANEL_BYTES` of
//! the weight's columns, each task converting its panel to f32 into a buffer it reuses and
//! multiplying the whole `x` by it into its own columns of the output. LLaDA-8B's LM head
//! (4096 x 126,464, 1 GiB in bf16) would be 2 GiB as one f32 copy; its panels are 2 MiB each
//! and there are as many live as there are threads. Each output element is one `gemm` over the
//! full inner dimension, so results do not depend on scheduling.
//!
//! Gradients: `dx = dy wᵀ` by the same panel loop over the transposed view (no copy), and —
//! when the weight itself is trained (full fine-tuning in bf16) — `dw = xᵀ dy` in f32, rounded
//! to the weight's dtype once. Checked against autodiff of `matmul` on the f32 weight in the
//! tests.
//!
//! Written by hand because neither `gemm` nor burn's CPU backend multiplies an f32 matrix by a
//! bf16 one without converting the bf16 operand first (burn casts the whole tensor).

use half::{bf16, f16};
use rayon::prelude::*;

use super::gemm::{gemm_to_ptr, SharedOut, Strided};
use crate::nf4::{block_values, packed_index, Nf4DType, BLOCK_SIZE, NF4_CODE};

/// Bytes of f32 weight values one task converts and multiplies at a time.
const PANEL_BYTES: usize = 2 << 20;

/// Weight values narrower than f32, borrowed from a tensor's storage.
#[derive(Debug, Clone, Copy)]
pub(super) enum HalfSlice<'a> {
    /// bf16 storage.
    BF16(&'a [bf16]),
    /// f16 storage.
    F16(&'a [f16]),
    /// NF4 storage: each value decoded as `NF4_CODE[index] * absmax[block]`, rounded to `dtype`.
    Nf4(Nf4Slice<'a>),
}

/// Packed NF4 values ([`crate::nf4`]): `len` values, two per byte, one absmax per 64.
#[derive(Debug, Clone, Copy)]
pub(super) struct Nf4Slice<'a> {
    /// Packed indices, the first of a pair in the high nibble.
    pub packed: &'a [u8],
    /// Per-block absmax.
    pub absmax: &'a [f32],
    /// Number of values.
    pub len: usize,
    /// The dtype decoded values are rounded to.
    pub dtype: Nf4DType,
}

impl Nf4Slice<'_> {
    /// Value `i`, decoded.
    #[inline]
    fn value(&self, i: usize) -> f32 {
        self.dtype
            .round(NF4_CODE[self.index(i) as usize] * self.absmax[i / BLOCK_SIZE])
    }

    /// The 4-bit index of value `i`.
    #[inline]
    fn index(&self, i: usize) -> u8 {
        packed_index(self.packed, i)
    }

    /// Appends values `first..first + count`, decoded: per block the 16 possible values are
    /// decoded once (`NF4_CODE[k] * absmax`, rounded), then each value is a lookup.
    fn push_run(&self, first: usize, count: usize, out: &mut Vec<f32>) {
        let end = first + count;
        let mut i = first;
        while i < end {
            let block = i / BLOCK_SIZE;
            let block_end = ((block + 1) * BLOCK_SIZE).min(end);
            let a = self.absmax[block];
            let table = block_values(a, self.dtype);
            if i % 2 == 1 {
                out.push(table[self.index(i) as usize]);
                i += 1;
            }
            let pairs = (block_end - i) / 2;
            let bytes = &self.packed[i / 2..i / 2 + pairs];
            out.reserve(2 * pairs);
            decode_pairs(&table, bytes, &mut out.spare_capacity_mut()[..2 * pairs]);
            // SAFETY: `decode_pairs` initialised the `2 * pairs` values after the length.
            unsafe { out.set_len(out.len() + 2 * pairs) };
            i += 2 * pairs;
            if i < block_end {
                out.push(table[self.index(i) as usize]);
                i += 1;
            }
        }
    }
}

/// Writes `table[high nibble], table[low nibble]` of every byte into `out` (two values per
/// byte): with AVX2 eight values per step (two 8-lane permutes of the table, blended on the
/// index's top bit), else one lookup per value.
fn decode_pairs(table: &[f32; 16], bytes: &[u8], out: &mut [std::mem::MaybeUninit<f32>]) {
    assert_eq!(out.len(), 2 * bytes.len(), "two values per byte");
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present; the function reads `bytes` and writes `out` in bounds.
        done = unsafe { decode_pairs_avx2(table, bytes, out) };
    }
    for (dst, &b) in out[2 * done..].chunks_exact_mut(2).zip(&bytes[done..]) {
        dst[0].write(table[(b >> 4) as usize]);
        dst[1].write(table[(b & 0x0f) as usize]);
    }
}

/// [`decode_pairs`] four bytes at a time; returns the bytes decoded (a multiple of four).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn decode_pairs_avx2(
    table: &[f32; 16],
    bytes: &[u8],
    out: &mut [std::mem::MaybeUninit<f32>],
) -> usize {
    use std::arch::x86_64::*;
    let low = _mm256_loadu_ps(table.as_ptr());
    let high = _mm256_loadu_ps(table.as_ptr().add(8));
    // Each byte twice, the first copy shifted right by 4 (the high nibble comes first).
    let doubled = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1, -1, -1, -1, -1, -1);
    let shifts = _mm256_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0);
    let nibble = _mm256_set1_epi32(0x0f);
    let quads = bytes.len() / 4;
    for q in 0..quads {
        let word = u32::from_le_bytes([
            bytes[4 * q],
            bytes[4 * q + 1],
            bytes[4 * q + 2],
            bytes[4 * q + 3],
        ]);
        let pairs = _mm_shuffle_epi8(_mm_cvtsi32_si128(word as i32), doubled);
        let index = _mm256_and_si256(
            _mm256_srlv_epi32(_mm256_cvtepu8_epi32(pairs), shifts),
            nibble,
        );
        let from_low = _mm256_permutevar8x32_ps(low, index);
        let from_high = _mm256_permutevar8x32_ps(high, index);
        let upper = _mm256_castsi256_ps(_mm256_slli_epi32(index, 28));
        let values = _mm256_blendv_ps(from_low, from_high, upper);
        _mm256_storeu_ps(out[8 * q..8 * q + 8].as_mut_ptr().cast::<f32>(), values);
    }
    4 * quads
}

impl HalfSlice<'_> {
    fn len(&self) -> usize {
        match self {
            Self::BF16(v) => v.len(),
            Self::F16(v) => v.len(),
            Self::Nf4(v) => v.len,
        }
    }

    /// Appends `count` values starting at `first`, `step` apart, as f32.
    #[inline]
    fn push_f32(&self, first: usize, count: usize, step: usize, out: &mut Vec<f32>) {
        match (self, step) {
            (Self::BF16(v), 1) => out.extend(v[first..first + count].iter().map(|x| x.to_f32())),
            (Self::F16(v), 1) => out.extend(v[first..first + count].iter().map(|x| x.to_f32())),
            (Self::BF16(v), _) => out.extend((0..count).map(|i| v[first + i * step].to_f32())),
            (Self::F16(v), _) => out.extend((0..count).map(|i| v[first + i * step].to_f32())),
            (Self::Nf4(v), 1) => v.push_run(first, count, out),
            (Self::Nf4(v), _) => out.extend((0..count).map(|i| v.value(first + i * step))),
        }
    }
}

/// A read-only strided half-precision matrix: element `(i, j)` is `data[i * row + j * col]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct HalfMatrix<'a> {
    data: HalfSlice<'a>,
    rows: usize,
    cols: usize,
    row: usize,
    col: usize,
}

impl<'a> HalfMatrix<'a> {
    /// `rows x cols` with rows `row` apart and columns `col` apart.
    pub(super) fn with_strides(
        data: HalfSlice<'a>,
        rows: usize,
        cols: usize,
        row: usize,
        col: usize,
    ) -> Self {
        let last = (rows.max(1) - 1) * row + (cols.max(1) - 1) * col;
        assert!(
            rows == 0 || cols == 0 || last < data.len(),
            "half-precision view out of bounds"
        );
        Self {
            data,
            rows,
            cols,
            row,
            col,
        }
    }

    /// `[rows, cols]`.
    pub(super) fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// The transpose (a view, nothing moves).
    pub(super) fn transposed(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row: self.col,
            col: self.row,
            ..self
        }
    }

    /// Columns `j0..j1` as f32 in `buf`, read along whichever direction is contiguous, and the
    /// strided view of them.
    fn columns_f32<'b>(&self, j0: usize, j1: usize, buf: &'b mut Vec<f32>) -> Strided<'b> {
        let width = j1 - j0;
        buf.clear();
        if self.col <= self.row {
            // Rows are the contiguous direction: keep the panel row-major.
            for i in 0..self.rows {
                self.data
                    .push_f32(i * self.row + j0 * self.col, width, self.col, buf);
            }
            Strided::rows(buf, self.rows, width)
        } else {
            // Columns are (a transposed weight): keep the panel column-major.
            for j in j0..j1 {
                self.data.push_f32(j * self.col, self.rows, self.row, buf);
            }
            Strided::with_strides(buf, self.rows, width, 1, self.rows)
        }
    }
}

/// Columns per panel for an inner dimension `k`: `PANEL_BYTES` of f32, at least 16.
fn panel_width(k: usize) -> usize {
    (PANEL_BYTES / (4 * k.max(1))).max(16)
}

/// `a b` into a new row-major `[m, n]` buffer, `b` converted panel by panel on all cores.
pub(super) fn matmul_half_host(a: Strided, b: HalfMatrix) -> Vec<f32> {
    let ([m, k], [k2, n]) = (a.shape(), b.shape());
    assert_eq!(k, k2, "inner dimensions differ");
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    if m == 0 || n == 0 {
        return out;
    }
    if k == 0 {
        out.resize(m * n, 0.0);
        return out;
    }
    let width = panel_width(k);
    let dst = SharedOut(out.as_mut_ptr());
    (0..n.div_ceil(width))
        .into_par_iter()
        .for_each_init(Vec::new, |buf, p| {
            let (j0, j1) = (p * width, ((p + 1) * width).min(n));
            let panel = b.columns_f32(j0, j1, buf);
            // SAFETY: task `p` writes columns `j0..j1` of every row of the `m x n` buffer, which
            // no other task touches; the buffer's capacity holds all of it and outlives the loop.
            unsafe { gemm_to_ptr(dst.get().add(j0), n, a, panel, 1.0, gemm::Parallelism::None) }
        });
    // SAFETY: the panels cover columns `0..n` of every row, each written in full.
    unsafe { out.set_len(m * n) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 250.0 - 2.0)
            .collect()
    }

    /// `a b` in f64 from f32 values, row-major.
    fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                    .sum();
                out[i * n + j] = s as f32;
            }
        }
        out
    }

    #[test]
    fn nf4_runs_decode_as_single_values() {
        let values: Vec<f32> = values(1000, 3);
        let host = crate::nf4::Nf4Tensor::quantize(&values, [10, 100], Nf4DType::BF16);
        let absmax = host.absmax.decode();
        let slice = Nf4Slice {
            packed: &host.packed,
            absmax: &absmax,
            len: 1000,
            dtype: Nf4DType::BF16,
        };
        let want = host.dequantize();
        // Runs starting and ending on odd and even values, inside one block and across several.
        for (first, count) in [
            (0, 1000),
            (1, 1),
            (3, 60),
            (63, 2),
            (64, 64),
            (101, 700),
            (998, 2),
        ] {
            let mut got = Vec::new();
            slice.push_run(first, count, &mut got);
            assert_eq!(got, want[first..first + count], "{first} + {count}");
        }
    }

    #[test]
    fn the_panel_product_equals_the_product_of_the_converted_weight() {
        // One panel; then k = 70,000 (16-column panels, the last one ragged).
        for (m, k, n) in [(3, 5, 7), (9, 70_000, 37)] {
            let a = values(m * k, 1);
            let w: Vec<bf16> = values(k * n, 2).into_iter().map(bf16::from_f32).collect();
            let w32: Vec<f32> = w.iter().map(|x| x.to_f32()).collect();
            let want = reference(&a, &w32, m, k, n);
            let got = matmul_half_host(
                Strided::rows(&a, m, k),
                HalfMatrix::with_strides(HalfSlice::BF16(&w), k, n, n, 1),
            );
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-3 * (1.0 + w.abs()), "{g} vs {w}");
            }
            // The same weight stored transposed (`[n, k]`), read through a transposed view.
            let wt: Vec<f16> = (0..n * k)
                .map(|idx| f16::from_f32(w32[(idx % k) * n + idx / k]))
                .collect();
            let got = matmul_half_host(
                Strided::rows(&a, m, k),
                HalfMatrix::with_strides(HalfSlice::F16(&wt), n, k, k, 1).transposed(),
            );
            for (g, w) in got.iter().zip(&want) {
                // bf16 values of this range are exact in f16.
                assert!((g - w).abs() <= 1e-3 * (1.0 + w.abs()), "{g} vs {w}");
            }
        }
    }
}
