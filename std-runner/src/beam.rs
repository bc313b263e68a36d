//! Beam search on the host: `N` beams, each with its own fixed-size KV cache.
//!
//! At each step every live beam proposes its `N` most likely next tokens; the
//! `N` best continuations by total log-probability (ties: earlier beam, lower
//! id) go on. A continuation that ends in an end-of-generation token is set
//! aside as a finished hypothesis. Hypotheses are ranked by length-normalised
//! log-probability, `logprob / len^α` (`--length-penalty α`; the length
//! counts generated tokens including the final end token). The search stops
//! after `n_predict` tokens, or once `N` hypotheses are finished and no live
//! beam can still beat the worst of them. This is the rule of Hugging Face's
//! `BeamHypotheses` with `early_stopping=False`.
//!
//! A beam that forks takes over a session whose beam died, copying its
//! parent's cache first, so memory stays at `N` sessions; the search
//! refuses to start when the system says `N` sessions do not fit.

use anyhow::{bail, Result};
use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan, Session};

/// What a beam search does.
#[derive(Debug, Clone)]
pub struct BeamOptions {
    pub beams: usize,
    pub n_predict: usize,
    pub length_penalty: f64,
    /// Ids that end a hypothesis.
    pub eos: Vec<u32>,
    /// Each beam's KV cache (a dense one: beams keep whole sequences).
    pub kv: ember_core::KvOptions,
    pub batch: usize,
}

/// One finished (or, at the end, unfinished) hypothesis.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// Generated ids (ending with the end token when `finished`).
    pub ids: Vec<u32>,
    /// Sum of the log-probabilities of `ids`.
    pub logprob: f64,
    /// `logprob / len^α`.
    pub score: f64,
    pub finished: bool,
}

fn score(logprob: f64, len: usize, alpha: f64) -> f64 {
    logprob / (len.max(1) as f64).powf(alpha)
}

/// Log-softmax of `logits` in f64 (NaN counts as -inf).
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .filter(|v| !v.is_nan())
        .fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let lse = max
        + logits
            .iter()
            .filter(|v| !v.is_nan())
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits
        .iter()
        .map(|&v| {
            if v.is_nan() {
                f64::NEG_INFINITY
            } else {
                v as f64 - lse
            }
        })
        .collect()
}

/// The `k` best (id, value) pairs, best first, ties to the lower id.
fn top(lp: &[f64], k: usize) -> Vec<(u32, f64)> {
    let mut idx: Vec<u32> = (0..lp.len() as u32).collect();
    let by = |a: &u32, b: &u32| {
        lp[*b as usize]
            .partial_cmp(&lp[*a as usize])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(b))
    };
    if k < idx.len() {
        idx.select_nth_unstable_by(k, by);
        idx.truncate(k);
    }
    idx.sort_unstable_by(by);
    idx.into_iter().map(|i| (i, lp[i as usize])).collect()
}

/// `beam` followed by `id`, as a hypothesis of total log-probability `lp`.
fn extend(beam: &Beam, id: u32, lp: f64, alpha: f64, finished: bool) -> Hypothesis {
    let mut ids = beam.ids.clone();
    ids.push(id);
    Hypothesis {
        score: score(lp, ids.len(), alpha),
        ids,
        logprob: lp,
        finished,
    }
}

struct Beam {
    ids: Vec<u32>,
    logprob: f64,
    session: usize,
}

/// Refuses `beams` sessions of `plan` that the system says it cannot hold.
fn check_memory(plan: &MemoryPlan, beams: usize) -> Result<()> {
    let need = (plan.bytes() as u64).saturating_mul(beams as u64);
    if let Some(avail) = mem_available() {
        if need > avail {
            bail!(
                "--beams {beams} needs {:.1} GiB ({:.1} MiB per beam) but {:.1} GiB is available; use fewer beams or a smaller --ctx",
                need as f64 / (1u64 << 30) as f64,
                plan.bytes() as f64 / (1u64 << 20) as f64,
                avail as f64 / (1u64 << 30) as f64
            );
        }
    }
    Ok(())
}

