//! Q6_K: super-blocks of 256 6-bit weights in sixteen groups of 16, each
//! with a signed 8-bit scale, scaled by the super-block's f16 `d`:
//! `x = d·sc·(q − 32)`.
//!
//! Mirrors ggml's `block_q6_K`, `quantize_row_q6_K_ref` and
//! `dequantize_row_q6_K`.

// The quantizer follows ggml's reference loop for loop, indices and all.
#![allow(clippy::needless_range_loop)]

use super::k_quants::{make_qx_quants, nearest_int, QK_K};
use super::{f16_bits_to_f32, f32_to_f16_bits};

/// Elements per block.
pub const QK: usize = QK_K;

/// Q6_K in the format table.
pub const FORMAT: super::Format = super::block_format!(
    super::GgmlType::Q6_K,
    BlockQ6K,
    QK,
    dequantize_row,
    dot_f32,
    quantize_row
);

/// ggml's `block_q6_K`: 210 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ6K {
    /// Low four bits: per 128 elements, 64 bytes; byte `l` (`l < 32`)
    /// holds elements `l` (low nibble) and `l + 64` (high), byte `l + 32`
    /// elements `l + 32` and `l + 96`.
    pub ql: [u8; QK / 2],
    /// High two bits: per 128 elements, 32 bytes; byte `l` holds elements
    /// `l`, `l + 32`, `l + 64`, `l + 96` from its low bits up.
    pub qh: [u8; QK / 4],
    /// Each group of 16's scale.
    pub scales: [i8; QK / 16],
    /// Super-block scale, f16 little-endian.
    pub d: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<BlockQ6K>() == 210);

// SAFETY: repr(C), byte arrays only: no padding (size asserted), any bit
// pattern valid.
unsafe impl super::Pod for BlockQ6K {}
impl super::Block for BlockQ6K {}

impl BlockQ6K {
    pub const ZERO: BlockQ6K = BlockQ6K {
        ql: [0; QK / 2],
        qh: [0; QK / 4],
        scales: [0; QK / 16],
        d: [0; 2],
    };

    /// Element `e`'s quant, `0..64` (the value is `q − 32`).
    #[inline(always)]
    pub fn q(&self, e: usize) -> u8 {
        let (h, k, l) = (e / 128, e % 128 / 32, e % 32);
        let b = self.ql[64 * h + 32 * (k % 2) + l];
        let lo = if k < 2 { b & 0x0f } else { b >> 4 };
        lo | (((self.qh[32 * h + l] >> (2 * k)) & 3) << 4)
    }

    /// Sets element `e`'s quant to `q` (`0..64`).
    pub fn set_q(&mut self, e: usize, q: u8) {
        let (h, k, l) = (e / 128, e % 128 / 32, e % 32);
        let b = &mut self.ql[64 * h + 32 * (k % 2) + l];
        *b = if k < 2 {
            (*b & 0xf0) | (q & 0x0f)
        } else {
            (*b & 0x0f) | (q << 4)
        };
        let h2 = &mut self.qh[32 * h + l];
        *h2 = (*h2 & !(3 << (2 * k))) | (((q >> 4) & 3) << (2 * k));
    }

    /// Group `g`'s (of 16) scale as f32: `d·sc`.
    #[inline(always)]
    pub fn group(&self, g: usize) -> f32 {
        f16_bits_to_f32(self.d) * self.scales[g] as f32
    }
}

pub use super::{ROW_OF_SLOT, SLOT_OF_ROW};

/// The same super-block of eight Q6_K rows, interleaved for the packed
/// decode kernels (one SIMD lane per row). Per group of 32 elements `g`,
/// 192 bytes at `q[192 * g..]`: four 32-byte vectors of low bits, then two
/// of high bits. In each vector row `ROW_OF_SLOT[s]` has bytes `4s..4s + 4`,
/// byte `e` of them holding, in low-bits vector `v`, the low four bits of
/// elements `4v + e` (low nibble) and `16 + 4v + e` (high); in high-bits
/// vector `h`, the top two bits of elements `8h + e`, `16 + 8h + e`,
/// `8h + 4 + e` and `20 + 8h + e`, from its low bits up. 1,680 bytes, as the
/// eight file blocks are. A host builds these from the file's rows
/// ([`pack_rows_x8`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ6Kx8 {
    /// The eight rows' `d`, f16 little-endian, in row order.
    pub d: [[u8; 2]; 8],
    /// `scales[16 * g + 8 * h + j]`: row `j`'s scale of elements
    /// `32 g + 16 h..32 g + 16 h + 16`.
    pub scales: [i8; 128],
    pub q: [u8; 8 * 192],
}

