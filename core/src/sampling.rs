//! Choosing the next token from logits, with no allocator.
//!
//! The chain runs in llama.cpp's default order:
//! penalties → top-k → top-p → min-p → temperature → draw.
//! Truncation (top-k, top-p, min-p) looks at the distribution at temperature 1,
//! and temperature only reshapes what survives, as in llama.cpp. Temperature 0
//! is greedy: the largest penalised logit, ties to the lowest id.
//!
//! Logits that are NaN or `-inf` are never chosen. If any logit is `+inf`, the
//! `+inf` tokens share all the probability. If nothing is left, the result is
//! [`Error::NoCandidate`].
//!
//! # Cost
//! A step copies the logits into caller scratch ([`Sampler::scratch_len`]
//! candidates) and does `O(vocab)` work. Top-k is a selection, which is
//! expected `O(vocab)`, followed by a sort of the `k` survivors. Without
//! top-k, top-p sorts a growing prefix until it holds `p` of the mass, so it
//! sorts only as many tokens as it keeps. No step sorts the whole vocabulary
//! unless the distribution is so flat that top-p keeps all of it.
//!
//! # Reproducibility
//! [`Pcg32`] is a small PRNG specified here, so one seed gives one stream on
//! every target. All arithmetic is `f32` through `libm`, which is software and
//! is the same everywhere. Given the same logits, the same seed gives the same
//! tokens on x86_64, AArch64 and Cortex-M.

use core::cmp::Ordering;

use crate::error::SamplerParam;
use crate::{Error, Result};

/// PCG32 (PCG-XSH-RR 64/32, M. E. O'Neill, "PCG: A Family of Simple Fast
/// Space-Efficient Statistically Good Algorithms for Random Number
/// Generation", 2014).
///
/// - state: `state = state * 6364136223846793005 + inc` (mod 2^64), where
///   `inc` is `(stream << 1) | 1`.
/// - output: `xorshifted = ((old >> 18) ^ old) >> 27` (as u32), then rotate
///   right by `old >> 59`.
/// - seeding, as `pcg32_srandom_r`: state 0, one step, add the seed, one step.
///
/// `Pcg32::new(42, 54)` yields 0xa15c02b7, 0x7b47f409, 0xba1d3330, ... which
/// are the values of the reference implementation's demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pcg32 {
    state: u64,
    inc: u64,
}

impl Pcg32 {
    /// PCG's default multiplier.
    pub const MULTIPLIER: u64 = 6_364_136_223_846_793_005;
    /// The stream the sampler uses (the reference implementation's default).
    pub const SAMPLER_STREAM: u64 = 0xda3e_39cb_94b9_5bdb;

    pub const fn new(seed: u64, stream: u64) -> Pcg32 {
        let mut r = Pcg32 {
            state: 0,
            inc: (stream << 1) | 1,
        };
        r.step();
        r.state = r.state.wrapping_add(seed);
        r.step();
        r
    }

    const fn step(&mut self) {
        self.state = self
            .state
            .wrapping_mul(Self::MULTIPLIER)
            .wrapping_add(self.inc);
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.step();
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        let rot = (old >> 59) as u32;
        xorshifted.rotate_right(rot)
    }

    /// A uniform `f32` in `[0, 1)` from the top 24 bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0)
    }
}

/// Tokens the penalties look back over, at most.
pub const MAX_PENALTY_WINDOW: usize = 256;

/// Sampling parameters. [`SamplerConfig::default`] gives llama.cpp's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// 0 is greedy; otherwise logits are divided by it before the draw.
    pub temperature: f32,
    /// Keep the `k` most likely tokens (0: no limit).
    pub top_k: u32,
    /// Keep the smallest set of most likely tokens whose mass reaches `p`
    /// (1: no limit).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely (0: off).
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recent tokens (1: off).
    pub repeat_penalty: f32,
    /// Subtract `count × this` from recent tokens' logits.
    pub frequency_penalty: f32,
    /// Subtract this once from every recent token's logit.
    pub presence_penalty: f32,
    /// How many recent tokens the penalties see (at most [`MAX_PENALTY_WINDOW`]).
    pub repeat_last_n: usize,
    /// The PRNG seed.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding (temperature 0, no penalties).
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |param| Err(Error::InvalidSamplerParam { param });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(SamplerParam::Temperature);
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad(SamplerParam::TopP);
        }
        if !(self.min_p.is_finite() && self.min_p >= 0.0) {
            return bad(SamplerParam::MinP);
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad(SamplerParam::RepeatPenalty);
        }
        if !self.frequency_penalty.is_finite() {
            return bad(SamplerParam::FrequencyPenalty);
        }
        if !self.presence_penalty.is_finite() {
            return bad(SamplerParam::PresencePenalty);
        }
        if self.repeat_last_n > MAX_PENALTY_WINDOW {
            return bad(SamplerParam::RepeatLastN);
        }
        Ok(())
    }

    /// Whether the pick is the largest logit as it is (temperature 0, no
    /// penalty): what a GPU can compute where the logits are.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 && !self.penalties_on()
    }

    fn penalties_on(&self) -> bool {
        self.repeat_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.frequency_penalty != 0.0
                || self.presence_penalty != 0.0)
    }
}

