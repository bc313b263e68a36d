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

use crate::attention::{attend_heads, HeadView};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::kernels::{Arith, Kernels, Matrix};
use crate::kv_cache::KvCache;
use crate::model::{Config, MemoryPlan, ScratchSizes, Weights};
use crate::parallel::{self, Parallel, Serial};
use crate::quant::{BlockQ16, BlockQ8_0};
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

    /// [`Llama::from_gguf`] into `slot`, built where it stays. The value
    /// holds a layer table with room for `MAX_LAYERS` layers (34 KB on a
    /// 32-bit target), which moves through `Result`s copy it on the stack
    /// several times over; a microcontroller would rather hold it once.
    pub fn load_into<'s>(
        g: &Gguf<'w>,
        slot: &'s mut Option<Llama<'w>>,
    ) -> Result<&'s mut Llama<'w>> {
        let config = Config::from_gguf(g)?;
        let filled = slot
            .insert(Llama {
                config,
                weights: Weights::empty(),
            })
            .weights
            .fill(g, &config);
        // Matched together, since the borrow checker will not let a branch
        // empty the slot while another returns a reference into it.
        match (filled, slot) {
            (Ok(()), Some(m)) => Ok(m),
            // On an error the slot is left empty, not half filled. (The slot
            // was just filled, so `Ok` with `None` cannot happen.)
            (r, s) => {
                *s = None;
                Err(r.err().unwrap_or(Error::MissingTensor {
                    kind: crate::error::TensorKind::TokenEmbd,
                    layer: 0,
                }))
            }
        }
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
    /// Each rotated pair's frequency as f64 bits (low word first), computed
    /// once ([`rope_freqs`]).
    rope_freq: &'a mut [f32],
    logits: &'a mut [f32],
    row: &'a mut [f32],
    xq: &'a mut [f32],
}

/// Takes the next `n` floats of the arena (fewer only if the arena is short,
/// which the constructors have ruled out).
fn carve<'a>(buf: &mut &'a mut [f32], n: usize) -> &'a mut [f32] {
    let rest = core::mem::take(buf);
    let (head, tail) = rest.split_at_mut(n.min(rest.len()));
    *buf = tail;
    head
}

/// One sequence's part of a batched step: its cache and the tokens it
/// advances by (a prompt chunk, or the one token it just generated).
#[derive(Debug)]
pub struct Seq<'a, 'c> {
    pub cache: &'a mut KvCache<'c>,
    pub tokens: &'a [u32],
}

/// A forward engine over caller memory that advances several sequences in
/// one step (continuous batching): every matmul reads each weight row once
/// for all their tokens, while attention, positions and caches stay per
/// sequence. A sequence's results are bit for bit those it gets alone: a
/// prompt chunk of several tokens takes the batched arithmetic, a single
/// token the decode arithmetic, exactly as in a [`Session`], and neither
/// depends on the other tokens of the step.
pub struct Batch<'s, 'w> {
    model: &'s Llama<'w>,
    kernels: Kernels,
    plan: MemoryPlan,
    s: Scratch<'s>,
    par: &'s dyn Parallel,
}

/// One sequence per session: the whole arena's KV cache and a [`Batch`]
/// of one over the rest.
pub struct Session<'s, 'w> {
    kv: KvCache<'s>,
    b: Batch<'s, 'w>,
}

static SERIAL: Serial = Serial;

impl core::fmt::Debug for Session<'_, '_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("config", &self.b.model.config)
            .field("kernels", &self.b.kernels.name)
            .field("plan", &self.b.plan)
            .field("pos", &self.kv.len())
            .finish()
    }
}

impl core::fmt::Debug for Batch<'_, '_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Batch")
            .field("config", &self.model.config)
            .field("kernels", &self.kernels.name)
            .field("plan", &self.plan)
            .finish()
    }
}

/// Re-derives `plan` for `model` so a plan made for another config (or
/// forged) cannot under-size buffers.
fn check_plan(model: &Llama, plan: &MemoryPlan) -> Result<MemoryPlan> {
    MemoryPlan::rederive(&model.config, plan)
}

