//! `ember bench`: prefill (pp) and decode (tg) speed, as llama-bench measures
//! them, plus the memory-bandwidth floor of decode on this machine.
//!
//! pp: one forward call over `-p` prompt tokens from an empty cache.
//! tg: `-n` single-token forward calls from an empty cache.
//! With `-d D` (llama-bench's `--n-depth`), each test starts instead from a
//! cache that already holds `D` tokens, filled untimed before each run.
//! Each is repeated `--reps` times after one warm-up; the median is reported.
//! The floor: decode reads every weight once per token, so it cannot beat
//! (bandwidth) / (bytes of weights per token); bandwidth is measured here by
//! reading the loaded model with the same threads, just before and just after
//! each decode repetition (the larger of the two probes sets that
//! repetition's floor), and the reported share is the median of each
//! repetition's tg over its own floor: on shared machines the bandwidth
//! drifts by up to twice within seconds.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use ember_core::model::{Llama, MemoryPlan};
use ember_core::parallel::{self, Parallel};
use ember_core::KvOptions;
use serde_json::json;

use crate::args::{ExecArgs, KvTypeArg};
use crate::device::{open_one, Device, One, Slots};
use crate::load::load_model;
use crate::pool::Pool;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// GGUF model file, or a model fetched once into $EMBER_HOME by name (smollm2-135m, gemma3-270m) [default: smollm2-135m]
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Prompt tokens of the prefill test (0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 128)]
    pub p: usize,
    /// Generated tokens of the decode test (0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n: usize,
    /// Tokens already in the cache when each test starts (filled untimed
    /// before every run), as llama-bench's `-d`: speed at a long context.
    #[arg(short = 'd', long = "n-depth", default_value_t = 0)]
    pub depth: usize,
    /// Timed repetitions of each test (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Prompt tokens per forward chunk.
    #[arg(long, short = 'b', default_value_t = 512)]
    pub batch: usize,
    /// Element type of cached keys and values.
    #[arg(long, value_enum, default_value_t = KvTypeArg::F16)]
    pub kv_type: KvTypeArg,
    #[command(flatten)]
    pub exec: ExecArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also measure decode of this many sequences at once (continuous
    /// batching, as `ember serve --parallel N` runs them): aggregate tok/s.
    #[arg(long, default_value_t = 1)]
    pub seqs: usize,
}

/// Most tokens a bench test may take (a cache of p + n is allocated).
const MAX_TOKENS: usize = 1 << 16;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Bytes of weights one decode step reads: every matrix once (the embedding
/// table only when it is also the classifier), plus the norms.
pub fn bytes_per_token(model: &Llama) -> usize {
    let w = &model.weights;
    let mut b = w.output.n_bytes() + w.output_norm.len() * 4;
    for l in &w.layers {
        b += [
            &l.attn_q,
            &l.attn_k,
            &l.attn_v,
            &l.attn_output,
            &l.ffn_gate,
            &l.ffn_up,
            &l.ffn_down,
        ]
        .iter()
        .map(|m| m.n_bytes())
        .sum::<usize>();
        b += (l.attn_norm.len() + l.ffn_norm.len()) * 4;
    }
    b
}

/// Read bandwidth in bytes per second: `bytes` summed by every worker of
/// `pool` (a disjoint share each), best of `passes`.
pub fn read_bandwidth(bytes: &[u8], pool: &Pool, passes: usize) -> f64 {
    let words = words(bytes);
    let w = pool.workers();
    let mut best = 0.0f64;
    let sink = std::sync::atomic::AtomicU64::new(0);
    for _ in 0..passes.max(1) {
        let t = Instant::now();
        pool.run(&|i| {
            let (lo, hi) = parallel::share(words.len(), w, i, 4096);
            let s = sum_words(&words[lo..hi]);
            sink.fetch_add(s as u64, std::sync::atomic::Ordering::Relaxed);
        });
        let secs = t.elapsed().as_secs_f64();
        best = best.max((words.len() * 4) as f64 / secs.max(1e-9));
    }
    std::hint::black_box(sink.load(std::sync::atomic::Ordering::Relaxed));
    best
}

/// The wrapping sum of `words`' bits, read with the widest loads this CPU
/// has: the probe must stream as fast as a decode loop can, or the floor it
/// sets is too low. On an AMD EPYC measured here, 16-byte loads (what the
/// portable loop compiles to) read 35 GB/s on one thread, 32-byte AVX2
/// loads 40–43 GB/s and 64-byte AVX-512 loads 1–3% more, while F16 decode
/// streamed its weights at 36.
fn sum_words(words: &[f32]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { sum_words_avx512(words) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { sum_words_avx2(words) };
    }
    sum_words_portable(words)
}

/// [`sum_words`] in portable code: the reference of the AVX2 loop.
fn sum_words_portable(words: &[f32]) -> u32 {
    let (chunks, tail) = words.as_chunks::<16>();
    let mut acc = [0u32; 16];
    for c in chunks {
        for k in 0..16 {
            acc[k] = acc[k].wrapping_add(c[k].to_bits());
        }
    }
    let body = acc.iter().fold(0u32, |a, &b| a.wrapping_add(b));
    tail.iter().fold(body, |a, b| a.wrapping_add(b.to_bits()))
}

/// [`sum_words`] with 32-byte loads, four accumulators (128 bytes a step),
/// then the last words one by one: the same sum as the portable loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sum_words_avx2(words: &[f32]) -> u32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_si256(); 4];
    let (chunks, tail) = words.as_chunks::<32>();
    for c in chunks {
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: eight f32 (32 bytes) are readable at `c[8 * k]` (`c` is
            // 32 of them); loadu takes any alignment.
            let v = unsafe { _mm256_loadu_si256(c[8 * k..].as_ptr().cast()) };
            *a = _mm256_add_epi32(*a, v);
        }
    }
    let v = _mm256_add_epi32(
        _mm256_add_epi32(acc[0], acc[1]),
        _mm256_add_epi32(acc[2], acc[3]),
    );
    let mut lanes = [0u32; 8];
    // SAFETY: `lanes` is 32 writable bytes; storeu takes any alignment.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), v) };
    let body = lanes.iter().fold(0u32, |a, &b| a.wrapping_add(b));
    tail.iter().fold(body, |a, b| a.wrapping_add(b.to_bits()))
}

