//! Integration tests live in `tests/`; golden data in `golden/`. This library
//! holds builders the tests and the golden-data scripts share.

use ember_core::gguf_writer::GgufWriter;

pub mod fuzz;

/// The GGUF of a SentencePiece-style vocabulary (`golden/spm_vocab.json`:
/// `[piece, score, token type]` triples) with llama hyper-parameters and no
/// tensors, as llama.cpp loads for `vocab_only`.
pub fn spm_vocab_gguf(vocab_json: &str) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_str(vocab_json).expect("vocab JSON");
    let pieces = v["pieces"].as_array().expect("pieces");
    let texts: Vec<&str> = pieces.iter().map(|p| p[0].as_str().unwrap()).collect();
    let scores: Vec<f32> = pieces
        .iter()
        .map(|p| p[1].as_f64().unwrap() as f32)
        .collect();
    let types: Vec<i32> = pieces
        .iter()
        .map(|p| p[2].as_i64().unwrap() as i32)
        .collect();
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "llama")
        .add_str("general.name", "ember spm test vocabulary")
        .add_u32("llama.context_length", 256)
        .add_u32("llama.embedding_length", 64)
        .add_u32("llama.block_count", 1)
        .add_u32("llama.feed_forward_length", 128)
        .add_u32("llama.attention.head_count", 4)
        .add_u32("llama.attention.head_count_kv", 4)
        .add_u32("llama.rope.dimension_count", 16)
        .add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .add_u32("llama.vocab_size", texts.len() as u32)
        .add_str("tokenizer.ggml.model", "llama")
        .add_str_array("tokenizer.ggml.tokens", &texts)
        .add_f32_array("tokenizer.ggml.scores", &scores)
        .add_i32_array("tokenizer.ggml.token_type", &types)
        .add_u32("tokenizer.ggml.unknown_token_id", 0)
        .add_u32("tokenizer.ggml.bos_token_id", 1)
        .add_u32("tokenizer.ggml.eos_token_id", 2)
        .add_bool("tokenizer.ggml.add_bos_token", true)
        .add_bool("tokenizer.ggml.add_eos_token", false)
        .add_bool("tokenizer.ggml.add_space_prefix", true);
    w.to_bytes()
}
