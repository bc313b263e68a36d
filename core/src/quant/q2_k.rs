//! Q2_K: super-blocks of 256 2-bit weights in sixteen groups of 16, each
//! group with a 4-bit scale and a 4-bit minimum scaled by the
//! super-block's f16 `d` and `dmin`: `x = d·sc·q − dmin·m`.
//!
//! Mirrors ggml's `block_q2_K`, `quantize_row_q2_K_ref` and
//! `dequantize_row_q2_K`.

// The quantizer follows ggml's reference loop for loop, indices and all.
#![allow(clippy::needless_range_loop)]

use super::k_quants::{make_qkx2_quants, nearest_int, QK_K};
use super::{f16_bits_to_f32, f32_to_f16_bits};

/// Elements per block.
pub const QK: usize = QK_K;

/// Q2_K in the format table.
pub const FORMAT: super::Format = super::block_format!(
    super::GgmlType::Q2_K,
    BlockQ2K,
    QK,
    dequantize_row,
    dot_f32,
    quantize_row
);

/// ggml's `block_q2_K`: 84 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ2K {
    /// Each group of 16: scale in the low nibble, minimum in the high.
    pub scales: [u8; QK / 16],
    /// Per 128 elements, 32 bytes: byte `l` holds elements `l`, `l + 32`,
    /// `l + 64`, `l + 96` from its low bits up.
    pub qs: [u8; QK / 4],
    /// Super-block scale of the scales, f16 little-endian.
    pub d: [u8; 2],
    /// Super-block scale of the minimums, f16 little-endian.
    pub dmin: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<BlockQ2K>() == 84);

// SAFETY: repr(C), byte arrays only: no padding (size asserted), any bit
// pattern valid.
unsafe impl super::Pod for BlockQ2K {}
impl super::Block for BlockQ2K {}

impl BlockQ2K {
    pub const ZERO: BlockQ2K = BlockQ2K {
        scales: [0; QK / 16],
        qs: [0; QK / 4],
        d: [0; 2],
        dmin: [0; 2],
    };

    /// Element `e`'s quant, `0..4`.
    #[inline(always)]
    pub fn q(&self, e: usize) -> u8 {
        let (h, k, l) = (e / 128, e % 128 / 32, e % 32);
        (self.qs[32 * h + l] >> (2 * k)) & 3
    }

    /// Group `g`'s (of 16) (scale, minimum) as f32.
    #[inline(always)]
    pub fn group(&self, g: usize) -> (f32, f32) {
        let sc = self.scales[g];
        (
            f16_bits_to_f32(self.d) * (sc & 0x0f) as f32,
            f16_bits_to_f32(self.dmin) * (sc >> 4) as f32,
        )
    }
}

pub fn dequantize_row(x: &[BlockQ2K], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        for (g, o) in out.chunks_exact_mut(16).enumerate() {
            let (d, m) = b.group(g);
            for (l, v) in o.iter_mut().enumerate() {
                *v = d * b.q(16 * g + l) as f32 - m;
            }
        }
    }
}

/// Reference `Σ dequant(w) · x` with f32 activations: per group of 16,
/// `d·sc Σ q x − dmin·m Σ x`.
pub fn dot_f32(w: &[BlockQ2K], x: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (b, xs) in w.iter().zip(x.chunks_exact(QK)) {
        for (g, xg) in xs.chunks_exact(16).enumerate() {
            let (d, m) = b.group(g);
            let (mut qx, mut sx) = (0.0f32, 0.0f32);
            for (l, &v) in xg.iter().enumerate() {
                qx += b.q(16 * g + l) as f32 * v;
                sx += v;
            }
            sum += d * qx - m * sx;
        }
    }
    sum
}

/// Like `quantize_row_q2_K_ref`: each group's scale and minimum by
/// [`make_qkx2_quants`] (absolute error, weights `|x|`), both to four bits
/// against the block's largest, then the elements requantized.
pub fn quantize_row(x: &[f32], y: &mut [BlockQ2K]) {
    for (xs, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let mut l = [0u8; QK];
        let (mut scales, mut mins) = ([0.0f32; 16], [0.0f32; 16]);
        let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
        for g in 0..16 {
            let xg = &xs[16 * g..16 * g + 16];
            let w: [f32; 16] = core::array::from_fn(|i| xg[i].abs());
            let (s, m) =
                make_qkx2_quants(3, xg, &w, &mut l[16 * g..16 * g + 16], -0.5, 0.1, 15, true);
            scales[g] = s;
            mins[g] = m;
            if s > max_scale {
                max_scale = s;
            }
            if m > max_min {
                max_min = m;
            }
        }
        *b = BlockQ2K::ZERO;
        if max_scale > 0.0 {
            let iscale = 15.0 / max_scale;
            for g in 0..16 {
                b.scales[g] = nearest_int(iscale * scales[g]) as u8;
            }
            b.d = f32_to_f16_bits(max_scale / 15.0);
        } else {
            b.d = f32_to_f16_bits(0.0);
        }
        if max_min > 0.0 {
            let iscale = 15.0 / max_min;
            for g in 0..16 {
                b.scales[g] |= (nearest_int(iscale * mins[g]) << 4) as u8;
            }
            b.dmin = f32_to_f16_bits(max_min / 15.0);
        } else {
            b.dmin = f32_to_f16_bits(0.0);
        }
        for g in 0..16 {
            let (d, dm) = b.group(g);
            if d == 0.0 {
                continue;
            }
            for i in 16 * g..16 * g + 16 {
                l[i] = nearest_int((xs[i] + dm) / d).clamp(0, 3) as u8;
            }
        }
        for h in 0..2 {
            for i in 0..32 {
                let q = |k: usize| l[128 * h + 32 * k + i];
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
        let mut b = [BlockQ2K::ZERO; 2];
        quantize_row(&x, &mut b);
        let mut y = [0.0f32; 512];
        dequantize_row(&b, &mut y);
        for (i, (a, c)) in x.iter().zip(&y).enumerate() {
            // Two bits: within the group's range.
            let (d, m) = b[i / 256].group(i % 256 / 16);
            assert!((a - c).abs() <= 2.0 * d + m + 1e-3, "{i}: {a} vs {c}");
        }
        let dot = dot_f32(&b, &x);
        let exact: f32 = y.iter().zip(&x).map(|(a, b)| a * b).sum();
        assert!(
            (dot - exact).abs() < 1e-3 * exact.abs().max(1.0),
            "{dot} {exact}"
        );
    }
}