/// [`sum_words`] with 64-byte loads, four accumulators (256 bytes a step),
/// then the last words one by one: the same sum as the portable loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn sum_words_avx512(words: &[f32]) -> u32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_si512(); 4];
    let (chunks, tail) = words.as_chunks::<64>();
    for c in chunks {
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: sixteen f32 (64 bytes) are readable at `c[16 * k]` (`c`
            // is 64 of them); loadu takes any alignment.
            let v = unsafe { _mm512_loadu_si512(c[16 * k..].as_ptr().cast()) };
            *a = _mm512_add_epi32(*a, v);
        }
    }
    let v = _mm512_add_epi32(
        _mm512_add_epi32(acc[0], acc[1]),
        _mm512_add_epi32(acc[2], acc[3]),
    );
    let body = _mm512_reduce_add_epi32(v) as u32;
    tail.iter().fold(body, |a, b| a.wrapping_add(b.to_bits()))
}

/// The whole aligned 4-byte words of `bytes`, as f32 (read for their bits).
fn words(bytes: &[u8]) -> &[f32] {
    let skip = bytes.as_ptr().align_offset(4).min(bytes.len());
    let body = &bytes[skip..];
    ember_core::quant::cast_slice(&body[..body.len() / 4 * 4]).unwrap_or(&[])
}

