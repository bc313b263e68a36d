//! The shared conformance suite: every kernel table is checked against the
//! plain reference loops in `quant/*` on random and edge inputs.
//!
//! Float kernels may sum in another order than the reference, so results are
//! compared within `TOL` relative to the sum of absolute products (the scale
//! that bounds reordering error).

use half::f16;

use crate::kernels::{Kernels, Packed};
use crate::quant::{self, BlockQ4_0, BlockQ4_1, BlockQ8_0, GgmlType};

const TOL: f32 = 1e-5;

/// xorshift32: a tiny deterministic generator for test inputs.
pub(crate) struct Rng(u32);

impl Rng {
    pub(crate) fn new(seed: u32) -> Self {
        Rng(seed.max(1))
    }
    pub(crate) fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
    /// Uniform in [-1, 1).
    pub(crate) fn f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }
}

fn close(got: f32, want: f32, scale: f32, what: &str, case: usize) {
    let err = (got - want).abs();
    assert!(
        err <= TOL * scale.max(1e-30) + 1e-30,
        "{what} case {case}: got {got}, want {want}, err {err}, scale {scale}"
    );
}

fn inputs(rng: &mut Rng, n: usize, case: usize) -> ([f32; 2048], [f32; 2048]) {
    let mut w = [0.0f32; 2048];
    let mut x = [0.0f32; 2048];
    for i in 0..n {
        (w[i], x[i]) = match case % 4 {
            0 => (rng.f32(), rng.f32()),
            1 => (rng.f32() * 1e4, rng.f32() * 1e-3),
            2 => (0.0, rng.f32()), // zero weights: zero blocks
            _ => (
                if i % 7 == 0 { 65000.0 } else { -rng.f32() },
                rng.f32() * 100.0,
            ),
        };
    }
    (w, x)
}

fn abs_scale(w: &[f32], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(a, b)| (a * b).abs()).sum()
}

/// `w` quantized by format `f` into a row of bytes (the first `.1` bytes).
fn quantized(f: &quant::Format, w: &[f32]) -> ([u8; 4 * 9 * 576], usize) {
    let mut row = [0u8; 4 * 9 * 576];
    let len = w.len() / f.block_len * f.block_bytes;
    (f.quantize)(w, &mut row[..len]);
    (row, len)
}

/// The error scale of a dot of format `f`'s `row` with `x`: per block, the
/// largest weight's magnitude times the sum of |x| over the block, three
/// times over (formats with a minimum, such as Q4_1, sum a scaled part and
/// a minimum part that cancel; each is at most that bound, and their sum
/// is what the kernels round). Float formats: the sum of |products|.
fn block_scale(f: &quant::Format, row: &[u8], x: &[f32]) -> f32 {
    let mut deq = [0.0f32; 2048];
    let n = row.len() / f.block_bytes * f.block_len;
    (f.dequantize)(row, &mut deq[..n]);
    if f.block_len == 1 {
        return abs_scale(&deq[..n], x);
    }
    deq[..n]
        .chunks(f.block_len)
        .zip(x.chunks(f.block_len))
        .map(|(d, xs)| {
            let big = d.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            3.0 * big * xs.iter().map(|v| v.abs()).sum::<f32>()
        })
        .sum()
}

pub(crate) fn check_table(k: &Kernels) {
    let mut rng = Rng::new(0x5eed);
    // Odd lengths exercise the tails of the float kernels; block kernels take
    // whole blocks of 32.
    for case in 0..64 {
        let n_float = [1, 7, 8, 9, 31, 33, 64, 100, 576, 1023][case % 10];
        let (w, x) = inputs(&mut rng, 1024, case);
        let (w, x) = (&w[..n_float], &x[..n_float]);
        close(
            (k.dot_f32)(w, x),
            reference_f32(w, x),
            abs_scale(w, x),
            "dot_f32",
            case,
        );

        let mut h = [f16::ZERO; 1024];
        quant::f16::quantize_row(w, &mut h[..n_float]);
        let h = &h[..n_float];
        let mut hw = [0.0f32; 1024];
        quant::f16::dequantize_row(h, &mut hw[..n_float]);
        close(
            (k.dot_f16)(h, x),
            quant::f16::dot_f32(h, x),
            abs_scale(&hw[..n_float], x),
            "dot_f16",
            case,
        );

        // Every format's row kernel: odd lengths for the float formats,
        // 1 to 32 whole blocks of 32, 1 to 8 super-blocks of 256.
        let (w, x) = inputs(&mut rng, 2048, case);
        for f in &quant::FORMATS {
            let n = match f.block_len {
                1 => n_float,
                32 => [1, 2, 3, 18, 32][case % 5] * 32,
                bl => [1, 2, 3, 5, 8][case % 5] * bl,
            };
            let row = quantized(f, &w[..n]);
            let row = &row.0[..row.1];
            close(
                (k.format(f.ty).dot)(row, &x[..n]),
                (f.dot)(row, &x[..n]),
                block_scale(f, row, &x[..n]),
                f.ty.name(),
                case,
            );
        }
    }
    check_attention_f16(k);
    check_widen(k);
    check_swiglu(k);
    check_geglu(k);
    check_softmax(k);
}

/// `softmax` gives [`crate::math::softmax`]'s values bit for bit (NaN
/// for NaN): odd lengths, one element, huge spreads, infinities and NaN.
pub(crate) fn check_softmax(k: &Kernels) {
    let mut rng = Rng::new(0x50f7_3a00);
    for case in 0..96 {
        let n = [0, 1, 3, 7, 8, 9, 16, 31, 64, 100, 129, 300][case % 12];
        let mut x = [0.0f32; 300];
        for (i, v) in x[..n].iter_mut().enumerate() {
            *v = match (case / 12 + i) % 13 {
                // Close values only: sums of many similar terms, where
                // adding them in another order shows in the last bits.
                _ if case % 4 == 1 => 1.0 + rng.f32() * 0.25,
                0 if case >= 48 => f32::NEG_INFINITY,
                1 if case >= 72 => f32::from_bits(rng.next_u32()), // any bits
                2 => rng.f32() * 300.0,
                _ => rng.f32() * 8.0,
            };
        }
        let mut want = x;
        crate::math::softmax(&mut want[..n]);
        (k.softmax)(&mut x[..n]);
        for i in 0..n {
            let same = x[i].to_bits() == want[i].to_bits() || (x[i].is_nan() && want[i].is_nan());
            assert!(same, "softmax case {case} i {i}: {} vs {}", x[i], want[i]);
        }
    }
}

/// The widening kernels give the reference's f32 weights bit for bit (NaN
/// for NaN).
pub(crate) fn check_widen(k: &Kernels) {
    let mut rng = Rng::new(0x0d0e_0a11);
    for case in 0..16 {
        for f in &quant::FORMATS {
            // Any bytes: NaN, infinite and subnormal scales and halves too.
            let n = match f.block_len {
                1 => [1, 2, 3, 18][case % 4] * 32 + [0, 5][case % 2],
                32 => [1, 2, 3, 18][case % 4] * 32,
                bl => [1, 2, 3, 4][case % 4] * bl,
            };
            let mut row = [0u8; 4 * 1100];
            let len = n / f.block_len * f.block_bytes;
            for b in row[..len].iter_mut() {
                *b = rng.next_u32() as u8;
            }
            let (mut got, mut want) = ([0.0f32; 1100], [0.0f32; 1100]);
            (k.format(f.ty).widen)(&row[..len], &mut got[..n]);
            (f.dequantize)(&row[..len], &mut want[..n]);
            for i in 0..n {
                // A signalling NaN comes back quiet from F16C: still a NaN.
                let same =
                    got[i].to_bits() == want[i].to_bits() || (got[i].is_nan() && want[i].is_nan());
                assert!(
                    same,
                    "{} widen {} case {case} i {i}: {} vs {}",
                    k.name,
                    f.ty.name(),
                    got[i],
                    want[i]
                );
            }
        }
    }
}

/// `swiglu` gives [`crate::math::swiglu`]'s values bit for bit (NaN for
/// NaN) across the whole range, both clamps and odd lengths.
pub(crate) fn check_swiglu(k: &Kernels) {
    check_glu(
        "swiglu",
        k.swiglu,
        crate::math::swiglu,
        0x0005_1110,
        (87.3, -88.3),
    );
}

/// `geglu` gives [`crate::math::geglu`]'s values the same way (its
/// exponent reaches the clamps near ±10).
pub(crate) fn check_geglu(k: &Kernels) {
    check_glu(
        "geglu",
        k.geglu,
        crate::math::geglu,
        0x000e_e1e0,
        (10.0, -12.0),
    );
}

