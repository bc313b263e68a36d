//! Q4_0: blocks of 32 4-bit weights with one f16 scale; `x = d * (q - 8)`.
//!
//! Byte `j` holds element `j` in its low nibble and element `j + 16` in its
//! high nibble, as ggml's `block_q4_0`. Rounding follows `quantize_row_q4_0_ref`.

use super::{f16_bits_to_f32, f32_to_f16_bits, BlockQ8_0};

/// Elements per block.
pub const QK: usize = 32;

/// Q4_0 in the format table.
pub const FORMAT: super::Format = super::block_format!(
    super::GgmlType::Q4_0,
    BlockQ4_0,
    QK,
    dequantize_row,
    dot_f32,
    quantize_row
);

/// ggml's `block_q4_0`: 18 bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ4_0 {
    /// Scale, f16 little-endian.
    pub d: [u8; 2],
    /// Nibbles: low = element j, high = element j + 16.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(core::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(core::mem::align_of::<BlockQ4_0>() == 1);

impl BlockQ4_0 {
    pub const ZERO: BlockQ4_0 = BlockQ4_0 {
        d: [0; 2],
        qs: [0; QK / 2],
    };

    #[inline(always)]
    pub fn d(&self) -> f32 {
        f16_bits_to_f32(self.d)
    }
}

pub fn dequantize_row(x: &[BlockQ4_0], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d();
        for j in 0..QK / 2 {
            out[j] = ((b.qs[j] & 0x0f) as i32 - 8) as f32 * d;
            out[j + QK / 2] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Like `quantize_row_q4_0_ref`: `d = max / -8` where `max` is the signed value
/// of largest magnitude; `q = min(15, (i8)(x / d + 8.5))`.
pub fn quantize_row(x: &[f32], y: &mut [BlockQ4_0]) {
    for (xs, b) in x.chunks_exact(QK).zip(y.iter_mut()) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in xs {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16_bits(d);
        for j in 0..QK / 2 {
            let q0 = nibble(xs[j] * id + 8.5);
            let q1 = nibble(xs[j + QK / 2] * id + 8.5);
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// C's `MIN(15, (int8_t)v)` for the values quantization produces (0 ..= 16.5):
/// truncation toward zero, then the upper clamp. Saturating casts keep NaN and
/// out-of-range input defined (NaN becomes 0).
#[inline(always)]
pub(crate) fn nibble(v: f32) -> u8 {
    (v as i8).clamp(0, 15) as u8
}

pub fn dot_f32(w: &[BlockQ4_0], x: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (b, xs) in w.iter().zip(x.chunks_exact(QK)) {
        let mut acc = 0.0f32;
        for j in 0..QK / 2 {
            acc += ((b.qs[j] & 0x0f) as i32 - 8) as f32 * xs[j];
            acc += ((b.qs[j] >> 4) as i32 - 8) as f32 * xs[j + QK / 2];
        }
        sum += b.d() * acc;
    }
    sum
}

/// ggml's `vec_dot_q4_0_q8_0`.
pub fn vec_dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    let mut sum = 0.0f32;
    for (a, b) in x.iter().zip(y) {
        let mut isum = 0i32;
        for j in 0..QK / 2 {
            isum += ((a.qs[j] & 0x0f) as i32 - 8) * b.qs[j] as i32;
            isum += ((a.qs[j] >> 4) as i32 - 8) * b.qs[j + QK / 2] as i32;
        }
        sum += isum as f32 * (a.d() * b.d());
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_within_one_step() {
        let x: [f32; 32] = core::array::from_fn(|i| (i as f32 - 12.0) * 0.25);
        let mut b = [BlockQ4_0::ZERO];
        quantize_row(&x, &mut b);
        let mut y = [0.0f32; 32];
        dequantize_row(&b, &mut y);
        let step = b[0].d().abs();
        for (a, c) in x.iter().zip(&y) {
            assert!((a - c).abs() <= step * 0.5 + 1e-3, "{a} vs {c}");
        }
    }

    #[test]
    fn nibble_truncates_like_c() {
        assert_eq!(nibble(8.5), 8);
        assert_eq!(nibble(16.4), 15);
        assert_eq!(nibble(0.9), 0);
        assert_eq!(nibble(f32::NAN), 0);
    }
}
