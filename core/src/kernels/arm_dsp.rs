//! Cortex-M DSP-extension twins of the int8 matvecs ([`super::Int8Kernels`]:
//! Q8_0, Q5_0, Q4_K and Q6_K rows against Q8_0 activation blocks), written
//! with `asm!`: the `core::arch::arm` DSP intrinsics are nightly-only, and
//! LLVM compiles a plain int8 dot loop to LDRSB + SMLABB, one multiply per
//! instruction.
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
//!
//! Q5_0, Q4_K and Q6_K go one row at a time against the same widened
//! activations; each group of 32 weights is one exact integer dot against
//! one activation block, and the float work follows the scalar reference
//! (measured per multiply-accumulate: docs/FIRMWARE.md):
//!
//! - **Q5_0** ([`matvec_q5_0_q8_0`]), per block 90 instructions for 32
//!   multiply-accumulates, scales included: per four weights an AND of the
//!   nibbles, the fifth bits ORed in from a 16-word table (UBFX, LDR), which
//!   makes each byte `q − 16` signed, one LDRD of activations, two SXTB16
//!   and two SMLAD; then LDRH, VMOV, VCVTB, VLDR, VMUL, VMOV, VCVT, VMLA.
//! - **Q4_K** ([`matvec_q4_k_q8_0`]), per pair of groups 92 for 64: a word
//!   of `qs` is two groups' nibbles, and each nibble pair is one AND of the
//!   shifted word with 0x000F000F (unsigned nibbles need no SXTB16): per
//!   eight weights one LDR, four AND, two LDRD and four SMLAD. The 6-bit
//!   scales and both f32 sums are the reference's own
//!   [`scalar::q4_k_q8_0_super`], once per super-block. Each group's
//!   `sc·Σq·x` stays exact: `63 · 15 · 128 · 32 < 2^22`.
//! - **Q6_K** ([`matvec_q6_k_q8_0`]), per activation block 89 for 32: per
//!   four weights two LDR (`ql`, `qh`), three to build the 6-bit bytes (two
//!   AND, an ORR with a shift), one LDRD, two UXTB16, two SMLAD; per half of
//!   16 the offset (`− 32 Σx` from the activations' half sums) and the
//!   signed scale folded in integers (LDR, SUB, LDRSB, MUL/MLA): the
//!   block's `Σ sc·(q − 32)·x` is at most `32 · 128 · 128 · 32 = 2^24` in
//!   magnitude, exact in i32 and in its conversion. Then the reference's
//!   [`scalar::q6_k_q8_0_super`] per super-block.

#![allow(unsafe_code)]

use core::arch::asm;
use core::mem::MaybeUninit;

use half::f16;

use super::scalar::PER_SUPER;
use super::{scalar, Int8Kernels, Kernels};
use crate::quant::q8_0::QK;
use crate::quant::{BlockQ4K, BlockQ5_0, BlockQ6K, BlockQ8_0, BlockQ8_0x4};