/// One token under consideration (caller scratch).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Candidate {
    pub id: u32,
    pub logit: f32,
}

/// Larger logit first; equal logits by lower id (a total, deterministic order).
fn before(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit
        .partial_cmp(&a.logit)
        .unwrap_or(Ordering::Equal)
        .then(a.id.cmp(&b.id))
}

/// The sampler's state: parameters, PRNG and the recent-token window.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: Pcg32,
    recent: heapless::HistoryBuffer<u32, MAX_PENALTY_WINDOW>,
}

impl Sampler {
    /// A sampler; the parameters are checked first.
    pub fn new(cfg: SamplerConfig) -> Result<Sampler> {
        cfg.validate()?;
        Ok(Sampler {
            cfg,
            rng: Pcg32::new(cfg.seed, Pcg32::SAMPLER_STREAM),
            recent: heapless::HistoryBuffer::new(),
        })
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Candidates of scratch a vocabulary of `vocab` tokens needs.
    pub const fn scratch_len(vocab: usize) -> usize {
        vocab
    }

    /// Records a token (prompt or generated) for the penalties.
    pub fn accept(&mut self, id: u32) {
        self.recent.write(id);
    }

    /// Forgets the recent tokens and restarts the PRNG from the seed.
    pub fn reset(&mut self) {
        self.recent.clear();
        self.rng = Pcg32::new(self.cfg.seed, Pcg32::SAMPLER_STREAM);
    }

    /// Picks the next token from `logits`. Nothing is recorded; call
    /// [`Sampler::accept`] with the token that is used.
    pub fn sample(&mut self, logits: &[f32], scratch: &mut [Candidate]) -> Result<u32> {
        self.sample_inner(logits, None, scratch)
    }

    /// [`Sampler::sample`] among the tokens whose bit is set in `allowed`
    /// (bit `i % 32` of word `i / 32`, as [`crate::grammar::Matcher::mask`]
    /// writes it): the others are dropped before any other step, as
    /// llama.cpp's grammar sampler does.
    pub fn sample_masked(
        &mut self,
        logits: &[f32],
        allowed: &[u32],
        scratch: &mut [Candidate],
    ) -> Result<u32> {
        let words = logits.len().div_ceil(32);
        if allowed.len() < words {
            return Err(Error::BufferTooSmall {
                needed: words as u64,
                found: allowed.len() as u64,
            });
        }
        self.sample_inner(logits, Some(allowed), scratch)
    }

    fn sample_inner(
        &mut self,
        logits: &[f32],
        allowed: Option<&[u32]>,
        scratch: &mut [Candidate],
    ) -> Result<u32> {
        let n = logits.len();
        let found = scratch.len() as u64;
        let cand = scratch.get_mut(..n).ok_or(Error::BufferTooSmall {
            needed: n as u64,
            found,
        })?;
        let greedy = self.cfg.temperature == 0.0;
        let k = if greedy { 1 } else { self.cfg.top_k as usize };

        let (mut m, mut sorted) = if k > 0 && k <= TOP_K_SCAN_MAX && k < n {
            // One pass with a k-entry heap: most logits cost one comparison.
            (self.scan_top_k(logits, allowed, k, cand)?, true)
        } else {
            for (i, (c, &l)) in cand.iter_mut().zip(logits).enumerate() {
                *c = Candidate {
                    id: i as u32,
                    logit: if is_allowed(allowed, i) {
                        l
                    } else {
                        f32::NEG_INFINITY
                    },
                };
            }
            if self.cfg.penalties_on() {
                self.apply_penalties(cand);
            }
            let mut m = Self::drop_impossible(cand)?;
            if k > 0 && k < m {
                cand[..m].select_nth_unstable_by(k - 1, before);
                m = k;
            }
            if k > 0 {
                cand[..m].sort_unstable_by(before);
            }
            (m, k > 0)
        };
        if greedy {
            let best = cand[..m]
                .iter()
                .min_by(|a, b| before(a, b))
                .ok_or(Error::NoCandidate)?;
            return Ok(best.id);
        }
        let cand = &mut cand[..m];
        if self.cfg.top_p < 1.0 {
            m = top_p(&mut cand[..m], self.cfg.top_p, sorted);
            sorted = true;
        }
        if self.cfg.min_p > 0.0 {
            m = min_p(&mut cand[..m], self.cfg.min_p, sorted);
        }
        let cand = &mut cand[..m];

        // Temperature, softmax, draw.
        let inv_t = 1.0 / self.cfg.temperature;
        let max = cand.iter().fold(f32::NEG_INFINITY, |a, c| a.max(c.logit));
        let mut sum = 0.0f32;
        for c in cand.iter_mut() {
            c.logit = libm::expf((c.logit - max) * inv_t);
            sum += c.logit;
        }
        let r = self.rng.next_f32() * sum;
        let mut acc = 0.0f32;
        for c in cand.iter() {
            acc += c.logit;
            if r < acc {
                return Ok(c.id);
            }
        }
        // Rounding can leave r at the very top: the last candidate with any weight.
        cand.iter()
            .rev()
            .find(|c| c.logit > 0.0)
            .map(|c| c.id)
            .ok_or(Error::NoCandidate)
    }

    /// The `k` best candidates (penalties applied, NaN and `-inf` dropped,
    /// `+inf` alone if present), sorted, in `cand[..k']`; returns `k'`.
    fn scan_top_k(
        &self,
        logits: &[f32],
        allowed: Option<&[u32]>,
        k: usize,
        cand: &mut [Candidate],
    ) -> Result<usize> {
        // Penalised logits of the window's tokens; those tokens are offered
        // with these values after the scan instead of their raw ones.
        let mut pen: heapless::Vec<Candidate, MAX_PENALTY_WINDOW> = heapless::Vec::new();
        if self.cfg.penalties_on() {
            let n = self.cfg.repeat_last_n.min(self.recent.len());
            for t in self.recent.oldest_ordered().skip(self.recent.len() - n) {
                if !is_allowed(allowed, *t as usize) {
                    continue;
                }
                if let Some(&l) = logits.get(*t as usize) {
                    if !pen.iter().any(|c| c.id == *t) {
                        let _ = pen.push(Candidate { id: *t, logit: l });
                    }
                }
            }
            self.apply_penalties_to(&mut pen);
        }
        let k = k.min(cand.len());
        let mut heap = TopK {
            c: &mut cand[..k],
            n: 0,
        };
        for (i, &l) in logits.iter().enumerate() {
            if l.is_nan() || l == f32::NEG_INFINITY || !is_allowed(allowed, i) {
                continue;
            }
            let c = Candidate {
                id: i as u32,
                logit: l,
            };
            if !heap.wants(&c) || pen.iter().any(|p| p.id == c.id) {
                continue;
            }
            heap.offer(c);
        }
        for &c in &pen {
            if !c.logit.is_nan() && c.logit != f32::NEG_INFINITY && heap.wants(&c) {
                heap.offer(c);
            }
        }
        let m = heap.n;
        if m == 0 {
            return Err(Error::NoCandidate);
        }
        cand[..m].sort_unstable_by(before);
        if cand[0].logit == f32::INFINITY {
            let inf = cand[..m]
                .iter()
                .take_while(|c| c.logit == f32::INFINITY)
                .count();
            for c in &mut cand[..inf] {
                c.logit = 0.0;
            }
            return Ok(inf);
        }
        Ok(m)
    }

    /// llama.cpp's penalties over the distinct tokens in the window.
    fn apply_penalties(&self, cand: &mut [Candidate]) {
        let n = self.cfg.repeat_last_n.min(self.recent.len());
        let window = || self.recent.oldest_ordered().skip(self.recent.len() - n);
        for (i, &t) in window().enumerate() {
            if window().take(i).any(|&u| u == t) {
                continue; // counted at its first occurrence
            }
            let count = window().skip(i).filter(|&&u| u == t).count() as f32;
            if let Some(c) = cand.get_mut(t as usize) {
                c.logit = self.penalised(c.logit, count);
            }
        }
    }

    /// The penalties for a list of distinct window tokens.
    fn apply_penalties_to(&self, list: &mut [Candidate]) {
        let n = self.cfg.repeat_last_n.min(self.recent.len());
        for c in list.iter_mut() {
            let count = self
                .recent
                .oldest_ordered()
                .skip(self.recent.len() - n)
                .filter(|&&u| u == c.id)
                .count() as f32;
            c.logit = self.penalised(c.logit, count);
        }
    }

    fn penalised(&self, mut l: f32, count: f32) -> f32 {
        if l > 0.0 {
            l /= self.cfg.repeat_penalty;
        } else {
            l *= self.cfg.repeat_penalty;
        }
        l - (count * self.cfg.frequency_penalty + self.cfg.presence_penalty)
    }

    /// Drops NaN and `-inf`; if any `+inf` is present, keeps only those,
    /// all equal. Returns how many remain (at the front).
    fn drop_impossible(cand: &mut [Candidate]) -> Result<usize> {
        let any_inf = cand.iter().any(|c| c.logit == f32::INFINITY);
        let mut m = 0;
        for i in 0..cand.len() {
            let mut c = cand[i];
            let keep = if any_inf {
                c.logit == f32::INFINITY
            } else {
                c.logit.is_finite()
            };
            if keep {
                if any_inf {
                    c.logit = 0.0;
                }
                cand[m] = c;
                m += 1;
            }
        }
        if m == 0 {
            return Err(Error::NoCandidate);
        }
        Ok(m)
    }
}

/// Whether token `i` passes the mask (no mask: every token).
#[inline]
fn is_allowed(allowed: Option<&[u32]>, i: usize) -> bool {
    allowed.is_none_or(|m| m.get(i / 32).is_some_and(|w| w >> (i % 32) & 1 == 1))
}

/// Top-k sizes up to which a one-pass heap scan replaces a full copy.
const TOP_K_SCAN_MAX: usize = 4096;

/// A bounded heap over caller memory whose root is the worst candidate kept.
struct TopK<'c> {
    c: &'c mut [Candidate],
    n: usize,
}

