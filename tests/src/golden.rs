//! Reading the teacher-forced golden files (`golden/tf_*.json`) and scoring
//! logits against their exact (float64) reference, for every engine's
//! fidelity test.

use std::path::PathBuf;

use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan, Session};
use serde_json::Value;

/// A golden file of `golden/`.
pub fn golden(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden JSON")
}

/// A JSON array of token ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// The first index of the largest logit.
pub fn argmax(l: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in l.iter().enumerate() {
        if v > l[best] {
            best = i;
        }
    }
    best as u32
}

/// Logits after every token of `path` (teacher forcing), from one forward
/// call of the CPU engine in chunks of `batch`.
pub fn all_logits(model: &Llama, kernels: Kernels, path: &[u32], batch: usize) -> Vec<Vec<f32>> {
    let plan = MemoryPlan::new(&model.config, path.len(), batch).unwrap();
    let mut arena = plan.alloc();
    let mut s = Session::new(model, kernels, plan, &mut arena).unwrap();
    let mut out = Vec::new();
    s.forward_all(path, &mut |_, l| out.push(l.to_vec()))
        .unwrap();
    out
}

/// `log softmax(logits)` at `ids`, in f64.
pub fn log_softmax_at(logits: &[f32], ids: &[u32]) -> Vec<f64> {
    let lse = ember_runner::run::log_sum_exp(logits);
    ids.iter()
        .map(|&i| logits[i as usize] as f64 - lse)
        .collect()
}

/// KL(p || q) with both renormalized over the same ids, from log-probabilities.
pub fn kl_renormalized(lp: &[f64], lq: &[f64]) -> f64 {
    let norm = |l: &[f64]| {
        let m = l.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let z = m + l.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        l.iter().map(|v| v - z).collect::<Vec<_>>()
    };
    let (p, q) = (norm(lp), norm(lq));
    p.iter().zip(&q).map(|(a, b)| a.exp() * (a - b)).sum()
}

/// An engine's distance from the exact reference over golden positions,
/// beside llama.cpp's from the same file.
#[derive(Default, Debug, Clone)]
pub struct Score {
    /// Positions whose exact top-1 leads by more than 0.02.
    pub qualifying: usize,
    pub top1_agree: usize,
    pub llama_top1_agree: usize,
    pub positions: usize,
    pub kl_sum: f64,
    pub llama_kl_sum: f64,
    pub max_dlogit: f64,
    pub dlogit_sum: f64,
    pub dlogit_n: usize,
}

impl Score {
    /// Scores the logits `l` at one golden position `p`.
    pub fn add_position(&mut self, p: &Value, l: &[f32]) {
        let pairs = |key: &str| -> Vec<(u32, f64)> {
            p[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e[0].as_u64().unwrap() as u32, e[1].as_f64().unwrap()))
                .collect()
        };
        let exact = pairs("exact_top10");
        for &(id, v) in &exact {
            let d = (l[id as usize] as f64 - v).abs();
            self.max_dlogit = self.max_dlogit.max(d);
            self.dlogit_sum += d;
            self.dlogit_n += 1;
        }
        if p["exact_margin"].as_f64().unwrap() > 0.02 {
            self.qualifying += 1;
            if argmax(l) == exact[0].0 {
                self.top1_agree += 1;
            }
        }
        let top50 = pairs("exact_top50_logprobs");
        let top50_ids: Vec<u32> = top50.iter().map(|e| e.0).collect();
        let lp: Vec<f64> = top50.iter().map(|e| e.1).collect();
        self.kl_sum += kl_renormalized(&lp, &log_softmax_at(l, &top50_ids));
        self.llama_kl_sum += p["kl_exact_llama_top50"].as_f64().unwrap();
        self.positions += 1;
    }

    /// Scores a golden case from the logits after every token of its path.
    pub fn add_case(&mut self, case: &Value, logits: &[Vec<f32>]) {
        for p in case["positions"].as_array().unwrap() {
            let pos = p["pos"].as_u64().unwrap() as usize;
            self.add_position(p, &logits[pos]);
        }
        self.llama_top1_agree += case["llama_summary"]["top1_agree_qualifying"]
            .as_u64()
            .unwrap() as usize;
    }

    /// Adds another score's counts to this one.
    pub fn merge(&mut self, o: &Score) {
        self.qualifying += o.qualifying;
        self.top1_agree += o.top1_agree;
        self.llama_top1_agree += o.llama_top1_agree;
        self.positions += o.positions;
        self.kl_sum += o.kl_sum;
        self.llama_kl_sum += o.llama_kl_sum;
        self.max_dlogit = self.max_dlogit.max(o.max_dlogit);
        self.dlogit_sum += o.dlogit_sum;
        self.dlogit_n += o.dlogit_n;
    }

    /// Mean KL(exact ‖ engine) over the exact top 50.
    pub fn kl(&self) -> f64 {
        self.kl_sum / self.positions.max(1) as f64
    }

    /// llama.cpp's mean KL over the same positions.
    pub fn llama_kl(&self) -> f64 {
        self.llama_kl_sum / self.positions.max(1) as f64
    }

    /// One line: top-1, KL and logit distances, beside llama.cpp's.
    pub fn summary(&self) -> String {
        format!(
            "top-1 {}/{} (llama.cpp {}/{}), mean KL {:.2e} (llama.cpp {:.2e}), |dlogit| top-10 max {:.1e} mean {:.1e}",
            self.top1_agree,
            self.qualifying,
            self.llama_top1_agree,
            self.qualifying,
            self.kl(),
            self.llama_kl(),
            self.max_dlogit,
            self.dlogit_sum / self.dlogit_n.max(1) as f64
        )
    }
}
