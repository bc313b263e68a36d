//! x86_64 AVX-512 twins over the AVX2 table.
//!
//! Prefill (`gemm_xt`): the tokens' activations come transposed, so each
//! register holds one row's sums for sixteen tokens: a tile of 6 rows x 64
//! tokens takes 24 accumulators, and per column four token loads and six
//! weight broadcasts feed 24 FMAs, with no horizontal sums at the end (the
//! row-major `gemm_f32`, 4 rows x 6 tokens of sixteen-column partial sums,
//! spends about a fifth of its time reducing them). Columns go in passes of
//! 128 so that 64 tokens' worth stays in L1 while the rows go by. F16 pp128
//! at one thread went from 619 to 806 tok/s with it. The AVX2 table keeps its
//! row-major kernel: a 3 x 24 transposed tile in sixteen registers measured
//! 15% slower than it.
//!
//! Decode with 16-bit activations, where the CPU has AVX-512 VNNI and VL: the
//! AVX2 kernels' own body (`q16_kernels!`) compiled with those features, whose
//! integer dot takes one `vpmaddwd` and one `vpdpwssd` (the same exact i32
//! lanes as two `vpmaddwd` and an add), and whose 32 registers hold eight
//! tokens' accumulators, so each weight block is unpacked once for eight
//! tokens. Single-token decode streams weights from memory, where wider
//! registers measured slower.
//!
//! Float results differ from the scalar reference only by FMA rounding and
//! summation order (`conformance.rs` holds them together); the 16-bit decode
//! equals the AVX2 table's bit for bit (tested below).

#![allow(unsafe_code)]

use core::arch::x86_64::*;

use half::f16;

use super::x86_avx2::imp as avx2;
use super::x86_avx2::{k16_shape, q16_entries, q16_shape, x8_entries, x8_shape_per};
use super::{erase, FormatKernels, Kernels, Q16Kernels, RowQ16Fn, XtShape};
use crate::quant::GgmlType;
use crate::quant::{
    BlockQ16, BlockQ3K, BlockQ4K, BlockQ4Kx8, BlockQ4_0, BlockQ4_1, BlockQ4_1x8, BlockQ5K,
    BlockQ5_0, BlockQ5_0x8, BlockQ5_1, BlockQ6K, BlockQ6Kx8, BlockQ8_0, BlockQ8_0x8,
};

/// The AVX-512 table, if this CPU runs it (the AVX2 table must run too).
pub fn table() -> Option<Kernels> {
    let base = super::x86_avx2::table()?;
    if !supported() {
        return None;
    }
    let k = Kernels {
        name: "avx512",
        gemm_f32,
        gemm_xt: Some(gemm_xt),
        key_dots_f16,
        value_sum_f16,
        softmax,
        ..base
    };
    if !vnni() {
        return Some(k);
    }
    let q16 = |ty: GgmlType, f: RowQ16Fn| FormatKernels {
        q16: Some(f),
        ..*k.format(ty)
    };
    Some(
        Kernels {
            q16: base.q16.map(|b| Q16Kernels {
                q8_0x8: Some(mv_q8_0x8_q16),
                q4_1x8: Some(mv_q4_1x8_q16),
                q4_kx8: Some(mv_q4_kx8_q16),
                q6_kx8: Some(mv_q6_kx8_q16),
                q5_0x8: Some(mv_q5_0x8_q16),
                ..b
            }),
            ..k
        }
        .with_format(
            GgmlType::Q8_0,
            q16(GgmlType::Q8_0, erase!(q16 BlockQ8_0, mv_q8_0_q16)),
        )
        .with_format(
            GgmlType::Q4_0,
            q16(GgmlType::Q4_0, erase!(q16 BlockQ4_0, mv_q4_0_q16)),
        )
        .with_format(
            GgmlType::Q4_1,
            q16(GgmlType::Q4_1, erase!(q16 BlockQ4_1, mv_q4_1_q16)),
        )
        .with_format(
            GgmlType::Q5_0,
            q16(GgmlType::Q5_0, erase!(q16 BlockQ5_0, mv_q5_0_q16)),
        )
        .with_format(
            GgmlType::Q5_1,
            q16(GgmlType::Q5_1, erase!(q16 BlockQ5_1, mv_q5_1_q16)),
        )
        .with_format(
            GgmlType::Q3_K,
            q16(GgmlType::Q3_K, erase!(q16 BlockQ3K, mv_q3_k_q16)),
        )
        .with_format(
            GgmlType::Q4_K,
            q16(GgmlType::Q4_K, erase!(q16 BlockQ4K, mv_q4_k_q16)),
        )
        .with_format(
            GgmlType::Q5_K,
            q16(GgmlType::Q5_K, erase!(q16 BlockQ5K, mv_q5_k_q16)),
        )
        .with_format(
            GgmlType::Q6_K,
            q16(GgmlType::Q6_K, erase!(q16 BlockQ6K, mv_q6_k_q16)),
        ),
    )
}

