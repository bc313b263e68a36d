//! Q4_1: blocks of 32 4-bit weights with an f16 scale and f16 minimum;
//! `x = d * q + m`. Also Q8_1, the activation format ggml pairs with it.
//!
//! Mirrors ggml's `block_q4_1`, `quantize_row_q4_1_ref`, `dequantize_row_q4_1`,
//! `block_q8_1` and `ggml_vec_dot_q4_1_q8_1`.

use super::q4_0::nibble;
use super::{f16_bits_to_f32, f32_to_f16_bits, round_half_away_i8};

/// Elements per block.
pub const QK: usize = 32;

/// Q4_1 in the format table.
pub const FORMAT: super::Format = super::block_format!(
    super::GgmlType::Q4_1,
    BlockQ4_1,
    QK,
    dequantize_row,
    dot_f32,
    quantize_row
);

/// ggml's `block_q4_1`: 20 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ4_1 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// Minimum, f16 little-endian.
    pub m: [u8; 2],
    /// Nibbles: low = element j, high = element j + 16.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(core::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(core::mem::align_of::<BlockQ4_1>() == 1);

/// Eight Q4_1 rows' blocks at one column, interleaved for decode kernels
/// with one SIMD lane per row (as [`crate::quant::BlockQ8_0x8`] is for
/// Q8_0): `qs[16 * k + 2 * j + i]` is row `j`'s byte `2k + i`, so sixteen
/// bytes hold byte pair `k` of all eight rows, whose low nibbles are
/// elements `2k, 2k + 1` and high nibbles `2k + 16, 2k + 17`. 160 bytes, as
/// the eight file blocks are. A host builds these from the file's rows
/// ([`pack_rows_x8`]); the file's own bytes are never rewritten.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ4_1x8 {
    /// The eight rows' scales, f16 little-endian.
    pub d: [[u8; 2]; 8],
    /// The eight rows' minimums, f16 little-endian.
    pub m: [[u8; 2]; 8],
    pub qs: [u8; 8 * QK / 2],
}

const _: () = assert!(core::mem::size_of::<BlockQ4_1x8>() == 8 * 20);

impl BlockQ4_1x8 {
    pub const ZERO: BlockQ4_1x8 = BlockQ4_1x8 {
        d: [[0; 2]; 8],
        m: [[0; 2]; 8],
        qs: [0; 8 * QK / 2],
    };

    /// Row `j`'s block, as the file stores it.
    pub fn row(&self, j: usize) -> BlockQ4_1 {
        let j = j & 7;
        BlockQ4_1 {
            d: self.d[j],
            m: self.m[j],
            qs: core::array::from_fn(|i| self.qs[16 * (i / 2) + 2 * j + i % 2]),
        }
    }
}

/// Interleaves whole groups of eight rows of `nb` blocks each: group `g`'s
/// block `b` goes to `out[g * nb + b]`. Returns the groups written (rows
/// beyond the last whole group, and groups `out` has no room for, are left).
pub fn pack_rows_x8(rows: &[BlockQ4_1], nb: usize, out: &mut [BlockQ4_1x8]) -> usize {
    super::pack_groups(rows, nb, 8, out, |o, j, src| {
        o.d[j] = src.d;
        o.m[j] = src.m;
        super::interleave_pairs(&mut o.qs, j, &src.qs);
    })
}

/// ggml's `block_q8_1`: 36 bytes; `s = d * Σ qs`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ8_1 {
    pub d: [u8; 2],
    pub s: [u8; 2],
    pub qs: [i8; QK],
}

const _: () = assert!(core::mem::size_of::<BlockQ8_1>() == 36);

impl BlockQ4_1 {
    pub const ZERO: BlockQ4_1 = BlockQ4_1 {
        d: [0; 2],
        m: [0; 2],
        qs: [0; QK / 2],
    };

    #[inline(always)]
    pub fn d(&self) -> f32 {
        f16_bits_to_f32(self.d)
    }

