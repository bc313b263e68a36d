//! AArch64 NEON twins of the scalar kernels.
//!
//! With f32 activations (prefill, and the formats without a 16-bit
//! kernel), quants are widened to f32 in registers (`sxtl`/`uxtl`,
//! `scvtf`/`ucvtf`, and `fcvtl` for halves) and multiplied with the
//! activations by `fmla`, four lanes at a time with several accumulators.
//! Results differ from the scalar reference only by FMA rounding and
//! summation order; `conformance.rs` holds them together.
//!
//! Decode of Q8_0, Q4_0 and Q4_1 rows multiplies 16-bit activation blocks
//! ([`crate::quant::q16`]), as the x86 tables do: quants widened to 16 bits
//! (`sxtl`/`uxtl`), exact integer dots by `smull`/`smlal2` (eight
//! multiply-accumulates in two instructions), four rows at a time sharing
//! each activation load, one lane per row for the scales. Each lane adds
//! its row's blocks in order as the reference does, so these are bit for
//! bit `quant::q16::dot_*_q16`.
//!
//! CI runs the tests on this file through `qemu-aarch64` user mode.
//!
//! The `unsafe` here is the intrinsics (every load reads a fixed-size chunk
//! of a slice) and one `fcvtl` in `asm!` (Rust has no stable f16 vectors).

#![allow(unsafe_code)]

use core::arch::aarch64::*;
use core::arch::asm;

use half::{bf16, f16};

use super::scalar::rows;
use super::{erase, FormatKernels, Heads, Kernels, Q16Kernels, RowDotFn, RowMatvecFn};
use crate::quant::f16::f16_bits_to_f32_fast;
use crate::quant::k_quants::QK_K;
use crate::quant::q16::QK;
use crate::quant::{
    q16, BlockQ16, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0,
    BlockQ5_1, BlockQ6K, BlockQ8_0, GgmlType,
};

/// The NEON table, if this CPU runs it.
pub fn table() -> Option<Kernels> {
    if !supported() {
        return None;
    }
    let k = Kernels {
        name: "neon",
        dot_f32,
        dot_f16,
        gemm_f32,
        axpy_f16,
        prefetch,
        key_dots_f16,
        value_sum_f16,
        q16: Some(Q16Kernels {
            quantize: q16::quantize_row,
            q8_0x8: None,
            q4_1x8: None,
            q4_kx8: None,
            q6_kx8: None,
            q5_0x8: None,
        }),
        ..Kernels::scalar()
    };
    let with = |ty: GgmlType, dot: RowDotFn, mv: RowMatvecFn| FormatKernels {
        dot,
        mv: Some(mv),
        ..*k.format(ty)
    };
    let with16 = |f: FormatKernels, k16: super::RowQ16Fn| FormatKernels {
        q16: Some(k16),
        ..f
    };
    Some(
        k.with_format(
            GgmlType::F32,
            with(
                GgmlType::F32,
                erase!(dot f32, dot_f32),
                erase!(mv f32, mv_f32),
            ),
        )
        .with_format(
            GgmlType::F16,
            with(
                GgmlType::F16,
                erase!(dot f16, dot_f16),
                erase!(mv f16, mv_f16),
            ),
        )
        .with_format(
            GgmlType::Q8_0,
            with16(
                with(
                    GgmlType::Q8_0,
                    erase!(dot BlockQ8_0, dot_q8_0),
                    erase!(mv BlockQ8_0, mv_q8_0),
                ),
                erase!(q16 BlockQ8_0, mv_q8_0_q16),
            ),
        )
        .with_format(
            GgmlType::Q4_0,
            with16(
                with(
                    GgmlType::Q4_0,
                    erase!(dot BlockQ4_0, dot_q4_0),
                    erase!(mv BlockQ4_0, mv_q4_0),
                ),
                erase!(q16 BlockQ4_0, mv_q4_0_q16),
            ),
        )
        .with_format(
            GgmlType::Q4_1,
            with16(
                with(
                    GgmlType::Q4_1,
                    erase!(dot BlockQ4_1, dot_q4_1),
                    erase!(mv BlockQ4_1, mv_q4_1),
                ),
                erase!(q16 BlockQ4_1, mv_q4_1_q16),
            ),
        )
        .with_format(
            GgmlType::BF16,
            with(
                GgmlType::BF16,
                erase!(dot bf16, dot_bf16),
                erase!(mv bf16, mv_bf16),
            ),
        )
        .with_format(
            GgmlType::Q5_0,
            with16(
                with(
                    GgmlType::Q5_0,
                    erase!(dot BlockQ5_0, dot_q5_0),
                    erase!(mv BlockQ5_0, mv_q5_0),
                ),
                erase!(q16 BlockQ5_0, mv_q5_0_q16),
            ),
        )
        .with_format(
            GgmlType::Q5_1,
            with(
                GgmlType::Q5_1,
                erase!(dot BlockQ5_1, dot_q5_1),
                erase!(mv BlockQ5_1, mv_q5_1),
            ),
        )
        .with_format(
            GgmlType::Q2_K,
            with(
                GgmlType::Q2_K,
                erase!(dot BlockQ2K, dot_q2_k),
                erase!(mv BlockQ2K, mv_q2_k),
            ),
        )
        .with_format(
            GgmlType::Q3_K,
            with(
                GgmlType::Q3_K,
                erase!(dot BlockQ3K, dot_q3_k),
                erase!(mv BlockQ3K, mv_q3_k),
            ),
        )
        .with_format(
            GgmlType::Q4_K,
            with16(
                with(
                    GgmlType::Q4_K,
                    erase!(dot BlockQ4K, dot_q4_k),
                    erase!(mv BlockQ4K, mv_q4_k),
                ),
                erase!(q16 BlockQ4K, mv_q4_k_q16),
            ),
        )
        .with_format(
            GgmlType::Q5_K,
            with(
                GgmlType::Q5_K,
                erase!(dot BlockQ5K, dot_q5_k),
                erase!(mv BlockQ5K, mv_q5_k),
            ),
        )
        .with_format(
            GgmlType::Q6_K,
            with16(
                with(
                    GgmlType::Q6_K,
                    erase!(dot BlockQ6K, dot_q6_k),
                    erase!(mv BlockQ6K, mv_q6_k),
                ),
                erase!(q16 BlockQ6K, mv_q6_k_q16),
            ),
        ),
    )
}

#[cfg(feature = "std")]
fn supported() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

#[cfg(not(feature = "std"))]
fn supported() -> bool {
    cfg!(target_feature = "neon")
}

// The wrappers: sound because `table` only hands them out after `supported()`.
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: reachable only through `table`, which checked NEON.
    unsafe { imp::dot_f32(a, b) }
}
fn dot_f16(a: &[f16], b: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { imp::dot_f16(a, b) }
}
fn dot_q8_0(w: &[BlockQ8_0], x: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { imp::dot_q8_0(w, x) }
}
fn dot_q4_0(w: &[BlockQ4_0], x: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { imp::dot_q4_0(w, x) }
}
fn dot_q4_1(w: &[BlockQ4_1], x: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { imp::dot_q4_1(w, x) }
}

