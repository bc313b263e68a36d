//! The continuous batching engine: one thread that owns the model's slots.
//!
//! It keeps `--parallel` slots, each with its own KV cache from a pool
//! allocated at start (on the GPU, in its memory). Every step advances all
//! active slots in one batched forward pass ([`crate::device::Slots`]: the
//! core's [`ember_core::model::Batch`], or the GPU engine): one token for each slot that
//! is generating, and a prompt chunk of up to `--batch` tokens for slots still
//! reading their prompt, so a long prompt never stalls the others for more
//! than one chunk. Requests join at the next step and leave as soon as they
//! finish or their client goes away.
//!
//! A sequence's tokens are the same whoever else is in the batch: either
//! engine gives each sequence of a step exactly the numbers it gets alone, and each
//! request's prompt is cut into the same chunks whatever the traffic.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use ember_core::kernels::Kernels;
use ember_core::kv_cache::KvCache;
use ember_core::model::{Llama, MemoryPlan};
use ember_core::sampling::{Candidate, Sampler, SamplerConfig};
use ember_core::tokenizer::{StreamDecoder, Tokenizer};

use super::metrics::Metrics;
use crate::constrain::Constraint;
use crate::device::{Device, Slots};
use crate::run::{token_logprobs, TokenLogprobs};
use crate::text::StopText;
use ember_core::grammar::VocabBuf;

/// What the engine tells a request's handler.
#[derive(Debug)]
pub(super) enum Ev {
    /// Text to append (already cut at stop strings), and the log-probabilities
    /// of the token generated at this step when the request asked for them.
    /// The text may be empty (held back at a stop string's start or inside a
    /// character) while the token is there.
    Text(String, Option<TokenLogprobs>),
    /// The end: why, and the token counts.
    Done {
        finish: &'static str,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// Prompt tokens found in the slot's cache, not read again.
        cached_tokens: usize,
    },
    /// The engine could not run the request.
    Fail(String),
}

/// A checked request, ready for a slot.
pub(super) struct Job {
    pub(super) prompt: Vec<u32>,
    pub(super) sampling: SamplerConfig,
    pub(super) max_tokens: usize,
    pub(super) stops: Vec<String>,
    pub(super) ignore_eos: bool,
    /// Reuse what a slot's cache holds of the prompt.
    pub(super) cache_prompt: bool,
    /// Report each token's log-probability and this many alternatives.
    pub(super) logprobs: Option<usize>,
    /// The grammar the reply follows.
    pub(super) grammar: Option<Arc<ember_core::grammar::GrammarBuf>>,
    /// When the request came in (for the time to first token).
    pub(super) arrived: Instant,
    pub(super) tx: tokio::sync::mpsc::UnboundedSender<Ev>,
}

/// What the engine thread needs besides the model and its queue.
pub(super) struct EngineConfig {
    pub(super) plan: MemoryPlan,
    pub(super) kernels: Kernels,
    pub(super) device: Device,
    pub(super) threads: usize,
    pub(super) chunk: usize,
    /// Prompt-lookup drafts per generating slot and step (0: off).
    pub(super) lookup: usize,
    /// Paged KV: blocks in the pool and positions per block (`None`: a
    /// whole cache per slot).
    pub(super) paged: Option<(usize, usize)>,
    /// Free blocks of the pool (the engine publishes it).
    pub(super) blocks_free: Arc<AtomicUsize>,
    /// Requests queued but not yet in a slot (the engine counts them down).
    pub(super) waiting: Arc<AtomicUsize>,
    /// Slots generating now (the engine publishes it).
    pub(super) busy: Arc<AtomicUsize>,
    /// Set when the server has stopped accepting: leave once idle.
    pub(super) stop: Arc<AtomicBool>,
    pub(super) metrics: Arc<Metrics>,
}

