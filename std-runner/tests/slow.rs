//! The slow suite: measurements that take minutes on a 2-core machine, run
//! by `.ci/run` (`cargo test -p ember-runner --features slow-tests --test
//! slow`) and left out of `cargo test --workspace`. docs/TESTING.md says what
//! each takes.
//!
//! Streaming perplexity over 20,000+ tokens of English text: the ring of
//! 4 sinks + 252 positions decodes every token past its capacity one at a
//! time, so this is about 20,000 decode steps of SmolLM2 (Q8_0).

use ember_core::gguf::Gguf;
use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan, Session};
use ember_core::KvOptions;
use ember_runner::device::One;
use ember_runner::perplexity::streaming_each;

mod common;
use common::{english_tokens, smollm_q8_0 as smollm};

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
        let s = Session::new(&model, Kernels::detect(), plan, &mut arena).unwrap();
        let mut s = One::Cpu(Box::new(s));
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
