//! Cortex-M DSP-extension twin of the int8 matvec ([`super::MatvecQ8Fn`]),
//! written with `asm!`: the `core::arch::arm` DSP intrinsics are nightly-only,
//! and LLVM compiles a plain int8 dot loop to LDRSB + SMLABB, one multiply
//! per instruction.
//!
//! - Activations are widened once per call, in chunks of [`CHUNK`] blocks on
//!   the stack: each word `[x3 x2 x1 x0]` becomes two halfword pairs, even
//!   `[x2:x0]` and odd `[x3:x1]` (what SXTB16 and SXTB16 ROR 8 give).
//! - Four rows go through each block together, so one LDM of four widened
//!   activation words serves four rows for eight weights. Per four weights
//!   of a row: one LDR (v7E-M loads unaligned words, and Q8_0 quants sit at
//!   2-byte alignment), two SXTB16, two SMLAD (the first group of a block
//!   starts its sum with SMUAD).
//! - The scales are applied inside the same `asm!` loop, in S registers it
//!   borrows: per block and row an LDRH, VCVTB, VMUL, VCVT and VMLA, with the
//!   register moves paired. Each block's integer sum is exact, and the float
//!   operations are the reference's, in its order ([`super::scalar::matvec_q8_0_q8_0`]),
//!   so the results are equal bit for bit (`firmware`'s on-target tests hold
//!   them together).
//! - A block of four rows costs 192 instructions for 128 multiply-accumulates:
//!   160 for the weights, 4 LDM, 25 for the scales, 3 for the loop.

#![allow(unsafe_code)]

use core::arch::asm;
use core::mem::MaybeUninit;

use half::f16;

use super::{scalar, Kernels};
use crate::quant::q8_0::QK;
use crate::quant::{BlockQ8_0, BlockQ8_0x4};

/// The scalar table with the DSP int8 matvec and the VCVTB/VCVTT f16
/// attention kernels plugged in.
pub fn table() -> Kernels {
    Kernels {
        name: "cortex-m-dsp",
        q8_0_q8_0: Some(matvec_q8_0_q8_0),
        q8_0x4_q8_0: Some(matvec_q8_0x4_q8_0),
        dot_f16,
        axpy_f16,
        key_dots_f16,
        value_sum_f16,
        ..Kernels::scalar()
    }
}

/// Blocks of widened activations kept on the stack (2,176 bytes).
const CHUNK: usize = 32;
/// Words per widened block: the scale's f32 bits, then `QK / 2` widened
/// words.
const XBLOCK: usize = 1 + QK / 2;

/// One block of activations widened for [`blocks4`]: its scale as f32
/// bits, then each quant word `[x3 x2 x1 x0]` as the two halfword pairs
/// SXTB16 and SXTB16 ROR 8 make of it, even `[x2:x0]` and odd `[x3:x1]`.
/// Every word of `out` is written.
fn widen(x: &BlockQ8_0, out: &mut MaybeUninit<[u32; XBLOCK]>) {
    // SAFETY: reads the 34 bytes of `x` (LDRH of the scale, then eight
    // word loads, which v7E-M performs unaligned) and writes the 17 words of
    // `out` (4-byte aligned, as STRD needs); S15 is saved and restored, so
    // no register the compiler sees changes but the declared operands.
    unsafe {
        asm!(
            "ldrh {w}, [{x}], #2",
            "vmov {e}, s15",
            "vmov s15, {w}",
            "vcvtb.f32.f16 s15, s15",
            "vmov {o}, s15",
            "vmov s15, {e}",
            "str {o}, [{out}], #4",
            ".rept 8",
            "ldr {w}, [{x}], #4",
            "sxtb16 {e}, {w}",
            "sxtb16 {o}, {w}, ror #8",
            "strd {e}, {o}, [{out}], #8",
            ".endr",
            x = inout(reg) (x as *const BlockQ8_0).cast::<u8>() => _,
            out = inout(reg) out.as_mut_ptr() => _,
            w = out(reg) _,
            e = out(reg) _,
            o = out(reg) _,
            // Not `preserves_flags`: VCVTB of a signalling NaN sets FPSCR's
            // invalid-operation flag.
            options(nostack),
        );
    }
}

