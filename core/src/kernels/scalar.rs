//! Scalar reference kernels, written as plain loops over eight independent
//! lanes. Eight accumulators and fixed-size chunks (no bounds checks inside a
//! block) let the compiler vectorize them on any target (SSE2, NEON, Helium)
//! without intrinsics, and fix the summation order, so the result is the same
//! on every machine for the same inputs.
//!
//! Each function takes one weight row and an f32 vector of the row's length;
//! quantized rows are whole blocks (the GGUF reader guarantees it). A vector
//! longer than the row is read only as far as the row goes.

#![forbid(unsafe_code)]

use half::f16;

use super::{erase, AxpyF16Fn, DotFn, FormatKernels};
use crate::quant::f16::f16_bits_to_f32_fast;
use crate::quant::q16::QK;
use crate::quant::{
    self, q16, q8_0, BlockQ16, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0,
    BlockQ5_1, BlockQ6K, BlockQ8_0, BlockQ8_0x4, GgmlType,
};

/// The scalar table's formats: each format's own reference
/// ([`FormatKernels::reference`]), with this file's eight-lane kernels for
/// the formats that have them.
pub const fn formats() -> [FormatKernels; GgmlType::COUNT] {
    let mut f = [FormatKernels::reference(&quant::FORMATS[0]); GgmlType::COUNT];
    let mut i = 1;
    while i < GgmlType::COUNT {
        f[i] = FormatKernels::reference(&quant::FORMATS[i]);
        i += 1;
    }
    f[GgmlType::F32.index()] = FormatKernels {
        dot: erase!(dot f32, dot_f32),
        mv: Some(erase!(mv f32, mv_f32)),
        widen: erase!(widen f32, copy_f32),
        q16: None,
    };
    f[GgmlType::F16.index()] = FormatKernels {
        dot: erase!(dot f16, dot_f16),
        mv: Some(erase!(mv f16, mv_f16)),
        widen: erase!(widen f16, quant::f16::dequantize_row),
        q16: None,
    };
    f[GgmlType::Q8_0.index()] = FormatKernels {
        dot: erase!(dot BlockQ8_0, dot_q8_0),
        mv: Some(erase!(mv BlockQ8_0, mv_q8_0)),
        widen: erase!(widen BlockQ8_0, quant::q8_0::dequantize_row),
        q16: None,
    };
    f[GgmlType::Q4_0.index()] = FormatKernels {
        dot: erase!(dot BlockQ4_0, dot_q4_0),
        mv: Some(erase!(mv BlockQ4_0, mv_q4_0)),
        widen: erase!(widen BlockQ4_0, quant::q4_0::dequantize_row),
        q16: None,
    };
    f[GgmlType::Q4_1.index()] = FormatKernels {
        dot: erase!(dot BlockQ4_1, dot_q4_1),
        mv: Some(erase!(mv BlockQ4_1, mv_q4_1)),
        widen: erase!(widen BlockQ4_1, quant::q4_1::dequantize_row),
        q16: None,
    };
    f
}

/// [`formats`] with 16-bit activation blocks in decode for the block
/// formats: the arithmetic of the fast decode kernels, written plainly.
pub const fn formats_q16() -> [FormatKernels; GgmlType::COUNT] {
    let mut f = formats();
    f[GgmlType::Q8_0.index()].q16 = Some(erase!(q16 BlockQ8_0, mv_q8_0_q16));
    f[GgmlType::Q4_0.index()].q16 = Some(erase!(q16 BlockQ4_0, mv_q4_0_q16));
    f[GgmlType::Q4_1.index()].q16 = Some(erase!(q16 BlockQ4_1, mv_q4_1_q16));
    f[GgmlType::Q5_0.index()].q16 = Some(erase!(q16 BlockQ5_0, mv_q5_0_q16));
    f[GgmlType::Q5_1.index()].q16 = Some(erase!(q16 BlockQ5_1, mv_q5_1_q16));
    f[GgmlType::Q3_K.index()].q16 = Some(erase!(q16 BlockQ3K, mv_q3_k_q16));
    f[GgmlType::Q4_K.index()].q16 = Some(erase!(q16 BlockQ4K, mv_q4_k_q16));
    f[GgmlType::Q5_K.index()].q16 = Some(erase!(q16 BlockQ5K, mv_q5_k_q16));
    f[GgmlType::Q6_K.index()].q16 = Some(erase!(q16 BlockQ6K, mv_q6_k_q16));
    f
}