pub fn cmd_bench(a: BenchArgs) -> Result<()> {
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    if a.p == 0 && a.n == 0 {
        bail!("nothing to measure: -p and -n are both 0");
    }
    if a.p > MAX_TOKENS || a.n > MAX_TOKENS || a.depth > MAX_TOKENS {
        bail!("-p, -n and -d are at most {MAX_TOKENS}");
    }
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if a.seqs == 0 || a.seqs > 256 {
        bail!("--seqs must be in 1..=256");
    }
    let kernels = a.exec.kernels()?;
    let threads = a.exec.threads()?;
    let mut file = load_model(&a.model, &a.exec)?;
    let m = file.parse(&a.exec)?;
    let (path, bytes, model) = (m.path, m.bytes, &m.model);
    let c = &model.config;
    let cap = a.depth + a.p.max(a.n).max(1);
    let kv = KvOptions::dense(cap).with_type(a.kv_type.into());
    let pool = Pool::new(threads)?;
    let longest = a.p.max(a.depth).max(1);
    let plan = MemoryPlan::with_threads(c, kv, a.batch.min(longest), threads)?;
    let device = a.exec.device;
    let mut arena = Vec::new();
    let mut s = open_one(model, kernels, device, plan, false, &mut arena, &pool)?;
    let engine = s.engine_name();
    // The floor's bandwidth: the host's, probed with the same threads beside
    // each decode run (it drifts on shared machines); the GPU's memory, as
    // a device copy moves it, once.
    let gpu_bw = match device {
        Device::Cpu => None,
        Device::Gpu => Some(s.copy_bandwidth()?),
    };
    let probe = |passes: usize| gpu_bw.unwrap_or_else(|| read_bandwidth(bytes, &pool, passes));
    let vocab = c.vocab_size as u64;
    let ids = |n: usize| -> Vec<u32> {
        (0..n as u64)
            .map(|i| ((i * 7919 + 100) % vocab) as u32)
            .collect()
    };
    let prompt = ids(a.p);
    let gen = ids(a.n);
    // The context each test starts from: the cache emptied, then `depth`
    // tokens, untimed.
    let context = ids(a.depth);
    let start = |s: &mut One<'_, '_>| -> Result<()> {
        s.reset();
        if !context.is_empty() {
            s.forward(&context)?;
        }
        Ok(())
    };

    let per_token = bytes_per_token(model);
    let floor_at = |bw: f64| bw / per_token.max(1) as f64;
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    // Each decode repetition's own floor (module docs).
    let mut floors = Vec::new();
    // One warm-up of each, then the timed repetitions.
    for rep in 0..=a.reps {
        if a.p > 0 {
            start(&mut s)?;
            let t = Instant::now();
            s.forward(&prompt)?;
            let secs = t.elapsed().as_secs_f64();
            if rep > 0 {
                pp.push(a.p as f64 / secs.max(1e-9));
            }
        }
        if a.n > 0 {
            start(&mut s)?;
            let before = if rep > 0 { probe(1) } else { 0.0 };
            let t = Instant::now();
            for &id in &gen {
                s.forward(&[id])?;
            }
            let secs = t.elapsed().as_secs_f64();
            if rep > 0 {
                tg.push(a.n as f64 / secs.max(1e-9));
                floors.push(floor_at(before.max(probe(1))));
            }
        }
    }
    let mut tgb = Vec::new();
    if a.seqs > 1 && a.n > 0 {
        let (ctx, gen) = (&context[..], &gen[..]);
        drop(s);
        tgb = batched_decode(
            model,
            kernels,
            device,
            &pool,
            kv,
            threads,
            a.seqs,
            (ctx, gen),
            a.reps,
        )?;
    }
    let tgb_runs = tgb.clone();
    let tgb_med = median(&mut tgb);
    if floors.is_empty() {
        floors.push(floor_at(probe(3)));
    }
    // Each repetition's share of its own floor; the median of those.
    let mut shares: Vec<f64> = tg
        .iter()
        .zip(&floors)
        .map(|(t, f)| if *f > 0.0 { t / f } else { 0.0 })
        .collect();
    let share_runs = shares.clone();
    let share = median(&mut shares);
    let floor_runs = floors.clone();
    let floor = median(&mut floors);
    let bw = floor * per_token as f64;
    let (pp_runs, tg_runs) = (pp.clone(), tg.clone());
    let pp_med = median(&mut pp);
    let tg_med = median(&mut tg);
    let ty = model.weights.layers[0].ffn_down.ty().name();
    if a.json {
        let out = json!({
            "model": path.display().to_string(),
            "type": ty,
            "kernels": kernels.name,
            "device": engine,
            "threads": threads,
            "mmap": a.exec.mmap,
            "n_prompt": a.p,
            "n_gen": a.n,
            "n_depth": a.depth,
            "reps": a.reps,
            "pp_tok_s": pp_med,
            "tg_tok_s": tg_med,
            "pp_runs": pp_runs,
            "tg_runs": tg_runs,
            "bytes_per_token": per_token,
            "read_gb_s": bw / 1e9,
            "tg_floor_tok_s": floor,
            "tg_floor_runs": floor_runs,
            "tg_of_floor": share,
            "tg_of_floor_runs": share_runs,
        });
        let mut out = out;
        if a.seqs > 1 {
            out["seqs"] = json!(a.seqs);
            out["tg_batched_tok_s"] = json!(tgb_med);
            out["tg_batched_runs"] = json!(tgb_runs);
        }
        println!("{out}");
    } else {
        println!(
            "| model | type | kernels | threads | test | tok/s | of floor |\n| --- | --- | --- | ---: | --- | ---: | ---: |"
        );
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let at = if a.depth > 0 {
            format!(" @ d{}", a.depth)
        } else {
            String::new()
        };
        if a.p > 0 {
            println!(
                "| {name} | {ty} | {} | {threads} | pp{}{at} | {pp_med:.1} | |",
                kernels.name, a.p
            );
        }
        if a.n > 0 {
            println!(
                "| {name} | {ty} | {} | {threads} | tg{}{at} | {tg_med:.1} | {:.0}% |",
                kernels.name,
                a.n,
                100.0 * share
            );
        }
        if a.seqs > 1 && a.n > 0 {
            println!(
                "| {name} | {ty} | {} | {threads} | tg{} x {} seqs{at} | {tgb_med:.1} | |",
                kernels.name, a.n, a.seqs
            );
        }
        eprintln!(
            "ember bench: median of {} runs; read bandwidth {:.1} GB/s with {threads} thread{} (median of the larger of the probes beside each decode run), {:.1} MB of weights per token: floor {floor:.1} tok/s",
            a.reps,
            bw / 1e9,
            if threads == 1 { "" } else { "s" },
            per_token as f64 / 1e6
        );
    }
    Ok(())
}

