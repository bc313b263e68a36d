//! The GPT-2 BPE tokenizer of the default model (SmolLM2, fetched by `ember
//! run`; `EMBER_FUZZ_MODEL` names another file) and the SentencePiece-style
//! golden vocabulary, on arbitrary text and ids (see
//! `ember_tests::fuzz::tokenizer`).
#![no_main]

use std::sync::OnceLock;

use ember_core::gguf::Gguf;
use ember_core::tokenizer::Tokenizer;

/// A tokenizer over bytes that live for the whole run; the parsed file is
/// kept beside it so that nothing is unreachable (LeakSanitizer).
struct Loaded {
    _gguf: &'static Gguf<'static>,
    tok: Tokenizer<'static>,
}

fn load(bytes: Vec<u8>) -> Loaded {
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    let g: &'static Gguf<'static> = Box::leak(Box::new(Gguf::parse(bytes).unwrap()));
    let index = Box::leak(vec![0u32; Tokenizer::index_words(g).unwrap()].into_boxed_slice());
    Loaded {
        _gguf: g,
        tok: Tokenizer::new(g, index).unwrap(),
    }
}

fn tokenizers() -> &'static [Loaded; 2] {
    static TOKS: OnceLock<[Loaded; 2]> = OnceLock::new();
    TOKS.get_or_init(|| {
        let path = match std::env::var_os("EMBER_FUZZ_MODEL") {
            Some(p) => p.into(),
            None => ember_runner::model_store::default_model().expect("the default model"),
        };
        let bpe = load(std::fs::read(path).expect("the model file"));
        let vocab = include_str!("../../tests/golden/spm_vocab.json");
        let spm = load(ember_tests::spm_vocab_gguf(vocab));
        [bpe, spm]
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for t in tokenizers() {
        ember_tests::fuzz::tokenizer(&t.tok, data);
    }
});