/// A gated unit `f` against its `reference` over random, any-bits,
/// large and clamp-edge gates (`edges`: near the exponent's clamps).
fn check_glu(
    name: &str,
    f: fn(&mut [f32], &[f32]),
    reference: fn(&mut [f32], &[f32]),
    seed: u32,
    (hi, lo): (f32, f32),
) {
    let mut rng = Rng::new(seed);
    for case in 0..64 {
        let n = [1, 7, 8, 9, 64, 100][case % 6];
        let mut g = [0.0f32; 100];
        let mut u = [0.0f32; 100];
        for i in 0..n {
            g[i] = match (case + i) % 9 {
                0 => f32::from_bits(rng.next_u32()), // any bits: NaN, inf, subnormal
                1 => rng.f32() * 200.0,
                2 => hi + rng.f32(),
                3 => lo + rng.f32(),
                _ => rng.f32() * 12.0,
            };
            u[i] = rng.f32() * 4.0;
        }
        let mut want = g;
        reference(&mut want[..n], &u[..n]);
        f(&mut g[..n], &u[..n]);
        for i in 0..n {
            let same = g[i].to_bits() == want[i].to_bits() || (g[i].is_nan() && want[i].is_nan());
            assert!(same, "{name} case {case} i {i}: {} vs {}", g[i], want[i]);
        }
    }
}

/// Attention's strided f16 kernels, for groups of 1 to 5 query heads: every
/// position's score is the table's own `dot_f16` of that row with that
/// query bit for bit, each value sum row is its `axpy_f16` applied position
/// by position bit for bit, and both stay within `TOL` of the scalar
/// reference; score slots past each row's positions are not written, and
/// rows past the end of the cache view are not read.
pub(crate) fn check_attention_f16(k: &Kernels) {
    let mut rng = Rng::new(0x5eed_a77e);
    let r = Kernels::scalar();
    for case in 0..96 {
        let hd = [1, 7, 8, 16, 64, 72, 130][case % 7];
        let stride = hd + [0, 3, 64][case % 3];
        let n = [0, 1, 3, 4, 5, 9, 17, 33][case % 8];
        let g = 1 + case % 5;
        let ld = n + [0, 2][case / 5 % 2];
        let mut cache = [f16::ZERO; 64 * 200];
        let len = (n.max(1) - 1) * stride + hd;
        for h in cache[..len].iter_mut() {
            *h = f16::from_f32(rng.f32() * if case % 5 == 0 { 3e4 } else { 2.0 });
        }
        let cache = &cache[..if n == 0 { 0 } else { len }];
        let mut q = [0.0f32; 5 * 130];
        for v in q[..g * hd].iter_mut() {
            *v = rng.f32();
        }
        let q = &q[..g * hd];
        let qj = |j: usize| &q[j * hd..(j + 1) * hd];

        let mut got = [f32::NAN; 5 * 35];
        let mut want = [0.0f32; 5 * 35];
        (k.key_dots_f16)(q, g, cache, stride, &mut got[..g * ld], ld);
        (r.key_dots_f16)(q, g, cache, stride, &mut want[..g * ld], ld);
        for j in 0..g {
            for p in 0..n {
                let row = &cache[p * stride..p * stride + hd];
                let own = (k.dot_f16)(row, qj(j));
                let at = j * ld + p;
                let what = "key_dots_f16";
                assert_eq!(
                    got[at].to_bits(),
                    own.to_bits(),
                    "{what} case {case} j {j} p {p}"
                );
                let scale: f32 = row
                    .iter()
                    .zip(qj(j))
                    .map(|(a, b)| (a.to_f32() * b).abs())
                    .sum();
                close(got[at], want[at], scale, what, case);
            }
            for p in n..ld {
                assert!(
                    got[j * ld + p].is_nan(),
                    "key_dots_f16 case {case} wrote slot {p}"
                );
            }
        }
        // Rows `ld` apart in an output cut short after the last row's
        // first `m` slots: only `m` positions are scored.
        if n > 1 && g > 1 {
            let m = n / 2;
            let mut s = [f32::NAN; 5 * 35];
            (k.key_dots_f16)(q, g, cache, stride, &mut s[..(g - 1) * ld + m], ld);
            for j in 0..g {
                for p in 0..ld {
                    let at = j * ld + p;
                    let set = p < m;
                    assert_eq!(
                        s[at].is_nan(),
                        !set,
                        "key_dots_f16 case {case} short j {j} p {p}"
                    );
                    if set {
                        assert_eq!(
                            s[at].to_bits(),
                            got[at].to_bits(),
                            "key_dots_f16 case {case}"
                        );
                    }
                }
            }
        }

        let mut w = [0.0f32; 5 * 35];
        for v in w[..g * ld].iter_mut() {
            *v = rng.f32().abs();
        }
        let w = &w[..g * ld];
        let mut got = [0.5f32; 5 * 130];
        let mut own = [0.5f32; 5 * 130];
        let mut want = [0.5f32; 5 * 130];
        (k.value_sum_f16)(&mut got[..g * hd], g, w, cache, stride);
        for j in 0..g {
            for p in 0..n {
                let a = w[j * ld + p];
                let o = &mut own[j * hd..(j + 1) * hd];
                (k.axpy_f16)(o, a, &cache[p * stride..p * stride + hd]);
            }
        }
        (r.value_sum_f16)(&mut want[..g * hd], g, w, cache, stride);
        for j in 0..g {
            for i in 0..hd {
                let at = j * hd + i;
                let what = "value_sum_f16";
                assert_eq!(
                    got[at].to_bits(),
                    own[at].to_bits(),
                    "{what} case {case} j {j} i {i}"
                );
                let scale: f32 = 0.5
                    + (0..n)
                        .map(|p| (w[j * ld + p] * cache[p * stride + i].to_f32()).abs())
                        .sum::<f32>();
                close(got[at], want[at], scale, what, case);
            }
        }
        // A view one row short: the last position is neither scored nor summed.
        if n > 1 {
            let short = &cache[..cache.len() - 1];
            let mut s = [f32::NAN; 5 * 35];
            (k.key_dots_f16)(q, g, short, stride, &mut s[..g * ld], ld);
            for j in 0..g {
                assert!(
                    s[j * ld + n - 1].is_nan(),
                    "key_dots_f16 case {case} read past the view"
                );
            }
            let mut o = [0.0f32; 5 * 130];
            let mut o2 = [0.0f32; 5 * 130];
            (k.value_sum_f16)(&mut o[..g * hd], g, &w[..g * ld], short, stride);
            let mut w2 = [0.0f32; 5 * 35];
            for j in 0..g {
                w2[j * ld..j * ld + n - 1].copy_from_slice(&w[j * ld..j * ld + n - 1]);
            }
            (k.value_sum_f16)(&mut o2[..g * hd], g, &w2[..g * ld], cache, stride);
            assert_eq!(
                o[..g * hd],
                o2[..g * hd],
                "value_sum_f16 case {case} read past the view"
            );
        }
    }
}