    #[inline(always)]
    pub fn m(&self) -> f32 {
        f16_bits_to_f32(self.m)
    }
}

impl BlockQ8_1 {
    pub const ZERO: BlockQ8_1 = BlockQ8_1 {
        d: [0; 2],
        s: [0; 2],
        qs: [0; QK],
    };
}

pub fn dequantize_row(x: &[BlockQ4_1], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let (d, m) = (b.d(), b.m());
        for j in 0..QK / 2 {
            out[j] = (b.qs[j] & 0x0f) as f32 * d + m;
            out[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

/// Like `quantize_row_q4_1_ref`: `d = (max - min) / 15`, `m = min`,
/// `q = min(15, (i8)((x - min) / d + 0.5))`.
pub fn quantize_row(x: &[f32], y: &mut [BlockQ4_1]) {
    for (xs, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let mut min = f32::MAX;
        let mut max = -f32::MAX;
        for &v in xs {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16_bits(d);
        b.m = f32_to_f16_bits(min);
        for j in 0..QK / 2 {
            let q0 = nibble((xs[j] - min) * id + 0.5);
            let q1 = nibble((xs[j + QK / 2] - min) * id + 0.5);
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// Like `quantize_row_q8_1_ref`.
pub fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    for (xs, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16_bits(d);
        let mut sum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = round_half_away_i8(v * id);
            sum += *q as i32;
        }
        b.s = f32_to_f16_bits(sum as f32 * d);
    }
}

/// Reference `Σ dequant(w) · x` with f32 activations: `d Σ q x + m Σ x` per block.
pub fn dot_f32(w: &[BlockQ4_1], x: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (b, xs) in w.iter().zip(x.chunks_exact(QK)) {
        let mut qx = 0.0f32;
        let mut sx = 0.0f32;
        for j in 0..QK / 2 {
            qx += (b.qs[j] & 0x0f) as f32 * xs[j];
            qx += (b.qs[j] >> 4) as f32 * xs[j + QK / 2];
            sx += xs[j] + xs[j + QK / 2];
        }
        sum += b.d() * qx + b.m() * sx;
    }
    sum
}

/// ggml's `vec_dot_q4_1_q8_1`.
pub fn vec_dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    let mut sum = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let mut isum = 0i32;
        for j in 0..QK / 2 {
            isum += (a.qs[j] & 0x0f) as i32 * b.qs[j] as i32;
            isum += (a.qs[j] >> 4) as i32 * b.qs[j + QK / 2] as i32;
        }
        sum += isum as f32 * a.d() * f16_bits_to_f32(b.d) + a.m() * f16_bits_to_f32(b.s);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_within_half_step() {
        let x: [f32; 32] = core::array::from_fn(|i| (i as f32 * 0.9).cos() * 3.0 + 1.0);
        let mut b = [BlockQ4_1::ZERO];
        quantize_row(&x, &mut b);
        let mut y = [0.0f32; 32];
        dequantize_row(&b, &mut y);
        let step = b[0].d();
        for (a, c) in x.iter().zip(&y) {
            assert!((a - c).abs() <= step * 0.5 + 2e-3, "{a} vs {c}");
        }
    }

    #[test]
    fn q8_1_dot_close_to_float_dot() {
        let w: [f32; 64] = core::array::from_fn(|i| (i as f32 * 0.3).sin());
        let x: [f32; 64] = core::array::from_fn(|i| (i as f32 * 0.11).cos());
        let mut bw = [BlockQ4_1::ZERO; 2];
        quantize_row(&w, &mut bw);
        let mut bx = [BlockQ8_1::ZERO; 2];
        quantize_row_q8_1(&x, &mut bx);
        let a = vec_dot_q4_1_q8_1(&bw, &bx);
        let b = dot_f32(&bw, &x);
        assert!((a - b).abs() < 0.05 * b.abs().max(1.0), "{a} {b}");
    }
}
