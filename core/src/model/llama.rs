//! The decoder forward pass, whole, in the spirit of llama2.c's `run.c`, for
//! every family the core runs ([`crate::arch`]): what sets a family apart is
//! read from its [`Config`], never a copy of the pass.
//!
//! Per token: embedding row (scaled, for Gemma); then per layer RMSNorm,
//! Q/K/V projections (with biases, Qwen2; RMSNorm per head, Qwen3 and Gemma
//! 3), RoPE (adjacent pairs or halves; the windowed layers with a base of
//! their own), grouped-query causal attention over the KV cache (within the
//! window, for windowed layers), output projection (normed again, Gemma 3)
//! and residual; RMSNorm, SwiGLU or GeGLU FFN (normed again, Gemma 3) and
//! residual; finally RMSNorm and the classifier (soft-capped where the file
//! says so).
//!
//! A forward call takes any number of tokens. They are processed in chunks of
//! the plan's `max_batch`: every matmul of a chunk reads each weight row once
//! for all of its tokens (batched prefill); one token is the decode step.
//! All memory comes from the caller's arena; nothing allocates.

#![forbid(unsafe_code)]

use crate::arch::{Activation, RopeOrder};
use crate::attention::{attend_heads, HeadView};
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::kernels::{Kernels, Matrix, Multiplier, StepRows};
use crate::kv_cache::{KvCache, KvPool};
use crate::model::scratch::{take, Dims, Scratch, ScratchSizes};
use crate::model::weights::{ATTN_OUT, DOWN, GATE_UP, QKV};
use crate::model::{Config, MemoryPlan, Weights};
use crate::parallel::{self, Parallel, Serial};

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

/// One sequence's part of a batched step: its cache and the tokens it
/// advances by (a prompt chunk, or the one token it just generated).
#[derive(Debug)]
pub struct Seq<'a, 'c> {
    pub cache: &'a mut KvCache<'c>,
    pub tokens: &'a [u32],
    /// Every token takes the decode arithmetic, the bits it gets when fed
    /// alone, instead of the batched arithmetic of a prompt chunk: a
    /// generated token and drafts after it (prompt lookup), checked in one
    /// step. A single token always takes the decode arithmetic.
    pub decode: bool,
}

impl<'a, 'c> Seq<'a, 'c> {
    /// A prompt chunk, or one generated token.
    pub fn new(cache: &'a mut KvCache<'c>, tokens: &'a [u32]) -> Seq<'a, 'c> {
        Seq {
            cache,
            tokens,
            decode: false,
        }
    }

    /// A generated token and the drafts after it, each in the decode
    /// arithmetic ([`Batch::step_drafts`] gives every one its logits).
    pub fn drafts(cache: &'a mut KvCache<'c>, tokens: &'a [u32]) -> Seq<'a, 'c> {
        Seq {
            cache,
            tokens,
            decode: true,
        }
    }

    /// Whether the tokens take the batched arithmetic.
    fn batched(&self) -> bool {
        self.tokens.len() > 1 && !self.decode
    }
}

