//! Elementary functions for the per-token path, written so loops over them
//! vectorize (no branches, no table lookups).

#![forbid(unsafe_code)]

/// `e^x` within 2 ulp over the range that matters, branch-free (Cephes'
/// `expf` polynomial after an exact range reduction by `ln 2`).
///
/// Below -87.3 the result is 0 (no subnormals); above 88.3 it stays at
/// `e^88.3` (about 2e38) instead of overflowing. NaN gives NaN. Softmax and
/// SiLU, its callers, never reach either end in a meaningful way.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^8.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let under = x < -87.3;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n by building the exponent field: n is in [-126, 127] after the clamp.
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if under {
        0.0
    } else {
        e * scale
    }
}

/// SiLU, `x * sigmoid(x)`, as `x / (1 + e^-x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `2 sqrt(2/pi)`, GELU's tanh form as a sigmoid.
pub const GELU_2C: f32 = 1.595_769_2;

/// GELU in its tanh form, `0.5 x (1 + tanh(u))` with
/// `u = sqrt(2/pi) (x + 0.044715 x^3)`, as `x / (1 + e^-2u)`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    let z = GELU_2C * (x + 0.044_715 * x * x * x);
    x / (1.0 + exp(-z))
}

/// GeGLU's gate in place: `g[i] = gelu(g[i]) * u[i]`.
pub fn geglu(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        *g = gelu(*g) * u;
    }
}

/// SwiGLU's gate in place: `g[i] = silu(g[i]) * u[i]`.
pub fn swiglu(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        *g = silu(*g) * u;
    }
}

/// Limbs of [`sum_squares`]' accumulator: bit 0 is 2^-298 (the smallest
/// square of an f32), the largest square reaches bit 553, and 2^64 of them
/// stay below bit 618.
const SQ_LIMBS: usize = 20;

/// A finite f32's magnitude as `(m, e)` with `|v| = m * 2^(e - 149)`, or
/// `None` for NaN and infinities (the subnormal exponent is that of the
/// smallest normal).
#[inline(always)]
fn square_parts(v: f32) -> Option<(u32, u32)> {
    let b = v.to_bits() & 0x7fff_ffff;
    let be = b >> 23;
    if be == 0xff {
        None
    } else if be == 0 {
        Some((b, 0))
    } else {
        Some(((b & 0x7f_ffff) | 1 << 23, be - 1))
    }
}

/// The exact `Σ v²` as [`sum_squares`]' 32-bit limbs, with whether `x`
/// held a NaN and an infinity.
fn square_sum_limbs(x: &[f32]) -> ([u32; SQ_LIMBS], bool, bool) {
    #[cfg(target_pointer_width = "64")]
    return square_sum_limbs64(x);
    #[cfg(not(target_pointer_width = "64"))]
    return square_sum_limbs32(x);
}

/// [`square_sum_limbs`] in 32-bit limbs, each square shifted into three.
#[cfg(any(test, not(target_pointer_width = "64")))]
fn square_sum_limbs32(x: &[f32]) -> ([u32; SQ_LIMBS], bool, bool) {
    let mut acc = [0u32; SQ_LIMBS];
    let (mut nan, mut inf) = (false, false);
    for &v in x {
        let Some((vm, ve)) = square_parts(v) else {
            nan |= v.is_nan();
            inf |= v.is_infinite();
            continue;
        };
        // v² = sq * 2^(2 ve - 298); bit offset 2 ve is at most 506.
        let sq = vm as u64 * vm as u64;
        let (lo, hi) = (sq as u32, (sq >> 32) as u32);
        let o = 2 * ve;
        let (i, sh) = ((o / 32) as usize & 15, o % 32);
        // The square shifted into three limbs (`>> 1 >>` keeps sh == 0 in range).
        let w0 = lo << sh;
        let w1 = hi << sh | lo >> 1 >> (31 - sh);
        let w2 = hi >> 1 >> (31 - sh);
        let t = acc[i] as u64 + w0 as u64;
        acc[i] = t as u32;
        let t = acc[i + 1] as u64 + w1 as u64 + (t >> 32);
        acc[i + 1] = t as u32;
        let t = acc[i + 2] as u64 + w2 as u64 + (t >> 32);
        acc[i + 2] = t as u32;
        let mut carry = t >> 32 != 0;
        for a in acc.iter_mut().skip(i + 3) {
            if !carry {
                break;
            }
            (*a, carry) = a.overflowing_add(1);
        }
    }
    (acc, nan, inf)
}

