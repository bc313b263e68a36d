//! Q4_K: super-blocks of 256 4-bit weights in eight groups of 32, each
//! group with a 6-bit scale and a 6-bit minimum, both scaled by the
//! super-block's f16 `d` and `dmin`: `x = d·sc·q − dmin·m`.
//!
//! Mirrors ggml's `block_q4_K`, `quantize_row_q4_K_ref` and
//! `dequantize_row_q4_K`.

use super::k_quants::{
    dequantize_scale_min, dot_scale_min, quantize_scale_min, ScaleMinBlock, K_SCALE_SIZE, QK_K,
};

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
    /// Eight 6-bit scales and minimums ([`super::k_quants::scale_min_k4`]).
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
        ScaleMinBlock::group(self, g)
    }
}

impl ScaleMinBlock for BlockQ4K {
    #[inline(always)]
    fn scales(&self) -> &[u8; K_SCALE_SIZE] {
        &self.scales
    }

    #[inline(always)]
    fn d_dmin(&self) -> ([u8; 2], [u8; 2]) {
        (self.d, self.dmin)
    }

    /// Element `32 g + l`'s quant, `0..16`.
    #[inline(always)]
    fn q(&self, g: usize, l: usize) -> u8 {
        let b = self.qs[32 * (g / 2) + l];
        if g.is_multiple_of(2) {
            b & 0x0f
        } else {
            b >> 4
        }
    }
}

pub fn dequantize_row(x: &[BlockQ4K], y: &mut [f32]) {
    dequantize_scale_min(x, y)
}

/// Reference `Σ dequant(w) · x` with f32 activations ([`dot_scale_min`]).
pub fn dot_f32(w: &[BlockQ4K], x: &[f32]) -> f32 {
    dot_scale_min(w, x)
}

/// Like `quantize_row_q4_K_ref` ([`quantize_scale_min`] with 15 levels,
/// the search from −1 in 20 steps), then the levels packed two to a byte.
pub fn quantize_row(x: &[f32], y: &mut [BlockQ4K]) {
    for (xs, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (d, dmin, scales, l) = quantize_scale_min(xs, 15, -1.0, 20);
        (b.d, b.dmin, b.scales) = (d, dmin, scales);
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