/// The multi-row kernels give each row's dot (within `TOL`), for row counts
/// around the four-row step and every storage type; the f32 matrix product
/// gives each (row, token) dot for tiles of every shape.
pub(crate) fn check_rows(k: &Kernels) {
    let mut rng = Rng::new(0xbeef);
    for case in 0..24 {
        let rows = [1, 2, 3, 4, 5, 7, 8, 9][case % 8];
        // Whole super-blocks of 256 in cases 4 and 5 of every 6.
        let nb = [1, 2, 3, 18, 8, 16][case % 6];
        let cols = nb * 32;
        let mut wf = [0.0f32; 9 * 576];
        let (_, x) = inputs(&mut rng, 1024, case);
        for v in wf.iter_mut() {
            *v = rng.f32() * if case % 3 == 0 { 1e3 } else { 1.0 };
        }
        let wf = &wf[..rows * cols];
        let x = &x[..cols];
        let mut out = [0.0f32; 9];

        // Every format's rows against f32 activations (through the
        // table's several-row kernel, or its dot row by row).
        for f in quant::FORMATS.iter().filter(|f| cols % f.block_len == 0) {
            let all = quantized(f, wf);
            let rb = cols / f.block_len * f.block_bytes;
            let fk = k.format(f.ty);
            let matrix = &all.0[..rows * rb];
            match fk.mv {
                Some(mv) => mv(matrix, x, &mut out[..rows]),
                None => {
                    for (o, row) in out.iter_mut().zip(matrix.chunks_exact(rb)) {
                        *o = (fk.dot)(row, x);
                    }
                }
            }
            for (o, row) in out.iter().zip(matrix.chunks_exact(rb)) {
                close(
                    *o,
                    (f.dot)(row, x),
                    block_scale(f, row, x),
                    f.ty.name(),
                    case,
                );
            }
        }
        // Odd f32 lengths: tails.
        let odd = cols - 3;
        let mut wo = [0.0f32; 9 * 576];
        for r in 0..rows {
            wo[r * odd..(r + 1) * odd].copy_from_slice(&wf[r * cols..r * cols + odd]);
        }
        let mv_f32 = k
            .format(GgmlType::F32)
            .mv
            .expect("every table has an f32 matvec");
        mv_f32(
            quant::as_bytes(&wo[..rows * odd]),
            &x[..odd],
            &mut out[..rows],
        );
        for r in 0..rows {
            let d = &wo[r * odd..(r + 1) * odd];
            let xo = &x[..odd];
            close(
                out[r],
                reference_f32(d, xo),
                abs_scale(d, xo),
                "mv_f32 tail",
                case,
            );
        }

        // The f32 product: up to 9 rows by up to 7 tokens, odd lengths too.
        let n = 1 + case % 7;
        let cols = [5, 8, 16, 33, 64, 100][case % 6];
        let mut xs = [0.0f32; 7 * 100];
        for v in xs.iter_mut() {
            *v = rng.f32();
        }
        let mut w = [0.0f32; 9 * 100];
        for v in w.iter_mut() {
            *v = rng.f32();
        }
        let w = &w[..rows * cols];
        let xs = &xs[..n * cols];
        let mut out = [f32::NAN; 9 * 7];
        (k.gemm_f32)(w, xs, cols, &mut out[..n * rows]);
        for t in 0..n {
            for r in 0..rows {
                let (a, b) = (&w[r * cols..(r + 1) * cols], &xs[t * cols..(t + 1) * cols]);
                close(
                    out[t * rows + r],
                    reference_f32(a, b),
                    abs_scale(a, b),
                    "gemm_f32",
                    case,
                );
            }
        }
        // The same product with the tokens transposed (the scalar kernel,
        // and the table's where it has one), past a vector of tokens too (up
        // to 70: masked lanes, several token groups).
        let n = [1, 3, 16, 17, 33, 64, 70][case % 7];
        // Past a pass of columns too (the AVX-512 kernel takes 128 at a
        // time), with the tokens `ld` apart: packed, or as `transpose` pads.
        let cols = [5, 33, 100, 130, 300][case % 5];
        let ld = if case % 2 == 0 { n } else { super::xt_ld(n) };
        let mut w = [0.0f32; 9 * 300];
        let mut xt = [0.0f32; 80 * 300];
        for v in w.iter_mut().chain(xt.iter_mut()) {
            *v = rng.f32();
        }
        let (w, xt) = (&w[..rows * cols], &xt[..(cols - 1) * ld + n]);
        let shape = super::XtShape { cols, n, ld };
        let mut want = [f32::NAN; 9 * 70];
        super::scalar::gemm_xt(w, xt, shape, &mut want[..rows * n]);
        let mut got = want;
        if let Some(gemm_xt) = k.gemm_xt {
            got = [f32::NAN; 9 * 70];
            gemm_xt(w, xt, shape, &mut got[..rows * n]);
        }
        for t in 0..n {
            let x: [f32; 300] =
                core::array::from_fn(|c| if c < cols { xt[c * ld + t] } else { 0.0 });
            for r in 0..rows {
                let (a, b) = (&w[r * cols..(r + 1) * cols], &x[..cols]);
                let (scale, exact) = (abs_scale(a, b), reference_f32(a, b));
                close(want[r * n + t], exact, scale, "scalar gemm_xt", case);
                close(got[r * n + t], exact, scale, "gemm_xt", case);
            }
        }
    }
}

/// The 16-bit-activation kernels give the scalar reference's integer dots
/// (within float reordering), on random, outlier and zero blocks.
pub(crate) fn check_q16(k: &Kernels) {
    use crate::quant::q16::{self, BlockQ16};
    let Some(fast) = k.q16 else { return };
    let mut rng = Rng::new(0x0016);
    // The quantizer matches the reference bit for bit, edge values included.
    for case in 0..40 {
        let mut x = [0.0f32; 96];
        for v in x.iter_mut() {
            *v = rng.f32() * [1.0, 1e-3, 1e30, 1e-40][case % 4];
        }
        match case % 10 {
            1 => x[5] = f32::NAN,
            2 => x[40] = f32::INFINITY,
            3 => x[..32].fill(0.0),
            4 => x[70] = -f32::MAX,
            5 => x[33] = -0.0,
            6 => x[64..].fill(f32::NAN),
            _ => {}
        }
        let (mut a, mut b) = ([BlockQ16::ZERO; 3], [BlockQ16::ZERO; 3]);
        (fast.quantize)(&x, &mut a);
        q16::quantize_row(&x, &mut b);
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert!(
                p.qs == q.qs
                    && p.isum == q.isum
                    && p.d.to_bits() == q.d.to_bits()
                    && p.sum.to_bits() == q.sum.to_bits(),
                "{} quantize case {case} block {i}: {p:?} vs {q:?}",
                k.name
            );
        }
    }
    for case in 0..24 {
        let rows = [1, 2, 3, 4, 5, 7, 8, 9][case % 8];
        // Whole super-blocks of 256 in cases 4 and 5 of every 6.
        let nb = [1, 2, 3, 18, 8, 16][case % 6];
        let cols = nb * 32;
        let mut wf = [0.0f32; 9 * 576];
        for v in wf.iter_mut() {
            *v = rng.f32() * if case % 3 == 0 { 1e3 } else { 1.0 };
        }
        let wf = &wf[..rows * cols];
        let (_, mut x) = inputs(&mut rng, 1024, case);
        if case % 5 == 1 {
            x[3] = 5e3; // an outlier feature
        }
        if case % 5 == 2 {
            x[..32].fill(0.0); // a zero block
        }
        let mut xq = [BlockQ16::ZERO; 18];
        q16::quantize_row(&x[..cols], &mut xq[..nb]);
        let xq = &xq[..nb];
        // Every format with a 16-bit kernel on this table, against the
        // scalar one's: the error scale is the dot's with the activations as
        // quantized (each within half a step of its float).
        let mut xs = [0.0f32; 18 * 32];
        for (b, o) in xq.iter().zip(xs.chunks_exact_mut(32)) {
            for (q, v) in b.qs.iter().zip(o) {
                *v = *q as f32 * b.d;
            }
        }
        let xs = &xs[..cols];
        for f in quant::FORMATS.iter().filter(|f| cols % f.block_len == 0) {
            let (Some(got_k), Some(want_k)) =
                (k.format(f.ty).q16, Kernels::scalar_q16().format(f.ty).q16)
            else {
                continue;
            };
            let all = quantized(f, wf);
            let rb = cols / f.block_len * f.block_bytes;
            let (mut got, mut want) = ([0.0f32; 9], [0.0f32; 9]);
            got_k(&all.0[..rows * rb], xq, 1, &mut got[..rows]);
            want_k(&all.0[..rows * rb], xq, 1, &mut want[..rows]);
            for r in 0..rows {
                let row = &all.0[r * rb..(r + 1) * rb];
                let what = f.ty.name();
                close(got[r], want[r], block_scale(f, row, xs), what, case);
            }
        }
    }
}

/// The packed Q8_0 kernel ([`crate::kernels::Q16Kernels::q8_0x8`]) gives
/// every row, bit for bit, the reference dot of the row as the file stores
/// it, for 1 to 9 tokens, any output stride, extreme quants and scales.
pub(crate) fn check_q8_0x8(k: &Kernels) {
    use crate::quant::BlockQ8_0x8;
    let Some(kernel) = k.q16.and_then(|q| q.q8_0x8) else {
        return;
    };
    check_x8(
        k.name,
        "q8_0x8",
        0x0808,
        1,
        (BlockQ8_0::ZERO, BlockQ8_0x8::ZERO),
        |rng, w, case| fill_q8_0_rows(rng, w, case % 4 == 1),
        (quant::q8_0::pack_rows_x8, BlockQ8_0x8::row),
        kernel,
        quant::q16::dot_q8_0_q16,
    );
}

/// The packed Q4_1 decode kernel gives the reference dot bit for bit (the
/// packs round-trip to the file's blocks), on random blocks, extreme
/// nibbles and activations, zero scales and special minimums.
pub(crate) fn check_q4_1x8(k: &Kernels) {
    use crate::quant::BlockQ4_1x8;
    let Some(kernel) = k.q16.and_then(|q| q.q4_1x8) else {
        return;
    };
    let fill = |rng: &mut Rng, w: &mut [BlockQ4_1], case: usize| {
        for (i, b) in w.iter_mut().enumerate() {
            b.d = f16::from_f32(rng.f32() * 0.1).to_le_bytes();
            b.m = f16::from_f32(rng.f32() * -0.5).to_le_bytes();
            b.qs = core::array::from_fn(|_| (rng.f32().to_bits() >> 7) as u8);
            match (case % 4, i % 5) {
                (1, _) => b.qs = [0xff; 16],
                (2, 0) => b.d = [0; 2],
                (2, 1) => b.m = f16::INFINITY.to_le_bytes(),
                (3, 2) => b.m = [0; 2],
                _ => {}
            }
        }
    };
    check_x8(
        k.name,
        "q4_1x8",
        0x0418,
        1,
        (BlockQ4_1::ZERO, BlockQ4_1x8::ZERO),
        fill,
        (quant::q4_1::pack_rows_x8, BlockQ4_1x8::row),
        kernel,
        quant::q16::dot_q4_1_q16,
    );
}

