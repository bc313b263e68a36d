//! The shared conformance suite: every kernel table is checked against the
//! plain reference loops in `quant/*` on random and edge inputs.
//!
//! Float kernels may sum in another order than the reference, so results are
//! compared within `TOL` relative to the sum of absolute products (the scale
//! that bounds reordering error).

use half::f16;

use crate::kernels::Kernels;
use crate::quant::{self, BlockQ4_0, BlockQ4_1, BlockQ8_0};

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

fn inputs(rng: &mut Rng, n: usize, case: usize) -> ([f32; 1024], [f32; 1024]) {
    let mut w = [0.0f32; 1024];
    let mut x = [0.0f32; 1024];
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

        let nb = [1, 2, 3, 18, 32][case % 5];
        let n = nb * 32;
        let (w, x) = inputs(&mut rng, 1024, case);
        let (w, x) = (&w[..n], &x[..n]);
        let mut deq = [0.0f32; 1024];

        let mut b8 = [BlockQ8_0::ZERO; 32];
        quant::q8_0::quantize_row(w, &mut b8[..nb]);
        quant::q8_0::dequantize_row(&b8[..nb], &mut deq[..n]);
        close(
            (k.dot_q8_0)(&b8[..nb], x),
            quant::q8_0::dot_f32(&b8[..nb], x),
            abs_scale(&deq[..n], x),
            "dot_q8_0",
            case,
        );

        let mut b40 = [BlockQ4_0::ZERO; 32];
        quant::q4_0::quantize_row(w, &mut b40[..nb]);
        quant::q4_0::dequantize_row(&b40[..nb], &mut deq[..n]);
        close(
            (k.dot_q4_0)(&b40[..nb], x),
            quant::q4_0::dot_f32(&b40[..nb], x),
            abs_scale(&deq[..n], x),
            "dot_q4_0",
            case,
        );

        let mut b41 = [BlockQ4_1::ZERO; 32];
        quant::q4_1::quantize_row(w, &mut b41[..nb]);
        quant::q4_1::dequantize_row(&b41[..nb], &mut deq[..n]);
        // Q4_1 splits each block into d*q*x and m*x sums, which cancel; the
        // error scale counts both parts.
        let split: f32 = b41[..nb]
            .iter()
            .zip(x.chunks(32))
            .map(|(b, xs)| {
                xs.iter().map(|v| v.abs()).sum::<f32>() * (b.m().abs() + 15.0 * b.d().abs())
            })
            .sum();
        close(
            (k.dot_q4_1)(&b41[..nb], x),
            quant::q4_1::dot_f32(&b41[..nb], x),
            split,
            "dot_q4_1",
            case,
        );
    }
}

fn reference_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn scalar_table_matches_reference() {
    check_table(&Kernels::scalar());
}

#[test]
fn detected_table_matches_reference() {
    check_table(&Kernels::detect());
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
        data: RowData::Q8_0(&w),
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
