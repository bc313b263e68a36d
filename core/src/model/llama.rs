//! The llama forward pass, whole, in the spirit of llama2.c's `run.c`.
//!
//! Per token: embedding row; then per layer RMSNorm, Q/K/V projections, RoPE
//! (adjacent-pair rotation, GGML_ROPE_TYPE_NORM), grouped-query causal attention
//! over the KV cache, output projection and residual; RMSNorm, SwiGLU FFN and
//! residual; finally RMSNorm and the classifier.
//!
//! A forward call takes any number of tokens. They are processed in chunks of
//! the plan's `max_batch`: every matmul of a chunk reads each weight row once
//! for all of its tokens (batched prefill); one token is the decode step.
//! All memory comes from the caller's arena; nothing allocates.

#![forbid(unsafe_code)]

use crate::attention::{attend_head, HeadView};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::kernels::Kernels;
use crate::kernels::Matrix;
use crate::kv_cache::KvCache;
use crate::model::{Config, MemoryPlan, ScratchSizes, Weights};
use crate::parallel::{self, Parallel, Serial};
use core::sync::atomic::{AtomicBool, Ordering};

/// A loaded model: config plus weights borrowed from the file bytes.
#[derive(Debug, Clone)]
pub struct Llama<'w> {
    pub config: Config,
    pub weights: Weights<'w>,
}

impl<'w> Llama<'w> {
    /// Reads config and weights from a parsed file; checks every shape.
    pub fn from_gguf(g: &Gguf<'w>) -> Result<Llama<'w>> {
        let config = Config::from_gguf(g)?;
        let weights = Weights::from_gguf(g, &config)?;
        Ok(Llama { config, weights })
    }
}

/// Run-time buffers carved from the arena.
struct Scratch<'a> {
    x: &'a mut [f32],
    xb: &'a mut [f32],
    q: &'a mut [f32],
    k: &'a mut [f32],
    v: &'a mut [f32],
    att: &'a mut [f32],
    hb: &'a mut [f32],
    hb2: &'a mut [f32],
    scores: &'a mut [f32],
    rope: &'a mut [f32],
    q_sink: &'a mut [f32],
    rope_sink: &'a mut [f32],
    logits: &'a mut [f32],
    row: &'a mut [f32],
}

/// Takes the next `n` floats of the arena (fewer only if the arena is short,
/// which `Session::new` has ruled out).
fn carve<'a>(buf: &mut &'a mut [f32], n: usize) -> &'a mut [f32] {
    let rest = core::mem::take(buf);
    let (head, tail) = rest.split_at_mut(n.min(rest.len()));
    *buf = tail;
    head
}

/// One sequence's state: KV cache, scratch, position. Built over caller memory.
pub struct Session<'s, 'w> {
    model: &'s Llama<'w>,
    kernels: Kernels,
    plan: MemoryPlan,
    kv: KvCache<'s>,
    s: Scratch<'s>,
    par: &'s dyn Parallel,
}

static SERIAL: Serial = Serial;

impl core::fmt::Debug for Session<'_, '_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("config", &self.model.config)
            .field("kernels", &self.kernels.name)
            .field("plan", &self.plan)
            .field("pos", &self.kv.len())
            .finish()
    }
}

impl<'s, 'w> Session<'s, 'w> {
    /// A session over `arena`, which must hold at least `plan.f32_len()` floats.
    pub fn new(
        model: &'s Llama<'w>,
        kernels: Kernels,
        plan: MemoryPlan,
        arena: &'s mut [f32],
    ) -> Result<Self> {
        let c = &model.config;
        // Re-derive the plan so a plan made for another config cannot under-size buffers.
        let check = MemoryPlan::with_threads(c, plan.kv, plan.max_batch, plan.threads)?;
        if arena.len() < check.f32_len() {
            return Err(Error::BufferTooSmall {
                needed: check.f32_len() as u64,
                found: arena.len() as u64,
            });
        }
        let sizes = ScratchSizes::new(c, check.kv.capacity, check.max_batch, check.threads)
            .ok_or(Error::BatchZero)?;
        let mut rest = arena;
        let k = carve(&mut rest, check.kv_len);
        let v = carve(&mut rest, check.kv_len);
        let kv = KvCache::new(
            crate::quant::as_bytes_mut(k),
            crate::quant::as_bytes_mut(v),
            check.kv,
            c.n_layers,
            c.kv_dim(),
        )?;
        let s = Scratch {
            x: carve(&mut rest, sizes.x),
            xb: carve(&mut rest, sizes.xb),
            q: carve(&mut rest, sizes.q),
            k: carve(&mut rest, sizes.k),
            v: carve(&mut rest, sizes.v),
            att: carve(&mut rest, sizes.att),
            hb: carve(&mut rest, sizes.hb),
            hb2: carve(&mut rest, sizes.hb2),
            scores: carve(&mut rest, sizes.scores),
            rope: carve(&mut rest, sizes.rope),
            q_sink: carve(&mut rest, sizes.q_sink),
            rope_sink: carve(&mut rest, sizes.rope_sink),
            logits: carve(&mut rest, sizes.logits),
            row: carve(&mut rest, sizes.row),
        };
        Ok(Session {
            model,
            kernels,
            plan: check,
            kv,
            s,
            par: &SERIAL,
        })
    }

