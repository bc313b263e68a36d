//! The GPU engine on the default model (SmolLM2-135M-Instruct, F16 and
//! Q8_0), on whatever adapter the machine has (Mesa's lavapipe in CI; a
//! machine with none fails here, never skips):
//!
//! - greedy generation: the four golden prompts, 32 tokens each, run as
//!   four sequences of one batch, give the CPU engine's ids;
//! - teacher forcing along the golden paths: every position's logits within
//!   a stated tolerance of the CPU's, and the fidelity figures against the
//!   exact (float64) reference printed beside the CPU's and llama.cpp's
//!   (`-- --nocapture`; docs/FIDELITY.md).

use ember_core::gguf::Gguf;
use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan, Session};
use ember_core::quant::GgmlType;
use ember_gpu::{check, Engine, EngineOptions};
use ember_tests::golden::{all_logits, argmax, golden, ids, Score};

/// How far a GPU logit may be from the CPU engine's, over the largest
/// logit of the row: the CPU multiplies quantized rows by 16-bit
/// activations in decode and the GPU by f32 ones, and both round sums in
/// their own order.
const TOL: f32 = 1e-3;

fn engine(model: &Llama, slots: usize, ctx: usize) -> Engine {
    let gpu = check::gpu_for_checks().unwrap();
    let opt = EngineOptions {
        slots,
        ctx,
        max_batch: 128,
        all_logits: true,
    };
    Engine::new(gpu, model, opt).unwrap()
}

fn check(ty: GgmlType, golden_file: &str) {
    let path = ember_runner::model_store::converted(ty).unwrap();
    let map = ember_runner::mmap::map(&path).unwrap();
    let gguf = Gguf::parse(&map).unwrap();
    let model = Llama::from_gguf(&gguf).unwrap();
    let g = golden(golden_file);
    let cases = g["cases"].as_array().unwrap();
    let mut e = engine(&model, cases.len(), 128);
    let name = ty.name();

    // Greedy: all four prompts at once on the GPU, one at a time on the CPU.
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["prompt_ids"])).collect();
    let work: Vec<(usize, &[u32])> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| (i, &p[..]))
        .collect();
    e.step(&work).unwrap();
    let mut gpu_ids = vec![Vec::new(); prompts.len()];
    for _ in 0..32 {
        let next: Vec<[u32; 1]> = (0..prompts.len()).map(|i| [argmax(e.logits(i))]).collect();
        for (i, n) in next.iter().enumerate() {
            assert_eq!(e.argmax(i), Some(n[0]), "{name}: the device's greedy id");
        }
        for (i, n) in next.iter().enumerate() {
            gpu_ids[i].push(n[0]);
        }
        let work: Vec<(usize, &[u32])> =
            next.iter().enumerate().map(|(i, n)| (i, &n[..])).collect();
        e.step(&work).unwrap();
    }
    let packs = ember_runner::pack::Packs::build(&model, &Kernels::detect(), true, 1).unwrap();
    let packed = packs.apply(model.clone()).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let plan = MemoryPlan::new(&packed.config, 128, 64).unwrap();
        let mut arena = plan.alloc();
        let mut s = Session::new(&packed, Kernels::detect(), plan, &mut arena).unwrap();
        let mut next = argmax(s.forward(p).unwrap());
        let mut cpu_ids = Vec::new();
        for _ in 0..32 {
            cpu_ids.push(next);
            next = argmax(s.forward(&[next]).unwrap());
        }
        assert_eq!(
            gpu_ids[i], cpu_ids,
            "{name}: prompt {i}: GPU and CPU greedy ids"
        );
    }

    // Teacher forcing: the whole path in one step, every position's logits.
    let mut gpu_score = Score::default();
    let mut worst = 0f32;
    for case in cases {
        let path_ids = ids(&case["path_ids"]);
        e.clear(0);
        let mut logits = Vec::new();
        e.step_all(0, &path_ids, &mut |_, l| logits.push(l.to_vec()))
            .unwrap();
        let cpu = all_logits(&packed, Kernels::detect(), &path_ids, 64);
        for (i, (gl, cpu)) in logits.iter().zip(&cpu).enumerate() {
            let d = gl
                .iter()
                .zip(cpu)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            let r = d / cpu.iter().map(|x| x.abs()).fold(1e-30, f32::max);
            worst = worst.max(r);
            assert!(r <= TOL, "{name}: {} position {i}: {r}", case["name"]);
        }
        assert_eq!(cpu.len(), path_ids.len());
        gpu_score.add_case(case, &logits);
    }
    eprintln!(
        "GPU {name}: largest difference from the CPU {worst:.1e} of the largest logit; {}",
        gpu_score.summary()
    );
    assert_eq!(
        gpu_score.top1_agree, gpu_score.qualifying,
        "{name}: the GPU's top-1 is the exact reference's wherever its margin is over 0.02"
    );
}

#[test]
fn smollm2_f16_on_the_gpu_matches_the_cpu() {
    check(GgmlType::F16, "tf_f16.json");
}

#[test]
fn smollm2_q8_0_on_the_gpu_matches_the_cpu() {
    check(GgmlType::Q8_0, "tf_q8_0.json");
}
