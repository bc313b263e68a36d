//! The streaming KV cache: exactly dense attention until the first eviction;
//! StreamingLLM's in-cache positions after it (checked on a one-layer model,
//! where a cached token's K/V depend on that token alone, against a dense
//! recomputation of the sinks plus the window); KV element types; and
//! perplexity stability over 20,000+ tokens of English text.

use ember_core::gguf::Gguf;
use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan, Session};
use ember_core::quant::GgmlType;
use ember_core::tokenizer::{EncodeOptions, Tokenizer};
use ember_core::{KvOptions, KvType};
use ember_runner::perplexity::streaming_each;
use ember_runner::synth::{synth, SynthConfig};

fn logits_each(model: &Llama, kv: KvOptions, tokens: &[u32], batch: usize) -> Vec<Vec<f32>> {
    let plan = MemoryPlan::with_kv(&model.config, kv, batch).unwrap();
    let mut arena = plan.alloc();
    let mut s = Session::new(model, Kernels::detect(), plan, &mut arena).unwrap();
    let mut out = Vec::new();
    s.forward_all(tokens, &mut |_, l| out.push(l.to_vec()))
        .unwrap();
    out
}

fn smollm() -> Vec<u8> {
    let path = ember_runner::model_store::converted(GgmlType::Q8_0).unwrap();
    std::fs::read(path).unwrap()
}

#[test]
fn ring_equals_dense_until_the_first_eviction() {
    let bytes = smollm();
    let g = Gguf::parse(&bytes).unwrap();
    let model = Llama::from_gguf(&g).unwrap();
    let tokens: Vec<u32> = (0..60).map(|i| (i * 7919 % 5000 + 100) as u32).collect();
    let plain = logits_each(&model, KvOptions::dense(64), &tokens, 16);
    for batch in [1, 16, 64] {
        let ring = logits_each(&model, KvOptions::streaming(4, 60), &tokens, batch);
        let dense_b = logits_each(&model, KvOptions::dense(64), &tokens, batch);
        // Same chunking, same arithmetic: bit for bit.
        assert_eq!(ring, dense_b, "batch {batch}");
    }
    let ring = logits_each(&model, KvOptions::streaming(4, 60), &tokens, 16);
    assert_eq!(ring, plain);
}

/// A one-layer model: cached K/V depend on the token and its position only,
/// so streaming at step t equals a fresh dense pass over the sinks followed by
/// the window (positions 0..capacity), up to rotation rounding.
#[test]
fn after_eviction_positions_are_in_cache_positions() {
    let bytes = synth(&SynthConfig {
        dim: 64,
        layers: 1,
        heads: 4,
        kv_heads: 2,
        ffn: 96,
        vocab: 64,
        ctx: 256,
        seed: 9,
        ty: GgmlType::F32,
    })
    .unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let model = Llama::from_gguf(&g).unwrap();
    let tokens: Vec<u32> = (0..80).map(|i| ((i * 37 + i / 3) % 64) as u32).collect();
    for (sinks, window) in [(2usize, 6usize), (0, 8), (4, 1), (1, 13)] {
        let cap = sinks + window;
        let got = logits_each(&model, KvOptions::streaming(sinks, window), &tokens, 4);
        for t in cap..tokens.len() {
            let mut view: Vec<u32> = tokens[..sinks].to_vec();
            view.extend_from_slice(&tokens[t + 1 - window..=t]);
            let want = logits_each(&model, KvOptions::dense(cap), &view, 64);
            let (a, b) = (&got[t], want.last().unwrap());
            let err = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(err < 2e-4, "sinks {sinks} window {window} t {t}: {err}");
        }
    }
}

#[test]
fn kv_types_track_f32() {
    let bytes = smollm();
    let g = Gguf::parse(&bytes).unwrap();
    let model = Llama::from_gguf(&g).unwrap();
    let tokens: Vec<u32> = (0..300).map(|i| (i * 7919 % 5000 + 100) as u32).collect();
    let f32_ = logits_each(&model, KvOptions::streaming(4, 124), &tokens, 32);
    // Worst |Δlogit| over 300 tokens x 49152 logits, measured: F16 0.016 with
    // f32 decode (--kernels scalar), 0.021 with the 16-bit-activation decode
    // of the fast tables; Q8_0 0.45 and 0.59. Top-1 agrees on >= 293/300.
    for (ty, tol) in [(KvType::F16, 0.05f32), (KvType::Q8_0, 0.8)] {
        let got = logits_each(
            &model,
            KvOptions::streaming(4, 124).with_type(ty),
            &tokens,
            32,
        );
        let mut worst = 0f32;
        let mut agree = 0;
        for (a, b) in got.iter().zip(&f32_) {
            worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(worst, f32::max);
            let am = |v: &Vec<f32>| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
            agree += (am(a) == am(b)) as usize;
        }
        assert!(worst < tol, "{ty:?}: max |dlogit| {worst}");
        assert!(
            agree * 100 >= tokens.len() * 95,
            "{ty:?}: top-1 agrees {agree}/300"
        );
    }
}

/// The text: licence texts of Debian's base-files, concatenated (no two of
/// them near-duplicates): GPL-3, GFDL-1.3, LGPL-2.1, MPL-2.0, Apache-2.0, Artistic.
fn english_tokens(tok: &Tokenizer) -> Vec<u32> {
    let dir = std::path::Path::new("/usr/share/common-licenses");
    let mut text = String::new();
    for name in [
        "GPL-3",
        "GFDL-1.3",
        "LGPL-2.1",
        "MPL-2.0",
        "Apache-2.0",
        "Artistic",
    ] {
        let p = dir.join(name);
        text.push_str(
            &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        );
    }
    tok.encode(&text, EncodeOptions::default()).unwrap()
}

