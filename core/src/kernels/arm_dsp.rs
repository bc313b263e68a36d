//! Cortex-M DSP-extension twin of the int8 matvec ([`super::MatvecQ8Fn`]),
//! written with `asm!`: the `core::arch::arm` DSP intrinsics are nightly-only,
//! and LLVM compiles a plain int8 dot loop to LDRSB + SMLABB, one multiply
//! per instruction.
//!
//! - Activations are widened once per call, in chunks of [`CHUNK`] blocks on
//!   the stack: each word `[x3 x2 x1 x0]` becomes two halfword pairs, even
//!   `[x2:x0]` and odd `[x3:x1]` (what SXTB16 and SXTB16 ROR 8 give).
//! - Four rows go through each block together, so one LDRD of widened
//!   activations serves four rows. Per four weights of a row: one LDR (v7E-M
//!   loads unaligned words, and Q8_0 quants sit at 2-byte alignment), two
//!   SXTB16, two SMLAD.
//! - Each block's integer sum is exact, and the scales are applied in the
//!   same order as [`super::scalar::matvec_q8_0_q8_0`], so the results are
//!   equal bit for bit (`firmware`'s on-target tests hold them together).

#![allow(unsafe_code)]

use core::arch::asm;

use super::Kernels;
use crate::quant::f16::f16_bits_to_f32_fast;
use crate::quant::{BlockQ8_0, QK};

/// The scalar table with the DSP int8 matvec plugged in.
pub fn table() -> Kernels {
    Kernels {
        name: "cortex-m-dsp",
        q8_0_q8_0: Some(matvec_q8_0_q8_0),
        ..Kernels::scalar()
    }
}

/// Blocks of widened activations kept on the stack (2 KiB).
const CHUNK: usize = 32;
/// Widened words per block.
const WORDS: usize = QK / 2;

/// The two signed halfword pairs SXTB16 makes of `w` and of `w` ROR 8.
#[inline(always)]
fn widen_word(w: u32) -> (u32, u32) {
    let lo = |v: u32| (v as u8 as i8 as i16 as u16) as u32;
    let even = lo(w) | lo(w >> 16) << 16;
    let odd = lo(w >> 8) | lo(w >> 24) << 16;
    (even, odd)
}

fn widen(x: &BlockQ8_0, out: &mut [u32]) {
    for (k, q) in x.qs.as_chunks::<4>().0.iter().enumerate() {
        let (e, o) = widen_word(u32::from_le_bytes(q.map(|b| b as u8)));
        out[2 * k] = e;
        out[2 * k + 1] = o;
    }
}

/// The f16 scale as f32, exactly as the reference widens it. (VCVTB would
/// do it in one instruction, but `asm!` reaches S registers only with the
/// `vfp2` feature, which stable Rust cannot enable for thumbv7em.)
#[inline(always)]
fn half_to_f32(d: [u8; 2]) -> f32 {
    f16_bits_to_f32_fast(u16::from_le_bytes(d))
}

