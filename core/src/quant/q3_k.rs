//! Q3_K: super-blocks of 256 3-bit weights in sixteen groups of 16, each
//! with a 6-bit signed scale scaled by the super-block's f16 `d`:
//! `x = d·(sc − 32)·(q − 4)`.
//!
//! Mirrors ggml's `block_q3_K`, `quantize_row_q3_K_ref` and
//! `dequantize_row_q3_K`.

// The quantizer follows ggml's reference loop for loop, indices and all.
#![allow(clippy::needless_range_loop)]

use super::k_quants::{make_q3_quants, nearest_int, QK_K};
use super::{f16_bits_to_f32, f32_to_f16_bits};

/// Elements per block.
pub const QK: usize = QK_K;

/// Q3_K in the format table.
pub const FORMAT: super::Format = super::block_format!(
    super::GgmlType::Q3_K,
    BlockQ3K,
    QK,
    dequantize_row,
    dot_f32,
    quantize_row
);

/// ggml's `block_q3_K`: 110 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ3K {
    /// Third bits: element `e`'s at bit `e / 32` of byte `e % 32`; a clear
    /// bit subtracts 4.
    pub hmask: [u8; QK / 8],
    /// Low two bits, laid out as Q2_K's.
    pub qs: [u8; QK / 4],
    /// Sixteen 6-bit scales: low nibbles in bytes 0..8 (groups 0..8 low,
    /// 8..16 high), high two bits in bytes 8..12.
    pub scales: [u8; 12],
    /// Super-block scale, f16 little-endian.
    pub d: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<BlockQ3K>() == 110);

// SAFETY: repr(C), byte arrays only: no padding (size asserted), any bit
// pattern valid.
unsafe impl super::Pod for BlockQ3K {}
impl super::Block for BlockQ3K {}

impl BlockQ3K {
    pub const ZERO: BlockQ3K = BlockQ3K {
        hmask: [0; QK / 8],
        qs: [0; QK / 4],
        scales: [0; 12],
        d: [0; 2],
    };

    /// Element `e`'s value before scaling, `-4..4`.
    #[inline(always)]
    pub fn q(&self, e: usize) -> i32 {
        let (h, k, l) = (e / 128, e % 128 / 32, e % 32);
        let lo = ((self.qs[32 * h + l] >> (2 * k)) & 3) as i32;
        let high = (self.hmask[l] >> (4 * h + k)) & 1;
        lo - if high != 0 { 0 } else { 4 }
    }

    /// Group `g`'s 6-bit scale, `0..64` (the scale is `sc − 32`).
    #[inline(always)]
    pub fn scale(&self, g: usize) -> i32 {
        let lo = if g < 8 {
            self.scales[g] & 0x0f
        } else {
            self.scales[g - 8] >> 4
        };
        let hi = (self.scales[8 + g % 4] >> (2 * (g / 4))) & 3;
        (lo | (hi << 4)) as i32
    }

    /// Group `g`'s (of 16) scale as f32: `d·(sc − 32)`.
    #[inline(always)]
    pub fn group(&self, g: usize) -> f32 {
        f16_bits_to_f32(self.d) * (self.scale(g) - 32) as f32
    }
}

pub fn dequantize_row(x: &[BlockQ3K], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        for (g, o) in out.chunks_exact_mut(16).enumerate() {
            let d = b.group(g);
            for (l, v) in o.iter_mut().enumerate() {
                *v = d * b.q(16 * g + l) as f32;
            }
        }
    }
}

/// Reference `Σ dequant(w) · x` with f32 activations: per group of 16,
/// `d·(sc − 32) Σ q x`.
pub fn dot_f32(w: &[BlockQ3K], x: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (b, xs) in w.iter().zip(x.chunks_exact(QK)) {
        for (g, xg) in xs.chunks_exact(16).enumerate() {
            let mut qx = 0.0f32;
            for (l, &v) in xg.iter().enumerate() {
                qx += b.q(16 * g + l) as f32 * v;
            }
            sum += b.group(g) * qx;
        }
    }
    sum
}

/// Like `quantize_row_q3_K_ref`: each group's scale by
/// [`make_q3_quants`], the scales to six bits against the largest, then
/// the elements requantized with the stored scales.
pub fn quantize_row(x: &[f32], y: &mut [BlockQ3K]) {
    for (xs, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let mut l = [0i8; QK];
        let mut scales = [0.0f32; 16];
        let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
        for g in 0..16 {
            let s = make_q3_quants(4, &xs[16 * g..16 * g + 16], &mut l[16 * g..16 * g + 16]);
            scales[g] = s;
            if s.abs() > amax {
                amax = s.abs();
                max_scale = s;
            }
        }
        *b = BlockQ3K::ZERO;
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for g in 0..16 {
                let q = ((nearest_int(iscale * scales[g]) as i8).clamp(-32, 31) + 32) as u8;
                if g < 8 {
                    b.scales[g] = q & 0x0f;
                } else {
                    b.scales[g - 8] |= (q & 0x0f) << 4;
                }
                b.scales[g % 4 + 8] |= (q >> 4) << (2 * (g / 4));
            }
            b.d = f32_to_f16_bits(1.0 / iscale);
        } else {
            b.d = f32_to_f16_bits(0.0);
        }
        for g in 0..16 {
            let d = b.group(g);
            if d == 0.0 {
                continue;
            }
            for i in 16 * g..16 * g + 16 {
                l[i] = (nearest_int(xs[i] / d).clamp(-4, 3) + 4) as i8;
            }
        }
        for (j, v) in l.iter_mut().enumerate() {
            if *v > 3 {
                b.hmask[j % 32] |= 1 << (j / 32);
                *v -= 4;
            }
        }
        for h in 0..2 {
            for i in 0..32 {
                let q = |k: usize| l[128 * h + 32 * k + i] as u8;
                b.qs[32 * h + i] = q(0) | (q(1) << 2) | (q(2) << 4) | (q(3) << 6);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dequantizes_near_and_dots_as_dequantized() {
        let x: [f32; 512] =
            core::array::from_fn(|i| (i as f32 * 0.37).sin() * (1.0 + (i / 16) as f32));
        let mut b = [BlockQ3K::ZERO; 2];
        quantize_row(&x, &mut b);
        let mut y = [0.0f32; 512];
        dequantize_row(&b, &mut y);
        for (i, (a, c)) in x.iter().zip(&y).enumerate() {
            let d = b[i / 256].group(i % 256 / 16).abs();
            assert!((a - c).abs() <= d + 1e-3, "{i}: {a} vs {c}, step {d}");
        }
        let dot = dot_f32(&b, &x);
        let exact: f32 = y.iter().zip(&x).map(|(a, b)| a * b).sum();
        assert!(
            (dot - exact).abs() < 1e-3 * exact.abs().max(1.0),
            "{dot} {exact}"
        );
    }
}
