//! One sampling step over SmolLM2's 49152 logits, next to one decode step of
//! the same model (Q8_0) measured in the same run: the sampler should cost
//! under 5% of a step. Logits are real: those after a short prompt.

use criterion::{criterion_group, criterion_main, Criterion};
use ember_core::gguf::Gguf;
use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan, Session};
use ember_core::quant::GgmlType;
use ember_core::sampling::{Candidate, Sampler, SamplerConfig};

fn bench(c: &mut Criterion) {
    let path = ember_runner::model_store::converted(GgmlType::Q8_0).expect("default model");
    let map = ember_runner::mmap::map(&path).expect("map");
    let gguf = Gguf::parse(&map).expect("parse");
    let model = Llama::from_gguf(&gguf).expect("load");
    let plan = MemoryPlan::new(&model.config, 512, 64).expect("plan");
    let mut arena = plan.alloc();
    let mut s = Session::new(&model, Kernels::detect(), plan, &mut arena).expect("session");
    let prompt = [1u32, 9690, 198, 2683, 314, 253, 5356, 30];
    let logits = s.forward(&prompt).expect("prefill").to_vec();
    let mut scratch = vec![Candidate::default(); Sampler::scratch_len(logits.len())];

    let mut g = c.benchmark_group("sampler_49152");
    g.sample_size(30);
    let configs = [
        ("default_k40_p095_minp005", SamplerConfig::default()),
        ("greedy", SamplerConfig::greedy()),
        (
            "top_p_095_no_top_k",
            SamplerConfig {
                top_k: 0,
                min_p: 0.0,
                ..SamplerConfig::default()
            },
        ),
        (
            "temp_only_full_vocab",
            SamplerConfig {
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                temperature: 1.0,
                ..SamplerConfig::default()
            },
        ),
        (
            "default_with_penalties",
            SamplerConfig {
                repeat_penalty: 1.1,
                frequency_penalty: 0.1,
                presence_penalty: 0.1,
                ..SamplerConfig::default()
            },
        ),
    ];
    for (name, cfg) in configs {
        let mut sampler = Sampler::new(cfg).expect("sampler");
        for i in 0..64 {
            sampler.accept((i * 37) % 1000);
        }
        g.bench_function(name, |b| {
            b.iter(|| sampler.sample(&logits, &mut scratch).expect("sample"))
        });
    }
    g.bench_function("decode_step_q8_0", |b| {
        b.iter(|| {
            if s.pos() + 1 >= 512 {
                s.reset();
                s.forward(&prompt).expect("prefill");
            }
            s.forward(&[198]).expect("decode")[0]
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