impl TopK<'_> {
    /// Whether `x` would be kept (the heap has room or `x` beats the worst).
    #[inline]
    fn wants(&self, x: &Candidate) -> bool {
        self.n < self.c.len() || before(x, &self.c[0]) == Ordering::Less
    }

    fn offer(&mut self, x: Candidate) {
        // "Worse" is greater under `before`: a max-heap on it.
        let worse = |a: &Candidate, b: &Candidate| before(a, b) == Ordering::Greater;
        if self.n < self.c.len() {
            let mut i = self.n;
            self.c[i] = x;
            self.n += 1;
            while i > 0 {
                let p = (i - 1) / 2;
                if !worse(&self.c[i], &self.c[p]) {
                    break;
                }
                self.c.swap(i, p);
                i = p;
            }
        } else {
            self.c[0] = x;
            let n = self.n;
            let mut i = 0;
            loop {
                let (l, r) = (2 * i + 1, 2 * i + 2);
                let mut w = i;
                if l < n && worse(&self.c[l], &self.c[w]) {
                    w = l;
                }
                if r < n && worse(&self.c[r], &self.c[w]) {
                    w = r;
                }
                if w == i {
                    break;
                }
                self.c.swap(i, w);
                i = w;
            }
        }
    }
}

/// Keeps the smallest prefix (largest first) whose probability reaches `p`;
/// sorts only as much as it keeps. Returns the new length.
fn top_p(cand: &mut [Candidate], p: f32, sorted: bool) -> usize {
    let m = cand.len();
    let max = cand.iter().fold(f32::NEG_INFINITY, |a, c| a.max(c.logit));
    let sum: f32 = cand.iter().map(|c| libm::expf(c.logit - max)).sum();
    let target = p * sum;
    let mut done = 0; // cand[..done] is sorted and every other one is smaller
    let mut want = if sorted { m } else { 64.min(m) };
    let mut acc = 0.0f32;
    loop {
        if !sorted && want > done {
            let rest = &mut cand[done..];
            if want < m {
                rest.select_nth_unstable_by(want - done - 1, before);
            }
            rest[..want - done].sort_unstable_by(before);
        }
        for (i, c) in cand.iter().enumerate().take(want).skip(done) {
            acc += libm::expf(c.logit - max);
            if acc >= target {
                return i + 1;
            }
        }
        done = want;
        if want == m {
            return m;
        }
        want = (want * 4).min(m);
    }
}