impl<'s, 'w> Batch<'s, 'w> {
    /// A batch engine over `scratch`, which must hold at least
    /// `plan.scratch_len` floats (the caches are the caller's, made with
    /// [`MemoryPlan::cache`]).
    pub fn new(
        model: &'s Llama<'w>,
        kernels: Kernels,
        plan: MemoryPlan,
        scratch: &'s mut [f32],
    ) -> Result<Self> {
        let check = check_plan(model, &plan)?;
        if scratch.len() < check.scratch_len {
            return Err(Error::BufferTooSmall {
                needed: check.scratch_len as u64,
                found: scratch.len() as u64,
            });
        }
        Self::over(model, kernels, check, scratch)
    }

    /// Carves the scratch of a checked plan.
    fn over(
        model: &'s Llama<'w>,
        kernels: Kernels,
        plan: MemoryPlan,
        mut rest: &'s mut [f32],
    ) -> Result<Self> {
        let c = &model.config;
        let sizes = ScratchSizes::new(
            c,
            plan.kv.capacity,
            plan.max_batch,
            plan.threads,
            plan.seqs,
            plan.packed_prefill,
        )
        .ok_or(Error::BatchZero)?;
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
            rope_freq: carve(&mut rest, sizes.rope_freq),
            logits: carve(&mut rest, sizes.logits),
            row: carve(&mut rest, sizes.row),
            xq: carve(&mut rest, sizes.xq),
        };
        rope_freqs(s.rope_freq, c.rope_base, c.rope_dim);
        Ok(Batch {
            model,
            kernels,
            plan,
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

    /// Advances every sequence of `seqs` by its tokens in one forward step,
    /// then [`Batch::logits`]`(i)` holds the logits after the last token of
    /// `seqs[i]`. At most `plan.seqs` sequences and `plan.max_batch` tokens
    /// in all; each sequence's tokens must fit its cache in one chunk
    /// ([`KvCache::chunk_room`]: a streaming cache past its capacity takes
    /// one token per step). Everything is checked before anything is
    /// written: an error leaves every cache as it was.
    pub fn step(&mut self, seqs: &mut [Seq<'_, '_>]) -> Result<()> {
        self.check(seqs)?;
        self.forward_step(seqs, Emit::Last, &mut |_, _, _| {})
    }

    /// The logits after the last token of sequence `i` of the last step.
    pub fn logits(&self, i: usize) -> &[f32] {
        let v = self.model.config.vocab_size;
        self.s.logits.get(i * v..(i + 1) * v).unwrap_or(&[])
    }

    fn check(&self, seqs: &[Seq<'_, '_>]) -> Result<()> {
        let c = &self.model.config;
        if seqs.is_empty() {
            return Err(Error::EmptyInput);
        }
        if seqs.len() > self.plan.seqs {
            return Err(Error::CapExceeded {
                what: crate::error::Cap::Sequences,
                found: seqs.len() as u64,
                cap: self.plan.seqs as u64,
            });
        }
        let mut total = 0usize;
        for q in seqs {
            let n = q.tokens.len();
            if n == 0 {
                return Err(Error::EmptyInput);
            }
            total = total.saturating_add(n);
            if let Some(&bad) = q.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(Error::TokenOutOfRange {
                    token: bad,
                    vocab: c.vocab_size as u32,
                });
            }
            let kv = &*q.cache;
            if kv.n_layers() != c.n_layers
                || kv.kv_dim() != c.kv_dim()
                || kv.capacity() > self.plan.kv.capacity
            {
                return Err(Error::LengthMismatch {
                    expected: self.plan.kv.capacity as u64,
                    found: kv.capacity() as u64,
                });
            }
            kv.reserve(n)?;
            if n > kv.chunk_room() {
                return Err(Error::CapExceeded {
                    what: crate::error::Cap::Batch,
                    found: n as u64,
                    cap: kv.chunk_room() as u64,
                });
            }
        }
        if total > self.plan.max_batch {
            return Err(Error::CapExceeded {
                what: crate::error::Cap::Batch,
                found: total as u64,
                cap: self.plan.max_batch as u64,
            });
        }
        Ok(())
    }

    /// The forward pass over checked `seqs`. Rows of the step's activations
    /// hold the sequences of several tokens first (batched arithmetic), then
    /// those of one token (decode arithmetic). `which` says for which tokens
    /// the classifier runs; `emit(seq, token, logits)` sees each.
    fn forward_step(
        &mut self,
        seqs: &mut [Seq<'_, '_>],
        which: Emit,
        emit: &mut dyn FnMut(usize, usize, &[f32]),
    ) -> Result<()> {
        let m = self.model;
        let c = &m.config;
        let w = &m.weights;
        let kern = &self.kernels;
        let n: usize = seqs.iter().map(|q| q.tokens.len()).sum();
        // Rows 0..g take the batched arithmetic.
        let g: usize = seqs.iter().map(|q| q.tokens.len()).filter(|&l| l > 1).sum();
        let (dim, qd, kvd, ffn, hd) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim, c.head_dim);
        let group = c.n_heads / c.n_kv_heads;
        let par = self.par;
        let threads = self.plan.threads.max(1);
        let s = &mut self.s;
        let per_worker = s.row.len() / threads;
        let per_scores = s.scores.len() / threads;
        let mm = Mm {
            par,
            kern,
            per_worker,
            packed_prefill: self.plan.packed_prefill,
        };
        // Embedding rows and RoPE angles, once for all layers.
        for (i, q) in seqs.iter().enumerate() {
            let r0 = first_row(seqs, i);
            let p0 = q.cache.pos();
            for (j, &tok) in q.tokens.iter().enumerate() {
                let r = r0 + j;
                w.token_embd
                    .dequantize_row(tok as usize, &mut s.x[r * dim..(r + 1) * dim])?;
                rope_table(
                    &mut s.rope[r * c.rope_dim..(r + 1) * c.rope_dim],
                    p0 + j,
                    s.rope_freq,
                );
            }
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

            // Q, K, V projections for the whole step. (This function's
            // hand-offs of a layer's matrices are `weights::LAYER_STEPS`,
            // by which a host lays out each worker's rows.)
            let qkv = [&lw.attn_q, &lw.attn_k, &lw.attn_v];
            let outs = [&mut *s.q, &mut *s.k, &mut *s.v];
            mm.split(qkv, s.xb, outs, s.row, s.xq, (g, n))?;

            // Rotate queries and keys at their absolute positions, then append
            // K and V to the cache. Past the first eviction a sequence has one
            // token, whose query is also rotated at its in-cache position for
            // the sink keys (see kv_cache).
            for i in 0..seqs.len() {
                let r0 = first_row(seqs, i);
                let sq = &mut seqs[i];
                let p0 = sq.cache.pos();
                for j in 0..sq.tokens.len() {
                    let t = r0 + j;
                    let table = &s.rope[t * c.rope_dim..(t + 1) * c.rope_dim];
                    let q = &mut s.q[t * qd..(t + 1) * qd];
                    let sink = sq.cache.sinks_for(p0 + j) > 0;
                    if sink {
                        s.q_sink[i * qd..(i + 1) * qd].copy_from_slice(q);
                    }
                    for h in q.chunks_exact_mut(hd) {
                        rope(h, table);
                    }
                    for h in s.k[t * kvd..(t + 1) * kvd].chunks_exact_mut(hd) {
                        rope(h, table);
                    }
                    sq.cache.store(
                        l,
                        p0 + j,
                        &s.k[t * kvd..(t + 1) * kvd],
                        &s.v[t * kvd..(t + 1) * kvd],
                    )?;
                    if sink {
                        let rs = &mut s.rope_sink[i * c.rope_dim..(i + 1) * c.rope_dim];
                        rope_table(rs, sq.cache.query_cache_pos(p0 + j), s.rope_freq);
                        for h in s.q_sink[i * qd..(i + 1) * qd].chunks_exact_mut(hd) {
                            rope(h, rs);
                        }
                    }
                }
            }

            // Grouped-query causal attention: token t sees the slots of its
            // sequence's cache that hold the sinks and the latest tokens up
            // to itself; query heads h * group.. (h + 1) * group read KV head
            // h together, one task, so each cached row is widened once.
            let seqs_ro: &[Seq<'_, '_>] = seqs;
            let (q, q_sink) = (&*s.q, &*s.q_sink);
            let n_kv = c.n_kv_heads;
            let gd = group * hd;
            let heads = |task: usize, out: &mut [f32], scores: &mut [f32]| {
                let (t, h) = (task / n_kv, task % n_kv);
                let Some((i, j)) = seq_of_row(seqs_ro, t) else {
                    return;
                };
                let kv = &*seqs_ro[i].cache;
                let Ok((keys, values)) = kv.layer(l) else {
                    return;
                };
                let pos = kv.pos() + j;
                attend_heads(
                    &q[t * qd + h * gd..t * qd + (h + 1) * gd],
                    &q_sink[i * qd + h * gd..i * qd + (h + 1) * gd],
                    group,
                    kv.sinks_for(pos),
                    keys,
                    values,
                    kv.visible(pos),
                    HeadView {
                        row: kvd,
                        offset: h * hd,
                        warm: j == 0,
                    },
                    scores,
                    out,
                    kern,
                );
            };
            let att = &mut s.att[..n * qd];
            // Column by column: a worker's tokens share a KV head, whose
            // rows stay in its caches from one token to the next.
            let grid = (n, n_kv);
            if !parallel::for_task_grid(par, grid, att, gd, s.scores, per_scores, &heads) {
                return Err(Error::BufferTooSmall {
                    needed: (threads * per_scores) as u64,
                    found: s.scores.len() as u64,
                });
            }

            // Output projection and residual.
            mm.split([&lw.attn_output], s.att, [&mut *s.xb], s.row, s.xq, (g, n))?;
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
            let gate_up = [&lw.ffn_gate, &lw.ffn_up];
            let outs = [&mut *s.hb, &mut *s.hb2];
            mm.split(gate_up, s.xb, outs, s.row, s.xq, (g, n))?;
            (kern.swiglu)(&mut s.hb[..n * ffn], &s.hb2[..n * ffn]);
            mm.split([&lw.ffn_down], s.hb, [&mut *s.xb], s.row, s.xq, (g, n))?;
            add(&mut s.x[..n * dim], &s.xb[..n * dim]);
        }
        for q in seqs.iter_mut() {
            q.cache.advance(q.tokens.len());
        }

        // Final RMSNorm and classifier, in groups of as many rows as the
        // logits buffer holds, always with the decode arithmetic.
        let vocab = c.vocab_size;
        let room = (s.logits.len() / vocab.max(1)).max(1);
        // Logits rows fill the buffer in emission order (a batch's sequence
        // i, which emits once, lands in row i) and wrap when it is full.
        let mut pending = 0usize;
        let mut base = 0usize;
        let mut ids = [(0usize, 0usize); 64];
        let cap = room.min(ids.len());
        let mut flush = |pending: &mut usize,
                         base: &mut usize,
                         ids: &[(usize, usize)],
                         s: &mut Scratch<'_>|
         -> Result<()> {
            let k = *pending;
            if k == 0 {
                return Ok(());
            }
            if *base + k > room {
                *base = 0;
            }
            let out = &mut s.logits[*base * vocab..(*base + k) * vocab];
            mm.multi(
                [&w.output],
                &s.xb[..k * dim],
                k,
                [out],
                s.row,
                s.xq,
                Arith::Decode,
            )?;
            for (r, &(i, j)) in ids[..k].iter().enumerate() {
                let at = *base + r;
                emit(i, j, &s.logits[at * vocab..(at + 1) * vocab]);
            }
            *base += k;
            *pending = 0;
            Ok(())
        };
        for (i, q) in seqs.iter().enumerate() {
            let len = q.tokens.len();
            let r0 = first_row(seqs, i);
            let first = match which {
                Emit::None => len,
                Emit::Last => len - 1,
                Emit::From(k) => k.min(len),
            };
            for j in first..len {
                let t = r0 + j;
                rmsnorm(
                    &mut s.xb[pending * dim..(pending + 1) * dim],
                    &s.x[t * dim..(t + 1) * dim],
                    w.output_norm,
                    c.rms_eps,
                );
                ids[pending] = (i, j);
                pending += 1;
                if pending == cap {
                    flush(&mut pending, &mut base, &ids, s)?;
                }
            }
        }
        flush(&mut pending, &mut base, &ids, s)?;
        Ok(())
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
        let check = check_plan(model, &plan)?;
        if arena.len() < check.f32_len() {
            return Err(Error::BufferTooSmall {
                needed: check.f32_len() as u64,
                found: arena.len() as u64,
            });
        }
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
        let b = Batch::over(model, kernels, check, rest)?;
        Ok(Session { kv, b })
    }

