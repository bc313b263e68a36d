//! F16 rows: conversion and the reference dot product with f32 activations.

use half::f16;

pub fn dequantize_row(x: &[f16], y: &mut [f32]) {
    // The branch-free conversion vectorizes; it is exact, as `to_f32` is.
    for (o, v) in y.iter_mut().zip(x) {
        *o = f16_bits_to_f32_fast(v.to_bits());
    }
}

/// Rounds to nearest even, as ggml's `GGML_FP32_TO_FP16` and numpy's `astype`.
pub fn quantize_row(x: &[f32], y: &mut [f16]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = f16::from_f32(v);
    }
}

pub fn dot_f32(w: &[f16], x: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (a, b) in w.iter().zip(x) {
        sum += a.to_f32() * b;
    }
    sum
}

/// IEEE half to single, branch-free so loops over it vectorize (the software
/// path of `half` branches per element). Exact for every input: normals by
/// re-biasing the exponent, subnormals by a float subtraction that normalizes
/// them, infinities and NaNs by widening the exponent (payload kept).
#[inline(always)]
pub fn f16_bits_to_f32_fast(h: u16) -> f32 {
    const SHIFTED_EXP: u32 = 0x7c00 << 13; // f16 exponent mask, in f32 position
    let mut o = ((h & 0x7fff) as u32) << 13; // exponent and mantissa
    let exp = o & SHIFTED_EXP;
    o += (127 - 15) << 23; // re-bias the exponent
    let inf_nan = exp == SHIFTED_EXP;
    let zero_sub = exp == 0;
    // Inf/NaN: one more re-bias puts the exponent at 255.
    o += if inf_nan { (128 - 16) << 23 } else { 0 };
    // Zero/subnormal: add one to the exponent, then subtract 2^-14 as a float.
    let sub = f32::from_bits(o + (1 << 23)) - f32::from_bits(113 << 23);
    let bits = if zero_sub { sub.to_bits() } else { o };
    f32::from_bits(bits | (((h & 0x8000) as u32) << 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_conversion_is_exact_for_all_halves() {
        for h in 0..=u16::MAX {
            let want = f16::from_bits(h).to_f32();
            let got = f16_bits_to_f32_fast(h);
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}: {got} vs {want}");
            }
        }
    }
}
