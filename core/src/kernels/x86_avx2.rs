//! x86_64 AVX2 + FMA + F16C twins of the scalar kernels.
//!
//! With f32 activations (dots, F32/F16 rows, prefill tiles) each block is
//! widened to f32 in registers (`vpmovsxbd`/`vpmovzxbd`, `vcvtdq2ps`,
//! `vcvtph2ps`) and multiplied by FMA, eight lanes at a time. Decode of
//! quantized rows takes 16-bit activation blocks instead: weights widen to
//! i16 and `vpmaddwd` gives exact integer dots, scaled once per block.
//! Results differ from the scalar table of the same arithmetic only by FMA
//! rounding and summation order; `conformance.rs` holds them together.
//!
//! The `unsafe` here is the intrinsics and the `#[target_feature]` calls. The
//! safe wrappers are private: the only way to reach them is [`table`], which
//! installs them after checking that the CPU has all three features.

#![allow(unsafe_code)]

use core::arch::x86_64::*;

use half::{bf16, f16};

use super::{erase, FormatKernels, Kernels, Q16Kernels};
use crate::quant::f16::f16_bits_to_f32_fast;
use crate::quant::k_quants::{unpack_scale_min_k4, ScaleMinBlock};
use crate::quant::q16::QK;
use crate::quant::{
    BlockQ16, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4Kx8, BlockQ4_0, BlockQ4_1, BlockQ4_1x8,
    BlockQ5K, BlockQ5_0, BlockQ5_0x8, BlockQ5_1, BlockQ6K, BlockQ6Kx8, BlockQ8_0, BlockQ8_0x8,
    GgmlType,
};

/// The AVX2 table, if this CPU runs it (checked at run time with `std`, at
/// compile time without).
pub fn table() -> Option<Kernels> {
    if !supported() {
        return None;
    }
    let k = Kernels {
        name: "avx2",
        dot_f32,
        dot_f16,
        gemm_f32,
        axpy_f16,
        prefetch,
        swiglu,
        geglu,
        softmax,
        key_dots_f16,
        value_sum_f16,
        q16: Some(Q16Kernels {
            quantize: quantize_q16,
            q8_0x8: Some(mv_q8_0x8_q16),
            q4_1x8: Some(mv_q4_1x8_q16),
            q4_kx8: Some(mv_q4_kx8_q16),
            q6_kx8: Some(mv_q6_kx8_q16),
            q5_0x8: Some(mv_q5_0x8_q16),
        }),
        ..Kernels::scalar()
    };
    let reference = k.formats;
    // The format's reference row with this table's 16-bit decode.
    let q16_row = |ty: GgmlType, f: super::RowQ16Fn| FormatKernels {
        q16: Some(f),
        ..reference[ty.index()]
    };
    Some(
        k.with_format(
            GgmlType::F32,
            FormatKernels {
                dot: erase!(dot f32, dot_f32),
                mv: Some(erase!(mv f32, mv_f32)),
                ..reference[GgmlType::F32.index()]
            },
        )
        .with_format(
            GgmlType::F16,
            FormatKernels {
                dot: erase!(dot f16, dot_f16),
                mv: Some(erase!(mv f16, mv_f16)),
                widen: erase!(widen f16, widen_f16),
                q16: None,
            },
        )
        .with_format(
            GgmlType::Q8_0,
            FormatKernels {
                dot: erase!(dot BlockQ8_0, dot_q8_0),
                mv: Some(erase!(mv BlockQ8_0, mv_q8_0)),
                widen: erase!(widen BlockQ8_0, widen_q8_0),
                q16: Some(erase!(q16 BlockQ8_0, mv_q8_0_q16)),
            },
        )
        .with_format(
            GgmlType::Q4_0,
            FormatKernels {
                dot: erase!(dot BlockQ4_0, dot_q4_0),
                mv: Some(erase!(mv BlockQ4_0, mv_q4_0)),
                q16: Some(erase!(q16 BlockQ4_0, mv_q4_0_q16)),
                ..reference[GgmlType::Q4_0.index()]
            },
        )
        .with_format(
            GgmlType::Q4_1,
            FormatKernels {
                dot: erase!(dot BlockQ4_1, dot_q4_1),
                mv: Some(erase!(mv BlockQ4_1, mv_q4_1)),
                q16: Some(erase!(q16 BlockQ4_1, mv_q4_1_q16)),
                ..reference[GgmlType::Q4_1.index()]
            },
        )
        .with_format(
            GgmlType::BF16,
            FormatKernels {
                dot: erase!(dot bf16, dot_bf16),
                mv: Some(erase!(mv bf16, mv_bf16)),
                widen: erase!(widen bf16, widen_bf16),
                q16: None,
            },
        )
        .with_format(
            GgmlType::Q5_0,
            FormatKernels {
                widen: erase!(widen BlockQ5_0, widen_q5_0),
                ..q16_row(GgmlType::Q5_0, erase!(q16 BlockQ5_0, mv_q5_0_q16))
            },
        )
        .with_format(
            GgmlType::Q5_1,
            q16_row(GgmlType::Q5_1, erase!(q16 BlockQ5_1, mv_q5_1_q16)),
        )
        .with_format(
            GgmlType::Q2_K,
            FormatKernels {
                dot: erase!(dot BlockQ2K, dot_q2_k),
                mv: Some(erase!(mv BlockQ2K, mv_q2_k)),
                widen: erase!(widen BlockQ2K, widen_q2_k),
                q16: None,
            },
        )
        .with_format(
            GgmlType::Q3_K,
            q16_row(GgmlType::Q3_K, erase!(q16 BlockQ3K, mv_q3_k_q16)),
        )
        .with_format(
            GgmlType::Q4_K,
            FormatKernels {
                widen: erase!(widen BlockQ4K, widen_q4_k),
                ..q16_row(GgmlType::Q4_K, erase!(q16 BlockQ4K, mv_q4_k_q16))
            },
        )
        .with_format(
            GgmlType::Q5_K,
            FormatKernels {
                widen: erase!(widen BlockQ5K, widen_q5_k),
                ..q16_row(GgmlType::Q5_K, erase!(q16 BlockQ5K, mv_q5_k_q16))
            },
        )
        .with_format(
            GgmlType::Q6_K,
            FormatKernels {
                widen: erase!(widen BlockQ6K, widen_q6_k),
                ..q16_row(GgmlType::Q6_K, erase!(q16 BlockQ6K, mv_q6_k_q16))
            },
        ),
    )
}

#[cfg(feature = "std")]
fn supported() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

#[cfg(not(feature = "std"))]
fn supported() -> bool {
    cfg!(all(
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))
}

// The wrappers: sound because `table` only hands them out after `supported()`.
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: reachable only through `table`, which checked AVX2, FMA and F16C.
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

fn mv_f32(w: &[f32], x: &[f32], out: &mut [f32]) {
    let need = x.len() * out.len();
    // SAFETY: as above; `w` holds the rows the kernel reads (sliced here).
    unsafe { imp::mv_f32(&w[..need], x, out) }
}
fn mv_f16(w: &[f16], x: &[f32], out: &mut [f32]) {
    let need = x.len() * out.len();
    // SAFETY: as above.
    unsafe { imp::mv_f16(&w[..need], x, out) }
}
fn dot_bf16(a: &[bf16], b: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { imp::dot_bf16(a, b) }
}
fn mv_bf16(w: &[bf16], x: &[f32], out: &mut [f32]) {
    let need = x.len() * out.len();
    // SAFETY: as above.
    unsafe { imp::mv_bf16(&w[..need], x, out) }
}
fn widen_bf16(x: &[bf16], out: &mut [f32]) {
    // SAFETY: as above.
    unsafe { imp::widen_bf16(x, out) }
}
fn mv_q8_0(w: &[BlockQ8_0], x: &[f32], out: &mut [f32]) {
    let need = x.len() / QK * out.len();
    // SAFETY: as above.
    unsafe { imp::mv_q8_0(&w[..need], x, out) }
}
fn mv_q4_0(w: &[BlockQ4_0], x: &[f32], out: &mut [f32]) {
    let need = x.len() / QK * out.len();
    // SAFETY: as above.
    unsafe { imp::mv_q4_0(&w[..need], x, out) }
}
fn mv_q4_1(w: &[BlockQ4_1], x: &[f32], out: &mut [f32]) {
    let need = x.len() / QK * out.len();
    // SAFETY: as above.
    unsafe { imp::mv_q4_1(&w[..need], x, out) }
}
/// The safe entry points of the 16-bit decode kernels that `q16_kernels!`
/// stamps out in a table's `imp`: each slices `w` to the rows its outputs
/// take (`q16_shape` for 32-element blocks, `k16_shape` for super-blocks).
/// With no arguments: every format the 16-bit decode covers.
macro_rules! q16_entries {
    () => {
        q16_entries! {
            mv_q8_0_q16: BlockQ8_0, q16_shape;
            mv_q4_0_q16: BlockQ4_0, q16_shape;
            mv_q4_1_q16: BlockQ4_1, q16_shape;
            mv_q5_0_q16: BlockQ5_0, q16_shape;
            mv_q5_1_q16: BlockQ5_1, q16_shape;
            mv_q3_k_q16: BlockQ3K, k16_shape;
            mv_q4_k_q16: BlockQ4K, k16_shape;
            mv_q5_k_q16: BlockQ5K, k16_shape;
            mv_q6_k_q16: BlockQ6K, k16_shape;
        }
    };
    ($($name:ident: $block:ty, $shape:ident;)*) => {$(
        fn $name(w: &[$block], x: &[BlockQ16], n: usize, out: &mut [f32]) {
            let (x, out, need) = $shape(x, n, out);
            // SAFETY: reachable only through this file's `table`, which
            // checked the CPU features `imp` is compiled for; `w` holds the
            // rows the kernel reads (sliced here).
            unsafe { imp::$name(&w[..need], x, n, out) }
        }
    )*};
}
pub(super) use q16_entries;

q16_entries!();

/// [`q16_shape`] for 256-element super-blocks: `n` tokens' blocks, the
/// (n, rows) outputs, and the super-blocks those rows take.
pub(super) fn k16_shape<'a, 'b>(
    x: &'a [BlockQ16],
    n: usize,
    out: &'b mut [f32],
) -> (&'a [BlockQ16], &'b mut [f32], usize) {
    let (x, out, need) = q16_shape(x, n, out);
    (x, out, need / 8)
}
/// The safe entry points of the packed decode kernels that `q16_kernels!`
/// stamps out in a table's `imp`: each keeps `n` tokens' whole blocks and
/// the whole groups of eight rows whose outputs fit (`x8_shape_per`, a
/// weight block spanning `per` activation blocks). With no arguments: every
/// pack.
macro_rules! x8_entries {
    () => {
        x8_entries! {
            mv_q8_0x8_q16: BlockQ8_0x8, 1;
            mv_q4_1x8_q16: BlockQ4_1x8, 1;
            mv_q5_0x8_q16: BlockQ5_0x8, 1;
            mv_q4_kx8_q16: BlockQ4Kx8, 8;
            mv_q6_kx8_q16: BlockQ6Kx8, 8;
        }
    };
    ($($name:ident: $block:ty, $per:expr;)*) => {$(
        fn $name(w: &[$block], x: &[BlockQ16], n: usize, out: &mut [f32], ld: usize) {
            let (x, w, out) = x8_shape_per(x, n, w, out, ld, $per);
            // SAFETY: reachable only through this file's `table`, which
            // checked the CPU features `imp` is compiled for; the kernel
            // asserts its slices' lengths.
            unsafe { imp::$name(w, x, n, out, ld) }
        }
    )*};
}
pub(super) use x8_entries;

x8_entries!();

/// `n` tokens' whole blocks (whole weight blocks' worth, a weight block
/// spanning `per` activation blocks: 8 for K-quant super-blocks), the whole
/// groups of eight rows whose outputs fit `out` at row stride `ld`, and
/// `out`.
pub(super) fn x8_shape_per<'a, 'b, 'c, W>(
    x: &'a [BlockQ16],
    n: usize,
    w: &'b [W],
    out: &'c mut [f32],
    ld: usize,
    per: usize,
) -> (&'a [BlockQ16], &'b [W], &'c mut [f32]) {
    let n = n.max(1);
    let wb = x.len() / n / per.max(1);
    let nb = wb * per;
    let fit = out.len().saturating_sub((n - 1) * ld) / 8;
    let groups = w.len().checked_div(wb).unwrap_or(0).min(ld / 8).min(fit);
    (&x[..n * nb], &w[..groups * wb], out)
}
/// `n` tokens' whole blocks and (n, rows) outputs, and the weight blocks
/// those rows take.
pub(super) fn q16_shape<'a, 'b>(
    x: &'a [BlockQ16],
    n: usize,
    out: &'b mut [f32],
) -> (&'a [BlockQ16], &'b mut [f32], usize) {
    let n = n.max(1);
    let (nb, rows) = (x.len() / n, out.len() / n);
    (&x[..n * nb], &mut out[..n * rows], nb * rows)
}
fn quantize_q16(x: &[f32], out: &mut [BlockQ16]) {
    // SAFETY: as above.
    unsafe { imp::quantize_q16(x, out) }
}
fn axpy_f16(y: &mut [f32], a: f32, x: &[f16]) {
    // SAFETY: as above.
    unsafe { imp::axpy_f16(y, a, x) }
}
fn swiglu(g: &mut [f32], u: &[f32]) {
    // SAFETY: as above.
    unsafe { imp::swiglu(g, u) }
}
fn geglu(g: &mut [f32], u: &[f32]) {
    // SAFETY: as above.
    unsafe { imp::geglu(g, u) }
}
fn softmax(x: &mut [f32]) {
    // SAFETY: as above.
    unsafe { imp::softmax(x) }
}
fn widen_f16(x: &[f16], out: &mut [f32]) {
    // SAFETY: as above.
    unsafe { imp::widen_f16(x, out) }
}
fn widen_q8_0(x: &[BlockQ8_0], out: &mut [f32]) {
    // SAFETY: as above.
    unsafe { imp::widen_q8_0(x, out) }
}
fn dot_q2_k(w: &[BlockQ2K], x: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { imp::dot_q2_k(w, x) }
}
fn mv_q2_k(w: &[BlockQ2K], x: &[f32], out: &mut [f32]) {
    super::scalar::rows(w, x.len() / 256, x, out, dot_q2_k)
}
fn widen_q2_k(x: &[BlockQ2K], out: &mut [f32]) {
    // SAFETY: as above.
    unsafe { imp::widen_q2_k(x, out) }
}
fn widen_q5_0(x: &[BlockQ5_0], out: &mut [f32]) {
    // SAFETY: as above.
    unsafe { imp::widen_q5_0(x, out) }
}
fn widen_q4_k(x: &[BlockQ4K], out: &mut [f32]) {
    // SAFETY: as above.
    unsafe { imp::widen_q4_k(x, out) }
}
fn widen_q5_k(x: &[BlockQ5K], out: &mut [f32]) {
    // SAFETY: as above.
    unsafe { imp::widen_q5_k(x, out) }
}
fn widen_q6_k(x: &[BlockQ6K], out: &mut [f32]) {
    // SAFETY: as above.
    unsafe { imp::widen_q6_k(x, out) }
}
fn key_dots_f16(q: &[f32], g: usize, k: &[f16], stride: usize, out: &mut [f32], ld: usize) {
    let h = imp::Heads::keys(q, g, k, stride, out, ld);
    // SAFETY: as above; `Heads::keys` keeps to what the slices hold.
    unsafe { imp::key_dots_f16(&q[..h.g * h.hd], k, stride.max(1), out, h) }
}
fn value_sum_f16(out: &mut [f32], g: usize, w: &[f32], v: &[f16], stride: usize) {
    let h = imp::Heads::values(out, g, w, v, stride);
    // SAFETY: as above; `Heads::values` keeps to what the slices hold.
    unsafe { imp::value_sum_f16(out, w, v, stride.max(1), h, 0) }
}
/// Every 64-byte line of `len` bytes from `p`, into L2 (`prefetcht1`): the
/// batched loop asks for the next tile a whole tile ahead, so L1 keeps the
/// tile being multiplied.
fn prefetch(p: *const u8, len: usize) {
    let mut at = p.wrapping_sub(p as usize % 64);
    let end = p.wrapping_add(len);
    while at < end {
        // SAFETY: SSE is part of x86_64; a prefetch never faults, whatever
        // the address.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(at.cast()) };
        at = at.wrapping_add(64);
    }
}
fn gemm_f32(w: &[f32], x: &[f32], cols: usize, out: &mut [f32]) {
    if cols == 0 {
        out.fill(0.0);
        return;
    }
    let (rows, n) = (w.len() / cols, x.len() / cols);
    let need = rows * n;
    // SAFETY: as above; `out` holds (n, rows) (sliced here).
    unsafe { imp::gemm_f32(&w[..rows * cols], &x[..n * cols], cols, &mut out[..need]) }
}

