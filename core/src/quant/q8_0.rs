//! Q8_0: blocks of 32 int8 weights with one f16 scale; `x = d * q`.
//!
//! Mirrors ggml's `block_q8_0`, `quantize_row_q8_0_ref`, `dequantize_row_q8_0`
//! and `ggml_vec_dot_q8_0_q8_0` (generic version).

use super::{f16_bits_to_f32, f32_to_f16_bits, round_half_away_i8};

/// Elements per block.
pub const QK: usize = 32;

/// Q8_0 in the format table.
pub const FORMAT: super::Format = super::block_format!(
    super::GgmlType::Q8_0,
    BlockQ8_0,
    QK,
    dequantize_row,
    dot_f32,
    quantize_row
);

/// ggml's `block_q8_0`: 34 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ8_0 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// Quants.
    pub qs: [i8; QK],
}

const _: () = assert!(core::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(core::mem::align_of::<BlockQ8_0>() == 1);

impl BlockQ8_0 {
    pub const ZERO: BlockQ8_0 = BlockQ8_0 {
        d: [0; 2],
        qs: [0; QK],
    };

    /// The scale as f32.
    #[inline(always)]
    pub fn d(&self) -> f32 {
        f16_bits_to_f32(self.d)
    }
}

/// `y = dequantize(x)`; `y.len()` must be `32 * x.len()`.
pub fn dequantize_row(x: &[BlockQ8_0], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d();
        for (o, &q) in out.iter_mut().zip(b.qs.iter()) {
            *o = q as f32 * d;
        }
    }
}

/// Quantizes 32-element blocks like `quantize_row_q8_0_ref`: `d = amax / 127`,
/// `q = roundf(x / d)` (half away from zero). A tail shorter than 32 is ignored;
/// callers pass whole rows.
pub fn quantize_row(x: &[f32], y: &mut [BlockQ8_0]) {
    for (xs, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        // `if a > m` keeps what `m.max(a)` keeps (a NaN is skipped) and needs
        // no `fmaxf` call on FPUs without VMAXNM (Cortex-M4F).
        let amax = xs.iter().fold(0.0f32, |m, v| {
            let a = v.abs();
            if a > m {
                a
            } else {
                m
            }
        });
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16_bits(d);
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            // In range by construction: |v * id| <= 127 up to rounding.
            *q = round_half_away_i8(v * id);
        }
    }
}

/// Reference `Σ dequant(w) · x` over whole blocks with f32 activations.
pub fn dot_f32(w: &[BlockQ8_0], x: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (b, xs) in w.iter().zip(x.chunks_exact(QK)) {
        let mut acc = 0.0f32;
        for (&q, &v) in b.qs.iter().zip(xs) {
            acc += q as f32 * v;
        }
        sum += b.d() * acc;
    }
    sum
}

/// ggml's `vec_dot_q8_0_q8_0`: integer dot per block, scaled by both d.
pub fn vec_dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    let mut sum = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let mut isum = 0i32;
        for (&qa, &qb) in a.qs.iter().zip(b.qs.iter()) {
            isum += qa as i32 * qb as i32;
        }
        sum += isum as f32 * (a.d() * b.d());
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_ramp_within_half_step() {
        let x: [f32; 64] = core::array::from_fn(|i| (i as f32 - 31.5) * 0.37);
        let mut b = [BlockQ8_0::ZERO; 2];
        quantize_row(&x, &mut b);
        let mut y = [0.0f32; 64];
        dequantize_row(&b, &mut y);
        for (blk, (xs, ys)) in b.iter().zip(x.chunks(32).zip(y.chunks(32))) {
            let step = blk.d();
            for (a, c) in xs.iter().zip(ys) {
                assert!((a - c).abs() <= step * 0.5 + 1e-3 * step, "{a} vs {c}");
            }
        }
        // The largest magnitude maps to +-127 exactly.
        assert_eq!(b[0].qs[0], -127);
    }

    #[test]
    fn zero_block_has_zero_scale() {
        let mut b = [BlockQ8_0::ZERO];
        quantize_row(&[0.0; 32], &mut b);
        assert_eq!(b[0], BlockQ8_0::ZERO);
    }

    #[test]
    fn int_dot_matches_float_dot() {
        let x: [f32; 32] = core::array::from_fn(|i| (i as f32 * 0.7).sin());
        let mut bx = [BlockQ8_0::ZERO];
        quantize_row(&x, &mut bx);
        let mut dq = [0.0f32; 32];
        dequantize_row(&bx, &mut dq);
        let a = vec_dot_q8_0_q8_0(&bx, &bx);
        let b = dot_f32(&bx, &dq);
        assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "{a} {b}");
    }
}