/// [`square_sum_limbs32`] on 64-bit targets: the same integer, accumulated
/// in 64-bit limbs (each square, below 2^48, shifted into two of them), then
/// split into 32-bit ones.
#[cfg(target_pointer_width = "64")]
fn square_sum_limbs64(x: &[f32]) -> ([u32; SQ_LIMBS], bool, bool) {
    /// Adds `v²` into `acc`, or returns `false` for NaN and infinities.
    #[inline(always)]
    fn add(acc: &mut [u64; SQ_LIMBS / 2], v: f32) -> bool {
        let Some((vm, ve)) = square_parts(v) else {
            return false;
        };
        let sq = vm as u64 * vm as u64;
        let o = 2 * ve;
        let (i, sh) = ((o / 64) as usize & 7, o % 64);
        let wide = (sq as u128) << sh;
        let (lo, hi) = (wide as u64, (wide >> 64) as u64);
        let c;
        (acc[i], c) = acc[i].overflowing_add(lo);
        // hi < 2^47, so hi + 1 does not wrap.
        let mut carry;
        (acc[i + 1], carry) = acc[i + 1].overflowing_add(hi + c as u64);
        for a in acc.iter_mut().skip(i + 2) {
            if !carry {
                break;
            }
            (*a, carry) = a.overflowing_add(1);
        }
        true
    }
    // Four accumulators, one per lane of four elements: consecutive squares
    // mostly land in the same limbs, and one accumulator would make each
    // add wait for the last one's store.
    let mut acc = [[0u64; SQ_LIMBS / 2]; 4];
    let mut special = false;
    let (quads, tail) = x.as_chunks::<4>();
    for q in quads {
        for (a, &v) in acc.iter_mut().zip(q) {
            special |= !add(a, v);
        }
    }
    for &v in tail {
        special |= !add(&mut acc[0], v);
    }
    let (nan, inf) = if special {
        (
            x.iter().any(|v| v.is_nan()),
            x.iter().any(|v| v.is_infinite()),
        )
    } else {
        (false, false)
    };
    // The four sums added exactly (their total stays below the top limb).
    let mut total = [0u64; SQ_LIMBS / 2];
    for a in &acc {
        let mut carry = false;
        for (t, &v) in total.iter_mut().zip(a) {
            let (s, c1) = t.overflowing_add(v);
            let (s, c2) = s.overflowing_add(carry as u64);
            *t = s;
            carry = c1 || c2;
        }
    }
    let mut out = [0u32; SQ_LIMBS];
    for (pair, a) in out.chunks_exact_mut(2).zip(total) {
        pair[0] = a as u32;
        pair[1] = (a >> 32) as u32;
    }
    (out, nan, inf)
}

