//! A deterministic random-weights GGUF of any shape and family (with the
//! `alloc` feature): what `ember synth` writes, and what the firmware's
//! build script embeds. [`synth`] writes a llama file; [`synth_family`]
//! any family the core runs ([`Family`]), so each is tested at small and
//! realistic shapes.
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

use crate::arch::Arch;
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
/// The families [`synth_family`] writes: each [`Arch`], and Llama 3 (a
/// `llama` file with Llama 3's RoPE frequency factors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Llama3,
    Qwen2,
    Qwen3,
    Phi3,
    Gemma3,
}

impl Family {
    pub const ALL: [Family; 6] = [
        Family::Llama,
        Family::Llama3,
        Family::Qwen2,
        Family::Qwen3,
        Family::Phi3,
        Family::Gemma3,
    ];

    /// `llama`, `llama3`, `qwen2`, `qwen3`, `phi3` or `gemma3`.
    pub const fn name(self) -> &'static str {
        match self {
            Family::Llama3 => "llama3",
            f => f.arch().name(),
        }
    }

    pub fn from_name(name: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The architecture the file declares.
    pub const fn arch(self) -> Arch {
        match self {
            Family::Llama | Family::Llama3 => Arch::Llama,
            Family::Qwen2 => Arch::Qwen2,
            Family::Qwen3 => Arch::Qwen3,
            Family::Phi3 => Arch::Phi3,
            Family::Gemma3 => Arch::Gemma3,
        }
    }

    /// The RoPE base the family's models use.
    const fn rope_base(self) -> f32 {
        match self {
            Family::Llama | Family::Phi3 => 10_000.0,
            Family::Llama3 => 500_000.0,
            Family::Qwen2 | Family::Qwen3 | Family::Gemma3 => 1_000_000.0,
        }
    }
}

/// What a family's file has besides a llama file's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyOptions {
    pub family: Family,
    /// Per-head width (0: `dim / heads`), written as `key_length`.
    pub head_dim: usize,
    /// Gemma 3's sliding window (positions).
    pub window: usize,
}

impl FamilyOptions {
    /// A family with `dim / heads` heads and, for Gemma 3, a window of 512.
    pub const fn of(family: Family) -> FamilyOptions {
        FamilyOptions {
            family,
            head_dim: 0,
            window: 512,
        }
    }
}