    /// Splits each step over `par`'s workers from now on; the plan must have
    /// room for them ([`MemoryPlan::with_threads`]). Results do not depend
    /// on the number of workers.
    pub fn set_parallel(&mut self, par: &'s dyn Parallel) -> Result<()> {
        self.b.set_parallel(par)
    }

    pub fn config(&self) -> &Config {
        &self.b.model.config
    }

    pub fn plan(&self) -> &MemoryPlan {
        &self.b.plan
    }

    pub fn kernels(&self) -> &Kernels {
        &self.b.kernels
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
        if other.b.model.config != self.b.model.config {
            return Err(Error::LengthMismatch {
                expected: self.logits().len() as u64,
                found: other.logits().len() as u64,
            });
        }
        self.kv.copy_from(&other.kv)?;
        let v = self.b.model.config.vocab_size;
        self.b.s.logits[..v].copy_from_slice(other.logits());
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
        self.b.logits(0)
    }

    /// Feeds `tokens` and returns the logits after the last one.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        self.run(tokens, None, 0)?;
        Ok(self.logits())
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
        let vocab = self.b.model.config.vocab_size;
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
                .b
                .plan
                .max_batch
                .min(self.kv.chunk_room())
                .min(tokens.len() - base);
            let chunk = &tokens[base..base + take];
            let last_chunk = base + take == tokens.len();
            let mut seq = [Seq {
                cache: &mut self.kv,
                tokens: chunk,
            }];
            match on_logits.as_deref_mut() {
                Some(f) => self.b.forward_step(
                    &mut seq,
                    Emit::From(first.saturating_sub(base)),
                    &mut |_, j, l| f(base + j, l),
                )?,
                None if last_chunk => {
                    self.b
                        .forward_step(&mut seq, Emit::Last, &mut |_, _, _| {})?
                }
                None => self
                    .b
                    .forward_step(&mut seq, Emit::None, &mut |_, _, _| {})?,
            }
            base += take;
        }
        Ok(())
    }
}