/// The packed Q4_K decode kernel gives the reference dot bit for bit (the
/// packs round-trip to the file's blocks), on random super-blocks, extreme
/// nibbles, scales and minimums, zero and infinite super-block scales.
pub(crate) fn check_q4_kx8(k: &Kernels) {
    use crate::quant::{BlockQ4K, BlockQ4Kx8};
    let Some(kernel) = k.q16.and_then(|q| q.q4_kx8) else {
        return;
    };
    let fill = |rng: &mut Rng, w: &mut [BlockQ4K], case: usize| {
        for (i, b) in w.iter_mut().enumerate() {
            b.d = f16::from_f32(rng.f32() * 0.01).to_le_bytes();
            b.dmin = f16::from_f32(rng.f32() * 0.05).to_le_bytes();
            b.scales = core::array::from_fn(|_| (rng.f32().to_bits() >> 7) as u8);
            b.qs = core::array::from_fn(|_| (rng.f32().to_bits() >> 9) as u8);
            match (case % 4, i % 5) {
                (1, _) => (b.qs, b.scales) = ([0xff; 128], [0xff; 12]),
                (2, 0) => b.d = [0; 2],
                (2, 1) => b.dmin = f16::INFINITY.to_le_bytes(),
                (3, 2) => b.d = f16::from_f32(6e-8).to_le_bytes(),
                _ => {}
            }
        }
    };
    check_x8(
        k.name,
        "q4_kx8",
        0x04c8,
        8,
        (BlockQ4K::ZERO, BlockQ4Kx8::ZERO),
        fill,
        (quant::q4_k::pack_rows_x8, BlockQ4Kx8::row),
        kernel,
        quant::q16::dot_scale_min_q16::<BlockQ4K>,
    );
}

/// The packed Q6_K decode kernel gives the reference dot bit for bit (the
/// packs round-trip to the file's blocks), on random super-blocks, extreme
/// quants and scales, zero, subnormal and infinite super-block scales.
pub(crate) fn check_q6_kx8(k: &Kernels) {
    use crate::quant::{BlockQ6K, BlockQ6Kx8};
    let Some(kernel) = k.q16.and_then(|q| q.q6_kx8) else {
        return;
    };
    let fill = |rng: &mut Rng, w: &mut [BlockQ6K], case: usize| {
        for (i, b) in w.iter_mut().enumerate() {
            b.d = f16::from_f32(rng.f32() * 0.01).to_le_bytes();
            b.scales = core::array::from_fn(|_| (rng.f32().to_bits() >> 5) as i8);
            b.ql = core::array::from_fn(|_| (rng.f32().to_bits() >> 9) as u8);
            b.qh = core::array::from_fn(|_| (rng.f32().to_bits() >> 11) as u8);
            match (case % 4, i % 5) {
                // Every quant 0 (−32 after the offset) and every scale −128.
                (1, _) => (b.ql, b.qh, b.scales) = ([0; 128], [0; 64], [-128; 16]),
                (2, 0) => b.d = [0; 2],
                (2, 1) => b.d = f16::INFINITY.to_le_bytes(),
                (3, 2) => b.d = f16::from_f32(6e-8).to_le_bytes(),
                _ => {}
            }
        }
    };
    check_x8(
        k.name,
        "q6_kx8",
        0x06c8,
        8,
        (BlockQ6K::ZERO, BlockQ6Kx8::ZERO),
        fill,
        (quant::q6_k::pack_rows_x8, BlockQ6Kx8::row),
        kernel,
        quant::q16::dot_q6_k_q16,
    );
}

/// The packed Q5_0 decode kernel gives the reference dot bit for bit (the
/// packs round-trip to the file's blocks), on random blocks, every quant at
/// either end, zero, subnormal and infinite scales.
pub(crate) fn check_q5_0x8(k: &Kernels) {
    use crate::quant::{BlockQ5_0, BlockQ5_0x8};
    let Some(kernel) = k.q16.and_then(|q| q.q5_0x8) else {
        return;
    };
    let fill = |rng: &mut Rng, w: &mut [BlockQ5_0], case: usize| {
        for (i, b) in w.iter_mut().enumerate() {
            b.d = f16::from_f32(rng.f32() * 0.1).to_le_bytes();
            b.qh = rng.f32().to_bits().to_le_bytes();
            b.qs = core::array::from_fn(|_| (rng.f32().to_bits() >> 7) as u8);
            match (case % 4, i % 5) {
                (1, 3) => (b.qs, b.qh) = ([0; 16], [0; 4]),
                (1, _) => (b.qs, b.qh) = ([0xff; 16], [0xff; 4]),
                (2, 0) => b.d = [0; 2],
                (2, 1) => b.d = f16::INFINITY.to_le_bytes(),
                (3, 2) => b.d = f16::from_f32(6e-8).to_le_bytes(),
                _ => {}
            }
        }
    };
    check_x8(
        k.name,
        "q5_0x8",
        0x0508,
        1,
        (BlockQ5_0::ZERO, BlockQ5_0x8::ZERO),
        fill,
        (quant::q5_0::pack_rows_x8, BlockQ5_0x8::row),
        kernel,
        quant::q16::dot_q5_0_q16,
    );
}

/// A pack writer (`pack_rows_x8`) and its round trip (`row`).
type PackFns<B, P> = (fn(&[B], usize, &mut [P]) -> usize, fn(&P, usize) -> B);

/// A packed decode kernel against its reference dot, bit for bit: 1 to 3
/// groups of eight rows, 1 to 18 blocks, 1 to 9 tokens (one with a zero
/// block, one with extreme quants), output rows `ld` apart; the packs
/// round-trip to the file's blocks, and nothing is written between one
/// token's rows and the next's.
#[allow(clippy::too_many_arguments)]
fn check_x8<B: Copy + PartialEq + core::fmt::Debug, P: Copy>(
    table: &str,
    what: &str,
    seed: u32,
    per: usize,
    (zero, zero_pack): (B, P),
    fill: impl Fn(&mut Rng, &mut [B], usize),
    (pack, row): PackFns<B, P>,
    kernel: fn(&[P], &[crate::quant::BlockQ16], usize, &mut [f32], usize),
    dot: fn(&[B], &[crate::quant::BlockQ16]) -> f32,
) {
    use crate::quant::q16::{self, BlockQ16};
    let mut rng = Rng::new(seed);
    for case in 0..27 {
        let groups = [1, 2, 3][case % 3];
        // Weight blocks a row; each spans `per` activation blocks.
        let nb = if per == 1 { [1, 2, 18] } else { [1, 2, 3] }[case / 3 % 3];
        let nx = nb * per;
        let n = 1 + case % 9;
        let rows = 8 * groups;
        let ld = rows + (case % 4) * 3;
        let mut w = [zero; 24 * 18];
        let w = &mut w[..rows * nb];
        fill(&mut rng, w, case);
        let mut p = [zero_pack; 3 * 18];
        let p = &mut p[..groups * nb];
        assert_eq!(pack(w, nb, p), groups);
        let mut xq = [BlockQ16::ZERO; 9 * 24];
        let xq = &mut xq[..n * nx];
        for (t, xb) in xq.chunks_exact_mut(nx).enumerate() {
            let mut x = [0.0f32; 768];
            for v in x.iter_mut() {
                *v = rng.f32() * (1 + t) as f32;
            }
            if t == 2 {
                x[..32].fill(0.0);
            }
            q16::quantize_row(&x[..nx * 32], xb);
            if case % 4 == 1 && t == 1 {
                for b in xb.iter_mut() {
                    b.qs = core::array::from_fn(|i| [-32767, 32767][i % 2]);
                }
            }
        }
        let mut out = [f32::NAN; 9 * 40];
        kernel(p, xq, n, &mut out, ld);
        for (g, r) in (0..groups).flat_map(|g| (0..8).map(move |j| (g, j))) {
            let file_row = &w[(8 * g + r) * nb..(8 * g + r + 1) * nb];
            for b in 0..nb {
                assert_eq!(
                    row(&p[g * nb + b], r),
                    file_row[b],
                    "{what} pack round trip"
                );
            }
            for t in 0..n {
                let want = dot(file_row, &xq[t * nx..(t + 1) * nx]);
                let got = out[t * ld + 8 * g + r];
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "{table} {what} case {case} n {n} token {t} row {}: {got} vs {want}",
                    8 * g + r
                );
            }
        }
        // Nothing is written between rows and the next token's.
        for t in 0..n.saturating_sub(1) {
            assert!(out[t * ld + rows..(t + 1) * ld].iter().all(|v| v.is_nan()));
        }
    }
}

