//! Writes the SentencePiece test vocabulary's GGUF (for scripts/make_spm_golden.py).

fn main() {
    let out = std::env::args().nth(1).expect("usage: spm_gguf OUT.gguf");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/spm_vocab.json");
    let vocab = std::fs::read_to_string(dir).expect("golden/spm_vocab.json");
    std::fs::write(out, ember_tests::spm_vocab_gguf(&vocab)).expect("write");
}
