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
//!   SXTB16, two SMLAD. One `asm!` loop runs over all blocks of a chunk and
//!   stores each block's four integer sums; the scales follow in Rust.
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

/// Four IEEE halves to singles by VCVTB: exact, like the reference's
/// software widening (NaN payloads aside, which stay NaN). `asm!` reaches S
/// registers only with the `vfp2` feature, which stable Rust cannot enable
/// for thumbv7em, so S15 is borrowed and restored inside the block.
#[inline(always)]
fn halves_to_f32(h: [u16; 4]) -> [f32; 4] {
    let (mut b0, mut b1, mut b2, mut b3) = (h[0] as u32, h[1] as u32, h[2] as u32, h[3] as u32);
    // SAFETY: register-only VFP instructions (VFPv4-SP and later have VCVTB,
    // and every core with the `dsp` feature this crate supports has such an
    // FPU); S15 is saved and restored, so no state the compiler sees
    // changes; no memory, stack or flags are touched.
    unsafe {
        asm!(
            "vmov {save}, s15",
            "vmov s15, {b0}",
            "vcvtb.f32.f16 s15, s15",
            "vmov {b0}, s15",
            "vmov s15, {b1}",
            "vcvtb.f32.f16 s15, s15",
            "vmov {b1}, s15",
            "vmov s15, {b2}",
            "vcvtb.f32.f16 s15, s15",
            "vmov {b2}, s15",
            "vmov s15, {b3}",
            "vcvtb.f32.f16 s15, s15",
            "vmov {b3}, s15",
            "vmov s15, {save}",
            b0 = inout(reg) b0,
            b1 = inout(reg) b1,
            b2 = inout(reg) b2,
            b3 = inout(reg) b3,
            save = out(reg) _,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    [b0, b1, b2, b3].map(f32::from_bits)
}

/// One half to single, as [`halves_to_f32`].
#[inline(always)]
fn half_to_f32(d: [u8; 2]) -> f32 {
    halves_to_f32([u16::from_le_bytes(d), 0, 0, 0])[0]
}

/// Integer sums of `n` consecutive blocks for four rows, written to `out`
/// as `[row0, row1, row2, row3]` per block.
///
/// # Safety
/// `p0` and `p2` point at the quants of the first block of rows 0 and 2,
/// and `p0 + stride`, `p2 + stride` at those of rows 1 and 3; each row has
/// `n >= 1` blocks of 34 bytes from there (quants 32 bytes, then the next
/// block's 2-byte scale). `xw` points at `16 * n` readable, 4-byte aligned
/// widened words and `out` at `4 * n` writable i32.
#[inline(always)]
unsafe fn blocks4(
    p0: *const i8,
    p2: *const i8,
    stride: usize,
    xw: *const u32,
    out: *mut i32,
    n: usize,
) {
    // SAFETY: the caller guarantees every read and write. Thirteen
    // registers are operands; R7 (Thumb's frame pointer, which `asm!` cannot
    // take as an operand) is the fourteenth, pushed and popped inside the
    // block around its use as scratch.
    unsafe {
        asm!(
            "push {{r7}}",
            "2:",
            "movs {a0}, #0",
            "movs {a1}, #0",
            "movs {a2}, #0",
            "movs {a3}, #0",
            ".rept 8",
            "ldrd {xe}, {xo}, [{xw}], #8",
            "ldr {w}, [{p0}, {s}]",
            "sxtb16 r7, {w}, ror #8",
            "sxtb16 {w}, {w}",
            "smlad {a1}, {w}, {xe}, {a1}",
            "smlad {a1}, r7, {xo}, {a1}",
            "ldr {w}, [{p0}], #4",
            "sxtb16 r7, {w}, ror #8",
            "sxtb16 {w}, {w}",
            "smlad {a0}, {w}, {xe}, {a0}",
            "smlad {a0}, r7, {xo}, {a0}",
            "ldr {w}, [{p2}, {s}]",
            "sxtb16 r7, {w}, ror #8",
            "sxtb16 {w}, {w}",
            "smlad {a3}, {w}, {xe}, {a3}",
            "smlad {a3}, r7, {xo}, {a3}",
            "ldr {w}, [{p2}], #4",
            "sxtb16 r7, {w}, ror #8",
            "sxtb16 {w}, {w}",
            "smlad {a2}, {w}, {xe}, {a2}",
            "smlad {a2}, r7, {xo}, {a2}",
            ".endr",
            "str {a0}, [{out}], #4",
            "str {a1}, [{out}], #4",
            "str {a2}, [{out}], #4",
            "str {a3}, [{out}], #4",
            "adds {p0}, #2",
            "adds {p2}, #2",
            "subs {n}, #1",
            "bne 2b",
            "pop {{r7}}",
            p0 = inout(reg) p0 => _,
            p2 = inout(reg) p2 => _,
            xw = inout(reg) xw => _,
            out = inout(reg) out => _,
            n = inout(reg) n => _,
            s = in(reg) stride,
            xe = out(reg) _,
            xo = out(reg) _,
            a0 = out(reg) _,
            a1 = out(reg) _,
            a2 = out(reg) _,
            a3 = out(reg) _,
            w = out(reg) _,
        );
    }
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
        let mut isums = [0i32; 4 * CHUNK];
        for o in &mut groups {
            let rows4 = &w[r * nb + c0..(r + 3) * nb + c1];
            let (w0, w2) = (&rows4[..n], &rows4[2 * nb..2 * nb + n]);
            let (w1, w3) = (&rows4[nb..nb + n], &rows4[3 * nb..3 * nb + n]);
            // SAFETY: w0..w3 are rows r..r+4 of this chunk, each n >= 1
            // blocks (rows4 is a checked slice), with w1 = w0 + stride bytes
            // and w3 = w2 + stride bytes; `xw` holds 16 n widened words of a
            // u32 array (4-byte aligned); `isums` has room for 4 n sums.
            unsafe {
                blocks4(
                    w0[0].qs.as_ptr(),
                    w2[0].qs.as_ptr(),
                    stride,
                    xw.as_ptr(),
                    isums.as_mut_ptr(),
                    n,
                )
            };
            let mut s = [o[0], o[1], o[2], o[3]];
            for (b, (isum, &dxb)) in isums.chunks_exact(4).zip(dx).enumerate() {
                let dw =
                    halves_to_f32([w0[b].d, w1[b].d, w2[b].d, w3[b].d].map(u16::from_le_bytes));
                for k in 0..4 {
                    s[k] += isum[k] as f32 * (dw[k] * dxb);
                }
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
