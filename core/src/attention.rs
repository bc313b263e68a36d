//! Causal attention of the query heads of one KV head over cached keys and
//! values.

#![forbid(unsafe_code)]

use crate::kernels::Kernels;
use crate::kv_cache::{KvRows, LayerRows, SlotMask};
use crate::quant::q8_0::QK;
use crate::quant::{f16_bits_to_f32, GgmlType};

pub use crate::math::{softmax, sum_lanes};

/// Where this head's vectors sit in the cached rows.
#[derive(Debug, Clone, Copy)]
pub struct HeadView {
    /// Elements per cached row (`kv_dim`).
    pub row: usize,
    /// This head's first element within a row.
    pub offset: usize,
    /// Ask the memory system for all of the head's cached rows first (f16
    /// caches): right for the first token of a sequence in a step, whose
    /// rows have been evicted by the weights streamed since they were last
    /// read; the later tokens of the step find them in the caches.
    pub warm: bool,
    /// What scores are multiplied by (`1/sqrt(head_dim)` in most families).
    pub scale: f32,
    /// The slots a windowed layer's query may not see (`None`: it sees all
    /// of `0..n`).
    pub mask: Option<SlotMask>,
}

/// `out = softmax(q·K / sqrt(d)) V` for the `g` query heads that read one
/// KV head, over slots `0..n`.
///
/// `q` holds the `g` queries one after another (`hd = q.len() / g` each) and
/// `out` their outputs the same way. Slots `0..sinks` are scored with
/// `q_sink` (the queries rotated at their in-cache position, for the
/// attention sinks; laid out as `q`), the rest with `q`. Pass `sinks = 0`
/// for plain attention. `scores` holds at least `g * n` floats: one row of
/// `n` per query, so an f16 cache's keys and values are widened once for
/// the whole group. Each head's result is the one it would get alone.
///
/// `rows` gives the cached rows in runs (a dense cache's layer is one run,
/// a paged cache's blocks one each). Every score is the same dot product
/// and the values are summed position by position in order, so the result
/// does not depend on where the runs begin: a paged cache gives the bits
/// of a dense one.
#[allow(clippy::too_many_arguments)]
pub fn attend_heads(
    q: &[f32],
    q_sink: &[f32],
    g: usize,
    sinks: usize,
    rows: LayerRows<'_>,
    n: usize,
    head: HeadView,
    scores: &mut [f32],
    out: &mut [f32],
    kern: &Kernels,
) {
    let g = g.max(1);
    let hd = q.len() / g;
    let scores = &mut scores[..g * n];
    let out = &mut out[..g * hd];
    out.fill(0.0);
    let len = rows.run_len().min(n).max(1);
    let cut = sinks.min(n);
    let runs = n.div_ceil(len);
    // Run `i`: its keys and values, its first slot and the one after its last.
    let run = |i: usize| {
        let (k, v) = rows.run(i).ok()?;
        Some((k, v, i * len, (i * len + len).min(n)))
    };
    // Asking for all of this group's keys at once (and for its values
    // before the scores are normalized) keeps many reads in flight
    // instead of the few a kernel's loads keep.
    for i in 0..runs {
        if let Some((k, _, a, b)) = run(i) {
            if head.warm {
                warm(k, head, hd, b - a, kern);
            }
            key_scores(q, q_sink, g, cut, k, a, b, n, head, scores, kern);
        }
    }
    if let Some(m) = head.mask {
        for row in scores.chunks_exact_mut(n.max(1)) {
            for (p, s) in row.iter_mut().enumerate() {
                if !m.keeps(p) {
                    *s = f32::NEG_INFINITY;
                }
            }
        }
    }
    if head.warm {
        for i in 0..runs {
            if let Some((_, v, a, b)) = run(i) {
                warm(v, head, hd, b - a, kern);
            }
        }
    }
    for row in scores.chunks_exact_mut(n.max(1)) {
        (kern.softmax)(row);
    }
    for i in 0..runs {
        if let Some((_, v, a, b)) = run(i) {
            value_sums(g, v, a, b, n, head, scores, out, kern);
        }
    }
}