/// A forward engine over caller memory that advances several sequences in
/// one step (continuous batching): every matmul reads each weight row once
/// for all their tokens, while attention, positions and caches stay per
/// sequence. A sequence's results are bit for bit those it gets alone: a
/// prompt chunk of several tokens takes the batched arithmetic, a single
/// token (or drafts, [`Seq::drafts`]) the decode arithmetic, exactly as in
/// a [`Session`], and neither depends on the other tokens of the step.
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
        rest: &'s mut [f32],
    ) -> Result<Self> {
        let c = &model.config;
        let dims = Dims::new(
            c,
            plan.score_slots(c),
            plan.max_batch,
            plan.threads,
            plan.seqs,
            plan.packed_prefill,
        );
        let sizes = dims
            .as_ref()
            .and_then(ScratchSizes::new)
            .ok_or(Error::BatchZero)?;
        let s = sizes.carve(rest);
        // The global layers' frequencies, then the windowed layers' own.
        let (global, window) = s.rope_freq.split_at_mut(c.rope_dim);
        let factors = model.weights.rope_factors;
        rope_freqs(global, c.rope_base, c.rope_scale, factors, c.rope_dim);
        rope_freqs(window, c.rope_base_window, 1.0, &[], c.rope_dim);
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
        self.check(seqs, false)?;
        self.forward_step(seqs, None, Emit::Last, &mut |_, _, _| {})
    }

    /// [`Batch::step`], with `emit(seq, token, logits)` for the last token
    /// of each sequence and for every token of drafts ([`Seq::drafts`]),
    /// in order; [`Batch::logits`] is not meaningful after it.
    pub fn step_drafts(
        &mut self,
        seqs: &mut [Seq<'_, '_>],
        emit: &mut dyn FnMut(usize, usize, &[f32]),
    ) -> Result<()> {
        self.check(seqs, false)?;
        self.forward_step(seqs, None, Emit::Drafts, emit)
    }

    /// [`Batch::step_drafts`] over caches that may be paged
    /// ([`KvCache::paged`]) in `pool`: first each paged cache takes the
    /// blocks its tokens need ([`KvPool::grow`]; `KvPoolFull` when the pool
    /// has too few, before any is taken), then the step runs. An error
    /// leaves every cache's tokens as they were.
    pub fn step_pool(
        &mut self,
        seqs: &mut [Seq<'_, '_>],
        pool: &mut KvPool<'_>,
        emit: &mut dyn FnMut(usize, usize, &[f32]),
    ) -> Result<()> {
        self.check(seqs, true)?;
        let mut need = 0usize;
        for q in seqs.iter().filter(|q| q.cache.is_paged()) {
            need = need.saturating_add(pool.needs(q.cache, q.tokens.len())?);
        }
        if need > pool.free() {
            return Err(Error::KvPoolFull {
                needed: need.min(u32::MAX as usize) as u32,
                free: pool.free() as u32,
            });
        }
        for q in seqs.iter_mut().filter(|q| q.cache.is_paged()) {
            pool.grow(q.cache, q.tokens.len())?;
        }
        self.forward_step(seqs, Some(pool), Emit::Drafts, emit)
    }

    /// The logits after the last token of sequence `i` of the last step.
    pub fn logits(&self, i: usize) -> &[f32] {
        let v = self.model.config.vocab_size;
        self.s.logits.get(i * v..(i + 1) * v).unwrap_or(&[])
    }

    fn check(&self, seqs: &[Seq<'_, '_>], paged: bool) -> Result<()> {
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
            if kv.is_paged() && !paged {
                return Err(Error::KvPaged);
            }
            if kv.n_layers() != c.n_layers
                || kv.kv_dim() != c.kv_dim()
                || kv.capacity() > self.plan.kv.capacity
                || *kv.windows() != self.plan.windows(c)
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

    /// The forward pass over checked `seqs`: the layer's maths, top to
    /// bottom. Rows of the step's activations hold the sequences of several
    /// tokens first (batched arithmetic), then those of one token (decode
    /// arithmetic). `which` says for which tokens the classifier runs;
    /// `emit(seq, token, logits)` sees each.
    fn forward_step(
        &mut self,
        seqs: &mut [Seq<'_, '_>],
        mut pool: Option<&mut KvPool<'_>>,
        which: Emit,
        emit: &mut dyn FnMut(usize, usize, &[f32]),
    ) -> Result<()> {
        let m = self.model;
        let (c, w) = (&m.config, &m.weights);
        let threads = self.plan.threads.max(1);
        let st = Stage {
            c,
            kern: &self.kernels,
            par: self.par,
            threads,
            mm: Multiplier::new(
                &self.kernels,
                self.par,
                self.s.work.len() / threads,
                self.plan.packed_prefill,
            ),
            rows: step_rows(seqs),
        };
        let s = &mut self.s;
        let n = st.rows.all;
        let (dim, ffn) = (c.dim, c.ffn_dim);

        // x = the tokens' embedding rows; each token's RoPE angles.
        st.embed(w, seqs, s)?;
        for (l, lw) in w.layers.iter().enumerate() {
            // x += post(Wo · attention(rope(q), rope(k), v)), h = norm(x),
            // q = qnorm(Wq h + bq), k = knorm(Wk h + bk), v = Wv h + bv.
            st.norm_rows(&mut s.xb[..n * dim], Some(&s.x[..n * dim]), lw.attn_norm);
            let qkv = [&mut *s.q, &mut *s.k, &mut *s.v];
            st.matmul(lw.group(QKV), s.xb, qkv, s.work, s.shared)?;
            st.heads(&mut s.q[..n * c.q_dim()], lw.attn_q_bias, lw.attn_q_norm);
            st.heads(&mut s.k[..n * c.kv_dim()], lw.attn_k_bias, lw.attn_k_norm);
            st.heads(&mut s.v[..n * c.kv_dim()], lw.attn_v_bias, &[]);
            st.rope_and_cache(l, seqs, s, pool.as_deref_mut())?;
            st.attend(l, seqs, s, pool.as_deref())?;
            st.matmul(lw.group(ATTN_OUT), s.att, [&mut *s.xb], s.work, s.shared)?;
            st.norm_rows(&mut s.xb[..n * dim], None, lw.attn_post_norm);
            add(&mut s.x[..n * dim], &s.xb[..n * dim]);

            // x += post(Wdown · (act(Wgate h) ⊙ Wup h)), h = norm(x).
            st.norm_rows(&mut s.xb[..n * dim], Some(&s.x[..n * dim]), lw.ffn_norm);
            let gate_up = [&mut *s.gate, &mut *s.up];
            st.matmul(lw.group(GATE_UP), s.xb, gate_up, s.work, s.shared)?;
            let (gate, up) = (&mut s.gate[..n * ffn], &s.up[..n * ffn]);
            match c.layout.act {
                Activation::Silu => (st.kern.swiglu)(gate, up),
                Activation::GeluTanh => (st.kern.geglu)(gate, up),
            }
            st.matmul(lw.group(DOWN), s.gate, [&mut *s.xb], s.work, s.shared)?;
            st.norm_rows(&mut s.xb[..n * dim], None, lw.ffn_post_norm);
            add(&mut s.x[..n * dim], &s.xb[..n * dim]);
        }
        for q in seqs.iter_mut() {
            q.cache.advance(q.tokens.len());
        }

        // logits = Wout · norm(x), for the tokens `which` asks for.
        st.classify(w, seqs, which, s, emit)
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
        let k = take(&mut rest, check.kv_len);
        let v = take(&mut rest, check.kv_len);
        let kv = check.cache(c, k, v)?;
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

    /// Feeds a generated token and drafts after it, each in the decode
    /// arithmetic (the bits it gets fed alone), with `on_logits(i, logits)`
    /// after each: prompt lookup checks its drafts in one step.
    pub fn forward_drafts(
        &mut self,
        tokens: &[u32],
        on_logits: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        self.run_as(tokens, Some(on_logits), 0, true)
    }

    fn run(&mut self, tokens: &[u32], on_logits: Option<LogitsFn<'_>>, first: usize) -> Result<()> {
        self.run_as(tokens, on_logits, first, false)
    }

    /// Feeds `tokens` in chunks, in the decode arithmetic when `decode`.
    fn run_as(
        &mut self,
        tokens: &[u32],
        mut on_logits: Option<LogitsFn<'_>>,
        first: usize,
        decode: bool,
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
                decode,
            }];
            match on_logits.as_deref_mut() {
                Some(f) => self.b.forward_step(
                    &mut seq,
                    None,
                    Emit::From(first.saturating_sub(base)),
                    &mut |_, j, l| f(base + j, l),
                )?,
                None if last_chunk => {
                    self.b
                        .forward_step(&mut seq, None, Emit::Last, &mut |_, _, _| {})?
                }
                None => self
                    .b
                    .forward_step(&mut seq, None, Emit::None, &mut |_, _, _| {})?,
            }
            base += take;
        }
        Ok(())
    }
}

