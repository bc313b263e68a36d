//! F16 rows: conversion and the reference dot product with f32 activations.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::{Format, GgmlType};

/// F16 in the format table: halves read from their little-endian bytes, so
/// the reference takes a row at any byte offset.
pub const FORMAT: Format = Format {
    ty: GgmlType::F16,
    block_len: 1,
    block_bytes: 2,
    dequantize: |w, y| {
        for (o, b) in y.iter_mut().zip(w.chunks_exact(2)) {
            *o = f16_bits_to_f32_fast(u16::from_le_bytes([b[0], b[1]]));
        }
    },
    dot: |w, x| {
        let mut sum = 0.0f32;
        for (b, v) in w.chunks_exact(2).zip(x) {
            sum += f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32() * v;
        }
        sum
    },
    #[cfg(any(feature = "alloc", test))]
    quantize: |x, y| {
        for (o, v) in y.chunks_exact_mut(2).zip(x) {
            o.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
        }
    },
};

pub fn dequantize_row(x: &[f16], y: &mut [f32]) {
    // The branch-free conversion vectorizes; it is exact, as `to_f32` is.
    for (o, v) in y.iter_mut().zip(x) {
        *o = f16_bits_to_f32_fast(v.to_bits());
    }
}

/// Rounds to nearest even, as ggml's `GGML_FP32_TO_FP16` and numpy's `astype`.
pub fn quantize_row(x: &[f32], y: &mut [f16]) {
    let n = x.len().min(y.len());
    // `half` converts whole vectors with F16C where the CPU has it (one
    // detection per call, not per element): round to nearest even, the same
    // bits as its scalar path.
    y[..n].convert_from_f32_slice(&x[..n]);
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

    /// The slice conversion (vectors where the CPU has F16C) rounds every
    /// finite f32 as the per-element one does: ties, subnormals, overflow.
    #[test]
    fn row_conversion_rounds_as_each_element() {
        let mut st = 0x1234_5678u32;
        let mut x = [0.0f32; 1003];
        for (i, v) in x.iter_mut().enumerate() {
            st ^= st << 13;
            st ^= st >> 17;
            st ^= st << 5;
            *v = match i % 4 {
                0 => f32::from_bits(st),
                // Around f16's range and its rounding points.
                1 => (st as i32 as f32) * 1e-5,
                2 => f32::from_bits((st & 0x807f_e000) | (((st >> 23) % 40 + 100) << 23) | 0x1000),
                _ => [65504.0, 65520.0, 6e-8, -3e-8, f32::INFINITY, 0.0, -0.0][i % 7],
            };
        }
        for n in [0usize, 1, 7, 8, 9, 1003] {
            let mut y = [f16::ZERO; 1003];
            quantize_row(&x[..n], &mut y);
            for (i, (&v, h)) in x[..n].iter().zip(&y).enumerate() {
                if !v.is_nan() {
                    assert_eq!(h.to_bits(), f16::from_f32(v).to_bits(), "{i}: {v:e}");
                }
            }
        }
    }

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
