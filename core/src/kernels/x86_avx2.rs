//! x86_64 AVX2 + FMA + F16C twins of the scalar kernels (f32 activations).
//!
//! Each block is widened to f32 in registers (`vpmovsxbd`/`vpmovzxbd`,
//! `vcvtdq2ps`, `vcvtph2ps`) and multiplied with the activations by FMA, eight
//! lanes at a time. Results differ from the scalar reference only by FMA
//! rounding and summation order; `conformance.rs` holds them together.
//!
//! The `unsafe` here is the intrinsics and the `#[target_feature]` calls. The
//! safe wrappers are private: the only way to reach them is [`table`], which
//! installs them after checking that the CPU has all three features.

#![allow(unsafe_code)]

use core::arch::x86_64::*;

use half::f16;

use super::Kernels;
use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK};

/// The AVX2 table, if this CPU runs it (checked at run time with `std`, at
/// compile time without).
pub fn table() -> Option<Kernels> {
    if !supported() {
        return None;
    }
    Some(Kernels {
        name: "avx2",
        dot_f32,
        dot_f16,
        dot_q8_0,
        dot_q4_0,
        dot_q4_1,
        q8_0_q8_0: None,
    })
}

#[cfg(feature = "std")]
fn supported() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

#[cfg(not(feature = "std"))]
fn supported() -> bool {
    cfg!(all(
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))
}

// The wrappers: sound because `table` only hands them out after `supported()`.
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: reachable only through `table`, which checked AVX2, FMA and F16C.
    unsafe { imp::dot_f32(a, b) }
}
fn dot_f16(a: &[f16], b: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { imp::dot_f16(a, b) }
}
fn dot_q8_0(w: &[BlockQ8_0], x: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { imp::dot_q8_0(w, x) }
}
fn dot_q4_0(w: &[BlockQ4_0], x: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { imp::dot_q4_0(w, x) }
}
fn dot_q4_1(w: &[BlockQ4_1], x: &[f32]) -> f32 {
    // SAFETY: as above.
    unsafe { imp::dot_q4_1(w, x) }
}

mod imp {
    use super::*;

    /// Sum of the eight lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Eight f32 from `p`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn load8(p: &[f32; 8]) -> __m256 {
        // SAFETY: `p` is exactly eight readable floats; loadu has no alignment need.
        unsafe { _mm256_loadu_ps(p.as_ptr()) }
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (ca, ta) = a[..n].as_chunks::<8>();
        let (cb, tb) = b[..n].as_chunks::<8>();
        let mut acc = _mm256_setzero_ps();
        for (x, y) in ca.iter().zip(cb) {
            acc = _mm256_fmadd_ps(load8(x), load8(y), acc);
        }
        let mut s = hsum(acc);
        for (x, y) in ta.iter().zip(tb) {
            s += x * y;
        }
        s
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(a: &[f16], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (ca, ta) = a[..n].as_chunks::<8>();
        let (cb, tb) = b[..n].as_chunks::<8>();
        let mut acc = _mm256_setzero_ps();
        for (h, y) in ca.iter().zip(cb) {
            // SAFETY: eight halves (16 bytes) are readable at `h`; loadu is unaligned.
            let w = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(h.as_ptr().cast()) });
            acc = _mm256_fmadd_ps(w, load8(y), acc);
        }
        let mut s = hsum(acc);
        for (h, y) in ta.iter().zip(tb) {
            s += h.to_f32() * y;
        }
        s
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8_0(w: &[BlockQ8_0], x: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (b, xs) in w.iter().zip(x.as_chunks::<QK>().0) {
            let mut s = _mm256_setzero_ps();
            for (k, x8) in xs.as_chunks::<8>().0.iter().enumerate() {
                // SAFETY: bytes 8k..8k+8 of the 32 quants are in bounds (k < 4).
                let q = unsafe { _mm_loadl_epi64(b.qs.as_ptr().add(8 * k).cast()) };
                let wf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                s = _mm256_fmadd_ps(wf, load8(x8), s);
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(b.d()), s, acc);
        }
        hsum(acc)
    }

    /// Nibbles of a Q4 block widened to 4 x 8 i32: elements 0..8, 8..16
    /// (low nibbles), 16..24, 24..32 (high nibbles).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn nibbles(qs: &[u8; 16]) -> [__m256i; 4] {
        // SAFETY: 16 readable bytes; loadu is unaligned.
        let q = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
        let m = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(q, m);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), m);
        [
            _mm256_cvtepu8_epi32(lo),
            _mm256_cvtepu8_epi32(_mm_srli_si128::<8>(lo)),
            _mm256_cvtepu8_epi32(hi),
            _mm256_cvtepu8_epi32(_mm_srli_si128::<8>(hi)),
        ]
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_0(w: &[BlockQ4_0], x: &[f32]) -> f32 {
        let eight = _mm256_set1_epi32(8);
        let mut acc = _mm256_setzero_ps();
        for (b, xs) in w.iter().zip(x.as_chunks::<QK>().0) {
            let q = nibbles(&b.qs);
            let mut s = _mm256_setzero_ps();
            for (qi, x8) in q.iter().zip(xs.as_chunks::<8>().0) {
                let wf = _mm256_cvtepi32_ps(_mm256_sub_epi32(*qi, eight));
                s = _mm256_fmadd_ps(wf, load8(x8), s);
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(b.d()), s, acc);
        }
        hsum(acc)
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_1(w: &[BlockQ4_1], x: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (b, xs) in w.iter().zip(x.as_chunks::<QK>().0) {
            let q = nibbles(&b.qs);
            let mut s = _mm256_setzero_ps();
            let mut sx = _mm256_setzero_ps();
            for (qi, x8) in q.iter().zip(xs.as_chunks::<8>().0) {
                let xv = load8(x8);
                s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*qi), xv, s);
                sx = _mm256_add_ps(sx, xv);
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(b.d()), s, acc);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(b.m()), sx, acc);
        }
        hsum(acc)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    #[test]
    fn conforms_to_scalar() {
        match super::table() {
            Some(k) => crate::kernels::conformance::check_table(&k),
            None => std::eprintln!("skip: this CPU lacks AVX2/FMA/F16C"),
        }
    }
}