    /// Splits each step over `par`'s workers from now on; the plan must have
    /// room for them ([`MemoryPlan::with_threads`]). Results do not depend
    /// on the number of workers.
    pub fn set_parallel(&mut self, par: &'s dyn Parallel) -> Result<()> {
        let w = par.workers();
        if w == 0 || w > self.plan.threads {
            return Err(Error::CapExceeded {
                what: crate::error::Cap::Threads,
                found: w as u64,
                cap: self.plan.threads as u64,
            });
        }
        self.par = par;
        Ok(())
    }

    pub fn config(&self) -> &Config {
        &self.model.config
    }

    pub fn plan(&self) -> &MemoryPlan {
        &self.plan
    }

    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// Tokens processed so far (the absolute position of the next token).
    pub fn pos(&self) -> usize {
        self.kv.pos()
    }

    /// Positions the KV cache holds now (at most its capacity).
    pub fn cached(&self) -> usize {
        self.kv.len()
    }

    /// Whether a streaming cache has evicted any token.
    pub fn evicted(&self) -> bool {
        self.kv.evicted()
    }

    /// Errors with `KvCacheFull` unless `n` more tokens fit in the cache
    /// (a streaming cache always has room).
    pub fn reserve(&self, n: usize) -> Result<()> {
        self.kv.reserve(n)
    }

    /// Starts a new sequence over the same memory.
    pub fn reset(&mut self) {
        self.kv.clear();
    }

    /// Makes this session continue exactly where `other` is: its KV cache
    /// and its last logits (both sessions must be of the same model).
    pub fn copy_from(&mut self, other: &Session<'_, '_>) -> Result<()> {
        if other.model.config != self.model.config {
            return Err(Error::LengthMismatch {
                expected: self.s.logits.len() as u64,
                found: other.s.logits.len() as u64,
            });
        }
        self.kv.copy_from(&other.kv)?;
        self.s.logits.copy_from_slice(other.s.logits);
        Ok(())
    }