const _: () = assert!(core::mem::size_of::<BlockQ6Kx8>() == 8 * 210);

// SAFETY: repr(C), byte arrays only: no padding (size asserted), any bit
// pattern valid.
unsafe impl super::Pod for BlockQ6Kx8 {}

/// Byte offset in [`BlockQ6Kx8::q`] of row `j`'s element `e` (of 256):
/// (low-bits byte, high nibble?, high-bits byte, its shift).
fn x8_place(j: usize, e: usize) -> (usize, bool, usize, u32) {
    let (g, l) = (e / 32, e % 32);
    let (half, v, k) = (l / 16, l % 16 / 4, l % 4);
    let s = SLOT_OF_ROW[j];
    let low = 192 * g + 32 * v + 4 * s + k;
    let high = 192 * g + 128 + 32 * (v / 2) + 4 * s + k;
    (low, half == 1, high, (4 * (v % 2) + 2 * half) as u32)
}

impl BlockQ6Kx8 {
    pub const ZERO: BlockQ6Kx8 = BlockQ6Kx8 {
        d: [[0; 2]; 8],
        scales: [0; 128],
        q: [0; 8 * 192],
    };

    /// Row `j`'s super-block, as the file stores it.
    pub fn row(&self, j: usize) -> BlockQ6K {
        let j = j & 7;
        let mut b = BlockQ6K::ZERO;
        b.d = self.d[j];
        for i in 0..QK / 16 {
            b.scales[i] = self.scales[8 * i + j];
        }
        for e in 0..QK {
            let (low, hi_nibble, high, shift) = x8_place(j, e);
            let lo = if hi_nibble {
                self.q[low] >> 4
            } else {
                self.q[low] & 0x0f
            };
            b.set_q(e, lo | ((self.q[high] >> shift) & 3) << 4);
        }
        b
    }
}

/// Interleaves whole groups of eight rows of `nb` super-blocks each: group
/// `g`'s super-block `b` goes to `out[g * nb + b]`. Returns the groups
/// written (rows beyond the last whole group, and groups `out` has no room
/// for, are left).
pub fn pack_rows_x8(rows: &[BlockQ6K], nb: usize, out: &mut [BlockQ6Kx8]) -> usize {
    super::pack_groups(rows, nb, 8, out, |o, j, src| {
        o.d[j] = src.d;
        for i in 0..QK / 16 {
            o.scales[8 * i + j] = src.scales[i];
        }
        let s = SLOT_OF_ROW[j];
        for g in 0..8 {
            let q = &mut o.q[192 * g..192 * (g + 1)];
            for v in 0..4 {
                for e in 0..4 {
                    let (a, b) = (src.q(32 * g + 4 * v + e), src.q(32 * g + 16 + 4 * v + e));
                    q[32 * v + 4 * s + e] = (a & 0x0f) | (b << 4);
                    let bits = ((a >> 4) | ((b >> 4) << 2)) << (4 * (v % 2));
                    let h = &mut q[128 + 32 * (v / 2) + 4 * s + e];
                    *h = if v % 2 == 0 { bits } else { *h | bits };
                }
            }
        }
    })
}

pub fn dequantize_row(x: &[BlockQ6K], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        for (g, o) in out.chunks_exact_mut(16).enumerate() {
            let d = b.group(g);
            for (l, v) in o.iter_mut().enumerate() {
                *v = d * (b.q(16 * g + l) as i32 - 32) as f32;
            }
        }
    }
}