#[cfg(feature = "std")]
fn vnni() -> bool {
    std::is_x86_feature_detected!("avx512vl") && std::is_x86_feature_detected!("avx512vnni")
}

#[cfg(not(feature = "std"))]
fn vnni() -> bool {
    cfg!(all(
        target_feature = "avx512vl",
        target_feature = "avx512vnni"
    ))
}

q16_entries!();

x8_entries!();

#[cfg(feature = "std")]
fn supported() -> bool {
    std::is_x86_feature_detected!("avx512f")
}

#[cfg(not(feature = "std"))]
fn supported() -> bool {
    cfg!(target_feature = "avx512f")
}

fn key_dots_f16(q: &[f32], g: usize, k: &[f16], stride: usize, out: &mut [f32], ld: usize) {
    let h = avx2::Heads::keys(q, g, k, stride, out, ld);
    // SAFETY: reachable only through `table`, which checked AVX-512F (and,
    // through the AVX2 table, AVX2, FMA and F16C); `Heads::keys` keeps to
    // what the slices hold.
    unsafe { imp::key_dots_f16(&q[..h.g * h.hd], k, stride.max(1), out, h) }
}

fn softmax(x: &mut [f32]) {
    // SAFETY: reachable only through `table`, which checked AVX-512F (and,
    // through the AVX2 table, AVX2, FMA and F16C).
    unsafe { imp::softmax(x) }
}

fn value_sum_f16(out: &mut [f32], g: usize, w: &[f32], v: &[f16], stride: usize) {
    let h = avx2::Heads::values(out, g, w, v, stride);
    // SAFETY: as above; `Heads::values` keeps to what the slices hold.
    unsafe { imp::value_sum_f16(out, w, v, stride.max(1), h) }
}

fn gemm_f32(w: &[f32], x: &[f32], cols: usize, out: &mut [f32]) {
    if cols == 0 {
        out.fill(0.0);
        return;
    }
    let (rows, n) = (w.len() / cols, x.len() / cols);
    // SAFETY: reachable only through `table`, which checked AVX-512F (and,
    // through the AVX2 table, AVX2, FMA and F16C); `out` holds (n, rows).
    unsafe {
        imp::gemm_f32(
            &w[..rows * cols],
            &x[..n * cols],
            cols,
            &mut out[..rows * n],
        )
    }
}

fn gemm_xt(w: &[f32], xt: &[f32], s: XtShape, out: &mut [f32]) {
    let XtShape { cols, n, ld } = s;
    if cols == 0 || n == 0 {
        out.fill(0.0);
        return;
    }
    let rows = w.len() / cols;
    assert!(ld >= n, "{ld} < {n}");
    let need = (cols - 1) * ld + n;
    // SAFETY: as above; `xt` holds every element the kernel reads and `out`
    // (rows, n) (sliced here).
    unsafe { imp::gemm_xt(&w[..rows * cols], &xt[..need], s, &mut out[..rows * n]) }
}

mod imp {
    use super::*;
    use avx2::KBlock;
    use avx2::{
        bytes16, half, hsum, q3_k_group, q4_k_group, q4_widen, q5_k_group, q5_widen, q6_k_group,
        q8_0_widen, quants, PREFETCH, X8_PREFETCH,
    };

