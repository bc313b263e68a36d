//! Replays every fuzz seed (`fuzz/seeds/<target>/`) and every fuzzing
//! finding kept as a regression (`fuzz/regressions/<target>/`) through the
//! fuzz targets' bodies (`ember_tests::fuzz`), so a fixed crash stays fixed.
//! `scripts/fuzz.sh` runs the fuzzers themselves.

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

fn replay(target: &str, f: impl Fn(&[u8])) {
    let cases = inputs(target);
    assert!(!cases.is_empty(), "no seeds for {target}");
    for (path, data) in cases {
        eprintln!("{target}: {}", path.display());
        f(&data);
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