/// The scalar table with the DSP int8 matvecs and the VCVTB/VCVTT f16
/// attention kernels plugged in.
pub fn table() -> Kernels {
    Kernels {
        name: "cortex-m-dsp",
        int8: Some(Int8Kernels {
            q8_0: matvec_q8_0_q8_0,
            q8_0x4: Some(matvec_q8_0x4_q8_0),
            q5_0: Some(matvec_q5_0_q8_0),
            q4_k: Some(matvec_q4_k_q8_0),
            q6_k: Some(matvec_q6_k_q8_0),
        }),
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

/// Q5_0's fifth bits spread over bytes: entry `h` (the bits of four
/// consecutive elements) has byte `i` 0x00 where bit `i` is set and 0xF0
/// where it is clear. OR-ed onto the four low nibbles `n` it gives each
/// element's `q − 16` as a signed byte: `n` when set (`q = n + 16`),
/// `0xF0 | n = n − 16` when clear.
static Q5_SPREAD: [u32; 16] = {
    let mut t = [0u32; 16];
    let mut h = 0;
    while h < 16 {
        let mut i = 0;
        while i < 4 {
            if (h >> i) & 1 == 0 {
                t[h] |= 0xf0 << (8 * i);
            }
            i += 1;
        }
        h += 1;
    }
    t
};

/// Four Q5_0 weights' signed bytes (`{t}`) against the widened activation
/// pair at `$off`, into `{acc}` (`first` starts the block's sum).
#[rustfmt::skip]
macro_rules! q5_mac4 {
    ($k:ident, $off:literal) => {
        concat!(
            "ldrd {a0}, {a1}, [{x}, #", $off, "]\n",
            "sxtb16 {u}, {t}\n",
            q5_mac4!(@ $k),
            "sxtb16 {u}, {t}, ror #8\n",
            "smlad {acc}, {u}, {a1}, {acc}\n",
        )
    };
    (@ first) => { "smuad {acc}, {u}, {a0}\n" };
    (@ next) => { "smlad {acc}, {u}, {a0}, {acc}\n" };
}

/// One word of a Q5_0 block's `qs` (post-incremented): its low nibbles are
/// elements `4k..4k + 4` (fifth bits at `$lo` in `{h}`, activations at
/// byte `$xlo` of the widened block), its high nibbles elements
/// `16 + 4k..` (`$hi`, `$xhi`).
#[rustfmt::skip]
macro_rules! q5_word {
    ($k:ident, $lo:literal, $xlo:literal, $hi:literal, $xhi:literal) => {
        concat!(
            "ldr {w}, [{p}], #4\n",
            "and {t}, {w}, #0x0f0f0f0f\n",
            "ubfx {u}, {h}, #", $lo, ", #4\n",
            "ldr {u}, [{tbl}, {u}, lsl #2]\n",
            "orr {t}, {t}, {u}\n",
            q5_mac4!($k, $xlo),
            "and {t}, {m}, {w}, lsr #4\n",
            "ubfx {u}, {h}, #", $hi, ", #4\n",
            "ldr {u}, [{tbl}, {u}, lsl #2]\n",
            "orr {t}, {t}, {u}\n",
            q5_mac4!(next, $xhi),
        )
    };
}

/// `*sum += isum as f32 * (dw * dx)` for `n` consecutive Q5_0 blocks of one
/// row, in block order, as [`scalar::dot_q5_0_q8_0`] does: each block's
/// `isum = Σ (q − 16)·x` exact in SMLAD (below 2^17 in magnitude, so its
/// conversion is exact too), VMLA rounding the product before it adds.
///
/// Per block: 16 LDR/UBFX/table LDR/ORR pairs for the fifth bits merged
/// into the nibbles (an AND each), eight LDRD of widened activations,
/// sixteen SXTB16 and sixteen SMLAD; the scales take eight (LDRH, VMOV,
/// VCVTB, VLDR, VMUL; VMOV, VCVT, VMLA) and the loop five: 90 instructions
/// for 32 multiply-accumulates.
///
/// # Safety
/// `p` points at `n >= 1` Q5_0 blocks (22 bytes each, any alignment), `xw`
/// at `n` widened blocks of [`XBLOCK`] 4-byte aligned words, and `sum` at
/// one readable and writable f32.
#[inline(always)]
unsafe fn q5_0_row(p: *const u8, xw: *const u32, sum: *mut f32, n: usize) {
    // SAFETY: the caller guarantees every read and write (LDR, LDRH and
    // UBFX-indexed loads of `Q5_SPREAD`'s 16 words with a 4-bit index; LDRD
    // and VLDR of the word-aligned widened blocks). S0-S3 are borrowed:
    // pushed on entry and popped before the block ends, so no value the
    // compiler keeps in them changes. Flags change (SUBS; SMLAD's Q flag).
    unsafe {
        asm!(
            "vpush {{s0-s3}}",
            "vldr s0, [{o}]",
            "2:",
            "ldrh {u}, [{p}]",
            "vmov s1, {u}",
            "vcvtb.f32.f16 s1, s1",
            "vldr s2, [{x}]",
            "vmul.f32 s1, s1, s2",
            "ldr {h}, [{p}, #2]",
            "add {p}, {p}, #6",
            q5_word!(first, "0", "4", "16", "36"),
            q5_word!(next, "4", "12", "20", "44"),
            q5_word!(next, "8", "20", "24", "52"),
            q5_word!(next, "12", "28", "28", "60"),
            "vmov s3, {acc}",
            "vcvt.f32.s32 s3, s3",
            "vmla.f32 s0, s3, s1",
            "add {x}, {x}, #{xblock}",
            "subs {n}, {n}, #1",
            "bne 2b",
            "vstr s0, [{o}]",
            "vpop {{s0-s3}}",
            p = inout(reg) p => _,
            x = inout(reg) xw => _,
            n = inout(reg) n => _,
            o = in(reg) sum,
            tbl = in(reg) Q5_SPREAD.as_ptr(),
            m = in(reg) 0x0f0f_0f0fu32,
            h = out(reg) _,
            w = out(reg) _,
            t = out(reg) _,
            u = out(reg) _,
            a0 = out(reg) _,
            a1 = out(reg) _,
            acc = out(reg) _,
            xblock = const 4 * XBLOCK,
            options(nostack),
        );
    }
}

/// [`scalar::matvec_q5_0_q8_0`] with SXTB16/SMLAD, one row at a time over
/// activations widened once per chunk; equal bit for bit.
pub fn matvec_q5_0_q8_0(w: &[BlockQ5_0], x: &[BlockQ8_0], out: &mut [f32]) {
    let nb = x.len();
    if nb == 0 {
        out.fill(0.0);
        return;
    }
    let rows = out.len().min(w.len() / nb);
    let out = &mut out[..rows];
    out.fill(0.0);
    let mut xw = [MaybeUninit::<[u32; XBLOCK]>::uninit(); CHUNK];
    for c0 in (0..nb).step_by(CHUNK) {
        let c1 = (c0 + CHUNK).min(nb);
        for (xb, o) in x[c0..c1].iter().zip(&mut xw) {
            widen(xb, o);
        }
        for (r, o) in out.iter_mut().enumerate() {
            let row = &w[r * nb + c0..r * nb + c1];
            // SAFETY: `row` is c1 - c0 >= 1 blocks (a checked slice), the
            // first c1 - c0 blocks of `xw` (4-byte aligned) were just
            // written by `widen`, and `o` is one f32.
            unsafe { q5_0_row(row.as_ptr().cast(), xw.as_ptr().cast(), o, c1 - c0) };
        }
    }
}

/// Eight weights of a Q4_K `qs` word (post-incremented): the low nibbles
/// (group `2p`, activations at byte `$lo` of the pair's widened blocks)
/// into `{lo}`, the high nibbles (group `2p + 1`, at `$hi`) into `{hi}`;
/// each nibble pair is one AND of the word (shifted) with 0x000F000F.
#[rustfmt::skip]
macro_rules! q4k_word {
    ($k:ident, $lo:literal, $hi:literal) => {
        concat!(
            "ldr {w}, [{q}], #4\n",
            "and {t}, {m}, {w}\n",
            "ldrd {a0}, {a1}, [{x}, #", $lo, "]\n",
            q4k_word!(@ $k, "{lo}"),
            "and {t}, {m}, {w}, lsr #8\n",
            "smlad {lo}, {t}, {a1}, {lo}\n",
            "and {t}, {m}, {w}, lsr #4\n",
            "ldrd {a0}, {a1}, [{x}, #", $hi, "]\n",
            q4k_word!(@ $k, "{hi}"),
            "and {t}, {m}, {w}, lsr #12\n",
            "smlad {hi}, {t}, {a1}, {hi}\n",
        )
    };
    (@ first, $a:literal) => { concat!("smuad ", $a, ", {t}, {a0}\n") };
    (@ next, $a:literal) => { concat!("smlad ", $a, ", {t}, {a0}, ", $a, "\n") };
}

/// One Q4_K super-block's eight group dots `isum[g] = Σ q·x` (each below
/// 2^16), exact, against eight widened activation blocks.
///
/// Per pair of groups (64 multiply-accumulates): eight LDR of `qs`, 32
/// AND (shifted, against 0x000F000F: no SXTB16 needed for unsigned
/// nibbles), sixteen LDRD of activations, 32 SMLAD, then STRD and the
/// loop's four: 92 instructions.
///
/// # Safety
/// `qs` points at the block's 128 bytes of quants (any alignment), `xw` at
/// eight widened blocks of [`XBLOCK`] 4-byte aligned words, `isum` at
/// eight writable, 4-byte aligned i32.
#[inline(always)]
unsafe fn q4_k_isums(qs: *const u8, xw: *const u32, isum: *mut i32) {
    // SAFETY: the caller guarantees every read and write. Only core
    // registers are touched; flags change (SUBS; SMLAD's Q flag).
    unsafe {
        asm!(
            "2:",
            q4k_word!(first, "4", "72"),
            q4k_word!(next, "12", "80"),
            q4k_word!(next, "20", "88"),
            q4k_word!(next, "28", "96"),
            q4k_word!(next, "36", "104"),
            q4k_word!(next, "44", "112"),
            q4k_word!(next, "52", "120"),
            q4k_word!(next, "60", "128"),
            "strd {lo}, {hi}, [{dst}], #8",
            "add {x}, {x}, #{pair}",
            "subs {n}, {n}, #1",
            "bne 2b",
            q = inout(reg) qs => _,
            x = inout(reg) xw => _,
            dst = inout(reg) isum => _,
            n = inout(reg) 4usize => _,
            m = in(reg) 0x000f_000fu32,
            w = out(reg) _,
            t = out(reg) _,
            a0 = out(reg) _,
            a1 = out(reg) _,
            lo = out(reg) _,
            hi = out(reg) _,
            pair = const 8 * XBLOCK,
            options(nostack),
        );
    }
}

/// What every row's super-blocks share in one chunk of activation blocks:
/// each block's scale and (for the minimums and Q6_K's offset) sums.
struct Shared {
    dx: [f32; CHUNK],
    /// `Σ x` over each block.
    xsum: [i32; CHUNK],
    /// `Σ x` over each half (16 elements) of each block.
    half: [i32; 2 * CHUNK],
}

impl Shared {
    fn new(x: &[BlockQ8_0]) -> Shared {
        let mut s = Shared {
            dx: [0.0; CHUNK],
            xsum: [0; CHUNK],
            half: [0; 2 * CHUNK],
        };
        for (i, xb) in x.iter().take(CHUNK).enumerate() {
            s.dx[i] = half_to_f32(xb.d);
            s.half[2 * i] = scalar::q8_sum(&xb.qs[..QK / 2]);
            s.half[2 * i + 1] = scalar::q8_sum(&xb.qs[QK / 2..]);
            s.xsum[i] = s.half[2 * i] + s.half[2 * i + 1];
        }
        s
    }

    /// Super-block `k`'s eight values of `a`.
    fn eight<T: Copy>(a: &[T], k: usize) -> &[T; PER_SUPER] {
        &a.as_chunks::<PER_SUPER>().0[k]
    }
}

/// The K-quant matvecs' frame: activations widened and summed once per
/// chunk of [`CHUNK`] blocks (four super-blocks), then each row's
/// super-blocks of the chunk added to its sum in order through `add`
/// (given the block, the widened activations of its eight activation
/// blocks, the chunk's [`Shared`] values and the super-block's index in
/// the chunk).
fn matvec_k<B>(
    w: &[B],
    x: &[BlockQ8_0],
    out: &mut [f32],
    add: impl Fn(&B, *const u32, &Shared, usize) -> f32,
) {
    let ns = x.len() / PER_SUPER;
    if ns == 0 {
        out.fill(0.0);
        return;
    }
    let rows = out.len().min(w.len() / ns);
    let out = &mut out[..rows];
    out.fill(0.0);
    let mut xw = [MaybeUninit::<[u32; XBLOCK]>::uninit(); CHUNK];
    for c0 in (0..ns * PER_SUPER).step_by(CHUNK) {
        let c1 = (c0 + CHUNK).min(ns * PER_SUPER);
        for (xb, o) in x[c0..c1].iter().zip(&mut xw) {
            widen(xb, o);
        }
        let shared = Shared::new(&x[c0..c1]);
        let (s0, s1) = (c0 / PER_SUPER, c1 / PER_SUPER);
        for (r, o) in out.iter_mut().enumerate() {
            for (k, b) in w[r * ns + s0..r * ns + s1].iter().enumerate() {
                let xk = xw[k * PER_SUPER..(k + 1) * PER_SUPER].as_ptr().cast();
                *o += add(b, xk, &shared, k);
            }
        }
    }
}

/// [`scalar::matvec_q4_k_q8_0`] with the group dots in `asm!` (nibbles
/// split by AND, SMLAD) and the scales by the reference's own
/// [`scalar::q4_k_q8_0_super`]: equal bit for bit.
pub fn matvec_q4_k_q8_0(w: &[BlockQ4K], x: &[BlockQ8_0], out: &mut [f32]) {
    matvec_k(w, x, out, |b, xk, s, k| {
        let mut isum = [0i32; PER_SUPER];
        // SAFETY: `b.qs` is 128 bytes; `xk` points at the eight widened
        // blocks of super-block k (4-byte aligned), which `matvec_k` wrote
        // for this chunk; `isum` is eight aligned i32.
        unsafe { q4_k_isums(b.qs.as_ptr(), xk, isum.as_mut_ptr()) };
        let d = (half_to_f32(b.d), half_to_f32(b.dmin));
        scalar::q4_k_q8_0_super(
            b,
            &isum,
            Shared::eight(&s.xsum, k),
            Shared::eight(&s.dx, k),
            d,
        )
    })
}

/// Four Q6_K weights: the quant bytes built into `{t}` by `$build` from the
/// `ql` word at `$ql` and the `qh` word at `$qh`, against the widened pair
/// at `$x` (`first` starts the half's sum).
#[rustfmt::skip]
macro_rules! q6k_mac4 {
    ($k:ident, $build:expr, $ql:literal, $qh:literal, $x:literal) => {
        concat!(
            "ldr {w}, [{ql}, #", $ql, "]\n",
            "ldr {hh}, [{qh}, #", $qh, "]\n",
            $build,
            "ldrd {w}, {hh}, [{x}, #", $x, "]\n",
            "uxtb16 {u}, {t}\n",
            q6k_mac4!(@ $k),
            "uxtb16 {u}, {t}, ror #8\n",
            "smlad {acc}, {u}, {hh}, {acc}\n",
        )
    };
    (@ first) => { "smuad {acc}, {u}, {w}\n" };
    (@ next) => { "smlad {acc}, {u}, {w}, {acc}\n" };
}

/// Quant bytes of element group `j` (of four per 128) from a `ql` word
/// (`{w}`) and a `qh` word (`{hh}`): the nibble, and the two high bits
/// (at `2j`) moved to bits 4-5. Group 3's bytes come out times four (the
/// high bits at 6-7, the nibble at 2-5), which its half's sum undoes.
macro_rules! q6k_build {
    (0) => {
        "and {t}, {w}, #0x0f0f0f0f\nand {hh}, {hh}, #0x03030303\norr {t}, {t}, {hh}, lsl #4\n"
    };
    (1) => {
        "and {t}, {w}, #0x0f0f0f0f\nand {hh}, {hh}, #0x0c0c0c0c\norr {t}, {t}, {hh}, lsl #2\n"
    };
    (2) => {
        "and {t}, {w}, #0xf0f0f0f0\nand {hh}, {hh}, #0x30303030\norr {t}, {hh}, {t}, lsr #4\n"
    };
    (3) => {
        "and {t}, {w}, #0xf0f0f0f0\nand {hh}, {hh}, #0xc0c0c0c0\norr {t}, {hh}, {t}, lsr #2\n"
    };
}

/// One half (16 elements) of element group `j`: four words `i` of `ql` at
/// `$ql + 4i`, of `qh` at `$qh + 4i`, activations at `$x + 8i`; then the
/// offset (`− 32 Σ x`, the half's activation sum at `$sx` of `{sxp}`) and
/// the half's scale (`$sc` of `{scp}`) into `{isum}` (`mul` for the first
/// half, `mla` for the second).
#[rustfmt::skip]
macro_rules! q6k_half {
    ($j:tt, $op:ident, $fix:expr, $ql:literal, $qh:literal, $x:literal, $sx:literal, $sc:literal,
     [$ql1:literal, $qh1:literal, $x1:literal], [$ql2:literal, $qh2:literal, $x2:literal],
     [$ql3:literal, $qh3:literal, $x3:literal]) => {
        concat!(
            q6k_mac4!(first, q6k_build!($j), $ql, $qh, $x),
            q6k_mac4!(next, q6k_build!($j), $ql1, $qh1, $x1),
            q6k_mac4!(next, q6k_build!($j), $ql2, $qh2, $x2),
            q6k_mac4!(next, q6k_build!($j), $ql3, $qh3, $x3),
            $fix,
            "ldr {w}, [{sxp}, #", $sx, "]\n",
            "sub {acc}, {acc}, {w}, lsl #5\n",
            "ldrsb {w}, [{scp}, #", $sc, "]\n",
            q6k_half!(@ $op),
        )
    };
    (@ mul) => { "mul {isum}, {w}, {acc}\n" };
    (@ mla) => { "mla {isum}, {w}, {acc}, {isum}\n" };
}

/// One element group `j` of a 128-element half of a Q6_K super-block: its
/// two halves of 16 with their scales, stored as `isum[j]` (`$out`).
/// `$qlb` is the group's `ql` offset (32 for odd `j`), `$xb` its widened
/// block's byte offset, `$fix` what the half's sum needs before its
/// offset (group 3's divide by four).
#[rustfmt::skip]
macro_rules! q6k_group {
    ($j:tt, $fix:expr, $sx0:literal, $sx1:literal, $sc0:literal, $sc1:literal, $out:literal,
     $q0:literal, $q1:literal, $q2:literal, $q3:literal, $q4:literal, $q5:literal, $q6:literal, $q7:literal,
     $x0:literal, $x1:literal, $x2:literal, $x3:literal, $x4:literal, $x5:literal, $x6:literal, $x7:literal) => {
        concat!(
            q6k_half!($j, mul, $fix, $q0, "0", $x0, $sx0, $sc0,
                [$q1, "4", $x1], [$q2, "8", $x2], [$q3, "12", $x3]),
            q6k_half!($j, mla, $fix, $q4, "16", $x4, $sx1, $sc1,
                [$q5, "20", $x5], [$q6, "24", $x6], [$q7, "28", $x7]),
            "str {isum}, [{dst}, #", $out, "]\n",
        )
    };
}

/// One Q6_K super-block's eight activation-block dots with the group
/// scales folded in, `isum[k] = Σ sc·(q − 32)·x` (at most 2^24 in
/// magnitude), exact: per half of 16, `Σ q·x` over the unsigned quants in
/// SMLAD, minus `32 Σ x` (the activations' half sums, `sx`), times the
/// half's scale.
///
/// Per four weights: two LDR (`ql`, `qh`), three to build the bytes (two
/// AND, one ORR with a shift), one LDRD of activations, two UXTB16 and two
/// SMLAD; per half of 16, four more (LDR, SUB, LDRSB, MUL/MLA; group 3 one
/// more); per group of 32 a STR: 89 instructions per 32
/// multiply-accumulates, and the loop's eight per 128.
///
/// # Safety
/// `b` points at a Q6_K block (210 bytes, any alignment), `xw` at eight
/// widened blocks of [`XBLOCK`] 4-byte aligned words, `sx` at sixteen
/// readable i32 (the half sums of those blocks, in order), `isum` at eight
/// writable, 4-byte aligned i32.
#[inline(always)]
unsafe fn q6_k_isums(b: *const u8, xw: *const u32, sx: *const i32, isum: *mut i32) {
    // SAFETY: the caller guarantees every read and write: per half `h` of
    // the block, `ql` bytes 64h..64h + 64, `qh` bytes 128 + 32h.. + 32 and
    // scales 192 + 8h.. + 8, four of the eight widened blocks, eight of
    // the half sums and four of the outputs. Only core registers are
    // touched; flags change (SUBS; SMLAD's Q flag).
    unsafe {
        asm!(
            "2:",
            q6k_group!(0, "", "0", "4", "0", "1", "0",
                "0", "4", "8", "12", "16", "20", "24", "28",
                "4", "12", "20", "28", "36", "44", "52", "60"),
            q6k_group!(1, "", "8", "12", "2", "3", "4",
                "32", "36", "40", "44", "48", "52", "56", "60",
                "72", "80", "88", "96", "104", "112", "120", "128"),
            q6k_group!(2, "", "16", "20", "4", "5", "8",
                "0", "4", "8", "12", "16", "20", "24", "28",
                "140", "148", "156", "164", "172", "180", "188", "196"),
            q6k_group!(3, "asr {acc}, {acc}, #2\n", "24", "28", "6", "7", "12",
                "32", "36", "40", "44", "48", "52", "56", "60",
                "208", "216", "224", "232", "240", "248", "256", "264"),
            "add {ql}, {ql}, #64",
            "add {qh}, {qh}, #32",
            "add {scp}, {scp}, #8",
            "add {sxp}, {sxp}, #32",
            "add {dst}, {dst}, #16",
            "add {x}, {x}, #{half}",
            "subs {n}, {n}, #1",
            "bne 2b",
            ql = inout(reg) b => _,
            qh = inout(reg) b.wrapping_add(128) => _,
            scp = inout(reg) b.wrapping_add(192) => _,
            sxp = inout(reg) sx => _,
            dst = inout(reg) isum => _,
            x = inout(reg) xw => _,
            n = inout(reg) 2usize => _,
            w = out(reg) _,
            hh = out(reg) _,
            t = out(reg) _,
            u = out(reg) _,
            acc = out(reg) _,
            isum = out(reg) _,
            half = const 16 * XBLOCK,
            options(nostack),
        );
    }
}

/// [`scalar::matvec_q6_k_q8_0`] with the activation-block dots in `asm!`
/// and the scales by the reference's own [`scalar::q6_k_q8_0_super`]:
/// equal bit for bit.
pub fn matvec_q6_k_q8_0(w: &[BlockQ6K], x: &[BlockQ8_0], out: &mut [f32]) {
    matvec_k(w, x, out, |b, xk, s, k| {
        let mut isum = [0i32; PER_SUPER];
        let sx = &s.half[2 * PER_SUPER * k..2 * PER_SUPER * (k + 1)];
        // SAFETY: `b` is one 210-byte block; `xk` points at the eight
        // widened blocks of super-block k (4-byte aligned), which
        // `matvec_k` wrote for this chunk; `sx` is their sixteen half
        // sums (a checked slice); `isum` is eight aligned i32.
        unsafe {
            q6_k_isums(
                (b as *const BlockQ6K).cast(),
                xk,
                sx.as_ptr(),
                isum.as_mut_ptr(),
            )
        };
        scalar::q6_k_q8_0_super(&isum, Shared::eight(&s.dx, k), half_to_f32(b.d))
    })
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
