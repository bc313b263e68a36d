//! Whole forward steps on the GPU against the core's CPU engine, for every
//! family the core runs (synthetic files: llama, Llama 3's RoPE factors,
//! Qwen2's biases, Qwen3's per-head norms, Phi-3's fused matrices, Gemma
//! 3's window, post norms, GeGLU and soft-cap), in F32 and quantized
//! weights: prompt chunks and decode steps give the CPU's logits within a
//! stated tolerance, and a sequence's logits are bit for bit the same
//! whether it runs alone or batched with others.

use ember_core::gguf::Gguf;
use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan, Session};
use ember_core::quant::GgmlType;
use ember_core::sampling::Pcg32;
use ember_core::synth::{synth_family, Family, FamilyOptions, SynthConfig};
use ember_core::{KvOptions, KvType};
use ember_gpu::{check, Engine, EngineOptions, Gpu};

const CTX: usize = 48;

/// How far the GPU's logits may be from the CPU's scalar reference engine,
/// as a fraction of the largest logit: both sum f32 products in different
/// orders (measured: 3e-7 to 9e-7 on lavapipe, every family and format).
const TOL: f32 = 5e-6;

fn file(family: Family, ty: GgmlType) -> Vec<u8> {
    let c = SynthConfig {
        dim: 128,
        layers: 3,
        heads: 4,
        kv_heads: 2,
        ffn: 256,
        vocab: 320,
        ctx: CTX,
        seed: 42,
        ty,
    };
    let opts = FamilyOptions {
        family,
        head_dim: 0,
        window: 9,
    };
    synth_family(&c, &opts).unwrap()
}

fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] {
            best = i;
        }
    }
    best as u32
}

/// `max |a - b|` over `max |b|`.
fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    d / b.iter().map(|x| x.abs()).fold(1e-30, f32::max)
}

/// The CPU's logits after every prompt position, then after each of
/// `steps` greedy tokens (and those tokens).
fn cpu(model: &Llama, prompt: &[u32], steps: usize) -> (Vec<Vec<f32>>, Vec<u32>, Vec<Vec<f32>>) {
    let kv = KvOptions::dense(CTX).with_type(KvType::F32);
    let plan = MemoryPlan::with_kv(&model.config, kv, 8).unwrap();
    let mut arena = plan.alloc();
    let mut s = Session::new(model, Kernels::scalar(), plan, &mut arena).unwrap();
    let mut pre = Vec::new();
    s.forward_all(prompt, &mut |_, l| pre.push(l.to_vec()))
        .unwrap();
    let (mut ids, mut dec) = (Vec::new(), Vec::new());
    let mut next = argmax(s.logits());
    for _ in 0..steps {
        ids.push(next);
        let l = s.forward(&[next]).unwrap();
        dec.push(l.to_vec());
        next = argmax(l);
    }
    (pre, ids, dec)
}