/// The 16-bit decode kernels' generic body ([`imp::mv_q16`] and its
/// helpers), stamped out once per target-feature set: closures inherit their
/// function's features, and a closure built under wider features (AVX-512
/// VNNI) inlines only into a body compiled with them.
///
/// It also defines the table's entry points, `mv_q8_0_q16`, `mv_q4_0_q16`
/// and `mv_q4_1_q16`, with `$dot` as the integer dot and the given largest
/// token groups (in that order); `q8_0_widen`, `q4_widen` and `half` must be
/// in scope.
macro_rules! q16_kernels {
    ($feat:literal, $dot:ident, $acc:ident, groups: $g8:expr, $g40:expr, $g41:expr, $gx:expr, $gk6:expr, chains: $regs:expr) => {
        /// The interleaved kernels' walk over `n` tokens in register groups
        /// of up to `$gx`, each group through `$group::<T>`.
        macro_rules! x8_tokens {
            ($group:ident, $w:expr, $x:expr, $n:expr, $out:expr, $ld:expr) => {
                x8_tokens!($group, $w, $x, $n, $out, $ld, 1, $gx)
            };
            // `$per`: activation blocks per weight block (8 for a K-quant
            // super-block); `$most`: the largest token group.
            ($group:ident, $w:expr, $x:expr, $n:expr, $out:expr, $ld:expr, $per:expr, $most:expr) => {{
                let (w, x, n, out, ld) = ($w, $x, $n, $out, $ld);
                let nb = x.len() / n.max(1);
                if n == 0 || nb < $per {
                    return;
                }
                let groups = w.len() / (nb / $per);
                let mut t = 0;
                while t < n {
                    let tn = (n - t).min({ $most }).clamp(1, 8);
                    let xs = &x[t * nb..(t + tn) * nb];
                    let o = &mut out[t * ld..];
                    match tn {
                        8 => $group::<8>(w, xs, nb, groups, o, ld),
                        7 => $group::<7>(w, xs, nb, groups, o, ld),
                        6 => $group::<6>(w, xs, nb, groups, o, ld),
                        5 => $group::<5>(w, xs, nb, groups, o, ld),
                        4 => $group::<4>(w, xs, nb, groups, o, ld),
                        3 => $group::<3>(w, xs, nb, groups, o, ld),
                        2 => $group::<2>(w, xs, nb, groups, o, ld),
                        _ => $group::<1>(w, xs, nb, groups, o, ld),
                    }
                    t += tn;
                }
            }};
        }

        /// Interleaved Q8_0 groups of eight rows times `n` tokens
        /// ([`crate::kernels::MatvecQ16x8Fn`]): a lane per row, each
        /// summing its row's blocks in order as the reference does, so
        /// every row is bit for bit [`crate::quant::q16::dot_q8_0_q16`].
        /// Tokens go in register groups of up to `$gx`.
        ///
        /// # Safety
        /// The CPU must support the features this function enables.
        #[target_feature(enable = $feat)]
        pub unsafe fn mv_q8_0x8_q16(
            w: &[BlockQ8_0x8],
            x: &[BlockQ16],
            n: usize,
            out: &mut [f32],
            ld: usize,
        ) {
            x8_tokens!(x8_group, w, x, n, out, ld);
        }

        /// Interleaved Q4_1 groups of eight rows times `n` tokens
        /// ([`crate::kernels::MatvecQ41x8Fn`]): a lane per row, each adding
        /// its row's blocks in order as the reference does (`d · xd · dot +
        /// m · sum`), so every row is bit for bit
        /// [`crate::quant::q16::dot_q4_1_q16`]. Tokens go in register
        /// groups of up to `$gx`.
        ///
        /// # Safety
        /// The CPU must support the features this function enables.
        #[target_feature(enable = $feat)]
        pub unsafe fn mv_q4_1x8_q16(
            w: &[BlockQ4_1x8],
            x: &[BlockQ16],
            n: usize,
            out: &mut [f32],
            ld: usize,
        ) {
            x8_tokens!(x41_group, w, x, n, out, ld);
        }

        /// The interleaved kernels' walk: `T` tokens against every group of
        /// eight rows of `w`, block by block. `dots(block, tokens, chains,
        /// sums)` adds each token's exact integer pair dots with the block
        /// into its `chains` integer accumulators (integer sums: how they are
        /// split changes no bit); `scales(block)` gives the eight rows' scales
        /// and, with `MIN` (Q4_1), their minimums. Each row's lane then adds
        /// the reference's `(d · xd) · dot` (plus `m · sum`) for the block,
        /// in block order. `LINES` is the block's cache lines, each asked
        /// for `X8_PREFETCH` bytes ahead.
        #[target_feature(enable = $feat)]
        #[inline]
        #[allow(clippy::too_many_arguments)]
        fn x8_walk<B, const T: usize, const LINES: usize, const MIN: bool>(
            w: &[B],
            x: &[BlockQ16],
            nb: usize,
            groups: usize,
            out: &mut [f32],
            ld: usize,
            dots: impl Fn(&B, &[&BlockQ16; T], usize, &mut [[__m256i; 8]; T]),
            scales: impl Fn(&B) -> (__m256, __m256),
        ) {
            assert!(x.len() >= T * nb && w.len() >= groups * nb);
            assert!(groups == 0 || (ld >= 8 * groups && out.len() >= (T - 1) * ld + 8 * groups));
            // Integer chains per token: a block's pair dots would be one
            // dependent chain, so the `$regs` integer accumulators are
            // shared out, more per token when there are fewer tokens.
            let chains = ({ $regs } / T).clamp(1, 8);
            let xp: [*const BlockQ16; T] = core::array::from_fn(|t| x[t * nb..].as_ptr());
            for g in 0..groups {
                let gp = w[g * nb..].as_ptr();
                let mut acc = [_mm256_setzero_ps(); T];
                for b in 0..nb {
                    // SAFETY: b < nb, and group g has nb blocks (asserted).
                    let blk = unsafe { &*gp.add(b) };
                    // Every cache line of the block, X8_PREFETCH bytes ahead
                    // (prefetch never faults).
                    let ahead = (blk as *const B).cast::<i8>().wrapping_add(X8_PREFETCH);
                    for line in 0..LINES {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line));
                    }
                    let xs: [&BlockQ16; T] = core::array::from_fn(|t| {
                        // SAFETY: b < nb, and token t has nb blocks (asserted).
                        unsafe { &*xp[t].add(b) }
                    });
                    let mut i = [[_mm256_setzero_si256(); 8]; T];
                    dots(blk, &xs, chains, &mut i);
                    let (dv, mv) = scales(blk);
                    for t in 0..T {
                        let xb = xs[t];
                        let [c0, c1, c2, c3, c4, c5, c6, c7] = i[t];
                        let s = _mm256_add_epi32(
                            _mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(c2, c3)),
                            _mm256_add_epi32(_mm256_add_epi32(c4, c5), _mm256_add_epi32(c6, c7)),
                        );
                        // The reference's (d * xd) * dot (+ m * sum), then the add.
                        let sd = _mm256_mul_ps(dv, _mm256_set1_ps(xb.d));
                        let mut term = _mm256_mul_ps(sd, _mm256_cvtepi32_ps(s));
                        if MIN {
                            term = _mm256_add_ps(term, _mm256_mul_ps(mv, _mm256_set1_ps(xb.sum)));
                        }
                        acc[t] = _mm256_add_ps(acc[t], term);
                    }
                }
                for t in 0..T {
                    let o = &mut out[t * ld + 8 * g..t * ld + 8 * g + 8];
                    // SAFETY: eight floats in `o`; storeu is unaligned.
                    unsafe { _mm256_storeu_ps(o.as_mut_ptr(), acc[t]) };
                }
            }
        }

        /// `T` tokens against every interleaved Q4_1 group of `w` (160-byte
        /// blocks: three lines).
        #[target_feature(enable = $feat)]
        #[inline]
        fn x41_group<const T: usize>(
            w: &[BlockQ4_1x8],
            x: &[BlockQ16],
            nb: usize,
            groups: usize,
            out: &mut [f32],
            ld: usize,
        ) {
            let low = _mm256_set1_epi16(0x0f);
            let dots = |blk: &BlockQ4_1x8,
                        xs: &[&BlockQ16; T],
                        chains: usize,
                        i: &mut [[__m256i; 8]; T]| {
                // Byte pair `k` of every row: low nibbles are pair `k` of
                // the block's elements, high nibbles pair `k + 8`.
                macro_rules! pair {
                    ($k:literal) => {{
                        // SAFETY: sixteen bytes of the block at 16 * k < 128.
                        let q = unsafe { &*blk.qs.as_ptr().add(16 * $k).cast::<[u8; 16]>() };
                        let v = _mm256_cvtepu8_epi16(bytes16(q));
                        let lo = _mm256_and_si256(v, low);
                        let hi = _mm256_srli_epi16::<4>(v);
                        for t in 0..T {
                            // SAFETY: quants 2k, 2k + 1 and 2k + 16, 2k + 17
                            // (k < 8) of a 32-quant block, each pair read as
                            // one unaligned i32.
                            let (pl, ph) = unsafe {
                                let p = xs[t].qs.as_ptr();
                                (
                                    p.add(2 * $k).cast::<i32>().read_unaligned(),
                                    p.add(2 * $k + 16).cast::<i32>().read_unaligned(),
                                )
                            };
                            let c = (2 * $k) % chains;
                            i[t][c] = $acc(i[t][c], lo, _mm256_set1_epi32(pl));
                            let c = (2 * $k + 1) % chains;
                            i[t][c] = $acc(i[t][c], hi, _mm256_set1_epi32(ph));
                        }
                    }};
                }
                pair!(0);
                pair!(1);
                pair!(2);
                pair!(3);
                pair!(4);
                pair!(5);
                pair!(6);
                pair!(7);
            };
            let scales = |blk: &BlockQ4_1x8| {
                // SAFETY: the eight f16 scales and minimums are sixteen
                // bytes each.
                let (d, m) = unsafe {
                    (
                        &*blk.d.as_ptr().cast::<[u8; 16]>(),
                        &*blk.m.as_ptr().cast::<[u8; 16]>(),
                    )
                };
                (_mm256_cvtph_ps(bytes16(d)), _mm256_cvtph_ps(bytes16(m)))
            };
            x8_walk::<_, T, 3, true>(w, x, nb, groups, out, ld, dots, scales);
        }

        /// `T` tokens against every interleaved Q8_0 group of `w` (272-byte
        /// blocks: five lines).
        #[target_feature(enable = $feat)]
        #[inline]
        fn x8_group<const T: usize>(
            w: &[BlockQ8_0x8],
            x: &[BlockQ16],
            nb: usize,
            groups: usize,
            out: &mut [f32],
            ld: usize,
        ) {
            let dots = |blk: &BlockQ8_0x8,
                        xs: &[&BlockQ16; T],
                        chains: usize,
                        i: &mut [[__m256i; 8]; T]| {
                // Pair `k` of every row against pair `k` of each token;
                // written out sixteen times so every index is a constant
                // and the chains stay in registers.
                macro_rules! pair {
                    ($k:literal) => {{
                        // SAFETY: sixteen bytes of the block at 16 * k < 256.
                        let q = unsafe { &*blk.qs.as_ptr().add(16 * $k).cast::<[u8; 16]>() };
                        let wk = _mm256_cvtepi8_epi16(bytes16(q));
                        for t in 0..T {
                            // SAFETY: quants 2k and 2k + 1 (k < 16) of a
                            // 32-quant block, read as one unaligned i32.
                            let pair = unsafe {
                                xs[t].qs.as_ptr().add(2 * $k).cast::<i32>().read_unaligned()
                            };
                            let c = $k % chains;
                            i[t][c] = $acc(i[t][c], wk, _mm256_set1_epi32(pair));
                        }
                    }};
                }
                pair!(0);
                pair!(1);
                pair!(2);
                pair!(3);
                pair!(4);
                pair!(5);
                pair!(6);
                pair!(7);
                pair!(8);
                pair!(9);
                pair!(10);
                pair!(11);
                pair!(12);
                pair!(13);
                pair!(14);
                pair!(15);
            };
            let scales = |blk: &BlockQ8_0x8| {
                // SAFETY: the eight f16 scales are sixteen bytes.
                let d = unsafe { &*blk.d.as_ptr().cast::<[u8; 16]>() };
                (_mm256_cvtph_ps(bytes16(d)), _mm256_setzero_ps())
            };
            x8_walk::<_, T, 5, false>(w, x, nb, groups, out, ld, dots, scales);
        }

        /// Interleaved Q4_K super-blocks of eight rows times `n` tokens
        /// ([`crate::kernels::MatvecQ4Kx8Fn`]): a lane per row, each adding
        /// its row's groups of 32 in order as the reference does (`d·sc ·
        /// xd · dot − dmin·m · sum`), so every row is bit for bit
        /// [`crate::quant::q16::dot_scale_min_q16`].
        ///
        /// # Safety
        /// The CPU must support the features this function enables.
        #[target_feature(enable = $feat)]
        pub unsafe fn mv_q4_kx8_q16(
            w: &[BlockQ4Kx8],
            x: &[BlockQ16],
            n: usize,
            out: &mut [f32],
            ld: usize,
        ) {
            x8_tokens!(xk4_group, w, x, n, out, ld, 8, $gx);
        }

        /// Interleaved Q6_K super-blocks of eight rows times `n` tokens
        /// ([`crate::kernels::MatvecQ6Kx8Fn`]): a lane per row, each adding
        /// its row's groups of 32 in order as the reference does (`d · xd ·
        /// Σ sc·(q − 32)·x`), so every row is bit for bit
        /// [`crate::quant::q16::dot_q6_k_q16`].
        ///
        /// # Safety
        /// The CPU must support the features this function enables.
        #[target_feature(enable = $feat)]
        pub unsafe fn mv_q6_kx8_q16(
            w: &[BlockQ6Kx8],
            x: &[BlockQ16],
            n: usize,
            out: &mut [f32],
            ld: usize,
        ) {
            x8_tokens!(xk6_group, w, x, n, out, ld, 8, $gk6);
        }

        /// Interleaved Q5_0 blocks of eight rows times `n` tokens
        /// ([`crate::kernels::MatvecQ50x8Fn`]): a lane per row, each adding
        /// its row's blocks in order as the reference does (`d · xd · dot`),
        /// so every row is bit for bit [`crate::quant::q16::dot_q5_0_q16`].
        ///
        /// # Safety
        /// The CPU must support the features this function enables.
        #[target_feature(enable = $feat)]
        pub unsafe fn mv_q5_0x8_q16(
            w: &[BlockQ5_0x8],
            x: &[BlockQ16],
            n: usize,
            out: &mut [f32],
            ld: usize,
        ) {
            x8_tokens!(xq5_group, w, x, n, out, ld, 1, $gk6);
        }

        /// `T` tokens against every interleaved Q5_0 group of `w` (176-byte
        /// blocks: three lines). The quants are put together as bytes, 32 at
        /// a time (the fifth bits spread with one byte shuffle and compare,
        /// as [`q5_bytes`] does), widened, and dotted with four activations
        /// at a time.
        #[target_feature(enable = $feat)]
        #[inline]
        fn xq5_group<const T: usize>(
            w: &[BlockQ5_0x8],
            x: &[BlockQ16],
            nb: usize,
            groups: usize,
            out: &mut [f32],
            ld: usize,
        ) {
            let prep = |blk: &BlockQ5_0x8| {
                // SAFETY: the eight f16 scales are sixteen bytes.
                let d = unsafe { &*blk.d.as_ptr().cast::<[u8; 16]>() };
                _mm256_cvtph_ps(bytes16(d))
            };
            let dots = |blk: &BlockQ5_0x8, _: usize, xs: &[&BlockQ16; T]| -> [__m256i; T] {
                let m4 = _mm256_set1_epi8(0x0f);
                let c16 = _mm256_set1_epi8(16);
                // Byte p of each lane takes fifth-bit byte p / 8 of its half,
                // and is set where its bit is.
                let spread = _mm256_setr_epi8(
                    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                    3, 3, 3, 3, 3, 3,
                );
                let sel = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
                // The 32 nibbles `nib` with their fifth bits (four bytes at
                // `qh`), minus 16: `nib − 16` where the bit is clear.
                let five = |nib: __m256i, qh: *const u8| {
                    // SAFETY: four bytes of `qh` at `qh` (callers' offsets
                    // are below 32).
                    let h = unsafe { qh.cast::<i32>().read_unaligned() };
                    let h = _mm256_shuffle_epi8(_mm256_set1_epi32(h), spread);
                    let set = _mm256_cmpeq_epi8(_mm256_and_si256(h, sel), sel);
                    _mm256_sub_epi8(nib, _mm256_andnot_si256(set, c16))
                };
                // Per token: rows of the first half's slots, of the second's.
                let mut acc = [[_mm256_setzero_si256(); 2]; T];
                macro_rules! quad {
                    ($v:literal) => {{
                        // SAFETY: 32 bytes at 32v < 128 in `qs`; loadu is
                        // unaligned.
                        let q = unsafe { _mm256_loadu_si256(blk.qs.as_ptr().add(32 * $v).cast()) };
                        let qh = blk.qh.as_ptr().wrapping_add(8 * $v);
                        let lo = five(_mm256_and_si256(q, m4), qh);
                        let hi = five(_mm256_and_si256(_mm256_srli_epi16::<4>(q), m4), qh.wrapping_add(4));
                        let la = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(lo));
                        let lb = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(lo));
                        let ha = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(hi));
                        let hb = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(hi));
                        for t in 0..T {
                            // SAFETY: quants 4v..4v + 4 and 16 + 4v.. (v < 4)
                            // of a 32-quant block, each four read as one
                            // unaligned i64.
                            let (pl, ph) = unsafe {
                                let p = xs[t].qs.as_ptr();
                                (
                                    p.add(4 * $v).cast::<i64>().read_unaligned(),
                                    p.add(16 + 4 * $v).cast::<i64>().read_unaligned(),
                                )
                            };
                            let (xl, xh) = (_mm256_set1_epi64x(pl), _mm256_set1_epi64x(ph));
                            let a = &mut acc[t];
                            a[0] = $acc($acc(a[0], la, xl), ha, xh);
                            a[1] = $acc($acc(a[1], lb, xl), hb, xh);
                        }
                    }};
                }
                quad!(0);
                quad!(1);
                quad!(2);
                quad!(3);
                // Pairwise sums across the halves' lanes give the rows in
                // order (`ROW_OF_SLOT`).
                core::array::from_fn(|t| _mm256_hadd_epi32(acc[t][0], acc[t][1]))
            };
            let scales = |_: &BlockQ5_0x8, _: usize, d: __m256| (d, _mm256_setzero_ps());
            kx_walk::<_, _, T, 1, 3, false>(w, x, nb, groups, out, ld, prep, dots, scales);
        }

        /// The quad-interleaved kernels' walk: `T` tokens against every
        /// group of eight rows of `w`, block by block and in each its `PER`
        /// groups of 32 (activation blocks: eight in a K-quant super-block,
        /// one in a Q5_0 block) in order. `prep(block)`
        /// reads what a super-block's groups share; `dots(block, g, tokens)`
        /// gives each token's exact integer dot with group `g` (a lane per
        /// row); `scales(block, g, prep)` the rows' float scale of group `g`
        /// and, with `MIN` (Q4_K), their minimum. Each row's lane then adds
        /// the reference's `(scale · xd) · dot` (minus `min · sum`) for the
        /// group. Each group asks for `LINES` cache lines `X8_PREFETCH`
        /// bytes ahead.
        #[target_feature(enable = $feat)]
        #[inline]
        #[allow(clippy::too_many_arguments)]
        fn kx_walk<
            B,
            P: Copy,
            const T: usize,
            const PER: usize,
            const LINES: usize,
            const MIN: bool,
        >(
            w: &[B],
            x: &[BlockQ16],
            nb: usize,
            groups: usize,
            out: &mut [f32],
            ld: usize,
            prep: impl Fn(&B) -> P,
            dots: impl Fn(&B, usize, &[&BlockQ16; T]) -> [__m256i; T],
            scales: impl Fn(&B, usize, P) -> (__m256, __m256),
        ) {
            let ns = nb / PER;
            assert!(x.len() >= T * nb && w.len() >= groups * ns);
            assert!(groups == 0 || (ld >= 8 * groups && out.len() >= (T - 1) * ld + 8 * groups));
            let xp: [*const BlockQ16; T] = core::array::from_fn(|t| x[t * nb..].as_ptr());
            for gi in 0..groups {
                let gp = w[gi * ns..].as_ptr();
                let mut acc = [_mm256_setzero_ps(); T];
                for b in 0..ns {
                    // SAFETY: b < ns, and group gi has ns super-blocks (asserted).
                    let blk = unsafe { &*gp.add(b) };
                    let pre = prep(blk);
                    let ahead = (blk as *const B).cast::<i8>().wrapping_add(X8_PREFETCH);
                    for g in 0..PER {
                        for line in 0..LINES {
                            // A prefetch never faults.
                            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * (LINES * g + line)));
                        }
                        let xs: [&BlockQ16; T] = core::array::from_fn(|t| {
                            // SAFETY: PER·b + g < nb, and token t has nb blocks (asserted).
                            unsafe { &*xp[t].add(PER * b + g) }
                        });
                        let i = dots(blk, g, &xs);
                        let (dv, mv) = scales(blk, g, pre);
                        for t in 0..T {
                            let xb = xs[t];
                            // The reference's (scale * xd) * dot (- min * sum), then the add.
                            let sd = _mm256_mul_ps(dv, _mm256_set1_ps(xb.d));
                            let mut term = _mm256_mul_ps(sd, _mm256_cvtepi32_ps(i[t]));
                            if MIN {
                                term = _mm256_sub_ps(term, _mm256_mul_ps(mv, _mm256_set1_ps(xb.sum)));
                            }
                            acc[t] = _mm256_add_ps(acc[t], term);
                        }
                    }
                }
                for t in 0..T {
                    let o = &mut out[t * ld + 8 * gi..t * ld + 8 * gi + 8];
                    // SAFETY: eight floats in `o`; storeu is unaligned.
                    unsafe { _mm256_storeu_ps(o.as_mut_ptr(), acc[t]) };
                }
            }
        }

        /// `T` tokens against every interleaved Q4_K group of `w` (1,184-byte
        /// super-blocks: 148 bytes, three lines, a group).
        #[target_feature(enable = $feat)]
        #[inline]
        fn xk4_group<const T: usize>(
            w: &[BlockQ4Kx8],
            x: &[BlockQ16],
            nb: usize,
            groups: usize,
            out: &mut [f32],
            ld: usize,
        ) {
            let low = _mm256_set1_epi16(0x0f);
            let chains = ({ $regs } / T).clamp(1, 4);
            let prep = |blk: &BlockQ4Kx8| {
                // SAFETY: the eight f16 `d` and `dmin` are sixteen bytes each.
                let (d, m) = unsafe {
                    (
                        &*blk.d.as_ptr().cast::<[u8; 16]>(),
                        &*blk.dmin.as_ptr().cast::<[u8; 16]>(),
                    )
                };
                (_mm256_cvtph_ps(bytes16(d)), _mm256_cvtph_ps(bytes16(m)))
            };
            let dots = |blk: &BlockQ4Kx8, g: usize, xs: &[&BlockQ16; T]| {
                let mut i = [[_mm256_setzero_si256(); 8]; T];
                // SAFETY: g < 8: group g's 128 bytes are within `qs` (1,024).
                let qs = unsafe { blk.qs.as_ptr().add(128 * (g & 7)) };
                // Byte pair `k` of every row: low nibbles are pair `k` of
                // the group's elements, high nibbles pair `k + 8`.
                macro_rules! pair {
                    ($k:literal) => {{
                        // SAFETY: sixteen bytes of the group at 16 * k < 128.
                        let q = unsafe { &*qs.add(16 * $k).cast::<[u8; 16]>() };
                        let v = _mm256_cvtepu8_epi16(bytes16(q));
                        let lo = _mm256_and_si256(v, low);
                        let hi = _mm256_srli_epi16::<4>(v);
                        for t in 0..T {
                            // SAFETY: quants 2k, 2k + 1 and 2k + 16, 2k + 17
                            // (k < 8) of a 32-quant block, each pair read as
                            // one unaligned i32.
                            let (pl, ph) = unsafe {
                                let p = xs[t].qs.as_ptr();
                                (
                                    p.add(2 * $k).cast::<i32>().read_unaligned(),
                                    p.add(2 * $k + 16).cast::<i32>().read_unaligned(),
                                )
                            };
                            let c = (2 * $k) % chains;
                            i[t][c] = $acc(i[t][c], lo, _mm256_set1_epi32(pl));
                            let c = (2 * $k + 1) % chains;
                            i[t][c] = $acc(i[t][c], hi, _mm256_set1_epi32(ph));
                        }
                    }};
                }
                pair!(0);
                pair!(1);
                pair!(2);
                pair!(3);
                pair!(4);
                pair!(5);
                pair!(6);
                pair!(7);
                core::array::from_fn(|t| {
                    let [c0, c1, c2, c3, c4, c5, c6, c7] = i[t];
                    _mm256_add_epi32(
                        _mm256_add_epi32(_mm256_add_epi32(c0, c1), _mm256_add_epi32(c2, c3)),
                        _mm256_add_epi32(_mm256_add_epi32(c4, c5), _mm256_add_epi32(c6, c7)),
                    )
                })
            };
            let scales = |blk: &BlockQ4Kx8, g: usize, (d, dmin): (__m256, __m256)| {
                // SAFETY: g < 8: the rows' eight scale and minimum bytes of
                // group g are within `sc` and `m` (64 bytes each).
                let (sc, m) = unsafe {
                    (
                        _mm_loadl_epi64(blk.sc.as_ptr().add(8 * (g & 7)).cast()),
                        _mm_loadl_epi64(blk.m.as_ptr().add(8 * (g & 7)).cast()),
                    )
                };
                let f = |v: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
                // The reference's d·sc and dmin·m, each one f32 product.
                (_mm256_mul_ps(d, f(sc)), _mm256_mul_ps(dmin, f(m)))
            };
            kx_walk::<_, _, T, 8, 3, true>(w, x, nb, groups, out, ld, prep, dots, scales);
        }

        /// `T` tokens against every interleaved Q6_K group of `w` (1,680-byte
        /// super-blocks: 210 bytes, four lines, a group). The quants are put
        /// together as bytes (32 at a time, four rows' four elements in each
        /// half), widened, and dotted with four activations at a time. One
        /// token sums each half-group of 16 (one scale) in its own chains
        /// and multiplies the exact sums by the scales; several tokens share
        /// the quants with the scales multiplied in (each product below
        /// 2^13), which halves each token's chains so that more tokens fit
        /// the registers. Either way the integer sums are the reference's
        /// (wrapping i32 arithmetic, the same in any order).
        #[target_feature(enable = $feat)]
        #[inline]
        fn xk6_group<const T: usize>(
            w: &[BlockQ6Kx8],
            x: &[BlockQ16],
            nb: usize,
            groups: usize,
            out: &mut [f32],
            ld: usize,
        ) {
            let prep = |blk: &BlockQ6Kx8| {
                // SAFETY: the eight f16 `d` are sixteen bytes.
                let d = unsafe { &*blk.d.as_ptr().cast::<[u8; 16]>() };
                _mm256_cvtph_ps(bytes16(d))
            };
            let dots = |blk: &BlockQ6Kx8, g: usize, xs: &[&BlockQ16; T]| -> [__m256i; T] {
                let (m4, m30, b32) = (
                    _mm256_set1_epi8(0x0f),
                    _mm256_set1_epi8(0x30),
                    _mm256_set1_epi8(32),
                );
                // SAFETY: g < 8: group g's 192 bytes are within `q` (1,536).
                let base = unsafe { blk.q.as_ptr().add(192 * (g & 7)) };
                // SAFETY: g < 8: the rows' scales of group g's two halves
                // are eight bytes each at 16g and 16g + 8 < 128.
                let sp = unsafe { blk.scales.as_ptr().add(16 * (g & 7)) };
                // Low-bits vector `v` with its high bits, widened: elements
                // 4v..4v + 4 of every row (slots 0..4, slots 4..8), then
                // elements 16 + 4v.. likewise, each `q − 32`.
                macro_rules! quads {
                    ($v:literal) => {{
                        // SAFETY: 32 bytes at 32v < 128 and at 128 + 32 (v / 2)
                        // < 192, within the group; loadu is unaligned.
                        let (ql, qh) = unsafe {
                            (
                                _mm256_loadu_si256(base.add(32 * $v).cast()),
                                _mm256_loadu_si256(base.add(128 + 32 * ($v / 2)).cast()),
                            )
                        };
                        let lo = _mm256_and_si256(ql, m4);
                        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(ql), m4);
                        let (hl, hh) = if $v % 2 == 0 {
                            (_mm256_slli_epi16::<4>(qh), _mm256_slli_epi16::<2>(qh))
                        } else {
                            (qh, _mm256_srli_epi16::<2>(qh))
                        };
                        let lo = _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_and_si256(hl, m30)), b32);
                        let hi = _mm256_sub_epi8(_mm256_or_si256(hi, _mm256_and_si256(hh, m30)), b32);
                        [
                            _mm256_cvtepi8_epi16(_mm256_castsi256_si128(lo)),
                            _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(lo)),
                            _mm256_cvtepi8_epi16(_mm256_castsi256_si128(hi)),
                            _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(hi)),
                        ]
                    }};
                }
                // Token t's activations 4v..4v + 4 and 16 + 4v.., each four
                // broadcast.
                let act = |t: usize, v: usize| {
                    // SAFETY: quants 4v..4v + 4 and 16 + 4v.. (v < 4) of a
                    // 32-quant block, each four read as one unaligned i64.
                    let (pl, ph) = unsafe {
                        let p = xs[t].qs.as_ptr();
                        (
                            p.add(4 * (v & 3)).cast::<i64>().read_unaligned(),
                            p.add(16 + 4 * (v & 3)).cast::<i64>().read_unaligned(),
                        )
                    };
                    (_mm256_set1_epi64x(pl), _mm256_set1_epi64x(ph))
                };
                // Pairwise sums across the two slot halves' lanes give the
                // rows in order (`ROW_OF_SLOT`).
                if T == 1 {
                    // Per token: low-half rows (slots 0..4, 4..8), high-half rows.
                    let mut acc = [[_mm256_setzero_si256(); 4]; T];
                    macro_rules! quad {
                        ($v:literal) => {{
                            let [la, lb, ha, hb] = quads!($v);
                            for t in 0..T {
                                let (xl, xh) = act(t, $v);
                                let a = &mut acc[t];
                                a[0] = $acc(a[0], la, xl);
                                a[1] = $acc(a[1], lb, xl);
                                a[2] = $acc(a[2], ha, xh);
                                a[3] = $acc(a[3], hb, xh);
                            }
                        }};
                    }
                    quad!(0);
                    quad!(1);
                    quad!(2);
                    quad!(3);
                    // SAFETY: eight bytes at each of `sp` and `sp + 8`.
                    let (sl, sh) = unsafe {
                        (
                            _mm256_cvtepi8_epi32(_mm_loadl_epi64(sp.cast())),
                            _mm256_cvtepi8_epi32(_mm_loadl_epi64(sp.add(8).cast())),
                        )
                    };
                    return core::array::from_fn(|t| {
                        let [la, lb, ha, hb] = acc[t];
                        let lo = _mm256_hadd_epi32(la, lb);
                        let hi = _mm256_hadd_epi32(ha, hb);
                        _mm256_add_epi32(_mm256_mullo_epi32(lo, sl), _mm256_mullo_epi32(hi, sh))
                    });
                }
                // Each widened register's scale per 16-bit lane: the rows of
                // slots 0..4 (rows 0, 1, 4, 5) or 4..8 (rows 2, 3, 6, 7),
                // four lanes each, of the low or high half.
                let lanes = |p: *const i8, pick: __m256i| {
                    // SAFETY: eight bytes at `p` (`sp` or `sp + 8`).
                    let w = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(unsafe {
                        _mm_loadl_epi64(p.cast())
                    }));
                    _mm256_shuffle_epi8(w, pick)
                };
                let first = _mm256_setr_epi8(
                    0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 8, 9, 8, 9, 8, 9, 8, 9, 10, 11,
                    10, 11, 10, 11, 10, 11,
                );
                let second = _mm256_setr_epi8(
                    4, 5, 4, 5, 4, 5, 4, 5, 6, 7, 6, 7, 6, 7, 6, 7, 12, 13, 12, 13, 12, 13, 12, 13,
                    14, 15, 14, 15, 14, 15, 14, 15,
                );
                let sc = [
                    lanes(sp, first),
                    lanes(sp, second),
                    lanes(sp.wrapping_add(8), first),
                    lanes(sp.wrapping_add(8), second),
                ];
                // Per token: rows of slots 0..4, of slots 4..8.
                let mut acc = [[_mm256_setzero_si256(); 2]; T];
                macro_rules! quad {
                    ($v:literal) => {{
                        let q = quads!($v);
                        let [la, lb, ha, hb]: [__m256i; 4] =
                            core::array::from_fn(|k| _mm256_mullo_epi16(q[k], sc[k]));
                        for t in 0..T {
                            let (xl, xh) = act(t, $v);
                            let a = &mut acc[t];
                            a[0] = $acc($acc(a[0], la, xl), ha, xh);
                            a[1] = $acc($acc(a[1], lb, xl), hb, xh);
                        }
                    }};
                }
                quad!(0);
                quad!(1);
                quad!(2);
                quad!(3);
                core::array::from_fn(|t| _mm256_hadd_epi32(acc[t][0], acc[t][1]))
            };
            let scales = |_: &BlockQ6Kx8, _: usize, d: __m256| (d, _mm256_setzero_ps());
            kx_walk::<_, _, T, 8, 4, false>(w, x, nb, groups, out, ld, prep, dots, scales);
        }

        /// # Safety
        /// The CPU must support the features this function enables.
        #[target_feature(enable = $feat)]
        pub unsafe fn mv_q8_0_q16(w: &[BlockQ8_0], x: &[BlockQ16], n: usize, out: &mut [f32]) {
            mv_q16::<_, { $g8 }>(
                w,
                x,
                n,
                out,
                |b| q8_0_widen(b),
                |b| half(b.d),
                |_| 0.0,
                false,
                |a, b, c, d| $dot(a, b, c, d),
            )
        }

        /// # Safety
        /// As [`mv_q8_0_q16`].
        #[target_feature(enable = $feat)]
        pub unsafe fn mv_q4_0_q16(w: &[BlockQ4_0], x: &[BlockQ16], n: usize, out: &mut [f32]) {
            let eight = _mm256_set1_epi16(8);
            mv_q16::<_, { $g40 }>(
                w,
                x,
                n,
                out,
                |b| q4_widen(&b.qs, eight),
                |b| half(b.d),
                |_| 0.0,
                false,
                |a, b, c, d| $dot(a, b, c, d),
            )
        }

        /// # Safety
        /// As [`mv_q8_0_q16`].
        #[target_feature(enable = $feat)]
        pub unsafe fn mv_q4_1_q16(w: &[BlockQ4_1], x: &[BlockQ16], n: usize, out: &mut [f32]) {
            let zero = _mm256_setzero_si256();
            mv_q16::<_, { $g41 }>(
                w,
                x,
                n,
                out,
                |b| q4_widen(&b.qs, zero),
                |b| half(b.d),
                |b| half(b.m),
                true,
                |a, b, c, d| $dot(a, b, c, d),
            )
        }

        /// # Safety
        /// As [`mv_q8_0_q16`].
        #[target_feature(enable = $feat)]
        pub unsafe fn mv_q5_0_q16(w: &[BlockQ5_0], x: &[BlockQ16], n: usize, out: &mut [f32]) {
            mv_q16::<_, { $g40 }>(
                w,
                x,
                n,
                out,
                |b| q5_widen(&b.qs, b.qh, 16),
                |b| half(b.d),
                |_| 0.0,
                false,
                |a, b, c, d| $dot(a, b, c, d),
            )
        }

        /// # Safety
        /// As [`mv_q8_0_q16`].
        #[target_feature(enable = $feat)]
        pub unsafe fn mv_q5_1_q16(w: &[BlockQ5_1], x: &[BlockQ16], n: usize, out: &mut [f32]) {
            mv_q16::<_, { $g41 }>(
                w,
                x,
                n,
                out,
                |b| q5_widen(&b.qs, b.qh, 0),
                |b| half(b.d),
                |b| half(b.m),
                true,
                |a, b, c, d| $dot(a, b, c, d),
            )
        }

        /// # Safety
        /// As [`mv_q8_0_q16`].
        #[target_feature(enable = $feat)]
        pub unsafe fn mv_q4_k_q16(w: &[BlockQ4K], x: &[BlockQ16], n: usize, out: &mut [f32]) {
            mv_k16(
                w,
                x,
                n,
                out,
                |b| KBlock::scale_min(b),
                |b, k, g| q4_k_group(b, g, k.sc[g]),
                true,
                |a, b, c, d| $dot(a, b, c, d),
            )
        }

        /// # Safety
        /// As [`mv_q8_0_q16`].
        #[target_feature(enable = $feat)]
        pub unsafe fn mv_q5_k_q16(w: &[BlockQ5K], x: &[BlockQ16], n: usize, out: &mut [f32]) {
            mv_k16(
                w,
                x,
                n,
                out,
                |b| KBlock::scale_min(b),
                |b, k, g| q5_k_group(b, g, k.sc[g]),
                true,
                |a, b, c, d| $dot(a, b, c, d),
            )
        }

        /// # Safety
        /// As [`mv_q8_0_q16`].
        #[target_feature(enable = $feat)]
        pub unsafe fn mv_q3_k_q16(w: &[BlockQ3K], x: &[BlockQ16], n: usize, out: &mut [f32]) {
            mv_k16(
                w,
                x,
                n,
                out,
                |b| KBlock::d_only(half(b.d)),
                |b, _, g| q3_k_group(b, g),
                false,
                |a, b, c, d| $dot(a, b, c, d),
            )
        }

        /// # Safety
        /// As [`mv_q8_0_q16`].
        #[target_feature(enable = $feat)]
        pub unsafe fn mv_q6_k_q16(w: &[BlockQ6K], x: &[BlockQ16], n: usize, out: &mut [f32]) {
            mv_k16(
                w,
                x,
                n,
                out,
                |b| KBlock::d_only(half(b.d)),
                |b, _, g| q6_k_group(b, g),
                false,
                |a, b, c, d| $dot(a, b, c, d),
            )
        }

        /// Rows of K-quant super-blocks times `n` tokens of 16-bit
        /// activation blocks, eight to a super-block. `prep(b)` reads a
        /// super-block's scales once; `group(b, k, g)` gives the quants of
        /// its `g`-th 32 elements as 2 x 16 i16 lanes with their integer
        /// scale folded in. Each group's exact integer dot is scaled by its
        /// activation block's `d` into the super-block's sum, which takes
        /// the super-block's `d` once; with `with_min`, `dmin · Σ m·x` is
        /// subtracted (`x = d·sc·q − dmin·m`), eight groups to a vector.
        /// Rows outer, tokens inner: a row is read from memory once.
        #[target_feature(enable = $feat)]
        #[inline]
        #[allow(clippy::too_many_arguments)]
        pub(in crate::kernels) fn mv_k16<B>(
            w: &[B],
            x: &[BlockQ16],
            n: usize,
            out: &mut [f32],
            prep: impl Fn(&B) -> KBlock,
            group: impl Fn(&B, &KBlock, usize) -> (__m256i, __m256i),
            with_min: bool,
            dot: impl Fn(__m256i, __m256i, __m256i, __m256i) -> __m256i,
        ) {
            let n = n.max(1);
            let stride = x.len() / n;
            let ns = stride / 8;
            let rows = out.len() / n;
            if ns == 0 {
                out.fill(0.0);
                return;
            }
            // Offsets (in floats) of the eight activation blocks' sums.
            let sums = _mm256_setr_epi32(1, 21, 41, 61, 81, 101, 121, 141);
            const _: () = assert!(core::mem::size_of::<BlockQ16>() == 80);
            let gather = |xs: &[BlockQ16; 8]| {
                // SAFETY: `xs` is eight whole blocks; each offset is a
                // block's `sum` within them.
                unsafe { _mm256_i32gather_ps::<4>(xs.as_ptr().cast::<f32>(), sums) }
            };
            for r in 0..rows {
                let row = &w[r * ns..(r + 1) * ns];
                for t in 0..n {
                    let xt = &x[t * stride..t * stride + 8 * ns];
                    let mut acc = _mm256_setzero_ps();
                    let mut macc = _mm256_setzero_ps();
                    for (blk, xs) in row.iter().zip(xt.as_chunks::<8>().0) {
                        // Ask for the weights PREFETCH bytes ahead (prefetch never faults).
                        _mm_prefetch::<_MM_HINT_T0>(
                            (blk as *const B).cast::<i8>().wrapping_add(PREFETCH),
                        );
                        let k = prep(blk);
                        // Two chains of the super-block's sum.
                        let mut b0 = _mm256_setzero_ps();
                        let mut b1 = _mm256_setzero_ps();
                        let mut g = 0;
                        while g < 8 {
                            let (wa, wc) = group(blk, &k, g);
                            let (xa, xc) = quants(&xs[g]);
                            let p = _mm256_cvtepi32_ps(dot(wa, xa, wc, xc));
                            b0 = _mm256_fmadd_ps(_mm256_broadcast_ss(&xs[g].d), p, b0);
                            let (wa, wc) = group(blk, &k, g + 1);
                            let (xa, xc) = quants(&xs[g + 1]);
                            let p = _mm256_cvtepi32_ps(dot(wa, xa, wc, xc));
                            b1 = _mm256_fmadd_ps(_mm256_broadcast_ss(&xs[g + 1].d), p, b1);
                            g += 2;
                        }
                        acc = _mm256_fmadd_ps(_mm256_set1_ps(k.d), _mm256_add_ps(b0, b1), acc);
                        if with_min {
                            let s = gather(xs);
                            let m = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_set1_epi64x(
                                u64::from_le_bytes(k.m) as i64,
                            )));
                            let dm = _mm256_mul_ps(_mm256_set1_ps(k.dmin), m);
                            macc = _mm256_fmadd_ps(dm, s, macc);
                        }
                    }
                    out[t * rows + r] = hsum(acc) - hsum(macc);
                }
            }
        }

        /// One token's activations times rows of weight blocks (the decode step;
        /// its arithmetic is [`q16_group`]'s for one token, in a loop the compiler
        /// keeps tighter): `idot` gives a block's exact integer dot in eight i32 lanes,
        /// `scale` its f32 scale, `min` its Q4_1 minimum (multiplied by the
        /// activations' float sum) when `with_min`.
        #[target_feature(enable = $feat)]
        #[inline]
        fn mv_q16_one<B>(
            w: &[B],
            x: &[BlockQ16],
            out: &mut [f32],
            idot: impl Fn(&B, &BlockQ16) -> __m256i,
            scale: impl Fn(&B) -> f32,
            min: impl Fn(&B) -> f32,
            with_min: bool,
        ) {
            let nb = x.len();
            if nb == 0 {
                out.fill(0.0);
                return;
            }
            for (r, o) in out.iter_mut().enumerate() {
                let row = &w[r * nb..(r + 1) * nb];
                // Two accumulators in registers (named, not indexed, so they
                // stay out of memory), two blocks per step.
                // Two chains each of the vector sum and of Q4_1's minimum term.
                let mut a0 = _mm256_setzero_ps();
                let mut a1 = _mm256_setzero_ps();
                let (mut m0, mut m1) = (0.0f32, 0.0f32);
                let step = |blk: &B, xb: &BlockQ16, a: __m256, m: &mut f32| -> __m256 {
                    let p = _mm256_cvtepi32_ps(idot(blk, xb));
                    if with_min {
                        *m += min(blk) * xb.sum;
                    }
                    _mm256_fmadd_ps(_mm256_set1_ps(scale(blk) * xb.d), p, a)
                };
                let mut b = 0;
                while b + 2 <= nb {
                    // Ask for the weights PREFETCH bytes ahead (prefetch never faults).
                    _mm_prefetch::<_MM_HINT_T0>(
                        (&row[b] as *const B).cast::<i8>().wrapping_add(PREFETCH),
                    );
                    a0 = step(&row[b], &x[b], a0, &mut m0);
                    a1 = step(&row[b + 1], &x[b + 1], a1, &mut m1);
                    b += 2;
                }
                if b < nb {
                    a0 = step(&row[b], &x[b], a0, &mut m0);
                }
                *o = hsum(_mm256_add_ps(a0, a1)) + (m0 + m1);
            }
        }

        /// Rows of weight blocks times `n` tokens of 16-bit activation blocks:
        /// `widen` unpacks a weight block to 2 x 16 i16 lanes once, then each
        /// token takes its exact integer dot (`vpmaddwd`), scaled by `scale`;
        /// `min` is Q4_1's minimum (multiplied by the activations' float sum)
        /// when `with_min`. Tokens go in register groups of up to `G`; a token's
        /// arithmetic is the same in every group size, so its result is the one
        /// it gets alone.
        ///
        /// `dot(wa, xa, wc, xc)` is the exact integer dot of the two halves in
        /// eight i32 lanes (`madd2` for AVX2; one instruction fewer with AVX-512
        /// VNNI's `vpdpwssd`), and `G` (at most 8) the largest token group.
        #[target_feature(enable = $feat)]
        #[inline]
        #[allow(clippy::too_many_arguments)]
        pub(in crate::kernels) fn mv_q16<B, const G: usize>(
            w: &[B],
            x: &[BlockQ16],
            n: usize,
            out: &mut [f32],
            widen: impl Fn(&B) -> (__m256i, __m256i),
            scale: impl Fn(&B) -> f32,
            min: impl Fn(&B) -> f32,
            with_min: bool,
            dot: impl Fn(__m256i, __m256i, __m256i, __m256i) -> __m256i,
        ) {
            if n == 0 {
                return;
            }
            if n == 1 {
                let idot = |b: &B, xb: &BlockQ16| {
                    let (wa, wc) = widen(b);
                    let (xa, xc) = quants(xb);
                    dot(wa, xa, wc, xc)
                };
                return mv_q16_one(w, x, out, idot, scale, min, with_min);
            }
            let nb = x.len() / n;
            let rows = out.len() / n;
            if nb == 0 {
                out.fill(0.0);
                return;
            }
            let mut t = 0;
            while t < n {
                let tn = (n - t).min(G.clamp(1, 8));
                let xs = &x[t * nb..(t + tn) * nb];
                let o = &mut out[t * rows..];
                let k = (&widen, &scale, &min, &dot);
                match tn {
                    8 => q16_group::<B, _, _, _, _, 8>(w, xs, nb, rows, o, k, with_min),
                    7 => q16_group::<B, _, _, _, _, 7>(w, xs, nb, rows, o, k, with_min),
                    6 => q16_group::<B, _, _, _, _, 6>(w, xs, nb, rows, o, k, with_min),
                    5 => q16_group::<B, _, _, _, _, 5>(w, xs, nb, rows, o, k, with_min),
                    4 => q16_group::<B, _, _, _, _, 4>(w, xs, nb, rows, o, k, with_min),
                    3 => q16_group::<B, _, _, _, _, 3>(w, xs, nb, rows, o, k, with_min),
                    2 => q16_group::<B, _, _, _, _, 2>(w, xs, nb, rows, o, k, with_min),
                    _ => q16_group::<B, _, _, _, _, 1>(w, xs, nb, rows, o, k, with_min),
                }
                t += tn;
            }
        }

        /// `T` tokens (`x`: T x nb blocks) against every row of `w`, into
        /// `out[t * rows + r]`.
        #[target_feature(enable = $feat)]
        #[inline]
        #[allow(clippy::too_many_arguments)]
        fn q16_group<B, W, S, M, D, const T: usize>(
            w: &[B],
            x: &[BlockQ16],
            nb: usize,
            rows: usize,
            out: &mut [f32],
            (widen, scale, min, dot): (&W, &S, &M, &D),
            with_min: bool,
        ) where
            W: Fn(&B) -> (__m256i, __m256i),
            S: Fn(&B) -> f32,
            M: Fn(&B) -> f32,
            D: Fn(__m256i, __m256i, __m256i, __m256i) -> __m256i,
        {
            assert!(x.len() >= T * nb && w.len() >= rows * nb && out.len() >= T * rows);
            // Each token's first block; blocks are read through these pointers
            // at offsets below `nb` (asserted above), without index checks.
            let xp: [*const BlockQ16; T] = core::array::from_fn(|t| x[t * nb..].as_ptr());
            for r in 0..rows {
                let row = w[r * nb..].as_ptr();
                // Two chains per token, even and odd blocks, of the vector sum
                // and of Q4_1's minimum term; constant indices after unrolling
                // keep them in registers.
                let mut a0 = [_mm256_setzero_ps(); T];
                let mut a1 = [_mm256_setzero_ps(); T];
                let mut m0 = [0.0f32; T];
                let mut m1 = [0.0f32; T];
                // One block into chain `a`/`m`: written out in the loop (no
                // closure), so after unrolling every index is a constant and
                // the accumulators stay in registers.
                macro_rules! step {
                    ($b:expr, $a:ident, $m:ident) => {{
                        // SAFETY: b < nb, and row r has nb blocks (asserted).
                        let blk = unsafe { &*row.add($b) };
                        let (wa, wc) = widen(blk);
                        let (s, mn) = (scale(blk), min(blk));
                        let sv = _mm256_set1_ps(s);
                        for t in 0..T {
                            // SAFETY: b < nb, and token t has nb blocks (asserted).
                            let xb = unsafe { &*xp[t].add($b) };
                            let (xa, xc) = quants(xb);
                            let i = dot(wa, xa, wc, xc);
                            let p = _mm256_cvtepi32_ps(i);
                            if with_min {
                                $m[t] += mn * xb.sum;
                            }
                            // s * d in every lane: the same product as the
                            // one-token kernel's scalar one, from a broadcast load.
                            let sd = _mm256_mul_ps(sv, _mm256_broadcast_ss(&xb.d));
                            $a[t] = _mm256_fmadd_ps(sd, p, $a[t]);
                        }
                    }};
                }
                let mut b = 0;
                while b + 2 <= nb {
                    // Ask for the weights PREFETCH bytes ahead (prefetch never faults).
                    _mm_prefetch::<_MM_HINT_T0>(
                        row.wrapping_add(b).cast::<i8>().wrapping_add(PREFETCH),
                    );
                    step!(b, a0, m0);
                    step!(b + 1, a1, m1);
                    b += 2;
                }
                if b < nb {
                    step!(b, a0, m0);
                }
                for t in 0..T {
                    out[t * rows + r] = hsum(_mm256_add_ps(a0[t], a1[t])) + (m0[t] + m1[t]);
                }
            }
        }
    };
}
pub(super) use q16_kernels;

