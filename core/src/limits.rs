//! Caps on model shape, shared by the config and the tokenizer: a file over
//! them is refused before anything is sized. A leaf module: it imports nothing.

#![forbid(unsafe_code)]

/// Decoder layers (`*.block_count`).
pub const MAX_LAYERS: usize = 128;
/// Query or KV heads (`*.attention.head_count`, `*.attention.head_count_kv`).
pub const MAX_HEADS: usize = 1024;
/// Embedding width, and heads times head width (`*.embedding_length`).
pub const MAX_DIM: usize = 1 << 16;
/// Feed-forward width (`*.feed_forward_length`).
pub const MAX_FFN: usize = 1 << 18;
/// Vocabulary entries (`tokenizer.ggml.tokens`).
pub const MAX_VOCAB: usize = 1 << 21;
