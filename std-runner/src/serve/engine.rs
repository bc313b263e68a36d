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
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use ember_core::kernels::Kernels;
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
    generated: usize,
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
    let plan = cfg.plan;
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
    let slots = match cfg.device {
        Device::Cpu => Slots::cpu(model, cfg.kernels, plan, &mut scratch, &mut mem, &pool),
        Device::Gpu => Slots::gpu(model, plan),
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
    let mut active: Vec<Slot> = Vec::new();
    let mut cand = vec![Candidate::default(); Sampler::scratch_len(c.vocab_size)];
    // The vocabulary as grammars read it, made on the first constrained request.
    let mut vocab: Option<Arc<VocabBuf>> = None;
    loop {
        busy.store(active.len(), Ordering::SeqCst);
        // Admit queued requests while slots are free; with nothing to do,
        // wait for one.
        while !free.is_empty() {
            let job = if active.is_empty() {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(j) => j,
                    Err(RecvTimeoutError::Timeout) if stop.load(Ordering::SeqCst) => return Ok(()),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                }
            } else {
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
                }
            };
            waiting.fetch_sub(1, Ordering::SeqCst);
            if job.tx.is_closed() {
                continue;
            }
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
            let cache = free.pop().unwrap_or_default();
            slots.clear(cache);
            let mut slot = Slot {
                cache,
                sampler,
                constraint,
                fed: 0,
                generated: 0,
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
        // the step has room.
        let mut budget = slots.max_batch();
        let mut work: Vec<(usize, usize, usize)> = Vec::new(); // (slot, from, to) of its tokens
        for (i, s) in active.iter().enumerate() {
            if s.fed == s.job.prompt.len() {
                work.push((i, 0, 1));
                budget -= 1;
            }
        }
        for (i, s) in active.iter().enumerate() {
            let left = s.job.prompt.len() - s.fed;
            if left == 0 {
                continue;
            }
            let take = chunk.min(left).min(slots.chunk_room(s.cache));
            if take <= budget {
                work.push((i, s.fed, s.fed + take));
                budget -= take;
            }
        }
        let toks: Vec<Vec<u32>> = work
            .iter()
            .map(|&(i, a, b)| {
                let s = &active[i];
                if s.fed == s.job.prompt.len() {
                    vec![s.next]
                } else {
                    s.job.prompt[a..b].to_vec()
                }
            })
            .collect();
        let step: Vec<(usize, &[u32])> = work
            .iter()
            .zip(&toks)
            .map(|(&(i, _, _), t)| (active[i].cache, &t[..]))
            .collect();
        if let Err(e) = slots.step(&step) {
            // The step changed nothing; the requests in it fail, the rest go on.
            for &(i, _, _) in &work {
                let _ = active[i]
                    .job
                    .tx
                    .send(Ev::Fail(format!("the model failed: {e:#}")));
            }
            let failed: Vec<usize> = work.iter().map(|w| w.0).collect();
            release(&mut active, &mut free, &failed);
            continue;
        }

        // Sample where a prompt finished or a token was fed.
        let mut finished: Vec<usize> = Vec::new();
        for (k, &(i, a, b)) in work.iter().enumerate() {
            let s = &mut active[i];
            if s.fed < s.job.prompt.len() {
                s.fed += b - a;
                metrics
                    .prompt_tokens
                    .fetch_add((b - a) as u64, Ordering::Relaxed);
                if s.fed < s.job.prompt.len() {
                    continue;
                }
            }
            let logits = slots.logits(k);
            let picked = match &mut s.constraint {
                Some(c) => c
                    .pick(&mut s.sampler, logits, &mut cand)
                    .and_then(|id| c.accept(id).map(|()| (id, c.finished()))),
                None => s
                    .sampler
                    .sample(logits, &mut cand)
                    .map(|id| (id, false))
                    .map_err(Into::into),
            };
            let (id, complete) = match picked {
                Ok(p) => p,
                Err(e) => {
                    let _ = s.job.tx.send(Ev::Fail(format!("sampling failed: {e:#}")));
                    finished.push(i);
                    continue;
                }
            };
            // Log-probabilities from the raw logits, before any sampling
            // transform, as `ember run --top-logits` reports them.
            let mut lp = s.job.logprobs.map(|k| token_logprobs(logits, id, k));
            s.sampler.accept(id);
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
            let full = slots.full(s.cache);
            if finish.is_none() && (s.generated >= s.job.max_tokens || full) {
                finish = Some("length");
            }
            match finish {
                Some(f) => {
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
                    });
                    finished.push(i);
                }
                None => s.next = id,
            }
        }
        release(&mut active, &mut free, &finished);
    }
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
