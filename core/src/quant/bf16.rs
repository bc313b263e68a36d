//! BF16: the upper half of an f32 (bfloat16), stored little-endian.
//!
//! Mirrors ggml's `GGML_TYPE_BF16`: widening is exact (the bits shifted
//! up), narrowing rounds to nearest even and keeps NaNs quiet, as
//! `ggml_compute_fp32_to_bf16` does.

use super::{Format, GgmlType};

/// BF16 in the format table.
pub const FORMAT: Format = Format {
    ty: GgmlType::BF16,
    block_len: 1,
    block_bytes: 2,
    dequantize: |w, y| {
        for (o, b) in y.iter_mut().zip(w.chunks_exact(2)) {
            *o = widen([b[0], b[1]]);
        }
    },
    dot: |w, x| {
        let mut sum = 0.0f32;
        for (b, v) in w.chunks_exact(2).zip(x) {
            sum += widen([b[0], b[1]]) * v;
        }
        sum
    },
    #[cfg(any(feature = "alloc", test))]
    quantize: |x, y| {
        for (o, v) in y.chunks_exact_mut(2).zip(x) {
            o.copy_from_slice(&narrow(*v));
        }
    },
};

/// A stored bf16 as f32 (exact).
#[inline(always)]
pub fn widen(b: [u8; 2]) -> f32 {
    f32::from_bits((u16::from_le_bytes(b) as u32) << 16)
}

/// An f32 rounded to bf16, nearest even; NaN stays NaN (quiet).
#[inline(always)]
pub fn narrow(x: f32) -> [u8; 2] {
    let u = x.to_bits();
    let h = if u & 0x7fff_ffff > 0x7f80_0000 {
        (u >> 16) | 64
    } else {
        (u + (0x7fff + ((u >> 16) & 1))) >> 16
    };
    (h as u16).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_even_and_widens_exactly() {
        for v in [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            3.3e-3,
            1e-40,
            f32::MAX,
            f32::INFINITY,
        ] {
            let b = narrow(v);
            assert_eq!(widen(b), half::bf16::from_f32(v).to_f32(), "{v}");
        }
        // Halfway between two bf16 values: to the even one.
        let even = f32::from_bits(0x3f80_8000);
        assert_eq!(widen(narrow(even)).to_bits(), 0x3f80_0000);
        let odd = f32::from_bits(0x3f81_8000);
        assert_eq!(widen(narrow(odd)).to_bits(), 0x3f82_0000);
        assert!(widen(narrow(f32::NAN)).is_nan());
    }
}
