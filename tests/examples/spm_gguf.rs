//! Writes a SentencePiece test vocabulary's GGUF for llama.cpp to tokenize:
//! `spm_gguf OUT.gguf` the golden vocabulary (for scripts/make_spm_golden.py),
//! `spm_gguf OUT.gguf gemma` the Gemma-3-shaped one ([`ember_tests::gemma_spm_gguf`]).

fn main() {
    let out = std::env::args()
        .nth(1)
        .expect("usage: spm_gguf OUT.gguf [gemma]");
    let bytes = if std::env::args().nth(2).as_deref() == Some("gemma") {
        ember_tests::gemma_spm_gguf()
    } else {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/spm_vocab.json");
        let vocab = std::fs::read_to_string(dir).expect("golden/spm_vocab.json");
        ember_tests::spm_vocab_gguf(&vocab)
    };
    std::fs::write(out, bytes).expect("write");
}
