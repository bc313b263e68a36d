//! Q4_K: super-blocks of 256 4-bit weights in eight groups of 32, each
//! group with a 6-bit scale and a 6-bit minimum, both scaled by the
//! super-block's f16 `d` and `dmin`: `x = d·sc·q − dmin·m`.
//!
//! Mirrors ggml's `block_q4_K`, `quantize_row_q4_K_ref` and
//! `dequantize_row_q4_K`.

use super::k_quants::{
    dequantize_scale_min, dot_scale_min, pack_scale_min_k4, quantize_scale_min,
    unpack_scale_min_k4, ScaleMinBlock, K_SCALE_SIZE, QK_K,
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

/// The same super-block of eight Q4_K rows, interleaved for the packed
/// decode kernels (one SIMD lane per row): each row's `d` and `dmin`, its
/// eight 6-bit scales and minimums unpacked to bytes (`sc[8 * g + j]` is row
/// `j`'s scale of group `g`), and per group of 32 the rows' 16 quant bytes
/// (low nibbles elements `0..16`, high `16..32`, as a Q4_1 block has them)
/// in byte pairs: `qs[128 * g + 16 * k + 2 * j + i]` is row `j`'s byte
/// `2k + i`. 1,184 bytes, 32 more than the eight file blocks. A host builds
/// these from the file's rows ([`pack_rows_x8`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ4Kx8 {
    /// The eight rows' `d`, f16 little-endian.
    pub d: [[u8; 2]; 8],
    /// The eight rows' `dmin`, f16 little-endian.
    pub dmin: [[u8; 2]; 8],
    pub sc: [u8; 64],
    pub m: [u8; 64],
    pub qs: [u8; 8 * QK / 2],
}

const _: () = assert!(core::mem::size_of::<BlockQ4Kx8>() == 1184);

// SAFETY: repr(C), byte arrays only: no padding (size asserted), any bit
// pattern valid.
unsafe impl super::Pod for BlockQ4Kx8 {}

impl BlockQ4Kx8 {
    pub const ZERO: BlockQ4Kx8 = BlockQ4Kx8 {
        d: [[0; 2]; 8],
        dmin: [[0; 2]; 8],
        sc: [0; 64],
        m: [0; 64],
        qs: [0; 8 * QK / 2],
    };

    /// Row `j`'s super-block, as the file stores it.
    pub fn row(&self, j: usize) -> BlockQ4K {
        let j = j & 7;
        let sc: [u8; 8] = core::array::from_fn(|g| self.sc[8 * g + j]);
        let m: [u8; 8] = core::array::from_fn(|g| self.m[8 * g + j]);
        let mut qs = [0u8; QK / 2];
        for g in 0..8 {
            for l in 0..32 {
                let b = self.qs[128 * g + 16 * (l % 16 / 2) + 2 * j + l % 2];
                let q = if l < 16 { b & 0x0f } else { b >> 4 };
                qs[32 * (g / 2) + l] |= if g % 2 == 0 { q } else { q << 4 };
            }
        }
        BlockQ4K {
            d: self.d[j],
            dmin: self.dmin[j],
            scales: pack_scale_min_k4(&sc, &m),
            qs,
        }
    }
}

/// Interleaves whole groups of eight rows of `nb` super-blocks each: group
/// `g`'s super-block `b` goes to `out[g * nb + b]`. Returns the groups
/// written (rows beyond the last whole group, and groups `out` has no room
/// for, are left).
pub fn pack_rows_x8(rows: &[BlockQ4K], nb: usize, out: &mut [BlockQ4Kx8]) -> usize {
    super::pack_groups(rows, nb, 8, out, |o, j, src| {
        o.d[j] = src.d;
        o.dmin[j] = src.dmin;
        let (sc, m) = unpack_scale_min_k4(&src.scales);
        for g in 0..8 {
            o.sc[8 * g + j] = sc[g];
            o.m[8 * g + j] = m[g];
            // Group g's 32 quants as a Q4_1 block's 16 bytes.
            let q = |l: usize| src.q(g, l);
            let bytes: [u8; 16] = core::array::from_fn(|i| q(i) | (q(i + 16) << 4));
            super::interleave_pairs(&mut o.qs[128 * g..128 * (g + 1)], j, &bytes);
        }
    })
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
    fn packs_round_trip() {
        // Arbitrary bytes in every field (any bit pattern is a block, and
        // any 12 scale bytes unpack and pack back to themselves).
        let byte = |r: usize, i: usize| ((r * 131 + i * 7919) % 251) as u8;
        let rows: [BlockQ4K; 8] = core::array::from_fn(|r| BlockQ4K {
            d: [byte(r, 0), byte(r, 1)],
            dmin: [byte(r, 2), byte(r, 3)],
            scales: core::array::from_fn(|i| byte(r, i + 4)),
            qs: core::array::from_fn(|i| byte(r, i + 16)),
        });
        let mut p = [BlockQ4Kx8::ZERO; 1];
        assert_eq!(pack_rows_x8(&rows, 1, &mut p), 1);
        for (j, r) in rows.iter().enumerate() {
            assert_eq!(p[0].row(j), *r);
        }
    }

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