/// A request in a slot.
struct Slot {
    job: Job,
    cache: usize,
    sampler: Sampler,
    constraint: Option<Constraint>,
    fed: usize,
    /// Prompt tokens its cache already held.
    cached: usize,
    generated: usize,
    /// With `--lookup`: the prompt and the tokens generated so far, which
    /// prompt lookup drafts from.
    hist: Option<Vec<u32>>,
    next: u32,
    dec: StreamDecoder,
    stops: StopText,
    /// When its last token was generated.
    last: Instant,
}

/// The engine: admits queued requests into free slots and advances every
/// active slot one step at a time until told to stop with nothing left.
pub(super) fn engine_main(
    model: &'static Llama<'static>,
    tok: &'static Tokenizer<'static>,
    cfg: EngineConfig,
    rx: Receiver<Job>,
    ready: Sender<std::result::Result<String, String>>,
) -> Result<()> {
    let (plan, lookup) = (cfg.plan, cfg.lookup);
    let (waiting, busy, stop, metrics) = (&cfg.waiting, &cfg.busy, &cfg.stop, &cfg.metrics);
    let c = &model.config;
    // Set-up errors go to the starting thread, which reports them. The
    // CPU's memory (scratch, one KV cache per slot) is allocated here; the
    // GPU keeps its own.
    let cpu = cfg.device == Device::Cpu;
    let started = (|| -> Result<_> {
        let pool = crate::pool::Pool::new(if cpu { cfg.threads } else { 1 })?;
        if !cpu {
            return Ok((pool, Vec::new(), Vec::new()));
        }
        let scratch = crate::arena::zeroed(plan.scratch_len, "the batch scratch")?;
        if cfg.paged.is_some() {
            return Ok((pool, scratch, Vec::new()));
        }
        let mem: Vec<(Vec<f32>, Vec<f32>)> = (0..plan.seqs)
            .map(|_| {
                let k = crate::arena::zeroed(plan.kv_len, "the slots' KV caches")?;
                Ok((
                    k,
                    crate::arena::zeroed(plan.kv_len, "the slots' KV caches")?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok((pool, scratch, mem))
    })();
    let (pool, mut scratch, mut mem) = match started {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}")));
            return Ok(());
        }
    };
    // A paged engine's pool: keys, values, bookkeeping and block tables.
    let mut pool_mem = match cfg.paged {
        Some((blocks, block)) => {
            let row = plan.kv.ty.row_bytes(c.kv_dim()).unwrap_or(0);
            let bb = ember_core::kv_cache::KvPool::block_bytes(block, c.n_layers, row).unwrap_or(0);
            let floats = (blocks * bb).div_ceil(4);
            let win = plan.windows(c);
            let table = ember_core::kv_cache::KvCache::table_len(&plan.kv, &win, block);
            let made = (|| -> Result<_> {
                Ok((
                    crate::arena::zeroed(floats, "the KV pool")?,
                    crate::arena::zeroed(floats, "the KV pool")?,
                    vec![0u16; blocks],
                    vec![0u32; blocks],
                    vec![0u32; table * plan.seqs],
                ))
            })();
            match made {
                Ok(m) => Some(m),
                Err(e) => {
                    let _ = ready.send(Err(format!("{e:#}")));
                    return Ok(());
                }
            }
        }
        None => None,
    };
    let slots = match (cfg.device, &mut pool_mem) {
        (Device::Cpu, Some((k, v, refs, free, tables))) => Slots::cpu_paged(
            model,
            cfg.kernels,
            plan,
            &mut scratch,
            crate::device::PoolMem {
                k,
                v,
                refs,
                free,
                tables,
            },
            cfg.paged.map_or(1, |p| p.1),
            &pool,
        ),
        (Device::Cpu, None) => Slots::cpu(model, cfg.kernels, plan, &mut scratch, &mut mem, &pool),
        (Device::Gpu, _) => Slots::gpu(model, plan, lookup > 0),
    };
    let mut slots = match slots {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}")));
            return Ok(());
        }
    };
    // Generating slots take one token each per step; a prompt chunk the
    // rest (the same chunks whatever the traffic).
    let Some(room) = slots.max_batch().checked_sub(plan.seqs).filter(|&r| r > 0) else {
        let _ = ready.send(Err(format!(
            "the engine takes {} tokens per step at --ctx {}: not one per slot and a prompt chunk; lower --ctx or --parallel",
            slots.max_batch(),
            plan.kv.capacity
        )));
        return Ok(());
    };
    let chunk = cfg.chunk.min(room);
    let _ = ready.send(Ok(slots.engine_name()));
    let mut free: Vec<usize> = (0..plan.seqs).rev().collect();
    // The tokens each slot's cache holds, kept after its request ends so
    // that the next request sharing a prefix with them reads only the rest
    // (the prompt cache); how many of them lead the cache as a prompt read
    // would leave it; and when each slot was last given out.
    let mut held: Vec<Vec<u32>> = vec![Vec::new(); plan.seqs];
    let mut exact: Vec<usize> = vec![0; plan.seqs];
    let mut used: Vec<u64> = vec![0; plan.seqs];
    let mut clock = 0u64;
    let mut active: Vec<Slot> = Vec::new();
    // Requests taken from the queue, waiting for a slot (or blocks).
    let mut pending: std::collections::VecDeque<Job> = std::collections::VecDeque::new();
    let mut cand = vec![Candidate::default(); Sampler::scratch_len(c.vocab_size)];
    // The vocabulary as grammars read it, made on the first constrained request.
    let mut vocab: Option<Arc<VocabBuf>> = None;
    loop {
        busy.store(active.len(), Ordering::SeqCst);
        if let Some((free_blocks, _, _)) = slots.blocks() {
            cfg.blocks_free.store(free_blocks, Ordering::SeqCst);
        }
        // Take what has arrived; with nothing to do, wait for a request.
        while let Ok(j) = rx.try_recv() {
            pending.push_back(j);
        }
        if active.is_empty() && pending.is_empty() {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(j) => pending.push_back(j),
                Err(RecvTimeoutError::Timeout) if stop.load(Ordering::SeqCst) => return Ok(()),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
        // Admit waiting requests in order while slots (and, paged, blocks)
        // are free.
        while !free.is_empty() {
            let Some(job) = pending.pop_front() else {
                break;
            };
            if job.tx.is_closed() {
                waiting.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let reusable = job.cache_prompt && chunk >= 3;
            let (at, mut reuse) = route(&free, &held, &exact, &used, &job.prompt, reusable);
            let cache = free[at];
            // Keep the shared prefix, unless the cache no longer holds all
            // of it (a windowed layer's ring moved on): then start afresh.
            if reuse == 0 || slots.truncate(cache, reuse).is_err() {
                slots.clear(cache);
                reuse = 0;
            }
            held[cache].truncate(reuse);
            exact[cache] = reuse;
            if let Some((_, _, block)) = slots.blocks() {
                // Paged: a longer prefix in another slot's blocks (a
                // request being served, say) is shared, not read again.
                let most = if reusable {
                    job.prompt.len().saturating_sub(2)
                } else {
                    0
                };
                let best = (0..plan.seqs)
                    .filter(|&s| s != cache)
                    .map(|s| (shared_prefix(&held[s][..exact[s]], &job.prompt[..most]), s))
                    .max();
                if let Some((n, src)) = best {
                    if n / block * block > reuse {
                        slots.clear(cache);
                        reuse = slots.share(cache, src, n).unwrap_or(0);
                        let from = held[src][..reuse].to_vec();
                        held[cache] = from;
                        exact[cache] = reuse;
                    }
                }
                // Admission: the blocks this request may take, beside what
                // the requests in flight may still take; idle slots' caches
                // give theirs back, least recently used first.
                let win = plan.windows(c);
                let cow = win.ring > 0 || plan.kv.streaming;
                let pending_need = |slots: &Slots, s: usize, job: &Job| {
                    let total = job.prompt.len() + job.max_tokens;
                    let need = KvCache::blocks_held(&plan.kv, &win, total, block);
                    let (has, shared) = slots.held_blocks(s);
                    need.saturating_sub(has) + if cow { shared } else { 0 }
                };
                let owed: usize = active
                    .iter()
                    .map(|s| pending_need(&slots, s.cache, &s.job))
                    .sum();
                let want = pending_need(&slots, cache, &job);
                let mut idle: Vec<usize> = free.iter().copied().filter(|&s| s != cache).collect();
                idle.sort_by_key(|&s| std::cmp::Reverse(used[s]));
                while slots.blocks().map_or(0, |b| b.0) < owed + want {
                    let Some(s) = idle.pop() else { break };
                    slots.clear(s);
                    held[s].clear();
                    exact[s] = 0;
                }
                if slots.blocks().map_or(0, |b| b.0) < owed + want {
                    if active.is_empty() {
                        // Alone and still too big: it never fits.
                        waiting.fetch_sub(1, Ordering::SeqCst);
                        let total = slots.blocks().map_or(0, |b| b.1);
                        let _ = job.tx.send(Ev::Fail(format!(
                            "the request needs {want} KV blocks; the pool holds {total}: raise --kv-memory"
                        )));
                        continue;
                    }
                    // It waits for requests in flight to give blocks back.
                    pending.push_front(job);
                    break;
                }
            }
            waiting.fetch_sub(1, Ordering::SeqCst);
            let sampler = match Sampler::new(job.sampling) {
                Ok(s) => s,
                Err(e) => {
                    let _ = job.tx.send(Ev::Fail(format!("{e}")));
                    continue;
                }
            };
            let constraint = match &job.grammar {
                None => None,
                Some(g) => {
                    let made = match &vocab {
                        Some(v) => Ok(v.clone()),
                        None => crate::constrain::vocab(tok).map(Arc::new),
                    }
                    .and_then(|v| {
                        vocab = Some(v.clone());
                        Constraint::new(g, v)
                    });
                    match made {
                        Ok(c) => Some(c),
                        Err(e) => {
                            let _ = job.tx.send(Ev::Fail(format!("{e:#}")));
                            continue;
                        }
                    }
                }
            };
            free.swap_remove(at);
            clock += 1;
            used[cache] = clock;
            debug_assert_eq!(slots.pos(cache), held[cache].len());
            metrics
                .prompt_tokens
                .fetch_add(reuse as u64, Ordering::Relaxed);
            metrics
                .prompt_cache_tokens
                .fetch_add(reuse as u64, Ordering::Relaxed);
            let mut slot = Slot {
                cache,
                sampler,
                constraint,
                fed: reuse,
                cached: reuse,
                generated: 0,
                hist: (lookup > 0).then(|| job.prompt.clone()),
                next: 0,
                dec: StreamDecoder::new(tok, false, false),
                stops: StopText::new(&job.stops),
                last: job.arrived,
                job,
            };
            for &id in &slot.job.prompt {
                slot.sampler.accept(id);
            }
            active.push(slot);
        }
        // A client that went away frees its slot now.
        active.retain(|s| {
            let gone = s.job.tx.is_closed();
            if gone {
                free.push(s.cache);
            }
            !gone
        });
        if active.is_empty() {
            continue;
        }

        // This step's work: one token for each generating slot, then prompt
        // chunks (each slot's chunks are the same whatever else runs) while
        // the step has room, then prompt-lookup drafts in what is left.
        let mut budget = slots.max_batch();
        let mut work: Vec<(usize, Vec<u32>)> = Vec::new(); // (slot in `active`, its tokens)
        for (i, s) in active.iter().enumerate() {
            if s.fed == s.job.prompt.len() {
                work.push((i, vec![s.next]));
                budget -= 1;
            }
        }
        let generating = work.len();
        for (i, s) in active.iter().enumerate() {
            let left = s.job.prompt.len() - s.fed;
            if left == 0 {
                continue;
            }
            let mut take = chunk.min(left).min(slots.chunk_room(s.cache));
            // No prompt token is read alone (the decode arithmetic) when
            // it can be read with another (see `route`).
            if left - take == 1 && take >= 3 {
                take -= 1;
            }
            if take <= budget {
                work.push((i, s.job.prompt[s.fed..s.fed + take].to_vec()));
                budget -= take;
            }
        }
        let mut drafted = vec![false; work.len()];
        if lookup > 0 {
            let mut d = Vec::new();
            for (w, is_draft) in work[..generating].iter_mut().zip(&mut drafted) {
                let s = &active[w.0];
                // Drafts past max_tokens or the cache would be wasted.
                let room = lookup
                    .min(budget)
                    .min(s.job.max_tokens.saturating_sub(s.generated + 1))
                    .min(slots.chunk_room(s.cache).saturating_sub(1));
                crate::run::lookup_draft(s.hist.as_deref().unwrap_or(&[]), room, &mut d);
                if !d.is_empty() {
                    budget -= d.len();
                    w.1.extend_from_slice(&d);
                    *is_draft = true;
                    metrics
                        .lookup_drafted
                        .fetch_add(d.len() as u64, Ordering::Relaxed);
                }
            }
        }
        let step: Vec<(usize, &[u32])> = work
            .iter()
            .map(|(i, t)| (active[*i].cache, &t[..]))
            .collect();
        // The logits of each work item's rows: after its last token, or
        // after each of a generated token and its drafts.
        let mut rows: Vec<Vec<f32>> = vec![Vec::new(); work.len()];
        let ran = if drafted.iter().any(|&d| d) {
            let v = c.vocab_size;
            slots.step_drafts(&step, &drafted, &mut |k, j, l| {
                let r = &mut rows[k];
                let first = if drafted[k] { 0 } else { step[k].1.len() - 1 };
                r.resize((j - first + 1) * v, 0.0);
                r[(j - first) * v..].copy_from_slice(l);
            })
        } else {
            slots.step(&step)
        };
        if let Err(e) = ran {
            // The step changed nothing; the requests in it fail, the rest go on.
            for (i, _) in &work {
                let _ = active[*i]
                    .job
                    .tx
                    .send(Ev::Fail(format!("the model failed: {e:#}")));
            }
            let failed: Vec<usize> = work.iter().map(|w| w.0).collect();
            release(&mut active, &mut free, &failed);
            continue;
        }

        for (i, t) in &work {
            let c = active[*i].cache;
            // A prompt chunk of several tokens (the batched arithmetic)
            // leaves the cache as any later prompt read would.
            let prompt = active[*i].fed < active[*i].job.prompt.len();
            if prompt && t.len() > 1 && exact[c] == held[c].len() {
                exact[c] += t.len();
            }
            held[c].extend_from_slice(t);
        }

        // Sample where a prompt finished or a token was fed: from each row
        // in turn while the drawn token is the next draft.
        let mut finished: Vec<usize> = Vec::new();
        for (k, (i, toks)) in work.iter().enumerate() {
            let s = &mut active[*i];
            if s.fed < s.job.prompt.len() {
                s.fed += toks.len();
                metrics
                    .prompt_tokens
                    .fetch_add(toks.len() as u64, Ordering::Relaxed);
                if s.fed < s.job.prompt.len() {
                    continue;
                }
            }
            let n_rows = if drafted[k] { toks.len() } else { 1 };
            let before = slots.pos(s.cache) - toks.len();
            let mut kept = 0; // drafts confirmed
            for r in 0..n_rows {
                let logits = match rows[k].is_empty() {
                    true => slots.logits(k),
                    false => &rows[k][r * c.vocab_size..(r + 1) * c.vocab_size],
                };
                // Tokens the cache holds through this row (those of a prompt
                // chunk, or the generated token and the drafts before it).
                let through = if drafted[k] {
                    before + r + 1
                } else {
                    slots.pos(s.cache)
                };
                let full = through + 1 > slots.capacity(s.cache);
                let id = match take_token(s, tok, metrics, logits, full, &mut cand) {
                    Taken::Next(id) => id,
                    Taken::Done => {
                        finished.push(*i);
                        break;
                    }
                };
                if r + 1 < n_rows && toks[r + 1] == id {
                    kept += 1;
                    continue;
                }
                s.next = id;
                break;
            }
            if drafted[k] {
                metrics
                    .lookup_accepted
                    .fetch_add(kept as u64, Ordering::Relaxed);
                // The cache drops the drafts after the last one confirmed.
                let keep = before + 1 + kept;
                let c = s.cache;
                if slots.pos(c) > keep {
                    if let Err(e) = slots.truncate(c, keep) {
                        // A ring that cannot give them back (the step's
                        // room exceeds --lookup, so this does not happen):
                        // the request fails, the slot starts afresh.
                        let _ = s.job.tx.send(Ev::Fail(format!("the model failed: {e:#}")));
                        if !finished.contains(i) {
                            finished.push(*i);
                        }
                        exact[c] = 0;
                        held[c].clear();
                    }
                    held[c].truncate(keep);
                }
            }
        }
        release(&mut active, &mut free, &finished);
    }
}

/// What [`take_token`] did with a drawn token.
enum Taken {
    /// The request goes on; this token is the next to feed.
    Next(u32),
    /// The request is over (its last events sent).
    Done,
}

/// Draws slot `s`'s next token from `logits` and sends it: text, log-
/// probabilities, and the end when it is one (an end-of-generation token,
/// a stop string, the grammar complete, `max_tokens`, or a `full` cache).
fn take_token(
    s: &mut Slot,
    tok: &Tokenizer,
    metrics: &Metrics,
    logits: &[f32],
    full: bool,
    cand: &mut [Candidate],
) -> Taken {
    let picked = match &mut s.constraint {
        Some(c) => c
            .pick(&mut s.sampler, logits, cand)
            .and_then(|id| c.accept(id).map(|()| (id, c.finished()))),
        None => s
            .sampler
            .sample(logits, cand)
            .map(|id| (id, false))
            .map_err(Into::into),
    };
    let (id, complete) = match picked {
        Ok(p) => p,
        Err(e) => {
            let _ = s.job.tx.send(Ev::Fail(format!("sampling failed: {e:#}")));
            return Taken::Done;
        }
    };
    // Log-probabilities from the raw logits, before any sampling
    // transform, as `ember run --top-logits` reports them.
    let mut lp = s.job.logprobs.map(|k| token_logprobs(logits, id, k));
    s.sampler.accept(id);
    if let Some(h) = &mut s.hist {
        h.push(id);
    }
    s.generated += 1;
    let now = Instant::now();
    metrics.generated_tokens.fetch_add(1, Ordering::Relaxed);
    if s.generated == 1 {
        metrics.ttft.observe(now - s.job.arrived);
    } else {
        metrics.token_latency.observe(now - s.last);
    }
    s.last = now;
    let mut finish = None;
    if tok.is_eog(id) && !s.job.ignore_eos {
        // The end-of-generation token is not part of the reply.
        finish = Some("stop");
    } else {
        let mut out = String::new();
        let stops = &mut s.stops;
        let _ = s.dec.push(tok, id, &mut |t| out.push_str(&stops.push(t)));
        if s.stops.stopped() || complete {
            finish = Some("stop");
        }
        if !out.is_empty() || lp.is_some() {
            let _ = s.job.tx.send(Ev::Text(out, lp.take()));
        }
    }
    if finish.is_none() && (s.generated >= s.job.max_tokens || full) {
        finish = Some("length");
    }
    let Some(f) = finish else {
        return Taken::Next(id);
    };
    if !s.stops.stopped() {
        let mut out = String::new();
        let stops = &mut s.stops;
        s.dec.finish(&mut |t| out.push_str(&stops.push(t)));
        out.push_str(&s.stops.finish());
        if !out.is_empty() {
            let _ = s.job.tx.send(Ev::Text(out, None));
        }
    }
    let _ = s.job.tx.send(Ev::Done {
        finish: f,
        prompt_tokens: s.job.prompt.len(),
        completion_tokens: s.generated,
        cached_tokens: s.cached,
    });
    Taken::Done
}

/// Where a request for `prompt` goes: the index in `free` of the slot
/// whose cache shares the longest prefix with it, the least recently
/// `used` among equals, and how many of its tokens to keep.
///
/// The reply must be bit for bit the one without the cache. A prompt chunk
/// of several tokens takes the batched arithmetic and a single token the
/// decode arithmetic, which need not give the same bits; the engine never
/// reads a prompt token alone when it can pair it (chunks of 3 or more),
/// so a prompt of two or more tokens is read with the batched arithmetic
/// only. So a slot's cache counts only in its first `exact` tokens (by
/// slot; the prompt chunks it read, not the tokens it generated, of the
/// `held` it holds), and the last two prompt tokens are always read again
/// (the last one's logits are the first the request samples from). With
/// `reuse` off nothing is kept.
fn route(
    free: &[usize],
    held: &[Vec<u32>],
    exact: &[usize],
    used: &[u64],
    prompt: &[u32],
    reuse: bool,
) -> (usize, usize) {
    let most = if reuse {
        prompt.len().saturating_sub(2)
    } else {
        0
    };
    let shared = |c: usize| shared_prefix(&held[c][..exact[c].min(held[c].len())], &prompt[..most]);
    let mut best = (0, 0);
    for (k, &c) in free.iter().enumerate() {
        let n = shared(c);
        let (bk, bn) = best;
        if k == 0 || n > bn || (n == bn && used[c] < used[free[bk]]) {
            best = (k, n);
        }
    }
    best
}

/// Tokens `held` and `prompt` share from their start.
fn shared_prefix(held: &[u32], prompt: &[u32]) -> usize {
    held.iter().zip(prompt).take_while(|(a, b)| a == b).count()
}

/// Removes the slots at `gone` (indices into `active`) and frees their caches.
fn release(active: &mut Vec<Slot>, free: &mut Vec<usize>, gone: &[usize]) {
    let mut idx = 0;
    active.retain(|s| {
        let g = gone.contains(&idx);
        idx += 1;
        if g {
            free.push(s.cache);
        }
        !g
    });
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn requests_go_to_the_slot_sharing_the_longest_prefix() {
        let held = vec![
            vec![1, 2, 3, 4],
            vec![1, 2, 9],
            vec![],
            vec![1, 2, 3, 4, 5, 6, 7],
        ];
        let exact = vec![4, 3, 0, 6];
        let used = vec![3, 1, 2, 4];
        let all = [0, 1, 2, 3];
        // Slot 3 holds the whole prompt, but its last two tokens are read
        // again: slot 0 shares as much and was given out longer ago.
        assert_eq!(
            route(&all, &held, &exact, &used, &[1, 2, 3, 4, 5, 6], true),
            (0, 4)
        );
        // Only the tokens it read as a prompt count (not those it generated).
        assert_eq!(
            route(
                &all,
                &held,
                &exact,
                &used,
                &[1, 2, 3, 4, 5, 6, 7, 8, 9],
                true
            ),
            (3, 6)
        );
        // Among slots sharing as much, the least recently used.
        assert_eq!(
            route(&all, &held, &exact, &used, &[1, 2, 7, 8], true),
            (1, 2)
        );
        // Only free slots count.
        assert_eq!(
            route(&[1, 2], &held, &exact, &used, &[1, 2, 3, 4, 5, 6], true),
            (0, 2)
        );
        // Nothing shared, or reuse off: the least recently used, nothing kept.
        assert_eq!(route(&all, &held, &exact, &used, &[8, 9], true), (1, 0));
        assert_eq!(
            route(&[0, 2, 3], &held, &exact, &used, &[1, 2, 3, 4, 5], false),
            (1, 0)
        );
        // Two-token prompts keep nothing.
        assert_eq!(route(&[3], &held, &exact, &used, &[1, 2], true), (0, 0));
    }
}