/// [`crate::math::exp`] operation for operation on one register of lanes,
/// given that width's intrinsics (set1, add, sub, mul, min, max, compare,
/// truncate to i32, i32 add, i32 set1, i32 shift left, i32 bits as f32, and
/// `clear(under, v)`, which makes the lanes the compare marked +0): the one
/// body of the AVX2 table's `exp8` and the AVX-512 table's `exp16`.
macro_rules! exp_lanes {
    ($x:expr, $set1:ident, $add:ident, $sub:ident, $mul:ident, $min:ident, $max:ident,
     $cmp:ident, $trunc:ident, $addi:ident, $set1i:ident, $shl:ident, $bits:ident,
     $clear:ident) => {{
        let x = $x;
        let c = $set1;
        let under = $cmp::<_CMP_LT_OQ>(x, c(-87.3));
        // max/min return their second operand when either is NaN: NaN passes.
        let x = $min(c(88.3), $max(c(-87.3), x));
        let round = c(12_582_912.0);
        let n = $sub($add($mul(x, c(core::f32::consts::LOG2_E)), round), round);
        let r = $sub(
            $sub(x, $mul(n, c(0.693_359_4))),
            $mul(n, c(-2.121_944_4e-4)),
        );
        let mut p = c(1.987_569_1e-4);
        for k in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = $add($mul(p, r), c(k));
        }
        let e = $add($add($mul($mul(p, r), r), r), c(1.0));
        let bits = $shl::<23>($addi($trunc(n), $set1i(127)));
        $clear(under, $mul(e, $bits(bits)))
    }};
}
pub(super) use exp_lanes;