/// The first activation row of sequence `i` in a step: the sequences of
/// several tokens come first, then those of one, each group in order.
fn first_row(seqs: &[Seq<'_, '_>], i: usize) -> usize {
    let multi = seqs[i].tokens.len() > 1;
    let mut r = 0;
    if !multi {
        r = seqs.iter().map(|q| q.tokens.len()).filter(|&l| l > 1).sum();
    }
    for q in &seqs[..i] {
        let l = q.tokens.len();
        if (l > 1) == multi {
            r += l;
        }
    }
    r
}

/// The sequence and token index of activation row `t` (see [`first_row`]).
fn seq_of_row(seqs: &[Seq<'_, '_>], t: usize) -> Option<(usize, usize)> {
    let mut r = 0;
    for multi in [true, false] {
        for (i, q) in seqs.iter().enumerate() {
            let l = q.tokens.len();
            if (l > 1) != multi {
                continue;
            }
            if t < r + l {
                return Some((i, t - r));
            }
            r += l;
        }
    }
    None
}

/// What every matmul of a step shares: the workers, the kernels and each
/// worker's share of the row scratch.
#[derive(Clone, Copy)]
struct Mm<'a> {
    par: &'a dyn Parallel,
    kern: &'a Kernels,
    per_worker: usize,
    /// The plan's [`MemoryPlan::packed_prefill`].
    packed_prefill: bool,
}