/// Q8_0 blocks for the packed-kernel checks: scales of three magnitudes in
/// turn, random quants or (with `extreme`) every product at its largest
/// magnitude.
fn fill_q8_0_rows(rng: &mut Rng, w: &mut [BlockQ8_0], extreme: bool) {
    for (i, b) in w.iter_mut().enumerate() {
        let d = rng.f32() * [1e-3, 1.0, 6e4][i % 3];
        b.d = crate::quant::f32_to_f16_bits(d);
        for q in b.qs.iter_mut() {
            *q = if extreme {
                [-128, 127][i % 2]
            } else {
                (rng.f32() * 127.0) as i8
            };
        }
    }
}

/// A table's four-row int8 kernel ([`crate::kernels::Int8Kernels::q8_0x4`]) against the
/// plain rows' reference, bit for bit: directly over whole groups, and
/// through [`Kernels::matmul_part_as`] on row ranges that start and end
/// inside groups (those rows go through the plain kernel).
pub(crate) fn check_q8_0x4(k: &Kernels) {
    use crate::kernels::{Arith, Matrix, RowData};
    use crate::parallel::TokenRows;
    use crate::quant::BlockQ8_0x4;
    let Some(kernel) = k.int8.and_then(|i| i.q8_0x4) else {
        return;
    };
    const ROWS: usize = 23;
    let mut rng = Rng::new(0x0404);
    for case in 0..12 {
        let nb = [1, 2, 3, 18][case % 4];
        let mut w = [BlockQ8_0::ZERO; ROWS * 18];
        let w = &mut w[..ROWS * nb];
        fill_q8_0_rows(&mut rng, w, case % 3 == 1);
        let mut p = [BlockQ8_0x4::ZERO; ROWS / 4 * 18];
        let p = &mut p[..ROWS / 4 * nb];
        assert_eq!(quant::q8_0::pack_rows_x4(w, nb, p), ROWS / 4);
        let mut x = [0.0f32; 18 * 32];
        for v in x.iter_mut() {
            *v = rng.f32() * (1 + case) as f32;
        }
        if case % 3 == 2 {
            x[..32].fill(0.0);
        }
        let x = &x[..nb * 32];
        let mut xq = [BlockQ8_0::ZERO; 18];
        let xq = &mut xq[..nb];
        quant::q8_0::quantize_row(x, xq);
        let mut want = [0.0f32; ROWS];
        crate::kernels::scalar::matvec_q8_0_q8_0(w, xq, &mut want);
        let mut got = [f32::NAN; ROWS];
        kernel(p, xq, &mut got[..ROWS / 4 * 4]);
        for r in 0..ROWS / 4 * 4 {
            assert_eq!(p[r / 4 * nb].row(r % 4), w[r * nb], "pack round trip");
            assert!(
                got[r].to_bits() == want[r].to_bits(),
                "{} q8_0x4 case {case} row {r}: {} vs {}",
                k.name,
                got[r],
                want[r]
            );
        }
        let m = Matrix {
            rows: ROWS,
            cols: nb * 32,
            data: RowData::blocks(GgmlType::Q8_0, w),
            packed: Packed::None,
            pieces: crate::kernels::Pieces::NONE,
        };
        let packed = m.with_packed4(p).unwrap();
        let mut scratch = [0.0f32; Kernels::scratch_len_for(18 * 32, 1, 1)];
        for (r0, r1) in [(0, ROWS), (1, 22), (5, 7), (4, 8), (9, 9)] {
            let mut out = [f32::NAN; ROWS];
            let mut part = TokenRows::new(&mut out, 1, ROWS, r0, r1).unwrap();
            k.matmul_part_as(&packed, x, &mut part, &mut scratch, Arith::Decode)
                .unwrap();
            for r in r0..r1 {
                assert!(
                    out[r].to_bits() == want[r].to_bits(),
                    "{} packed4 rows {r0}..{r1} row {r}: {} vs {}",
                    k.name,
                    out[r],
                    want[r]
                );
            }
        }
    }
}

