//! The semantics oracle: every family the core runs, on a synthetic file of
//! its own (`ember_core::synth::synth_family`, F32 weights), against
//! llama.cpp's greedy ids and logits on the same bytes
//! (`tests/golden/oracle_*.json`, made by `scripts/oracle_llamacpp.py`).
//!
//! The prompt (40 tokens) is fed in one forward call, the batched path, and
//! its logits compared at every position; then 24 greedy tokens are decoded
//! one at a time. Gemma 3's windowed layers see 16 positions, so both the
//! prompt and the decode run past the window, and its windowed layers keep
//! their keys in rings. Both engines compute in f32 from the same weights:
//! what is left is rounding (llama.cpp's GELU also goes through an f16
//! table), far below the logits' spread.

use std::path::PathBuf;

use ember_core::gguf::Gguf;
use ember_core::kernels::Kernels;
use ember_core::kv_cache::{KvOptions, KvType};
use ember_core::model::{Llama, MemoryPlan, Session};
use ember_core::quant::GgmlType;
use ember_core::synth::{synth_family, Family, FamilyOptions, SynthConfig};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn golden(family: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(format!("oracle_{family}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden JSON")
}

fn num(v: &Value, k: &str) -> usize {
    v[k].as_u64().unwrap_or_else(|| panic!("{k}")) as usize
}

fn rows(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn argmax(x: &[f32]) -> u32 {
    x.iter()
        .enumerate()
        .fold(0, |b, (i, &v)| if v > x[b] { i } else { b }) as u32
}

/// Largest |a - b| over a row, relative to the spread of `b`.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let (lo, hi) = b
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    d / (hi - lo).max(1e-6)
}

/// What one family's run gives: the worst relative logit difference over
/// the prompt and over the decode, and whether the greedy ids agree.
fn run(
    family: Family,
    kernels: Kernels,
    kv: KvOptions,
    batch: usize,
) -> (f32, f32, Vec<u32>, Vec<u32>) {
    let g = golden(family.name());
    let bytes = synth_of(&g, family);
    let gguf = Gguf::parse(&bytes).unwrap();
    let model = Llama::from_gguf(&gguf).unwrap();
    assert_eq!(model.config.arch, family.arch());
    let prompt: Vec<u32> = g["prompt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let want: Vec<u32> = g["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let (pre, dec) = (rows(&g["prefill_logits"]), rows(&g["decode_logits"]));
    let plan = MemoryPlan::with_kv(&model.config, kv, batch).unwrap();
    let mut arena = plan.alloc();
    let mut s = Session::new(&model, kernels, plan, &mut arena).unwrap();
    let mut worst_pre = 0f32;
    let mut i = 0;
    s.forward_all(&prompt, &mut |_, l| {
        worst_pre = worst_pre.max(rel_diff(l, &pre[i]));
        i += 1;
    })
    .unwrap();
    assert_eq!(i, prompt.len());
    let mut got = Vec::new();
    let mut worst_dec = 0f32;
    let mut next = argmax(s.logits());
    for row in &dec {
        got.push(next);
        let l = s.forward(&[next]).unwrap();
        worst_dec = worst_dec.max(rel_diff(l, row));
        next = argmax(l);
    }
    (worst_pre, worst_dec, got, want)
}

/// The golden's file, rewritten from its synth arguments (the same bytes
/// llama.cpp read: the hash says so).
fn synth_of(g: &Value, family: Family) -> Vec<u8> {
    let s = &g["synth"];
    let c = SynthConfig {
        dim: num(s, "dim"),
        layers: num(s, "layers"),
        heads: num(s, "heads"),
        kv_heads: num(s, "kv_heads"),
        ffn: num(s, "ffn"),
        vocab: num(s, "vocab"),
        ctx: num(s, "ctx"),
        seed: num(s, "seed") as u64,
        ty: GgmlType::F32,
    };
    let opts = FamilyOptions {
        family,
        head_dim: num(s, "head_dim"),
        window: num(s, "window"),
    };
    let bytes = synth_family(&c, &opts).unwrap();
    let sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        sha,
        g["sha256"].as_str().unwrap(),
        "{}: synth bytes changed",
        family.name()
    );
    bytes
}

/// Every family at its real widths (Llama 3.2 1B, Qwen2.5-0.5B,
/// Qwen3-0.6B, Phi-3-mini, Gemma 3 270M with its window of 512; fewer
/// layers, the real vocabularies; F32) against llama.cpp
/// (`tests/golden/oracle_real_*.json`): a 600-token prompt in pieces of 25
/// (chunks of up to 64), past Gemma's window, then 24 greedy tokens; Ember's logits at llama.cpp's
/// top 64 ids of every 25th prompt position and of every decode step within
/// 2e-3 of the row's spread, and the same greedy ids. One family at a time:
/// each file is up to 1.5 GB.
#[test]
fn real_widths_match_llama_cpp() {
    for family in [
        Family::Llama3,
        Family::Qwen2,
        Family::Qwen3,
        Family::Phi3,
        Family::Gemma3,
    ] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("golden")
            .join(format!("oracle_real_{}.json", family.name()));
        let text = std::fs::read_to_string(&path).unwrap();
        let g: Value = serde_json::from_str(&text).unwrap();
        let bytes = synth_of(&g, family);
        let gguf = Gguf::parse(&bytes).unwrap();
        let model = Llama::from_gguf(&gguf).unwrap();
        let kv = KvOptions::dense(num(&g["synth"], "ctx")).with_type(KvType::F16);
        let plan = MemoryPlan::with_kv(&model.config, kv, 64).unwrap();
        let mut arena = plan.alloc();
        let mut s = Session::new(&model, Kernels::detect(), plan, &mut arena).unwrap();
        let top = g["top"].as_array().unwrap();
        let diff = |l: &[f32], t: &Value| {
            let want = t["logits"].as_array().unwrap();
            let d = t["ids"]
                .as_array()
                .unwrap()
                .iter()
                .zip(want)
                .map(|(i, w)| (l[i.as_u64().unwrap() as usize] as f64 - w.as_f64().unwrap()).abs())
                .fold(0f64, f64::max);
            d / t["spread"].as_f64().unwrap()
        };
        let (mut pre, mut dec) = (0f64, 0f64);
        let at_prefill: Vec<&Value> = top.iter().filter(|t| t["phase"] == "prefill").collect();
        let prompt = ids_of(&g["prompt"]);
        // The prompt in pieces that end at the recorded positions (the
        // classifier runs for their last tokens only).
        let mut from = 0;
        for t in &at_prefill {
            let at = num(t, "at");
            pre = pre.max(diff(s.forward(&prompt[from..=at]).unwrap(), t));
            from = at + 1;
        }
        if from < prompt.len() {
            s.forward(&prompt[from..]).unwrap();
        }
        let mut got = Vec::new();
        let mut next = argmax(s.logits());
        for t in top.iter().filter(|t| t["phase"] == "decode") {
            got.push(next);
            let l = s.forward(&[next]).unwrap();
            dec = dec.max(diff(l, t));
            next = argmax(l);
        }
        eprintln!(
            "{} (dim {}, vocab {}, {} of {} layers windowed): prompt {pre:.2e}, decode {dec:.2e} of the logits' spread",
            family.name(),
            model.config.dim,
            model.config.vocab_size,
            model.config.window_layers.count_ones(),
            model.config.n_layers,
        );
        assert!(pre < 2e-3 && dec < 2e-3, "{}: {pre} {dec}", family.name());
        assert_eq!(got, ids_of(&g["greedy"]), "{}: greedy ids", family.name());
    }
}

