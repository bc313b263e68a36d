//! Integration tests live in `tests/`; golden data in `golden/`. This library
//! holds builders the tests and the golden-data scripts share.

use ember_core::gguf_writer::GgufWriter;

pub mod fuzz;
pub mod golden;

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

/// Tokens in [`gemma_spm_gguf`]'s vocabulary: Gemma 3's 262,144.
pub const GEMMA_VOCAB: usize = 262_144;

/// A SentencePiece vocabulary shaped like Gemma 3's GGUF (`tokenizer.ggml.model
/// = llama`, 262,144 tokens, `add_space_prefix` false, byte fallback, control
/// tokens and thousands of user-defined ones), small in what it can merge:
/// `<pad> <eos> <bos> <unk> <mask>`, `<start_of_turn> <end_of_turn>`, 256
/// `<0xXX>` bytes, a few dozen scored pieces, user-defined `<table>`, `</table>`
/// and `<unused0>`…, then unreachable filler pieces up to the full size.
pub fn gemma_spm_gguf() -> Vec<u8> {
    const PIECES: [(&str, f32); 28] = [
        ("▁", -1.0),
        ("▁▁", -2.0),
        ("\n", -1.5),
        ("\n\n", -3.0),
        ("H", -4.0),
        ("e", -4.0),
        ("l", -4.0),
        ("o", -4.0),
        ("w", -4.0),
        ("r", -4.0),
        ("d", -4.0),
        ("u", -4.0),
        ("s", -4.0),
        ("i", -4.0),
        ("ll", -5.0),
        ("He", -5.5),
        ("llo", -6.0),
        ("Hello", -6.5),
        ("▁Hello", -7.0),
        ("▁w", -5.2),
        ("or", -5.1),
        ("ld", -5.3),
        ("orld", -6.2),
        ("world", -6.8),
        ("▁world", -6.9),
        ("us", -5.4),
        ("er", -5.4),
        ("user", -6.1),
    ];
    let mut texts: Vec<String> = Vec::with_capacity(GEMMA_VOCAB);
    let mut scores = Vec::with_capacity(GEMMA_VOCAB);
    let mut types = Vec::with_capacity(GEMMA_VOCAB);
    let mut push = |t: String, s: f32, ty: i32| {
        texts.push(t);
        scores.push(s);
        types.push(ty);
    };
    for (t, ty) in [
        ("<pad>", 3),
        ("<eos>", 3),
        ("<bos>", 3),
        ("<unk>", 2),
        ("<mask>", 4),
        ("<start_of_turn>", 3),
        ("<end_of_turn>", 3),
    ] {
        push(t.to_string(), 0.0, ty);
    }
    for b in 0..=255u32 {
        push(format!("<0x{b:02X}>"), 0.0, 6);
    }
    for (t, s) in PIECES {
        push(t.to_string(), s, 1);
    }
    push("<table>".to_string(), 0.0, 4);
    push("</table>".to_string(), 0.0, 4);
    for i in 0..6000 {
        push(format!("<unused{i}>"), 0.0, 4);
    }
    let used = 7 + 256 + PIECES.len() + 2 + 6000;
    for i in 0..GEMMA_VOCAB - used {
        push(format!("▁filler{i}"), -1e6 - i as f32, 1);
    }
    let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "gemma3")
        .add_str("general.name", "ember gemma-shaped spm test vocabulary")
        .add_str("tokenizer.ggml.model", "llama")
        .add_str("tokenizer.ggml.pre", "default")
        .add_str_array("tokenizer.ggml.tokens", &refs)
        .add_f32_array("tokenizer.ggml.scores", &scores)
        .add_i32_array("tokenizer.ggml.token_type", &types)
        .add_u32("tokenizer.ggml.bos_token_id", 2)
        .add_u32("tokenizer.ggml.eos_token_id", 1)
        .add_u32("tokenizer.ggml.unknown_token_id", 3)
        .add_u32("tokenizer.ggml.padding_token_id", 0)
        .add_bool("tokenizer.ggml.add_bos_token", true)
        .add_bool("tokenizer.ggml.add_eos_token", false)
        .add_bool("tokenizer.ggml.add_space_prefix", false);
    w.to_bytes()
}