fn dot_q5_0(w: &[BlockQ5_0], x: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { imp::dot_q5_0(w, x) }
}
fn dot_q5_1(w: &[BlockQ5_1], x: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { imp::dot_q5_1(w, x) }
}
fn dot_q2_k(w: &[BlockQ2K], x: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { imp::dot_q2_k(w, x) }
}
fn dot_q3_k(w: &[BlockQ3K], x: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { imp::dot_q3_k(w, x) }
}
fn mv_q5_1(w: &[BlockQ5_1], x: &[f32], out: &mut [f32]) {
    rows(w, x.len() / QK, x, out, dot_q5_1)
}
fn mv_q2_k(w: &[BlockQ2K], x: &[f32], out: &mut [f32]) {
    rows(w, x.len() / QK_K, x, out, dot_q2_k)
}
fn mv_q3_k(w: &[BlockQ3K], x: &[f32], out: &mut [f32]) {
    rows(w, x.len() / QK_K, x, out, dot_q3_k)
}
fn dot_q4_k(w: &[BlockQ4K], x: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { imp::dot_q4_k(w, x) }
}
fn dot_q5_k(w: &[BlockQ5K], x: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { imp::dot_q5_k(w, x) }
}
fn dot_q6_k(w: &[BlockQ6K], x: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { imp::dot_q6_k(w, x) }
}
fn mv_q5_0(w: &[BlockQ5_0], x: &[f32], out: &mut [f32]) {
    rows(w, x.len() / QK, x, out, dot_q5_0)
}
fn mv_q4_k(w: &[BlockQ4K], x: &[f32], out: &mut [f32]) {
    rows(w, x.len() / QK_K, x, out, dot_q4_k)
}
fn mv_q5_k(w: &[BlockQ5K], x: &[f32], out: &mut [f32]) {
    rows(w, x.len() / QK_K, x, out, dot_q5_k)
}
fn mv_q6_k(w: &[BlockQ6K], x: &[f32], out: &mut [f32]) {
    rows(w, x.len() / QK_K, x, out, dot_q6_k)
}
fn mv_f32(w: &[f32], x: &[f32], out: &mut [f32]) {
    rows(w, x.len(), x, out, dot_f32)
}
fn mv_f16(w: &[f16], x: &[f32], out: &mut [f32]) {
    rows(w, x.len(), x, out, dot_f16)
}
fn dot_bf16(a: &[bf16], b: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { imp::dot_bf16(a, b) }
}
fn mv_bf16(w: &[bf16], x: &[f32], out: &mut [f32]) {
    rows(w, x.len(), x, out, dot_bf16)
}
/// The safe entry points of the 16-bit decode kernels.
macro_rules! q16_entries {
    ($($name:ident: $block:ty;)*) => {$(
        fn $name(w: &[$block], x: &[BlockQ16], n: usize, out: &mut [f32]) {
            // SAFETY: as above.
            unsafe { imp::$name(w, x, n, out) }
        }
    )*};
}
q16_entries! {
    mv_q8_0_q16: BlockQ8_0;
    mv_q4_0_q16: BlockQ4_0;
    mv_q4_1_q16: BlockQ4_1;
    mv_q5_0_q16: BlockQ5_0;
    mv_q4_k_q16: BlockQ4K;
    mv_q6_k_q16: BlockQ6K;
}
fn mv_q8_0(w: &[BlockQ8_0], x: &[f32], out: &mut [f32]) {
    rows(w, x.len() / QK, x, out, dot_q8_0)
}
fn mv_q4_0(w: &[BlockQ4_0], x: &[f32], out: &mut [f32]) {
    rows(w, x.len() / QK, x, out, dot_q4_0)
}
fn mv_q4_1(w: &[BlockQ4_1], x: &[f32], out: &mut [f32]) {
    rows(w, x.len() / QK, x, out, dot_q4_1)
}
fn key_dots_f16(q: &[f32], g: usize, k: &[f16], stride: usize, out: &mut [f32], ld: usize) {
    let h = Heads::keys(q, g, k, stride, out, ld);
    // SAFETY: as above (the kernel indexes its slices with bounds checks).
    unsafe { imp::key_dots_f16(q, k, stride, out, h) }
}
fn value_sum_f16(out: &mut [f32], g: usize, w: &[f32], v: &[f16], stride: usize) {
    let h = Heads::values(out, g, w, v, stride);
    // SAFETY: as above (the kernel indexes its slices with bounds checks).
    unsafe { imp::value_sum_f16(out, w, v, stride, h) }
}
fn axpy_f16(y: &mut [f32], a: f32, x: &[f16]) {
    // SAFETY: as above.
    unsafe { imp::axpy_f16(y, a, x) }
}
/// Every 64-byte line of `len` bytes from `p`, into L2 (`prfm pldl2keep`).
fn prefetch(p: *const u8, len: usize) {
    let mut at = p.wrapping_sub(p as usize % 64);
    let end = p.wrapping_add(len);
    while at < end {
        // SAFETY: a prefetch never faults, whatever the address, and reads
        // or writes no register or memory the program sees.
        unsafe {
            asm!("prfm pldl2keep, [{p}]", p = in(reg) at, options(nostack, readonly, preserves_flags))
        };
        at = at.wrapping_add(64);
    }
}
fn gemm_f32(w: &[f32], x: &[f32], cols: usize, out: &mut [f32]) {
    if cols == 0 {
        out.fill(0.0);
        return;
    }
    let (rows, n) = (w.len() / cols, x.len() / cols);
    // SAFETY: as above; `out` holds (n, rows) (sliced here).
    unsafe {
        imp::gemm_f32(
            &w[..rows * cols],
            &x[..n * cols],
            cols,
            &mut out[..rows * n],
        )
    }
}

mod imp {
    use super::*;