/// F32 rows as they are.
fn copy_f32(w: &[f32], out: &mut [f32]) {
    let n = w.len().min(out.len());
    out[..n].copy_from_slice(&w[..n]);
}

const L: usize = 8;
const H: usize = QK / 2;

/// Pairwise horizontal sum, in a fixed order.
#[inline(always)]
fn hsum(a: [f32; L]) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (ca, ta) = a.as_chunks::<L>();
    let (cb, tb) = b.as_chunks::<L>();
    let mut acc = [0.0f32; L];
    for (ca, cb) in ca.iter().zip(cb) {
        for i in 0..L {
            acc[i] += ca[i] * cb[i];
        }
    }
    let mut s = hsum(acc);
    for (x, y) in ta.iter().zip(tb) {
        s += x * y;
    }
    s
}

pub fn dot_f16(a: &[f16], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (ca, ta) = a.as_chunks::<L>();
    let (cb, tb) = b.as_chunks::<L>();
    let mut acc = [0.0f32; L];
    for (ca, cb) in ca.iter().zip(cb) {
        for i in 0..L {
            acc[i] += f16_bits_to_f32_fast(ca[i].to_bits()) * cb[i];
        }
    }
    let mut s = hsum(acc);
    for (x, y) in ta.iter().zip(tb) {
        s += f16_bits_to_f32_fast(x.to_bits()) * y;
    }
    s
}