/// Scores of slots `a..b` (held by `k` from its first row on) into
/// `scores`, `g` rows of `n`: the sink queries for slots below `cut`.
/// (Not inlined: one copy serves every run, which keeps the code small
/// on microcontrollers.)
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn key_scores(
    q: &[f32],
    q_sink: &[f32],
    g: usize,
    cut: usize,
    k: KvRows<'_>,
    a: usize,
    b: usize,
    n: usize,
    head: HeadView,
    scores: &mut [f32],
    kern: &Kernels,
) {
    let hd = q.len() / g;
    let scale = head.scale;
    let at = |p: usize| (p - a) * head.row + head.offset;
    // Query `j` as slot `p` sees it: the sink query for sink slots.
    let query = |j: usize, p: usize| {
        let q = if p < cut { q_sink } else { q };
        &q[j * hd..(j + 1) * hd]
    };
    match k {
        KvRows::F32(k) => {
            for (j, row) in scores.chunks_exact_mut(n.max(1)).enumerate() {
                for (p, s) in row.iter_mut().enumerate().take(b).skip(a) {
                    *s = (kern.dot_f32)(query(j, p), &k[at(p)..at(p) + hd]) * scale;
                }
            }
        }
        KvRows::F16(k) => {
            // Slots below `cut` with the sink queries, the rest with the
            // queries: each kernel call scores exactly its slots (its keys
            // hold that many rows and the last row of scores has that
            // much room).
            let mid = cut.clamp(a, b);
            for (qs, from, to) in [(q_sink, a, mid), (q, mid, b)] {
                if from >= to {
                    continue;
                }
                let lo = at(from).min(k.len());
                let hi = (at(to - 1) + hd).min(k.len());
                let last = (g - 1) * n;
                (kern.key_dots_f16)(
                    &qs[..(g * hd).min(qs.len())],
                    g,
                    &k[lo..hi],
                    head.row,
                    &mut scores[from..last + to],
                    n,
                );
                for j in 0..g {
                    for s in &mut scores[j * n + from..j * n + to] {
                        *s *= scale;
                    }
                }
            }
        }
        KvRows::Q8_0(k) => {
            let (b0, nb) = (head.offset / QK, hd / QK);
            let bpr = head.row / QK;
            let dot = kern.format(GgmlType::Q8_0).dot;
            for (j, row) in scores.chunks_exact_mut(n.max(1)).enumerate() {
                for (p, s) in row.iter_mut().enumerate().take(b).skip(a) {
                    let blk = (p - a) * bpr + b0;
                    *s = dot(crate::quant::as_bytes(&k[blk..blk + nb]), query(j, p)) * scale;
                }
            }
        }
    }
}

/// Adds the weighted values of slots `a..b` (held by `v` from its first
/// row on) to `out`, position by position in order. (Not inlined, as
/// [`key_scores`].)
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn value_sums(
    g: usize,
    v: KvRows<'_>,
    a: usize,
    b: usize,
    n: usize,
    head: HeadView,
    scores: &[f32],
    out: &mut [f32],
    kern: &Kernels,
) {
    let hd = out.len() / g;
    let at = |p: usize| (p - a) * head.row + head.offset;
    match v {
        KvRows::F32(v) => {
            for (o, w) in out
                .chunks_exact_mut(hd.max(1))
                .zip(scores.chunks_exact(n.max(1)))
            {
                for (p, &w) in w.iter().enumerate().take(b).skip(a) {
                    for (o, &vi) in o.iter_mut().zip(&v[at(p)..at(p) + hd]) {
                        *o += w * vi;
                    }
                }
            }
        }
        KvRows::F16(v) if a == 0 && b == n => {
            // One run: the weights as they are.
            let lo = head.offset.min(v.len());
            let hi = (at(n.max(1) - 1) + hd).min(v.len()).max(lo);
            (kern.value_sum_f16)(out, g, scores, &v[lo..hi], head.row);
        }
        KvRows::F16(v) => {
            // A run of a paged cache: each query's weights of these slots
            // in turn (the same sums, position by position).
            let lo = at(a).min(v.len());
            let hi = (at(b - 1) + hd).min(v.len()).max(lo);
            for (j, o) in out.chunks_exact_mut(hd.max(1)).enumerate() {
                (kern.value_sum_f16)(o, 1, &scores[j * n + a..j * n + b], &v[lo..hi], head.row);
            }
        }
        KvRows::Q8_0(v) => {
            let (b0, nb) = (head.offset / QK, hd / QK);
            let bpr = head.row / QK;
            for (o, w) in out
                .chunks_exact_mut(hd.max(1))
                .zip(scores.chunks_exact(n.max(1)))
            {
                for (p, &w) in w.iter().enumerate().take(b).skip(a) {
                    let blk = (p - a) * bpr + b0;
                    for (bk, o) in v[blk..blk + nb].iter().zip(o.chunks_exact_mut(QK)) {
                        let d = w * f16_bits_to_f32(bk.d);
                        for (oi, &qi) in o.iter_mut().zip(&bk.qs) {
                            *oi += d * qi as f32;
                        }
                    }
                }
            }
        }
    }
}

/// Asks the caches for this head's rows of `rows`, all at once.
/// Asks the caches for this head's vectors in slots `0..n` of `rows` (f16
/// caches, the ones the grouped kernels read).
fn warm(rows: KvRows<'_>, head: HeadView, hd: usize, n: usize, kern: &Kernels) {
    if let KvRows::F16(r) = rows {
        for p in 0..n {
            let at = p * head.row + head.offset;
            if let Some(x) = r.get(at..at + hd) {
                (kern.prefetch)(x.as_ptr().cast(), core::mem::size_of_val(x));
            }
        }
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
        attend_heads(
            &q,
            &q,
            1,
            0,
            LayerRows::one(KvRows::F32(&k), KvRows::F32(&v)).unwrap(),
            1,
            HeadView {
                row: 2,
                offset: 0,
                warm: true,
                scale: 1.0 / libm::sqrtf(2.0),
                mask: None,
            },
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
