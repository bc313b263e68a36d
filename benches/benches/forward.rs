//! One decode step and a 128-token prefill of SmolLM2-135M (the default model,
//! fetched on first use) for each file type, with the detected kernels.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ember_core::gguf::Gguf;
use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan, Session};
use ember_core::quant::GgmlType;

fn bench(c: &mut Criterion) {
    for ty in [GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::F16] {
        let path = ember_runner::model_store::converted(ty).expect("default model");
        let map = ember_runner::mmap::map(&path).expect("map");
        let gguf = Gguf::parse(&map).expect("parse");
        let model = Llama::from_gguf(&gguf).expect("load");
        let prompt: Vec<u32> = (0..128).map(|i| (i * 7919) % 1000 + 100).collect();
        let plan = MemoryPlan::new(&model.config, 512, 128).expect("plan");
        let mut arena = plan.alloc();
        let mut s = Session::new(&model, Kernels::detect(), plan, &mut arena).expect("session");

        let mut g = c.benchmark_group(format!("smollm2_{}", ty.name()));
        g.sample_size(10);
        g.throughput(Throughput::Elements(1));
        // Decode at position 128..: reset to the prompt when the cache fills.
        s.forward(&prompt).expect("prefill");
        g.bench_function("decode_step", |b| {
            b.iter(|| {
                if s.pos() + 1 >= 512 {
                    s.reset();
                    s.forward(&prompt).expect("prefill");
                }
                s.forward(&[198]).expect("decode")[0]
            })
        });
        g.throughput(Throughput::Elements(prompt.len() as u64));
        g.bench_function("prefill_128", |b| {
            b.iter(|| {
                s.reset();
                s.forward(&prompt).expect("prefill")[0]
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