/// Eight Q8_0 rows' blocks at one column, interleaved for row-parallel
/// decode: a SIMD lane per row, so each lane sums its own row's blocks in
/// order and no lane sums need adding across the vector.
///
/// `qs[16 * k + 2 * j + e]` is row `j`'s quant `2 * k + e`: sixteen bytes
/// widen to eight i16 pairs, one per row, that meet one broadcast pair of
/// activations. A host builds these from the file's rows
/// ([`pack_rows_x8`]) where its kernel table has a packed decode kernel;
/// the file's own bytes are never rewritten.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ8_0x8 {
    /// The eight rows' scales, f16 little-endian.
    pub d: [[u8; 2]; 8],
    pub qs: [i8; 8 * QK],
}

const _: () = assert!(core::mem::size_of::<BlockQ8_0x8>() == 8 * 34);

impl BlockQ8_0x8 {
    pub const ZERO: BlockQ8_0x8 = BlockQ8_0x8 {
        d: [[0; 2]; 8],
        qs: [0; 8 * QK],
    };

    /// Row `j`'s block, as the file stores it.
    pub fn row(&self, j: usize) -> BlockQ8_0 {
        let j = j & 7;
        BlockQ8_0 {
            d: self.d[j],
            qs: core::array::from_fn(|i| self.qs[16 * (i / 2) + 2 * j + i % 2]),
        }
    }
}

/// Four Q8_0 rows' blocks at one column, interleaved for the Cortex-M DSP
/// decode kernel: one pointer walks four rows, and each row's eight quants
/// per step are a word-aligned pair of words (one LDRD), which the file's
/// 34-byte blocks cannot give (every other block's quants sit at 2-byte
/// alignment).
///
/// `qs[32 * c + 8 * j + i]` is row `j`'s quant `8 * c + i`. The block is
/// 136 bytes, as the four file blocks are, and 4-byte aligned, so packs fit
/// wherever the file's rows would. A device builds these from the file's
/// rows ([`pack_rows_x4`]) where its kernel table has a packed kernel
/// ([`crate::kernels::Int8Kernels::q8_0x4`]); the file's own bytes are
/// never rewritten.
#[repr(C, align(4))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ8_0x4 {
    /// The four rows' scales, f16 little-endian.
    pub d: [[u8; 2]; 4],
    pub qs: [i8; 4 * QK],
}

const _: () = assert!(core::mem::size_of::<BlockQ8_0x4>() == 4 * 34);
const _: () = assert!(core::mem::align_of::<BlockQ8_0x4>() == 4);

impl BlockQ8_0x4 {
    pub const ZERO: BlockQ8_0x4 = BlockQ8_0x4 {
        d: [[0; 2]; 4],
        qs: [0; 4 * QK],
    };

    /// Row `j`'s block, as the file stores it.
    pub fn row(&self, j: usize) -> BlockQ8_0 {
        let j = j & 3;
        BlockQ8_0 {
            d: self.d[j],
            qs: core::array::from_fn(|i| self.qs[32 * (i / 8) + 8 * j + i % 8]),
        }
    }
}

/// Interleaves whole groups of four rows of `nb` blocks each: group `g`'s
/// block `b` goes to `out[g * nb + b]`. Returns the groups written (rows
/// beyond the last whole group, and groups `out` has no room for, are left).
pub fn pack_rows_x4(rows: &[BlockQ8_0], nb: usize, out: &mut [BlockQ8_0x4]) -> usize {
    super::pack_groups(rows, nb, 4, out, |o, j, src| {
        o.d[j] = src.d;
        for (c, eight) in src.qs.chunks_exact(8).enumerate() {
            o.qs[32 * c + 8 * j..32 * c + 8 * j + 8].copy_from_slice(eight);
        }
    })
}

/// Interleaves whole groups of eight rows of `nb` blocks each: group `g`'s
/// block `b` goes to `out[g * nb + b]`. Returns the groups written (rows
/// beyond the last whole group, and groups `out` has no room for, are left).
pub fn pack_rows_x8(rows: &[BlockQ8_0], nb: usize, out: &mut [BlockQ8_0x8]) -> usize {
    super::pack_groups(rows, nb, 8, out, |o, j, src| {
        o.d[j] = src.d;
        super::interleave_pairs(&mut o.qs, j, &src.qs);
    })
}
