//! One decode step and a 128-token prefill of SmolLM2-135M (the default model,
//! fetched on first use) for each file type, with the detected kernels, on
//! one thread and on every physical core (the runner's pool). The model is
//! loaded as `ember` loads it (a copy in huge pages).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ember_core::gguf::Gguf;
use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan, Session};
use ember_core::quant::GgmlType;
use ember_core::KvOptions;
use ember_runner::pool::{physical_cores, Pool};

fn bench(c: &mut Criterion) {
    for ty in [GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::F16] {
        let path = ember_runner::model_store::converted(ty).expect("default model");
        let bytes = ember_runner::mmap::load(&path, false).expect("load");
        let gguf = Gguf::parse(&bytes).expect("parse");
        let model = Llama::from_gguf(&gguf).expect("load");
        let prompt: Vec<u32> = (0..128).map(|i| (i * 7919) % 1000 + 100).collect();
        let mut counts = vec![1];
        if physical_cores() > 1 {
            counts.push(physical_cores());
        }
        for threads in counts {
            let pool = Pool::new(threads).expect("pool");
            let plan = MemoryPlan::with_threads(&model.config, KvOptions::dense(512), 128, threads)
                .expect("plan");
            let mut arena = plan.alloc();
            let mut s = Session::new(&model, Kernels::detect(), plan, &mut arena).expect("session");
            s.set_parallel(&pool).expect("pool fits the plan");

            let mut g = c.benchmark_group(format!("smollm2_{}_t{threads}", ty.name()));
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
