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

/// SwiGLU's gate in place: `g[i] = silu(g[i]) * u[i]`.
pub fn swiglu(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        *g = silu(*g) * u;
    }
}

/// `Σ v²` over `x` in f64, in order: the bits of
/// `x.iter().map(|&v| v as f64 * v as f64).sum::<f64>()`, which RMSNorm
/// takes (as ggml does, in double precision).
///
/// With the `soft-f64` feature, for FPUs without double precision
/// (Cortex-M4F), finite rows go through [`sum_squares_int`], which gets the
/// same bits with integer arithmetic in about half the soft-float
/// library's instructions (4.5 M against 8.3 M over the tiny firmware
/// image's runs).
#[inline]
pub fn sum_squares(x: &[f32]) -> f64 {
    #[cfg(feature = "soft-f64")]
    if let Some(s) = sum_squares_int(x) {
        return s;
    }
    x.iter().map(|&v| v as f64 * v as f64).sum::<f64>()
}

/// [`sum_squares`] in integers, or `None` if `x` holds an infinity or NaN.
///
/// Each square of an f32 is exact in f64 (a 48-bit mantissa product), and
/// lies between 2^-298 and 2^256, as does every partial sum of fewer than
/// 2^700 of them, so no f64 step is subnormal or overflows: each addition
/// is an exact integer sum of two mantissas rounded once to 53 bits, to
/// nearest, ties to even, as the FPU rounds it.
pub fn sum_squares_int(x: &[f32]) -> Option<f64> {
    // The sum starts at -0.0 (`Sum for f64`); any square added gives +0.0
    // or more, so only an empty row keeps the sign.
    if x.is_empty() {
        return Some(-0.0);
    }
    // Accumulator: `m * 2^e` with `m` in [2^52, 2^53), or zero (m == 0).
    let (mut m, mut e) = (0u64, 0i32);
    for &v in x {
        let b = v.to_bits() & 0x7fff_ffff;
        let (be, bm) = (b >> 23, (b & 0x7f_ffff) as u64);
        if be == 0xff {
            return None;
        }
        if b == 0 {
            continue; // + (+0.0) leaves the sum as it is
        }
        // v = vm * 2^(ve - 150): normal or subnormal.
        let (vm, ve) = if be == 0 {
            (bm, 1 - 150)
        } else {
            (bm | 1 << 23, be as i32 - 150)
        };
        // v² = vm² * 2^(2 ve), normalized to 53 bits (exact: vm² < 2^48).
        let sq = vm * vm;
        let shift = sq.leading_zeros() as i32 - 11;
        let (sm, se) = (sq << shift, 2 * ve - shift);
        if m == 0 {
            (m, e) = (sm, se);
            continue;
        }
        // Larger exponent first; the smaller operand is shifted right into
        // three extra bits (guard, round, sticky).
        let ((hm, he), (lm, le)) = if se > e {
            ((sm, se), (m, e))
        } else {
            ((m, e), (sm, se))
        };
        let d = he - le;
        if d > 54 {
            // Under half an ulp of the larger: rounds back to it.
            (m, e) = (hm, he);
            continue;
        }
        let wide = lm << 3;
        let sticky = (d > 0 && wide << (64 - d.max(1)) != 0) as u64;
        let mut s = (hm << 3) + (wide >> d | sticky);
        let mut se2 = he;
        if s >= 1 << 56 {
            s = s >> 1 | (s & 1);
            se2 += 1;
        }
        let g = s & 7;
        s >>= 3;
        if g > 4 || (g == 4 && s & 1 == 1) {
            s += 1;
            if s == 1 << 53 {
                s >>= 1;
                se2 += 1;
            }
        }
        (m, e) = (s, se2);
    }
    if m == 0 {
        return Some(0.0);
    }
    // value = m * 2^e with m in [2^52, 2^53): biased exponent e + 52 + 1023.
    let bits = ((e + 52 + 1023) as u64) << 52 | (m & ((1 << 52) - 1));
    Some(f64::from_bits(bits))
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
    fn integer_sum_of_squares_equals_f64_sum() {
        let mut st = 0x9e37_79b9_7f4a_7c15u64;
        let rows = if cfg!(miri) { 20 } else { 4000 };
        let mut x = [0.0f32; 600];
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
            let (want, got) = (plain(&x[..n]), sum_squares_int(&x[..n]).unwrap());
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "row {row} kind {kind} n {n}: {got:e} against {want:e}"
            );
        }
        // Ties and carries: many equal squares, then one tiny one.
        for n in [1usize, 2, 3, 255, 256, 257] {
            let mut y = [1.0000001f32; 258];
            y[n] = 1e-20;
            assert_eq!(
                sum_squares_int(&y[..=n]).unwrap().to_bits(),
                plain(&y[..=n]).to_bits()
            );
        }
        assert_eq!(
            sum_squares_int(&[]).unwrap().to_bits(),
            plain(&[]).to_bits()
        );
        assert_eq!(
            sum_squares_int(&[0.0, -0.0]).unwrap().to_bits(),
            plain(&[0.0, -0.0]).to_bits()
        );
        assert_eq!(
            sum_squares_int(&[f32::MAX, f32::MAX]).unwrap(),
            plain(&[f32::MAX, f32::MAX])
        );
        assert_eq!(sum_squares_int(&[1.0, f32::NAN]), None);
        assert_eq!(sum_squares_int(&[f32::INFINITY]), None);
        assert_eq!(sum_squares(&[3.0, 4.0]), 25.0);
    }
}