impl Mm<'_> {
    /// `outs[j] = ws[j] x` for `n` tokens (`x` is (n, cols), each output
    /// (n, rows)), every matrix's rows split over the workers in one
    /// hand-off. For decode with 16-bit activation blocks the input is
    /// quantized once, into `xq`, for all workers and matrices.
    #[allow(clippy::too_many_arguments)]
    fn multi<const K: usize>(
        &self,
        ws: [&Matrix; K],
        x: &[f32],
        n: usize,
        outs: [&mut [f32]; K],
        scratch: &mut [f32],
        xq: &mut [f32],
        arith: Arith,
    ) -> Result<()> {
        let Mm {
            par,
            kern,
            per_worker,
            ..
        } = *self;
        let rows: [usize; K] = core::array::from_fn(|j| ws[j].rows);
        let cols = ws[0].cols;
        let mut outs = outs;
        let failed = AtomicBool::new(false);
        // The decode arithmetic (which packed Q8_0 matrices take for batches
        // too) quantizes the input once here for all workers.
        let q16 = ws.iter().all(|w| w.cols == cols)
            && match arith {
                Arith::Decode => ws.iter().all(|w| kern.decodes_q16(w)),
                Arith::Batch => ws.iter().all(|w| kern.packed_q8_0(w)),
            };
        // Tables with int8 activations (Cortex-M DSP) quantize the input
        // once here for all the matrices too, when the blocks fit.
        let q8 = !q16 && ws.iter().all(|w| w.cols == cols && kern.takes_q8_0(w));
        let nb = cols / crate::quant::q16::QK;
        // Batched tiles on tables that take the tokens transposed: the input
        // transposed once here for all the matrices and workers.
        let xt = !q16
            && !q8
            && arith == Arith::Batch
            && kern.takes_transposed()
            && ws.iter().all(|w| w.cols == cols && !kern.packed_q8_0(w));
        let (blocks, q8, xt) = if q16 {
            match crate::kernels::blocks_in::<BlockQ16>(xq, n * nb) {
                Ok(b) => (kern.quantize_q16(x, n, cols, b).then_some(&*b), None, None),
                Err(_) => (None, None, None),
            }
        } else if q8 {
            match crate::kernels::blocks_in::<BlockQ8_0>(xq, n * nb) {
                Ok(b) => {
                    for (t, bt) in b.chunks_exact_mut(nb.max(1)).enumerate().take(n) {
                        crate::quant::q8_0::quantize_row(&x[t * cols..(t + 1) * cols], bt);
                    }
                    (None, Some(&*b), None)
                }
                Err(_) => (None, None, None),
            }
        } else if xt {
            match (xq.get_mut(..Kernels::xt_len(n, cols)), x.get(..n * cols)) {
                (Some(xt), Some(x)) => {
                    kern.transpose(x, n, cols, xt);
                    (None, None, Some(&*xt))
                }
                _ => (None, None, None),
            }
        } else {
            (None, None, None)
        };
        let ran = {
            let views: [&mut [f32]; K] = outs.each_mut().map(|o| &mut **o);
            parallel::for_rows_multi(
                par,
                views,
                rows,
                n,
                16,
                scratch,
                per_worker,
                &|j, part, s| {
                    let r = match (blocks, q8, xt) {
                        (Some(b), _, _) => kern.matmul_part_q16(ws[j], b, part, s),
                        (None, Some(b), _) => kern.matmul_part_q8(ws[j], b, part),
                        (None, None, Some(xt)) => kern.matmul_part_xt(ws[j], xt, part, s),
                        (None, None, None) => kern.matmul_part_as(ws[j], x, part, s, arith),
                    };
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                },
            )
        };
        if !ran || failed.load(Ordering::Relaxed) {
            // Said again one matrix at a time on one thread, which reports
            // what is wrong.
            let s = scratch.get_mut(..per_worker).unwrap_or(&mut []);
            for (w, out) in ws.into_iter().zip(outs) {
                let found = out.len() as u64;
                let mut part = crate::parallel::TokenRows::new(out, n, w.rows, 0, w.rows).ok_or(
                    Error::BufferTooSmall {
                        needed: n.saturating_mul(w.rows) as u64,
                        found,
                    },
                )?;
                match xt {
                    Some(xt) => kern.matmul_part_xt(w, xt, &mut part, s)?,
                    None => kern.matmul_part_as(w, x, &mut part, s, arith)?,
                }
            }
        }
        Ok(())
    }

    /// [`Mm::multi`] over rows `0..g` in the batched arithmetic and `g..n`
    /// in the decode arithmetic.
    fn split<const K: usize>(
        &self,
        ws: [&Matrix; K],
        x: &[f32],
        outs: [&mut [f32]; K],
        scratch: &mut [f32],
        xq: &mut [f32],
        (g, n): (usize, usize),
    ) -> Result<()> {
        let mut heads: [&mut [f32]; K] = core::array::from_fn(|_| &mut [][..]);
        let mut tails: [&mut [f32]; K] = core::array::from_fn(|_| &mut [][..]);
        for (j, o) in outs.into_iter().enumerate() {
            let at = (g * ws[j].rows).min(o.len());
            let (h, t) = o.split_at_mut(at);
            heads[j] = h;
            tails[j] = t;
        }
        if g > 0 {
            if self.packed_prefill {
                self.multi(ws, x, g, heads, scratch, xq, Arith::Batch)?;
            } else {
                // The plan holds no batch of activation blocks: packed
                // matrices prefill through their plain rows.
                let plain: [Matrix; K] = ws.map(|w| Matrix {
                    packed: crate::kernels::Packed::None,
                    pieces: crate::kernels::Pieces::NONE,
                    ..*w
                });
                let plain: [&Matrix; K] = core::array::from_fn(|j| &plain[j]);
                self.multi(plain, x, g, heads, scratch, xq, Arith::Batch)?;
            }
        }
        if n > g {
            let x = x.get(g * ws[0].cols..).unwrap_or(&[]);
            self.multi(ws, x, n - g, tails, scratch, xq, Arith::Decode)?;
        }
        Ok(())
    }
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

