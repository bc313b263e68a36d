//! A deterministic random-weights llama GGUF of any shape (with the `alloc`
//! feature): what `ember synth` writes, and what the firmware's build script
//! embeds.
//!
//! It exists for three jobs: sizing a board before a model is trained, tests
//! that need a model small enough to search exhaustively, and firmware images
//! that must fit in a microcontroller's flash. Weights come from PCG32 (the
//! sampler's PRNG), uniform in ±1/√fan-in, so activations keep their scale
//! through the layers; norms are 1 plus a little noise. The same arguments
//! always give the same bytes, on every host.
//!
//! With a vocabulary of at least 257 tokens the file also carries a GPT-2
//! byte-level tokenizer: `<|endoftext|>`, the 256 byte tokens, then merges
//! learnt from a paragraph of English until the vocabulary is full.

#![forbid(unsafe_code)]

extern crate alloc;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::error::{Cap, MetaKey};
use crate::gguf_writer::GgufWriter;
use crate::quant::{self, GgmlType};
use crate::sampling::Pcg32;
use crate::{Error, Result};

/// The shape and type of a synthetic model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthConfig {
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub ctx: usize,
    pub seed: u64,
    /// Type of the weight matrices. Matrices whose rows are not a whole number
    /// of 32-element blocks fall back to F16; norms are F32.
    pub ty: GgmlType,
}

/// Most parameters synth makes.
pub const MAX_PARAMS: u64 = 1 << 31;

impl SynthConfig {
    /// Each size with the metadata key it is written to and the largest value
    /// synth makes; every size is at least 1.
    pub fn sizes(&self) -> [(MetaKey, usize, usize); 7] {
        [
            (MetaKey::EmbeddingLength, self.dim, 1 << 14),
            (MetaKey::BlockCount, self.layers, 128),
            (MetaKey::HeadCount, self.heads, 256),
            (MetaKey::HeadCountKv, self.kv_heads, 256),
            (MetaKey::FeedForwardLength, self.ffn, 1 << 16),
            (MetaKey::VocabSize, self.vocab, 1 << 18),
            (MetaKey::ContextLength, self.ctx, 1 << 20),
        ]
    }

    /// Weights and embeddings: what [`MAX_PARAMS`] caps.
    pub fn params(&self) -> u64 {
        let [dim, layers, heads, kv_heads, ffn, vocab] = [
            self.dim,
            self.layers,
            self.heads,
            self.kv_heads,
            self.ffn,
            self.vocab,
        ]
        .map(|v| v as u64);
        vocab * dim + layers * (2 * dim * dim + 2 * dim * dim / heads * kv_heads + 3 * dim * ffn)
    }

    /// Checks the shape: `BadMetadata` names the key of a size out of
    /// [`SynthConfig::sizes`]' range, `head_count` when `dim` is not a multiple
    /// of `heads`, `head_count_kv` when `heads` is not a multiple of
    /// `kv_heads`, `rope.dimension_count` for an odd head size; past
    /// [`MAX_PARAMS`], `CapExceeded` with the parameter count.
    pub fn check(&self) -> Result<()> {
        for (key, v, max) in self.sizes() {
            if v == 0 || v > max {
                return Err(Error::BadMetadata { key });
            }
        }
        if !self.dim.is_multiple_of(self.heads) {
            return Err(Error::BadMetadata {
                key: MetaKey::HeadCount,
            });
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::BadMetadata {
                key: MetaKey::HeadCountKv,
            });
        }
        if !(self.dim / self.heads).is_multiple_of(2) {
            return Err(Error::BadMetadata {
                key: MetaKey::RopeDimensionCount,
            });
        }
        let params = self.params();
        if params > MAX_PARAMS {
            return Err(Error::CapExceeded {
                what: Cap::TensorElements,
                found: params,
                cap: MAX_PARAMS,
            });
        }
        Ok(())
    }
}

struct Rng(Pcg32);

impl Rng {
    /// Uniform in [-a, a).
    fn uniform(&mut self, a: f32) -> f32 {
        (self.0.next_f32() * 2.0 - 1.0) * a
    }
}

/// The GPT-2 character for each byte (as in the tokenizer).
fn gpt2_char(b: u8) -> char {
    let printable = |x: u32| matches!(x, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b as u32) {
        return b as char;
    }
    let n = (0..b as u32).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap_or('?')
}