#[test]
fn streaming_perplexity_is_stable_over_20k_tokens() {
    let bytes = smollm();
    let g = Gguf::parse(&bytes).unwrap();
    let model = Llama::from_gguf(&g).unwrap();
    let mut index = Vec::new();
    let tok = ember_runner::text::tokenizer(&g, &mut index).unwrap();
    let tokens = english_tokens(&tok);
    let tokens = &tokens[..20_480.min(tokens.len())];
    assert!(tokens.len() >= 20_000, "{} tokens", tokens.len());

    // Per-token negative log-likelihoods (index of the predicted token).
    // Dense: chunks of 2048 from an empty cache, every prediction kept, so
    // both ways of scoring chunks can be read off one run: every token of the
    // chunk, or llama.cpp's second half (each token with >= 1024 of context).
    let ctx = 2048;
    let dense_run = || {
        let plan = MemoryPlan::with_kv(&model.config, KvOptions::dense(ctx), 512).unwrap();
        let mut arena = plan.alloc();
        let mut s = Session::new(&model, Kernels::detect(), plan, &mut arena).unwrap();
        let mut nll = vec![f64::NAN; tokens.len()];
        for (ci, chunk) in tokens.chunks_exact(ctx).enumerate() {
            s.reset();
            s.forward_all(&chunk[..ctx - 1], &mut |j, l| {
                nll[ci * ctx + j + 1] = ember_runner::perplexity::nll(l, chunk[j + 1]);
            })
            .unwrap();
        }
        nll
    };
    let streaming_run = || {
        let kv = KvOptions::streaming(4, 252);
        let plan = MemoryPlan::with_kv(&model.config, kv, 512).unwrap();
        let mut arena = plan.alloc();
        let mut s = Session::new(&model, Kernels::detect(), plan, &mut arena).unwrap();
        let mut nll = vec![f64::NAN; tokens.len()];
        streaming_each(&mut s, tokens, &mut |_, _| {}, &mut |i, x| nll[i] = x).unwrap();
        nll
    };
    let (d, st) = std::thread::scope(|sc| {
        let d = sc.spawn(dense_run);
        let st = sc.spawn(streaming_run);
        (d.join().unwrap(), st.join().unwrap())
    });
    assert!(
        st[1..].iter().all(|x| x.is_finite()),
        "streaming scored every token"
    );
    // Perplexity ratio streaming / dense over the tokens `keep` selects, in `from..to`.
    let ratio = |from: usize, to: usize, keep: &dyn Fn(usize) -> bool| {
        let (mut a, mut n) = (0.0, 0usize);
        for i in (from..to).filter(|&i| keep(i) && d[i].is_finite()) {
            a += st[i] - d[i];
            n += 1;
        }
        (a / n as f64).exp()
    };
    let all = |_: usize| true;
    let second_half = |i: usize| i % ctx > ctx / 2;
    let n = tokens.len() / ctx * ctx;
    let r_all = ratio(0, n, &all);
    let r_half = ratio(0, n, &second_half);
    let q = n / 4;
    let quarters: Vec<f64> = (0..4).map(|k| ratio(k * q, (k + 1) * q, &all)).collect();
    let ppl = |v: &[f64]| {
        let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        (f.iter().sum::<f64>() / f.len() as f64).exp()
    };
    eprintln!(
        "dense@2048 ppl {:.3}; streaming 4+252 ppl {:.3} over {} tokens; streaming/dense on the \
         same tokens: every chunk token {r_all:.3}, second halves (llama.cpp) {r_half:.3}, by \
         quarter {quarters:.3?}",
        ppl(&d[..n]),
        ppl(&st),
        st.len() - 1
    );
    // Stable: the ring does not drift as the text goes on (the quarters are
    // different licences, so their ratios differ a little by content).
    assert!(quarters[3] <= quarters[0] * 1.10, "drift: {quarters:?}");
    assert!(r_all <= 1.15, "streaming/dense perplexity {r_all:.3}");
}

#[test]
fn kv_types_keep_perplexity() {
    let bytes = smollm();
    let g = Gguf::parse(&bytes).unwrap();
    let model = Llama::from_gguf(&g).unwrap();
    let mut index = Vec::new();
    let tok = ember_runner::text::tokenizer(&g, &mut index).unwrap();
    let tokens = english_tokens(&tok);
    let tokens = &tokens[..2048];
    let run = |ty: KvType| {
        let kv = KvOptions::dense(2048).with_type(ty);
        let plan = MemoryPlan::with_kv(&model.config, kv, 512).unwrap();
        let mut arena = plan.alloc();
        let mut s = Session::new(&model, Kernels::detect(), plan, &mut arena).unwrap();
        ember_runner::perplexity::dense(&mut s, tokens, 2048, 0, &mut |_, _| {})
            .unwrap()
            .ppl()
    };
    let (f32_, f16_, q8) = std::thread::scope(|sc| {
        let a = sc.spawn(|| run(KvType::F32));
        let b = sc.spawn(|| run(KvType::F16));
        let q8 = run(KvType::Q8_0);
        (a.join().unwrap(), b.join().unwrap(), q8)
    });
    eprintln!(
        "dense@2048 over 2048 tokens: f32 KV {f32_:.4}, f16 {f16_:.4} ({:+.3}%), q8_0 {q8:.4} ({:+.3}%)",
        (f16_ / f32_ - 1.0) * 100.0,
        (q8 / f32_ - 1.0) * 100.0
    );
    assert!(
        (f16_ / f32_ - 1.0).abs() <= 0.002,
        "f16 KV {f16_} vs f32 {f32_}"
    );
    assert!(
        (q8 / f32_ - 1.0).abs() <= 0.01,
        "q8_0 KV {q8} vs f32 {f32_}"
    );
}
