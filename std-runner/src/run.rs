//! Generation (sampled or greedy) and teacher-forced scoring over a memory-mapped model.

use std::time::Instant;

use anyhow::Result;
use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan, Session};
use ember_core::sampling::{Candidate, Sampler, SamplerConfig};

/// What one `ember run` does.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub prompt_ids: Vec<u32>,
    /// Tokens to generate.
    pub n_predict: usize,
    /// K of `top_logits` (0: none).
    pub top_logits: usize,
    /// Report the top logits at every prompt position.
    pub logits_all: bool,
    /// The KV cache (capacity, sinks, element type, streaming).
    pub kv: ember_core::KvOptions,
    /// Tokens per forward chunk in prefill.
    pub batch: usize,
    /// Keep generating past the end-of-sequence token.
    pub ignore_eos: bool,
    /// End-of-sequence ids that stop generation.
    pub eos: Vec<u32>,
    /// How the next token is chosen.
    pub sampling: SamplerConfig,
    /// Worker threads splitting each step.
    pub threads: usize,
}

/// What it produced.
#[derive(Debug, Clone, Default)]
pub struct RunOutput {
    pub ids: Vec<u32>,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    /// Top K after the last prompt token.
    pub top_logits: Vec<(u32, f32)>,
    /// Top K after every prompt token (with `logits_all`).
    pub top_logits_all: Option<Vec<Vec<(u32, f32)>>>,
    /// Bytes of the session arena (KV cache and scratch).
    pub arena_bytes: usize,
    /// Decode speed over each run of 500 generated tokens.
    pub decode_tok_s_per_500: Vec<f64>,
}

/// The index of the largest logit; ties go to the lowest id, NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// The `k` largest logits, largest first; ties go to the lower id, NaN is skipped.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return top;
    }
    for (i, &v) in logits.iter().enumerate() {
        if v.is_nan() || (top.len() == k && v <= top[k - 1].1) {
            continue;
        }
        let at = top.partition_point(|&(_, t)| t >= v);
        top.insert(at, (i as u32, v));
        top.truncate(k);
    }
    top
}

/// Runs the prompt, then generation; `on_token` sees each new id as it comes
/// and returns false to stop (a stop string was completed).
pub fn generate(
    model: &Llama,
    kernels: Kernels,
    opt: &RunOptions,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<RunOutput> {
    let mut sampler = Sampler::new(opt.sampling)?;
    let mut scratch = vec![Candidate::default(); Sampler::scratch_len(model.config.vocab_size)];
    let pool = crate::pool::Pool::new(opt.threads)?;
    let plan = MemoryPlan::with_threads(&model.config, opt.kv, opt.batch, opt.threads)?;
    let mut arena = crate::arena::zeroed(plan.f32_len(), "the session (KV cache and scratch)")?;
    let mut s = Session::new(model, kernels, plan, &mut arena)?;
    s.set_parallel(&pool)?;
    let mut out = RunOutput {
        arena_bytes: plan.bytes(),
        ..Default::default()
    };
    // Nothing to generate past the cache: say so before spending any time.
    s.reserve(opt.prompt_ids.len() + opt.n_predict.saturating_sub(1))?;

    let t0 = Instant::now();
    if opt.logits_all {
        let mut all = Vec::with_capacity(opt.prompt_ids.len());
        s.forward_all(&opt.prompt_ids, &mut |_, l| {
            all.push(top_k(l, opt.top_logits))
        })?;
        out.top_logits_all = Some(all);
    } else {
        s.forward(&opt.prompt_ids)?;
    }
    let prefill = t0.elapsed().as_secs_f64();
    out.prefill_tok_s = opt.prompt_ids.len() as f64 / prefill.max(1e-9);
    out.top_logits = top_k(s.logits(), opt.top_logits);

    for &id in &opt.prompt_ids {
        sampler.accept(id);
    }
    let (ids, decode_tok_s, per_500) = continue_sampling(
        &mut s,
        &mut sampler,
        &mut scratch,
        opt.n_predict,
        &opt.eos,
        opt.ignore_eos,
        &mut on_token,
    )?;
    out.ids = ids;
    out.decode_tok_s = decode_tok_s;
    out.decode_tok_s_per_500 = per_500;
    Ok(out)
}

/// Generation from the session's current logits: up to `n_predict` ids,
/// stopping after an id in `eos` (returned but not fed back) unless
/// `ignore_eos`, or when `on_token` returns false. Returns the ids, the
/// decode speed in tokens per second, and the speed over each 500 tokens.
pub fn continue_sampling(
    s: &mut Session,
    sampler: &mut Sampler,
    scratch: &mut [Candidate],
    n_predict: usize,
    eos: &[u32],
    ignore_eos: bool,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<(Vec<u32>, f64, Vec<f64>)> {
    let t1 = Instant::now();
    let mut ids = Vec::new();
    let mut steps = 0usize;
    let mut per_500 = Vec::new();
    let mut lap = Instant::now();
    for i in 0..n_predict {
        let next = sampler.sample(s.logits(), scratch)?;
        sampler.accept(next);
        ids.push(next);
        let go_on = on_token(next);
        if !go_on || (!ignore_eos && eos.contains(&next)) || i + 1 == n_predict {
            break;
        }
        s.forward(&[next])?;
        steps += 1;
        if steps.is_multiple_of(500) {
            per_500.push(500.0 / lap.elapsed().as_secs_f64().max(1e-9));
            lap = Instant::now();
        }
    }
    let secs = t1.elapsed().as_secs_f64();
    let tok_s = if steps > 0 {
        steps as f64 / secs.max(1e-9)
    } else {
        0.0
    };
    Ok((ids, tok_s, per_500))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_breaks_ties_by_id() {
        let l = [1.0, 3.0, f32::NAN, 3.0, -1.0, 2.0];
        assert_eq!(top_k(&l, 3), vec![(1, 3.0), (3, 3.0), (5, 2.0)]);
        assert_eq!(argmax(&l), 1);
        assert_eq!(top_k(&l, 0), vec![]);
        assert_eq!(top_k(&l, 10).len(), 5);
    }
}