/// Llama 3's frequency factors for `rope_dim` rotated dimensions at
/// `base`: factor 8 for wavelengths past the original context of 8192
/// divided by the low-frequency factor 1, 1 below it divided by the
/// high-frequency factor 4, and a smooth blend between (as the reference
/// converter writes `rope_freqs`).
pub fn llama3_rope_factors(base: f32, rope_dim: usize) -> Vec<f32> {
    let (factor, low, high, orig) = (8.0f64, 1.0f64, 4.0f64, 8192.0f64);
    let (low_wavelen, high_wavelen) = (orig / low, orig / high);
    (0..rope_dim / 2)
        .map(|i| {
            let freq = 1.0 / libm::pow(base as f64, (2 * i) as f64 / rope_dim as f64);
            let wavelen = 2.0 * core::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (orig / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

/// A llama file (see the module text).
pub fn synth(c: &SynthConfig) -> Result<Vec<u8>> {
    synth_family(c, &FamilyOptions::of(Family::Llama))
}

/// A file of `f`'s family. A llama file is exactly what [`synth`] writes;
/// the others add their own tensors from a PRNG stream of their own.
pub fn synth_family(c: &SynthConfig, f: &FamilyOptions) -> Result<Vec<u8>> {
    c.check()?;
    let family = f.family;
    let head_dim = if f.head_dim == 0 {
        c.dim / c.heads
    } else {
        f.head_dim
    };
    let bad = |key| Error::BadHyperparameter {
        arch: family.arch(),
        key,
    };
    if head_dim % 2 != 0 || head_dim > 1 << 12 {
        return Err(bad(MetaKey::KeyLength));
    }
    if family == Family::Phi3 && head_dim * c.heads != c.dim {
        // Phi-3's output projection is square.
        return Err(bad(MetaKey::KeyLength));
    }
    if family == Family::Gemma3 && (f.window == 0 || f.window > c.ctx) {
        return Err(bad(MetaKey::SlidingWindow));
    }
    let mut rng = Rng(Pcg32::new(c.seed, 0x05ee_d0fe_3be7));
    let q_dim = head_dim * c.heads;
    let kv_dim = head_dim * c.kv_heads;
    let arch = family.arch();
    let key = |k: MetaKey| k.key(arch);
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", arch.name())
        .add_str("general.name", "ember synth")
        .add_u32("general.file_type", c.ty.file_type())
        .add_u32(&key(MetaKey::ContextLength), c.ctx as u32)
        .add_u32(&key(MetaKey::EmbeddingLength), c.dim as u32)
        .add_u32(&key(MetaKey::BlockCount), c.layers as u32)
        .add_u32(&key(MetaKey::FeedForwardLength), c.ffn as u32)
        .add_u32(&key(MetaKey::HeadCount), c.heads as u32)
        .add_u32(&key(MetaKey::HeadCountKv), c.kv_heads as u32)
        .add_u32(&key(MetaKey::RopeDimensionCount), head_dim as u32)
        .add_f32(&key(MetaKey::RopeFreqBase), family.rope_base())
        .add_f32(
            &key(MetaKey::RmsEpsilon),
            if family == Family::Gemma3 { 1e-6 } else { 1e-5 },
        )
        .add_u32(&key(MetaKey::VocabSize), c.vocab as u32);
    if family != Family::Llama {
        w.add_u32(&key(MetaKey::KeyLength), head_dim as u32)
            .add_u32(&key(MetaKey::ValueLength), head_dim as u32);
    }
    if family == Family::Gemma3 {
        w.add_u32(&key(MetaKey::SlidingWindow), f.window as u32);
    }
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
        if family == Family::Phi3 {
            matrix(&mut w, &p("attn_qkv"), c.dim, q_dim + 2 * kv_dim);
        } else {
            matrix(&mut w, &p("attn_q"), c.dim, q_dim);
            matrix(&mut w, &p("attn_k"), c.dim, kv_dim);
            matrix(&mut w, &p("attn_v"), c.dim, kv_dim);
        }
        matrix(&mut w, &p("attn_output"), q_dim, c.dim);
        if family == Family::Phi3 {
            matrix(&mut w, &p("ffn_up"), c.dim, 2 * c.ffn);
        } else {
            matrix(&mut w, &p("ffn_gate"), c.dim, c.ffn);
            matrix(&mut w, &p("ffn_up"), c.dim, c.ffn);
        }
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

    // What the other families add, from a stream of their own.
    let mut frng = Rng(Pcg32::new(c.seed, 0x0fa3_11e5));
    let vector = |w: &mut GgufWriter, name: &str, data: &[f32]| {
        let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.add_tensor(name, &[data.len() as u64], GgmlType::F32, bytes);
    };
    for l in 0..c.layers {
        let p = |t: &str| format!("blk.{l}.{t}");
        match family {
            Family::Qwen2 => {
                for (t, n) in [("attn_q", q_dim), ("attn_k", kv_dim), ("attn_v", kv_dim)] {
                    let b: Vec<f32> = (0..n).map(|_| frng.uniform(0.5)).collect();
                    vector(&mut w, &format!("{}.bias", p(t)), &b);
                }
            }
            Family::Qwen3 | Family::Gemma3 => {
                for t in ["attn_q_norm", "attn_k_norm"] {
                    norm(&mut w, &format!("{}.weight", p(t)), head_dim, &mut frng);
                }
                if family == Family::Gemma3 {
                    for t in ["post_attention_norm", "post_ffw_norm"] {
                        norm(&mut w, &format!("{}.weight", p(t)), c.dim, &mut frng);
                    }
                }
            }
            Family::Llama | Family::Llama3 | Family::Phi3 => {}
        }
    }
    if family == Family::Llama3 {
        let factors = llama3_rope_factors(family.rope_base(), head_dim);
        vector(&mut w, "rope_freqs.weight", &factors);
    }
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