/// `out = x / rms(x) * weight`; the sum of squares is exact, rounded once to
/// f64 ([`crate::math::sum_squares`]).
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let ss: f64 = crate::math::sum_squares(x) / x.len() as f64;
    let scale = (1.0 / libm::sqrt(ss + eps as f64)) as f32;
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * g;
    }
}

/// Each rotated pair's frequency `base^(-2i/rope_dim)` in f64, stored as
/// its bits in two f32 words (low word first), for [`rope_table`]: computed
/// once per session, since `pow` in software f64 (an FPU without doubles)
/// costs more than the rest of a token's table.
pub fn rope_freqs(out: &mut [f32], base: f32, rope_dim: usize) {
    for (i, w) in out.chunks_exact_mut(2).enumerate() {
        let freq = libm::pow(base as f64, -((2 * i) as f64) / rope_dim as f64);
        let bits = freq.to_bits();
        w[0] = f32::from_bits(bits as u32);
        w[1] = f32::from_bits((bits >> 32) as u32);
    }
}

/// cos/sin of each rotated pair at `pos`: `table[2i], table[2i+1]` for pair i,
/// angle `pos * freq_i` with the frequencies of [`rope_freqs`]. Computed in
/// f64 (reduced by multiples of pi/2, then polynomials) so long positions
/// keep their precision.
pub fn rope_table(table: &mut [f32], pos: usize, freqs: &[f32]) {
    for (cs, w) in table.chunks_exact_mut(2).zip(freqs.chunks_exact(2)) {
        let freq = f64::from_bits(w[0].to_bits() as u64 | (w[1].to_bits() as u64) << 32);
        let (c, s) = cos_sin(pos as f64 * freq);
        cs[0] = c as f32;
        cs[1] = s as f32;
    }
}