/// Bytes of memory the system says are available (Linux), if it says.
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs beam search after `prompt`; hypotheses come back best first.
pub fn beam_search(
    model: &Llama,
    kernels: Kernels,
    prompt: &[u32],
    opt: &BeamOptions,
) -> Result<Vec<Hypothesis>> {
    let n = opt.beams;
    if n == 0 {
        bail!("--beams must be at least 1");
    }
    let plan = MemoryPlan::with_kv(&model.config, opt.kv, opt.batch)?;
    check_memory(&plan, n)?;
    let mut arenas: Vec<Vec<f32>> = (0..n)
        .map(|_| crate::arena::zeroed(plan.f32_len(), "a beam's session"))
        .collect::<Result<_>>()?;
    let mut sessions: Vec<Session> = arenas
        .iter_mut()
        .map(|a| Session::new(model, kernels, plan, a))
        .collect::<ember_core::Result<_>>()?;
    sessions[0].reserve(prompt.len() + opt.n_predict.saturating_sub(1))?;
    sessions[0].forward(prompt)?;

    let mut live = vec![Beam {
        ids: Vec::new(),
        logprob: 0.0,
        session: 0,
    }];
    let mut done: Vec<Hypothesis> = Vec::new();
    let worst_kept = |done: &Vec<Hypothesis>| -> f64 {
        if done.len() < n {
            f64::NEG_INFINITY
        } else {
            done[n - 1].score
        }
    };
    for step in 0..opt.n_predict {
        // Each live beam proposes its n best next tokens.
        let mut cands: Vec<(usize, u32, f64)> = Vec::new();
        for (b, beam) in live.iter().enumerate() {
            let lp = log_softmax(sessions[beam.session].logits());
            for (id, l) in top(&lp, n) {
                if l.is_finite() {
                    cands.push((b, id, beam.logprob + l));
                }
            }
        }
        cands.sort_by(|x, y| {
            y.2.partial_cmp(&x.2)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(x.0.cmp(&y.0))
                .then(x.1.cmp(&y.1))
        });
        let mut next: Vec<(usize, u32, f64)> = Vec::new();
        for (rank, &(b, id, lp)) in cands.iter().enumerate() {
            if opt.eos.contains(&id) {
                // Only a continuation that would have made the beam counts.
                if rank < n {
                    done.push(extend(&live[b], id, lp, opt.length_penalty, true));
                }
            } else if next.len() < n {
                next.push((b, id, lp));
            }
            if next.len() == n {
                break;
            }
        }
        done.sort_by(|a, b| {
            b.score
                .partial_cmp(&a.score)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let last = step + 1 == opt.n_predict;
        let best_live = next
            .first()
            .map(|&(_, _, lp)| score(lp, step + 1, opt.length_penalty));
        let finished_enough = done.len() >= n && best_live.is_none_or(|s| s <= worst_kept(&done));
        if next.is_empty() || finished_enough || last {
            // Out of steps: live beams count as unfinished hypotheses.
            if !finished_enough {
                for &(b, id, lp) in &next {
                    done.push(extend(&live[b], id, lp, opt.length_penalty, false));
                }
            }
            break;
        }

        // Give each new beam a session: the first child of a parent keeps the
        // parent's; the others take sessions of beams that died, after
        // copying the parent's cache into them.
        let mut claimed = vec![false; n];
        let mut target = vec![usize::MAX; next.len()];
        for (j, &(b, _, _)) in next.iter().enumerate() {
            let s = live[b].session;
            if !claimed[s] {
                claimed[s] = true;
                target[j] = s;
            }
        }
        let parents: Vec<usize> = live.iter().map(|b| b.session).collect();
        for j in 0..next.len() {
            if target[j] != usize::MAX {
                continue;
            }
            let free = (0..n)
                .find(|&s| !claimed[s] && !parents.contains(&s))
                .or_else(|| (0..n).find(|&s| !claimed[s]))
                .expect("n sessions suffice for n beams");
            claimed[free] = true;
            target[j] = free;
            let src = live[next[j].0].session;
            let (a, b) = if free < src {
                let (lo, hi) = sessions.split_at_mut(src);
                (&mut lo[free], &hi[0])
            } else {
                let (lo, hi) = sessions.split_at_mut(free);
                (&mut hi[0], &lo[src])
            };
            a.copy_from(b)?;
        }
        let mut new_live = Vec::with_capacity(next.len());
        for (j, &(b, id, lp)) in next.iter().enumerate() {
            let mut ids = live[b].ids.clone();
            ids.push(id);
            sessions[target[j]].forward(&[id])?;
            new_live.push(Beam {
                ids,
                logprob: lp,
                session: target[j],
            });
        }
        live = new_live;
    }
    done.sort_by(|a, b| {
        b.score
            .partial_cmp(&a.score)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    done.truncate(n.max(1));
    Ok(done)
}
