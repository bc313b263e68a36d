//! One grammar-constrained step over SmolLM2's 49,152-token vocabulary: the
//! mask of the tokens the JSON grammar takes at several places in a JSON
//! text, next to one decode step of the same model (Q8_0, one thread and
//! every physical core) measured in the same run. The goal: a constrained step costs under 10% of
//! a decode step. "first" is the first mask at a place (the state table
//! holds only what reaching it needed); "again" is the same mask with the
//! table kept; "cached" takes the mask computed at the same state before
//! (`Matcher::mask_cached`), as in a generation where places recur.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ember_core::gguf::Gguf;
use ember_core::grammar::{GrammarBuf, MaskCache, Matcher, VocabBuf, JSON};
use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan, Session};
use ember_core::quant::GgmlType;
use ember_core::tokenizer::EncodeOptions;
use ember_core::KvOptions;
use ember_runner::pool::{physical_cores, Pool};

fn bench(c: &mut Criterion) {
    let path = ember_runner::model_store::converted(GgmlType::Q8_0).expect("default model");
    let map = ember_runner::mmap::map(&path).expect("map");
    let gguf = Gguf::parse(&map).expect("parse");
    let mut index = Vec::new();
    let tok = ember_runner::text::tokenizer(&gguf, &mut index).expect("tokenizer");
    let vocab = VocabBuf::from_tokenizer(&tok).expect("vocabulary");
    let vocab = vocab.vocab();
    let grammar = GrammarBuf::parse(JSON).expect("grammar");
    let mut allowed = vec![0u32; vocab.len().div_ceil(32)];

    let mut g = c.benchmark_group("grammar_json_49152");
    g.sample_size(20);
    let places = [
        ("start", ""),
        ("key", "{\"na"),
        ("string_value", "{\"name\": \"The quick brown"),
        ("number", "{\"name\": \"x\", \"age\": 4"),
        ("after_value", "{\"name\": \"x\", \"tags\": [\"a\", \"b\"]"),
    ];
    for (name, prefix) in places {
        let mut m = Matcher::alloc(&grammar.grammar()).expect("matcher");
        let ids = tok
            .encode(
                prefix,
                EncodeOptions {
                    add_special: false,
                    parse_special: false,
                },
            )
            .expect("encode");
        for id in ids {
            m.accept(&vocab, id).expect("the prefix is JSON");
        }
        g.bench_function(format!("{name}_first"), |b| {
            b.iter_batched(
                || m.clone(),
                |mut m| {
                    m.mask(&vocab, &mut allowed).expect("mask");
                    allowed[0]
                },
                BatchSize::LargeInput,
            )
        });
        m.mask(&vocab, &mut allowed).expect("mask");
        let n: u32 = allowed.iter().map(|w| w.count_ones()).sum();
        eprintln!("{name}: {n} tokens allowed, {} states", m.interned());
        g.bench_function(format!("{name}_again"), |b| {
            b.iter(|| {
                m.mask(&vocab, &mut allowed).expect("mask");
                allowed[0]
            })
        });
        let mut cache = MaskCache::alloc(4, vocab.len()).expect("cache");
        g.bench_function(format!("{name}_cached"), |b| {
            b.iter(|| {
                m.mask_cached(&vocab, &mut allowed, &mut cache)
                    .expect("mask");
                allowed[0]
            })
        });
    }

    let model = Llama::from_gguf(&gguf).expect("load");
    let prompt = [1u32, 9690, 198, 2683, 314, 253, 5356, 30];
    let mut counts = vec![1];
    if physical_cores() > 1 {
        counts.push(physical_cores());
    }
    for threads in counts {
        let pool = Pool::new(threads).expect("pool");
        let plan = MemoryPlan::with_threads(&model.config, KvOptions::dense(512), 64, threads)
            .expect("plan");
        let mut arena = plan.alloc();
        let mut s = Session::new(&model, Kernels::detect(), plan, &mut arena).expect("session");
        s.set_parallel(&pool).expect("pool fits the plan");
        s.forward(&prompt).expect("prefill");
        g.bench_function(format!("decode_step_q8_0_t{threads}"), |b| {
            b.iter(|| {
                if s.pos() + 1 >= 512 {
                    s.reset();
                    s.forward(&prompt).expect("prefill");
                }
                s.forward(&[198]).expect("decode")[0]
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
