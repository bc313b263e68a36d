//! Causal attention of one query head over cached keys and values.

#![forbid(unsafe_code)]

use crate::kernels::Kernels;
use crate::kv_cache::KvRows;
use crate::quant::{f16_bits_to_f32, QK};

/// Where this head's vectors sit in the cached rows.
#[derive(Debug, Clone, Copy)]
pub struct HeadView {
    /// Elements per cached row (`kv_dim`).
    pub row: usize,
    /// This head's first element within a row.
    pub offset: usize,
}

/// `out = softmax(q·K / sqrt(d)) V` for one head over slots `0..n`.
///
/// Slots `0..sinks` are scored with `q_sink` (the query rotated at its
/// in-cache position, for the attention sinks), the rest with `q`. Pass
/// `sinks = 0` for plain attention. `scores` holds at least `n` floats.
#[allow(clippy::too_many_arguments)]
pub fn attend_head(
    q: &[f32],
    q_sink: &[f32],
    sinks: usize,
    keys: KvRows<'_>,
    values: KvRows<'_>,
    n: usize,
    head: HeadView,
    scores: &mut [f32],
    out: &mut [f32],
    kern: &Kernels,
) {
    let hd = q.len();
    let scale = 1.0 / libm::sqrtf(hd as f32);
    let scores = &mut scores[..n];
    let qf = |p: usize| if p < sinks { q_sink } else { q };
    let at = |p: usize| p * head.row + head.offset;
    match keys {
        KvRows::F32(k) => {
            for (p, s) in scores.iter_mut().enumerate() {
                *s = (kern.dot_f32)(qf(p), &k[at(p)..at(p) + hd]) * scale;
            }
        }
        KvRows::F16(k) => {
            // Sink positions take the sink query, the rest the query. The
            // cache view holds every slot (kv_cache::layer), so the kernels
            // score all `n`.
            let k = &k[head.offset.min(k.len())..];
            debug_assert!(crate::kernels::strided_rows(k.len(), hd, head.row) >= n);
            let cut = sinks.min(n);
            let (s0, s1) = scores.split_at_mut(cut);
            (kern.key_dots_f16)(&q_sink[..hd.min(q_sink.len())], k, head.row, s0);
            (kern.key_dots_f16)(q, &k[(cut * head.row).min(k.len())..], head.row, s1);
            for s in scores.iter_mut() {
                *s *= scale;
            }
        }
        KvRows::Q8_0(k) => {
            let (b0, nb) = (at(0) / QK, hd / QK);
            let bpr = head.row / QK;
            for (p, s) in scores.iter_mut().enumerate() {
                let b = p * bpr + b0;
                *s = (kern.dot_q8_0)(&k[b..b + nb], qf(p)) * scale;
            }
        }
    }
    (kern.softmax)(scores);
    let out = &mut out[..hd];
    out.fill(0.0);
    match values {
        KvRows::F32(v) => {
            for (p, &w) in scores.iter().enumerate() {
                for (o, &vi) in out.iter_mut().zip(&v[at(p)..at(p) + hd]) {
                    *o += w * vi;
                }
            }
        }
        KvRows::F16(v) => {
            (kern.value_sum_f16)(out, scores, &v[head.offset.min(v.len())..], head.row);
        }
        KvRows::Q8_0(v) => {
            let (b0, nb) = (at(0) / QK, hd / QK);
            let bpr = head.row / QK;
            for (p, &w) in scores.iter().enumerate() {
                let b = p * bpr + b0;
                for (blk, o) in v[b..b + nb].iter().zip(out.chunks_exact_mut(QK)) {
                    let d = w * f16_bits_to_f32(blk.d);
                    for (oi, &qi) in o.iter_mut().zip(&blk.qs) {
                        *oi += d * qi as f32;
                    }
                }
            }
        }
    }
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
        *v = crate::math::exp(*v - max);
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

    #[test]
    fn single_position_returns_its_value() {
        let q = [1.0, 0.0];
        let k = [0.5, 0.5];
        let v = [3.0, -2.0];
        let mut s = [0.0; 1];
        let mut out = [0.0; 2];
        attend_head(
            &q,
            &q,
            0,
            KvRows::F32(&k),
            KvRows::F32(&v),
            1,
            HeadView { row: 2, offset: 0 },
            &mut s,
            &mut out,
            &Kernels::scalar(),
        );
        assert_eq!(out, [3.0, -2.0]);
    }

    #[test]
    fn softmax_sums_to_one_with_large_inputs() {
        let mut x = [1000.0, 999.0, -1000.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[0] > x[1] && x[2] == 0.0);
    }
}
