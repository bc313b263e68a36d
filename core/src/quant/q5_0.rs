//! Q5_0: blocks of 32 5-bit weights with one f16 scale; `x = d * (q - 16)`.
//!
//! Mirrors ggml's `block_q5_0` (`qs` holds the low four bits as Q4_0 does,
//! `qh` the fifth bit of element `j` at bit `j`), `quantize_row_q5_0_ref`
//! and `dequantize_row_q5_0`.

use super::{f16_bits_to_f32, f32_to_f16_bits};

/// Elements per block.
pub const QK: usize = 32;

/// Q5_0 in the format table.
pub const FORMAT: super::Format = super::block_format!(
    super::GgmlType::Q5_0,
    BlockQ5_0,
    QK,
    dequantize_row,
    dot_f32,
    quantize_row
);

/// ggml's `block_q5_0`: 22 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ5_0 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// The fifth bits, little-endian: element `j`'s at bit `j`.
    pub qh: [u8; 4],
    /// Low nibbles: element `j`, high nibbles: element `j + 16`.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(core::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(core::mem::align_of::<BlockQ5_0>() == 1);

// SAFETY: repr(C), fields [u8; 2], [u8; 4] and [u8; 16]: no padding (size
// asserted), any bit pattern valid.
unsafe impl super::Pod for BlockQ5_0 {}
impl super::Block for BlockQ5_0 {}

impl BlockQ5_0 {
    /// Element `j`'s quant, `0..32` (the value is `q − 16`).
    #[inline(always)]
    pub fn q(&self, j: usize) -> u32 {
        q5(&self.qs, self.qh, j)
    }

    #[inline(always)]
    pub fn d(&self) -> f32 {
        f16_bits_to_f32(self.d)
    }

    pub const ZERO: BlockQ5_0 = BlockQ5_0 {
        d: [0; 2],
        qh: [0; 4],
        qs: [0; QK / 2],
    };
}

/// Element `j`'s 5-bit quant of a Q5_0 or Q5_1 block: its nibble in `qs`
/// (low nibbles elements `0..16`, high `16..32`) and bit `j` of `qh`.
#[inline(always)]
pub(super) fn q5(qs: &[u8; QK / 2], qh: [u8; 4], j: usize) -> u32 {
    let lo = if j < QK / 2 {
        qs[j] & 0x0f
    } else {
        qs[j - QK / 2] >> 4
    };
    lo as u32 | ((u32::from_le_bytes(qh) >> j) & 1) << 4
}

/// Element `j`'s quant, `0..32`.
#[inline(always)]
fn q(b: &BlockQ5_0, j: usize) -> i32 {
    q5(&b.qs, b.qh, j) as i32
}

/// The same block of eight Q5_0 rows, interleaved for the packed decode
/// kernels (one SIMD lane per row): 176 bytes, as the eight file blocks
/// are. `qs` is four 32-byte vectors; in each, row
/// [`super::ROW_OF_SLOT`]`[s]` has bytes `4s..4s + 4`, byte `e` of vector
/// `v` holding the low four bits of elements `4v + e` (low nibble) and
/// `16 + 4v + e` (high). `qh[8v..8v + 4]` holds the fifth bits of vector
/// `v`'s low nibbles (bit `p` for byte `p`, little-endian), `qh[8v + 4..]`
/// those of its high nibbles. A host builds these from the file's rows
/// ([`pack_rows_x8`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ5_0x8 {
    /// The eight rows' scales, f16 little-endian, in row order.
    pub d: [[u8; 2]; 8],
    pub qh: [u8; 32],
    pub qs: [u8; 8 * QK / 2],
}

const _: () = assert!(core::mem::size_of::<BlockQ5_0x8>() == 8 * 22);

/// Where row `j`'s element `i` sits in a [`BlockQ5_0x8`]: (its `qs` byte,
/// whether the high nibble, its fifth bit's `qh` byte and bit).
fn x8_place(j: usize, i: usize) -> (usize, bool, usize, u32) {
    let (half, v, e) = (i / 16, i % 16 / 4, i % 4);
    let p = 4 * super::SLOT_OF_ROW[j] + e;
    (
        32 * v + p,
        half == 1,
        8 * v + 4 * half + p / 8,
        (p % 8) as u32,
    )
}

impl BlockQ5_0x8 {
    pub const ZERO: BlockQ5_0x8 = BlockQ5_0x8 {
        d: [[0; 2]; 8],
        qh: [0; 32],
        qs: [0; 8 * QK / 2],
    };