/// Logits within 2e-3 of their spread at every position, and the same
/// greedy ids, on the scalar reference and the fastest kernels, for three
/// memory plans: prompt chunks of 64 (Gemma 3's rings of 79 slots never
/// wrap), of 8 (rings of 23 slots wrap many times), and a dense cache of 64
/// positions that is shorter than a ring would be (the windowed layers then
/// keep every position and mask the old ones).
fn check(family: Family) {
    let tol = 2e-3;
    let plans = [
        (KvOptions::dense(256), 64),
        (KvOptions::dense(256), 8),
        (KvOptions::dense(64), 64),
    ];
    for kernels in [Kernels::scalar(), Kernels::detect()] {
        for (kv, batch) in plans {
            let (pre, dec, got, want) = run(family, kernels, kv, batch);
            eprintln!(
            "{} ({}, {} positions, chunks of {batch}): prompt {pre:.2e}, decode {dec:.2e} of the logits' spread",
            family.name(),
            kernels.name,
            kv.capacity,
        );
            assert!(pre < tol && dec < tol, "{}: {pre} {dec}", family.name());
            assert_eq!(got, want, "{}: greedy ids", family.name());
        }
    }
}

#[test]
fn llama_matches_llama_cpp() {
    check(Family::Llama);
}

#[test]
fn llama3_matches_llama_cpp() {
    check(Family::Llama3);
}

#[test]
fn qwen2_matches_llama_cpp() {
    check(Family::Qwen2);
}

#[test]
fn qwen3_matches_llama_cpp() {
    check(Family::Qwen3);
}

#[test]
fn phi3_matches_llama_cpp() {
    check(Family::Phi3);
}

#[test]
fn gemma3_matches_llama_cpp() {
    check(Family::Gemma3);
}

/// Gemma 3 270M's memory plan: fifteen of its eighteen layers see 512
/// positions, and keep their keys and values in rings of 512 + 511 slots
/// (the window, and room for the rest of a 512-token prompt chunk), so at
/// its trained context of 32,768 positions the f16 cache takes 111 MiB
/// instead of the 576 MiB every layer would take keeping every position.
#[test]
fn gemma3_windowed_layers_shrink_the_kv_cache() {
    use ember_core::kv_cache::KvType;
    let path = ember_runner::model_store::stored(&ember_runner::model_store::GEMMA3_270M)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let map = ember_runner::mmap::map(&path).unwrap();
    let gguf = Gguf::parse(&map).unwrap();
    let c = Llama::from_gguf(&gguf).unwrap().config;
    assert_eq!(
        (c.window, c.window_layers.count_ones(), c.n_layers),
        (512, 15, 18)
    );
    let slot = 2 * c.kv_dim() * 2; // K and V of one position, f16
    for (ctx, batch) in [(32768, 512), (8192, 512), (4096, 64)] {
        let kv = KvOptions::dense(ctx).with_type(KvType::F16);
        let plan = MemoryPlan::with_kv(&c, kv, batch).unwrap();
        let ring = 512 + batch - 1;
        assert_eq!(plan.windows(&c).ring, ring);
        assert_eq!(plan.kv_bytes(), (3 * ctx + 15 * ring) * slot);
        assert_eq!(plan.kv_bytes_unwindowed(&c), 18 * ctx * slot);
        eprintln!(
            "gemma3 270M, {ctx} positions, chunks of {batch}: KV {:.1} MiB (every layer dense: {:.1} MiB)",
            plan.kv_bytes() as f64 / (1 << 20) as f64,
            plan.kv_bytes_unwindowed(&c) as f64 / (1 << 20) as f64
        );
    }
}