fn check_family(gpu: Gpu, family: Family, ty: GgmlType, tol: f32) -> Gpu {
    let bytes = file(family, ty);
    let g = Gguf::parse(&bytes).unwrap();
    let model = Llama::from_gguf(&g).unwrap();
    let mut rng = Pcg32::new(3, family as u64);
    let prompt: Vec<u32> = (0..20).map(|_| rng.next_u32() % 320).collect();
    let (pre, ids, dec) = cpu(&model, &prompt, 12);
    let opt = EngineOptions {
        slots: 3,
        ctx: CTX,
        max_batch: 24,
        all_logits: true,
    };
    let mut e = Engine::new(gpu, &model, opt).unwrap();
    let name = format!("{} {}", family.name(), ty.name());
    let mut worst = 0f32;

    // Slot 0 alone: the prompt in chunks of 7, then the CPU's tokens.
    let mut alone = Vec::new();
    let mut at = 0;
    for chunk in prompt.chunks(7) {
        e.step(&[(0, chunk)]).unwrap();
        at += chunk.len();
        let r = rel(e.logits(0), &pre[at - 1]);
        worst = worst.max(r);
        assert!(r <= tol, "{name}: prompt position {}: {r}", at - 1);
        alone.push(e.logits(0).to_vec());
    }
    for (k, &id) in ids.iter().enumerate() {
        e.step(&[(0, &[id][..])]).unwrap();
        let r = rel(e.logits(0), &dec[k]);
        worst = worst.max(r);
        assert!(r <= tol, "{name}: decode step {k}: {r}");
        assert_eq!(
            e.argmax(0),
            Some(argmax(e.logits(0))),
            "{name}: the device's greedy id"
        );
        alone.push(e.logits(0).to_vec());
    }
    assert_eq!(e.pos(0), prompt.len() + ids.len());
    eprintln!("{name}: largest difference from the CPU {worst:.2e} of the largest logit");

    // Slots 1 and 2 together, with slot 0 cleared and rerun beside them:
    // every sequence gets bit for bit what it got alone.
    e.clear(0);
    let mut step = 0;
    for chunk in prompt.chunks(7) {
        e.step(&[(1, chunk), (0, chunk), (2, chunk)]).unwrap();
        for i in 0..3 {
            assert_eq!(
                e.logits(i),
                &alone[step][..],
                "{name}: batched prompt chunk {step}"
            );
        }
        step += 1;
    }
    for &id in &ids {
        e.step(&[(2, &[id][..]), (0, &[id][..]), (1, &[id][..])])
            .unwrap();
        for i in 0..3 {
            assert_eq!(
                e.logits(i),
                &alone[step][..],
                "{name}: batched decode {step}"
            );
        }
        step += 1;
    }

    // Every token's logits of a chunk are the prompt positions' (slot 0
    // again, alone, its prompt in one chunk).
    e.clear(0);
    let mut n = 0;
    e.step_all(0, &prompt, &mut |i, l| {
        let r = rel(l, &pre[i]);
        assert!(r <= tol, "{name}: every token's logits, position {i}: {r}");
        n += 1;
    })
    .unwrap();
    assert_eq!(n, prompt.len());
    e.truncate(0, 5).unwrap();
    e.step(&[(0, &prompt[5..9])]).unwrap();
    assert!(rel(e.logits(0), &pre[8]) <= tol, "{name}: after truncating");

    // Without the logits, a step brings back the greedy ids alone.
    e.read_logits(false);
    e.clear(2);
    e.step(&[(2, &prompt[..7])]).unwrap();
    assert!(e.logits(0).is_empty(), "{name}");
    assert_eq!(
        e.argmax(0),
        Some(argmax(&alone[0])),
        "{name}: greedy id without logits"
    );
    e.read_logits(true);

    // What cannot run is refused, and changes nothing.
    let pos = e.pos(1);
    assert!(e.step(&[(1, &[320][..])]).is_err());
    assert!(e.step(&[(3, &[1][..])]).is_err());
    assert!(e.step(&[(1, &[1][..]), (1, &[2][..])]).is_err());
    assert!(e.step(&[(1, &vec![1u32; CTX][..])]).is_err());
    assert!(e.step(&[]).is_err());
    assert_eq!(e.pos(1), pos);
    e.into_gpu()
}

#[test]
fn every_family_matches_the_cpu_engine() {
    let mut gpu = check::gpu_for_checks().unwrap();
    for family in Family::ALL {
        gpu = check_family(gpu, family, GgmlType::F32, TOL);
    }
    for ty in [
        GgmlType::F16,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        gpu = check_family(gpu, Family::Llama, ty, TOL);
    }
}

/// Past one attention part (256 positions): a 600-token prompt in chunks
/// of 64 and decode steps at positions 600..604, for llama and for Gemma
/// 3 with a window of 300 (its windowed layers' positions cross a part
/// boundary too), within [`TOL`] of the CPU engine.
#[test]
fn long_contexts_split_attention_over_parts() {
    let mut gpu = check::gpu_for_checks().unwrap();
    for family in [Family::Llama, Family::Gemma3] {
        let c = SynthConfig {
            dim: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            ffn: 128,
            vocab: 300,
            ctx: 640,
            seed: 9,
            ty: GgmlType::F32,
        };
        let opts = FamilyOptions {
            family,
            head_dim: 0,
            window: 300,
        };
        let bytes = synth_family(&c, &opts).unwrap();
        let g = Gguf::parse(&bytes).unwrap();
        let model = Llama::from_gguf(&g).unwrap();
        let mut rng = Pcg32::new(11, 5);
        let prompt: Vec<u32> = (0..600).map(|_| rng.next_u32() % 300).collect();
        let kv = KvOptions::dense(640).with_type(KvType::F32);
        let plan = MemoryPlan::with_kv(&model.config, kv, 64).unwrap();
        let mut arena = plan.alloc();
        let mut s = Session::new(&model, Kernels::scalar(), plan, &mut arena).unwrap();
        let mut pre = Vec::new();
        s.forward_all(&prompt, &mut |_, l| pre.push(l.to_vec()))
            .unwrap();
        let opt = EngineOptions {
            slots: 1,
            ctx: 640,
            max_batch: 64,
            all_logits: false,
        };
        let mut e = Engine::new(gpu, &model, opt).unwrap();
        let mut at = 0;
        for chunk in prompt.chunks(64) {
            e.step(&[(0, chunk)]).unwrap();
            at += chunk.len();
            let r = rel(e.logits(0), &pre[at - 1]);
            assert!(r <= TOL, "{}: position {}: {r}", family.name(), at - 1);
        }
        for k in 0..4 {
            let id = argmax(s.logits());
            let want = s.forward(&[id]).unwrap().to_vec();
            e.step(&[(0, &[id][..])]).unwrap();
            let r = rel(e.logits(0), &want);
            assert!(r <= TOL, "{}: decode {k}: {r}", family.name());
        }
        gpu = e.into_gpu();
    }
}