pub fn dot_q8_0(w: &[BlockQ8_0], x: &[f32]) -> f32 {
    let mut sum = [0.0f32; L];
    for (b, xs) in w.iter().zip(x.as_chunks::<QK>().0) {
        let mut acc = [0.0f32; L];
        for (q8, x8) in b.qs.as_chunks::<L>().0.iter().zip(xs.as_chunks::<L>().0) {
            for i in 0..L {
                acc[i] += q8[i] as f32 * x8[i];
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
    let mut sum = [0.0f32; L];
    for (b, xs) in w.iter().zip(x.as_chunks::<QK>().0) {
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
    let mut sum = [0.0f32; L];
    for (b, xs) in w.iter().zip(x.as_chunks::<QK>().0) {
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

/// Q8_0 rows times activations quantized to Q8_0: one
/// [`q8_0::vec_dot_q8_0_q8_0`] per row (`x.len()` blocks a row, `out.len()` rows).
pub fn matvec_q8_0_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0], out: &mut [f32]) {
    if x.is_empty() {
        out.fill(0.0);
        return;
    }
    for (o, row) in out.iter_mut().zip(w.chunks_exact(x.len())) {
        *o = q8_0::vec_dot_q8_0_q8_0(row, x);
    }
}

/// [`matvec_q8_0_q8_0`] over rows interleaved in fours: each row's block
/// is taken back out of its group ([`BlockQ8_0x4::row`]) and summed in the
/// same order, so every value equals the plain rows' bit for bit.
pub fn matvec_q8_0x4_q8_0(w: &[BlockQ8_0x4], x: &[BlockQ8_0], out: &mut [f32]) {
    if x.is_empty() {
        out.fill(0.0);
        return;
    }
    for (o, group) in out.chunks_exact_mut(4).zip(w.chunks_exact(x.len())) {
        for (j, o) in o.iter_mut().enumerate() {
            let mut sum = 0.0f32;
            for (b, xb) in group.iter().zip(x) {
                let row = b.row(j);
                let isum: i32 = row
                    .qs
                    .iter()
                    .zip(&xb.qs)
                    .map(|(&a, &c)| a as i32 * c as i32)
                    .sum();
                sum += isum as f32 * (row.d() * xb.d());
            }
            *o = sum;
        }
    }
}

/// Activation blocks per K-quant super-block: one Q8_0 block of 32 for each
/// group of 32 weights.
pub const PER_SUPER: usize = crate::quant::k_quants::QK_K / q8_0::QK;

/// `out[r] = dot(row r, x)` for rows of `x.len() / per` weight blocks each
/// (`per` activation blocks to a weight block), `out.len()` rows.
#[inline(always)]
fn rows_q8<T>(
    w: &[T],
    x: &[BlockQ8_0],
    per: usize,
    out: &mut [f32],
    dot: fn(&[T], &[BlockQ8_0]) -> f32,
) {
    let nb = x.len() / per;
    if nb == 0 {
        out.fill(0.0);
        return;
    }
    for (o, row) in out.iter_mut().zip(w.chunks_exact(nb)) {
        *o = dot(row, &x[..nb * per]);
    }
}

/// `Σ x` over an activation block, exactly (`|Σ x| <= 32 * 128`).
#[inline(always)]
pub fn q8_sum(x: &[i8]) -> i32 {
    x.iter().map(|&v| v as i32).sum()
}

/// Q5_0 row · Q8_0 activations: per block the exact integer dot
/// `isum = Σ (q − 16)·x` (`|isum| <= 16 * 128 * 32`), then, as Q8_0's,
/// `sum += isum as f32 * (dw * dx)` in block order.
pub fn dot_q5_0_q8_0(w: &[BlockQ5_0], x: &[BlockQ8_0]) -> f32 {
    let mut sum = 0.0f32;
    for (b, xb) in w.iter().zip(x) {
        let isum: i32 = (0..q8_0::QK)
            .map(|j| (b.q(j) as i32 - 16) * xb.qs[j] as i32)
            .sum();
        sum += isum as f32 * (b.d() * xb.d());
    }
    sum
}

/// What one Q4_K super-block adds to a row's sum against its eight
/// activation blocks, from exact integers: group `g`'s `isum[g] = Σ q·x`
/// and the activation block's `xsum[g] = Σ x` (the quantized activations'
/// own sum, so the minimum's term is defined by the blocks alone). In this
/// order, in f32:
///
/// ```text
/// sa = Σ_g dx[g] * (sc[g] * isum[g]) as f32     (g = 0..8, from 0.0)
/// sb = Σ_g dx[g] * (m[g] * xsum[g]) as f32
/// return d * sa - dmin * sb
/// ```
///
/// Both products are exact integers below 2^24 (`63 * 15 * 128 * 32` and
/// `63 * 128 * 32`), so their conversions are exact. The Cortex-M DSP twin
/// computes the integers in `asm!` and calls this for the rest.
#[inline(always)]
pub fn q4_k_q8_0_super(
    b: &BlockQ4K,
    isum: &[i32; PER_SUPER],
    xsum: &[i32; PER_SUPER],
    dx: &[f32; PER_SUPER],
    (d, dmin): (f32, f32),
) -> f32 {
    let (sc, m) = quant::k_quants::unpack_scale_min_k4(&b.scales);
    let (mut sa, mut sb) = (0.0f32, 0.0f32);
    for g in 0..PER_SUPER {
        sa += dx[g] * (sc[g] as i32 * isum[g]) as f32;
        sb += dx[g] * (m[g] as i32 * xsum[g]) as f32;
    }
    d * sa - dmin * sb
}

/// Q4_K row · Q8_0 activations: per super-block [`q4_k_q8_0_super`] of its
/// groups' integer dots, added to the row's sum in order from 0.0.
pub fn dot_q4_k_q8_0(w: &[BlockQ4K], x: &[BlockQ8_0]) -> f32 {
    use quant::k_quants::ScaleMinBlock;
    let mut sum = 0.0f32;
    for (b, xs) in w.iter().zip(x.chunks_exact(PER_SUPER)) {
        let isum: [i32; PER_SUPER] = core::array::from_fn(|g| {
            (0..q8_0::QK)
                .map(|l| b.q(g, l) as i32 * xs[g].qs[l] as i32)
                .sum()
        });
        let xsum = core::array::from_fn(|g| q8_sum(&xs[g].qs));
        let dx = core::array::from_fn(|g| xs[g].d());
        let d = (quant::f16_bits_to_f32(b.d), quant::f16_bits_to_f32(b.dmin));
        sum += q4_k_q8_0_super(b, &isum, &xsum, &dx, d);
    }
    sum
}

/// What one Q6_K super-block adds to a row's sum: activation block `k`'s
/// exact integer dot with the group scales folded in,
/// `isum[k] = Σ_l sc[(32k + l) / 16] * (q − 32) * x` (`|isum[k]| <= 2^24`:
/// `32 * 128 * 128` per element, 32 elements; exact in f32 too), then in
/// this order, in f32: `sb = Σ_k dx[k] * isum[k] as f32` (from 0.0),
/// `return d * sb`.
#[inline(always)]
pub fn q6_k_q8_0_super(isum: &[i32; PER_SUPER], dx: &[f32; PER_SUPER], d: f32) -> f32 {
    let mut sb = 0.0f32;
    for k in 0..PER_SUPER {
        sb += dx[k] * isum[k] as f32;
    }
    d * sb
}

/// Q6_K row · Q8_0 activations: per super-block [`q6_k_q8_0_super`],
/// added to the row's sum in order from 0.0.
pub fn dot_q6_k_q8_0(w: &[BlockQ6K], x: &[BlockQ8_0]) -> f32 {
    let mut sum = 0.0f32;
    for (b, xs) in w.iter().zip(x.chunks_exact(PER_SUPER)) {
        let isum: [i32; PER_SUPER] = core::array::from_fn(|k| {
            (0..q8_0::QK)
                .map(|l| {
                    let e = q8_0::QK * k + l;
                    b.scales[e / 16] as i32 * (b.q(e) as i32 - 32) * xs[k].qs[l] as i32
                })
                .sum()
        });
        let dx = core::array::from_fn(|k| xs[k].d());
        sum += q6_k_q8_0_super(&isum, &dx, quant::f16_bits_to_f32(b.d));
    }
    sum
}

/// Q5_0 rows times Q8_0 activations ([`dot_q5_0_q8_0`] per row; `x.len()`
/// blocks a row, `out.len()` rows).
pub fn matvec_q5_0_q8_0(w: &[BlockQ5_0], x: &[BlockQ8_0], out: &mut [f32]) {
    rows_q8(w, x, 1, out, dot_q5_0_q8_0)
}

/// Q4_K rows times Q8_0 activations ([`dot_q4_k_q8_0`] per row; `x.len()`
/// activation blocks a row, eight to a super-block).
pub fn matvec_q4_k_q8_0(w: &[BlockQ4K], x: &[BlockQ8_0], out: &mut [f32]) {
    rows_q8(w, x, PER_SUPER, out, dot_q4_k_q8_0)
}

/// Q6_K rows times Q8_0 activations ([`dot_q6_k_q8_0`] per row).
pub fn matvec_q6_k_q8_0(w: &[BlockQ6K], x: &[BlockQ8_0], out: &mut [f32]) {
    rows_q8(w, x, PER_SUPER, out, dot_q6_k_q8_0)
}

/// One dot per row: `out[i] = w[i] · x`, rows `per_row` elements of `w` long.
#[inline(always)]
pub(crate) fn rows<T>(w: &[T], per_row: usize, x: &[f32], out: &mut [f32], dot: DotFn<T>) {
    if per_row == 0 {
        out.fill(0.0);
        return;
    }
    for (o, row) in out.iter_mut().zip(w.chunks_exact(per_row)) {
        *o = dot(row, x);
    }
}

pub fn mv_f32(w: &[f32], x: &[f32], out: &mut [f32]) {
    rows(w, x.len(), x, out, dot_f32)
}

pub fn mv_f16(w: &[f16], x: &[f32], out: &mut [f32]) {
    rows(w, x.len(), x, out, dot_f16)
}

pub fn mv_q8_0(w: &[BlockQ8_0], x: &[f32], out: &mut [f32]) {
    rows(w, x.len() / QK, x, out, dot_q8_0)
}

pub fn mv_q4_0(w: &[BlockQ4_0], x: &[f32], out: &mut [f32]) {
    rows(w, x.len() / QK, x, out, dot_q4_0)
}

pub fn mv_q4_1(w: &[BlockQ4_1], x: &[f32], out: &mut [f32]) {
    rows(w, x.len() / QK, x, out, dot_q4_1)
}

/// No hint: the portable tables leave caching to the hardware.
pub fn prefetch(_p: *const u8, _len: usize) {}

/// `out[t * rows + r] = w[r] · x[t]`, one [`dot_f32`] each.
pub fn gemm_f32(w: &[f32], x: &[f32], cols: usize, out: &mut [f32]) {
    if cols == 0 {
        out.fill(0.0);
        return;
    }
    let rows = w.len() / cols;
    for (t, xt) in x.chunks_exact(cols).enumerate() {
        for (r, wr) in w.chunks_exact(cols).enumerate() {
            if let Some(o) = out.get_mut(t * rows + r) {
                *o = dot_f32(wr, xt);
            }
        }
    }
}

/// `out[r * n + t] = Σ_k w[r][k] * xt[k * ld + t]`, adding in `k` order
/// ([`super::GemmXtFn`]).
pub fn gemm_xt(w: &[f32], xt: &[f32], s: super::XtShape, out: &mut [f32]) {
    let super::XtShape { cols, n, ld } = s;
    if cols == 0 {
        out.fill(0.0);
        return;
    }
    for (r, wr) in w.chunks_exact(cols).enumerate() {
        for t in 0..n {
            let mut acc = 0.0f32;
            for (k, &wk) in wr.iter().enumerate() {
                acc += wk * xt[k * ld + t];
            }
            if let Some(o) = out.get_mut(r * n + t) {
                *o = acc;
            }
        }
    }
}

/// One [`q16`] dot per row and token: `x` is `n` tokens of blocks, `out` is
/// (n, rows); each row is as long as one token's blocks, `PER` activation
/// blocks to a weight block (8 for the 256-element super-blocks).
#[inline(always)]
fn rows_q16<T, const PER: usize>(
    w: &[T],
    x: &[BlockQ16],
    n: usize,
    out: &mut [f32],
    dot: fn(&[T], &[BlockQ16]) -> f32,
) {
    let nb = x.len() / n.max(1) / PER * PER;
    let rows = out.len() / n.max(1);
    if nb == 0 {
        out.fill(0.0);
        return;
    }
    for (xt, ot) in x
        .chunks_exact(x.len() / n.max(1))
        .zip(out.chunks_exact_mut(rows))
        .take(n)
    {
        for (o, row) in ot.iter_mut().zip(w.chunks_exact(nb / PER)) {
            *o = dot(row, &xt[..nb]);
        }
    }
}

pub fn mv_q8_0_q16(w: &[BlockQ8_0], x: &[BlockQ16], n: usize, out: &mut [f32]) {
    rows_q16::<_, 1>(w, x, n, out, q16::dot_q8_0_q16)
}

pub fn mv_q4_0_q16(w: &[BlockQ4_0], x: &[BlockQ16], n: usize, out: &mut [f32]) {
    rows_q16::<_, 1>(w, x, n, out, q16::dot_q4_0_q16)
}

pub fn mv_q4_1_q16(w: &[BlockQ4_1], x: &[BlockQ16], n: usize, out: &mut [f32]) {
    rows_q16::<_, 1>(w, x, n, out, q16::dot_q4_1_q16)
}

pub fn mv_q5_0_q16(w: &[BlockQ5_0], x: &[BlockQ16], n: usize, out: &mut [f32]) {
    rows_q16::<_, 1>(w, x, n, out, q16::dot_q5_0_q16)
}

pub fn mv_q5_1_q16(w: &[BlockQ5_1], x: &[BlockQ16], n: usize, out: &mut [f32]) {
    rows_q16::<_, 1>(w, x, n, out, q16::dot_q5_1_q16)
}

pub fn mv_q3_k_q16(w: &[BlockQ3K], x: &[BlockQ16], n: usize, out: &mut [f32]) {
    rows_q16::<_, { q16::PER_SUPER }>(w, x, n, out, q16::dot_q3_k_q16)
}

pub fn mv_q4_k_q16(w: &[BlockQ4K], x: &[BlockQ16], n: usize, out: &mut [f32]) {
    rows_q16::<_, { q16::PER_SUPER }>(w, x, n, out, q16::dot_scale_min_q16)
}

pub fn mv_q5_k_q16(w: &[BlockQ5K], x: &[BlockQ16], n: usize, out: &mut [f32]) {
    rows_q16::<_, { q16::PER_SUPER }>(w, x, n, out, q16::dot_scale_min_q16)
}

pub fn mv_q6_k_q16(w: &[BlockQ6K], x: &[BlockQ16], n: usize, out: &mut [f32]) {
    rows_q16::<_, { q16::PER_SUPER }>(w, x, n, out, q16::dot_q6_k_q16)
}

/// `y += a * x`, element by element.
pub fn axpy_f16(y: &mut [f32], a: f32, x: &[f16]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o += a * f16_bits_to_f32_fast(v.to_bits());
    }
}

/// [`super::KeyDotsF16Fn`] through `dot`, query by query, position by
/// position.
pub fn key_dots_with(
    q: &[f32],
    g: usize,
    k: &[f16],
    stride: usize,
    out: &mut [f32],
    ld: usize,
    dot: DotFn<f16>,
) {
    let g = g.max(1);
    let (hd, stride) = (q.len() / g, stride.max(1));
    let n = super::group_positions(k.len(), hd, stride, g, ld, out.len());
    for j in 0..g {
        let qj = &q[j * hd..(j + 1) * hd];
        for (p, o) in out[j * ld..j * ld + n].iter_mut().enumerate() {
            *o = dot(&k[p * stride..p * stride + hd], qj);
        }
    }
}

/// [`super::ValueSumF16Fn`] through `axpy`, row by row, position by
/// position.
pub fn value_sum_with(
    out: &mut [f32],
    g: usize,
    w: &[f32],
    v: &[f16],
    stride: usize,
    axpy: AxpyF16Fn,
) {
    let g = g.max(1);
    let (hd, ld, stride) = (out.len() / g, w.len() / g, stride.max(1));
    let n = super::strided_rows(v.len(), hd, stride).min(ld);
    for j in 0..g {
        let o = &mut out[j * hd..(j + 1) * hd];
        for (p, &a) in w[j * ld..j * ld + n].iter().enumerate() {
            axpy(o, a, &v[p * stride..p * stride + hd]);
        }
    }
}

pub fn key_dots_f16(q: &[f32], g: usize, k: &[f16], stride: usize, out: &mut [f32], ld: usize) {
    key_dots_with(q, g, k, stride, out, ld, dot_f16)
}

pub fn value_sum_f16(out: &mut [f32], g: usize, w: &[f32], v: &[f16], stride: usize) {
    value_sum_with(out, g, w, v, stride, axpy_f16)
}