    /// Forgets every token from position `n` on, so a sequence that shares its
    /// first `n` tokens with this one continues from there (chat turns).
    /// The logits are stale until the next forward call.
    /// After an eviction, going back is impossible: `KvCacheFull`.
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        self.kv.truncate(n)
    }

    /// Logits after the last token processed: (vocab).
    pub fn logits(&self) -> &[f32] {
        self.s.logits
    }

    /// Feeds `tokens` and returns the logits after the last one.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        self.run(tokens, None, 0)?;
        Ok(self.s.logits)
    }

    /// Feeds `tokens`, calling `on_logits(i, logits)` after each token `i`
    /// (teacher-forced scoring). The classifier runs for every token.
    pub fn forward_all(
        &mut self,
        tokens: &[u32],
        on_logits: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        self.run(tokens, Some(on_logits), 0)
    }

    /// Like [`Session::forward_all`], but the classifier runs only for tokens
    /// `first..` (scoring part of a text skips the rest's logits).
    pub fn forward_all_from(
        &mut self,
        tokens: &[u32],
        first: usize,
        on_logits: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        self.run(tokens, Some(on_logits), first)
    }

    fn run(
        &mut self,
        tokens: &[u32],
        mut on_logits: Option<LogitsFn<'_>>,
        first: usize,
    ) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::EmptyInput);
        }
        // Check everything first: an error leaves the session unchanged.
        let vocab = self.model.config.vocab_size;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::TokenOutOfRange {
                token: bad,
                vocab: vocab as u32,
            });
        }
        self.kv.reserve(tokens.len())?;
        // Chunks of up to max_batch tokens; a streaming cache past its
        // capacity takes one token at a time (a later token of a chunk would
        // evict what an earlier one still sees).
        let mut base = 0;
        while base < tokens.len() {
            let take = self
                .plan
                .max_batch
                .min(self.kv.chunk_room())
                .min(tokens.len() - base);
            let chunk = &tokens[base..base + take];
            let last_chunk = base + take == tokens.len();
            match on_logits.as_deref_mut() {
                Some(f) => self.forward_chunk(
                    chunk,
                    |i, l| f(base + i, l),
                    Emit::From(first.saturating_sub(base)),
                )?,
                None if last_chunk => self.forward_chunk(chunk, |_, _| {}, Emit::Last)?,
                None => self.forward_chunk(chunk, |_, _| {}, Emit::None)?,
            }
            base += take;
        }
        Ok(())
    }

    /// The forward pass over up to `max_batch` tokens at positions `pos..pos+n`.
    /// `which` says for which tokens the classifier runs.
    fn forward_chunk(
        &mut self,
        tokens: &[u32],
        mut emit: impl FnMut(usize, &[f32]),
        which: Emit,
    ) -> Result<()> {
        let m = self.model;
        let c = &m.config;
        let w = &m.weights;
        let kern = &self.kernels;
        let n = tokens.len();
        let p0 = self.kv.pos();
        let (dim, qd, kvd, ffn, hd) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim, c.head_dim);
        let group = c.n_heads / c.n_kv_heads;
        let par = self.par;
        let threads = self.plan.threads.max(1);
        let s = &mut self.s;
        let per_worker = s.row.len() / threads;
        let per_scores = s.scores.len() / threads;
        let mm = |w: &Matrix, x: &[f32], n: usize, out: &mut [f32], row: &mut [f32]| {
            matmul(par, kern, w, x, n, out, row, per_worker)
        };

        // Embedding rows.
        for (t, &tok) in tokens.iter().enumerate() {
            w.token_embd
                .dequantize_row(tok as usize, &mut s.x[t * dim..(t + 1) * dim])?;
        }

        // RoPE angles for these positions, once for all layers.
        for t in 0..n {
            rope_table(
                &mut s.rope[t * c.rope_dim..(t + 1) * c.rope_dim],
                p0 + t,
                c.rope_base,
                c.rope_dim,
            );
        }

        for (l, lw) in w.layers.iter().enumerate() {
            // Attention RMSNorm.
            for t in 0..n {
                rmsnorm(
                    &mut s.xb[t * dim..(t + 1) * dim],
                    &s.x[t * dim..(t + 1) * dim],
                    lw.attn_norm,
                    c.rms_eps,
                );
            }

            // Q, K, V projections for the whole chunk.
            mm(&lw.attn_q, s.xb, n, s.q, s.row)?;
            mm(&lw.attn_k, s.xb, n, s.k, s.row)?;
            mm(&lw.attn_v, s.xb, n, s.v, s.row)?;

            // Rotate queries and keys at their absolute positions, then append
            // K and V to the cache. Past the first eviction a query is also
            // rotated at its in-cache position, for the sink keys (see kv_cache).
            for t in 0..n {
                let table = &s.rope[t * c.rope_dim..(t + 1) * c.rope_dim];
                let q = &mut s.q[t * qd..(t + 1) * qd];
                if self.kv.sinks_for(p0 + t) > 0 {
                    s.q_sink.copy_from_slice(q);
                }
                for h in q.chunks_exact_mut(hd) {
                    rope(h, table);
                }
                for h in s.k[t * kvd..(t + 1) * kvd].chunks_exact_mut(hd) {
                    rope(h, table);
                }
                self.kv.store(
                    l,
                    p0 + t,
                    &s.k[t * kvd..(t + 1) * kvd],
                    &s.v[t * kvd..(t + 1) * kvd],
                )?;
            }

            // Grouped-query causal attention: token t sees the slots that hold
            // the sinks and the latest tokens up to itself; query head h reads
            // KV head h / group. Past the first eviction a chunk is one token,
            // whose query is also rotated at its in-cache position for the sinks.
            if self.kv.sinks_for(p0) > 0 {
                rope_table(
                    s.rope_sink,
                    self.kv.query_cache_pos(p0),
                    c.rope_base,
                    c.rope_dim,
                );
                for h in s.q_sink.chunks_exact_mut(hd) {
                    rope(h, s.rope_sink);
                }
            }
            let kv = &self.kv;
            let (keys, values) = kv.layer(l)?;
            let (q, q_sink) = (&*s.q, &*s.q_sink);
            let n_heads = c.n_heads;
            let heads = |task: usize, out: &mut [f32], scores: &mut [f32]| {
                let (t, h) = (task / n_heads, task % n_heads);
                let pos = p0 + t;
                attend_head(
                    &q[t * qd + h * hd..t * qd + (h + 1) * hd],
                    &q_sink[h * hd..(h + 1) * hd],
                    kv.sinks_for(pos),
                    keys,
                    values,
                    kv.visible(pos),
                    HeadView {
                        row: kvd,
                        offset: (h / group) * hd,
                    },
                    scores,
                    out,
                    kern,
                );
            };
            let att = &mut s.att[..n * qd];
            if !parallel::for_tasks(par, n * n_heads, att, hd, s.scores, per_scores, &heads) {
                return Err(Error::BufferTooSmall {
                    needed: (threads * per_scores) as u64,
                    found: s.scores.len() as u64,
                });
            }

            // Output projection and residual.
            mm(&lw.attn_output, s.att, n, s.xb, s.row)?;
            add(&mut s.x[..n * dim], &s.xb[..n * dim]);

            // FFN RMSNorm, SwiGLU, down projection and residual.
            for t in 0..n {
                rmsnorm(
                    &mut s.xb[t * dim..(t + 1) * dim],
                    &s.x[t * dim..(t + 1) * dim],
                    lw.ffn_norm,
                    c.rms_eps,
                );
            }
            mm(&lw.ffn_gate, s.xb, n, s.hb, s.row)?;
            mm(&lw.ffn_up, s.xb, n, s.hb2, s.row)?;
            for (g, &u) in s.hb[..n * ffn].iter_mut().zip(&s.hb2[..n * ffn]) {
                *g = silu(*g) * u;
            }
            mm(&lw.ffn_down, s.hb, n, s.xb, s.row)?;
            add(&mut s.x[..n * dim], &s.xb[..n * dim]);
        }
        self.kv.advance(n);

        // Final RMSNorm and classifier.
        let first = match which {
            Emit::None => n,
            Emit::Last => n - 1,
            Emit::From(k) => k.min(n),
        };
        for t in first..n {
            rmsnorm(
                &mut s.xb[..dim],
                &s.x[t * dim..(t + 1) * dim],
                w.output_norm,
                c.rms_eps,
            );
            mm(&w.output, &s.xb[..dim], 1, s.logits, s.row)?;
            emit(t, s.logits);
        }
        Ok(())
    }
}