/// The first activation row of sequence `i` in a step: the sequences in
/// the batched arithmetic come first, then those in the decode arithmetic,
/// each group in order.
fn first_row(seqs: &[Seq<'_, '_>], i: usize) -> usize {
    let multi = seqs[i].batched();
    let mut r = 0;
    if !multi {
        r = step_rows(seqs).batched;
    }
    for q in &seqs[..i] {
        if q.batched() == multi {
            r += q.tokens.len();
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
            if q.batched() != multi {
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

/// The rows of a step's activations: prompt chunks of several tokens first
/// (the batched arithmetic), then single tokens and drafts (decode).
fn step_rows(seqs: &[Seq<'_, '_>]) -> StepRows {
    let len = |q: &Seq<'_, '_>| q.tokens.len();
    StepRows {
        batched: seqs.iter().filter(|q| q.batched()).map(len).sum(),
        all: seqs.iter().map(len).sum(),
    }
}

/// Most tokens the classifier multiplies in one hand-off.
const CLASSIFY_ROWS: usize = 64;

/// What every stage of one forward step reads: the model's shape, the
/// kernels, the workers and the step's rows.
struct Stage<'a> {
    c: &'a Config,
    kern: &'a Kernels,
    par: &'a dyn Parallel,
    threads: usize,
    mm: Multiplier<'a>,
    rows: StepRows,
}

impl Stage<'_> {
    /// `outs[j] = ws[j] · x` for the step's rows ([`Multiplier::matmul`]),
    /// in the step's multiplication scratch (`work`, `shared`).
    fn matmul<const K: usize>(
        &self,
        ws: [&Matrix; K],
        x: &[f32],
        outs: [&mut [f32]; K],
        work: &mut [f32],
        shared: &mut [f32],
    ) -> Result<()> {
        self.mm.matmul(ws, x, outs, work, shared, self.rows)
    }

    /// RMSNorm of each `weight.len()`-wide row: of `x` into `out`, or of
    /// `out` in place (`x` `None`; nothing when `weight` is empty, a family
    /// without the norm). The rows of a prompt chunk are split over the
    /// workers; each row's arithmetic is the same wherever it runs.
    fn norm_rows(&self, out: &mut [f32], x: Option<&[f32]>, weight: &[f32]) {
        let d = weight.len();
        if d == 0 {
            return;
        }
        let eps = self.c.rms_eps;
        self.each_row(out, d, &|t, o| match x {
            Some(x) => rmsnorm(o, &x[t * d..(t + 1) * d], weight, eps),
            None => rmsnorm_in_place(o, weight, eps),
        });
    }

    /// `f(r, row)` for each `width`-wide row of `x`: over the workers for a
    /// step of several tokens, in turn for one (a hand-off would cost more
    /// than the work). Each row's arithmetic is the same wherever it runs.
    fn each_row(&self, x: &mut [f32], width: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
        if self.rows.all < 2 || self.par.workers() < 2 {
            for (r, row) in x.chunks_exact_mut(width).enumerate() {
                f(r, row);
            }
        } else {
            // The buffers fit by construction (whole rows of `x`, no scratch).
            let rows = x.len() / width;
            let task = |r: usize, row: &mut [f32], _: &mut [f32]| f(r, row);
            let _ = parallel::for_tasks(self.par, rows, x, width, &mut [], 0, &task);
        }
    }

    /// `x` = each token's embedding row, and its RoPE angles at its
    /// absolute position (once for all layers).
    fn embed(&self, w: &Weights, seqs: &[Seq<'_, '_>], s: &mut Scratch<'_>) -> Result<()> {
        let (dim, rd, sets) = (self.c.dim, self.c.rope_dim, self.c.rope_sets());
        let scale = self.c.embed_scale;
        for (i, q) in seqs.iter().enumerate() {
            let r0 = first_row(seqs, i);
            let p0 = q.cache.pos();
            for (j, &tok) in q.tokens.iter().enumerate() {
                let r = r0 + j;
                let x = &mut s.x[r * dim..(r + 1) * dim];
                w.token_embd.dequantize_row(tok as usize, x)?;
                if scale != 1.0 {
                    x.iter_mut().for_each(|v| *v *= scale);
                }
                for set in 0..sets {
                    let at = (r * sets + set) * rd;
                    let freq = &s.rope_freq[set * rd..(set + 1) * rd];
                    rope_table(&mut s.rope[at..at + rd], p0 + j, freq);
                }
            }
        }
        Ok(())
    }

    /// Finishes each head of the step's queries, keys or values: `bias`
    /// added, then RMSNorm with `norm` (each empty where the family has
    /// none). A prompt chunk's heads are split over the workers; each head's
    /// arithmetic is the same wherever it runs.
    fn heads(&self, x: &mut [f32], bias: &[f32], norm: &[f32]) {
        if bias.is_empty() && norm.is_empty() {
            return;
        }
        let (hd, eps) = (self.c.head_dim, self.c.rms_eps);
        self.each_row(x, hd, &|r, h| {
            if !bias.is_empty() {
                let at = (r * hd) % bias.len();
                add(h, &bias[at..at + hd]);
            }
            rmsnorm_in_place(h, norm, eps);
        });
    }

    /// Rotates the step's queries and keys of layer `l` at their absolute
    /// positions, then appends K and V to each sequence's cache. Past the
    /// first eviction a sequence has one token, whose query is also
    /// rotated at its in-cache position for the sink keys (see kv_cache).
    fn rope_and_cache(
        &self,
        l: usize,
        seqs: &mut [Seq<'_, '_>],
        s: &mut Scratch<'_>,
        mut pool: Option<&mut KvPool<'_>>,
    ) -> Result<()> {
        let c = self.c;
        let (qd, kvd, hd, rd) = (c.q_dim(), c.kv_dim(), c.head_dim, c.rope_dim);
        let (sets, order) = (c.rope_sets(), c.layout.rope);
        // The windowed layers' angles are the second set.
        let set = if sets == 2 && c.windowed(l) { 1 } else { 0 };
        let freq = &s.rope_freq[set * rd..(set + 1) * rd];
        for i in 0..seqs.len() {
            let r0 = first_row(seqs, i);
            let sq = &mut seqs[i];
            let p0 = sq.cache.pos();
            for j in 0..sq.tokens.len() {
                let t = r0 + j;
                let table = &s.rope[(t * sets + set) * rd..(t * sets + set + 1) * rd];
                let q = &mut s.q[t * qd..(t + 1) * qd];
                let k = &mut s.k[t * kvd..(t + 1) * kvd];
                let v = &s.v[t * kvd..(t + 1) * kvd];
                let sink = sq.cache.sinks_for(p0 + j) > 0;
                if sink {
                    s.q_sink[i * qd..(i + 1) * qd].copy_from_slice(q);
                }
                for h in q.chunks_exact_mut(hd) {
                    rope(h, table, order);
                }
                for h in k.chunks_exact_mut(hd) {
                    rope(h, table, order);
                }
                sq.cache.store_in(pool.as_deref_mut(), l, p0 + j, k, v)?;
                if sink {
                    let rs = &mut s.rope_sink[i * rd..(i + 1) * rd];
                    rope_table(rs, sq.cache.query_cache_pos(p0 + j), freq);
                    for h in s.q_sink[i * qd..(i + 1) * qd].chunks_exact_mut(hd) {
                        rope(h, rs, order);
                    }
                }
            }
        }
        Ok(())
    }

    /// `att` = grouped-query causal attention over layer `l`'s caches:
    /// token t sees the slots of its sequence's cache that hold the sinks
    /// and the latest tokens up to itself. The query heads of KV head h
    /// (`h * group..(h + 1) * group`) read it together, one task, so each
    /// cached row is widened once; a worker takes its tokens column by
    /// column, so the KV head's rows stay in its caches from one token to
    /// the next.
    fn attend(
        &self,
        l: usize,
        seqs: &[Seq<'_, '_>],
        s: &mut Scratch<'_>,
        pool: Option<&KvPool<'_>>,
    ) -> Result<()> {
        let c = self.c;
        let (qd, kvd, hd, n_kv) = (c.q_dim(), c.kv_dim(), c.head_dim, c.n_kv_heads);
        let group = c.n_heads / n_kv;
        let gd = group * hd;
        let (kern, scale) = (self.kern, c.attn_scale);
        let (q, q_sink) = (&*s.q, &*s.q_sink);
        let heads = |task: usize, out: &mut [f32], scores: &mut [f32]| {
            let (t, h) = (task / n_kv, task % n_kv);
            let Some((i, j)) = seq_of_row(seqs, t) else {
                return;
            };
            let kv = &*seqs[i].cache;
            let Ok(rows) = kv.rows(pool, l) else {
                return;
            };
            let pos = kv.pos() + j;
            // A row in the decode arithmetic reads the slots a step of its
            // token alone reads: a ring's later slots, which hold the
            // step's later drafts, stay out of its scores (they would be
            // masked, but the scores' length would change their sum).
            let newest = match seqs[i].decode {
                true => pos,
                false => kv.pos() + seqs[i].tokens.len() - 1,
            };
            let view = kv.view(l, pos, newest);
            attend_heads(
                &q[t * qd + h * gd..t * qd + (h + 1) * gd],
                &q_sink[i * qd + h * gd..i * qd + (h + 1) * gd],
                group,
                view.sinks,
                rows,
                view.n,
                HeadView {
                    row: kvd,
                    offset: h * hd,
                    warm: j == 0,
                    scale,
                    mask: view.mask,
                },
                scores,
                out,
                kern,
            );
        };
        let n = self.rows.all;
        let per_scores = s.scores.len() / self.threads;
        let att = &mut s.att[..n * qd];
        if !parallel::for_task_grid(self.par, (n, n_kv), att, gd, s.scores, per_scores, &heads) {
            return Err(Error::BufferTooSmall {
                needed: (self.threads * per_scores) as u64,
                found: s.scores.len() as u64,
            });
        }
        Ok(())
    }

    /// The final RMSNorm and the classifier for the tokens `which` asks
    /// for, always in the decode arithmetic, in groups of as many rows as
    /// the logits buffer holds; `emit(seq, token, logits)` sees each.
    fn classify(
        &self,
        w: &Weights,
        seqs: &[Seq<'_, '_>],
        which: Emit,
        s: &mut Scratch<'_>,
        emit: &mut dyn FnMut(usize, usize, &[f32]),
    ) -> Result<()> {
        let (dim, vocab) = (self.c.dim, self.c.vocab_size);
        let room = (s.logits.len() / vocab.max(1)).max(1);
        let mut out = Logits {
            room,
            next: 0,
            ids: [(0, 0); CLASSIFY_ROWS],
            pending: 0,
        };
        let cap = room.min(CLASSIFY_ROWS);
        for (i, q) in seqs.iter().enumerate() {
            let len = q.tokens.len();
            let r0 = first_row(seqs, i);
            let first = match which {
                Emit::None => len,
                Emit::Last => len - 1,
                Emit::From(k) => k.min(len),
                Emit::Drafts if q.decode => 0,
                Emit::Drafts => len - 1,
            };
            for j in first..len {
                let (t, p) = (r0 + j, out.pending);
                rmsnorm(
                    &mut s.xb[p * dim..(p + 1) * dim],
                    &s.x[t * dim..(t + 1) * dim],
                    w.output_norm,
                    self.c.rms_eps,
                );
                out.ids[p] = (i, j);
                out.pending += 1;
                if out.pending == cap {
                    self.logits(&w.output, &mut out, s, emit)?;
                }
            }
        }
        self.logits(&w.output, &mut out, s, emit)
    }

    /// The classifier over the pending normed rows of `xb`, into the next
    /// rows of the logits buffer (from its start again when it is full:
    /// a batch's sequence i, which emits once, lands in row i).
    fn logits(
        &self,
        output: &Matrix,
        out: &mut Logits,
        s: &mut Scratch<'_>,
        emit: &mut dyn FnMut(usize, usize, &[f32]),
    ) -> Result<()> {
        let (k, dim, vocab) = (out.pending, self.c.dim, self.c.vocab_size);
        if k == 0 {
            return Ok(());
        }
        if out.next + k > out.room {
            out.next = 0;
        }
        let rows = &mut s.logits[out.next * vocab..(out.next + k) * vocab];
        let x = &s.xb[..k * dim];
        self.mm.matmul(
            [output],
            x,
            [&mut *rows],
            s.work,
            s.shared,
            StepRows::decode(k),
        )?;
        softcap(rows, self.c.logit_softcap);
        for (r, &(i, j)) in out.ids[..k].iter().enumerate() {
            let at = out.next + r;
            emit(i, j, &s.logits[at * vocab..(at + 1) * vocab]);
        }
        out.next += k;
        out.pending = 0;
        Ok(())
    }
}

/// The classifier's progress through the logits buffer.
struct Logits {
    /// Rows the buffer holds.
    room: usize,
    /// The next row to fill.
    next: usize,
    /// (sequence, token) of each pending row of `xb`.
    ids: [(usize, usize); CLASSIFY_ROWS],
    pending: usize,
}

/// `x = x / rms(x) * weight`, as [`rmsnorm`]; nothing when `weight` is empty.
pub fn rmsnorm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    if weight.is_empty() {
        return;
    }
    let scale = inv_rms(x, eps);
    for (v, &g) in x.iter_mut().zip(weight) {
        *v = *v * scale * g;
    }
}

/// `x = cap * tanh(x / cap)` (0: no cap).
fn softcap(x: &mut [f32], cap: f32) {
    if cap > 0.0 {
        for v in x.iter_mut() {
            *v = (cap as f64 * libm::tanh(*v as f64 / cap as f64)) as f32;
        }
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
    /// The last token of each sequence, every token of drafts.
    Drafts,
}

/// `out = x / rms(x) * weight`; the sum of squares is exact, rounded once to
/// f64 ([`crate::math::sum_squares`]).
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let scale = inv_rms(x, eps);
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * g;
    }
}