/// Integer sums of one block for four rows.
///
/// # Safety
/// `p0` and `p2` point at 32 readable quant bytes (rows 0 and 2 of the
/// group), and so do `p0 + stride` and `p2 + stride` (rows 1 and 3); `xw`
/// points at 16 readable, 4-byte aligned widened words.
#[inline(always)]
unsafe fn block4(p0: *const i8, p2: *const i8, stride: usize, xw: *const u32) -> [i32; 4] {
    let (mut a0, mut a1, mut a2, mut a3) = (0i32, 0i32, 0i32, 0i32);
    // SAFETY: the caller guarantees the reads; each of the 8 repetitions
    // reads one word per row and two activation words, advancing the
    // pointers by 4 and 8 bytes: 32 quant bytes and 16 words in all.
    unsafe {
        asm!(
            ".rept 8",
            "ldrd {xe}, {xo}, [{xw}], #8",
            "ldr {w}, [{p0}, {s}]",
            "sxtb16 {t}, {w}, ror #8",
            "sxtb16 {w}, {w}",
            "smlad {a1}, {w}, {xe}, {a1}",
            "smlad {a1}, {t}, {xo}, {a1}",
            "ldr {w}, [{p0}], #4",
            "sxtb16 {t}, {w}, ror #8",
            "sxtb16 {w}, {w}",
            "smlad {a0}, {w}, {xe}, {a0}",
            "smlad {a0}, {t}, {xo}, {a0}",
            "ldr {w}, [{p2}, {s}]",
            "sxtb16 {t}, {w}, ror #8",
            "sxtb16 {w}, {w}",
            "smlad {a3}, {w}, {xe}, {a3}",
            "smlad {a3}, {t}, {xo}, {a3}",
            "ldr {w}, [{p2}], #4",
            "sxtb16 {t}, {w}, ror #8",
            "sxtb16 {w}, {w}",
            "smlad {a2}, {w}, {xe}, {a2}",
            "smlad {a2}, {t}, {xo}, {a2}",
            ".endr",
            p0 = inout(reg) p0 => _,
            p2 = inout(reg) p2 => _,
            xw = inout(reg) xw => _,
            s = in(reg) stride,
            xe = out(reg) _,
            xo = out(reg) _,
            w = out(reg) _,
            t = out(reg) _,
            a0 = inout(reg) a0,
            a1 = inout(reg) a1,
            a2 = inout(reg) a2,
            a3 = inout(reg) a3,
            options(pure, readonly, nostack),
        );
    }
    [a0, a1, a2, a3]
}

/// The reference's integer block dot, for rows past the last group of four.
fn block1(w: &BlockQ8_0, x: &BlockQ8_0) -> i32 {
    w.qs.iter()
        .zip(&x.qs)
        .map(|(&a, &b)| a as i32 * b as i32)
        .sum()
}

/// [`super::scalar::matvec_q8_0_q8_0`] with SMLAD, four rows at a time.
pub fn matvec_q8_0_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0], out: &mut [f32]) {
    let nb = x.len();
    if nb == 0 {
        out.fill(0.0);
        return;
    }
    let rows = out.len().min(w.len() / nb);
    let out = &mut out[..rows];
    // The reference sums each row from 0.0 in block order; so does this,
    // chunk after chunk.
    out.fill(0.0);
    let stride = nb * core::mem::size_of::<BlockQ8_0>();
    let mut xw = [0u32; CHUNK * WORDS];
    for c0 in (0..nb).step_by(CHUNK) {
        let c1 = (c0 + CHUNK).min(nb);
        for (b, xb) in x[c0..c1].iter().enumerate() {
            widen(xb, &mut xw[b * WORDS..(b + 1) * WORDS]);
        }
        let mut r = 0;
        while r + 4 <= rows {
            let mut s = [out[r], out[r + 1], out[r + 2], out[r + 3]];
            for b in c0..c1 {
                let (w0, w2) = (&w[r * nb + b], &w[(r + 2) * nb + b]);
                let (w1, w3) = (&w[(r + 1) * nb + b], &w[(r + 3) * nb + b]);
                let xs = &xw[(b - c0) * WORDS..(b - c0 + 1) * WORDS];
                // SAFETY: rows r..r+4 exist (r + 4 <= rows <= w.len() / nb),
                // so w0..w3 are in bounds, and w1 = w0 + stride bytes, w3 =
                // w2 + stride bytes; each qs is 32 bytes. `xs` is 16 u32
                // words of a u32 array, so 4-byte aligned.
                let isum = unsafe { block4(w0.qs.as_ptr(), w2.qs.as_ptr(), stride, xs.as_ptr()) };
                let dx = half_to_f32(x[b].d);
                for (k, wk) in [w0, w1, w2, w3].into_iter().enumerate() {
                    s[k] += isum[k] as f32 * (half_to_f32(wk.d) * dx);
                }
            }
            out[r..r + 4].copy_from_slice(&s);
            r += 4;
        }
        for (rr, o) in out.iter_mut().enumerate().skip(r) {
            for b in c0..c1 {
                let wb = &w[rr * nb + b];
                *o += block1(wb, &x[b]) as f32 * (half_to_f32(wb.d) * half_to_f32(x[b].d));
            }
        }
    }
}
