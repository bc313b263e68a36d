//! Q5_1: blocks of 32 5-bit weights with an f16 scale and minimum;
//! `x = d * q + m`.
//!
//! Mirrors ggml's `block_q5_1` (`qs` and `qh` laid out as Q5_0's),
//! `quantize_row_q5_1_ref` and `dequantize_row_q5_1`.

use super::{f16_bits_to_f32, f32_to_f16_bits};

/// Elements per block.
pub const QK: usize = 32;

/// Q5_1 in the format table.
pub const FORMAT: super::Format = super::block_format!(
    super::GgmlType::Q5_1,
    BlockQ5_1,
    QK,
    dequantize_row,
    dot_f32,
    quantize_row
);

/// ggml's `block_q5_1`: 24 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ5_1 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// Minimum, f16 little-endian.
    pub m: [u8; 2],
    /// The fifth bits, little-endian: element `j`'s at bit `j`.
    pub qh: [u8; 4],
    /// Low nibbles: element `j`, high nibbles: element `j + 16`.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(core::mem::size_of::<BlockQ5_1>() == 24);

// SAFETY: repr(C), byte arrays only: no padding (size asserted), any bit
// pattern valid.
unsafe impl super::Pod for BlockQ5_1 {}
impl super::Block for BlockQ5_1 {}

impl BlockQ5_1 {
    pub const ZERO: BlockQ5_1 = BlockQ5_1 {
        d: [0; 2],
        m: [0; 2],
        qh: [0; 4],
        qs: [0; QK / 2],
    };

    /// Element `j`'s quant, `0..32`.
    #[inline(always)]
    pub fn q(&self, j: usize) -> u32 {
        super::q5_0::q5(&self.qs, self.qh, j)
    }
}

pub fn dequantize_row(x: &[BlockQ5_1], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let (d, m) = (f16_bits_to_f32(b.d), f16_bits_to_f32(b.m));
        for (j, o) in out.iter_mut().enumerate() {
            *o = b.q(j) as f32 * d + m;
        }
    }
}

/// Like `quantize_row_q5_1_ref`: `d = (max − min) / 31`, `m = min`,
/// `q = (u8)((x − min) / d + 0.5)`.
pub fn quantize_row(x: &[f32], y: &mut [BlockQ5_1]) {
    for (xs, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (mut min, mut max) = (f32::MAX, -f32::MAX);
        for &v in xs {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16_bits(d);
        b.m = f32_to_f16_bits(min);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let q0 = ((xs[j] - min) * id + 0.5) as u8;
            let q1 = ((xs[j + QK / 2] - min) * id + 0.5) as u8;
            b.qs[j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
            qh |= (((q0 as u32) & 0x10) >> 4) << j;
            qh |= (((q1 as u32) & 0x10) >> 4) << (j + QK / 2);
        }
        b.qh = qh.to_le_bytes();
    }
}

/// Reference `Σ dequant(w) · x` with f32 activations: `d Σ q x + m Σ x`
/// per block.
pub fn dot_f32(w: &[BlockQ5_1], x: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (b, xs) in w.iter().zip(x.chunks_exact(QK)) {
        let (mut qx, mut sx) = (0.0f32, 0.0f32);
        for (j, &v) in xs.iter().enumerate() {
            qx += b.q(j) as f32 * v;
            sx += v;
        }
        sum += f16_bits_to_f32(b.d) * qx + f16_bits_to_f32(b.m) * sx;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_within_half_a_step() {
        let x: [f32; 64] = core::array::from_fn(|i| (i as f32 * 0.37).sin() * 3.0 + 0.5);
        let mut b = [BlockQ5_1::ZERO; 2];
        quantize_row(&x, &mut b);
        let mut y = [0.0f32; 64];
        dequantize_row(&b, &mut y);
        for (blk, (xs, ys)) in b.iter().zip(x.chunks(32).zip(y.chunks(32))) {
            let d = f16_bits_to_f32(blk.d);
            for (a, c) in xs.iter().zip(ys) {
                assert!((a - c).abs() <= 0.5 * d + 2e-3, "{a} vs {c}, d {d}");
            }
        }
    }
}
