//! What the K-quant formats share: the 256-element super-block, ggml's
//! rounding (`nearest_int`), the packed 6-bit scales of Q4_K/Q5_K, and the
//! scale searches of ggml's reference quantizers (`make_qkx2_quants`,
//! `make_qx_quants`, `make_q3_quants`), step for step in f32 so that the
//! same input gives the same blocks.

// The quantizer follows ggml's reference loop for loop, indices and all.
#![allow(clippy::needless_range_loop)]

/// Elements per super-block.
pub const QK_K: usize = 256;

/// Bytes of the packed 6-bit scales and minimums of Q4_K and Q5_K.
pub const K_SCALE_SIZE: usize = 12;

/// Below this a group is all zero ([`make_qx_quants`], [`make_q3_quants`]).
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round half to even through the f32 mantissa,
/// exact for `|x| < 2^22` (what the quantizers pass; anything else gives
/// some integer, never a panic).
#[inline(always)]
pub fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// Scale and minimum `j` (0..8) of a Q4_K/Q5_K block's packed scales:
/// ggml's `get_scale_min_k4`.
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// All eight (scale, minimum) pairs of [`scale_min_k4`] at once, with four
/// word operations per half (what the fast kernels use per super-block).
#[inline(always)]
pub fn unpack_scale_min_k4(q: &[u8; K_SCALE_SIZE]) -> ([u8; 8], [u8; 8]) {
    const K1: u32 = 0x3f3f_3f3f;
    const K2: u32 = 0x0f0f_0f0f;
    const K3: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([q[i], q[i + 1], q[i + 2], q[i + 3]]);
    let (u0, u1, u2) = (w(0), w(4), w(8));
    let sc_hi = (u2 & K2) | (((u0 >> 6) & K3) << 4);
    let m_hi = ((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4);
    let cat = |a: u32, b: u32| (a as u64 | (b as u64) << 32).to_le_bytes();
    (cat(u0 & K1, sc_hi), cat(u1 & K1, m_hi))
}

/// Packs eight 6-bit scales and minimums as [`scale_min_k4`] reads them.
pub fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut s = [0u8; K_SCALE_SIZE];
    for j in 0..8 {
        let (l, m) = (ls[j], lm[j]);
        if j < 4 {
            s[j] = l;
            s[j + 4] = m;
        } else {
            s[j + 4] = (l & 0x0f) | ((m & 0x0f) << 4);
            s[j - 4] |= (l >> 4) << 6;
            s[j] |= (m >> 4) << 6;
        }
    }
    s
}

