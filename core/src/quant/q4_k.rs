//! Q4_K: super-blocks of 256 4-bit weights in eight groups of 32, each
//! group with a 6-bit scale and a 6-bit minimum, both scaled by the
//! super-block's f16 `d` and `dmin`: `x = d·sc·q − dmin·m`.
//!
//! Mirrors ggml's `block_q4_K`, `quantize_row_q4_K_ref` and
//! `dequantize_row_q4_K`.

// The quantizer follows ggml's reference loop for loop, indices and all.
#![allow(clippy::needless_range_loop)]

use super::k_quants::{
    make_qkx2_quants, nearest_int, pack_scale_min_k4, rms_weights, scale_min_k4, K_SCALE_SIZE, QK_K,
};
use super::{f16_bits_to_f32, f32_to_f16_bits};

/// Elements per block.
pub const QK: usize = QK_K;

/// Q4_K in the format table.
pub const FORMAT: super::Format = super::block_format!(
    super::GgmlType::Q4_K,
    BlockQ4K,
    QK,
    dequantize_row,
    dot_f32,
    quantize_row
);

/// ggml's `block_q4_K`: 144 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ4K {
    /// Super-block scale of the scales, f16 little-endian.
    pub d: [u8; 2],
    /// Super-block scale of the minimums, f16 little-endian.
    pub dmin: [u8; 2],
    /// Eight 6-bit scales and minimums ([`scale_min_k4`]).
    pub scales: [u8; K_SCALE_SIZE],
    /// Per 64 elements, 32 bytes: low nibbles the first group of 32, high
    /// nibbles the second.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(core::mem::size_of::<BlockQ4K>() == 144);

// SAFETY: repr(C), byte arrays only: no padding (size asserted), any bit
// pattern valid.
unsafe impl super::Pod for BlockQ4K {}
impl super::Block for BlockQ4K {}

impl BlockQ4K {
    pub const ZERO: BlockQ4K = BlockQ4K {
        d: [0; 2],
        dmin: [0; 2],
        scales: [0; K_SCALE_SIZE],
        qs: [0; QK / 2],
    };

    /// Group `g`'s (scale, minimum) as f32: `d·sc`, `dmin·m`.
    #[inline(always)]
    pub fn group(&self, g: usize) -> (f32, f32) {
        let (sc, m) = scale_min_k4(g, &self.scales);
        (
            f16_bits_to_f32(self.d) * sc as f32,
            f16_bits_to_f32(self.dmin) * m as f32,
        )
    }

    /// Element `32 g + l`'s quant, `0..16`.
    #[inline(always)]
    pub fn q(&self, g: usize, l: usize) -> u8 {
        let b = self.qs[32 * (g / 2) + l];
        if g.is_multiple_of(2) {
            b & 0x0f
        } else {
            b >> 4
        }
    }
}

pub fn dequantize_row(x: &[BlockQ4K], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        for (g, o) in out.chunks_exact_mut(32).enumerate() {
            let (d, m) = b.group(g);
            for (l, v) in o.iter_mut().enumerate() {
                *v = d * b.q(g, l) as f32 - m;
            }
        }
    }
}

/// Reference `Σ dequant(w) · x` with f32 activations: per group of 32,
/// `d·sc Σ q x − dmin·m Σ x`.
pub fn dot_f32(w: &[BlockQ4K], x: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (b, xs) in w.iter().zip(x.chunks_exact(QK)) {
        for (g, xg) in xs.chunks_exact(32).enumerate() {
            let (d, m) = b.group(g);
            let (mut qx, mut sx) = (0.0f32, 0.0f32);
            for (l, &v) in xg.iter().enumerate() {
                qx += b.q(g, l) as f32 * v;
                sx += v;
            }
            sum += d * qx - m * sx;
        }
    }
    sum
}

/// Like `quantize_row_q4_K_ref`: each group's scale and minimum searched
/// by [`make_qkx2_quants`], quantized to six bits against the block's
/// largest, then the elements requantized with the stored scales.
pub fn quantize_row(x: &[f32], y: &mut [BlockQ4K]) {
    for (xs, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let mut l = [0u8; QK];
        let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
        let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
        for g in 0..8 {
            let xg: &[f32; 32] = xs[32 * g..32 * g + 32].try_into().unwrap_or(&[0.0; 32]);
            let w = rms_weights(xg);
            let (s, m) = make_qkx2_quants(
                15,
                xg,
                &w,
                &mut l[32 * g..32 * g + 32],
                -1.0,
                0.1,
                20,
                false,
            );
            scales[g] = s;
            mins[g] = m;
            if s > max_scale {
                max_scale = s;
            }
            if m > max_min {
                max_min = m;
            }
        }
        let inv_scale = if max_scale > 0.0 {
            63.0 / max_scale
        } else {
            0.0
        };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let ls: [u8; 8] =
            core::array::from_fn(|g| (nearest_int(inv_scale * scales[g]) as u8).min(63));
        let lm: [u8; 8] = core::array::from_fn(|g| (nearest_int(inv_min * mins[g]) as u8).min(63));
        b.scales = pack_scale_min_k4(&ls, &lm);
        b.d = f32_to_f16_bits(max_scale / 63.0);
        b.dmin = f32_to_f16_bits(max_min / 63.0);
        for g in 0..8 {
            let (d, dm) = b.group(g);
            if d == 0.0 {
                continue;
            }
            for i in 32 * g..32 * g + 32 {
                l[i] = nearest_int((xs[i] + dm) / d).clamp(0, 15) as u8;
            }
        }
        for (j, q) in b.qs.chunks_exact_mut(32).enumerate() {
            for (i, o) in q.iter_mut().enumerate() {
                *o = l[64 * j + i] | (l[64 * j + i + 32] << 4);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_within_a_step() {
        let x: [f32; 512] =
            core::array::from_fn(|i| (i as f32 * 0.37).sin() * (1.0 + (i / 32) as f32));
        let mut b = [BlockQ4K::ZERO; 2];
        quantize_row(&x, &mut b);
        let mut y = [0.0f32; 512];
        dequantize_row(&b, &mut y);
        for (i, (a, c)) in x.iter().zip(&y).enumerate() {
            let (d, _) = b[i / 256].group(i % 256 / 32);
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
