//! Kernel throughput on one (1536 x 576) matrix per type, the shape of
//! SmolLM2's FFN projections, reported as weight bytes per second: the decode
//! product (one token: f32 activations on the scalar table, 16-bit ones on
//! the fast tables) and the batched product (16 tokens over dequantized
//! tiles), for the scalar reference and the detected table.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ember_core::kernels::{Kernels, Matrix, Packed, RowData};
use ember_core::quant::{self, BlockQ4_0, BlockQ4_1, BlockQ8_0, GgmlType};

const ROWS: usize = 1536;
const COLS: usize = 576;

fn data() -> (Vec<f32>, Vec<f32>) {
    let mut s = 0x1234_5678u32;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    };
    let w = (0..ROWS * COLS).map(|_| next()).collect();
    let x = (0..COLS).map(|_| next()).collect();
    (w, x)
}

fn bench(c: &mut Criterion) {
    let (w, x) = data();
    let nb = ROWS * COLS / 32;
    let mut q8 = vec![BlockQ8_0::ZERO; nb];
    quant::q8_0::quantize_row(&w, &mut q8);
    let mut q40 = vec![BlockQ4_0::ZERO; nb];
    quant::q4_0::quantize_row(&w, &mut q40);
    let mut q41 = vec![BlockQ4_1::ZERO; nb];
    quant::q4_1::quantize_row(&w, &mut q41);
    let mut h = vec![half::f16::ZERO; ROWS * COLS];
    quant::f16::quantize_row(&w, &mut h);
    let mats = [
        ("f32", RowData::f32(&w)),
        ("f16", RowData::f16(&h)),
        ("q8_0", RowData::blocks(GgmlType::Q8_0, &q8)),
        ("q4_0", RowData::blocks(GgmlType::Q4_0, &q40)),
        ("q4_1", RowData::blocks(GgmlType::Q4_1, &q41)),
    ];
    const BATCH: usize = 16;
    let xs: Vec<f32> = (0..BATCH).flat_map(|_| x.iter().copied()).collect();
    let mut out = vec![0f32; ROWS * BATCH];
    let mut scratch = vec![0f32; Kernels::scratch_len(COLS, BATCH)];
    for k in [Kernels::scalar(), Kernels::detect()] {
        // One token (decode), then a batch (prefill); weight bytes per
        // second, each weight read once per call.
        for (group, n, input) in [("matvec", 1, &x), ("matmul16", BATCH, &xs)] {
            let mut g = c.benchmark_group(format!("{group}_{}", k.name));
            for (name, data) in mats {
                let m = Matrix {
                    rows: ROWS,
                    cols: COLS,
                    data,
                    packed: Packed::None,
                    pieces: ember_core::kernels::Pieces::NONE,
                };
                g.throughput(Throughput::Bytes(m.n_bytes() as u64));
                g.bench_with_input(BenchmarkId::from_parameter(name), &m, |b, m| {
                    b.iter(|| k.matmul(m, input, n, &mut out, &mut scratch).unwrap())
                });
            }
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