/// `out = W x` for `n` tokens with the rows split over the workers, each
/// using its `per_worker` floats of `scratch`.
#[allow(clippy::too_many_arguments)]
fn matmul(
    par: &dyn Parallel,
    kern: &Kernels,
    w: &Matrix,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    scratch: &mut [f32],
    per_worker: usize,
) -> Result<()> {
    let failed = AtomicBool::new(false);
    let ran = parallel::for_rows(par, out, n, w.rows, 16, scratch, per_worker, &|part, s| {
        if kern.matmul_part(w, x, part, s).is_err() {
            failed.store(true, Ordering::Relaxed);
        }
    });
    if !ran || failed.load(Ordering::Relaxed) {
        // Said again on one thread, which reports what is wrong.
        let s = scratch.get_mut(..per_worker).unwrap_or(&mut []);
        return kern.matmul(w, x, n, out, s);
    }
    Ok(())
}

/// A caller's per-token logits callback: `(index in the input, logits)`.
type LogitsFn<'f> = &'f mut dyn FnMut(usize, &[f32]);

/// Which tokens of a chunk get logits.
#[derive(Clone, Copy)]
enum Emit {
    None,
    Last,
    /// Tokens from this index of the chunk on.
    From(usize),
}

/// `out = x / rms(x) * weight`; the mean square is accumulated in f64.
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let ss: f64 = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
    let scale = (1.0 / libm::sqrt(ss + eps as f64)) as f32;
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * g;
    }
}

/// cos/sin of each rotated pair at `pos`: `table[2i], table[2i+1]` for pair i,
/// angle `pos * base^(-2i/rope_dim)`. Computed in f64 so long positions keep
/// their precision.
pub fn rope_table(table: &mut [f32], pos: usize, base: f32, rope_dim: usize) {
    for (i, cs) in table.chunks_exact_mut(2).enumerate() {
        let freq = libm::pow(base as f64, -((2 * i) as f64) / rope_dim as f64);
        let angle = pos as f64 * freq;
        cs[0] = libm::cos(angle) as f32;
        cs[1] = libm::sin(angle) as f32;
    }
}

/// Rotates adjacent pairs `(x[2i], x[2i+1])` of one head by the table's angles;
/// dimensions past the table (partial rotary) are left as they are.
pub fn rope(x: &mut [f32], table: &[f32]) {
    for (pair, cs) in x.chunks_exact_mut(2).zip(table.chunks_exact(2)) {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * cs[0] - b * cs[1];
        pair[1] = a * cs[1] + b * cs[0];
    }
}

#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + crate::math::exp(-x))
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
