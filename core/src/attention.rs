//! Causal attention of one query head over cached keys and values.

#![forbid(unsafe_code)]

/// `out = softmax(q·K / sqrt(d)) V` for one head.
///
/// `keys` and `values` are (n, stride) with this head's vector at
/// `offset..offset + q.len()` in each row; `scores` holds at least `n` floats.
/// `dot` is the kernel table's f32 dot product.
#[allow(clippy::too_many_arguments)]
pub fn attend_head(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    n: usize,
    stride: usize,
    offset: usize,
    scores: &mut [f32],
    out: &mut [f32],
    dot: fn(&[f32], &[f32]) -> f32,
) {
    let hd = q.len();
    let scale = 1.0 / libm::sqrtf(hd as f32);
    let scores = &mut scores[..n];
    for (p, s) in scores.iter_mut().enumerate() {
        let k = &keys[p * stride + offset..p * stride + offset + hd];
        *s = dot(q, k) * scale;
    }
    softmax(scores);
    out[..hd].fill(0.0);
    for (p, &w) in scores.iter().enumerate() {
        let v = &values[p * stride + offset..p * stride + offset + hd];
        for (o, &vi) in out.iter_mut().zip(v) {
            *o += w * vi;
        }
    }
}

/// In-place softmax, shifted by the maximum for range safety.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = libm::expf(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
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
            &k,
            &v,
            1,
            2,
            0,
            &mut s,
            &mut out,
            crate::kernels::scalar::dot_f32,
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
