//! Hyperparameters from `llama.*` GGUF metadata, checked against caps.

#![forbid(unsafe_code)]

use crate::error::{Cap, Error, MetaKey, Result};
use crate::gguf::Gguf;

pub use crate::limits;

/// A llama-family decoder's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Config {
    /// Residual stream width (`llama.embedding_length`).
    pub dim: usize,
    /// Decoder blocks (`llama.block_count`).
    pub n_layers: usize,
    /// Query heads (`llama.attention.head_count`).
    pub n_heads: usize,
    /// Key/value heads (`llama.attention.head_count_kv`, default `n_heads`).
    pub n_kv_heads: usize,
    /// Per-head width (`llama.attention.key_length`, default `dim / n_heads`).
    pub head_dim: usize,
    /// SwiGLU hidden width (`llama.feed_forward_length`).
    pub ffn_dim: usize,
    /// Vocabulary size (rows of `token_embd.weight`; `llama.vocab_size` must agree).
    pub vocab_size: usize,
    /// Trained context (`llama.context_length`), informational.
    pub context_length: usize,
    /// RoPE base frequency (`llama.rope.freq_base`, default 10000).
    pub rope_base: f32,
    /// Dimensions rotated per head (`llama.rope.dimension_count`, default `head_dim`).
    pub rope_dim: usize,
    /// RMSNorm epsilon (`llama.attention.layer_norm_rms_epsilon`, default 1e-5).
    pub rms_eps: f32,
}

fn get_usize(g: &Gguf, key: MetaKey) -> Result<Option<usize>> {
    match g.get(key.as_str()) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .map(Some)
            .ok_or(Error::BadMetadata { key }),
    }
}

fn require(g: &Gguf, key: MetaKey) -> Result<usize> {
    get_usize(g, key)?.ok_or(Error::MissingMetadata { key })
}

fn capped(v: usize, what: Cap, cap: usize, key: MetaKey) -> Result<usize> {
    if v == 0 {
        return Err(Error::BadMetadata { key });
    }
    if v > cap {
        return Err(Error::CapExceeded {
            what,
            found: v as u64,
            cap: cap as u64,
        });
    }
    Ok(v)
}

impl Config {
    /// Reads and checks the config of a llama-architecture file.
    pub fn from_gguf(g: &Gguf) -> Result<Config> {
        let arch = g
            .get(MetaKey::Architecture.as_str())
            .ok_or(Error::MissingMetadata {
                key: MetaKey::Architecture,
            })?
            .as_str()
            .ok_or(Error::BadMetadata {
                key: MetaKey::Architecture,
            })?;
        if arch != "llama" {
            return Err(Error::UnsupportedArchitecture);
        }
        use limits::*;
        let dim = capped(
            require(g, MetaKey::EmbeddingLength)?,
            Cap::Dimension,
            MAX_DIM,
            MetaKey::EmbeddingLength,
        )?;
        let n_layers = capped(
            require(g, MetaKey::BlockCount)?,
            Cap::Layers,
            MAX_LAYERS,
            MetaKey::BlockCount,
        )?;
        let n_heads = capped(
            require(g, MetaKey::HeadCount)?,
            Cap::Heads,
            MAX_HEADS,
            MetaKey::HeadCount,
        )?;
        let n_kv_heads = match get_usize(g, MetaKey::HeadCountKv)? {
            Some(v) => capped(v, Cap::Heads, MAX_HEADS, MetaKey::HeadCountKv)?,
            None => n_heads,
        };
        if n_heads % n_kv_heads != 0 {
            return Err(Error::BadMetadata {
                key: MetaKey::HeadCountKv,
            });
        }
        let head_dim = match get_usize(g, MetaKey::KeyLength)? {
            Some(v) => capped(v, Cap::Dimension, MAX_DIM, MetaKey::KeyLength)?,
            None if dim % n_heads == 0 => dim / n_heads,
            None => {
                return Err(Error::BadMetadata {
                    key: MetaKey::HeadCount,
                })
            }
        };
        if head_dim % 2 != 0 || n_heads * head_dim > MAX_DIM {
            return Err(Error::BadMetadata {
                key: MetaKey::KeyLength,
            });
        }
        let ffn_dim = capped(
            require(g, MetaKey::FeedForwardLength)?,
            Cap::Dimension,
            MAX_FFN,
            MetaKey::FeedForwardLength,
        )?;
        let context_length = get_usize(g, MetaKey::ContextLength)?.unwrap_or(0);
        let rope_dim = match get_usize(g, MetaKey::RopeDimensionCount)? {
            Some(v) if v > 0 && v <= head_dim && v % 2 == 0 => v,
            Some(_) => {
                return Err(Error::BadMetadata {
                    key: MetaKey::RopeDimensionCount,
                })
            }
            None => head_dim,
        };
        let rope_base = get_f32(g, MetaKey::RopeFreqBase, 10_000.0)?;
        if !(rope_base.is_finite() && rope_base > 1.0) {
            return Err(Error::BadMetadata {
                key: MetaKey::RopeFreqBase,
            });
        }
        let rms_eps = get_f32(g, MetaKey::RmsEpsilon, 1e-5)?;
        if !(rms_eps.is_finite() && rms_eps >= 0.0) {
            return Err(Error::BadMetadata {
                key: MetaKey::RmsEpsilon,
            });
        }

        // The vocabulary is the embedding's row count; metadata, if any, must agree.
        let embd = g.tensor("token_embd.weight").ok_or(Error::MissingTensor {
            kind: crate::error::TensorKind::TokenEmbd,
            layer: 0,
        })?;
        let vocab_size = usize::try_from(embd.n_rows()).unwrap_or(usize::MAX);
        if vocab_size > MAX_VOCAB {
            return Err(Error::CapExceeded {
                what: Cap::Vocabulary,
                found: vocab_size as u64,
                cap: MAX_VOCAB as u64,
            });
        }
        if let Some(v) = get_usize(g, MetaKey::VocabSize)? {
            if v != vocab_size {
                return Err(Error::BadMetadata {
                    key: MetaKey::VocabSize,
                });
            }
        }

        Ok(Config {
            dim,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim,
            vocab_size,
            context_length,
            rope_base,
            rope_dim,
            rms_eps,
        })
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

fn get_f32(g: &Gguf, key: MetaKey, default: f32) -> Result<f32> {
    match g.get(key.as_str()) {
        None => Ok(default),
        Some(v) => v.as_f32().ok_or(Error::BadMetadata { key }),
    }
}
