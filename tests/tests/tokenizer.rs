//! The tokenizer against llama.cpp's ids on SmolLM2 (`golden/tokenizer_cases.json`),
//! round trips, streaming decode, and long inputs.

use std::path::PathBuf;

use ember_core::gguf::Gguf;
use ember_core::quant::GgmlType;
use ember_core::tokenizer::{EncodeOptions, StreamDecoder, Tokenizer};
use serde_json::Value;

fn golden(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden JSON")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// The SmolLM2 file's bytes (the tokenizer is the same in every type; Q8_0 is
/// the file the golden ids were made with).
fn smollm_bytes() -> &'static [u8] {
    use std::sync::OnceLock;
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let path = ember_runner::model_store::converted(GgmlType::Q8_0)
            .unwrap_or_else(|e| panic!("model: {e:#}"));
        std::fs::read(path).expect("read model")
    })
}

fn smollm() -> &'static Tokenizer<'static> {
    use std::sync::OnceLock;
    static TOK: OnceLock<Tokenizer<'static>> = OnceLock::new();
    TOK.get_or_init(|| {
        let g: &'static Gguf<'static> = Box::leak(Box::new(Gguf::parse(smollm_bytes()).unwrap()));
        let index = vec![0u32; Tokenizer::index_words(g).unwrap()].leak();
        Tokenizer::new(g, index).unwrap()
    })
}

fn enc(t: &Tokenizer, s: &str, special: bool) -> Vec<u32> {
    t.encode(
        s,
        EncodeOptions {
            add_special: true,
            parse_special: special,
        },
    )
    .unwrap()
}

#[test]
fn golden_cases_match_llama_cpp() {
    let g = golden("tokenizer_cases.json");
    let t = smollm();
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 20);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        for (special, key) in [(false, "ids_special_false"), (true, "ids_special_true")] {
            let got = enc(t, text, special);
            assert_eq!(got, ids(&c[key]), "{text:?} special={special}");
            let detok = c[if special {
                "detok_special_true"
            } else {
                "detok_special_false"
            }]
            .as_str()
            .unwrap();
            assert_eq!(t.decode(&got, special).unwrap(), detok, "{text:?}");
            assert_eq!(t.decode(&got, true).unwrap(), text, "round trip {text:?}");
        }
    }
}