/// `Σ v²` over `x`, exactly, rounded once to the nearest f64 (ties to
/// even): RMSNorm's mean square.
///
/// The square of a finite f32 is an integer below 2^48 times a power of two
/// from 2^-298 to 2^208, so every square is added exactly into a
/// fixed-point accumulator of 32-bit limbs, and the sum is rounded once at
/// the end. That is at least as accurate as adding in f64 in order (which
/// rounds at every step), needs no f64 arithmetic (which a single-precision
/// FPU such as the Cortex-M4F's does in software: the in-order f64 sum took
/// about 100 instructions per element there even emulated in integers, this
/// takes 40), and gives the same bits on every target. NaN in `x` gives NaN, an infinity (and no NaN)
/// +∞, an empty row 0.0.
pub fn sum_squares(x: &[f32]) -> f64 {
    let (acc, nan, inf) = square_sum_limbs(x);
    if nan {
        return f64::NAN;
    }
    if inf {
        return f64::INFINITY;
    }
    let Some(top) = acc.iter().rposition(|&a| a != 0) else {
        return 0.0;
    };
    // The highest set bit, and the 64 bits down from it.
    let p = 32 * top as i32 + 31 - acc[top].leading_zeros() as i32;
    let bit = |k: i32| -> u64 {
        if k < 0 {
            0
        } else {
            (acc[k as usize / 32] >> (k % 32) & 1) as u64
        }
    };
    let mut w = 0u64;
    for k in (p - 63..=p).rev() {
        w = w << 1 | bit(k);
    }
    // Anything set below the 64-bit window.
    let below = p - 64;
    let sticky_limbs = if below >= 0 {
        let (l, b) = (below as usize / 32, below % 32);
        acc[..l].iter().any(|&a| a != 0) || acc[l] << (31 - b) != 0
    } else {
        false
    };
    let mut m = w >> 11;
    let round = w >> 10 & 1 == 1;
    let sticky = w & 0x3ff != 0 || sticky_limbs;
    let mut e = p;
    if round && (sticky || m & 1 == 1) {
        m += 1;
        if m == 1 << 53 {
            m >>= 1;
            e += 1;
        }
    }
    // value = m * 2^(e - 52 - 298), m in [2^52, 2^53): a normal f64.
    let biased = (e - 298 + 1023) as u64;
    f64::from_bits(biased << 52 | (m & ((1 << 52) - 1)))
}

/// In-place softmax, shifted by the maximum for range safety.
///
/// The exponentials are summed in eight lanes (element `i` into lane
/// `i % 8`), then [`sum_lanes`] adds the lanes: the order an eight-lane
/// SIMD twin keeps, so that twin gives these values bit for bit.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut lanes = [0.0f32; 8];
    for (i, v) in x.iter_mut().enumerate() {
        *v = exp(*v - max);
        lanes[i % 8] += *v;
    }
    let inv = 1.0 / sum_lanes(&lanes);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// The eight lane sums of [`softmax`] added pairwise, in a fixed order.