const TEXT: &str = "The quick brown fox jumps over the lazy dog. Once upon a time there was a \
little robot who lived in a small house at the edge of the forest. Every morning the robot \
watered the flowers, read the news and counted the birds that sang in the trees. In the \
evening it charged its battery and dreamt of the stars, the sea and the mountains far away.";

/// Tokens, types and merges of a byte-level vocabulary of `vocab` tokens.
fn vocabulary(vocab: usize) -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens = vec!["<|endoftext|>".to_string()];
    let mut types = vec![3];
    for b in 0..=255u8 {
        tokens.push(gpt2_char(b).to_string());
        types.push(1);
    }
    // Words as GPT-2 spells them (a leading space joins the word).
    let mut words: Vec<Vec<String>> = Vec::new();
    for (i, w) in TEXT.split(' ').enumerate() {
        let w = if i == 0 {
            w.to_string()
        } else {
            format!(" {w}")
        };
        words.push(w.bytes().map(|b| gpt2_char(b).to_string()).collect());
    }
    let mut merges = Vec::new();
    let mut known: BTreeSet<String> = tokens.iter().cloned().collect();
    while tokens.len() < vocab {
        let mut counts: BTreeMap<(String, String), usize> = Default::default();
        for w in &words {
            for p in w.windows(2) {
                *counts.entry((p[0].clone(), p[1].clone())).or_default() += 1;
            }
        }
        let best = counts
            .iter()
            .filter(|((a, b), _)| !known.contains(&format!("{a}{b}")))
            .max_by(|x, y| x.1.cmp(y.1).then(y.0.cmp(x.0)))
            .map(|(k, _)| k.clone());
        let Some((a, b)) = best else { break };
        let ab = format!("{a}{b}");
        for w in &mut words {
            let mut i = 0;
            while i + 1 < w.len() {
                if w[i] == a && w[i + 1] == b {
                    w[i] = ab.clone();
                    w.remove(i + 1);
                }
                i += 1;
            }
        }
        merges.push(format!("{a} {b}"));
        known.insert(ab.clone());
        tokens.push(ab);
        types.push(1);
    }
    while tokens.len() < vocab {
        tokens.push(format!("<unused{}>", tokens.len()));
        types.push(5);
    }
    (tokens, types, merges)
}

