//! 16-bit activation blocks: how decode feeds quantized weight rows.
//!
//! A block holds 32 activations as `q[i] = round(x[i] / d)` with
//! `d = max|x| / 32767`, so each is within `d / 2` (about 1.5e-5 of the
//! block's largest magnitude) of the float. A weight block's dot with it is
//! then exact integer arithmetic (`vpmaddwd` on x86, `smlal` on Arm) times
//! the two scales, instead of widening every weight to f32. ggml quantizes
//! activations to 8 bits for the same reason; 16 bits keep the error 256
//! times smaller, far below the weights' own quantization error.

use super::{BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0};

/// Activations per block: one block of each 32-element weight format (eight
/// of a 256-element super-block).
pub const QK: usize = 32;

const _: () = assert!(super::q8_0::QK == QK && super::q4_0::QK == QK && super::q4_1::QK == QK);

/// 32 activations at 16 bits, with their scale and sums.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockQ16 {
    /// Scale: `x[i] ≈ d * qs[i]`.
    pub d: f32,
    /// `d * isum`: the sum of the 32 values as quantized (for Q4_1's
    /// minimum term, so it sees the same activations as the dot).
    pub sum: f32,
    /// Sum of the 32 quants (for Q4_0's offset, exactly).
    pub isum: i32,
    /// Keeps `qs` 16-byte aligned within the block.
    pub pad: i32,
    pub qs: [i16; QK],
}

const _: () = assert!(core::mem::size_of::<BlockQ16>() == 80);

impl BlockQ16 {
    pub const ZERO: BlockQ16 = BlockQ16 {
        d: 0.0,
        sum: 0.0,
        isum: 0,
        pad: 0,
        qs: [0; QK],
    };
}

/// Adding and subtracting 1.5 * 2^23 rounds half to even (exact for
/// |v| <= 32767 < 2^22).
pub const ROUND: f32 = 12_582_912.0;

/// Quantizes whole blocks of `x` into `out` (`x.len() / 32` blocks): the
/// reference the fast tables' quantizers match bit for bit. NaN is ignored
/// by the maximum and quantizes to 0.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ16]) {
    for (b, xs) in out.iter_mut().zip(x.as_chunks::<QK>().0) {
        let amax = xs
            .iter()
            .fold(0.0f32, |m, v| if v.abs() > m { v.abs() } else { m });
        let d = amax / 32767.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut isum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            // `as` saturates and maps NaN to 0.
            *q = ((v * id + ROUND) - ROUND) as i16;
            isum += *q as i32;
        }
        b.d = d;
        b.sum = d * isum as f32;
        b.isum = isum;
        b.pad = 0;
    }
}

/// Q8_0 row · 16-bit activations: per block the exact integer dot times
/// both scales, summed in block order.
pub fn dot_q8_0_q16(w: &[BlockQ8_0], x: &[BlockQ16]) -> f32 {
    let mut s = 0.0f32;
    for (b, xb) in w.iter().zip(x) {
        let i: i32 =
            b.qs.iter()
                .zip(&xb.qs)
                .map(|(&q, &v)| q as i32 * v as i32)
                .sum();
        s += b.d() * xb.d * i as f32;
    }
    s
}

/// Q4_0 row · 16-bit activations (nibbles minus 8, exactly in integers).
pub fn dot_q4_0_q16(w: &[BlockQ4_0], x: &[BlockQ16]) -> f32 {
    let mut s = 0.0f32;
    for (b, xb) in w.iter().zip(x) {
        s += b.d() * xb.d * nibble_dot(&b.qs, xb, 8) as f32;
    }
    s
}

/// Q4_1 row · 16-bit activations: `d * Σ q·x + m * Σ x` per block.
pub fn dot_q4_1_q16(w: &[BlockQ4_1], x: &[BlockQ16]) -> f32 {
    let mut s = 0.0f32;
    for (b, xb) in w.iter().zip(x) {
        s += b.d() * xb.d * nibble_dot(&b.qs, xb, 0) as f32 + b.m() * xb.sum;
    }
    s
}

/// Q5_0 row · 16-bit activations: `d Σ (q − 16)·x` per block.
pub fn dot_q5_0_q16(w: &[BlockQ5_0], x: &[BlockQ16]) -> f32 {
    let mut s = 0.0f32;
    for (b, xb) in w.iter().zip(x) {
        let i: i32 = (0..QK)
            .map(|j| (b.q(j) as i32 - 16) * xb.qs[j] as i32)
            .sum();
        s += b.d() * xb.d * i as f32;
    }
    s
}

