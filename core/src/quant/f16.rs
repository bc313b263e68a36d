//! F16 rows: conversion and the reference dot product with f32 activations.

use half::f16;

pub fn dequantize_row(x: &[f16], y: &mut [f32]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o = v.to_f32();
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