/// Aggregate decode tok/s of `seqs` sequences fed together, one token each
/// per step, `gen.len()` steps, from caches holding `context`; one warm-up,
/// then `reps`.
#[allow(clippy::too_many_arguments)]
fn batched_decode(
    model: &Llama,
    kernels: ember_core::kernels::Kernels,
    device: Device,
    pool: &Pool,
    kv: KvOptions,
    threads: usize,
    seqs: usize,
    (context, gen): (&[u32], &[u32]),
    reps: usize,
) -> Result<Vec<f64>> {
    let c = &model.config;
    let plan = MemoryPlan::batched(c, kv, seqs, threads, seqs)?;
    // The CPU's memory, made only for the CPU.
    let mut scratch: Vec<f32>;
    let mut mem: Vec<(Vec<f32>, Vec<f32>)>;
    let mut slots = match device {
        Device::Cpu => {
            scratch = crate::arena::zeroed(plan.scratch_len, "the batch scratch")?;
            mem = (0..seqs)
                .map(|_| {
                    let k = crate::arena::zeroed(plan.kv_len, "the KV caches")?;
                    Ok((k, crate::arena::zeroed(plan.kv_len, "the KV caches")?))
                })
                .collect::<Result<_>>()?;
            Slots::cpu(model, kernels, plan, &mut scratch, &mut mem, pool)?
        }
        Device::Gpu => Slots::gpu(model, plan, false)?,
    };
    let mut out = Vec::new();
    for rep in 0..=reps {
        for k in 0..seqs {
            slots.clear(k);
            // The starting context (`-d`), a batch's worth of tokens a step.
            for chunk in context.chunks(seqs) {
                slots.step(&[(k, chunk)])?;
            }
        }
        let t = Instant::now();
        for (i, &id) in gen.iter().enumerate() {
            // Each sequence its own token (offsets keep them apart).
            let toks: Vec<[u32; 1]> = (0..seqs)
                .map(|j| [(id + j as u32 * 13 + i as u32) % c.vocab_size as u32])
                .collect();
            let work: Vec<(usize, &[u32])> =
                toks.iter().enumerate().map(|(k, t)| (k, &t[..])).collect();
            slots.step(&work)?;
        }
        let secs = t.elapsed().as_secs_f64();
        if rep > 0 {
            out.push((seqs * gen.len()) as f64 / secs.max(1e-9));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe's fast loop sums what the portable one does, tails included.
    #[test]
    fn fast_word_sum_equals_portable() {
        let mut st = 0x2545_f491u32;
        let words: Vec<f32> = (0..1000)
            .map(|_| {
                st ^= st << 13;
                st ^= st >> 17;
                st ^= st << 5;
                f32::from_bits(st)
            })
            .collect();
        for n in [
            0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 1000,
        ] {
            let want = sum_words_portable(&words[..n]);
            assert_eq!(sum_words(&words[..n]), want, "{n}");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                assert_eq!(unsafe { sum_words_avx2(&words[..n]) }, want, "avx2 {n}");
            }
        }
    }
}