/// Q5_1 row · 16-bit activations: `d Σ q·x + m Σ x` per block.
pub fn dot_q5_1_q16(w: &[BlockQ5_1], x: &[BlockQ16]) -> f32 {
    let mut s = 0.0f32;
    for (b, xb) in w.iter().zip(x) {
        let i: i32 = (0..QK).map(|j| b.q(j) as i32 * xb.qs[j] as i32).sum();
        s += super::f16_bits_to_f32(b.d) * xb.d * i as f32 + super::f16_bits_to_f32(b.m) * xb.sum;
    }
    s
}

/// Activation blocks per K-quant super-block.
pub const PER_SUPER: usize = super::k_quants::QK_K / QK;

/// Q4_K or Q5_K row · 16-bit activations: per group of 32 (one activation
/// block), `d·sc Σ q·x − dmin·m Σ x`.
pub fn dot_scale_min_q16<B: super::k_quants::ScaleMinBlock>(w: &[B], x: &[BlockQ16]) -> f32 {
    let mut s = 0.0f32;
    for (b, xs) in w.iter().zip(x.chunks_exact(PER_SUPER)) {
        for (g, xb) in xs.iter().enumerate() {
            let (d, m) = b.group(g);
            let i: i32 = (0..QK).map(|l| b.q(g, l) as i32 * xb.qs[l] as i32).sum();
            s += d * xb.d * i as f32 - m * xb.sum;
        }
    }
    s
}

/// Q6_K row · 16-bit activations: per activation block its two groups of
/// 16, `Σ sc·(q − 32)·x` exactly in integers, times `d` and the block's
/// scale. Each product is below 2^28 in size, but 32 of them at their
/// largest pass 2^31: the sum wraps, as the fast kernels' i32 lanes do.
pub fn dot_q6_k_q16(w: &[BlockQ6K], x: &[BlockQ16]) -> f32 {
    let mut s = 0.0f32;
    for (b, xs) in w.iter().zip(x.chunks_exact(PER_SUPER)) {
        for (k, xb) in xs.iter().enumerate() {
            let i: i32 = (0..QK)
                .map(|l| {
                    let e = QK * k + l;
                    b.scales[e / 16] as i32 * (b.q(e) as i32 - 32) * xb.qs[l] as i32
                })
                .fold(0i32, i32::wrapping_add);
            s += super::f16_bits_to_f32(b.d) * xb.d * i as f32;
        }
    }
    s
}

/// Q3_K row · 16-bit activations, as Q6_K's with scales `sc − 32`.
pub fn dot_q3_k_q16(w: &[BlockQ3K], x: &[BlockQ16]) -> f32 {
    let mut s = 0.0f32;
    for (b, xs) in w.iter().zip(x.chunks_exact(PER_SUPER)) {
        for (k, xb) in xs.iter().enumerate() {
            let i: i32 = (0..QK)
                .map(|l| {
                    let e = QK * k + l;
                    (b.scale(e / 16) - 32) * b.q(e) * xb.qs[l] as i32
                })
                .sum();
            s += super::f16_bits_to_f32(b.d) * xb.d * i as f32;
        }
    }
    s
}

/// Σ (nibble - off) · q over a block: low nibbles are elements 0..16, high 16..32.
fn nibble_dot(qs: &[u8; QK / 2], xb: &BlockQ16, off: i32) -> i32 {
    let mut i = 0i32;
    for (j, &q) in qs.iter().enumerate() {
        i += ((q & 0x0f) as i32 - off) * xb.qs[j] as i32;
        i += ((q >> 4) as i32 - off) * xb.qs[j + QK / 2] as i32;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quants_are_within_half_a_step() {
        let x: [f32; 64] = core::array::from_fn(|i| ((i * 37 % 64) as f32 - 31.5) * 0.173);
        let mut b = [BlockQ16::ZERO; 2];
        quantize_row(&x, &mut b);
        for (blk, xs) in b.iter().zip(x.chunks(32)) {
            assert_eq!(blk.qs.iter().map(|&q| q as i32).sum::<i32>(), blk.isum);
            assert_eq!(blk.sum, blk.d * blk.isum as f32);
            assert!((blk.sum - xs.iter().sum::<f32>()).abs() < 32.0 * blk.d);
            assert!(blk.qs.iter().any(|&q| q.unsigned_abs() == 32767));
            for (&q, &v) in blk.qs.iter().zip(xs) {
                assert!((q as f32 * blk.d - v).abs() <= blk.d * 0.5001);
            }
        }
        let mut z = [BlockQ16::ZERO; 1];
        quantize_row(&[0.0; 32], &mut z);
        assert_eq!(z[0], BlockQ16::ZERO);
    }
}