#[inline]
pub fn sum_lanes(l: &[f32; 8]) -> f32 {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn close_to_libm_everywhere() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp(x), libm::expf(x));
            worst = worst.max(ulps(a, b));
            x += 0.000_731;
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(-1000.0), 0.0);
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 1e38);
    }

    /// The exact sum of the squares (each exact in f64), correctly rounded:
    /// Shewchuk's partials, as Python's `math.fsum` keeps them.
    fn fsum_squares(x: &[f32]) -> f64 {
        // At most about 40 partials: they do not overlap and span f64's range.
        let mut partials: heapless::Vec<f64, 128> = heapless::Vec::new();
        for &v in x {
            let mut y = v as f64 * v as f64;
            let mut keep: heapless::Vec<f64, 128> = heapless::Vec::new();
            for &p in &partials {
                let (a, b) = if y.abs() < p.abs() { (p, y) } else { (y, p) };
                let hi = a + b;
                let lo = b - (hi - a);
                if lo != 0.0 {
                    keep.push(lo).unwrap();
                }
                y = hi;
            }
            keep.push(y).unwrap();
            partials = keep;
        }
        // Round the partials' sum once, from the top, with the half-way fix.
        let mut n = partials.len();
        let mut hi = 0.0;
        if n > 0 {
            n -= 1;
            hi = partials[n];
            let mut lo = 0.0;
            while n > 0 {
                let x = hi;
                n -= 1;
                let y = partials[n];
                hi = x + y;
                let yr = hi - x;
                lo = y - yr;
                if lo != 0.0 {
                    break;
                }
            }
            if n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0))
            {
                let y = lo * 2.0;
                let x = hi + y;
                if y == x - hi {
                    hi = x;
                }
            }
        }
        hi
    }

    fn plain(x: &[f32]) -> f64 {
        x.iter().map(|&v| v as f64 * v as f64).sum::<f64>()
    }

    /// xorshift64, for test rows.
    fn rng(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn sum_of_squares_is_exact_then_rounded_once() {
        let mut st = 0x9e37_79b9_7f4a_7c15u64;
        let rows = if cfg!(miri) { 20 } else { 4000 };
        let mut x = [0.0f32; 600];
        let mut same_as_in_order = 0;
        for row in 0..rows {
            let n = (rng(&mut st) % 600) as usize;
            // Mixes: one scale (as activations are), spread exponents,
            // subnormals and zeros, every finite bit pattern.
            let kind = row % 4;
            for v in &mut x[..n] {
                let r = rng(&mut st);
                *v = match kind {
                    0 => (r as i32 as f32) * 1e-9,
                    1 => f32::from_bits(
                        (r as u32 & 0x807f_ffff) | ((r >> 40) as u32 % 254 + 1) << 23,
                    ),
                    2 if r.is_multiple_of(3) => 0.0,
                    2 => f32::from_bits(r as u32 & 0x807f_ffff),
                    _ => {
                        let b = r as u32;
                        if f32::from_bits(b).is_finite() {
                            f32::from_bits(b)
                        } else {
                            1.0
                        }
                    }
                };
            }
            let (want, got) = (fsum_squares(&x[..n]), sum_squares(&x[..n]));
            // Both limb widths hold the same integer (the 32-bit one is what
            // 32-bit targets run).
            assert_eq!(square_sum_limbs32(&x[..n]), square_sum_limbs(&x[..n]));
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "row {row} kind {kind} n {n}: {got:e} against {want:e}"
            );
            // Adding in f64 in order is within a few units of it.
            let p = plain(&x[..n]);
            assert!((p - got).abs() <= got * n as f64 * f64::EPSILON);
            same_as_in_order += (p.to_bits() == got.to_bits()) as u32;
        }
        assert!(same_as_in_order > rows / 4, "{same_as_in_order}");
        // Ties: 1 + 2^-53 rounds to 1 (even), 1 + 2^-52 + 2^-53 up to
        // 1 + 2^-51; past the tie by any amount, up.
        let t = 2f32.powi(-27);
        assert_eq!(sum_squares(&[1.0, t, t]), 1.0);
        assert_eq!(sum_squares(&[1.0, t, t, 1e-30]), 1.0 + f64::EPSILON);
        let u = 2f32.powi(-26);
        assert_eq!(sum_squares(&[1.0, u, t, t]), 1.0 + 2.0 * f64::EPSILON);
        // Carries through many limbs, and the ends of the range.
        for n in [1usize, 2, 3, 255, 256, 257] {
            let mut y = [1.0000001f32; 258];
            y[n] = 1e-20;
            assert_eq!(
                sum_squares(&y[..=n]).to_bits(),
                fsum_squares(&y[..=n]).to_bits()
            );
        }
        let tiny = f32::from_bits(1);
        assert_eq!(sum_squares(&[tiny]), 2f64.powi(-298));
        assert_eq!(
            sum_squares(&[f32::MAX, f32::MAX]),
            plain(&[f32::MAX, f32::MAX])
        );
        assert_eq!(sum_squares(&[f32::MAX, tiny]), plain(&[f32::MAX]));
        assert_eq!(sum_squares(&[]), 0.0);
        assert_eq!(sum_squares(&[0.0, -0.0]).to_bits(), 0);
        assert!(sum_squares(&[1.0, f32::NAN, f32::INFINITY]).is_nan());
        assert_eq!(sum_squares(&[1.0, f32::NEG_INFINITY]), f64::INFINITY);
        assert_eq!(sum_squares(&[3.0, -4.0]), 25.0);
        for y in [
            &[f32::MAX; 300][..],
            &[tiny, 1.0, f32::NAN, -0.0, f32::INFINITY],
        ] {
            assert_eq!(square_sum_limbs32(y), square_sum_limbs(y));
        }
    }
}