    // Q8_0, Q4_0 and Q4_K in groups of eight tokens, Q4_1, Q6_K and Q5_0
    // in groups of four (Q6_K's four accumulators a token would not fit in
    // the 32 registers at eight).
    super::super::x86_avx2::q16_kernels!(
        "avx512f,avx512vl,avx512vnni,avx2,fma,f16c",
        dpw2,
        dpw_acc,
        groups: GROUP, GROUP, 4, GROUP, GROUP,
        chains: 16
    );

    /// [`crate::math::softmax`] sixteen lanes at a time, bit for bit:
    /// [`exp16`] is the reference exponential's operations in sixteen
    /// lanes, and each exponential still goes into sum lane `i % 8` in order
    /// (the low eight of a register, then the high eight), as there.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn softmax(x: &mut [f32]) {
        let (cx, tail) = x.as_chunks_mut::<16>();
        // max(v, m) keeps m where v is NaN, as f32::max does.
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        for v in cx.iter() {
            // SAFETY: sixteen readable floats at `v`; loadu is unaligned.
            m = _mm512_max_ps(unsafe { _mm512_loadu_ps(v.as_ptr()) }, m);
        }
        let mut lanes = [0.0f32; 16];
        // SAFETY: sixteen writable floats; storeu is unaligned.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), m) };
        let max = lanes
            .iter()
            .chain(tail.iter())
            .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mv = _mm512_set1_ps(max);
        let mut s = _mm256_setzero_ps();
        for v in cx.iter_mut() {
            // SAFETY: sixteen readable floats at `v`; loadu is unaligned.
            let e = exp16(_mm512_sub_ps(unsafe { _mm512_loadu_ps(v.as_ptr()) }, mv));
            // SAFETY: sixteen writable floats at `v`; storeu is unaligned.
            unsafe { _mm512_storeu_ps(v.as_mut_ptr(), e) };
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(e)));
            s = _mm256_add_ps(_mm256_add_ps(s, _mm512_castps512_ps256(e)), hi);
        }
        let mut sums = [0.0f32; 8];
        // SAFETY: eight writable floats; storeu is unaligned.
        unsafe { _mm256_storeu_ps(sums.as_mut_ptr(), s) };
        for (j, v) in tail.iter_mut().enumerate() {
            *v = crate::math::exp(*v - max);
            sums[j % 8] += *v;
        }
        let inv = 1.0 / crate::math::sum_lanes(&sums);
        let iv = _mm512_set1_ps(inv);
        for v in cx.iter_mut() {
            // SAFETY: sixteen floats at `v`, read then written; loadu and
            // storeu are unaligned.
            unsafe {
                _mm512_storeu_ps(
                    v.as_mut_ptr(),
                    _mm512_mul_ps(_mm512_loadu_ps(v.as_ptr()), iv),
                )
            };
        }
        for v in tail.iter_mut() {
            *v *= inv;
        }
    }

    /// [`crate::math::exp`] in sixteen lanes, operation for operation (the
    /// AVX2 table's eight-lane `exp8`, widened).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    fn exp16(x: __m512) -> __m512 {
        /// Lanes below the range (`under`) become +0.
        #[target_feature(enable = "avx512f,avx2,fma,f16c")]
        #[inline]
        fn clear(under: __mmask16, v: __m512) -> __m512 {
            _mm512_maskz_mov_ps(!under, v)
        }
        super::super::x86_avx2::exp_lanes!(
            x,
            _mm512_set1_ps,
            _mm512_add_ps,
            _mm512_sub_ps,
            _mm512_mul_ps,
            _mm512_min_ps,
            _mm512_max_ps,
            _mm512_cmp_ps_mask,
            _mm512_cvttps_epi32,
            _mm512_add_epi32,
            _mm512_set1_epi32,
            _mm512_slli_epi32,
            _mm512_castsi512_ps,
            clear
        )
    }

    /// [`avx2::key_dots_f16`] with two cached rows in each sixteen-lane
    /// register, eight rows and up to three queries a pass: per eight
    /// halves of a row, half the widenings and FMAs. Each half of a register
    /// is one row's eight-lane chain in the AVX2 kernel's order, summed as
    /// it sums one, so every score is still `dot_f16`'s bit for bit; the
    /// rows past the last eight go to the AVX2 kernel.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX2, FMA and F16C; `q` holds `g * hd`
    /// floats, `k` holds `n` rows of `hd` halves every `stride`, and `out`
    /// holds `(g - 1) * ld + n` floats.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn key_dots_f16(
        q: &[f32],
        k: &[f16],
        stride: usize,
        out: &mut [f32],
        h: avx2::Heads,
    ) {
        let whole = h.n / 8 * 8;
        let mut j = 0;
        while j < h.g {
            let take = avx2::group_take(h.g - j);
            let (qs, os) = (&q[j * h.hd..(j + take) * h.hd], &mut out[j * h.ld..]);
            match take {
                1 => key_pass::<1>(qs, k, stride, os, whole, h),
                2 => key_pass::<2>(qs, k, stride, os, whole, h),
                _ => key_pass::<3>(qs, k, stride, os, whole, h),
            }
            j += take;
        }
        if whole < h.n {
            let rest = avx2::Heads {
                n: h.n - whole,
                ..h
            };
            let (k, out) = (&k[whole * stride..], &mut out[whole..]);
            // SAFETY: this function's features cover the AVX2 kernel's; the
            // remaining rows and their scores lie in `k` and `out`.
            unsafe { avx2::key_dots_f16(q, k, stride, out, rest) }
        }
    }

    /// Rows `0..whole` (a multiple of eight) of [`key_dots_f16`] for `G`
    /// queries.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    fn key_pass<const G: usize>(
        q: &[f32],
        k: &[f16],
        stride: usize,
        out: &mut [f32],
        whole: usize,
        h: avx2::Heads,
    ) {
        let (hd, body) = (h.hd, h.hd / 8);
        let mut p = 0;
        while p + 8 <= whole {
            // Plain loops, not `array::from_fn`: its closures would not
            // inline into code built without these features.
            let mut rows: [&[f16]; 8] = [&[]; 8];
            for (r, x) in rows.iter_mut().enumerate() {
                *x = &k[(p + r) * stride..(p + r) * stride + hd];
            }
            let mut acc = [[_mm512_setzero_ps(); 4]; G];
            for i in 0..body {
                let mut w = [_mm512_setzero_ps(); 4];
                for (x, pair) in w.iter_mut().zip(rows.chunks_exact(2)) {
                    let (a, b) = (&pair[0][8 * i..8 * i + 8], &pair[1][8 * i..8 * i + 8]);
                    // SAFETY: eight halves (16 bytes) readable at `a` and at
                    // `b`; loadu is unaligned.
                    let (a, b) = unsafe {
                        (
                            _mm_loadu_si128(a.as_ptr().cast()),
                            _mm_loadu_si128(b.as_ptr().cast()),
                        )
                    };
                    let ab = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(a), b);
                    *x = _mm512_cvtph_ps(ab);
                }
                for (jj, a) in acc.iter_mut().enumerate() {
                    let y = &q[jj * hd + 8 * i..jj * hd + 8 * i + 8];
                    // SAFETY: eight readable floats at `y`; loadu is unaligned.
                    let y = unsafe { _mm256_loadu_ps(y.as_ptr()) };
                    // The query's eight floats in both halves.
                    let y = _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(y)));
                    for r in 0..4 {
                        a[r] = _mm512_fmadd_ps(w[r], y, a[r]);
                    }
                }
            }
            for (jj, a) in acc.iter().enumerate() {
                let sums = sum_chains(a);
                let tail = &q[jj * hd + 8 * body..(jj + 1) * hd];
                for (r, row) in rows.iter().enumerate() {
                    let mut s = sums[r];
                    for (x, y) in row[8 * body..].iter().zip(tail) {
                        s += x.to_f32() * y;
                    }
                    out[jj * h.ld + p + r] = s;
                }
            }
            p += 8;
        }
    }

    /// The sums of eight eight-lane chains, two to a register (chain `2r`
    /// in the low half of `z[r]`, `2r + 1` in the high), each added as
    /// [`hsum`] adds one: lanes `i + (i + 4)`, then `(0 + 2) + (1 + 3)`. All
    /// eight go through the same three steps together.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    fn sum_chains(z: &[__m512; 4]) -> [f32; 8] {
        // Step 1, per 128-bit block: block k of `s01` is chain k's lanes
        // i + (i + 4), and of `s23` chain 4 + k's.
        let s01 = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(z[0], z[1]),
            _mm512_shuffle_f32x4::<0xDD>(z[0], z[1]),
        );
        let s23 = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(z[2], z[3]),
            _mm512_shuffle_f32x4::<0xDD>(z[2], z[3]),
        );
        // Step 2: block k = [k: s0 + s2, k: s1 + s3, 4 + k: s0 + s2, 4 + k: s1 + s3].
        let t = _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(s01, s23),
            _mm512_shuffle_ps::<0xEE>(s01, s23),
        );
        // Step 3: lane 0 of block k is chain k's sum, lane 1 chain 4 + k's.
        let u = _mm512_add_ps(
            _mm512_shuffle_ps::<0x88>(t, t),
            _mm512_shuffle_ps::<0xDD>(t, t),
        );
        let mut l = [0.0f32; 16];
        // SAFETY: sixteen writable floats; storeu is unaligned.
        unsafe { _mm512_storeu_ps(l.as_mut_ptr(), u) };
        [l[0], l[4], l[8], l[12], l[1], l[5], l[9], l[13]]
    }

    /// [`avx2::value_sum_f16`] with the outputs in sixteen-lane registers:
    /// per position, four widenings and up to twelve FMAs cover 64 outputs
    /// of three rows, all of them held in registers. Each output still adds
    /// its positions in order with one FMA each, so the sums are the AVX2
    /// kernel's bit for bit; the outputs past the last sixteen go to it.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX2, FMA and F16C; `v` holds `n` rows
    /// of `hd` halves every `stride`, `out` holds `g * hd` floats and `w`
    /// `g * ld`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn value_sum_f16(
        out: &mut [f32],
        w: &[f32],
        v: &[f16],
        stride: usize,
        h: avx2::Heads,
    ) {
        let wide = h.hd / 16;
        let mut j = 0;
        while j < h.g {
            let take = avx2::group_take(h.g - j);
            let (os, ws) = (&mut out[j * h.hd..(j + take) * h.hd], &w[j * h.ld..]);
            let mut c = 0;
            while c + 4 <= wide {
                match take {
                    1 => value_panel::<4, 1>(os, ws, v, stride, c, h),
                    2 => value_panel::<4, 2>(os, ws, v, stride, c, h),
                    _ => value_panel::<4, 3>(os, ws, v, stride, c, h),
                }
                c += 4;
            }
            while c < wide {
                match take {
                    1 => value_panel::<1, 1>(os, ws, v, stride, c, h),
                    2 => value_panel::<1, 2>(os, ws, v, stride, c, h),
                    _ => value_panel::<1, 3>(os, ws, v, stride, c, h),
                }
                c += 1;
            }
            j += take;
        }
        // SAFETY: this function's features cover the AVX2 kernel's; the
        // bounds are the caller's.
        unsafe { avx2::value_sum_f16(out, w, v, stride, h, 2 * wide) }
    }

    /// Sixteen-output vectors `c..c + M` of `G` rows of [`value_sum_f16`].
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    fn value_panel<const M: usize, const G: usize>(
        out: &mut [f32],
        w: &[f32],
        v: &[f16],
        stride: usize,
        c: usize,
        h: avx2::Heads,
    ) {
        let at = |j: usize, m: usize| j * h.hd + 16 * (c + m);
        // Plain loops, not `array::from_fn`: its closures would not inline
        // into code built without these features.
        let mut acc = [[_mm512_setzero_ps(); M]; G];
        for (j, accj) in acc.iter_mut().enumerate() {
            for (m, x) in accj.iter_mut().enumerate() {
                let o = &out[at(j, m)..at(j, m) + 16];
                // SAFETY: sixteen readable floats at `o`; loadu is unaligned.
                *x = unsafe { _mm512_loadu_ps(o.as_ptr()) };
            }
        }
        for p in 0..h.n {
            let mut a = [_mm512_setzero_ps(); G];
            for (j, x) in a.iter_mut().enumerate() {
                *x = _mm512_set1_ps(w[j * h.ld + p]);
            }
            let row = &v[p * stride + 16 * c..p * stride + 16 * (c + M)];
            for m in 0..M {
                // SAFETY: sixteen halves (32 bytes) readable at 16m within `row`.
                let x = unsafe { _mm256_loadu_si256(row[16 * m..].as_ptr().cast()) };
                let x = _mm512_cvtph_ps(x);
                for (aj, accj) in a.iter().zip(acc.iter_mut()) {
                    accj[m] = _mm512_fmadd_ps(*aj, x, accj[m]);
                }
            }
        }
        for (j, accj) in acc.iter().enumerate() {
            for (m, &x) in accj.iter().enumerate() {
                let o = &mut out[at(j, m)..at(j, m) + 16];
                // SAFETY: sixteen writable floats at `o`; storeu is unaligned.
                unsafe { _mm512_storeu_ps(o.as_mut_ptr(), x) };
            }
        }
    }

    /// `acc` plus the exact integer pair dots of `w` and `x` (`vpdpwssd`).
    #[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2,fma,f16c")]
    #[inline]
    fn dpw_acc(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, w, x)
    }

    /// `vpmaddwd` on one half, `vpdpwssd` adding the other: the same exact
    /// i32 lanes as [`avx2::madd2`], one instruction fewer.
    #[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2,fma,f16c")]
    #[inline]
    fn dpw2(wa: __m256i, xa: __m256i, wc: __m256i, xc: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(_mm256_madd_epi16(wa, xa), wc, xc)
    }

    /// Tokens per register group: 32 registers hold eight tokens' two
    /// accumulators each beside the unpacked weights. Q4_1 keeps groups of
    /// four: its minimum term's sixteen more chains measured no faster at
    /// eight.
    const GROUP: usize = 8;

    /// Rows `R` of `w` times tokens `T` of `x`, all `cols` long, into
    /// `out[t * ld + r]`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    fn tile<const R: usize, const T: usize>(
        w: &[f32],
        x: &[f32],
        cols: usize,
        out: &mut [f32],
        ld: usize,
    ) {
        let body = cols / 16;
        assert!(w.len() >= R * cols && x.len() >= T * cols);
        let mut wp = [w.as_ptr(); R];
        for (r, p) in wp.iter_mut().enumerate() {
            *p = w[r * cols..].as_ptr();
        }
        let mut xp = [x.as_ptr(); T];
        for (t, p) in xp.iter_mut().enumerate() {
            *p = x[t * cols..].as_ptr();
        }
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        for i in 0..body {
            let mut xv = [_mm512_setzero_ps(); T];
            for t in 0..T {
                // SAFETY: row t of `x` has `cols` floats (asserted) and
                // 16i + 16 <= cols (i < cols / 16); loadu is unaligned.
                xv[t] = unsafe { _mm512_loadu_ps(xp[t].add(16 * i)) };
            }
            for r in 0..R {
                // SAFETY: as above, for row r of `w`.
                let wv = unsafe { _mm512_loadu_ps(wp[r].add(16 * i)) };
                for t in 0..T {
                    acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                let (wr, xt) = (&w[r * cols..(r + 1) * cols], &x[t * cols..(t + 1) * cols]);
                let tail: f32 = wr[body * 16..]
                    .iter()
                    .zip(&xt[body * 16..])
                    .map(|(a, b)| a * b)
                    .sum();
                out[t * ld + r] = _mm512_reduce_add_ps(acc[r][t]) + tail;
            }
        }
    }

    /// Rows `R` of `w` (each `cols` long) times `V` vectors of sixteen
    /// tokens from `t0` of `xt` (`cols` rows of `n` tokens), columns
    /// `k0..k1`, into `out[r * n + t]` (added to what is there when `k0 >
    /// 0`). Per column: `V` token loads, `R` weight broadcasts and `R * V`
    /// FMAs. Lanes past `n` are masked off (neither read nor written).
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    fn tile_xt<const R: usize, const V: usize>(
        w: &[f32],
        xt: &[f32],
        XtShape { cols, n, ld }: XtShape,
        (t0, k0, k1): (usize, usize, usize),
        out: &mut [f32],
    ) {
        assert!(w.len() >= R * cols && out.len() >= R * n && t0 < n && k0 < k1 && k1 <= cols);
        assert!(ld >= n && xt.len() >= (cols - 1) * ld + n);
        let wp: [*const f32; R] = core::array::from_fn(|r| w[r * cols..].as_ptr());
        let mask: [u16; V] = core::array::from_fn(|v| {
            let left = n.saturating_sub(t0 + 16 * v);
            if left >= 16 {
                u16::MAX
            } else {
                (1u16 << left) - 1
            }
        });
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        if k0 > 0 {
            for r in 0..R {
                let o = out[r * n..].as_ptr().wrapping_add(t0);
                for v in 0..V {
                    // SAFETY: as the stores below.
                    acc[r][v] = unsafe { _mm512_maskz_loadu_ps(mask[v], o.wrapping_add(16 * v)) };
                }
            }
        }
        let mut row = xt[k0 * ld..].as_ptr().wrapping_add(t0);
        for k in k0..k1 {
            let mut xv = [_mm512_setzero_ps(); V];
            for v in 0..V {
                // SAFETY: `row` is token t0 of element k's row of `xt` (at
                // k * ld, k < cols; `xt` holds (cols - 1) * ld + n); the unmasked lanes are its tokens
                // t0 + 16v + j < n; masked lanes are not read and do not
                // fault.
                xv[v] = unsafe { _mm512_maskz_loadu_ps(mask[v], row.wrapping_add(16 * v)) };
            }
            for r in 0..R {
                // SAFETY: element k < cols of row r < R of `w` (asserted:
                // `w` holds R * cols).
                let wb = _mm512_set1_ps(unsafe { *wp[r].add(k) });
                for v in 0..V {
                    acc[r][v] = _mm512_fmadd_ps(wb, xv[v], acc[r][v]);
                }
            }
            row = row.wrapping_add(ld);
        }
        for r in 0..R {
            let o = out[r * n..].as_mut_ptr().wrapping_add(t0);
            for v in 0..V {
                // SAFETY: the unmasked lanes are tokens t0 + 16v + j < n of
                // row r of `out` (which holds R * n); masked lanes are not
                // written.
                unsafe { _mm512_mask_storeu_ps(o.wrapping_add(16 * v), mask[v], acc[r][v]) };
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn gemm_xt(w: &[f32], xt: &[f32], s: XtShape, out: &mut [f32]) {
        let XtShape { cols, n, .. } = s;
        let rows = w.len() / cols;
        let mut k0 = 0;
        while k0 < cols {
            let k1 = (k0 + KC).min(cols);
            let mut t = 0;
            while t < n {
                let vn = (n - t).div_ceil(16).min(4);
                let mut r = 0;
                while r < rows {
                    let rn = (rows - r).min(6);
                    let (ws, o) = (&w[r * cols..], &mut out[r * n..]);
                    macro_rules! dispatch {
                    ($(($r:literal, $v:literal)),*) => {
                        match (rn, vn) {
                            $(($r, $v) => tile_xt::<$r, $v>(ws, xt, s, (t, k0, k1), o),)*
                            _ => unreachable!(),
                        }
                    };
                }
                    dispatch!(
                        (6, 4),
                        (6, 3),
                        (6, 2),
                        (6, 1),
                        (5, 4),
                        (5, 3),
                        (5, 2),
                        (5, 1),
                        (4, 4),
                        (4, 3),
                        (4, 2),
                        (4, 1),
                        (3, 4),
                        (3, 3),
                        (3, 2),
                        (3, 1),
                        (2, 4),
                        (2, 3),
                        (2, 2),
                        (2, 1),
                        (1, 4),
                        (1, 3),
                        (1, 2),
                        (1, 1)
                    );
                    r += rn;
                }
                t += 16 * vn;
            }
            k0 = k1;
        }
    }

    /// Columns per pass of [`gemm_xt`]: 64 tokens of 128 columns (32 KiB)
    /// stay in L1 while every row of the tile goes by.
    const KC: usize = 128;

    /// # Safety
    /// The CPU must support AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn gemm_f32(w: &[f32], x: &[f32], cols: usize, out: &mut [f32]) {
        let (rows, n) = (w.len() / cols, x.len() / cols);
        macro_rules! dispatch {
            ($rn:expr, $tn:expr, $ws:expr, $xs:expr, $o:expr; $(($r:literal, $t:literal)),*) => {
                match ($rn, $tn) {
                    $(($r, $t) => tile::<$r, $t>($ws, $xs, cols, $o, rows),)*
                    _ => unreachable!(),
                }
            };
        }
        let mut t = 0;
        while t < n {
            let tn = (n - t).min(6);
            let xs = &x[t * cols..(t + tn) * cols];
            let mut r = 0;
            while r < rows {
                let rn = (rows - r).min(4);
                let ws = &w[r * cols..(r + rn) * cols];
                let o = &mut out[t * rows + r..];
                dispatch!(rn, tn, ws, xs, o;
                    (4, 6), (4, 5), (4, 4), (4, 3), (4, 2), (4, 1),
                    (3, 6), (3, 5), (3, 4), (3, 3), (3, 2), (3, 1),
                    (2, 6), (2, 5), (2, 4), (2, 3), (2, 2), (2, 1),
                    (1, 6), (1, 5), (1, 4), (1, 3), (1, 2), (1, 1));
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
        // Where the CPU lacks AVX-512F the detected table is the AVX2 one,
        // which its own test holds to the reference.
        if let Some(k) = super::table() {
            crate::kernels::conformance::check_table(&k);
            crate::kernels::conformance::check_rows(&k);
            crate::kernels::conformance::check_q16(&k);
        }
    }

    /// The VNNI 16-bit decode (groups of eight) gives the AVX2 kernels'
    /// results bit for bit, for every weight type both decode in 16 bits
    /// and 1 to 17 tokens.
    #[test]
    fn vnni_decode_equals_avx2_bit_for_bit() {
        extern crate std;
        use crate::kernels::conformance::Rng;
        use crate::kernels::Kernels;
        use crate::quant::{self, BlockQ16};
        use std::vec;
        let (Some(a), Some(b)) = (Kernels::avx512(), Kernels::avx2()) else {
            return;
        };
        let (Some(_), Some(qb)) = (a.q16, b.q16) else {
            return;
        };
        let mut rng = Rng::new(0x7a11);
        // Two 256-element super-blocks per row: every format's whole blocks.
        let (rows, nb) = (13, 16);
        let cols = nb * 32;
        let w: vec::Vec<f32> = (0..rows * cols)
            .map(|i| rng.f32() * if i % 97 == 0 { 50.0 } else { 1.0 })
            .collect();
        for n in 1..=17 {
            let x: vec::Vec<f32> = (0..n * cols).map(|_| rng.f32() * 3.0).collect();
            let mut xq = vec![BlockQ16::ZERO; n * nb];
            for t in 0..n {
                (qb.quantize)(&x[t * cols..(t + 1) * cols], &mut xq[t * nb..(t + 1) * nb]);
            }
            let (mut oa, mut ob) = (vec![0.0f32; n * rows], vec![0.0f32; n * rows]);
            for f in quant::FORMATS.iter() {
                let (Some(ka), Some(kb)) = (a.format(f.ty).q16, b.format(f.ty).q16) else {
                    continue;
                };
                let rb = cols / f.block_len * f.block_bytes;
                let mut wq = vec![0u8; rows * rb];
                for (r, o) in wq.chunks_exact_mut(rb).enumerate() {
                    (f.quantize)(&w[r * cols..(r + 1) * cols], o);
                }
                let w = &wq;
                ka(w, &xq, n, &mut oa);
                kb(w, &xq, n, &mut ob);
                assert_eq!(bits(&oa), bits(&ob), "{}, {n} tokens", f.ty.name());
            }
        }

        fn bits(v: &[f32]) -> vec::Vec<u32> {
            v.iter().map(|f| f.to_bits()).collect()
        }
    }
}