/// The GGUF bytes of the synthetic model (after [`SynthConfig::check`]).
pub fn synth(c: &SynthConfig) -> Result<Vec<u8>> {
    c.check()?;
    let mut rng = Rng(Pcg32::new(c.seed, 0x05ee_d0fe_3be7));
    let head_dim = c.dim / c.heads;
    let kv_dim = head_dim * c.kv_heads;
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "llama")
        .add_str("general.name", "ember synth")
        .add_u32("general.file_type", c.ty.file_type())
        .add_u32("llama.context_length", c.ctx as u32)
        .add_u32("llama.embedding_length", c.dim as u32)
        .add_u32("llama.block_count", c.layers as u32)
        .add_u32("llama.feed_forward_length", c.ffn as u32)
        .add_u32("llama.attention.head_count", c.heads as u32)
        .add_u32("llama.attention.head_count_kv", c.kv_heads as u32)
        .add_u32("llama.rope.dimension_count", head_dim as u32)
        .add_f32("llama.rope.freq_base", 10_000.0)
        .add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .add_u32("llama.vocab_size", c.vocab as u32);
    if c.vocab > 256 {
        let (tokens, types, merges) = vocabulary(c.vocab);
        let t: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let m: Vec<&str> = merges.iter().map(String::as_str).collect();
        w.add_str("tokenizer.ggml.model", "gpt2")
            .add_str("tokenizer.ggml.pre", "gpt-2")
            .add_str_array("tokenizer.ggml.tokens", &t)
            .add_i32_array("tokenizer.ggml.token_type", &types)
            .add_str_array("tokenizer.ggml.merges", &m)
            .add_u32("tokenizer.ggml.bos_token_id", 0)
            .add_u32("tokenizer.ggml.eos_token_id", 0)
            .add_bool("tokenizer.ggml.add_bos_token", false);
    }
    let mut matrix = |w: &mut GgufWriter, name: &str, cols: usize, rows: usize| {
        // sqrtf is correctly rounded, as std's `f32::sqrt` is: the same bits.
        let a = 1.0 / libm::sqrtf(cols as f32);
        let data: Vec<f32> = (0..cols * rows).map(|_| rng.uniform(a)).collect();
        let ty = if !cols.is_multiple_of(c.ty.block_len()) && c.ty != GgmlType::F32 {
            GgmlType::F16
        } else {
            c.ty
        };
        w.add_tensor(
            name,
            &[cols as u64, rows as u64],
            ty,
            quant::quantize_rows(&data, cols, ty).unwrap_or_default(),
        );
    };
    let norm = |w: &mut GgufWriter, name: &str, n: usize, rng: &mut Rng| {
        let data: Vec<f32> = (0..n).map(|_| 1.0 + rng.uniform(0.1)).collect();
        let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.add_tensor(name, &[n as u64], GgmlType::F32, bytes);
    };
    matrix(&mut w, "token_embd.weight", c.dim, c.vocab);
    for l in 0..c.layers {
        let p = |t: &str| format!("blk.{l}.{t}.weight");
        matrix(&mut w, &p("attn_q"), c.dim, c.dim);
        matrix(&mut w, &p("attn_k"), c.dim, kv_dim);
        matrix(&mut w, &p("attn_v"), c.dim, kv_dim);
        matrix(&mut w, &p("attn_output"), c.dim, c.dim);
        matrix(&mut w, &p("ffn_gate"), c.dim, c.ffn);
        matrix(&mut w, &p("ffn_up"), c.dim, c.ffn);
        matrix(&mut w, &p("ffn_down"), c.ffn, c.dim);
    }
    let mut nrng = Rng(Pcg32::new(c.seed, 0x0e77_5eed));
    for l in 0..c.layers {
        norm(
            &mut w,
            &format!("blk.{l}.attn_norm.weight"),
            c.dim,
            &mut nrng,
        );
        norm(
            &mut w,
            &format!("blk.{l}.ffn_norm.weight"),
            c.dim,
            &mut nrng,
        );
    }
    norm(&mut w, "output_norm.weight", c.dim, &mut nrng);
    Ok(w.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Gguf;
    use crate::model::Llama;
    use crate::tokenizer::Tokenizer;

    fn tiny(vocab: usize, ty: GgmlType) -> SynthConfig {
        SynthConfig {
            dim: 64,
            layers: 2,
            heads: 8,
            kv_heads: 4,
            ffn: 172,
            vocab,
            ctx: 128,
            seed: 1,
            ty,
        }
    }

    #[test]
    fn deterministic_and_loadable() {
        for ty in [GgmlType::Q8_0, GgmlType::F32, GgmlType::Q4_1] {
            let a = synth(&tiny(512, ty)).unwrap();
            assert_eq!(a, synth(&tiny(512, ty)).unwrap());
            let g = Gguf::parse(&a).unwrap();
            let m = Llama::from_gguf(&g).unwrap();
            assert_eq!(m.config.vocab_size, 512);
            let mut index = vec![0; Tokenizer::index_words(&g).unwrap()];
            let tok = Tokenizer::new(&g, &mut index).unwrap();
            let ids = tok.encode("the robot", Default::default()).unwrap();
            assert!(ids.len() < 9, "{ids:?}");
            assert_eq!(tok.decode(&ids, false).unwrap(), "the robot");
        }
        let small = synth(&tiny(8, GgmlType::Q8_0)).unwrap();
        assert!(Gguf::parse(&small)
            .unwrap()
            .get("tokenizer.ggml.model")
            .is_none());
    }

    #[test]
    fn bad_shapes_name_the_key() {
        let e = |c: SynthConfig| synth(&c).unwrap_err();
        let bad = |key| Error::BadMetadata { key };
        assert_eq!(
            e(SynthConfig {
                dim: 0,
                ..tiny(8, GgmlType::F32)
            }),
            bad(MetaKey::EmbeddingLength)
        );
        assert_eq!(
            e(SynthConfig {
                heads: 7,
                ..tiny(8, GgmlType::F32)
            }),
            bad(MetaKey::HeadCount)
        );
        assert_eq!(
            e(SynthConfig {
                kv_heads: 3,
                ..tiny(8, GgmlType::F32)
            }),
            bad(MetaKey::HeadCountKv)
        );
        let huge = SynthConfig {
            dim: 1 << 14,
            ffn: 1 << 16,
            layers: 128,
            ..tiny(8, GgmlType::F32)
        };
        assert_eq!(
            e(huge),
            Error::CapExceeded {
                what: Cap::TensorElements,
                found: huge.params(),
                cap: MAX_PARAMS,
            }
        );
    }
}