/// Angles up to which [`cos_sin`] reduces by multiples of pi/2 itself.
const COS_SIN_REDUCED: f64 = 1048576.0; // 2^20

/// `(cos t, sin t)` in f64 to within a few units in the last place, for
/// angles `0 <= t`: reduced by multiples of pi/2 (pi/2 in three parts,
/// each product with the multiple exact), then Taylor polynomials on
/// `[-pi/4, pi/4]`, whose truncation error (below 1e-11) is far under
/// what the f32 table keeps. About a third of libm's `cos` and `sin` in
/// software f64; angles past 2^20 (positions past a million) go to libm.
fn cos_sin(t: f64) -> (f64, f64) {
    if !(0.0..COS_SIN_REDUCED).contains(&t) {
        return (libm::cos(t), libm::sin(t));
    }
    // pi/2 = P1 + P2 + P3: P1 and P2 have 33 significant bits, so k * P1
    // and k * P2 are exact for k < 2^20.
    const P1: f64 = 1.570_796_326_734_125_6;
    const P2: f64 = 6.077_100_506_303_966e-11;
    const P3: f64 = 2.022_266_248_795_950_6e-21;
    let k = (t * core::f64::consts::FRAC_2_PI + 0.5) as u32;
    let kf = k as f64;
    let r = ((t - kf * P1) - kf * P2) - kf * P3;
    let r2 = r * r;
    // sin r = r - r^3/3! + ... - r^11/11!, cos r = 1 - r^2/2! + ... + r^12/12!.
    let s = r + r
        * r2
        * (-1.0 / 6.0
            + r2 * (1.0 / 120.0
                + r2 * (-1.0 / 5040.0 + r2 * (1.0 / 362_880.0 + r2 * (-1.0 / 39_916_800.0)))));
    let c = 1.0
        + r2 * (-0.5
            + r2 * (1.0 / 24.0
                + r2 * (-1.0 / 720.0
                    + r2 * (1.0 / 40320.0
                        + r2 * (-1.0 / 3_628_800.0 + r2 * (1.0 / 479_001_600.0))))));
    match k & 3 {
        0 => (c, s),
        1 => (-s, c),
        2 => (-c, -s),
        _ => (s, -c),
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

fn add(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cos_sin` against libm over angles from 0 to past 2^20 (the libm
    /// side of the cut included): within the polynomials' truncation error,
    /// and the f32 values the table keeps almost always the same.
    #[test]
    fn cos_sin_matches_libm() {
        let mut differ = 0u32;
        let n = 200_000u32;
        for i in 0..n {
            // Spread over [0, 2^21): every quadrant, small and huge angles.
            let t = (i as f64 / n as f64).powi(3) * 2_097_152.0 + (i % 7) as f64 * 0.1;
            let (c, s) = cos_sin(t);
            let (lc, ls) = (libm::cos(t), libm::sin(t));
            assert!(
                (c - lc).abs() < 2e-11 && (s - ls).abs() < 2e-11,
                "{t}: {c} {s} vs {lc} {ls}"
            );
            differ += (c as f32 != lc as f32) as u32 + (s as f32 != ls as f32) as u32;
        }
        assert!(differ < n / 500, "{differ} of {} f32 values differ", 2 * n);
        assert!(cos_sin(f64::NAN).0.is_nan());
    }

    /// The table of pair i at `pos` is cos/sin of `pos * base^(-2i/d)`.
    #[test]
    fn rope_table_angles() {
        let (d, base) = (64, 10_000.0f32);
        let mut freqs = [0.0f32; 64];
        rope_freqs(&mut freqs, base, d);
        let mut table = [0.0f32; 64];
        for pos in [0usize, 1, 17, 8191, 1 << 20, 3 << 20] {
            rope_table(&mut table, pos, &freqs);
            for i in 0..d / 2 {
                let a = pos as f64 * libm::pow(base as f64, -((2 * i) as f64) / d as f64);
                assert!(
                    (table[2 * i] as f64 - libm::cos(a)).abs() < 1e-7,
                    "{pos} {i}"
                );
                assert!(
                    (table[2 * i + 1] as f64 - libm::sin(a)).abs() < 1e-7,
                    "{pos} {i}"
                );
            }
        }
    }
}