/// An IEEE half to single by VCVTB: exact, like the reference's software
/// widening (NaN payloads aside, which stay NaN). `asm!` reaches S
/// registers only with the `vfp2` feature, which stable Rust cannot enable
/// for thumbv7em, so S15 is borrowed and restored inside the block.
#[inline(always)]
fn half_to_f32(d: [u8; 2]) -> f32 {
    let mut b = u16::from_le_bytes(d) as u32;
    // SAFETY: register-only VFP instructions (VFPv4-SP and later have VCVTB,
    // and every core with the `dsp` feature this crate supports has such an
    // FPU); S15 is saved and restored, so no state the compiler sees
    // changes; no memory or stack is touched. FPSCR's exception flags may
    // change (a signalling NaN), so the block does not claim to preserve
    // flags.
    unsafe {
        asm!(
            "vmov {save}, s15",
            "vmov s15, {b}",
            "vcvtb.f32.f16 s15, s15",
            "vmov {b}, s15",
            "vmov s15, {save}",
            b = inout(reg) b,
            save = out(reg) _,
            options(pure, nomem, nostack),
        );
    }
    f32::from_bits(b)
}

/// The four rows' weight scales (S5-S8, as f32) times the activation's
/// (S4): each block's `dw * dx`, as the reference forms it.
macro_rules! scales4 {
    () => {
        concat!(
            "vmul.f32 s5, s5, s4\n",
            "vmul.f32 s6, s6, s4\n",
            "vmul.f32 s7, s7, s4\n",
            "vmul.f32 s8, s8, s4\n",
        )
    };
}

/// The four block sums `{a0}`-`{a3}` converted (exact: below 2^24) and
/// added to the row sums S0-S3 times the scales S5-S8: VMLA rounds the
/// product before it adds, as the reference's separate multiply and add.
macro_rules! scale_add4 {
    () => {
        concat!(
            "vmov s9, s10, {a0}, {a1}\n",
            "vmov s11, s12, {a2}, {a3}\n",
            "vcvt.f32.s32 s9, s9\n",
            "vcvt.f32.s32 s10, s10\n",
            "vcvt.f32.s32 s11, s11\n",
            "vcvt.f32.s32 s12, s12\n",
            "vmla.f32 s0, s9, s5\n",
            "vmla.f32 s1, s10, s6\n",
            "vmla.f32 s2, s11, s7\n",
            "vmla.f32 s3, s12, s8\n",
        )
    };
}

/// The first multiply-accumulate of a row's word: `first` starts the row's
/// block sum (SMUAD), `next` adds to it (SMLAD).
macro_rules! mac {
    (first, $a:literal, $xe:literal) => {
        concat!("smuad ", $a, ", {w}, ", $xe, "\n")
    };
    (next, $a:literal, $xe:literal) => {
        concat!("smlad ", $a, ", {w}, ", $xe, ", ", $a, "\n")
    };
}

/// One group of four weights for four rows: the widened activation pair
/// `xe`/`xo` against one word of each row (rows 1 and 3 at `stride` past
/// rows 0 and 2).
#[rustfmt::skip]
macro_rules! group4 {
    ($k:ident, $xe:literal, $xo:literal) => {
        concat!(
            "ldr {w}, [{p0}, {s}]\n",
            "sxtb16 r7, {w}, ror #8\n",
            "sxtb16 {w}, {w}\n",
            mac!($k, "{a1}", $xe),
            "smlad {a1}, r7, ", $xo, ", {a1}\n",
            "ldr {w}, [{p0}], #4\n",
            "sxtb16 r7, {w}, ror #8\n",
            "sxtb16 {w}, {w}\n",
            mac!($k, "{a0}", $xe),
            "smlad {a0}, r7, ", $xo, ", {a0}\n",
            "ldr {w}, [{p2}, {s}]\n",
            "sxtb16 r7, {w}, ror #8\n",
            "sxtb16 {w}, {w}\n",
            mac!($k, "{a3}", $xe),
            "smlad {a3}, r7, ", $xo, ", {a3}\n",
            "ldr {w}, [{p2}], #4\n",
            "sxtb16 r7, {w}, ror #8\n",
            "sxtb16 {w}, {w}\n",
            mac!($k, "{a2}", $xe),
            "smlad {a2}, r7, ", $xo, ", {a2}\n",
        )
    };
}

