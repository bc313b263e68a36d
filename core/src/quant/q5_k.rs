//! Q5_K: super-blocks of 256 5-bit weights in eight groups of 32, scaled
//! as Q4_K's are: `x = d·sc·q − dmin·m`, `q` in `0..32`.
//!
//! Mirrors ggml's `block_q5_K`, `quantize_row_q5_K_ref` and
//! `dequantize_row_q5_K`.

use super::k_quants::{
    dequantize_scale_min, dot_scale_min, quantize_scale_min, ScaleMinBlock, K_SCALE_SIZE, QK_K,
};

/// Elements per block.
pub const QK: usize = QK_K;

/// Q5_K in the format table.
pub const FORMAT: super::Format = super::block_format!(
    super::GgmlType::Q5_K,
    BlockQ5K,
    QK,
    dequantize_row,
    dot_f32,
    quantize_row
);

/// ggml's `block_q5_K`: 176 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ5K {
    /// Super-block scale of the scales, f16 little-endian.
    pub d: [u8; 2],
    /// Super-block scale of the minimums, f16 little-endian.
    pub dmin: [u8; 2],
    /// Eight 6-bit scales and minimums ([`super::k_quants::scale_min_k4`]).
    pub scales: [u8; K_SCALE_SIZE],
    /// Fifth bits: element `32 g + l`'s at bit `g` of byte `l`.
    pub qh: [u8; QK / 8],
    /// Low four bits, laid out as Q4_K's nibbles.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(core::mem::size_of::<BlockQ5K>() == 176);

// SAFETY: repr(C), byte arrays only: no padding (size asserted), any bit
// pattern valid.
unsafe impl super::Pod for BlockQ5K {}
impl super::Block for BlockQ5K {}

impl BlockQ5K {
    pub const ZERO: BlockQ5K = BlockQ5K {
        d: [0; 2],
        dmin: [0; 2],
        scales: [0; K_SCALE_SIZE],
        qh: [0; QK / 8],
        qs: [0; QK / 2],
    };

    /// Group `g`'s (scale, minimum) as f32: `d·sc`, `dmin·m`.
    #[inline(always)]
    pub fn group(&self, g: usize) -> (f32, f32) {
        ScaleMinBlock::group(self, g)
    }
}

impl ScaleMinBlock for BlockQ5K {
    #[inline(always)]
    fn scales(&self) -> &[u8; K_SCALE_SIZE] {
        &self.scales
    }

    #[inline(always)]
    fn d_dmin(&self) -> ([u8; 2], [u8; 2]) {
        (self.d, self.dmin)
    }

    /// Element `32 g + l`'s quant, `0..32`.
    #[inline(always)]
    fn q(&self, g: usize, l: usize) -> u8 {
        let b = self.qs[32 * (g / 2) + l];
        let lo = if g.is_multiple_of(2) {
            b & 0x0f
        } else {
            b >> 4
        };
        lo | (((self.qh[l] >> g) & 1) << 4)
    }
}

pub fn dequantize_row(x: &[BlockQ5K], y: &mut [f32]) {
    dequantize_scale_min(x, y)
}

/// Reference `Σ dequant(w) · x` with f32 activations ([`dot_scale_min`]).
pub fn dot_f32(w: &[BlockQ5K], x: &[f32]) -> f32 {
    dot_scale_min(w, x)
}

/// Like `quantize_row_q5_K_ref` ([`quantize_scale_min`] with 31 levels,
/// the search from −0.5 in 15 steps), then the low four bits packed two to
/// a byte and the fifth bits in `qh`.
pub fn quantize_row(x: &[f32], y: &mut [BlockQ5K]) {
    for (xs, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let (d, dmin, scales, l) = quantize_scale_min(xs, 31, -0.5, 15);
        (b.d, b.dmin, b.scales) = (d, dmin, scales);
        b.qh = [0; QK / 8];
        for (j, q) in b.qs.chunks_exact_mut(32).enumerate() {
            for (i, o) in q.iter_mut().enumerate() {
                let (l1, l2) = (l[64 * j + i], l[64 * j + i + 32]);
                b.qh[i] |= ((l1 >> 4) << (2 * j)) | ((l2 >> 4) << (2 * j + 1));
                *o = (l1 & 0x0f) | ((l2 & 0x0f) << 4);
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
        let mut b = [BlockQ5K::ZERO; 2];
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