/// Reference `Σ dequant(w) · x` with f32 activations: per group of 16,
/// `d·sc Σ (q − 32) x`.
pub fn dot_f32(w: &[BlockQ6K], x: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (b, xs) in w.iter().zip(x.chunks_exact(QK)) {
        for (g, xg) in xs.chunks_exact(16).enumerate() {
            let mut qx = 0.0f32;
            for (l, &v) in xg.iter().enumerate() {
                qx += (b.q(16 * g + l) as i32 - 32) as f32 * v;
            }
            sum += b.group(g) * qx;
        }
    }
    sum
}

/// Like `quantize_row_q6_K_ref`: each group's scale by
/// [`make_qx_quants`], the scales to eight bits against the largest, then
/// the elements requantized with the stored scales.
pub fn quantize_row(x: &[f32], y: &mut [BlockQ6K]) {
    for (xs, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let mut l = [0i8; QK];
        let mut scales = [0.0f32; QK / 16];
        let (mut max_scale, mut max_abs) = (0.0f32, 0.0f32);
        for g in 0..QK / 16 {
            let s = make_qx_quants(32, &xs[16 * g..16 * g + 16], &mut l[16 * g..16 * g + 16]);
            scales[g] = s;
            if s.abs() > max_abs {
                max_abs = s.abs();
                max_scale = s;
            }
        }
        *b = BlockQ6K::ZERO;
        if max_abs < 1e-15 {
            continue;
        }
        let iscale = -128.0 / max_scale;
        b.d = f32_to_f16_bits(1.0 / iscale);
        for g in 0..QK / 16 {
            b.scales[g] = nearest_int(iscale * scales[g]).min(127) as i8;
        }
        for g in 0..QK / 16 {
            let d = b.group(g);
            if d == 0.0 {
                continue;
            }
            for i in 16 * g..16 * g + 16 {
                l[i] = (nearest_int(xs[i] / d).clamp(-32, 31) + 32) as i8;
            }
        }
        for h in 0..2 {
            for i in 0..32 {
                let q: [u8; 4] = core::array::from_fn(|k| l[128 * h + 32 * k + i] as u8);
                b.ql[64 * h + i] = (q[0] & 0x0f) | ((q[2] & 0x0f) << 4);
                b.ql[64 * h + i + 32] = (q[1] & 0x0f) | ((q[3] & 0x0f) << 4);
                b.qh[32 * h + i] =
                    (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_round_trip() {
        // Arbitrary bytes in every field (any bit pattern is a block).
        let byte = |r: usize, i: usize| ((r * 131 + i * 7919) % 251) as u8;
        let rows: [BlockQ6K; 8] = core::array::from_fn(|r| BlockQ6K {
            ql: core::array::from_fn(|i| byte(r, i)),
            qh: core::array::from_fn(|i| byte(r, i + 200)),
            scales: core::array::from_fn(|i| byte(r, i + 300) as i8),
            d: [byte(r, 400), byte(r, 401)],
        });
        let mut p = [BlockQ6Kx8::ZERO; 1];
        assert_eq!(pack_rows_x8(&rows, 1, &mut p), 1);
        for (j, r) in rows.iter().enumerate() {
            assert_eq!(p[0].row(j), *r);
            for e in 0..QK {
                let mut b = BlockQ6K::ZERO;
                b.set_q(e, r.q(e));
                assert_eq!(b.q(e), r.q(e));
            }
        }
    }

    #[test]
    fn round_trips_within_a_step() {
        let x: [f32; 512] =
            core::array::from_fn(|i| (i as f32 * 0.37).sin() * (1.0 + (i / 16) as f32));
        let mut b = [BlockQ6K::ZERO; 2];
        quantize_row(&x, &mut b);
        let mut y = [0.0f32; 512];
        dequantize_row(&b, &mut y);
        for (i, (a, c)) in x.iter().zip(&y).enumerate() {
            let d = b[i / 256].group(i % 256 / 16).abs();
            assert!((a - c).abs() <= d.max(1e-3), "{i}: {a} vs {c}, step {d}");
        }
        let dot = dot_f32(&b, &x);
        let exact: f32 = y.iter().zip(&x).map(|(a, b)| a * b).sum();
        assert!(
            (dot - exact).abs() < 1e-3 * exact.abs().max(1.0),
            "{dot} {exact}"
        );
    }
}
