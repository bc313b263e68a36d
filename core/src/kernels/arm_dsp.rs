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

/// IEEE half to single by VCVTB: exact, like the reference's software
/// widening (NaN payloads aside, which stay NaN). `asm!` reaches S registers
/// only with the `vfp2` feature, which stable Rust cannot enable for
/// thumbv7em, so S15 is borrowed and restored inside the block.
#[inline(always)]
fn half_to_f32(d: [u8; 2]) -> f32 {
    let h = u16::from_le_bytes(d) as u32;
    let bits: u32;
    // SAFETY: register-only VFP instructions (VFPv4-SP and later have VCVTB,
    // and every core with the `dsp` feature this crate supports has such an
    // FPU); S15 is saved and restored, so no state the compiler sees
    // changes; no memory, stack or flags are touched.
    unsafe {
        asm!(
            "vmov {save}, s15",
            "vmov s15, {h}",
            "vcvtb.f32.f16 s15, s15",
            "vmov {bits}, s15",
            "vmov s15, {save}",
            h = in(reg) h,
            bits = lateout(reg) bits,
            save = out(reg) _,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    f32::from_bits(bits)
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
    let mut dx = [0.0f32; CHUNK];
    for c0 in (0..nb).step_by(CHUNK) {
        let c1 = (c0 + CHUNK).min(nb);
        let n = c1 - c0;
        for (b, xb) in x[c0..c1].iter().enumerate() {
            widen(xb, &mut xw[b * WORDS..(b + 1) * WORDS]);
            dx[b] = half_to_f32(xb.d);
        }
        let (xw, dx) = (&xw[..n * WORDS], &dx[..n]);
        let mut groups = out.chunks_exact_mut(4);
        let mut r = 0;
        for o in &mut groups {
            let rows4 = &w[r * nb + c0..(r + 3) * nb + c1];
            let (w0, w2) = (&rows4[..n], &rows4[2 * nb..2 * nb + n]);
            let (w1, w3) = (&rows4[nb..nb + n], &rows4[3 * nb..3 * nb + n]);
            let mut s = [o[0], o[1], o[2], o[3]];
            for (b, (xs, &dxb)) in xw.chunks_exact(WORDS).zip(dx).enumerate() {
                // SAFETY: w0..w3 are rows r..r+4 of this chunk, each n
                // blocks (rows4 is a checked slice), and w1 = w0 + stride
                // bytes, w3 = w2 + stride bytes; each qs is 32 bytes. `xs`
                // is 16 u32 words of a u32 array, so 4-byte aligned.
                let isum =
                    unsafe { block4(w0[b].qs.as_ptr(), w2[b].qs.as_ptr(), stride, xs.as_ptr()) };
                s[0] += isum[0] as f32 * (half_to_f32(w0[b].d) * dxb);
                s[1] += isum[1] as f32 * (half_to_f32(w1[b].d) * dxb);
                s[2] += isum[2] as f32 * (half_to_f32(w2[b].d) * dxb);
                s[3] += isum[3] as f32 * (half_to_f32(w3[b].d) * dxb);
            }
            o.copy_from_slice(&s);
            r += 4;
        }
        for (i, o) in groups.into_remainder().iter_mut().enumerate() {
            let row = &w[(r + i) * nb + c0..(r + i) * nb + c1];
            for ((wb, xb), &dxb) in row.iter().zip(&x[c0..c1]).zip(dx) {
                *o += block1(wb, xb) as f32 * (half_to_f32(wb.d) * dxb);
            }
        }
    }
}
