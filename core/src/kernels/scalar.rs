//! Scalar reference kernels, written as plain loops over eight independent
//! lanes. Eight accumulators give the compiler room to vectorize on any target
//! (SSE2, NEON, Helium) without intrinsics, and fix the summation order, so the
//! result is the same on every machine for the same inputs.
//!
//! Each function takes one weight row and an f32 vector of the row's length;
//! the quantized rows are whole blocks (the GGUF reader guarantees it).

#![forbid(unsafe_code)]

use half::f16;

use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};

const L: usize = 8;

/// Pairwise horizontal sum, in a fixed order.
#[inline(always)]
fn hsum(a: [f32; L]) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; L];
    for (ca, cb) in a.chunks_exact(L).zip(b.chunks_exact(L)) {
        for i in 0..L {
            acc[i] += ca[i] * cb[i];
        }
    }
    let tail = n - n % L;
    let mut s = hsum(acc);
    for i in tail..n {
        s += a[i] * b[i];
    }
    s
}

pub fn dot_f16(a: &[f16], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; L];
    for (ca, cb) in a.chunks_exact(L).zip(b.chunks_exact(L)) {
        for i in 0..L {
            acc[i] += ca[i].to_f32() * cb[i];
        }
    }
    let tail = n - n % L;
    let mut s = hsum(acc);
    for i in tail..n {
        s += a[i].to_f32() * b[i];
    }
    s
}

pub fn dot_q8_0(w: &[BlockQ8_0], x: &[f32]) -> f32 {
    let mut sum = [0.0f32; L];
    for (b, xs) in w.iter().zip(x.chunks_exact(QK)) {
        let mut acc = [0.0f32; L];
        for c in 0..QK / L {
            for i in 0..L {
                acc[i] += b.qs[c * L + i] as f32 * xs[c * L + i];
            }
        }
        let d = b.d();
        for i in 0..L {
            sum[i] += d * acc[i];
        }
    }
    hsum(sum)
}

pub fn dot_q4_0(w: &[BlockQ4_0], x: &[f32]) -> f32 {
    const H: usize = QK / 2;
    let mut sum = [0.0f32; L];
    for (b, xs) in w.iter().zip(x.chunks_exact(QK)) {
        let mut acc = [0.0f32; L];
        for c in 0..H / L {
            for i in 0..L {
                let q = b.qs[c * L + i];
                let lo = (q & 0x0f) as i32 - 8;
                let hi = (q >> 4) as i32 - 8;
                acc[i] += lo as f32 * xs[c * L + i] + hi as f32 * xs[H + c * L + i];
            }
        }
        let d = b.d();
        for i in 0..L {
            sum[i] += d * acc[i];
        }
    }
    hsum(sum)
}

pub fn dot_q4_1(w: &[BlockQ4_1], x: &[f32]) -> f32 {
    const H: usize = QK / 2;
    let mut sum = [0.0f32; L];
    for (b, xs) in w.iter().zip(x.chunks_exact(QK)) {
        let mut qx = [0.0f32; L];
        let mut sx = [0.0f32; L];
        for c in 0..H / L {
            for i in 0..L {
                let q = b.qs[c * L + i];
                let (x0, x1) = (xs[c * L + i], xs[H + c * L + i]);
                qx[i] += (q & 0x0f) as f32 * x0 + (q >> 4) as f32 * x1;
                sx[i] += x0 + x1;
            }
        }
        let (d, m) = (b.d(), b.m());
        for i in 0..L {
            sum[i] += d * qx[i] + m * sx[i];
        }
    }
    hsum(sum)
}