/// Keeps tokens with probability at least `min_p` times the largest,
/// in order. Returns the new length.
fn min_p(cand: &mut [Candidate], min_p: f32, sorted: bool) -> usize {
    let max = if sorted {
        cand.first().map_or(f32::NEG_INFINITY, |c| c.logit)
    } else {
        cand.iter().fold(f32::NEG_INFINITY, |a, c| a.max(c.logit))
    };
    let floor = max + libm::logf(min_p);
    let mut m = 0;
    for i in 0..cand.len() {
        if cand[i].logit >= floor {
            cand[m] = cand[i];
            m += 1;
        }
    }
    if m == 0 && !cand.is_empty() {
        // min_p above 1 keeps no token by the rule; as llama.cpp, the most
        // likely one stays (the first of equals).
        let best =
            (0..cand.len()).fold(0, |b, i| if cand[i].logit > cand[b].logit { i } else { b });
        cand.swap(0, best);
        return 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcg32_matches_the_reference_demo() {
        let mut r = Pcg32::new(42, 54);
        let want = [
            0xa15c02b7u32,
            0x7b47f409,
            0xba1d3330,
            0x83d2f293,
            0xbfa4784b,
            0xcbed606e,
        ];
        for w in want {
            assert_eq!(r.next_u32(), w);
        }
    }

    #[test]
    fn greedy_takes_the_lowest_id_on_ties_and_skips_nan() {
        let mut s = Sampler::new(SamplerConfig::greedy()).unwrap();
        let mut scratch = [Candidate::default(); 6];
        let l = [1.0, f32::NAN, 3.0, 3.0, -1.0, 2.0];
        assert_eq!(s.sample(&l, &mut scratch), Ok(2));
        let all_bad = [f32::NAN, f32::NEG_INFINITY];
        assert_eq!(s.sample(&all_bad, &mut scratch), Err(Error::NoCandidate));
        assert!(matches!(
            s.sample(&[0.0; 7], &mut scratch),
            Err(Error::BufferTooSmall { .. })
        ));
    }

    #[test]
    fn a_mask_drops_tokens_before_every_other_step() {
        let logits: [f32; 40] = core::array::from_fn(|i| (i % 7) as f32 - 0.1 * i as f32);
        let mut scratch = [Candidate::default(); 40];
        // Tokens 3, 10 and 35 only.
        let allowed = [(1 << 3) | (1 << 10), 1 << 3];
        for top_k in [0, 2, 40] {
            for (temperature, penalty) in [(0.0, 1.0), (1.0, 1.0), (0.7, 1.3)] {
                let cfg = SamplerConfig {
                    temperature,
                    top_k,
                    repeat_penalty: penalty,
                    min_p: 0.0,
                    ..Default::default()
                };
                let mut s = Sampler::new(cfg).unwrap();
                s.accept(4); // a penalised token outside the mask stays out
                for _ in 0..50 {
                    let t = s.sample_masked(&logits, &allowed, &mut scratch).unwrap();
                    assert!([3, 10, 35].contains(&t), "{t}");
                }
                // Every bit set: the same draws as no mask.
                let mut a = Sampler::new(cfg).unwrap();
                let mut b = Sampler::new(cfg).unwrap();
                for _ in 0..20 {
                    assert_eq!(
                        a.sample(&logits, &mut scratch),
                        b.sample_masked(&logits, &[u32::MAX; 2], &mut scratch)
                    );
                }
            }
        }
        let mut s = Sampler::new(SamplerConfig::greedy()).unwrap();
        assert_eq!(
            s.sample_masked(&logits, &[0, 0], &mut scratch),
            Err(Error::NoCandidate)
        );
        assert!(matches!(
            s.sample_masked(&logits, &[0], &mut scratch),
            Err(Error::BufferTooSmall { .. })
        ));
    }

    #[test]
    fn infinite_logits_share_the_mass() {
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg).unwrap();
        let mut scratch = [Candidate::default(); 4];
        let l = [0.0, f32::INFINITY, 5.0, f32::INFINITY];
        let mut seen = [0u32; 4];
        for _ in 0..1000 {
            seen[s.sample(&l, &mut scratch).unwrap() as usize] += 1;
        }
        assert_eq!(seen[0] + seen[2], 0);
        assert!(seen[1] > 400 && seen[3] > 400, "{seen:?}");
    }

    #[test]
    fn penalties_follow_llama_cpp() {
        let cfg = SamplerConfig {
            temperature: 0.0,
            repeat_penalty: 2.0,
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg).unwrap();
        for t in [0, 0, 1] {
            s.accept(t);
        }
        let mut c = [
            Candidate { id: 0, logit: 4.0 },
            Candidate { id: 1, logit: -1.0 },
            Candidate { id: 2, logit: 1.0 },
        ];
        s.apply_penalties(&mut c);
        assert_eq!(c[0].logit, 4.0 / 2.0 - 2.0 * 0.5 - 0.25);
        assert_eq!(c[1].logit, -2.0 - 0.5 - 0.25);
        assert_eq!(c[2].logit, 1.0);
    }

    /// The one-pass heap scan keeps exactly what copy, penalise, drop and
    /// select keep, in the same order.
    #[test]
    fn top_k_scan_matches_the_copy_path() {
        let mut rng = Pcg32::new(5, 6);
        for trial in 0..300 {
            let n = 1 + (rng.next_u32() % 300) as usize;
            let logits: [f32; 300] = core::array::from_fn(|_| match rng.next_u32() % 40 {
                0 => f32::NAN,
                1 => f32::NEG_INFINITY,
                2 if trial % 7 == 0 => f32::INFINITY,
                3 => 1.5, // ties
                _ => rng.next_f32() * 8.0 - 4.0,
            });
            let logits = &logits[..n];
            let cfg = SamplerConfig {
                repeat_penalty: 1.0 + rng.next_f32(),
                presence_penalty: rng.next_f32() - 0.5,
                frequency_penalty: rng.next_f32() * 0.3,
                repeat_last_n: (rng.next_u32() % 80) as usize,
                ..SamplerConfig::default()
            };
            let mut s = Sampler::new(cfg).unwrap();
            for _ in 0..(rng.next_u32() % 100) {
                s.accept(rng.next_u32() % n as u32);
            }
            let k = 1 + (rng.next_u32() % 50) as usize;
            let mut a = [Candidate::default(); 300];
            let mut b = [Candidate::default(); 300];
            let got = s.scan_top_k(logits, None, k, &mut a[..n]);
            for (i, &l) in logits.iter().enumerate() {
                b[i] = Candidate {
                    id: i as u32,
                    logit: l,
                };
            }
            s.apply_penalties(&mut b[..n]);
            let want = Sampler::drop_impossible(&mut b[..n]).map(|m| {
                let m2 = if k < m {
                    b[..m].select_nth_unstable_by(k - 1, before);
                    k
                } else {
                    m
                };
                b[..m2].sort_unstable_by(before);
                m2
            });
            match (got, want) {
                (Ok(x), Ok(y)) => assert_eq!(&a[..x], &b[..y], "trial {trial}"),
                (x, y) => assert_eq!(x, y, "trial {trial}"),
            }
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        let bad = |cfg: SamplerConfig, param| {
            assert_eq!(
                Sampler::new(cfg).map(|_| ()),
                Err(Error::InvalidSamplerParam { param })
            );
        };
        let d = SamplerConfig::default();
        bad(
            SamplerConfig {
                temperature: -0.1,
                ..d
            },
            SamplerParam::Temperature,
        );
        bad(
            SamplerConfig {
                temperature: f32::NAN,
                ..d
            },
            SamplerParam::Temperature,
        );
        bad(SamplerConfig { top_p: -0.1, ..d }, SamplerParam::TopP);
        bad(SamplerConfig { top_p: 1.5, ..d }, SamplerParam::TopP);
        bad(
            SamplerConfig {
                min_p: f32::INFINITY,
                ..d
            },
            SamplerParam::MinP,
        );
        bad(SamplerConfig { min_p: -0.5, ..d }, SamplerParam::MinP);
        bad(
            SamplerConfig {
                repeat_penalty: 0.0,
                ..d
            },
            SamplerParam::RepeatPenalty,
        );
        bad(
            SamplerConfig {
                frequency_penalty: f32::INFINITY,
                ..d
            },
            SamplerParam::FrequencyPenalty,
        );
        bad(
            SamplerConfig {
                repeat_last_n: 10_000,
                ..d
            },
            SamplerParam::RepeatLastN,
        );
    }
}
