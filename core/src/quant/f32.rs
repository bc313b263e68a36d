//! F32 rows: stored as they are used.

use super::{Format, GgmlType};

/// F32 in the format table: elements read from their little-endian bytes,
/// so the reference takes a row at any byte offset.
pub const FORMAT: Format = Format {
    ty: GgmlType::F32,
    block_len: 1,
    block_bytes: 4,
    dequantize,
    dot,
    #[cfg(any(feature = "alloc", test))]
    quantize,
};

fn values(w: &[u8]) -> impl Iterator<Item = f32> + '_ {
    w.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn dequantize(w: &[u8], y: &mut [f32]) {
    for (o, v) in y.iter_mut().zip(values(w)) {
        *o = v;
    }
}

fn dot(w: &[u8], x: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (a, b) in values(w).zip(x) {
        sum += a * b;
    }
    sum
}

#[cfg(any(feature = "alloc", test))]
fn quantize(x: &[f32], y: &mut [u8]) {
    for (o, v) in y.chunks_exact_mut(4).zip(x) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}
