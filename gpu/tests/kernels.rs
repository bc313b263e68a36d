//! Every GPU kernel against the core's scalar reference, on whatever
//! adapter the machine has (lavapipe in CI): the matrix kernel of each
//! weight format over random and extreme rows, row counts that do not
//! fill a workgroup, one to seventeen tokens; the embedding kernel row for
//! row. A machine with no adapter fails these tests: CI installs one.

use ember_core::kernels::{Matrix, Packed, Pieces, RowData};
use ember_core::quant::{self, GgmlType};
use ember_core::sampling::Pcg32;
use ember_gpu::{check, Gpu};

fn gpu() -> Gpu {
    check::gpu_for_checks().unwrap()
}

/// Bytes in a buffer aligned for f32 (float formats are read as such).
struct Aligned(Vec<f32>, usize);

impl Aligned {
    fn new(bytes: &[u8]) -> Aligned {
        let mut v = vec![0.0f32; bytes.len().div_ceil(4)];
        quant::as_bytes_mut(&mut v)[..bytes.len()].copy_from_slice(bytes);
        Aligned(v, bytes.len())
    }

    fn bytes(&self) -> &[u8] {
        &quant::as_bytes(&self.0)[..self.1]
    }
}

fn matrix<'a>(ty: GgmlType, rows: usize, cols: usize, bytes: &'a [u8]) -> Matrix<'a> {
    Matrix {
        rows,
        cols,
        data: RowData::new(ty, bytes).unwrap(),
        packed: Packed::None,
        pieces: Pieces::NONE,
    }
}

fn normal(rng: &mut Pcg32) -> f32 {
    // Sum of uniforms: bell-shaped, enough for weights and activations.
    (0..4).map(|_| rng.next_f32() - 0.5).sum::<f32>()
}

/// Rows of `ty` from random values of magnitude `scale` (quantized by the
/// core's reference quantizer).
fn quantized(ty: GgmlType, rows: usize, cols: usize, scale: f32, rng: &mut Pcg32) -> Vec<u8> {
    let data: Vec<f32> = (0..rows * cols).map(|_| normal(rng) * scale).collect();
    quant::quantize_rows(&data, cols, ty).expect("whole blocks")
}

/// The reference `m · x` per row in f64 over the core's dequantized rows,
/// and `Σ |w x|` (the scale of the rounding a float sum may do).
fn reference(m: &Matrix, x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let f = m.ty().format();
    let rb = m.row_bytes();
    let mut row = vec![0.0f32; m.cols];
    let (mut y, mut mag) = (Vec::new(), Vec::new());
    for r in 0..m.rows {
        (f.dequantize)(&m.data.bytes()[r * rb..(r + 1) * rb], &mut row);
        let (mut s, mut a) = (0.0f64, 0.0f64);
        for (&w, &v) in row.iter().zip(x) {
            s += w as f64 * v as f64;
            a += (w as f64 * v as f64).abs();
        }
        y.push(s);
        mag.push(a);
    }
    (y, mag)
}

/// Runs the matrix kernel for `n` random tokens and holds each output to
/// the reference: within 1e-5 of `Σ |w x|`, NaN where it is NaN, the same
/// infinity where it is infinite.
fn check_matmul(
    gpu: &Gpu,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    bytes: &[u8],
    n: usize,
    rng: &mut Pcg32,
) {
    let al = Aligned::new(bytes);
    let m = matrix(ty, rows, cols, al.bytes());
    let x: Vec<f32> = (0..n * cols).map(|_| normal(rng)).collect();
    let got = check::matmul(gpu, &m, &x, n).unwrap();
    for t in 0..n {
        let (want, mag) = reference(&m, &x[t * cols..(t + 1) * cols]);
        for r in 0..rows {
            let (g, w) = (got[t * rows + r] as f64, want[r]);
            let what = format!(
                "{} {rows}x{cols} token {t}/{n} row {r}: {g} vs {w}",
                ty.name()
            );
            if w.is_nan() || !mag[r].is_finite() {
                assert!(g.is_nan() || g.is_infinite(), "{what}");
            } else if w.is_infinite() {
                assert_eq!(g, w, "{what}");
            } else {
                assert!((g - w).abs() <= 1e-5 * mag[r] + 1e-30, "{what}");
            }
        }
    }
}

/// Block lengths and shapes each format is checked with.
fn shapes(ty: GgmlType) -> Vec<(usize, usize)> {
    let bl = ty.block_len().max(32);
    let mut v = vec![(1, bl), (3, 2 * bl), (65, bl), (130, 3 * bl), (7, 9 * bl)];
    if ty.block_len() == 1 {
        // Float rows of any even length, not whole units of 32.
        v.extend([(5, 40), (3, 70), (2, 2)]);
    }
    v
}

#[test]
fn matmul_matches_the_reference_for_every_format() {
    let gpu = gpu();
    let mut rng = Pcg32::new(7, 1);
    for ty in GgmlType::ALL {
        for (rows, cols) in shapes(ty) {
            for n in [1, 3, 8, 17] {
                if rows * n > 200 && n > 3 {
                    continue;
                }
                let bytes = quantized(ty, rows, cols, 1.0, &mut rng);
                check_matmul(&gpu, ty, rows, cols, &bytes, n, &mut rng);
            }
        }
    }
}

/// Tiny and huge values (subnormal and large scales), zero rows, and
/// blocks of random bytes (any scale, NaN and infinity included).
#[test]
fn matmul_holds_on_extreme_blocks() {
    let gpu = gpu();
    let mut rng = Pcg32::new(11, 3);
    for ty in GgmlType::ALL {
        let cols = ty.block_len().max(32) * 2;
        let rows = 9;
        for scale in [0.0f32, 1e-6, 3e-5, 6e4] {
            let bytes = quantized(ty, rows, cols, scale, &mut rng);
            check_matmul(&gpu, ty, rows, cols, &bytes, 2, &mut rng);
        }
        let rb = cols / ty.block_len() * ty.block_bytes();
        let bytes: Vec<u8> = (0..rows * rb).map(|_| rng.next_u32() as u8).collect();
        check_matmul(&gpu, ty, rows, cols, &bytes, 2, &mut rng);
    }
}

#[test]
fn embedding_rows_are_the_reference_rows() {
    let gpu = gpu();
    let mut rng = Pcg32::new(5, 9);
    for ty in GgmlType::ALL {
        let (rows, cols) = (37, ty.block_len().max(32) * 3);
        let bytes = quantized(ty, rows, cols, 1.0, &mut rng);
        let al = Aligned::new(&bytes);
        let m = matrix(ty, rows, cols, al.bytes());
        let ids = [0u32, 36, 5, 5, 17];
        let got = check::embed(&gpu, &m, &ids, 1.5).unwrap();
        let rb = m.row_bytes();
        let mut row = vec![0.0f32; cols];
        for (t, &id) in ids.iter().enumerate() {
            let r = id as usize;
            (ty.format().dequantize)(&al.bytes()[r * rb..(r + 1) * rb], &mut row);
            for (j, &w) in row.iter().enumerate() {
                let (g, w) = (got[t * cols + j], w * 1.5);
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs(),
                    "{} row {id} col {j}: {g} vs {w}",
                    ty.name()
                );
            }
        }
    }
}
