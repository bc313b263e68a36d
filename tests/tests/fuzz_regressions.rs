//! Replays every fuzz seed (`fuzz/seeds/<target>/`) and every fuzzing
//! finding kept as a regression (`fuzz/regressions/<target>/`) through the
//! fuzz targets' bodies (`ember_tests::fuzz`), so a fixed crash stays fixed,
//! then runs a short smoke fuzz: seeded random mutations of the seeds (bit
//! flips, byte writes, cuts, splices and repeats). `scripts/fuzz.sh` runs
//! the coverage-guided fuzzers themselves, for as long as asked.

use std::path::PathBuf;

use ember_core::gguf::Gguf;
use ember_core::tokenizer::Tokenizer;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(rd) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_file() {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Mutations of the seeds each target gets in the smoke run.
const SMOKE: usize = 4000;

fn replay(target: &str, f: impl Fn(&[u8])) {
    let cases = inputs(target);
    assert!(!cases.is_empty(), "no seeds for {target}");
    for (path, data) in &cases {
        eprintln!("{target}: {}", path.display());
        f(data);
    }
    // Smoke fuzz: xorshift-seeded mutations, reproducible run to run.
    let mut x = 0x2545_f491_4f6c_dd1du64 ^ target.len() as u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..SMOKE {
        let (_, seed) = &cases[next() as usize % cases.len()];
        let mut m = seed.clone();
        for _ in 0..1 + next() % 4 {
            let at = |n: u64, len: usize| (n as usize) % len.max(1);
            match next() % 6 {
                0 if !m.is_empty() => {
                    let k = at(next(), m.len());
                    m[k] ^= 1 << (next() % 8);
                }
                1 if !m.is_empty() => {
                    let k = at(next(), m.len());
                    m[k] = [0u8, 0xff, 0x7f, 0x80, b'"', b'{', b'9'][next() as usize % 7];
                }
                2 => {
                    let k = at(next(), m.len() + 1);
                    m.truncate(k);
                }
                3 if !m.is_empty() => {
                    let (a, b) = (at(next(), m.len()), at(next(), m.len()));
                    let (lo, hi) = (a.min(b), a.max(b));
                    let piece = m[lo..hi].to_vec();
                    let k = at(next(), m.len() + 1);
                    m.splice(k..k, piece);
                }
                4 => {
                    let (_, other) = &cases[next() as usize % cases.len()];
                    let k = at(next(), m.len() + 1);
                    let j = at(next(), other.len() + 1);
                    m.truncate(k);
                    m.extend_from_slice(&other[j..]);
                }
                _ => {
                    let k = at(next(), m.len() + 1);
                    let word = (next() as u32).to_le_bytes();
                    m.splice(k..k, word);
                }
            }
        }
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&m))) {
            let path = std::env::temp_dir().join(format!("ember-{target}-smoke-{i}"));
            std::fs::write(&path, &m).unwrap();
            std::panic::resume_unwind(e);
        }
    }
}

#[test]
fn gguf_load() {
    replay("gguf_load", ember_tests::fuzz::gguf_load);
}

#[test]
fn sampler() {
    replay("sampler", ember_tests::fuzz::sampler);
}

#[test]
fn server_request() {
    replay("server_request", ember_tests::fuzz::server_request);
}

#[test]
fn tokenizer() {
    let path = ember_runner::model_store::default_model().unwrap_or_else(|e| panic!("{e:#}"));
    let bytes = std::fs::read(path).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let mut index = vec![0u32; Tokenizer::index_words(&g).unwrap()];
    let bpe = Tokenizer::new(&g, &mut index).unwrap();
    let spm_bytes = ember_tests::spm_vocab_gguf(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden/spm_vocab.json"),
        )
        .unwrap(),
    );
    let sg = Gguf::parse(&spm_bytes).unwrap();
    let mut sindex = vec![0u32; Tokenizer::index_words(&sg).unwrap()];
    let spm = Tokenizer::new(&sg, &mut sindex).unwrap();
    replay("tokenizer", |d| {
        ember_tests::fuzz::tokenizer(&bpe, d);
        ember_tests::fuzz::tokenizer(&spm, d);
    });
}
