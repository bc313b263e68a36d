//! Beam search on a tiny synthetic model, where every continuation can be
//! scored by brute force: N = 1 is greedy, a wide enough beam finds the best
//! length-normalised hypothesis of all, and every reported score is the
//! teacher-forced log-probability of its ids.

use ember_core::gguf::Gguf;
use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan, Session};
use ember_core::quant::GgmlType;
use ember_core::sampling::SamplerConfig;
use ember_runner::beam::{beam_search, log_softmax, BeamOptions};
use ember_runner::run::{generate, RunOptions};
use ember_runner::synth::{synth, SynthConfig};

const VOCAB: usize = 6;
const EOS: u32 = 0;

fn tiny() -> Vec<u8> {
    synth(&SynthConfig {
        dim: 32,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        ffn: 64,
        vocab: VOCAB,
        ctx: 64,
        seed: 3,
        ty: GgmlType::F32,
    })
    .unwrap()
}

/// Sum of log-probabilities of `seq` after `prompt`, teacher-forced.
fn logprob(model: &Llama, prompt: &[u32], seq: &[u32]) -> f64 {
    let plan = MemoryPlan::new(&model.config, 16, 16).unwrap();
    let mut arena = plan.alloc();
    let mut s = Session::new(model, Kernels::scalar(), plan, &mut arena).unwrap();
    let mut all: Vec<u32> = prompt.to_vec();
    all.extend_from_slice(seq);
    let mut lps = Vec::new();
    s.forward_all(&all[..all.len() - 1], &mut |_, l| lps.push(log_softmax(l)))
        .unwrap();
    seq.iter()
        .enumerate()
        .map(|(i, &t)| lps[prompt.len() - 1 + i][t as usize])
        .sum()
}

/// Every hypothesis of at most `n` tokens: ended by EOS, or `n` long.
fn all_sequences(n: usize) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    let mut frontier = vec![Vec::new()];
    for step in 0..n {
        let mut next = Vec::new();
        for seq in &frontier {
            for t in 0..VOCAB as u32 {
                let mut s: Vec<u32> = seq.clone();
                s.push(t);
                if t == EOS || step + 1 == n {
                    out.push(s);
                } else {
                    next.push(s);
                }
            }
        }
        frontier = next;
    }
    out
}

fn opts(beams: usize, n: usize, alpha: f64) -> BeamOptions {
    BeamOptions {
        beams,
        n_predict: n,
        length_penalty: alpha,
        eos: vec![EOS],
        kv: ember_core::KvOptions::dense(16),
        batch: 16,
    }
}

#[test]
fn one_beam_is_greedy() {
    let bytes = tiny();
    let g = Gguf::parse(&bytes).unwrap();
    let model = Llama::from_gguf(&g).unwrap();
    for prompt in [vec![1u32], vec![2, 3], vec![5, 4, 3, 2]] {
        let hyps = beam_search(&model, Kernels::detect(), &prompt, &opts(1, 8, 1.0)).unwrap();
        let greedy = generate(
            &model,
            Kernels::detect(),
            &RunOptions {
                prompt_ids: prompt.clone(),
                n_predict: 8,
                top_logits: 0,
                logits_all: false,
                kv: ember_core::KvOptions::dense(16),
                batch: 16,
                ignore_eos: false,
                eos: vec![EOS],
                sampling: SamplerConfig::greedy(),
                threads: 1,
                device: ember_runner::device::Device::Cpu,
                constraint: None,
                lookup: 0,
            },
            |_| true,
        )
        .unwrap();
        assert_eq!(hyps[0].ids, greedy.ids, "prompt {prompt:?}");
    }
}

#[test]
fn wide_beams_find_the_brute_force_best() {
    let bytes = tiny();
    let g = Gguf::parse(&bytes).unwrap();
    let model = Llama::from_gguf(&g).unwrap();
    let n = 3;
    for (prompt, alpha) in [
        (vec![1u32, 2], 1.0),
        (vec![4u32], 0.0),
        (vec![3u32, 5, 1], 2.0),
    ] {
        let seqs = all_sequences(n);
        let scored: Vec<(f64, &Vec<u32>)> = seqs
            .iter()
            .map(|s| {
                (
                    logprob(&model, &prompt, s) / (s.len() as f64).powf(alpha),
                    s,
                )
            })
            .collect();
        let best = scored
            .iter()
            .max_by(|a, b| a.0.partial_cmp(&b.0).unwrap())
            .unwrap();
        // VOCAB^n beams cover every continuation, so the search is exhaustive.
        let hyps = beam_search(&model, Kernels::scalar(), &prompt, &opts(216, n, alpha)).unwrap();
        assert_eq!(&hyps[0].ids, best.1, "prompt {prompt:?} alpha {alpha}");
        assert!((hyps[0].score - best.0).abs() < 1e-4);

        // Narrow beams: the answer is the best of the beams' own hypotheses,
        // each scored as brute force scores it.
        for beams in [2, 3, 4] {
            let hyps =
                beam_search(&model, Kernels::scalar(), &prompt, &opts(beams, n, alpha)).unwrap();
            assert!(!hyps.is_empty() && hyps.len() <= beams);
            for w in hyps.windows(2) {
                assert!(w[0].score >= w[1].score);
            }
            for h in &hyps {
                let lp = logprob(&model, &prompt, &h.ids);
                assert!((h.logprob - lp).abs() < 1e-4, "{} vs {lp}", h.logprob);
                let s = lp / (h.ids.len() as f64).powf(alpha);
                assert!((h.score - s).abs() < 1e-4);
                assert!(s <= best.0 + 1e-9);
                assert_eq!(h.finished, h.ids.last() == Some(&EOS));
            }
        }
    }
}
