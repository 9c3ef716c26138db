//! Vectorised reductions and `exp` for the host loops: each reduction keeps eight partial
//! results, so no loop carries a float dependency and every loop vectorises
//! (docs/performance.md).

/// `1 / sqrt(mean(row^2) + eps)`.
#[inline]
pub(super) fn inverse_rms(row: &[f32], eps: f32) -> f32 {
    let mean_square = dot(row, row) / row.len() as f32;
    1.0 / (mean_square + eps).sqrt()
}

/// `(max, sum exp(x - max))` of a row, vectorised.
#[inline(always)]
pub(super) fn row_max_and_exp_sum(row: &[f32]) -> (f32, f32) {
    let max = lanes_reduce(row, f32::NEG_INFINITY, f32::max);
    let mut lanes = [0.0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += exp_f32(x - max);
        }
    }
    for (lane, &x) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane += exp_f32(x - max);
    }
    (max, lanes.into_iter().sum())
}

/// `row <- softmax(row)`: a row of `-inf` gives NaN, as the tensor expression does.
///
/// Written as three loops without a loop-carried float dependency (the reductions keep eight
/// partial results), so that each vectorises.
#[inline]
pub(super) fn softmax_in_place(row: &mut [f32]) {
    let max = lanes_reduce(row, f32::NEG_INFINITY, f32::max);
    for x in row.iter_mut() {
        *x = exp_f32(*x - max);
    }
    let inv = 1.0 / lanes_reduce(row, 0.0, |a, b| a + b);
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// `sum_i a_i b_i`, vectorised like [`lanes_reduce`].
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for ((lane, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *lane += x * y;
        }
    }
    for ((lane, &x), &y) in lanes.iter_mut().zip(ca.remainder()).zip(cb.remainder()) {
        *lane += x * y;
    }
    lanes.into_iter().sum()
}

/// Reduces `values` with `op` over eight interleaved partial results, then combines those.
#[inline(always)]
fn lanes_reduce(values: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; 8];
    let mut chunks = values.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = op(*lane, v);
        }
    }
    for (lane, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane = op(*lane, v);
    }
    lanes.into_iter().fold(init, op)
}

/// `e^x` in f32, accurate to a few units in the last place, written without branches or calls
/// so that loops over it vectorise (glibc's `expf` is a scalar call per element).
///
/// Range reduction `x = n ln 2 + r`, `|r| <= ln 2 / 2`, then `e^r` by its degree-7 Taylor
/// polynomial (truncation error below 1e-8 relative) and `2^n` built in the exponent bits.
/// Inputs are clamped to the range where `e^x` is a normal f32; NaN stays NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that `n * LN2_HI` is exact for |n| < 2^8.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding then subtracting 1.5 * 2^23 rounds to the nearest integer with SSE2 alone.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // `2^n` from the bits of `n + 127 + 2^23`, whose low mantissa bits hold `n + 127` (an
    // integer in 1..=254 after the clamp): shifted into the exponent field. Integer ops only,
    // unlike `n as i32`, whose saturating conversion does not vectorise.
    let biased = (n + (127.0 + 8_388_608.0)).to_bits();
    p * f32::from_bits(biased << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_across_the_f32_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let rel = ((exp_f32(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs();
            worst = worst.max(rel);
            x += 0.001_7;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(-1e4) < 1e-37 && exp_f32(-1e4) >= 0.0);
        assert!(exp_f32(1e4).is_finite());
    }
}