fn reference_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Every token of a matmul gets, bit for bit, what it gets alone, in both
/// arithmetics and for every storage type: batching sequences together
/// (continuous batching) never changes a sequence's results. Row ranges
/// that cross the decode tile and group sizes up to 9 tokens are covered.
pub(crate) fn check_batch_invariance(k: &Kernels) {
    use crate::kernels::{Arith, Matrix, RowData};
    use crate::parallel::TokenRows;
    const ROWS: usize = 77;
    const COLS: usize = 96;
    const N: usize = 9;
    let mut rng = Rng::new(0x1b);
    let wf: [f32; ROWS * COLS] = core::array::from_fn(|_| rng.f32());
    let mut x = [0.0f32; N * COLS];
    for (i, v) in x.iter_mut().enumerate() {
        // Tokens of different magnitudes, one with an outlier, one all zero.
        let t = i / COLS;
        *v = match t {
            3 => 0.0,
            _ => rng.f32() * (1 + t * 7) as f32,
        };
    }
    x[5 * COLS + 7] = 4e3;
    let mut h = [f16::ZERO; ROWS * COLS];
    quant::f16::quantize_row(&wf, &mut h);
    let mut b8 = [BlockQ8_0::ZERO; ROWS * 3];
    quant::q8_0::quantize_row(&wf, &mut b8);
    let mut b40 = [BlockQ4_0::ZERO; ROWS * 3];
    quant::q4_0::quantize_row(&wf, &mut b40);
    let mut b41 = [BlockQ4_1::ZERO; ROWS * 3];
    quant::q4_1::quantize_row(&wf, &mut b41);
    let datas = [
        RowData::f32(&wf),
        RowData::f16(&h),
        RowData::blocks(GgmlType::Q8_0, &b8),
        RowData::blocks(GgmlType::Q4_0, &b40),
        RowData::blocks(GgmlType::Q4_1, &b41),
    ];
    let mut scratch = [0.0f32; Kernels::scratch_len_for(COLS, N, N)];
    // The Q8_0 rows again, interleaved in eights (9 groups and 5 rows
    // outside them) for tables with a packed decode kernel.
    let mut p8 = [crate::quant::BlockQ8_0x8::ZERO; ROWS / 8 * 3];
    assert_eq!(quant::q8_0::pack_rows_x8(&b8, 3, &mut p8), ROWS / 8);
    let plain = |data| Matrix {
        rows: ROWS,
        cols: COLS,
        data,
        packed: Packed::None,
        pieces: crate::kernels::Pieces::NONE,
    };
    let packed = plain(RowData::blocks(GgmlType::Q8_0, &b8))
        .with_packed(&p8)
        .unwrap();
    if k.batches_packed(&packed) {
        // A packed Q8_0 matrix takes the decode arithmetic for batches too.
        let (mut a, mut b) = ([0.0f32; N * ROWS], [0.0f32; N * ROWS]);
        for (out, arith) in [(&mut a, Arith::Decode), (&mut b, Arith::Batch)] {
            let mut part = TokenRows::new(out, N, ROWS, 0, ROWS).unwrap();
            k.matmul_part_as(&packed, &x, &mut part, &mut scratch, arith)
                .unwrap();
        }
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
    }
    for m in datas.map(plain).into_iter().chain([packed]) {
        for arith in [Arith::Decode, Arith::Batch] {
            for (r0, r1) in [(0, ROWS), (5, 70), (33, 34)] {
                let mut alone = [0.0f32; N * ROWS];
                for t in 0..N {
                    let o = &mut alone[t * ROWS..(t + 1) * ROWS];
                    let mut part = TokenRows::new(o, 1, ROWS, r0, r1).unwrap();
                    k.matmul_part_as(&m, &x[t * COLS..], &mut part, &mut scratch, arith)
                        .unwrap();
                }
                for n in [2, 3, 4, 5, 9] {
                    let mut got = [0.0f32; N * ROWS];
                    let mut part = TokenRows::new(&mut got, n, ROWS, r0, r1).unwrap();
                    k.matmul_part_as(&m, &x, &mut part, &mut scratch, arith)
                        .unwrap();
                    for t in 0..n {
                        for r in r0..r1 {
                            let (g, a) = (got[t * ROWS + r], alone[t * ROWS + r]);
                            assert!(
                                g.to_bits() == a.to_bits(),
                                "{} {:?} {:?} n {n} token {t} row {r}: {g} batched, {a} alone",
                                k.name,
                                m.ty(),
                                arith
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn scalar_table_matches_reference() {
    check_table(&Kernels::scalar());
    check_rows(&Kernels::scalar());
}

#[test]
fn detected_table_matches_reference() {
    check_table(&Kernels::detect());
    check_rows(&Kernels::detect());
    check_q16(&Kernels::detect());
    check_q8_0x8(&Kernels::detect());
    check_q4_1x8(&Kernels::detect());
    check_q4_kx8(&Kernels::detect());
    check_q6_kx8(&Kernels::detect());
    check_q5_0x8(&Kernels::detect());
    if let Some(k) = Kernels::avx2() {
        check_q8_0x8(&k);
        check_q4_1x8(&k);
        check_q4_kx8(&k);
        check_q6_kx8(&k);
        check_q5_0x8(&k);
    }
}

#[test]
fn four_row_packs_match_the_int8_reference() {
    check_q8_0x4(&Kernels::scalar_int8());
}

#[test]
fn every_table_is_batch_invariant() {
    for k in [
        Kernels::scalar(),
        Kernels::scalar_q16(),
        Kernels::scalar_int8(),
        Kernels::detect(),
    ] {
        check_batch_invariance(&k);
    }
    if let Some(k) = Kernels::avx2() {
        check_batch_invariance(&k);
    }
}

/// 16-bit activations stay close to the f32 dot: within a few steps of the
/// block scale per block (here on inputs without outliers).
#[test]
fn q16_dots_track_the_f32_dots() {
    use crate::quant::q16::{self, BlockQ16};
    let mut rng = Rng::new(3);
    let w: [f32; 576] = core::array::from_fn(|_| rng.f32());
    let x: [f32; 576] = core::array::from_fn(|_| rng.f32());
    let mut b8 = [BlockQ8_0::ZERO; 18];
    quant::q8_0::quantize_row(&w, &mut b8);
    let mut xq = [BlockQ16::ZERO; 18];
    q16::quantize_row(&x, &mut xq);
    let exact = quant::q8_0::dot_f32(&b8, &x);
    let got = q16::dot_q8_0_q16(&b8, &xq);
    // Each activation is off by at most d/2 (d = max|x| / 32767 per block).
    let bound: f32 = b8
        .iter()
        .zip(&xq)
        .map(|(b, q)| 0.5 * q.d * b.d() * b.qs.iter().map(|&v| (v as f32).abs()).sum::<f32>())
        .sum();
    assert!(
        (got - exact).abs() <= bound * 1.01 + 1e-6,
        "{got} vs {exact}, bound {bound}"
    );
}

/// A batched matmul (dequantized tiles times every token) gives the same
/// rows as one token at a time, for every storage type, with row ranges.
#[test]
fn batched_matmul_matches_one_token_at_a_time() {
    use crate::kernels::{Matrix, RowData};
    for k in [Kernels::scalar(), Kernels::scalar_q16(), Kernels::detect()] {
        let (rows, cols, n) = (37usize, 64usize, 5usize);
        let mut rng = Rng::new(7);
        let wf: [f32; 37 * 64] = core::array::from_fn(|_| rng.f32());
        let x: [f32; 5 * 64] = core::array::from_fn(|_| rng.f32());
        let mut h = [f16::ZERO; 37 * 64];
        quant::f16::quantize_row(&wf, &mut h);
        let mut b8 = [BlockQ8_0::ZERO; 37 * 2];
        quant::q8_0::quantize_row(&wf, &mut b8);
        let mut b40 = [BlockQ4_0::ZERO; 37 * 2];
        quant::q4_0::quantize_row(&wf, &mut b40);
        let mut b41 = [BlockQ4_1::ZERO; 37 * 2];
        quant::q4_1::quantize_row(&wf, &mut b41);
        let datas = [
            RowData::f32(&wf),
            RowData::f16(&h),
            RowData::blocks(GgmlType::Q8_0, &b8),
            RowData::blocks(GgmlType::Q4_0, &b40),
            RowData::blocks(GgmlType::Q4_1, &b41),
        ];
        let mut scratch = [0.0f32; Kernels::scratch_len(64, 5)];
        for data in datas {
            let m = Matrix {
                rows,
                cols,
                data,
                packed: Packed::None,
                pieces: crate::kernels::Pieces::NONE,
            };
            let mut all = [0.0f32; 5 * 37];
            k.matmul(&m, &x, n, &mut all, &mut scratch).unwrap();
            // Batched rows are the f32 dots; one token at a time uses the
            // table's decode arithmetic, held to its scalar reference.
            let mut one = [0.0f32; 37];
            let mut want = [0.0f32; 37];
            for t in 0..n {
                let xt = &x[t * cols..(t + 1) * cols];
                Kernels::scalar()
                    .matmul(&m, xt, 1, &mut want, &mut scratch)
                    .unwrap();
                for r in 0..rows {
                    let (a, b) = (all[t * rows + r], want[r]);
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{} batched t {t} r {r}: {a} vs {b}",
                        k.name
                    );
                }
                k.matmul(&m, xt, 1, &mut one, &mut scratch).unwrap();
                k.reference()
                    .matmul(&m, xt, 1, &mut want, &mut scratch)
                    .unwrap();
                for r in 0..rows {
                    let (a, b) = (one[r], want[r]);
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{} decode t {t} r {r}: {a} vs {b}",
                        k.name
                    );
                }
            }
            let mut part = [f32::NAN; 5 * 37];
            k.matmul_rows(&m, &x, n, &mut part, &mut scratch, 3, 21)
                .unwrap();
            for t in 0..n {
                for r in 0..rows {
                    let v = part[t * rows + r];
                    if (3..21).contains(&r) {
                        assert_eq!(v.to_bits(), all[t * rows + r].to_bits());
                    } else {
                        assert!(v.is_nan());
                    }
                }
            }
            // A short scratch is an error, not a panic.
            assert!(k.matmul(&m, &x, n, &mut all, &mut scratch[..10]).is_err());
        }
    }
}

/// The int8-activation matmul quantizes each token's input to Q8_0 and
/// multiplies it by ggml's integer block dot, for every token of a batch.
#[test]
fn int8_activation_matmul_is_the_reference_dot() {
    use crate::kernels::{Matrix, RowData};
    let (rows, cols, n) = (7usize, 96usize, 3usize);
    let mut rng = Rng::new(99);
    let wf: [f32; 7 * 96] = core::array::from_fn(|_| rng.f32());
    let mut w = [BlockQ8_0::ZERO; 7 * 3];
    quant::q8_0::quantize_row(&wf, &mut w);
    let x: [f32; 3 * 96] = core::array::from_fn(|_| rng.f32() * 4.0);
    let m = Matrix {
        rows,
        cols,
        data: RowData::blocks(GgmlType::Q8_0, &w),
        packed: Packed::None,
        pieces: crate::kernels::Pieces::NONE,
    };
    let mut out = [0.0f32; 3 * 7];
    let mut row = [0.0f32; 96];
    Kernels::scalar_int8()
        .matmul(&m, &x, n, &mut out, &mut row)
        .unwrap();
    for t in 0..n {
        let mut xq = [BlockQ8_0::ZERO; 3];
        quant::q8_0::quantize_row(&x[t * cols..(t + 1) * cols], &mut xq);
        for r in 0..rows {
            let want = quant::q8_0::vec_dot_q8_0_q8_0(&w[r * 3..(r + 1) * 3], &xq);
            assert_eq!(
                out[t * rows + r].to_bits(),
                want.to_bits(),
                "token {t} row {r}"
            );
        }
    }
    // Rows r0..r1 only: the others stay untouched.
    let mut part = [f32::NAN; 3 * 7];
    Kernels::scalar_int8()
        .matmul_rows(&m, &x, n, &mut part, &mut row, 2, 5)
        .unwrap();
    for t in 0..n {
        for r in 0..rows {
            let v = part[t * rows + r];
            if (2..5).contains(&r) {
                assert_eq!(v.to_bits(), out[t * rows + r].to_bits());
            } else {
                assert!(v.is_nan());
            }
        }
    }
}

#[test]
fn transpose_in_blocks_moves_every_element() {
    let src: [f32; 21 * 19] = core::array::from_fn(|i| i as f32);
    for (rows, cols) in [(1, 1), (8, 8), (5, 3), (8, 19), (21, 8), (17, 19), (21, 19)] {
        let ld = super::xt_ld(rows);
        assert!(ld >= rows && (ld / 16) % 2 == 1);
        let mut dst = [f32::NAN; 19 * 48];
        Kernels::scalar().transpose(&src[..rows * cols], rows, cols, &mut dst);
        for c in 0..cols {
            for r in 0..ld {
                let got = dst[c * ld + r];
                if r < rows {
                    assert_eq!(got, src[r * cols + c], "{rows} x {cols}: {r}, {c}");
                } else {
                    assert!(got.is_nan(), "{rows} x {cols}: padding {r}, {c} written");
                }
            }
        }
        assert!(dst[cols * ld..].iter().all(|v| v.is_nan()));
    }
    // Too short an output: nothing is written.
    let mut short = [f32::NAN; 15];
    Kernels::scalar().transpose(&src[..4 * 4], 4, 4, &mut short);
    assert!(short.iter().all(|v| v.is_nan()));
}

/// On a table that takes the tokens transposed, the batched matmul gives the
/// same bits whether the tokens are transposed all at once (shared, as a
/// plan does) or in chunks that fit a worker's scratch, down to one token.
#[test]
fn transposed_batches_equal_in_any_chunks() {
    use crate::kernels::{Arith, Matrix, RowData};
    use crate::parallel::TokenRows;
    let k = Kernels::detect();
    if !k.takes_transposed() {
        return;
    }
    let (rows, cols, n) = (37usize, 96usize, 21usize);
    let mut rng = Rng::new(11);
    let wf: [f32; 37 * 96] = core::array::from_fn(|_| rng.f32());
    let x: [f32; 21 * 96] = core::array::from_fn(|_| rng.f32());
    let mut h = [f16::ZERO; 37 * 96];
    quant::f16::quantize_row(&wf, &mut h);
    for data in [RowData::f32(&wf), RowData::f16(&h)] {
        let m = Matrix {
            rows,
            cols,
            data,
            packed: Packed::None,
            pieces: crate::kernels::Pieces::NONE,
        };
        let mut xt = [0.0f32; 48 * 96];
        k.transpose(&x, n, cols, &mut xt);
        let mut scratch = [0.0f32; 16 * 96 + 16 * 21 + 48 * 96];
        let mut want = [0.0f32; 21 * 37];
        let mut part = TokenRows::new(&mut want, n, rows, 3, rows).unwrap();
        k.matmul_part_xt(&m, &xt, &mut part, &mut scratch).unwrap();
        // Scratch for 1, 2, 5 and all 21 tokens at a time beside a tile.
        for chunk in [1usize, 2, 5, 21] {
            let len = 16 * cols + 16 * chunk + cols * super::xt_ld(chunk);
            let mut got = [0.0f32; 21 * 37];
            let mut part = TokenRows::new(&mut got, n, rows, 3, rows).unwrap();
            k.matmul_part_as(&m, &x, &mut part, &mut scratch[..len], Arith::Batch)
                .unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "chunk {chunk}, element {i}");
            }
        }
    }
}

/// A matrix read through [`Pieces`](crate::kernels::Pieces) (its rows cut
/// into pieces and laid out in another order, packed or as stored) gives
/// every row bit for bit as the matrix itself does, for every storage type
/// and packed form, one token or several, over ranges that cross pieces;
/// and pieces that do not cover the rows exactly, or fall outside their
/// buffer or its alignment, are refused.
#[test]
fn pieces_give_the_same_rows() {
    use crate::kernels::{Arith, Matrix, Piece, RowData};
    use crate::quant::{BlockQ4_1x8, BlockQ8_0x8};
    let (cols, n) = (64usize, 3usize);
    let nb = cols / 32;
    let mut rng = Rng::new(11);
    let wf: [f32; 40 * 64] = core::array::from_fn(|_| rng.f32());
    let x: [f32; 3 * 64] = core::array::from_fn(|_| rng.f32());
    let mut h = [f16::ZERO; 40 * 64];
    quant::f16::quantize_row(&wf, &mut h);
    let mut b8 = [BlockQ8_0::ZERO; 40 * 2];
    quant::q8_0::quantize_row(&wf, &mut b8);
    let mut b40 = [BlockQ4_0::ZERO; 40 * 2];
    quant::q4_0::quantize_row(&wf, &mut b40);
    let mut b41 = [BlockQ4_1::ZERO; 40 * 2];
    quant::q4_1::quantize_row(&wf, &mut b41);
    // 40 rows, and 37: the last piece's rows past its whole groups of
    // eight (here all of them) come from the file's rows.
    for rows in [40usize, 37] {
        let (wf, h) = (&wf[..rows * cols], &h[..rows * cols]);
        let (b8, b40, b41) = (&b8[..rows * nb], &b40[..rows * nb], &b41[..rows * nb]);
        let mut p8 = [BlockQ8_0x8::ZERO; 5 * 2];
        let p8 = &mut p8[..rows / 8 * nb];
        quant::q8_0::pack_rows_x8(b8, nb, p8);
        let mut p41 = [BlockQ4_1x8::ZERO; 5 * 2];
        let p41 = &mut p41[..rows / 8 * nb];
        quant::q4_1::pack_rows_x8(b41, nb, p41);
        let (p8, p41) = (&*p8, &*p41);
        let plain = |data| Matrix {
            rows,
            cols,
            data,
            packed: Packed::None,
            pieces: crate::kernels::Pieces::NONE,
        };
        // (matrix as a whole, whether its pieces are packed)
        let cases = [
            (plain(RowData::f32(wf)), false),
            (plain(RowData::f16(h)), false),
            (plain(RowData::blocks(GgmlType::Q8_0, b8)), false),
            (plain(RowData::blocks(GgmlType::Q4_0, b40)), false),
            (plain(RowData::blocks(GgmlType::Q4_1, b41)), false),
            (
                plain(RowData::blocks(GgmlType::Q8_0, b8))
                    .with_packed(p8)
                    .unwrap(),
                true,
            ),
            (
                plain(RowData::blocks(GgmlType::Q4_1, b41))
                    .with_packed_q4_1(p41)
                    .unwrap(),
                true,
            ),
        ];
        // Rows 0..16, 16..32 and 32..rows, laid out last piece first, each on
        // its own 64 bytes.
        let cuts = [(0usize, 16usize), (16, 32), (32, rows)];
        let mut store = [0.0f32; 40 * 64 + 256];
        let mut scratch = [0.0f32; Kernels::scratch_len(64, 3)];
        for (m, packed) in cases {
            let bytes = quant::as_bytes_mut(&mut store);
            let mut list = [Piece {
                lo: 0,
                rows: 0,
                at: 0,
                packed,
            }; 3];
            let mut at = 0usize;
            for (k, &(lo, hi)) in cuts.iter().enumerate().rev() {
                let src: &[u8] = match (m.ty(), packed) {
                    (_, false) => m.rows_data(lo, hi).unwrap().bytes(),
                    (GgmlType::Q8_0, true) => quant::as_bytes(&p8[lo / 8 * nb..hi / 8 * nb]),
                    (GgmlType::Q4_1, true) => quant::as_bytes(&p41[lo / 8 * nb..hi / 8 * nb]),
                    _ => unreachable!(),
                };
                bytes[at..at + src.len()].copy_from_slice(src);
                list[k] = Piece {
                    lo,
                    rows: hi - lo,
                    at,
                    packed,
                };
                at = (at + src.len()).next_multiple_of(64);
            }
            let bytes = &*bytes;
            let cut = m.with_pieces(bytes, &list).unwrap();
            for k in [Kernels::scalar(), Kernels::scalar_q16(), Kernels::detect()] {
                for arith in [Arith::Decode, Arith::Batch] {
                    for (r0, r1) in [(0, rows), (3, 35), (16, 32), (20, 24)] {
                        let mut want = [f32::NAN; 3 * 40];
                        let mut got = [f32::NAN; 3 * 40];
                        for (mm, out) in [(&m, &mut want), (&cut, &mut got)] {
                            let mut part =
                                crate::parallel::TokenRows::new(out, n, rows, r0, r1).unwrap();
                            k.matmul_part_as(mm, &x, &mut part, &mut scratch, arith)
                                .unwrap();
                        }
                        for i in 0..n * rows {
                            assert_eq!(
                                got[i].to_bits(),
                                want[i].to_bits(),
                                "{} {:?} packed {packed} {arith:?} rows {r0}..{r1} at {i}",
                                k.name,
                                m.ty()
                            );
                        }
                    }
                }
            }
            // What the kernels' choices see: the pieces' form.
            assert_eq!(cut.form().packed8().is_some(), m.packed8().is_some());
            // Pieces that do not cover the rows in order, or do not fit.
            let mut bad = list;
            bad[1].lo = 17;
            assert!(m.with_pieces(bytes, &bad).is_err(), "gap");
            let mut bad = list;
            bad[2].rows = 7;
            assert!(m.with_pieces(bytes, &bad).is_err(), "short");
            let mut bad = list;
            bad[2].rows = 9;
            assert!(m.with_pieces(bytes, &bad).is_err(), "long");
            assert!(m.with_pieces(bytes, &list[..2]).is_err(), "missing");
            assert!(m.with_pieces(bytes, &[]).is_err(), "none");
            let mut bad = list;
            bad[0].at = bytes.len() - 8;
            assert!(m.with_pieces(bytes, &bad).is_err(), "past the buffer");
            bad[0].at = usize::MAX - 4;
            assert!(m.with_pieces(bytes, &bad).is_err(), "overflow");
            if matches!(m.ty(), GgmlType::F32 | GgmlType::F16) {
                // (The block formats are byte arrays: any byte is aligned.)
                let mut bad = list;
                bad[0].at += 1;
                assert!(m.with_pieces(bytes, &bad).is_err(), "misaligned");
            }
            let mut bad = list;
            bad[0].rows = 0;
            assert!(m.with_pieces(bytes, &bad).is_err(), "empty piece");
            if packed {
                let mut odd = [list[0]; 4];
                odd[0].rows = 4;
                odd[1] = Piece {
                    lo: 4,
                    rows: 12,
                    ..list[0]
                };
                odd[2..].copy_from_slice(&list[1..]);
                assert!(m.with_pieces(bytes, &odd).is_err(), "packed off a group");
            }
        }
    }
}

/// Each format's 16-bit dot is its f32 reference dot with the
/// activations as quantized: within float rounding of it.
#[test]
fn scalar_q16_dots_match_the_f32_reference() {
    use crate::quant::q16::{quantize_row, BlockQ16, QK};
    use crate::quant::FORMATS;
    let n = 512;
    let w: [f32; 512] = core::array::from_fn(|i| ((i * 73 % 101) as f32 - 50.0) * 0.013);
    let x: [f32; 512] = core::array::from_fn(|i| ((i * 37 % 89) as f32 - 44.0) * 0.021);
    let mut xq = [BlockQ16::ZERO; 16];
    quantize_row(&x, &mut xq);
    let mut xs = [0.0f32; 512];
    for (b, o) in xq.iter().zip(xs.chunks_exact_mut(QK)) {
        for (q, v) in b.qs.iter().zip(o) {
            *v = *q as f32 * b.d;
        }
    }
    let table = Kernels::scalar_q16();
    for f in FORMATS.iter() {
        let Some(mv) = table.format(f.ty).q16 else {
            continue;
        };
        let mut row = [0u8; 2 * 512];
        let len = n / f.block_len * f.block_bytes;
        (f.quantize)(&w, &mut row[..len]);
        let want = (f.dot)(&row[..len], &xs);
        let mut got = [0.0f32];
        mv(&row[..len], &xq, 1, &mut got);
        let scale: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
        assert!(
            (got[0] - want).abs() <= 1e-5 * scale,
            "{}: {} vs {}",
            f.ty.name(),
            got[0],
            want
        );
    }
}

/// Byte offsets of the f16 scales in one block of `ty` (Q5_0: `d`; Q4_K:
/// `d`, `dmin`; Q6_K: `d`), for the int8-format checks.
fn int8_scale_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q5_0 => &[0],
        GgmlType::Q4_K => &[0, 2],
        _ => &[208],
    }
}

/// The int8-activation references for Q5_0, Q4_K and Q6_K
/// (`scalar::matvec_{q5_0,q4_k,q6_k}_q8_0`) against a float64 dot of the
/// dequantized weights with the dequantized activation blocks, within
/// `TOL` of `Σ (|scaled part| + |minimum part|)·|x|`, over random bytes
/// with ordinary, extreme (±65504, all-ones quants, −128 activations),
/// zero and subnormal scales, and 1, 3, 5 and 7 rows; NaN and infinite
/// scales give values, never a panic. Then [`Kernels::scalar_int8`] sends
/// matrices of those formats through them (quantizing the input to Q8_0),
/// bit for bit, and [`Kernels::scalar`] does not.
#[test]
fn scalar_q8_formats_match_a_float64_dot() {
    use crate::kernels::{Arith, Matrix, RowData};
    use crate::parallel::TokenRows;
    use crate::quant::k_quants::ScaleMinBlock;
    use crate::quant::{BlockQ4K, BlockQ5_0, BlockQ6K};
    const COLS: usize = 512;
    const NB: usize = COLS / 32;
    const MAX_ROWS: usize = 7;
    let int8 = Kernels::scalar_int8();
    let k8 = int8.int8.unwrap();
    for ty in [GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        let f = ty.format();
        let (bb, rb) = (f.block_bytes, COLS / f.block_len * f.block_bytes);
        let mut rng = Rng::new(0x1705 + ty.index() as u32);
        let matvec = |w: &[u8], xq: &[BlockQ8_0], out: &mut [f32]| match ty {
            GgmlType::Q5_0 => (k8.q5_0.unwrap())(quant::blocks::<BlockQ5_0>(w), xq, out),
            GgmlType::Q4_K => (k8.q4_k.unwrap())(quant::blocks::<BlockQ4K>(w), xq, out),
            _ => (k8.q6_k.unwrap())(quant::blocks::<BlockQ6K>(w), xq, out),
        };
        for case in 0..16 {
            let rows = [1, 3, 5, 7][case % 4];
            let kind = case / 4;
            let mut w = [0u8; MAX_ROWS * COLS];
            let w = &mut w[..rows * rb];
            for (i, v) in w.iter_mut().enumerate() {
                *v = match kind {
                    1 => 0xff,                 // every quant and scale at its largest
                    2 if i / bb % 3 == 0 => 0, // zero blocks
                    _ => rng.next_u32() as u8,
                };
            }
            for (i, blk) in w.chunks_exact_mut(bb).enumerate() {
                for (j, &at) in int8_scale_offsets(ty).iter().enumerate() {
                    let bits: u16 = match kind {
                        0 | 2 => u16::from_le_bytes(quant::f32_to_f16_bits(rng.f32() * 0.05)),
                        1 => [0x7bff, 0xfbff][(i + j) % 2],
                        _ => [0x0001, 0x03ff, 0x8200][(i + j) % 3], // subnormal
                    };
                    blk[at..at + 2].copy_from_slice(&bits.to_le_bytes());
                }
            }
            let mut xq = [BlockQ8_0::ZERO; NB];
            for (i, b) in xq.iter_mut().enumerate() {
                b.d = quant::f32_to_f16_bits(match kind {
                    1 => 6e4,
                    _ => rng.f32() * 0.1,
                });
                for q in b.qs.iter_mut() {
                    *q = match kind {
                        1 => [-128, 127][i % 2],
                        2 if i % 4 == 1 => 0,
                        _ => rng.next_u32() as i8,
                    };
                }
            }
            let mut xf = [0.0f32; COLS];
            quant::q8_0::dequantize_row(&xq, &mut xf);
            let mut got = [f32::NAN; MAX_ROWS];
            matvec(w, &xq, &mut got[..rows]);
            for r in 0..rows {
                let row = &w[r * rb..(r + 1) * rb];
                let mut wf = [0.0f32; COLS];
                (f.dequantize)(row, &mut wf);
                let exact: f64 = wf.iter().zip(&xf).map(|(a, b)| *a as f64 * *b as f64).sum();
                // The scaled and minimum parts apart (they cancel in Q4_K).
                let scale: f64 = match ty {
                    GgmlType::Q4_K => {
                        let blocks = quant::blocks::<BlockQ4K>(row);
                        (0..COLS)
                            .map(|e| {
                                let b = &blocks[e / 256];
                                let (d, m) = b.group(e % 256 / 32);
                                let q = b.q(e % 256 / 32, e % 32) as f64;
                                ((d as f64 * q).abs() + (m as f64).abs()) * (xf[e] as f64).abs()
                            })
                            .sum()
                    }
                    _ => wf
                        .iter()
                        .zip(&xf)
                        .map(|(a, b)| (*a as f64 * *b as f64).abs())
                        .sum(),
                };
                let err = (got[r] as f64 - exact).abs();
                assert!(
                    err <= TOL as f64 * scale + 1e-30,
                    "{ty:?} case {case} row {r}: got {}, exact {exact}, err {err}, scale {scale}",
                    got[r]
                );
            }
            // Through the table: the input quantized to Q8_0, then the
            // reference, bit for bit; rows 1..rows only.
            let m = Matrix {
                rows,
                cols: COLS,
                data: RowData::new(ty, w).unwrap(),
                packed: Packed::None,
                pieces: crate::kernels::Pieces::NONE,
            };
            assert!(int8.takes_q8_0(&m) && !Kernels::scalar().takes_q8_0(&m));
            let mut x = [0.0f32; COLS];
            for v in x.iter_mut() {
                *v = rng.f32() * (1 + case) as f32;
            }
            let mut xq2 = [BlockQ8_0::ZERO; NB];
            quant::q8_0::quantize_row(&x, &mut xq2);
            let mut want = [0.0f32; MAX_ROWS];
            matvec(w, &xq2, &mut want[..rows]);
            let mut out = [f32::NAN; MAX_ROWS];
            let mut scratch = [0.0f32; Kernels::scratch_len(COLS, 1)];
            let mut part = TokenRows::new(&mut out[..rows], 1, rows, 1, rows).unwrap();
            int8.matmul_part_as(&m, &x, &mut part, &mut scratch, Arith::Decode)
                .unwrap();
            assert!(out[0].is_nan(), "{ty:?}: row 0 untouched");
            for r in 1..rows {
                assert_eq!(
                    out[r].to_bits(),
                    want[r].to_bits(),
                    "{ty:?} case {case} row {r}"
                );
            }
            // NaN and infinite scales: values, not panics.
            for (i, blk) in w.chunks_exact_mut(bb).enumerate() {
                let at = int8_scale_offsets(ty)[0];
                blk[at..at + 2].copy_from_slice(&[0x7c00u16, 0x7e00][i % 2].to_le_bytes());
            }
            matvec(w, &xq, &mut got[..rows]);
        }
    }
}