    /// Row `j`'s block, as the file stores it.
    pub fn row(&self, j: usize) -> BlockQ5_0 {
        let j = j & 7;
        let mut b = BlockQ5_0 {
            d: self.d[j],
            ..BlockQ5_0::ZERO
        };
        let mut qh = 0u32;
        for i in 0..QK {
            let (byte, high, hb, bit) = x8_place(j, i);
            let nib = if high {
                self.qs[byte] >> 4
            } else {
                self.qs[byte] & 0x0f
            };
            b.qs[i % 16] |= if i < 16 { nib } else { nib << 4 };
            qh |= (((self.qh[hb] >> bit) & 1) as u32) << i;
        }
        b.qh = qh.to_le_bytes();
        b
    }
}

/// Interleaves whole groups of eight rows of `nb` blocks each: group `g`'s
/// block `b` goes to `out[g * nb + b]`. Returns the groups written (rows
/// beyond the last whole group, and groups `out` has no room for, are
/// left).
pub fn pack_rows_x8(rows: &[BlockQ5_0], nb: usize, out: &mut [BlockQ5_0x8]) -> usize {
    super::pack_groups(rows, nb, 8, out, |o, j, src| {
        o.d[j] = src.d;
        for i in 0..QK {
            let (byte, high, hb, bit) = x8_place(j, i);
            let q = src.q(i) as u8;
            let nib = q & 0x0f;
            o.qs[byte] = if high {
                (o.qs[byte] & 0x0f) | (nib << 4)
            } else {
                (o.qs[byte] & 0xf0) | nib
            };
            o.qh[hb] = (o.qh[hb] & !(1 << bit)) | ((q >> 4) << bit);
        }
    })
}

pub fn dequantize_row(x: &[BlockQ5_0], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = f16_bits_to_f32(b.d);
        for (j, o) in out.iter_mut().enumerate() {
            *o = (q(b, j) - 16) as f32 * d;
        }
    }
}

/// Like `quantize_row_q5_0_ref`: `d = max / -16` where `max` is the signed
/// value of largest magnitude; `q = min(31, (int8)(x / d + 16.5))`.
pub fn quantize_row(x: &[f32], y: &mut [BlockQ5_0]) {
    for (xs, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xs {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16_bits(d);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let q0 = ((xs[j] * id + 16.5) as i8).clamp(0, 31) as u8;
            let q1 = ((xs[j + QK / 2] * id + 16.5) as i8).clamp(0, 31) as u8;
            b.qs[j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
            qh |= ((q0 as u32 >> 4) << j) | ((q1 as u32 >> 4) << (j + QK / 2));
        }
        b.qh = qh.to_le_bytes();
    }
}

/// Reference `Σ dequant(w) · x` over whole blocks with f32 activations.
pub fn dot_f32(w: &[BlockQ5_0], x: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (b, xs) in w.iter().zip(x.chunks_exact(QK)) {
        let mut acc = 0.0f32;
        for (j, &v) in xs.iter().enumerate() {
            acc += (q(b, j) - 16) as f32 * v;
        }
        sum += f16_bits_to_f32(b.d) * acc;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_round_trip() {
        let byte = |r: usize, i: usize| ((r * 131 + i * 7919) % 251) as u8;
        let rows: [BlockQ5_0; 16] = core::array::from_fn(|r| BlockQ5_0 {
            d: [byte(r, 0), byte(r, 1)],
            qh: core::array::from_fn(|i| byte(r, i + 2)),
            qs: core::array::from_fn(|i| byte(r, i + 6)),
        });
        let mut p = [BlockQ5_0x8::ZERO; 2];
        assert_eq!(pack_rows_x8(&rows, 2, &mut p), 1);
        for (j, r) in rows.chunks_exact(2).enumerate() {
            assert_eq!(p[0].row(j), r[0]);
            assert_eq!(p[1].row(j), r[1]);
        }
    }

    #[test]
    fn round_trips_within_a_step() {
        let x: [f32; 64] = core::array::from_fn(|i| (i as f32 * 0.37).sin() * 3.0);
        let mut b = [BlockQ5_0 {
            d: [0; 2],
            qh: [0; 4],
            qs: [0; 16],
        }; 2];
        quantize_row(&x, &mut b);
        let mut y = [0.0f32; 64];
        dequantize_row(&b, &mut y);
        for (blk, (xs, ys)) in b.iter().zip(x.chunks(32).zip(y.chunks(32))) {
            let d = f16_bits_to_f32(blk.d).abs();
            for (a, c) in xs.iter().zip(ys) {
                // Half a step, or a whole one where ggml's MIN(31, ..) clamps
                // values of the other sign from the block's extreme.
                assert!((a - c).abs() <= d + 1e-6, "{a} vs {c}, d {d}");
            }
        }
    }
}