/// `1 / sqrt(mean(x²) + eps)`, the sum of squares exact and the rest in f64.
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ss: f64 = crate::math::sum_squares(x) / x.len() as f64;
    (1.0 / libm::sqrt(ss + eps as f64)) as f32
}

/// Each rotated pair's frequency `scale * base^(-2i/rope_dim) / factors[i]`
/// (no factors: 1) in f64, stored as its bits in two f32 words (low word
/// first), for [`rope_table`]: computed once per session, since `pow` in
/// software f64 (an FPU without doubles) costs more than the rest of a
/// token's table.
pub fn rope_freqs(out: &mut [f32], base: f32, scale: f32, factors: &[f32], rope_dim: usize) {
    for (i, w) in out.chunks_exact_mut(2).enumerate() {
        let factor = factors.get(i).map_or(1.0, |&f| f as f64);
        let freq =
            scale as f64 * libm::pow(base as f64, -((2 * i) as f64) / rope_dim as f64) / factor;
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

/// Rotates pair i of one head by the table's angle i: adjacent pairs
/// `(x[2i], x[2i+1])` ([`RopeOrder::Normal`]) or halves `(x[i], x[i + d/2])`
/// of the rotated `d` dimensions ([`RopeOrder::Neox`]); dimensions past the
/// table (partial rotary) are left as they are.
pub fn rope(x: &mut [f32], table: &[f32], order: RopeOrder) {
    match order {
        RopeOrder::Normal => {
            for (pair, cs) in x.chunks_exact_mut(2).zip(table.chunks_exact(2)) {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * cs[0] - b * cs[1];
                pair[1] = a * cs[1] + b * cs[0];
            }
        }
        RopeOrder::Neox => {
            let half = table.len() / 2;
            let (lo, hi) = x[..2 * half].split_at_mut(half);
            for ((a, b), cs) in lo.iter_mut().zip(hi).zip(table.chunks_exact(2)) {
                let (x0, x1) = (*a, *b);
                *a = x0 * cs[0] - x1 * cs[1];
                *b = x0 * cs[1] + x1 * cs[0];
            }
        }
    }
}

/// `x += y` (nothing when `y` is empty).
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
        rope_freqs(&mut freqs, base, 1.0, &[], d);
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