/// `n` consecutive blocks of four rows against widened activations, each
/// block's integer sum scaled and added to `sums` in the reference's order:
/// `sums[k] += isum_k as f32 * (dw_k * dx)`.
///
/// Per block and row, the float work is seven instructions (LDRH of the
/// scale, a half of a paired VMOV, VCVTB, VMUL, a half of a paired VMOV,
/// VCVT, VMLA). VMLA rounds the product before it adds, as the reference's
/// separate multiply and add do, and the integer sums are below 2^24, so
/// their conversion is exact: the sums equal the reference's bit for bit.
///
/// # Safety
/// `p0` and `p2` point at the first block (its 2-byte scale) of rows 0 and
/// 2, and `p0 + stride`, `p2 + stride` at that of rows 1 and 3; each row has
/// `n >= 1` blocks of 34 bytes from there. `xw` points at `n` widened blocks
/// of [`XBLOCK`] 4-byte aligned words (the activation scale's f32 bits, then
/// sixteen widened words) and `sums` at four readable and writable f32.
#[inline(always)]
unsafe fn blocks4(
    p0: *const u8,
    p2: *const u8,
    stride: usize,
    xw: *const u32,
    sums: *mut f32,
    n: usize,
) {
    // SAFETY: the caller guarantees every read and write. Thirteen core
    // registers are operands; R7 (Thumb's frame pointer, which `asm!` cannot
    // take as an operand) is the fourteenth, pushed and popped inside the
    // block around its use as scratch. S0-S12 are borrowed: pushed on entry
    // and popped before the block ends, so no value the compiler keeps in
    // them changes. Two words go on the stack meanwhile (the sums' address
    // and the end of `xw`) and come off before the block ends. LDM fills its
    // list in register order from the lowest address, so the four activation
    // words sit in R2-R5 in that order.
    unsafe {
        asm!(
            "push {{r7}}",
            "vpush {{s0-s12}}",
            "vldm {a0}, {{s0-s3}}",
            "push {{{a0}}}",
            "movs r7, #{xblock}",
            "mla r5, r5, r7, {xw}",
            "push {{r5}}",
            "2:",
            // The block's scales: the activation's, then each row's (the
            // post-increments step rows 0 and 2 over theirs to the quants).
            "vldmia {xw}!, {{s4}}",
            "ldrh {w}, [{p0}, {s}]",
            "ldrh r7, [{p0}], #2",
            "vmov s5, s6, r7, {w}",
            "ldrh {w}, [{p2}, {s}]",
            "ldrh r7, [{p2}], #2",
            "vmov s7, s8, r7, {w}",
            "vcvtb.f32.f16 s5, s5",
            "vcvtb.f32.f16 s6, s6",
            "vcvtb.f32.f16 s7, s7",
            "vcvtb.f32.f16 s8, s8",
            scales4!(),
            // Thirty-two weights of each row, eight at a time.
            "ldm {xw}!, {{r2, r3, r4, r5}}",
            group4!(first, "r2", "r3"),
            group4!(next, "r4", "r5"),
            ".rept 3",
            "ldm {xw}!, {{r2, r3, r4, r5}}",
            group4!(next, "r2", "r3"),
            group4!(next, "r4", "r5"),
            ".endr",
            scale_add4!(),
            "ldr {w}, [sp]",
            "cmp {xw}, {w}",
            "bne 2b",
            "add sp, #4",
            "pop {{{w}}}",
            "vstm {w}, {{s0-s3}}",
            "vpop {{s0-s12}}",
            "pop {{r7}}",
            p0 = inout(reg) p0 => _,
            p2 = inout(reg) p2 => _,
            xw = inout(reg) xw => _,
            a0 = inout(reg) sums => _,
            s = in(reg) stride,
            inout("r5") n => _,
            out("r2") _,
            out("r3") _,
            out("r4") _,
            a1 = out(reg) _,
            a2 = out(reg) _,
            a3 = out(reg) _,
            w = out(reg) _,
            xblock = const 4 * XBLOCK,
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
    // Left uninitialized: zeroing it cost more than widening a short row.
    let mut xw = [MaybeUninit::<[u32; XBLOCK]>::uninit(); CHUNK];
    for c0 in (0..nb).step_by(CHUNK) {
        let c1 = (c0 + CHUNK).min(nb);
        let n = c1 - c0;
        for (xb, o) in x[c0..c1].iter().zip(&mut xw) {
            widen(xb, o);
        }
        let mut groups = out.chunks_exact_mut(4);
        let mut r = 0;
        for o in &mut groups {
            let rows4 = &w[r * nb + c0..(r + 3) * nb + c1];
            let (w0, w2) = (&rows4[0], &rows4[2 * nb]);
            // SAFETY: rows r..r+4 of this chunk are inside `rows4` (a checked
            // slice): n >= 1 blocks from `w0` and from `w2`, and from
            // `w0 + stride` and `w2 + stride` bytes (rows r+1 and r+3);
            // the first n blocks of `xw` (4-byte aligned) were just written
            // by `widen`; `o` is four f32.
            unsafe {
                blocks4(
                    (w0 as *const BlockQ8_0).cast(),
                    (w2 as *const BlockQ8_0).cast(),
                    stride,
                    xw.as_ptr().cast(),
                    o.as_mut_ptr(),
                    n,
                )
            };
            r += 4;
        }
        for (i, o) in groups.into_remainder().iter_mut().enumerate() {
            let row = &w[(r + i) * nb + c0..(r + i) * nb + c1];
            for (wb, xb) in row.iter().zip(&x[c0..c1]) {
                *o += block1(wb, xb) as f32 * (half_to_f32(wb.d) * half_to_f32(xb.d));
            }
        }
    }
}

/// Eight weights of one packed row against the widened activation words in
/// R2-R5: one LDRD, four SXTB16 (through R7), four multiply-accumulates
/// into `$a` (the first of a block starts its sum with SMUAD).
#[rustfmt::skip]
macro_rules! row8 {
    (first, $a:literal) => {
        concat!(
            "ldrd {w0}, {w1}, [{p}], #8\n",
            "sxtb16 r7, {w0}\n",
            "sxtb16 {w0}, {w0}, ror #8\n",
            "smuad ", $a, ", r7, r2\n",
            row8!(tail, $a),
        )
    };
    (next, $a:literal) => {
        concat!(
            "ldrd {w0}, {w1}, [{p}], #8\n",
            "sxtb16 r7, {w0}\n",
            "sxtb16 {w0}, {w0}, ror #8\n",
            "smlad ", $a, ", r7, r2, ", $a, "\n",
            row8!(tail, $a),
        )
    };
    (tail, $a:literal) => {
        concat!(
            "smlad ", $a, ", {w0}, r3, ", $a, "\n",
            "sxtb16 r7, {w1}\n",
            "sxtb16 {w1}, {w1}, ror #8\n",
            "smlad ", $a, ", r7, r4, ", $a, "\n",
            "smlad ", $a, ", {w1}, r5, ", $a, "\n",
        )
    };
}

/// `groups` groups of four rows ([`BlockQ8_0x4`]), `n` consecutive packed
/// blocks of each, against the same widened activations; each block's
/// integer sums scaled and added to the group's four `sums` in the
/// reference's order, as [`blocks4`] does. Per block: VLDM of the four
/// scales and VCVTB/VCVTT (five instructions where the file's layout needs
/// twelve), four VMUL, then per eight columns one LDM of activations and,
/// per row, one LDRD, four SXTB16 and four multiply-accumulates; then two
/// paired VMOVs, four VCVT, four VMLA and the loop's compare and branch:
/// 170 instructions for 128 multiply-accumulates. Each group adds eleven
/// (its sums in and out, the step to the next group), inside the same
/// `asm!` block.
///
/// # Safety
/// `p` points at group 0's first block; group `g`'s `n >= 1` blocks start
/// `g * (n * 136 + skip)` bytes after it, all readable (4-byte aligned, as
/// the type is). `xw` points at `n` widened blocks of [`XBLOCK`] 4-byte
/// aligned words, and `sums` at `4 * groups` readable and writable f32;
/// `groups >= 1`.
#[inline(always)]
unsafe fn packed_groups4(
    p: *const BlockQ8_0x4,
    xw: *const u32,
    sums: *mut f32,
    n: usize,
    groups: usize,
    skip: usize,
) {
    // SAFETY: the caller guarantees every read and write; LDRD, LDM and
    // VLDM get the word alignment they need from `BlockQ8_0x4`'s and the
    // widened buffer's. Twelve core registers are operands; R7 (Thumb's
    // frame pointer, which `asm!` cannot take) is pushed and popped around
    // its use as scratch. S0-S14 are borrowed: pushed on entry and popped
    // before the block ends. Four words (the widened blocks' start, the
    // next group's sums, the end of all sums and `skip`) go on the stack
    // meanwhile (stored one at a time, so their order does not depend on
    // which registers the operands got) and come off before the block
    // ends. LDM fills R2-R5 in order from the lowest address.
    unsafe {
        asm!(
            "push {{r7}}",
            "vpush {{s0-s14}}",
            "movs r7, #{xblock}",
            "mla {end}, {end}, r7, {xw}",
            "add {a1}, {a0}, {a1}, lsl #4",
            // Stack, from SP: xw start, next sums, sums end, skip.
            "str {w0}, [sp, #-4]!",
            "str {a1}, [sp, #-4]!",
            "str {a0}, [sp, #-4]!",
            "str {xw}, [sp, #-4]!",
            "1:",
            "ldr {xw}, [sp]",
            "ldr {a0}, [sp, #4]",
            "vldm {a0}, {{s0-s3}}",
            "2:",
            // The block's scales: the activation's, then the four rows'.
            "vldmia {xw}!, {{s4}}",
            "vldmia {p}!, {{s13, s14}}",
            "vcvtb.f32.f16 s5, s13",
            "vcvtt.f32.f16 s6, s13",
            "vcvtb.f32.f16 s7, s14",
            "vcvtt.f32.f16 s8, s14",
            scales4!(),
            // Thirty-two weights of each row, eight at a time.
            "ldm {xw}!, {{r2, r3, r4, r5}}",
            row8!(first, "{a0}"),
            row8!(first, "{a1}"),
            row8!(first, "{a2}"),
            row8!(first, "{a3}"),
            ".rept 3",
            "ldm {xw}!, {{r2, r3, r4, r5}}",
            row8!(next, "{a0}"),
            row8!(next, "{a1}"),
            row8!(next, "{a2}"),
            row8!(next, "{a3}"),
            ".endr",
            scale_add4!(),
            "cmp {xw}, {end}",
            "bne 2b",
            // The group's sums out; on to the next group.
            "ldr {w0}, [sp, #4]",
            "vstmia {w0}!, {{s0-s3}}",
            "str {w0}, [sp, #4]",
            "ldrd {w1}, {a0}, [sp, #8]",
            "add {p}, {p}, {a0}",
            "cmp {w0}, {w1}",
            "bne 1b",
            "add sp, #16",
            "vpop {{s0-s14}}",
            "pop {{r7}}",
            p = inout(reg) p => _,
            xw = inout(reg) xw => _,
            a0 = inout(reg) sums => _,
            a1 = inout(reg) groups => _,
            w0 = inout(reg) skip => _,
            end = inout(reg) n => _,
            out("r2") _,
            out("r3") _,
            out("r4") _,
            out("r5") _,
            a2 = out(reg) _,
            a3 = out(reg) _,
            w1 = out(reg) _,
            xblock = const 4 * XBLOCK,
        );
    }
}

/// [`super::scalar::matvec_q8_0x4_q8_0`] with SMLAD: rows packed in fours
/// ([`BlockQ8_0x4`]), one pointer per group, each row's eight weights one
/// aligned LDRD. The loop costs 170 instructions per 128
/// multiply-accumulates (1.33), against 192 (1.50) on the file's layout
/// ([`matvec_q8_0_q8_0`]); the results are equal bit for bit.
pub fn matvec_q8_0x4_q8_0(w: &[BlockQ8_0x4], x: &[BlockQ8_0], out: &mut [f32]) {
    let nb = x.len();
    if nb == 0 {
        out.fill(0.0);
        return;
    }
    let groups = (out.len() / 4).min(w.len() / nb);
    let out = &mut out[..4 * groups];
    out.fill(0.0);
    if groups == 0 {
        return;
    }
    let mut xw = [MaybeUninit::<[u32; XBLOCK]>::uninit(); CHUNK];
    for c0 in (0..nb).step_by(CHUNK) {
        let c1 = (c0 + CHUNK).min(nb);
        for (xb, o) in x[c0..c1].iter().zip(&mut xw) {
            widen(xb, o);
        }
        let n = c1 - c0;
        // The last group's blocks of this chunk, a checked slice: every
        // group's lie before them.
        let last = &w[(groups - 1) * nb + c0..(groups - 1) * nb + c1];
        debug_assert_eq!(last.len(), n);
        // SAFETY: group g's n >= 1 blocks of this chunk are
        // w[g * nb + c0..g * nb + c1], each group's `nb * 136` bytes after
        // the previous group's (n * 136 + skip, skip = (nb - n) * 136), and
        // the last group's are inside `w` (checked above); the first n
        // blocks of `xw` (4-byte aligned) were just written by `widen`;
        // `out` holds 4 * groups f32; groups >= 1.
        unsafe {
            packed_groups4(
                w[c0..].as_ptr(),
                xw.as_ptr().cast(),
                out.as_mut_ptr(),
                n,
                groups,
                (nb - n) * core::mem::size_of::<BlockQ8_0x4>(),
            )
        };
    }
}

/// Eight halves at `$a` (post-incremented) widened into S8-S15 by VCVTB and
/// VCVTT, through S16-S19.
macro_rules! widen8_f16 {
    () => {
        concat!(
            "ldr {t0}, [{a}], #4\n",
            "ldr {t1}, [{a}], #4\n",
            "ldr {t2}, [{a}], #4\n",
            "ldr {t3}, [{a}], #4\n",
            "vmov s16, s17, {t0}, {t1}\n",
            "vmov s18, s19, {t2}, {t3}\n",
            "vcvtb.f32.f16 s8, s16\n",
            "vcvtt.f32.f16 s9, s16\n",
            "vcvtb.f32.f16 s10, s17\n",
            "vcvtt.f32.f16 s11, s17\n",
            "vcvtb.f32.f16 s12, s18\n",
            "vcvtt.f32.f16 s13, s18\n",
            "vcvtb.f32.f16 s14, s19\n",
            "vcvtt.f32.f16 s15, s19\n",
        )
    };
}

/// [`scalar::dot_f16`] with the halves widened by VCVTB/VCVTT (exact, as
/// the reference's software widening is) and the same eight lanes, products
/// and pairwise sum, so the results are equal bit for bit. The reference's
/// software widening costs more than the multiply-add it feeds on an FPU
/// without f16 arithmetic.
pub fn dot_f16(a: &[f16], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (ca, ta) = a[..n].as_chunks::<8>();
    let (cb, tb) = b[..n].as_chunks::<8>();
    let mut s = 0.0f32;
    if !ca.is_empty() {
        let mut bits = 0u32;
        // SAFETY: reads `ca.len()` chunks of eight halves (16 bytes each;
        // v7E-M loads unaligned words) and of eight f32 (4-byte aligned, as
        // VLDM needs). S0-S27 are borrowed: pushed on entry and popped
        // before the block ends, so no value the compiler keeps in them
        // changes. Flags change (SUBS).
        unsafe {
            asm!(
                "vpush {{s0-s27}}",
                "movs {t0}, #0",
                "vmov s0, s1, {t0}, {t0}",
                "vmov s2, s3, {t0}, {t0}",
                "vmov s4, s5, {t0}, {t0}",
                "vmov s6, s7, {t0}, {t0}",
                "2:",
                widen8_f16!(),
                "vldmia {b}!, {{s20-s27}}",
                "vmla.f32 s0, s8, s20",
                "vmla.f32 s1, s9, s21",
                "vmla.f32 s2, s10, s22",
                "vmla.f32 s3, s11, s23",
                "vmla.f32 s4, s12, s24",
                "vmla.f32 s5, s13, s25",
                "vmla.f32 s6, s14, s26",
                "vmla.f32 s7, s15, s27",
                "subs {n}, #1",
                "bne 2b",
                // ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7))
                "vadd.f32 s0, s0, s4",
                "vadd.f32 s1, s1, s5",
                "vadd.f32 s2, s2, s6",
                "vadd.f32 s3, s3, s7",
                "vadd.f32 s0, s0, s1",
                "vadd.f32 s2, s2, s3",
                "vadd.f32 s0, s0, s2",
                "vmov {t0}, s0",
                "vpop {{s0-s27}}",
                a = inout(reg) ca.as_ptr() => _,
                b = inout(reg) cb.as_ptr() => _,
                n = inout(reg) ca.len() => _,
                t0 = out(reg) bits,
                t1 = out(reg) _,
                t2 = out(reg) _,
                t3 = out(reg) _,
            );
        }
        s = f32::from_bits(bits);
    }
    for (x, y) in ta.iter().zip(tb) {
        s += half_to_f32(x.to_bits().to_le_bytes()) * y;
    }
    s
}

/// [`scalar::axpy_f16`] (`y += a * x`, element by element) with the halves
/// widened by VCVTB/VCVTT: equal bit for bit, as VMLA rounds the product
/// before it adds.
pub fn axpy_f16(y: &mut [f32], a: f32, x: &[f16]) {
    let n = y.len().min(x.len());
    let (cy, ty) = y[..n].as_chunks_mut::<8>();
    let (cx, tx) = x[..n].as_chunks::<8>();
    if !cx.is_empty() {
        // SAFETY: reads `cx.len()` chunks of eight halves (16 bytes each;
        // v7E-M loads unaligned words) and reads and writes as many chunks of
        // eight f32 (4-byte aligned, as VLDM and VSTM need). S0-S27 are
        // borrowed: pushed on entry and popped before the block ends. Flags
        // change (SUBS).
        unsafe {
            asm!(
                "vpush {{s0-s27}}",
                "vmov s0, {k}",
                "2:",
                widen8_f16!(),
                "vldm {y}, {{s20-s27}}",
                "vmla.f32 s20, s8, s0",
                "vmla.f32 s21, s9, s0",
                "vmla.f32 s22, s10, s0",
                "vmla.f32 s23, s11, s0",
                "vmla.f32 s24, s12, s0",
                "vmla.f32 s25, s13, s0",
                "vmla.f32 s26, s14, s0",
                "vmla.f32 s27, s15, s0",
                "vstmia {y}!, {{s20-s27}}",
                "subs {n}, #1",
                "bne 2b",
                "vpop {{s0-s27}}",
                k = in(reg) a.to_bits(),
                a = inout(reg) cx.as_ptr() => _,
                y = inout(reg) cy.as_mut_ptr() => _,
                n = inout(reg) cx.len() => _,
                t0 = out(reg) _,
                t1 = out(reg) _,
                t2 = out(reg) _,
                t3 = out(reg) _,
            );
        }
    }
    for (o, v) in ty.iter_mut().zip(tx) {
        *o += a * half_to_f32(v.to_bits().to_le_bytes());
    }
}

fn key_dots_f16(q: &[f32], g: usize, k: &[f16], stride: usize, out: &mut [f32], ld: usize) {
    scalar::key_dots_with(q, g, k, stride, out, ld, dot_f16)
}

fn value_sum_f16(out: &mut [f32], g: usize, w: &[f32], v: &[f16], stride: usize) {
    scalar::value_sum_with(out, g, w, v, stride, axpy_f16)
}