    /// Rows of weight blocks (each `PER` groups of 32: one for the 32-element
    /// formats, eight for a K-quant super-block) times `n` tokens of 16-bit
    /// activation blocks, into `out[t * rows + r]` (the contract of
    /// [`crate::kernels::RowQ16Fn`]). `dots(block, g, x)` gives group `g`'s
    /// exact integer dot with activation block `x` as four lanes to be
    /// added, less `off · isum` (the quants' offset, taken out once per
    /// four rows); `scales(block, g)` its scale and minimum. Four rows at a
    /// time, a lane each, add `(d · xd) · dot` (plus `m · sum` with `MIN`
    /// where `NEG` is false, minus it where true) group by group as `dot`
    /// does; the rows past the last four go through `dot` itself.
    #[target_feature(enable = "neon")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn mv_q16<B, const PER: usize, const MIN: bool, const NEG: bool>(
        w: &[B],
        x: &[BlockQ16],
        n: usize,
        out: &mut [f32],
        dots: impl Fn(&B, usize, &BlockQ16) -> int32x4_t,
        off: i32,
        scales: impl Fn(&B, usize) -> (f32, f32),
        dot: fn(&[B], &[BlockQ16]) -> f32,
    ) {
        let n = n.max(1);
        let (nx, rows) = (x.len() / n, out.len() / n);
        let nb = nx / PER;
        if nb == 0 {
            out.fill(0.0);
            return;
        }
        // Rows the weights hold (callers pass them all); outputs stay `rows`
        // apart.
        let have = rows.min(w.len() / nb);
        for t in 0..n {
            let xt = &x[t * nx..t * nx + nb * PER];
            let ot = &mut out[t * rows..t * rows + have];
            let rows = have;
            let full = rows / 4 * 4;
            for r0 in (0..full).step_by(4) {
                let (w0, w1, w2, w3) = (
                    &w[r0 * nb..(r0 + 1) * nb],
                    &w[(r0 + 1) * nb..(r0 + 2) * nb],
                    &w[(r0 + 2) * nb..(r0 + 3) * nb],
                    &w[(r0 + 3) * nb..(r0 + 4) * nb],
                );
                let mut s = vdupq_n_f32(0.0);
                for (k, xb) in xt.iter().enumerate() {
                    let (b, g) = (k / PER, k % PER);
                    // Written out per row (no arrays of vectors: they would
                    // go through memory).
                    let (i0, i1) = (dots(&w0[b], g, xb), dots(&w1[b], g, xb));
                    let (i2, i3) = (dots(&w2[b], g, xb), dots(&w3[b], g, xb));
                    let (d0, m0) = scales(&w0[b], g);
                    let (d1, m1) = scales(&w1[b], g);
                    let (d2, m2) = scales(&w2[b], g);
                    let (d3, m3) = scales(&w3[b], g);
                    // Each row's four partial sums added: lane r is row r.
                    let i = vpaddq_s32(vpaddq_s32(i0, i1), vpaddq_s32(i2, i3));
                    let i = vsubq_s32(i, vdupq_n_s32(off.wrapping_mul(xb.isum)));
                    let (d, m) = ([d0, d1, d2, d3], [m0, m1, m2, m3]);
                    // SAFETY: four floats each.
                    let (dv, mv) = unsafe { (vld1q_f32(d.as_ptr()), vld1q_f32(m.as_ptr())) };
                    // The reference's (d * xd) * dot (± m * sum), then the add.
                    let mut term = vmulq_f32(vmulq_n_f32(dv, xb.d), vcvtq_f32_s32(i));
                    if MIN && NEG {
                        term = vsubq_f32(term, vmulq_n_f32(mv, xb.sum));
                    } else if MIN {
                        term = vaddq_f32(term, vmulq_n_f32(mv, xb.sum));
                    }
                    s = vaddq_f32(s, term);
                }
                // SAFETY: four writable floats at r0 (r0 + 4 <= full <= rows).
                unsafe { vst1q_f32(ot[r0..r0 + 4].as_mut_ptr(), s) };
            }
            for (r, o) in ot.iter_mut().enumerate().skip(full) {
                *o = dot(&w[r * nb..(r + 1) * nb], xt);
            }
        }
    }

    /// A 16-bit activation block's quants as four vectors of eight.
    #[target_feature(enable = "neon")]
    #[inline]
    fn eighths(xb: &BlockQ16) -> (int16x8_t, int16x8_t, int16x8_t, int16x8_t) {
        let p = xb.qs.as_ptr();
        // SAFETY: four runs of eight i16 within the block's 32.
        unsafe {
            (
                vld1q_s16(p),
                vld1q_s16(p.add(8)),
                vld1q_s16(p.add(16)),
                vld1q_s16(p.add(24)),
            )
        }
    }

    /// The exact integer dot of 32 quants (four vectors of eight i16) with
    /// a 16-bit activation block, as four lanes to be added.
    #[target_feature(enable = "neon")]
    #[inline]
    fn dot32(q: [int16x8_t; 4], xb: &BlockQ16) -> int32x4_t {
        let (x0, x1, x2, x3) = eighths(xb);
        let [q0, q1, q2, q3] = q;
        let mut a = vmull_s16(vget_low_s16(q0), vget_low_s16(x0));
        a = vmlal_high_s16(a, q0, x0);
        a = vmlal_s16(a, vget_low_s16(q1), vget_low_s16(x1));
        a = vmlal_high_s16(a, q1, x1);
        a = vmlal_s16(a, vget_low_s16(q2), vget_low_s16(x2));
        a = vmlal_high_s16(a, q2, x2);
        a = vmlal_s16(a, vget_low_s16(q3), vget_low_s16(x3));
        vmlal_high_s16(a, q3, x3)
    }

    /// Sixteen bytes (each below 128) as two vectors of eight i16.
    #[target_feature(enable = "neon")]
    #[inline]
    fn widen_u8(v: uint8x16_t) -> [int16x8_t; 2] {
        [
            vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(v))),
            vreinterpretq_s16_u16(vmovl_high_u8(v)),
        ]
    }

    /// A 4-bit block's nibbles (low: elements 0..16, high: 16..32) as four
    /// vectors of eight i16.
    #[target_feature(enable = "neon")]
    #[inline]
    fn nibbles16(qs: &[u8; 16]) -> [int16x8_t; 4] {
        // SAFETY: sixteen readable bytes.
        let q = unsafe { vld1q_u8(qs.as_ptr()) };
        let [a, b] = widen_u8(vandq_u8(q, vdupq_n_u8(0x0f)));
        let [c, d] = widen_u8(vshrq_n_u8::<4>(q));
        [a, b, c, d]
    }

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn mv_q8_0_q16(w: &[BlockQ8_0], x: &[BlockQ16], n: usize, out: &mut [f32]) {
        let dots = |b: &BlockQ8_0, _: usize, xb: &BlockQ16| {
            // SAFETY: the block's 32 quants, as two runs of sixteen.
            let (a, c) = unsafe { (vld1q_s8(b.qs.as_ptr()), vld1q_s8(b.qs[16..].as_ptr())) };
            let q = [
                vmovl_s8(vget_low_s8(a)),
                vmovl_high_s8(a),
                vmovl_s8(vget_low_s8(c)),
                vmovl_high_s8(c),
            ];
            dot32(q, xb)
        };
        let scales = |b: &BlockQ8_0, _: usize| (b.d(), 0.0);
        mv_q16::<_, 1, false, false>(w, x, n, out, dots, 0, scales, q16::dot_q8_0_q16)
    }

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn mv_q4_0_q16(w: &[BlockQ4_0], x: &[BlockQ16], n: usize, out: &mut [f32]) {
        let dots = |b: &BlockQ4_0, _: usize, xb: &BlockQ16| dot32(nibbles16(&b.qs), xb);
        let scales = |b: &BlockQ4_0, _: usize| (b.d(), 0.0);
        mv_q16::<_, 1, false, false>(w, x, n, out, dots, 8, scales, q16::dot_q4_0_q16)
    }

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn mv_q4_1_q16(w: &[BlockQ4_1], x: &[BlockQ16], n: usize, out: &mut [f32]) {
        let dots = |b: &BlockQ4_1, _: usize, xb: &BlockQ16| dot32(nibbles16(&b.qs), xb);
        let scales = |b: &BlockQ4_1, _: usize| (b.d(), b.m());
        mv_q16::<_, 1, true, false>(w, x, n, out, dots, 0, scales, q16::dot_q4_1_q16)
    }

    /// Q5_0: the nibbles with their fifth bits (spread from `qh` by one
    /// table lookup and a bit test per sixteen), offset 16 through `isum`.
    ///
    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn mv_q5_0_q16(w: &[BlockQ5_0], x: &[BlockQ16], n: usize, out: &mut [f32]) {
        let dots = |b: &BlockQ5_0, _: usize, xb: &BlockQ16| {
            // SAFETY: sixteen readable bytes.
            let q = unsafe { vld1q_u8(b.qs.as_ptr()) };
            let h = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_le_bytes(b.qh)));
            let bit: [u8; 16] = core::array::from_fn(|i| 1u8 << (i % 8));
            // SAFETY: sixteen readable bytes.
            let bit = unsafe { vld1q_u8(bit.as_ptr()) };
            // Byte j of the low (high) half takes qh byte j / 8 (2 + j / 8).
            let fifth = |first: u8| {
                let idx: [u8; 16] = core::array::from_fn(|i| first + (i / 8) as u8);
                // SAFETY: sixteen readable bytes.
                let idx = unsafe { vld1q_u8(idx.as_ptr()) };
                vandq_u8(vtstq_u8(vqtbl1q_u8(h, idx), bit), vdupq_n_u8(16))
            };
            let lo = vorrq_u8(vandq_u8(q, vdupq_n_u8(0x0f)), fifth(0));
            let hi = vorrq_u8(vshrq_n_u8::<4>(q), fifth(2));
            let [a, c] = widen_u8(lo);
            let [e, f] = widen_u8(hi);
            dot32([a, c, e, f], xb)
        };
        let scales = |b: &BlockQ5_0, _: usize| (b.d(), 0.0);
        mv_q16::<_, 1, false, false>(w, x, n, out, dots, 16, scales, q16::dot_q5_0_q16)
    }

    /// Q4_K: per group of 32, its nibbles; `d·sc` and `dmin·m` as the
    /// reference forms them, the minimum's term subtracted.
    ///
    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn mv_q4_k_q16(w: &[BlockQ4K], x: &[BlockQ16], n: usize, out: &mut [f32]) {
        let dots = |b: &BlockQ4K, g: usize, xb: &BlockQ16| {
            let p = b.qs[32 * ((g / 2) & 3)..].as_ptr();
            // SAFETY: 32 bytes of `qs` from 32 (g / 2) (g < 8).
            let (a, c) = unsafe { (vld1q_u8(p), vld1q_u8(p.add(16))) };
            let (a, c) = if g.is_multiple_of(2) {
                (vandq_u8(a, vdupq_n_u8(0x0f)), vandq_u8(c, vdupq_n_u8(0x0f)))
            } else {
                (vshrq_n_u8::<4>(a), vshrq_n_u8::<4>(c))
            };
            let [q0, q1] = widen_u8(a);
            let [q2, q3] = widen_u8(c);
            dot32([q0, q1, q2, q3], xb)
        };
        mv_q16::<_, 8, true, true>(
            w,
            x,
            n,
            out,
            dots,
            0,
            |b, g| b.group(g),
            q16::dot_scale_min_q16::<BlockQ4K>,
        )
    }

    /// Q6_K: per group of 32, its six-bit quants less 32 as bytes, each
    /// half's exact dot times its scale (wrapping, as the reference's i32
    /// sum).
    ///
    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn mv_q6_k_q16(w: &[BlockQ6K], x: &[BlockQ16], n: usize, out: &mut [f32]) {
        let dots = |b: &BlockQ6K, g: usize, xb: &BlockQ16| {
            let (h, k) = ((g / 4) & 1, g % 4);
            let lp = b.ql[64 * h + 32 * (k % 2)..].as_ptr();
            let hp = b.qh[32 * h..].as_ptr();
            // SAFETY: 32 bytes of `ql` from 64h + 32 (k % 2) < 128 and of
            // `qh` from 32h < 64.
            let (l0, l1, h0, h1) = unsafe {
                (
                    vld1q_u8(lp),
                    vld1q_u8(lp.add(16)),
                    vld1q_u8(hp),
                    vld1q_u8(hp.add(16)),
                )
            };
            let m4 = vdupq_n_u8(0x0f);
            let (l0, l1) = if k < 2 {
                (vandq_u8(l0, m4), vandq_u8(l1, m4))
            } else {
                (vshrq_n_u8::<4>(l0), vshrq_n_u8::<4>(l1))
            };
            let down = vdupq_n_s8(-2 * k as i8);
            let top = |hv: uint8x16_t| vshlq_n_u8::<4>(vandq_u8(vshlq_u8(hv, down), vdupq_n_u8(3)));
            let q0 = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(l0, top(h0))), vdupq_n_s8(32));
            let q1 = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(l1, top(h1))), vdupq_n_s8(32));
            let (x0, x1, x2, x3) = eighths(xb);
            let half = |q: int8x16_t, xa: int16x8_t, xc: int16x8_t| {
                let (a, c) = (vmovl_s8(vget_low_s8(q)), vmovl_high_s8(q));
                let mut s = vmull_s16(vget_low_s16(a), vget_low_s16(xa));
                s = vmlal_high_s16(s, a, xa);
                s = vmlal_s16(s, vget_low_s16(c), vget_low_s16(xc));
                vmlal_high_s16(s, c, xc)
            };
            let (sa, sc) = (
                b.scales[(2 * g) & 15] as i32,
                b.scales[(2 * g + 1) & 15] as i32,
            );
            vmlaq_n_s32(vmulq_n_s32(half(q0, x0, x1), sa), half(q1, x2, x3), sc)
        };
        let scales = |b: &BlockQ6K, _: usize| (crate::quant::f16_bits_to_f32(b.d), 0.0);
        mv_q16::<_, 8, false, false>(w, x, n, out, dots, 0, scales, q16::dot_q6_k_q16)
    }

    /// Four f32 from `p`.
    #[target_feature(enable = "neon")]
    #[inline]
    fn load4(p: &[f32; 4]) -> float32x4_t {
        // SAFETY: `p` is exactly four readable floats; ld1 has no alignment need.
        unsafe { vld1q_f32(p.as_ptr()) }
    }

    /// Four halves widened to f32 (`fcvtl`).
    #[target_feature(enable = "neon")]
    #[inline]
    fn half4(h: &[f16; 4]) -> float32x4_t {
        // SAFETY: `h` is exactly four readable halves (8 bytes).
        let bits = unsafe { vld1_u16(h.as_ptr().cast()) };
        let out: float32x4_t;
        // SAFETY: fcvtl reads one 64-bit register and writes one 128-bit
        // register; it touches no memory and no flags.
        unsafe {
            asm!("fcvtl {o:v}.4s, {i:v}.4h", o = out(vreg) out, i = in(vreg) bits,
                 options(pure, nomem, nostack, preserves_flags));
        }
        out
    }

    /// The 32 floats of one block as eight vectors.
    #[target_feature(enable = "neon")]
    #[inline]
    fn xblock(xs: &[f32; QK]) -> [float32x4_t; 8] {
        let c = xs.as_chunks::<4>().0;
        core::array::from_fn(|i| load4(&c[i]))
    }

    /// Sum of eight products of widened quants `q` (as 2 x 16 bytes) with
    /// the block's floats: `lo`/`hi` are the two 16-byte halves, signed.
    #[target_feature(enable = "neon")]
    #[inline]
    fn block_dot_s8(lo: int8x16_t, hi: int8x16_t, x: &[float32x4_t; 8]) -> float32x4_t {
        let h = [
            vmovl_s8(vget_low_s8(lo)),
            vmovl_s8(vget_high_s8(lo)),
            vmovl_s8(vget_low_s8(hi)),
            vmovl_s8(vget_high_s8(hi)),
        ];
        let mut a = vdupq_n_f32(0.0);
        let mut b = vdupq_n_f32(0.0);
        for (k, v) in h.iter().enumerate() {
            let w0 = vcvtq_f32_s32(vmovl_s16(vget_low_s16(*v)));
            let w1 = vcvtq_f32_s32(vmovl_s16(vget_high_s16(*v)));
            a = vfmaq_f32(a, w0, x[2 * k]);
            b = vfmaq_f32(b, w1, x[2 * k + 1]);
        }
        vaddq_f32(a, b)
    }

    /// `a · b` over four-element chunks with four accumulators: `load`
    /// widens a chunk of `a` to f32, `elem` one element of its tail.
    #[target_feature(enable = "neon")]
    #[inline]
    fn dot_plain<T>(
        a: &[T],
        b: &[f32],
        load: impl Fn(&[T; 4]) -> float32x4_t,
        elem: impl Fn(&T) -> f32,
    ) -> f32 {
        let n = a.len().min(b.len());
        let (ca, ta) = a[..n].as_chunks::<4>();
        let (cb, tb) = b[..n].as_chunks::<4>();
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 4 <= ca.len() {
            for k in 0..4 {
                acc[k] = vfmaq_f32(acc[k], load(&ca[i + k]), load4(&cb[i + k]));
            }
            i += 4;
        }
        while i < ca.len() {
            acc[0] = vfmaq_f32(acc[0], load(&ca[i]), load4(&cb[i]));
            i += 1;
        }
        let mut s = vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ));
        for (x, y) in ta.iter().zip(tb) {
            s += elem(x) * y;
        }
        s
    }

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        dot_plain(a, b, |c| load4(c), |v| *v)
    }

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_f16(a: &[f16], b: &[f32]) -> f32 {
        dot_plain(a, b, |c| half4(c), |h| f16_bits_to_f32_fast(h.to_bits()))
    }

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_bf16(a: &[bf16], b: &[f32]) -> f32 {
        let load = |c: &[bf16; 4]| {
            // SAFETY: `c` is exactly four readable bf16 (8 bytes).
            let bits = unsafe { vld1_u16(c.as_ptr().cast()) };
            // bf16 is the upper half of an f32: shift each up by 16.
            vreinterpretq_f32_u32(vshll_n_u16::<16>(bits))
        };
        dot_plain(a, b, load, |h| h.to_f32())
    }

    /// Blocks of `w` against `x`, two per step into two accumulators held
    /// in registers (named, not indexed); `step(block, floats, acc)`.
    #[target_feature(enable = "neon")]
    #[inline]
    fn pairs<B>(
        w: &[B],
        x: &[f32],
        step: impl Fn(&B, &[f32; QK], float32x4_t) -> float32x4_t,
    ) -> f32 {
        let xs = x.as_chunks::<QK>().0;
        let n = w.len().min(xs.len());
        let mut a0 = vdupq_n_f32(0.0);
        let mut a1 = vdupq_n_f32(0.0);
        let mut i = 0;
        while i + 2 <= n {
            a0 = step(&w[i], &xs[i], a0);
            a1 = step(&w[i + 1], &xs[i + 1], a1);
            i += 2;
        }
        if i < n {
            a0 = step(&w[i], &xs[i], a0);
        }
        vaddvq_f32(vaddq_f32(a0, a1))
    }

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_q8_0(w: &[BlockQ8_0], x: &[f32]) -> f32 {
        let step = |b: &BlockQ8_0, xs: &[f32; QK], a: float32x4_t| {
            // SAFETY: the block's 32 quants are readable (16 at a time).
            let (lo, hi) = unsafe { (vld1q_s8(b.qs.as_ptr()), vld1q_s8(b.qs.as_ptr().add(16))) };
            let s = block_dot_s8(lo, hi, &xblock(xs));
            vfmaq_n_f32(a, s, f16_bits_to_f32_fast(u16::from_le_bytes(b.d)))
        };
        pairs(w, x, step)
    }

    /// A Q4 block's nibbles as two signed 16-byte vectors (elements 0..16
    /// and 16..32) after subtracting `off`.
    #[target_feature(enable = "neon")]
    #[inline]
    fn nibbles(qs: &[u8; 16], off: i8) -> (int8x16_t, int8x16_t) {
        // SAFETY: 16 readable bytes.
        let q = unsafe { vld1q_u8(qs.as_ptr()) };
        let lo = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f)));
        let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(q));
        let o = vdupq_n_s8(off);
        (vsubq_s8(lo, o), vsubq_s8(hi, o))
    }

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_q4_0(w: &[BlockQ4_0], x: &[f32]) -> f32 {
        let step = |b: &BlockQ4_0, xs: &[f32; QK], a: float32x4_t| {
            let (lo, hi) = nibbles(&b.qs, 8);
            let s = block_dot_s8(lo, hi, &xblock(xs));
            vfmaq_n_f32(a, s, f16_bits_to_f32_fast(u16::from_le_bytes(b.d)))
        };
        pairs(w, x, step)
    }

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_q4_1(w: &[BlockQ4_1], x: &[f32]) -> f32 {
        let mut acc = [vdupq_n_f32(0.0); 2];
        for (i, (b, xs)) in w.iter().zip(x.as_chunks::<QK>().0).enumerate() {
            let (lo, hi) = nibbles(&b.qs, 0);
            let xv = xblock(xs);
            let s = block_dot_s8(lo, hi, &xv);
            let mut sx = vaddq_f32(vaddq_f32(xv[0], xv[1]), vaddq_f32(xv[2], xv[3]));
            sx = vaddq_f32(
                sx,
                vaddq_f32(vaddq_f32(xv[4], xv[5]), vaddq_f32(xv[6], xv[7])),
            );
            let d = f16_bits_to_f32_fast(u16::from_le_bytes(b.d));
            let m = f16_bits_to_f32_fast(u16::from_le_bytes(b.m));
            let a = vfmaq_n_f32(acc[i & 1], s, d);
            acc[i & 1] = vfmaq_n_f32(a, sx, m);
        }
        vaddvq_f32(vaddq_f32(acc[0], acc[1]))
    }

    /// Sixteen signed quants times sixteen floats (`x`: four vectors), in
    /// four lanes.
    #[target_feature(enable = "neon")]
    #[inline]
    fn dot16_s8(q: int8x16_t, x: &[float32x4_t]) -> float32x4_t {
        let lo = vmovl_s8(vget_low_s8(q));
        let hi = vmovl_s8(vget_high_s8(q));
        let w = [
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))),
            vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo))),
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))),
            vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi))),
        ];
        let a = vfmaq_f32(vmulq_f32(w[0], x[0]), w[1], x[1]);
        let b = vfmaq_f32(vmulq_f32(w[2], x[2]), w[3], x[3]);
        vaddq_f32(a, b)
    }

    /// The sum of a block's 32 floats, in four lanes.
    #[target_feature(enable = "neon")]
    #[inline]
    fn xsum(xv: &[float32x4_t; 8]) -> float32x4_t {
        let a = vaddq_f32(vaddq_f32(xv[0], xv[1]), vaddq_f32(xv[2], xv[3]));
        vaddq_f32(
            a,
            vaddq_f32(vaddq_f32(xv[4], xv[5]), vaddq_f32(xv[6], xv[7])),
        )
    }

    /// 16 in each byte lane whose bit of `bits` (lane i: bit i) is set.
    #[target_feature(enable = "neon")]
    #[inline]
    fn bits16(bits: u16) -> uint8x16_t {
        const MASK: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
        let [b0, b1] = bits.to_le_bytes();
        let v = vcombine_u8(vdup_n_u8(b0), vdup_n_u8(b1));
        // SAFETY: MASK is sixteen readable bytes.
        let m = unsafe { vld1q_u8(MASK.as_ptr()) };
        vandq_u8(vtstq_u8(v, m), vdupq_n_u8(16))
    }

    /// A Q5 block's 32 quants (`0..32`) as 2 x 16 bytes in element order:
    /// its nibbles, and 16 where the element's bit of `qh` is set.
    #[target_feature(enable = "neon")]
    #[inline]
    fn q5_bytes(qs: &[u8; 16], qh: [u8; 4]) -> (uint8x16_t, uint8x16_t) {
        let h = u32::from_le_bytes(qh);
        // SAFETY: 16 readable bytes.
        let q = unsafe { vld1q_u8(qs.as_ptr()) };
        (
            vorrq_u8(vandq_u8(q, vdupq_n_u8(0x0f)), bits16(h as u16)),
            vorrq_u8(vshrq_n_u8::<4>(q), bits16((h >> 16) as u16)),
        )
    }

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_q5_0(w: &[BlockQ5_0], x: &[f32]) -> f32 {
        let step = |b: &BlockQ5_0, xs: &[f32; QK], a: float32x4_t| {
            let (lo, hi) = q5_bytes(&b.qs, b.qh);
            let o = vdupq_n_s8(16);
            let lo = vsubq_s8(vreinterpretq_s8_u8(lo), o);
            let hi = vsubq_s8(vreinterpretq_s8_u8(hi), o);
            let s = block_dot_s8(lo, hi, &xblock(xs));
            vfmaq_n_f32(a, s, f16_bits_to_f32_fast(u16::from_le_bytes(b.d)))
        };
        pairs(w, x, step)
    }

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_q5_1(w: &[BlockQ5_1], x: &[f32]) -> f32 {
        let step = |b: &BlockQ5_1, xs: &[f32; QK], a: float32x4_t| {
            let (lo, hi) = q5_bytes(&b.qs, b.qh);
            let xv = xblock(xs);
            let s = block_dot_s8(vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi), &xv);
            let d = f16_bits_to_f32_fast(u16::from_le_bytes(b.d));
            let m = f16_bits_to_f32_fast(u16::from_le_bytes(b.m));
            vfmaq_n_f32(vfmaq_n_f32(a, s, d), xsum(&xv), m)
        };
        pairs(w, x, step)
    }

    /// Sixteen-element groups of a K-quant super-block (Q2_K, Q3_K):
    /// `group(b, k)` gives activation block `k`'s 32 quants as 2 x 16
    /// signed bytes and the two halves' scales and minimums (`x = scale·q
    /// − min`).
    #[target_feature(enable = "neon")]
    #[inline]
    fn k16_groups<B>(
        w: &[B],
        x: &[f32],
        group: impl Fn(&B, usize) -> (int8x16_t, int8x16_t, [f32; 2], [f32; 2]),
    ) -> f32 {
        let mut a0 = vdupq_n_f32(0.0);
        let mut a1 = vdupq_n_f32(0.0);
        for (b, xs) in w.iter().zip(x.as_chunks::<256>().0) {
            for (k, xg) in xs.as_chunks::<QK>().0.iter().enumerate() {
                let (qa, qb, sc, mn) = group(b, k);
                let xv = xblock(xg);
                let sa = dot16_s8(qa, &xv[..4]);
                let sb = dot16_s8(qb, &xv[4..]);
                let xa = vaddq_f32(vaddq_f32(xv[0], xv[1]), vaddq_f32(xv[2], xv[3]));
                let xb = vaddq_f32(vaddq_f32(xv[4], xv[5]), vaddq_f32(xv[6], xv[7]));
                a0 = vfmaq_n_f32(vfmaq_n_f32(a0, sa, sc[0]), xa, -mn[0]);
                a1 = vfmaq_n_f32(vfmaq_n_f32(a1, sb, sc[1]), xb, -mn[1]);
            }
        }
        vaddvq_f32(vaddq_f32(a0, a1))
    }

    /// Activation block `k`'s 32 two-bit quants of a Q2_K/Q3_K `qs` as 2 x
    /// 16 bytes.
    #[target_feature(enable = "neon")]
    #[inline]
    fn k2_bits(qs: &[u8; 64], k: usize) -> (uint8x16_t, uint8x16_t) {
        let c = &qs.as_chunks::<32>().0[(k / 4) & 1];
        // SAFETY: 32 readable bytes.
        let (a, b) = unsafe { (vld1q_u8(c.as_ptr()), vld1q_u8(c.as_ptr().add(16))) };
        let sh = vdupq_n_s8(-(2 * (k % 4) as i8));
        let three = vdupq_n_u8(3);
        (
            vandq_u8(vshlq_u8(a, sh), three),
            vandq_u8(vshlq_u8(b, sh), three),
        )
    }

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_q2_k(w: &[BlockQ2K], x: &[f32]) -> f32 {
        k16_groups(w, x, |b, k| {
            let (qa, qb) = k2_bits(&b.qs, k);
            let (da, ma) = b.group(2 * k);
            let (db, mb) = b.group(2 * k + 1);
            (
                vreinterpretq_s8_u8(qa),
                vreinterpretq_s8_u8(qb),
                [da, db],
                [ma, mb],
            )
        })
    }

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_q3_k(w: &[BlockQ3K], x: &[f32]) -> f32 {
        k16_groups(w, x, |b, k| {
            let (qa, qb) = k2_bits(&b.qs, k);
            // SAFETY: 32 readable bytes.
            let (ha, hb) = unsafe {
                (
                    vld1q_u8(b.hmask.as_ptr()),
                    vld1q_u8(b.hmask.as_ptr().add(16)),
                )
            };
            let sh = vdupq_n_s8(-((k & 7) as i8));
            let one = vdupq_n_u8(1);
            // A set third bit keeps the two-bit value, a clear one takes 4
            // from it: q + 4·bit − 4.
            let ha = vshlq_n_u8::<2>(vandq_u8(vshlq_u8(ha, sh), one));
            let hb = vshlq_n_u8::<2>(vandq_u8(vshlq_u8(hb, sh), one));
            let four = vdupq_n_s8(4);
            let qa = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(qa, ha)), four);
            let qb = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(qb, hb)), four);
            (qa, qb, [b.group(2 * k), b.group(2 * k + 1)], [0.0, 0.0])
        })
    }

    /// `Σ` over K-quant super-blocks of their eight groups of 32: `group(b,
    /// g)` gives group g's quants as 2 x 16 bytes, its scale and its
    /// minimum (`x = scale·q − min`).
    #[target_feature(enable = "neon")]
    #[inline]
    fn k_groups<B>(
        w: &[B],
        x: &[f32],
        group: impl Fn(&B, usize) -> (uint8x16_t, uint8x16_t, f32, f32),
    ) -> f32 {
        let mut a0 = vdupq_n_f32(0.0);
        let mut a1 = vdupq_n_f32(0.0);
        for (b, xs) in w.iter().zip(x.as_chunks::<256>().0) {
            for (g, xg) in xs.as_chunks::<QK>().0.iter().enumerate() {
                let (lo, hi, sc, mn) = group(b, g);
                let xv = xblock(xg);
                let s = block_dot_s8(vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi), &xv);
                if g.is_multiple_of(2) {
                    a0 = vfmaq_n_f32(vfmaq_n_f32(a0, s, sc), xsum(&xv), -mn);
                } else {
                    a1 = vfmaq_n_f32(vfmaq_n_f32(a1, s, sc), xsum(&xv), -mn);
                }
            }
        }
        vaddvq_f32(vaddq_f32(a0, a1))
    }

    /// Group `g`'s 32 nibbles of a Q4_K/Q5_K `qs` as 2 x 16 bytes.
    #[target_feature(enable = "neon")]
    #[inline]
    fn k_nibbles(qs: &[u8; 128], g: usize) -> (uint8x16_t, uint8x16_t) {
        let c = &qs.as_chunks::<32>().0[(g / 2) & 3];
        // SAFETY: 32 readable bytes.
        let (a, b) = unsafe { (vld1q_u8(c.as_ptr()), vld1q_u8(c.as_ptr().add(16))) };
        if g.is_multiple_of(2) {
            let m = vdupq_n_u8(0x0f);
            (vandq_u8(a, m), vandq_u8(b, m))
        } else {
            (vshrq_n_u8::<4>(a), vshrq_n_u8::<4>(b))
        }
    }

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_q4_k(w: &[BlockQ4K], x: &[f32]) -> f32 {
        k_groups(w, x, |b, g| {
            let (lo, hi) = k_nibbles(&b.qs, g);
            let (d, m) = b.group(g);
            (lo, hi, d, m)
        })
    }

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_q5_k(w: &[BlockQ5K], x: &[f32]) -> f32 {
        k_groups(w, x, |b, g| {
            let (lo, hi) = k_nibbles(&b.qs, g);
            // SAFETY: 32 readable bytes.
            let (ha, hb) = unsafe { (vld1q_u8(b.qh.as_ptr()), vld1q_u8(b.qh.as_ptr().add(16))) };
            let sh = vdupq_n_s8(-((g & 7) as i8));
            let one = vdupq_n_u8(1);
            let ha = vshlq_n_u8::<4>(vandq_u8(vshlq_u8(ha, sh), one));
            let hb = vshlq_n_u8::<4>(vandq_u8(vshlq_u8(hb, sh), one));
            let (d, m) = b.group(g);
            (vorrq_u8(lo, ha), vorrq_u8(hi, hb), d, m)
        })
    }

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn dot_q6_k(w: &[BlockQ6K], x: &[f32]) -> f32 {
        let mut a0 = vdupq_n_f32(0.0);
        let mut a1 = vdupq_n_f32(0.0);
        for (b, xs) in w.iter().zip(x.as_chunks::<256>().0) {
            let d = f16_bits_to_f32_fast(u16::from_le_bytes(b.d));
            for (g, xg) in xs.as_chunks::<QK>().0.iter().enumerate() {
                let (h, k) = ((g / 4) & 1, g % 4);
                let ql = &b.ql.as_chunks::<32>().0[2 * h + k % 2];
                let qh = &b.qh.as_chunks::<32>().0[h];
                // SAFETY: 32 readable bytes each.
                let (la, lb, ha, hb) = unsafe {
                    (
                        vld1q_u8(ql.as_ptr()),
                        vld1q_u8(ql.as_ptr().add(16)),
                        vld1q_u8(qh.as_ptr()),
                        vld1q_u8(qh.as_ptr().add(16)),
                    )
                };
                let (la, lb) = if k < 2 {
                    let m = vdupq_n_u8(0x0f);
                    (vandq_u8(la, m), vandq_u8(lb, m))
                } else {
                    (vshrq_n_u8::<4>(la), vshrq_n_u8::<4>(lb))
                };
                let sh = vdupq_n_s8(-(2 * k as i8));
                let three = vdupq_n_u8(3);
                let ha = vshlq_n_u8::<4>(vandq_u8(vshlq_u8(ha, sh), three));
                let hb = vshlq_n_u8::<4>(vandq_u8(vshlq_u8(hb, sh), three));
                let o = vdupq_n_s8(32);
                let qa = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(la, ha)), o);
                let qb = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lb, hb)), o);
                let xv = xblock(xg);
                let sa = dot16_s8(qa, &xv[..4]);
                let sb = dot16_s8(qb, &xv[4..]);
                let ga = d * b.scales[(2 * g) & 15] as f32;
                let gb = d * b.scales[(2 * g + 1) & 15] as f32;
                a0 = vfmaq_n_f32(a0, sa, ga);
                a1 = vfmaq_n_f32(a1, sb, gb);
            }
        }
        vaddvq_f32(vaddq_f32(a0, a1))
    }

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn axpy_f16(y: &mut [f32], a: f32, x: &[f16]) {
        let n = y.len().min(x.len());
        let (cy, ty) = y[..n].as_chunks_mut::<4>();
        let (cx, tx) = x[..n].as_chunks::<4>();
        for (o, h) in cy.iter_mut().zip(cx) {
            let r = vfmaq_n_f32(load4(o), half4(h), a);
            // SAFETY: four writable floats at `o`.
            unsafe { vst1q_f32(o.as_mut_ptr(), r) };
        }
        for (o, h) in ty.iter_mut().zip(tx) {
            *o += a * f16_bits_to_f32_fast(h.to_bits());
        }
    }

    /// `$pass::<G>(args.., j)` over the `g` query heads in passes of up to
    /// four (`j` the pass's first head).
    macro_rules! in_fours {
        ($g:expr, $pass:ident($($arg:expr),*)) => {{
            let g = $g;
            let mut j = 0;
            while j < g {
                let take = (g - j).min(4);
                match take {
                    1 => $pass::<1>($($arg,)* j),
                    2 => $pass::<2>($($arg,)* j),
                    3 => $pass::<3>($($arg,)* j),
                    _ => $pass::<4>($($arg,)* j),
                }
                j += take;
            }
        }};
    }

    /// `out[j * ld + p]` = [`dot_f16`] of cached key `p` (at `p * stride`)
    /// with query `j`. Each key is widened once for up to four queries, and
    /// each (key, query) pair keeps `dot_plain`'s four accumulators, order
    /// and tail, so its score is `dot_f16`'s bit for bit.
    ///
    /// # Safety
    /// The CPU must support NEON. `h` is [`Heads::keys`] of the slices.
    #[target_feature(enable = "neon")]
    pub unsafe fn key_dots_f16(q: &[f32], k: &[f16], stride: usize, out: &mut [f32], h: Heads) {
        in_fours!(h.g, key_pass(q, k, stride, out, h));
    }

    /// Queries `j0..j0 + G` of [`key_dots_f16`].
    #[target_feature(enable = "neon")]
    #[inline]
    fn key_pass<const G: usize>(
        q: &[f32],
        k: &[f16],
        stride: usize,
        out: &mut [f32],
        h: Heads,
        j0: usize,
    ) {
        let hd = h.hd;
        let qs: [&[f32]; G] = core::array::from_fn(|j| &q[(j0 + j) * hd..(j0 + j + 1) * hd]);
        let cq: [&[[f32; 4]]; G] = core::array::from_fn(|j| qs[j].as_chunks::<4>().0);
        let chunks = hd / 4;
        for p in 0..h.n {
            let (cr, tr) = k[p * stride..p * stride + hd].as_chunks::<4>();
            let mut acc = [[vdupq_n_f32(0.0); 4]; G];
            let mut i = 0;
            while i + 4 <= chunks {
                let w: [float32x4_t; 4] = core::array::from_fn(|c| half4(&cr[i + c]));
                for j in 0..G {
                    for c in 0..4 {
                        acc[j][c] = vfmaq_f32(acc[j][c], w[c], load4(&cq[j][i + c]));
                    }
                }
                i += 4;
            }
            while i < chunks {
                let w = half4(&cr[i]);
                for j in 0..G {
                    acc[j][0] = vfmaq_f32(acc[j][0], w, load4(&cq[j][i]));
                }
                i += 1;
            }
            for j in 0..G {
                let [a0, a1, a2, a3] = acc[j];
                let mut s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
                for (x, y) in tr.iter().zip(&qs[j][4 * chunks..]) {
                    s += f16_bits_to_f32_fast(x.to_bits()) * y;
                }
                out[(j0 + j) * h.ld + p] = s;
            }
        }
    }

    /// Adds `w[j * ld + p]` times cached value `p` to row `j` of `out`, for
    /// every position in order: [`axpy_f16`] applied row by row, bit for
    /// bit (the same fused multiply-add per element and position, and its
    /// unfused tail). Each value is widened once for up to four rows, whose
    /// sums stay in registers sixteen elements at a time across positions.
    ///
    /// # Safety
    /// The CPU must support NEON. `h` is [`Heads::values`] of the slices.
    #[target_feature(enable = "neon")]
    pub unsafe fn value_sum_f16(out: &mut [f32], w: &[f32], v: &[f16], stride: usize, h: Heads) {
        in_fours!(h.g, value_pass(out, w, v, stride, h));
    }

    /// Rows `j0..j0 + G` of [`value_sum_f16`].
    #[target_feature(enable = "neon")]
    #[inline]
    fn value_pass<const G: usize>(
        out: &mut [f32],
        w: &[f32],
        v: &[f16],
        stride: usize,
        h: Heads,
        j0: usize,
    ) {
        let (hd, body) = (h.hd, h.hd / 4 * 4);
        let mut c0 = 0;
        while c0 < body {
            match (body - c0) / 4 {
                1 => value_panel::<G, 1>(out, w, v, stride, h, j0, c0),
                2 => value_panel::<G, 2>(out, w, v, stride, h, j0, c0),
                3 => value_panel::<G, 3>(out, w, v, stride, h, j0, c0),
                _ => value_panel::<G, 4>(out, w, v, stride, h, j0, c0),
            }
            c0 += 16;
        }
        // The tail elements, as `axpy_f16`'s scalar tail.
        for e in body..hd {
            for p in 0..h.n {
                let x = f16_bits_to_f32_fast(v[p * stride + e].to_bits());
                for j in j0..j0 + G {
                    out[j * hd + e] += w[j * h.ld + p] * x;
                }
            }
        }
    }

    /// Elements `c0..c0 + 4 * M` of rows `j0..j0 + G` of [`value_sum_f16`].
    #[target_feature(enable = "neon")]
    #[inline]
    fn value_panel<const G: usize, const M: usize>(
        out: &mut [f32],
        w: &[f32],
        v: &[f16],
        stride: usize,
        h: Heads,
        j0: usize,
        c0: usize,
    ) {
        let hd = h.hd;
        let row = |j: usize, c: usize| (j0 + j) * hd + c0 + 4 * c;
        let mut acc: [[float32x4_t; M]; G] = core::array::from_fn(|j| {
            core::array::from_fn(|c| load4(out[row(j, c)..row(j, c) + 4].try_into().unwrap()))
        });
        for p in 0..h.n {
            let at = p * stride + c0;
            let cv = v[at..at + 4 * M].as_chunks::<4>().0;
            let x: [float32x4_t; M] = core::array::from_fn(|c| half4(&cv[c]));
            for j in 0..G {
                let a = w[(j0 + j) * h.ld + p];
                for c in 0..M {
                    acc[j][c] = vfmaq_n_f32(acc[j][c], x[c], a);
                }
            }
        }
        for j in 0..G {
            for c in 0..M {
                let o = &mut out[row(j, c)..row(j, c) + 4];
                // SAFETY: four writable floats at `o`.
                unsafe { vst1q_f32(o.as_mut_ptr(), acc[j][c]) };
            }
        }
    }

    /// A register tile: rows `R` of `w` times tokens `T` of `x`, all `cols`
    /// long, into `out[t * ld + r]`.
    #[target_feature(enable = "neon")]
    #[inline]
    fn tile<const R: usize, const T: usize>(
        w: &[f32],
        x: &[f32],
        cols: usize,
        out: &mut [f32],
        ld: usize,
    ) {
        let body = cols / 4;
        let wr: [&[f32]; R] = core::array::from_fn(|r| &w[r * cols..(r + 1) * cols]);
        let xt: [&[f32]; T] = core::array::from_fn(|t| &x[t * cols..(t + 1) * cols]);
        let mut acc = [[vdupq_n_f32(0.0); T]; R];
        for i in 0..body {
            let xv: [float32x4_t; T] =
                core::array::from_fn(|t| load4(xt[t][4 * i..4 * i + 4].try_into().unwrap()));
            for r in 0..R {
                let wv = load4(wr[r][4 * i..4 * i + 4].try_into().unwrap());
                for t in 0..T {
                    acc[r][t] = vfmaq_f32(acc[r][t], wv, xv[t]);
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                let tail: f32 = wr[r][body * 4..]
                    .iter()
                    .zip(&xt[t][body * 4..])
                    .map(|(a, b)| a * b)
                    .sum();
                out[t * ld + r] = vaddvq_f32(acc[r][t]) + tail;
            }
        }
    }

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn gemm_f32(w: &[f32], x: &[f32], cols: usize, out: &mut [f32]) {
        let (rows, n) = (w.len() / cols, x.len() / cols);
        let mut t = 0;
        while t < n {
            let tn = (n - t).min(4);
            let xs = &x[t * cols..(t + tn) * cols];
            let mut r = 0;
            while r < rows {
                let rn = (rows - r).min(4);
                let ws = &w[r * cols..(r + rn) * cols];
                let o = &mut out[t * rows + r..];
                match (rn, tn) {
                    (4, 4) => tile::<4, 4>(ws, xs, cols, o, rows),
                    (4, 3) => tile::<4, 3>(ws, xs, cols, o, rows),
                    (4, 2) => tile::<4, 2>(ws, xs, cols, o, rows),
                    (4, 1) => tile::<4, 1>(ws, xs, cols, o, rows),
                    (3, 4) => tile::<3, 4>(ws, xs, cols, o, rows),
                    (3, 3) => tile::<3, 3>(ws, xs, cols, o, rows),
                    (3, 2) => tile::<3, 2>(ws, xs, cols, o, rows),
                    (3, 1) => tile::<3, 1>(ws, xs, cols, o, rows),
                    (2, 4) => tile::<2, 4>(ws, xs, cols, o, rows),
                    (2, 3) => tile::<2, 3>(ws, xs, cols, o, rows),
                    (2, 2) => tile::<2, 2>(ws, xs, cols, o, rows),
                    (2, 1) => tile::<2, 1>(ws, xs, cols, o, rows),
                    (1, 4) => tile::<1, 4>(ws, xs, cols, o, rows),
                    (1, 3) => tile::<1, 3>(ws, xs, cols, o, rows),
                    (1, 2) => tile::<1, 2>(ws, xs, cols, o, rows),
                    _ => tile::<1, 1>(ws, xs, cols, o, rows),
                }
                r += rn;
            }
            t += tn;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conforms_to_scalar() {
        let k = super::table().expect("every AArch64 Linux CPU has NEON");
        crate::kernels::conformance::check_table(&k);
        crate::kernels::conformance::check_rows(&k);
        crate::kernels::conformance::check_batch_invariance(&k);
        crate::kernels::conformance::check_q16(&k);
    }

    /// The 16-bit decode kernels are bit for bit the reference, for every
    /// row count (the rows past the last four go through the reference)
    /// and two tokens.
    #[test]
    fn q16_decode_is_the_reference_bit_for_bit() {
        use crate::kernels::Kernels;
        use crate::quant::{self, q16, BlockQ16, GgmlType};
        let k = super::table().expect("every AArch64 Linux CPU has NEON");
        let reference = Kernels::scalar_q16();
        let mut rng = 0x1234_5678u32;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            (rng as f32 / u32::MAX as f32) * 2.0 - 1.0
        };
        let cols = 512;
        let w: [f32; 9 * 512] = core::array::from_fn(|_| next());
        let x: [f32; 2 * 512] = core::array::from_fn(|i| next() * if i == 7 { 1e3 } else { 1.0 });
        let mut xq = [BlockQ16::ZERO; 32];
        q16::quantize_row(&x, &mut xq);
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
        ] {
            let f = quant::FORMATS.iter().find(|f| f.ty == ty).unwrap();
            let mut bytes = [0u8; 9 * 16 * 36];
            let rb = cols / f.block_len * f.block_bytes;
            for (r, row) in w.chunks_exact(cols).enumerate() {
                (f.quantize)(row, &mut bytes[r * rb..(r + 1) * rb]);
            }
            for rows in 1..=9 {
                let (mut got, mut want) = ([0.0f32; 18], [0.0f32; 18]);
                let kf = k.format(ty).q16.unwrap();
                let rf = reference.format(ty).q16.unwrap();
                kf(&bytes[..rows * rb], &xq, 2, &mut got[..2 * rows]);
                rf(&bytes[..rows * rb], &xq, 2, &mut want[..2 * rows]);
                for i in 0..2 * rows {
                    assert_eq!(
                        got[i].to_bits(),
                        want[i].to_bits(),
                        "{ty:?} rows {rows} #{i}"
                    );
                }
            }
        }
    }
}