pub(super) mod imp {
    use super::*;

    /// Sum of the eight lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in crate::kernels) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Eight f32 from `p`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn load8(p: &[f32; 8]) -> __m256 {
        // SAFETY: `p` is exactly eight readable floats; loadu has no alignment need.
        unsafe { _mm256_loadu_ps(p.as_ptr()) }
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (ca, ta) = a[..n].as_chunks::<8>();
        let (cb, tb) = b[..n].as_chunks::<8>();
        let mut acc = _mm256_setzero_ps();
        for (x, y) in ca.iter().zip(cb) {
            acc = _mm256_fmadd_ps(load8(x), load8(y), acc);
        }
        let mut s = hsum(acc);
        for (x, y) in ta.iter().zip(tb) {
            s += x * y;
        }
        s
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(a: &[f16], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (ca, ta) = a[..n].as_chunks::<8>();
        let (cb, tb) = b[..n].as_chunks::<8>();
        let mut acc = _mm256_setzero_ps();
        for (h, y) in ca.iter().zip(cb) {
            // SAFETY: eight halves (16 bytes) are readable at `h`; loadu is unaligned.
            let w = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(h.as_ptr().cast()) });
            acc = _mm256_fmadd_ps(w, load8(y), acc);
        }
        let mut s = hsum(acc);
        for (h, y) in ta.iter().zip(tb) {
            s += h.to_f32() * y;
        }
        s
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8_0(w: &[BlockQ8_0], x: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (b, xs) in w.iter().zip(x.as_chunks::<QK>().0) {
            let mut s = _mm256_setzero_ps();
            for (k, x8) in xs.as_chunks::<8>().0.iter().enumerate() {
                // SAFETY: bytes 8k..8k+8 of the 32 quants are in bounds (k < 4).
                let q = unsafe { _mm_loadl_epi64(b.qs.as_ptr().add(8 * k).cast()) };
                let wf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                s = _mm256_fmadd_ps(wf, load8(x8), s);
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(b.d()), s, acc);
        }
        hsum(acc)
    }

    /// Nibbles of a Q4 block widened to 4 x 8 i32: elements 0..8, 8..16
    /// (low nibbles), 16..24, 24..32 (high nibbles).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn nibbles(qs: &[u8; 16]) -> [__m256i; 4] {
        // SAFETY: 16 readable bytes; loadu is unaligned.
        let q = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
        let m = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(q, m);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), m);
        [
            _mm256_cvtepu8_epi32(lo),
            _mm256_cvtepu8_epi32(_mm_srli_si128::<8>(lo)),
            _mm256_cvtepu8_epi32(hi),
            _mm256_cvtepu8_epi32(_mm_srli_si128::<8>(hi)),
        ]
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_0(w: &[BlockQ4_0], x: &[f32]) -> f32 {
        let eight = _mm256_set1_epi32(8);
        let mut acc = _mm256_setzero_ps();
        for (b, xs) in w.iter().zip(x.as_chunks::<QK>().0) {
            let q = nibbles(&b.qs);
            let mut s = _mm256_setzero_ps();
            for (qi, x8) in q.iter().zip(xs.as_chunks::<8>().0) {
                let wf = _mm256_cvtepi32_ps(_mm256_sub_epi32(*qi, eight));
                s = _mm256_fmadd_ps(wf, load8(x8), s);
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(b.d()), s, acc);
        }
        hsum(acc)
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_1(w: &[BlockQ4_1], x: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (b, xs) in w.iter().zip(x.as_chunks::<QK>().0) {
            let q = nibbles(&b.qs);
            let mut s = _mm256_setzero_ps();
            let mut sx = _mm256_setzero_ps();
            for (qi, x8) in q.iter().zip(xs.as_chunks::<8>().0) {
                let xv = load8(x8);
                s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*qi), xv, s);
                sx = _mm256_add_ps(sx, xv);
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(b.d()), s, acc);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(b.m()), sx, acc);
        }
        hsum(acc)
    }

    /// The f16 scale at `d` broadcast to eight lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn scale8(d: [u8; 2]) -> __m256 {
        _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(d)))
    }

    /// Eight i8 at `p` widened to f32.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn i8x8(p: &[i8]) -> __m256 {
        assert!(p.len() >= 8);
        // SAFETY: eight readable bytes at `p` (checked); loadl is unaligned.
        let q = unsafe { _mm_loadl_epi64(p.as_ptr().cast()) };
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))
    }

    /// Bytes `k*8..k*8+8` of a Q4 block widened to i32 (both nibbles).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn u8x8(qs: &[u8; 16], k: usize) -> __m256i {
        assert!(k < 2);
        // SAFETY: bytes 8k..8k+8 of 16 are readable (k < 2); loadl is unaligned.
        let q = unsafe { _mm_loadl_epi64(qs.as_ptr().add(8 * k).cast()) };
        _mm256_cvtepu8_epi32(q)
    }

    /// Rows of `w` (each `x.len()` long) times `x`: `load(row, i)` gives row
    /// elements `8i..8i+8` as f32, `elem` one element of the tail past the
    /// last whole eight.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn mv_plain<T>(
        w: &[T],
        x: &[f32],
        out: &mut [f32],
        load: impl Fn(&[T], usize) -> __m256,
        elem: impl Fn(&T) -> f32,
    ) {
        let cols = x.len();
        let x8 = x.as_chunks::<8>().0;
        if cols == 0 {
            out.fill(0.0);
            return;
        }
        // One row at a time, four accumulators (interleaved rows read slower).
        for (r, o) in out.iter_mut().enumerate() {
            let wr = &w[r * cols..(r + 1) * cols];
            let mut a = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 4 <= x8.len() {
                // Ask for the bytes 12 KiB ahead (prefetch never faults): F16
                // decode at one thread, alternating six times, went from a
                // median 88% of the bandwidth floor at 6 KiB to 95.5% (4 KiB:
                // 84%, 16 KiB: 95%); at two threads, 232 -> 241 tok/s.
                // Non-temporal: each weight is read once per token, so it
                // need not displace the cache rows and activations from L2
                // (12 KiB into L2 instead measured 93%).
                _mm_prefetch::<_MM_HINT_NTA>(
                    wr.as_ptr()
                        .wrapping_add(8 * i)
                        .cast::<i8>()
                        .wrapping_add(12288),
                );
                for k in 0..4 {
                    a[k] = _mm256_fmadd_ps(load(wr, i + k), load8(&x8[i + k]), a[k]);
                }
                i += 4;
            }
            while i < x8.len() {
                a[0] = _mm256_fmadd_ps(load(wr, i), load8(&x8[i]), a[0]);
                i += 1;
            }
            let body = x8.len() * 8;
            let tail: f32 = wr[body..]
                .iter()
                .zip(&x[body..])
                .map(|(p, q)| elem(p) * q)
                .sum();
            *o = hsum(_mm256_add_ps(
                _mm256_add_ps(a[0], a[1]),
                _mm256_add_ps(a[2], a[3]),
            )) + tail;
        }
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn mv_f32(w: &[f32], x: &[f32], out: &mut [f32]) {
        mv_plain(
            w,
            x,
            out,
            |wr, i| load8(wr[8 * i..8 * i + 8].try_into().unwrap()),
            |v| *v,
        )
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn mv_f16(w: &[f16], x: &[f32], out: &mut [f32]) {
        mv_plain(
            w,
            x,
            out,
            |wr, i| {
                let h = &wr[8 * i..8 * i + 8];
                // SAFETY: eight halves (16 bytes) readable at `h`; loadu is unaligned.
                _mm256_cvtph_ps(unsafe { _mm_loadu_si128(h.as_ptr().cast()) })
            },
            |h| f16_bits_to_f32_fast(h.to_bits()),
        )
    }

    /// Eight bf16 at `h` as f32 (exact: the bits shifted up).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn bf16x8(h: &[bf16]) -> __m256 {
        assert!(h.len() >= 8);
        // SAFETY: eight bf16 (16 bytes) readable at `h` (asserted); loadu is unaligned.
        let v = unsafe { _mm_loadu_si128(h.as_ptr().cast()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_bf16(a: &[bf16], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (ca, ta) = a[..n].as_chunks::<8>();
        let (cb, tb) = b[..n].as_chunks::<8>();
        let mut acc = _mm256_setzero_ps();
        for (h, y) in ca.iter().zip(cb) {
            acc = _mm256_fmadd_ps(bf16x8(h), load8(y), acc);
        }
        let mut s = hsum(acc);
        for (h, y) in ta.iter().zip(tb) {
            s += h.to_f32() * y;
        }
        s
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn mv_bf16(w: &[bf16], x: &[f32], out: &mut [f32]) {
        mv_plain(
            w,
            x,
            out,
            |wr, i| bf16x8(&wr[8 * i..8 * i + 8]),
            |h| h.to_f32(),
        )
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen_bf16(x: &[bf16], out: &mut [f32]) {
        let n = x.len().min(out.len());
        let (cx, tx) = x[..n].as_chunks::<8>();
        let (co, to) = out[..n].as_chunks_mut::<8>();
        for (h, o) in cx.iter().zip(co) {
            // SAFETY: eight writable floats at `o`; storeu is unaligned.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), bf16x8(h)) };
        }
        for (h, o) in tx.iter().zip(to) {
            *o = h.to_f32();
        }
    }

    /// Block rows times `x`, one row at a time: `block(b, xs)` returns the
    /// block's unscaled partial sums (eight lanes) against the 32 floats
    /// `xs` (four vectors), `scale(b)` its scale, and with `with_min`,
    /// `min(b)` multiplies the sum of `xs` (Q4_1's minimum).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn mv_blocks<B>(
        w: &[B],
        x: &[f32],
        out: &mut [f32],
        block: impl Fn(&B, &[__m256; 4]) -> __m256,
        scale: impl Fn(&B) -> __m256,
        min: impl Fn(&B) -> __m256,
        with_min: bool,
    ) {
        let nb = x.len() / QK;
        if nb == 0 {
            out.fill(0.0);
            return;
        }
        let xs = x.as_chunks::<8>().0;
        let xv = |b: usize| -> [__m256; 4] {
            [
                load8(&xs[4 * b]),
                load8(&xs[4 * b + 1]),
                load8(&xs[4 * b + 2]),
                load8(&xs[4 * b + 3]),
            ]
        };
        // One row at a time (several interleaved rows read as slowly as
        // separate streams), two blocks per step into two accumulators.
        for (r, o) in out.iter_mut().enumerate() {
            let wr = &w[r * nb..(r + 1) * nb];
            let mut a0 = _mm256_setzero_ps();
            let mut a1 = _mm256_setzero_ps();
            let step = |blk: &B, xb: &[__m256; 4], a: __m256| -> __m256 {
                let a = _mm256_fmadd_ps(scale(blk), block(blk, xb), a);
                if !with_min {
                    return a;
                }
                let sx = _mm256_add_ps(_mm256_add_ps(xb[0], xb[1]), _mm256_add_ps(xb[2], xb[3]));
                _mm256_fmadd_ps(min(blk), sx, a)
            };
            let mut b = 0;
            while b + 2 <= nb {
                a0 = step(&wr[b], &xv(b), a0);
                a1 = step(&wr[b + 1], &xv(b + 1), a1);
                b += 2;
            }
            if b < nb {
                a0 = step(&wr[b], &xv(b), a0);
            }
            *o = hsum(_mm256_add_ps(a0, a1));
        }
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn mv_q8_0(w: &[BlockQ8_0], x: &[f32], out: &mut [f32]) {
        mv_blocks(
            w,
            x,
            out,
            |b, x| {
                // Two chains of two, so the four products overlap.
                let s0 = _mm256_mul_ps(i8x8(&b.qs[0..8]), x[0]);
                let s1 = _mm256_mul_ps(i8x8(&b.qs[8..16]), x[1]);
                let s0 = _mm256_fmadd_ps(i8x8(&b.qs[16..24]), x[2], s0);
                let s1 = _mm256_fmadd_ps(i8x8(&b.qs[24..32]), x[3], s1);
                _mm256_add_ps(s0, s1)
            },
            |b| scale8(b.d),
            |_| _mm256_setzero_ps(),
            false,
        )
    }

    /// Q4 block sums with nibbles shifted by `off` (8 for Q4_0, 0 for Q4_1).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn q4_block(qs: &[u8; 16], x: &[__m256; 4], off: __m256i) -> __m256 {
        let m = _mm256_set1_epi32(0x0f);
        let (v0, v1) = (u8x8(qs, 0), u8x8(qs, 1));
        // Low nibbles are elements 0..16, high nibbles 16..32.
        let e0 = _mm256_sub_epi32(_mm256_and_si256(v0, m), off);
        let e1 = _mm256_sub_epi32(_mm256_and_si256(v1, m), off);
        let e2 = _mm256_sub_epi32(_mm256_srli_epi32::<4>(v0), off);
        let e3 = _mm256_sub_epi32(_mm256_srli_epi32::<4>(v1), off);
        let s0 = _mm256_mul_ps(_mm256_cvtepi32_ps(e0), x[0]);
        let s1 = _mm256_mul_ps(_mm256_cvtepi32_ps(e1), x[1]);
        let s0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(e2), x[2], s0);
        let s1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(e3), x[3], s1);
        _mm256_add_ps(s0, s1)
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn mv_q4_0(w: &[BlockQ4_0], x: &[f32], out: &mut [f32]) {
        let eight = _mm256_set1_epi32(8);
        mv_blocks(
            w,
            x,
            out,
            |b, x| q4_block(&b.qs, x, eight),
            |b| scale8(b.d),
            |_| _mm256_setzero_ps(),
            false,
        )
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn mv_q4_1(w: &[BlockQ4_1], x: &[f32], out: &mut [f32]) {
        let zero = _mm256_setzero_si256();
        mv_blocks(
            w,
            x,
            out,
            |b, x| q4_block(&b.qs, x, zero),
            |b| scale8(b.d),
            |b| scale8(b.m),
            true,
        )
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy_f16(y: &mut [f32], a: f32, x: &[f16]) {
        let n = y.len().min(x.len());
        let (cy, ty) = y[..n].as_chunks_mut::<8>();
        let (cx, tx) = x[..n].as_chunks::<8>();
        let av = _mm256_set1_ps(a);
        for (o, h) in cy.iter_mut().zip(cx) {
            // SAFETY: eight halves (16 bytes) readable at `h`, eight floats
            // writable at `o`; loadu/storeu are unaligned.
            unsafe {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr().cast()));
                let r = _mm256_fmadd_ps(av, v, _mm256_loadu_ps(o.as_ptr()));
                _mm256_storeu_ps(o.as_mut_ptr(), r);
            }
        }
        for (o, h) in ty.iter_mut().zip(tx) {
            *o += a * h.to_f32();
        }
    }

    /// [`crate::math::swiglu`] eight lanes at a time, bit for bit: the same
    /// operations in the same order (separate multiplies and adds, no FMA),
    /// and a NaN stays a NaN.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn swiglu(g: &mut [f32], u: &[f32]) {
        let n = g.len().min(u.len());
        let (cg, tg) = g[..n].as_chunks_mut::<8>();
        let (cu, tu) = u[..n].as_chunks::<8>();
        let one = _mm256_set1_ps(1.0);
        for (gv, uv) in cg.iter_mut().zip(cu) {
            // SAFETY: eight floats readable and writable at `gv`, eight
            // readable at `uv`; loadu/storeu are unaligned.
            unsafe {
                let x = _mm256_loadu_ps(gv.as_ptr());
                let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
                let s = _mm256_div_ps(x, _mm256_add_ps(one, e));
                _mm256_storeu_ps(
                    gv.as_mut_ptr(),
                    _mm256_mul_ps(s, _mm256_loadu_ps(uv.as_ptr())),
                );
            }
        }
        crate::math::swiglu(tg, tu);
    }

    /// [`crate::math::geglu`] eight lanes at a time, bit for bit: the same
    /// operations in the same order (separate multiplies and adds, no FMA).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn geglu(g: &mut [f32], u: &[f32]) {
        let n = g.len().min(u.len());
        let (cg, tg) = g[..n].as_chunks_mut::<8>();
        let (cu, tu) = u[..n].as_chunks::<8>();
        let one = _mm256_set1_ps(1.0);
        let c = _mm256_set1_ps(crate::math::GELU_2C);
        let k = _mm256_set1_ps(0.044_715);
        for (gv, uv) in cg.iter_mut().zip(cu) {
            // SAFETY: eight floats readable and writable at `gv`, eight
            // readable at `uv`; loadu/storeu are unaligned.
            unsafe {
                let x = _mm256_loadu_ps(gv.as_ptr());
                let cube = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(k, x), x), x);
                let z = _mm256_mul_ps(c, _mm256_add_ps(x, cube));
                let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), z));
                let s = _mm256_div_ps(x, _mm256_add_ps(one, e));
                _mm256_storeu_ps(
                    gv.as_mut_ptr(),
                    _mm256_mul_ps(s, _mm256_loadu_ps(uv.as_ptr())),
                );
            }
        }
        crate::math::geglu(tg, tu);
    }

    /// [`crate::math::softmax`] eight lanes at a time, bit for bit: the
    /// maximum is exact in any order (NaN skipped, as the fold skips it), the
    /// exponentials are [`exp8`]'s, and lane `j` sums elements `i % 8 == j`
    /// in order, as the reference's lanes do.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn softmax(x: &mut [f32]) {
        let (cx, tail) = x.as_chunks_mut::<8>();
        // max(v, m) keeps m where v is NaN, as f32::max does.
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        for v in cx.iter() {
            m = _mm256_max_ps(load8(v), m);
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: eight writable floats; storeu is unaligned.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
        let max = lanes
            .iter()
            .chain(tail.iter())
            .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mv = _mm256_set1_ps(max);
        let mut s = _mm256_setzero_ps();
        for v in cx.iter_mut() {
            let e = exp8(_mm256_sub_ps(load8(v), mv));
            // SAFETY: eight writable floats at `v`; storeu is unaligned.
            unsafe { _mm256_storeu_ps(v.as_mut_ptr(), e) };
            s = _mm256_add_ps(s, e);
        }
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), s) };
        for (j, v) in tail.iter_mut().enumerate() {
            *v = crate::math::exp(*v - max);
            lanes[j] += *v;
        }
        let inv = 1.0 / crate::math::sum_lanes(&lanes);
        let iv = _mm256_set1_ps(inv);
        for v in cx.iter_mut() {
            // SAFETY: eight writable floats at `v`; storeu is unaligned.
            unsafe { _mm256_storeu_ps(v.as_mut_ptr(), _mm256_mul_ps(load8(v), iv)) };
        }
        for v in tail.iter_mut() {
            *v *= inv;
        }
    }

    /// [`crate::math::exp`] in eight lanes, operation for operation.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn exp8(x: __m256) -> __m256 {
        /// Lanes below the range (`under`) become +0.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        fn clear(under: __m256, v: __m256) -> __m256 {
            _mm256_andnot_ps(under, v)
        }
        exp_lanes!(
            x,
            _mm256_set1_ps,
            _mm256_add_ps,
            _mm256_sub_ps,
            _mm256_mul_ps,
            _mm256_min_ps,
            _mm256_max_ps,
            _mm256_cmp_ps,
            _mm256_cvttps_epi32,
            _mm256_add_epi32,
            _mm256_set1_epi32,
            _mm256_slli_epi32,
            _mm256_castsi256_ps,
            clear
        )
    }

    /// f16 to f32 eight at a time (`vcvtph2ps`, exact like the reference).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen_f16(x: &[f16], out: &mut [f32]) {
        let n = x.len().min(out.len());
        let (cx, tx) = x[..n].as_chunks::<8>();
        let (co, to) = out[..n].as_chunks_mut::<8>();
        for (h, o) in cx.iter().zip(co) {
            // SAFETY: sixteen bytes readable at `h`, eight floats writable at
            // `o`; loadu/storeu are unaligned.
            unsafe {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr().cast()));
                _mm256_storeu_ps(o.as_mut_ptr(), v);
            }
        }
        for (h, o) in tx.iter().zip(to) {
            *o = h.to_f32();
        }
    }

    /// Q8_0 blocks to f32: each weight `q as f32 * d`, one rounding, as the
    /// reference computes it.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen_q8_0(x: &[BlockQ8_0], out: &mut [f32]) {
        for (b, o) in x.iter().zip(out.as_chunks_mut::<QK>().0) {
            let d = _mm256_set1_ps(half(b.d));
            let (qs, os) = (b.qs.as_chunks::<8>().0, o.as_chunks_mut::<8>().0);
            for (q, o8) in qs.iter().zip(os) {
                // SAFETY: eight bytes readable at `q`, eight floats writable
                // at `o8`; the loads and stores are unaligned.
                unsafe {
                    let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        q.as_ptr().cast(),
                    )));
                    _mm256_storeu_ps(o8.as_mut_ptr(), _mm256_mul_ps(v, d));
                }
            }
        }
    }

    /// 32 bytes of quants to f32, `d · (q − off) − m` (no `− m` without
    /// `sub_m`), in the reference's two roundings.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn widen32(v: __m256i, off: i32, d: f32, m: Option<f32>, out: &mut [f32; 32]) {
        let lo = _mm256_castsi256_si128(v);
        let hi = _mm256_extracti128_si256::<1>(v);
        let (dv, offv) = (_mm256_set1_ps(d), _mm256_set1_epi32(off));
        for (o, src) in out.as_chunks_mut::<8>().0.iter_mut().zip([
            lo,
            _mm_srli_si128::<8>(lo),
            hi,
            _mm_srli_si128::<8>(hi),
        ]) {
            let q = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(src), offv));
            let mut r = _mm256_mul_ps(dv, q);
            if let Some(m) = m {
                r = _mm256_sub_ps(r, _mm256_set1_ps(m));
            }
            // SAFETY: eight writable floats at `o`; storeu is unaligned.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), r) };
        }
    }

    /// Q5_0 blocks to f32, bit for bit as the reference.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen_q5_0(x: &[BlockQ5_0], out: &mut [f32]) {
        for (b, o) in x.iter().zip(out.as_chunks_mut::<QK>().0) {
            widen32(q5_bytes(&b.qs, b.qh), 16, half(b.d), None, o);
        }
    }

    /// Q4_K blocks to f32, bit for bit as the reference.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen_q4_k(x: &[BlockQ4K], out: &mut [f32]) {
        for (b, o) in x.iter().zip(out.as_chunks_mut::<256>().0) {
            for (g, og) in o.as_chunks_mut::<32>().0.iter_mut().enumerate() {
                let (d, m) = b.group(g);
                widen32(k_nibbles(&b.qs, g), 0, d, Some(m), og);
            }
        }
    }

    /// Q5_K blocks to f32, bit for bit as the reference.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen_q5_k(x: &[BlockQ5K], out: &mut [f32]) {
        for (b, o) in x.iter().zip(out.as_chunks_mut::<256>().0) {
            for (g, og) in o.as_chunks_mut::<32>().0.iter_mut().enumerate() {
                let (d, m) = b.group(g);
                widen32(q5_k_bytes(b, g), 0, d, Some(m), og);
            }
        }
    }

    /// Q6_K blocks to f32, bit for bit as the reference.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen_q6_k(x: &[BlockQ6K], out: &mut [f32]) {
        for (b, o) in x.iter().zip(out.as_chunks_mut::<256>().0) {
            for (g, og) in o.as_chunks_mut::<32>().0.iter_mut().enumerate() {
                let q = q6_k_bytes(b, g);
                // Two groups of 16, each with its own scale.
                let mut tmp = [0.0f32; 32];
                widen32(q, 32, b.group(2 * g), None, &mut tmp);
                og[..16].copy_from_slice(&tmp[..16]);
                widen32(q, 32, b.group(2 * g + 1), None, &mut tmp);
                og[16..].copy_from_slice(&tmp[16..]);
            }
        }
    }

    /// Group `g`'s 32 six-bit quants of a Q6_K block as unsigned bytes
    /// (0..64, before the offset of 32): four low bits from `ql`, two high
    /// from `qh`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn q6_k_bytes(b: &BlockQ6K, g: usize) -> __m256i {
        let (h, k) = ((g / 4) & 1, g % 4);
        let ql = bytes32(&b.ql.as_chunks::<32>().0[2 * h + k % 2]);
        let lo = if k < 2 {
            ql
        } else {
            _mm256_srli_epi16::<4>(ql)
        };
        let lo = _mm256_and_si256(lo, _mm256_set1_epi8(0x0f));
        let qh = _mm256_srl_epi16(
            bytes32(&b.qh.as_chunks::<32>().0[h]),
            _mm_cvtsi32_si128(2 * k as i32),
        );
        let hi = _mm256_and_si256(qh, _mm256_set1_epi8(3));
        _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi))
    }

    /// Activation block `k`'s 32 two-bit quants of a Q2_K block as bytes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn q2_k_bits(b: &BlockQ2K, k: usize) -> __m256i {
        let q = bytes32(&b.qs.as_chunks::<32>().0[(k / 4) & 1]);
        let q = _mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * (k % 4) as i32));
        _mm256_and_si256(q, _mm256_set1_epi8(3))
    }

    /// Q2_K rows against f32 activations: per group of 16, `d·sc Σ q·x −
    /// dmin·m Σ x`.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q2_k(w: &[BlockQ2K], x: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut macc = _mm256_setzero_ps();
        let f = |v: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
        for (b, xs) in w.iter().zip(x.as_chunks::<256>().0) {
            for (k, xg) in xs.as_chunks::<32>().0.iter().enumerate() {
                let q = q2_k_bits(b, k);
                let (lo, hi) = (_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
                let x8 = xg.as_chunks::<8>().0;
                let (x0, x1) = (load8(&x8[0]), load8(&x8[1]));
                let (x2, x3) = (load8(&x8[2]), load8(&x8[3]));
                let sa = _mm256_fmadd_ps(f(_mm_srli_si128::<8>(lo)), x1, _mm256_mul_ps(f(lo), x0));
                let sb = _mm256_fmadd_ps(f(_mm_srli_si128::<8>(hi)), x3, _mm256_mul_ps(f(hi), x2));
                let (da, ma) = b.group(2 * k);
                let (db, mb) = b.group(2 * k + 1);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(da), sa, acc);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(db), sb, acc);
                macc = _mm256_fmadd_ps(_mm256_set1_ps(ma), _mm256_add_ps(x0, x1), macc);
                macc = _mm256_fmadd_ps(_mm256_set1_ps(mb), _mm256_add_ps(x2, x3), macc);
            }
        }
        hsum(acc) - hsum(macc)
    }

    /// Q2_K blocks to f32, bit for bit as the reference.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen_q2_k(x: &[BlockQ2K], out: &mut [f32]) {
        for (b, o) in x.iter().zip(out.as_chunks_mut::<256>().0) {
            for (k, og) in o.as_chunks_mut::<32>().0.iter_mut().enumerate() {
                let q = q2_k_bits(b, k);
                // Two groups of 16, each with its own scale and minimum.
                let mut tmp = [0.0f32; 32];
                let (da, ma) = b.group(2 * k);
                widen32(q, 0, da, Some(ma), &mut tmp);
                og[..16].copy_from_slice(&tmp[..16]);
                let (db, mb) = b.group(2 * k + 1);
                widen32(q, 0, db, Some(mb), &mut tmp);
                og[16..].copy_from_slice(&tmp[16..]);
            }
        }
    }

    pub(crate) use super::super::Heads;

    /// How many of the `left` query heads still to go one pass takes: three
    /// at most (their accumulators share sixteen registers with the widened
    /// rows), and two where three would leave one alone.
    pub(crate) fn group_take(left: usize) -> usize {
        match left {
            0 | 1 => 1,
            2 | 4 => 2,
            _ => 3,
        }
    }

    /// `out[j * ld + p]` = [`dot_f16`] of row `p` (at `p * stride`) with
    /// query `j`. Each cached key is widened once for up to three queries,
    /// and each (row, query) pair keeps its own single accumulator chain, so
    /// its result is `dot_f16`'s bit for bit; the nine to eight chains of a
    /// pass hide the FMA latency one chain waits on.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `q` holds `g * hd` floats,
    /// `k` holds `n` rows of `hd` halves every `stride`, and `out` holds
    /// `(g - 1) * ld + n` floats.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn key_dots_f16(q: &[f32], k: &[f16], stride: usize, out: &mut [f32], h: Heads) {
        let mut j = 0;
        while j < h.g {
            let take = group_take(h.g - j);
            let (qs, os) = (&q[j * h.hd..(j + take) * h.hd], &mut out[j * h.ld..]);
            match take {
                1 => key_pass::<4, 1>(qs, k, stride, os, h),
                2 => key_pass::<4, 2>(qs, k, stride, os, h),
                _ => key_pass::<3, 3>(qs, k, stride, os, h),
            }
            j += take;
        }
    }

    /// [`key_dots_f16`] for `G` queries, `R` rows at a time.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn key_pass<const R: usize, const G: usize>(
        q: &[f32],
        k: &[f16],
        stride: usize,
        out: &mut [f32],
        h: Heads,
    ) {
        let (hd, body) = (h.hd, h.hd / 8);
        let row = |p: usize| &k[p * stride..p * stride + hd];
        let mut p = 0;
        while p + R <= h.n {
            // Plain loops, not `array::from_fn`: its closures would not
            // inline into code built without these features.
            let mut rows: [&[f16]; R] = [&[]; R];
            for (r, x) in rows.iter_mut().enumerate() {
                *x = row(p + r);
            }
            let mut acc = [[_mm256_setzero_ps(); R]; G];
            for i in 0..body {
                let mut w = [_mm256_setzero_ps(); R];
                for (x, rr) in w.iter_mut().zip(&rows) {
                    let c = &rr[8 * i..8 * i + 8];
                    // SAFETY: eight halves (16 bytes) readable at `c`; loadu is unaligned.
                    *x = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(c.as_ptr().cast()) });
                }
                for (j, a) in acc.iter_mut().enumerate() {
                    let y = load8(q[j * hd + 8 * i..j * hd + 8 * i + 8].try_into().unwrap());
                    for r in 0..R {
                        a[r] = _mm256_fmadd_ps(w[r], y, a[r]);
                    }
                }
            }
            for (j, a) in acc.iter().enumerate() {
                let tail = &q[j * hd + 8 * body..(j + 1) * hd];
                for r in 0..R {
                    let mut s = hsum(a[r]);
                    for (x, y) in rows[r][8 * body..].iter().zip(tail) {
                        s += x.to_f32() * y;
                    }
                    out[j * h.ld + p + r] = s;
                }
            }
            p += R;
        }
        while p < h.n {
            for j in 0..G {
                // SAFETY: this function's features are dot_f16's.
                out[j * h.ld + p] = unsafe { dot_f16(row(p), &q[j * hd..(j + 1) * hd]) };
            }
            p += 1;
        }
    }

    /// Row `j` of `out` `+= w[j * ld + p] * row p` for every position in
    /// order, as [`axpy_f16`] would, with the outputs of up to three rows
    /// held in registers across the positions and each cached value widened
    /// once for all of them; only the outputs from vector `from` (of eight)
    /// on (the AVX-512 table sums those before in wider registers).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `v` holds `n` rows of `hd`
    /// halves every `stride`, `out` holds `g * hd` floats and `w` `g * ld`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn value_sum_f16(
        out: &mut [f32],
        w: &[f32],
        v: &[f16],
        stride: usize,
        h: Heads,
        from: usize,
    ) {
        let mut j = 0;
        while j < h.g {
            let take = group_take(h.g - j);
            let (os, ws) = (&mut out[j * h.hd..(j + take) * h.hd], &w[j * h.ld..]);
            match take {
                1 => value_pass::<8, 1>(os, ws, v, stride, h, from),
                2 => value_pass::<4, 2>(os, ws, v, stride, h, from),
                _ => value_pass::<4, 3>(os, ws, v, stride, h, from),
            }
            j += take;
        }
    }

    /// [`value_sum_f16`] for `G` rows: panels of `M` vectors, then single
    /// vectors, then the elements past the last whole vector.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn value_pass<const M: usize, const G: usize>(
        out: &mut [f32],
        w: &[f32],
        v: &[f16],
        stride: usize,
        h: Heads,
        from: usize,
    ) {
        let vecs = h.hd / 8;
        let mut c = from.min(vecs);
        while c + M <= vecs {
            value_panel::<M, G>(out, w, v, stride, c, h);
            c += M;
        }
        while c < vecs {
            value_panel::<1, G>(out, w, v, stride, c, h);
            c += 1;
        }
        if h.hd == vecs * 8 {
            return;
        }
        for j in 0..G {
            let o = &mut out[j * h.hd + vecs * 8..(j + 1) * h.hd];
            for p in 0..h.n {
                let a = w[j * h.ld + p];
                let row = &v[p * stride + vecs * 8..p * stride + h.hd];
                for (oi, x) in o.iter_mut().zip(row) {
                    *oi += a * x.to_f32();
                }
            }
        }
    }

    /// Vectors `c..c + M` (of eight outputs) of `G` rows of [`value_sum_f16`].
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn value_panel<const M: usize, const G: usize>(
        out: &mut [f32],
        w: &[f32],
        v: &[f16],
        stride: usize,
        c: usize,
        h: Heads,
    ) {
        let at = |j: usize, m: usize| j * h.hd + 8 * (c + m);
        // Plain loops, not `array::from_fn`: its closures would not inline
        // into code built without these features.
        let mut acc = [[_mm256_setzero_ps(); M]; G];
        for (j, accj) in acc.iter_mut().enumerate() {
            for (m, x) in accj.iter_mut().enumerate() {
                *x = load8(out[at(j, m)..at(j, m) + 8].try_into().unwrap());
            }
        }
        for p in 0..h.n {
            let mut a = [_mm256_setzero_ps(); G];
            for (j, x) in a.iter_mut().enumerate() {
                *x = _mm256_set1_ps(w[j * h.ld + p]);
            }
            let row = &v[p * stride + 8 * c..p * stride + 8 * (c + M)];
            for m in 0..M {
                // SAFETY: eight halves (16 bytes) readable at 8m within `row`.
                let x = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(row[8 * m..].as_ptr().cast()) });
                for (aj, accj) in a.iter().zip(acc.iter_mut()) {
                    accj[m] = _mm256_fmadd_ps(*aj, x, accj[m]);
                }
            }
        }
        for (j, accj) in acc.iter().enumerate() {
            for (m, &x) in accj.iter().enumerate() {
                // SAFETY: eight floats writable at `at(j, m)` within `out`; storeu is unaligned.
                unsafe { _mm256_storeu_ps(out[at(j, m)..at(j, m) + 8].as_mut_ptr(), x) };
            }
        }
    }

    /// [`crate::quant::q16::quantize_row`], eight lanes at a time, bit for
    /// bit: the maximum is exact in any order, and each lane rounds as the
    /// scalar code does.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_q16(x: &[f32], out: &mut [BlockQ16]) {
        let round = _mm256_set1_ps(crate::quant::q16::ROUND);
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let (lo, hi) = (_mm256_set1_ps(-32768.0), _mm256_set1_ps(32767.0));
        for (b, xs) in out.iter_mut().zip(x.as_chunks::<QK>().0) {
            let v: [__m256; 4] = core::array::from_fn(|i| {
                // SAFETY: eight of the block's 32 floats; loadu is unaligned.
                unsafe { _mm256_loadu_ps(xs[8 * i..].as_ptr()) }
            });
            // max(|v|, m) keeps m where |v| is NaN, as the scalar fold does.
            let mut m = _mm256_setzero_ps();
            for vi in v {
                m = _mm256_max_ps(_mm256_and_ps(vi, abs_mask), m);
            }
            let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let m1 = _mm_max_ss(m2, _mm_movehdup_ps(m2));
            let amax = _mm_cvtss_f32(m1);
            let d = amax / 32767.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let idv = _mm256_set1_ps(id);
            let q: [__m256i; 4] = core::array::from_fn(|i| {
                let r = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(v[i], idv), round), round);
                // NaN lanes become 0 and the rest saturate to i16, as
                // `as i16` does (a subnormal scale gives infinite quotients).
                let ord = _mm256_cmp_ps::<_CMP_ORD_Q>(r, r);
                let r = _mm256_and_ps(r, ord);
                let r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
                _mm256_cvtps_epi32(r)
            });
            // Saturating packs (as `as i16` saturates); packs interleave
            // 128-bit lanes, which the permute puts back in order.
            let p0 = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(q[0], q[1]));
            let p1 = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(q[2], q[3]));
            // SAFETY: 16 + 16 i16 of the block's quants; storeu is unaligned.
            unsafe {
                _mm256_storeu_si256(b.qs.as_mut_ptr().cast(), p0);
                _mm256_storeu_si256(b.qs[16..].as_mut_ptr().cast(), p1);
            }
            // The quants' sum, exactly (each pair sum fits i32).
            let ones = _mm256_set1_epi16(1);
            let s = _mm256_add_epi32(_mm256_madd_epi16(p0, ones), _mm256_madd_epi16(p1, ones));
            let s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let s2 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b01_00_11_10>(s4));
            let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32::<0b10_11_00_01>(s2));
            let isum = _mm_cvtsi128_si32(s1);
            b.d = d;
            b.sum = d * isum as f32;
            b.isum = isum;
            b.pad = 0;
        }
    }

    /// How far ahead of the weights being read decode asks for the next ones.
    pub(in crate::kernels) const PREFETCH: usize = 2048;

    /// An f16 scale as f32 (F16C).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in crate::kernels) fn half(d: [u8; 2]) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(
            _mm_cvtsi32_si128(u16::from_le_bytes(d) as i32),
        ))
    }

    /// Sixteen bytes at `p`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in crate::kernels) fn bytes16(p: &[u8; 16]) -> __m128i {
        // SAFETY: sixteen readable bytes; loadu is unaligned.
        unsafe { _mm_loadu_si128(p.as_ptr().cast()) }
    }

    /// A 16-bit activation block's quants as 2 x 16 lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in crate::kernels) fn quants(b: &BlockQ16) -> (__m256i, __m256i) {
        let (a, c) = b.qs.split_at(16);
        // SAFETY: sixteen i16 (32 bytes) readable at each half; loadu is unaligned.
        unsafe {
            (
                _mm256_loadu_si256(a.as_ptr().cast()),
                _mm256_loadu_si256(c.as_ptr().cast()),
            )
        }
    }

    /// The exact integer dot of two 16-lane halves: `vpmaddwd` twice, added.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in crate::kernels) fn madd2(wa: __m256i, xa: __m256i, wc: __m256i, xc: __m256i) -> __m256i {
        _mm256_add_epi32(_mm256_madd_epi16(wa, xa), _mm256_madd_epi16(wc, xc))
    }

    /// `acc` plus the exact integer pair dots of `w` and `x` (`vpmaddwd`).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in crate::kernels) fn madd_acc(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(w, x))
    }

    /// How far ahead the packed kernels ask for weights (blocks of eight
    /// rows are 272 bytes for Q8_0, 160 for Q4_1): single-token decode at
    /// one thread measured 246 -> 262 tok/s (Q8_0) and 303 -> 317 (Q4_1)
    /// against 4 KiB, and 2-4% more at two threads; 12 KiB was no better.
    pub(in crate::kernels) const X8_PREFETCH: usize = 8192;

    // Q6_K in token groups of two: its four accumulators a token fill the
    // sixteen registers beside the unpacked quants at three.
    q16_kernels!("avx2,fma,f16c", madd2, madd_acc, groups: 4, 4, 4, 4, 2, chains: 8);

    /// A Q8_0 block's quants as 2 x 16 i16 lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in crate::kernels) fn q8_0_widen(b: &BlockQ8_0) -> (__m256i, __m256i) {
        // SAFETY: the block's 32 quants, read as 2 x 16 bytes.
        let q: &[[u8; 16]; 2] = unsafe { &*b.qs.as_ptr().cast() };
        (
            _mm256_cvtepi8_epi16(bytes16(&q[0])),
            _mm256_cvtepi8_epi16(bytes16(&q[1])),
        )
    }

    /// A Q4 block's nibbles minus `off`, as 2 x 16 i16 lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in crate::kernels) fn q4_widen(qs: &[u8; 16], off: __m256i) -> (__m256i, __m256i) {
        let q = bytes16(qs);
        let m = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(q, m);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), m);
        (
            _mm256_sub_epi16(_mm256_cvtepu8_epi16(lo), off),
            _mm256_sub_epi16(_mm256_cvtepu8_epi16(hi), off),
        )
    }

    /// A Q5 block's quants (its nibbles and the fifth bits in `qh`) minus
    /// `off`, as 2 x 16 i16 lanes. The 32 quants are put together as bytes
    /// (the fifth bits spread with one byte shuffle and compare) and
    /// widened once.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in crate::kernels) fn q5_widen(qs: &[u8; 16], qh: [u8; 4], off: i8) -> (__m256i, __m256i) {
        let q = _mm256_sub_epi8(q5_bytes(qs, qh), _mm256_set1_epi8(off));
        (
            _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q)),
            _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(q)),
        )
    }

    /// A Q5 block's 32 quants (`0..32`) as bytes in element order: its
    /// nibbles, and 16 where the element's bit of `qh` is set (spread with
    /// one byte shuffle and compare).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn q5_bytes(qs: &[u8; 16], qh: [u8; 4]) -> __m256i {
        let q = bytes16(qs);
        let m = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(q, m);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), m);
        // Byte j of each lane takes qh byte j / 8 of that lane's half.
        let spread = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        );
        let h = _mm256_shuffle_epi8(_mm256_set1_epi32(u32::from_le_bytes(qh) as i32), spread);
        let sel = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let fifth = _mm256_and_si256(
            _mm256_cmpeq_epi8(_mm256_and_si256(h, sel), sel),
            _mm256_set1_epi8(16),
        );
        _mm256_or_si256(_mm256_set_m128i(hi, lo), fifth)
    }

    /// Thirty-two bytes at `p`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in crate::kernels) fn bytes32(p: &[u8; 32]) -> __m256i {
        // SAFETY: thirty-two readable bytes; loadu is unaligned.
        unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
    }

    /// Thirty-two bytes (each below 128) as 2 x 16 i16 lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn widen_u8(v: __m256i) -> (__m256i, __m256i) {
        (
            _mm256_cvtepu8_epi16(_mm256_castsi256_si128(v)),
            _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(v)),
        )
    }

    /// The 32 nibbles of group `g` of a Q4_K/Q5_K block's `qs` as bytes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn k_nibbles(qs: &[u8; 128], g: usize) -> __m256i {
        let q = bytes32(&qs.as_chunks::<32>().0[(g / 2) & 3]);
        let q = if g.is_multiple_of(2) {
            q
        } else {
            _mm256_srli_epi16::<4>(q)
        };
        _mm256_and_si256(q, _mm256_set1_epi8(0x0f))
    }

    /// A K-quant super-block's scales, read once ([`unpack_scale_min_k4`]).
    pub(in crate::kernels) struct KBlock {
        pub d: f32,
        pub dmin: f32,
        /// Each group's 6-bit scale.
        pub sc: [u8; 8],
        /// Each group's 6-bit minimum.
        pub m: [u8; 8],
    }

    impl KBlock {
        /// A super-block whose group scales its quants carry (Q3_K, Q6_K):
        /// its `d` alone.
        pub(in crate::kernels) fn d_only(d: f32) -> KBlock {
            KBlock {
                d,
                dmin: 0.0,
                sc: [0; 8],
                m: [0; 8],
            }
        }

        /// A Q4_K or Q5_K super-block's scales.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[inline]
        pub(in crate::kernels) fn scale_min<B: ScaleMinBlock>(b: &B) -> KBlock {
            let (sc, m) = unpack_scale_min_k4(b.scales());
            let (d, dmin) = b.d_dmin();
            KBlock {
                d: half(d),
                dmin: half(dmin),
                sc,
                m,
            }
        }
    }

    /// Both halves times the integer scale `sc` (products below 2^11).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn scaled((a, c): (__m256i, __m256i), sc: u8) -> (__m256i, __m256i) {
        let s = _mm256_set1_epi16(sc as i16);
        (_mm256_mullo_epi16(a, s), _mm256_mullo_epi16(c, s))
    }

    /// Group `g` (of 32) of a Q4_K block times its scale `sc`, as 2 x 16
    /// i16 lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in crate::kernels) fn q4_k_group(b: &BlockQ4K, g: usize, sc: u8) -> (__m256i, __m256i) {
        scaled(widen_u8(k_nibbles(&b.qs, g)), sc)
    }

    /// Group `g` (of 32) of a Q5_K block times its scale `sc`, as 2 x 16
    /// i16 lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in crate::kernels) fn q5_k_group(b: &BlockQ5K, g: usize, sc: u8) -> (__m256i, __m256i) {
        scaled(widen_u8(q5_k_bytes(b, g)), sc)
    }

    /// Group `g`'s 32 five-bit quants of a Q5_K block as bytes: the
    /// nibbles plus 16 where bit `g` of the element's `qh` byte is set.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn q5_k_bytes(b: &BlockQ5K, g: usize) -> __m256i {
        let h = _mm256_srl_epi16(bytes32(&b.qh), _mm_cvtsi32_si128((g & 7) as i32));
        let h = _mm256_and_si256(h, _mm256_set1_epi8(1));
        _mm256_or_si256(k_nibbles(&b.qs, g), _mm256_slli_epi16::<4>(h))
    }

    /// Group `g` (of 32) of a Q3_K block as 2 x 16 i16 lanes, each half
    /// times its group-of-16 scale: `(sc − 32) · (q − 4)`, at most 128 in size.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in crate::kernels) fn q3_k_group(b: &BlockQ3K, g: usize) -> (__m256i, __m256i) {
        let (h, k) = ((g / 4) & 1, g % 4);
        let lo = _mm256_srl_epi16(
            bytes32(&b.qs.as_chunks::<32>().0[h]),
            _mm_cvtsi32_si128(2 * k as i32),
        );
        let lo = _mm256_and_si256(lo, _mm256_set1_epi8(3));
        let hi = _mm256_srl_epi16(bytes32(&b.hmask), _mm_cvtsi32_si128((4 * h + k) as i32));
        let hi = _mm256_and_si256(hi, _mm256_set1_epi8(1));
        let (a, c) = widen_u8(_mm256_or_si256(lo, _mm256_slli_epi16::<2>(hi)));
        let four = _mm256_set1_epi16(4);
        let sa = _mm256_set1_epi16((b.scale((2 * g) & 15) - 32) as i16);
        let sc = _mm256_set1_epi16((b.scale((2 * g + 1) & 15) - 32) as i16);
        (
            _mm256_mullo_epi16(_mm256_sub_epi16(a, four), sa),
            _mm256_mullo_epi16(_mm256_sub_epi16(c, four), sc),
        )
    }

    /// Group `g` (of 32) of a Q6_K block as 2 x 16 i16 lanes, each half
    /// times its group-of-16 scale: `sc · (q − 32)`, at most 4096 in size.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in crate::kernels) fn q6_k_group(b: &BlockQ6K, g: usize) -> (__m256i, __m256i) {
        let (a, c) = widen_u8(q6_k_bytes(b, g));
        let off = _mm256_set1_epi16(32);
        let sa = _mm256_set1_epi16(b.scales[(2 * g) & 15] as i16);
        let sc = _mm256_set1_epi16(b.scales[(2 * g + 1) & 15] as i16);
        (
            _mm256_mullo_epi16(_mm256_sub_epi16(a, off), sa),
            _mm256_mullo_epi16(_mm256_sub_epi16(c, off), sc),
        )
    }

    /// A register tile: rows `R` of `w` times tokens `T` of `x`, all `cols`
    /// long, into `out[t * ld + r]`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn tile<const R: usize, const T: usize>(
        w: &[f32],
        x: &[f32],
        cols: usize,
        out: &mut [f32],
        ld: usize,
    ) {
        let body = cols / 8;
        assert!(w.len() >= R * cols && x.len() >= T * cols);
        let mut wp = [w.as_ptr(); R];
        for (r, p) in wp.iter_mut().enumerate() {
            *p = w[r * cols..].as_ptr();
        }
        let mut xp = [x.as_ptr(); T];
        for (t, p) in xp.iter_mut().enumerate() {
            *p = x[t * cols..].as_ptr();
        }
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        for i in 0..body {
            let mut xv = [_mm256_setzero_ps(); T];
            for t in 0..T {
                // SAFETY: row t of `x` has `cols` floats (asserted) and
                // 8i + 8 <= cols (i < cols / 8); loadu is unaligned.
                xv[t] = unsafe { _mm256_loadu_ps(xp[t].add(8 * i)) };
            }
            for r in 0..R {
                // SAFETY: as above, for row r of `w`.
                let wv = unsafe { _mm256_loadu_ps(wp[r].add(8 * i)) };
                for t in 0..T {
                    acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                let (wr, xt) = (&w[r * cols..(r + 1) * cols], &x[t * cols..(t + 1) * cols]);
                let tail: f32 = wr[body * 8..]
                    .iter()
                    .zip(&xt[body * 8..])
                    .map(|(a, b)| a * b)
                    .sum();
                out[t * ld + r] = hsum(acc[r][t]) + tail;
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn gemm_f32(w: &[f32], x: &[f32], cols: usize, out: &mut [f32]) {
        let (rows, n) = (w.len() / cols, x.len() / cols);
        let mut t = 0;
        while t < n {
            let tn = (n - t).min(3);
            let xs = &x[t * cols..(t + tn) * cols];
            let mut r = 0;
            while r < rows {
                let rn = (rows - r).min(4);
                let ws = &w[r * cols..(r + rn) * cols];
                let o = &mut out[t * rows + r..];
                match (rn, tn) {
                    (4, 3) => tile::<4, 3>(ws, xs, cols, o, rows),
                    (4, 2) => tile::<4, 2>(ws, xs, cols, o, rows),
                    (4, 1) => tile::<4, 1>(ws, xs, cols, o, rows),
                    (3, 3) => tile::<3, 3>(ws, xs, cols, o, rows),
                    (3, 2) => tile::<3, 2>(ws, xs, cols, o, rows),
                    (3, 1) => tile::<3, 1>(ws, xs, cols, o, rows),
                    (2, 3) => tile::<2, 3>(ws, xs, cols, o, rows),
                    (2, 2) => tile::<2, 2>(ws, xs, cols, o, rows),
                    (2, 1) => tile::<2, 1>(ws, xs, cols, o, rows),
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
    extern crate std;

    #[test]
    fn conforms_to_scalar() {
        match super::table() {
            Some(k) => {
                crate::kernels::conformance::check_table(&k);
                crate::kernels::conformance::check_rows(&k);
                crate::kernels::conformance::check_q16(&k);
            }
            None => std::eprintln!("skip: this CPU lacks AVX2/FMA/F16C"),
        }
    }
}