/// ggml's `make_qkx2_quants`: quants `0..=nmax` of `x` with a scale and a
/// minimum, searched over `nstep + 1` candidate scales to minimise the
/// weighted error (squared, or absolute with `use_mad`). Returns the scale
/// and `-min`; writes the quants to `l`.
#[allow(clippy::too_many_arguments)]
pub fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len().min(weights.len()).min(l.len()).min(32);
    if n == 0 {
        return (0.0, 0.0);
    }
    let mut laux = [0u8; 32];
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l[..n].fill(0);
        return (0.0, -min);
    }
    let err = |d: f32| if use_mad { d.abs() } else { d * d };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += weights[i] * err(diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let (w, q) = (weights[i], q as f32);
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * err(diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `make_qx_quants` with `rmse_type` 1 and no importance weights
/// (what Q6_K's reference quantizer calls): symmetric quants
/// `0..2 nmax` (offset by `nmax`) of `x`, the scale searched over 19
/// candidates weighted by `x²`. Returns the scale; writes the quants.
pub fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let n = x.len().min(l.len());
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in &x[..n] {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let q = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let li = q(iscale, x[i]);
        l[i] = (li + nmax) as i8;
        let w = x[i] * x[i];
        sumlx += w * x[i] * li as f32;
        suml2 += w * li as f32 * li as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in &x[..n] {
            let li = q(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * li;
            suml2 += w * li * li;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                l[i] = (nmax + q(iscale, x[i])) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_q3_quants` with `do_rmse`: symmetric quants `0..2 nmax`
/// (offset by `nmax`) of `x`, refined element by element (up to five
/// passes) to minimise the `x²`-weighted error. Returns the scale.
pub fn make_q3_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let n = x.len().min(l.len());
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in &x[..n] {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let li = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l[i] = li as i8;
        let w = x[i] * x[i];
        sumlx += w * x[i] * li as f32;
        suml2 += w * li as f32 * li as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let li = l[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    for v in &mut l[..n] {
        *v += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// A super-block of eight groups of 32, each with a 6-bit scale and
/// minimum packed as [`scale_min_k4`] reads them, both scaled by the
/// super-block's f16 `d` and `dmin`: `x = d·sc·q − dmin·m` (Q4_K, Q5_K).
pub trait ScaleMinBlock {
    /// The packed scales and minimums.
    fn scales(&self) -> &[u8; K_SCALE_SIZE];
    /// `d` and `dmin`, f16 little-endian.
    fn d_dmin(&self) -> ([u8; 2], [u8; 2]);
    /// Element `32 g + l`'s quant.
    fn q(&self, g: usize, l: usize) -> u8;

    /// Group `g`'s (scale, minimum) as f32: `d·sc`, `dmin·m`.
    #[inline(always)]
    fn group(&self, g: usize) -> (f32, f32) {
        let (sc, m) = scale_min_k4(g, self.scales());
        let (d, dmin) = self.d_dmin();
        (
            super::f16_bits_to_f32(d) * sc as f32,
            super::f16_bits_to_f32(dmin) * m as f32,
        )
    }
}

/// Whole super-blocks as f32: `d·sc·q − dmin·m`, ggml's
/// `dequantize_row_q4_K`/`_q5_K`.
pub fn dequantize_scale_min<B: ScaleMinBlock>(x: &[B], y: &mut [f32]) {
    for (b, out) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        for (g, o) in out.chunks_exact_mut(32).enumerate() {
            let (d, m) = b.group(g);
            for (l, v) in o.iter_mut().enumerate() {
                *v = d * b.q(g, l) as f32 - m;
            }
        }
    }
}

/// Reference `Σ dequant(w) · x` with f32 activations: per group of 32,
/// `d·sc Σ q x − dmin·m Σ x`.
pub fn dot_scale_min<B: ScaleMinBlock>(w: &[B], x: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (b, xs) in w.iter().zip(x.chunks_exact(QK_K)) {
        for (g, xg) in xs.chunks_exact(32).enumerate() {
            let (d, m) = b.group(g);
            let (mut qx, mut sx) = (0.0f32, 0.0f32);
            for (l, &v) in xg.iter().enumerate() {
                qx += b.q(g, l) as f32 * v;
                sx += v;
            }
            sum += d * qx - m * sx;
        }
    }
    sum
}

/// What Q4_K's and Q5_K's reference quantizers (`quantize_row_q4_K_ref`,
/// `_q5_K_ref`) choose for one super-block of `xs`: each group's scale and
/// minimum searched by [`make_qkx2_quants`] (levels `0..=nmax`, the search
/// from `rmin` in `nstep` steps of 0.1), both quantized to six bits
/// against the block's largest, then every element requantized with the
/// stored scales. Returns `d`, `dmin`, the packed scales and the levels.
pub fn quantize_scale_min(
    xs: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
) -> ([u8; 2], [u8; 2], [u8; K_SCALE_SIZE], [u8; QK_K]) {
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for g in 0..8 {
        let xg: &[f32; 32] = xs
            .get(32 * g..32 * g + 32)
            .and_then(|s| s.try_into().ok())
            .unwrap_or(&[0.0; 32]);
        let w = rms_weights(xg);
        let (s, m) = make_qkx2_quants(
            nmax,
            xg,
            &w,
            &mut l[32 * g..32 * g + 32],
            rmin,
            0.1,
            nstep,
            false,
        );
        scales[g] = s;
        mins[g] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let ls: [u8; 8] = core::array::from_fn(|g| (nearest_int(inv_scale * scales[g]) as u8).min(63));
    let lm: [u8; 8] = core::array::from_fn(|g| (nearest_int(inv_min * mins[g]) as u8).min(63));
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = super::f32_to_f16_bits(max_scale / 63.0);
    let dmin = super::f32_to_f16_bits(max_min / 63.0);
    for g in 0..8 {
        let (sc, m) = scale_min_k4(g, &packed);
        let gd = super::f16_bits_to_f32(d) * sc as f32;
        if gd == 0.0 {
            continue;
        }
        let gm = super::f16_bits_to_f32(dmin) * m as f32;
        for i in 32 * g..(32 * g + 32).min(xs.len()) {
            l[i] = nearest_int((xs[i] + gm) / gd).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, l)
}

/// The weights Q4_K's and Q5_K's reference quantizers search with: the
/// group's RMS plus each element's magnitude.
pub fn rms_weights(x: &[f32; 32]) -> [f32; 32] {
    let mut sum_x2 = 0.0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    let av_x = libm::sqrtf(sum_x2 / 32.0);
    core::array::from_fn(|l| av_x + x[l].abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (x, n) in [
            (0.5f32, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (3.49, 3),
            (-3.51, -4),
            (4_194_303.0, 4_194_303),
        ] {
            assert_eq!(nearest_int(x), n, "{x}");
        }
        // Out of range: some integer, no panic.
        let _ = nearest_int(f32::NAN) + nearest_int(f32::INFINITY) + nearest_int(-1e30);
    }

    #[test]
    fn packed_scales_round_trip() {
        let ls: [u8; 8] = core::array::from_fn(|j| (j as u8 * 9 + 5) & 63);
        let lm: [u8; 8] = core::array::from_fn(|j| (j as u8 * 23 + 1) & 63);
        let s = pack_scale_min_k4(&ls, &lm);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &s), (ls[j], lm[j]));
        }
        // Any bytes: the word-wise unpacking agrees with the byte-wise one.
        let mut x = 0x2545_f491u32;
        for _ in 0..1000 {
            let q: [u8; 12] = core::array::from_fn(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            });
            let (sc, m) = unpack_scale_min_k4(&q);
            for j in 0..8 {
                assert_eq!(scale_min_k4(j, &q), (sc[j], m[j]));
            }
        }
    }
}
