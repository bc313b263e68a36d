//! Tokenizers read from GGUF metadata (`tokenizer.ggml.*`), with no allocator.
//!
//! Two vocabulary kinds:
//! - **GPT-2 byte-level BPE** (`model = gpt2`: SmolLM2, Llama 3, ...): text is
//!   cut into words by the [`PreTokenizer`] named in `tokenizer.ggml.pre`, each
//!   word's bytes become one symbol each, and adjacent symbols merge by merge
//!   rank (lowest first, leftmost on ties).
//! - **SentencePiece-style BPE** (`model = llama`: llama2.c, TinyLlama): spaces
//!   become `▁`, a space is prefixed when `add_space_prefix`, characters merge
//!   by the score of the merged piece (highest first), and characters with no
//!   piece fall back to `<0xXX>` byte tokens.
//!
//! Control tokens (`<|im_start|>`, `<s>`) are recognised in the input only
//! when [`EncodeOptions::parse_special`] asks; user-defined tokens always are.
//!
//! # Memory
//! The tokenizer borrows the GGUF bytes and one caller buffer of `u32` words
//! (its index: token offsets, a token hash table, a merge table, byte tokens
//! and the special-token list), sized by [`Tokenizer::index_words`] before
//! anything is built; every table is proportional to arrays present in the
//! file, never to a count the file merely claims. Encoding needs scratch words
//! proportional to the longest word ([`Tokenizer::scratch_words`]); decoding
//! needs nothing and streams ([`StreamDecoder`]).
//!
//! Merging uses a binary heap with lazy deletion, so a word of `n` bytes costs
//! `O(n log n)`: a megabyte of text with no spaces is not quadratic.

mod bpe;
pub mod pretok;
mod unicode;
mod unicode_tables;
pub mod utf8;

pub use pretok::PreTokenizer;
pub use utf8::Utf8Stream;

use crate::error::{Cap, MetaKey};
use crate::gguf::{Gguf, Value, ValueType};
use crate::{Error, Result};

use bpe::{Merger, NONE};

/// Caps on what a vocabulary may hold.
pub mod limits {
    /// Tokens in a vocabulary (the model's cap too).
    pub const MAX_VOCAB: usize = crate::limits::MAX_VOCAB;
    /// BPE merges (real vocabularies have under 300k).
    pub const MAX_MERGES: usize = 1 << 21;
    /// Bytes of all token texts together (offsets are stored as `u32`).
    pub const MAX_VOCAB_BYTES: usize = (u32::MAX - 16) as usize;
}

/// Which algorithm the vocabulary was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TokenizerModel {
    /// GPT-2 byte-level BPE with the named pre-tokenizer.
    Bpe(PreTokenizer),
    /// SentencePiece-style BPE over scores, with byte fallback.
    Spm,
}

/// A token's role (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_i32(v: i32) -> TokenType {
        match v {
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Normal,
        }
    }
}

/// How to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Add BOS (and EOS) when the vocabulary's metadata asks for them.
    pub add_special: bool,
    /// Recognise control tokens written in the text (`<|im_end|>`).
    pub parse_special: bool,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            add_special: true,
            parse_special: false,
        }
    }
}

/// Where encoding takes its working memory from.
pub trait Scratch {
    /// A zeroed-or-not slice of at least `words` words, or `BufferTooSmall`.
    fn take(&mut self, words: usize) -> Result<&mut [u32]>;
}

impl Scratch for &mut [u32] {
    fn take(&mut self, words: usize) -> Result<&mut [u32]> {
        let found = self.len() as u64;
        self.get_mut(..words).ok_or(Error::BufferTooSmall {
            needed: words as u64,
            found,
        })
    }
}

#[cfg(feature = "alloc")]
impl Scratch for alloc::vec::Vec<u32> {
    fn take(&mut self, words: usize) -> Result<&mut [u32]> {
        if self.len() < words {
            self.resize(words, 0);
        }
        Ok(&mut self[..words])
    }
}

/// GPT-2's byte-to-character map: printable Latin-1 bytes stand for
/// themselves, the other 68 bytes for U+0100.. in byte order.
const fn gpt2_printable(b: u32) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

const GPT2_CHAR: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut n = 0u16;
    let mut b = 0usize;
    while b < 256 {
        if gpt2_printable(b as u32) {
            t[b] = b as u16;
        } else {
            t[b] = 256 + n;
            n += 1;
        }
        b += 1;
    }
    t
};

const GPT2_NONPRINTABLE: [u8; 68] = {
    let mut t = [0u8; 68];
    let mut n = 0;
    let mut b = 0usize;
    while b < 256 {
        if !gpt2_printable(b as u32) {
            t[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    t
};

/// The byte a GPT-2 vocabulary character stands for.
fn gpt2_byte(c: char) -> Option<u8> {
    let c = c as u32;
    if c < 256 && gpt2_printable(c) {
        Some(c as u8)
    } else if (256..256 + 68).contains(&c) {
        Some(GPT2_NONPRINTABLE[(c - 256) as usize])
    } else {
        None
    }
}

/// How raw text bytes are spelled in the vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spelling {
    /// As is.
    Raw,
    /// Each byte as its GPT-2 character.
    Gpt2,
    /// Spaces as `▁` (U+2581).
    Spm,
}

impl Spelling {
    /// The vocabulary bytes for one text byte.
    #[inline]
    fn map(self, b: u8, out: &mut [u8; 3]) -> usize {
        match self {
            Spelling::Raw => {
                out[0] = b;
                1
            }
            Spelling::Gpt2 => {
                let c = GPT2_CHAR[b as usize];
                if c < 0x80 {
                    out[0] = c as u8;
                    1
                } else {
                    out[0] = 0xC0 | (c >> 6) as u8;
                    out[1] = 0x80 | (c & 0x3F) as u8;
                    2
                }
            }
            Spelling::Spm => {
                if b == b' ' {
                    *out = [0xE2, 0x96, 0x81];
                    3
                } else {
                    out[0] = b;
                    1
                }
            }
        }
    }
}

const FNV_OFFSET: u32 = 0x811C_9DC5;
const FNV_PRIME: u32 = 0x0100_0193;

/// FNV-1a over the vocabulary spelling of `parts` concatenated.
fn spelled_hash(sp: Spelling, parts: &[&[u8]]) -> u32 {
    let mut h = FNV_OFFSET;
    let mut buf = [0u8; 3];
    for part in parts {
        for &b in *part {
            let n = sp.map(b, &mut buf);
            for &m in &buf[..n] {
                h = (h ^ m as u32).wrapping_mul(FNV_PRIME);
            }
        }
    }
    h
}

/// Whether `token` is the vocabulary spelling of `parts` concatenated.
fn spelled_eq(sp: Spelling, parts: &[&[u8]], token: &[u8]) -> bool {
    let mut buf = [0u8; 3];
    let mut at = 0usize;
    for part in parts {
        for &b in *part {
            let n = sp.map(b, &mut buf);
            match token.get(at..at + n) {
                Some(t) if t == &buf[..n] => at += n,
                _ => return false,
            }
        }
    }
    at == token.len()
}

fn mix2(a: u32, b: u32) -> u32 {
    let h = a.wrapping_mul(0x9E37_79B1) ^ b.wrapping_mul(0x85EB_CA77).rotate_left(13);
    (h ^ (h >> 15)).wrapping_mul(0x2C1B_3C6D)
}

/// Table size for `n` entries: a power of two with load at most 0.8.
fn table_cap(n: usize) -> Option<usize> {
    n.checked_add(n / 4)?
        .checked_add(1)?
        .checked_next_power_of_two()
}

/// Sizes of the index parts, in words.
#[derive(Debug, Clone, Copy)]
struct Layout {
    n_vocab: usize,
    table: usize,
    merges: usize,
    specials: usize,
}

impl Layout {
    fn words(&self) -> Option<usize> {
        (self.n_vocab + 1)
            .checked_add(self.table)?
            .checked_add(self.merges.checked_mul(4)?)?
            .checked_add(256)?
            .checked_add(self.specials)
    }
}

/// The metadata arrays a tokenizer reads, validated.
#[derive(Debug, Clone, Copy)]
struct Parts<'a> {
    model: TokenizerModel,
    tokens: crate::gguf::Array<'a>,
    types: Option<&'a [u8]>,
    scores: Option<&'a [u8]>,
    merges: Option<crate::gguf::Array<'a>>,
    n_vocab: usize,
    n_special: usize,
}

fn fixed_array<'a>(
    g: &Gguf<'a>,
    key: MetaKey,
    ty: ValueType,
    n: usize,
) -> Result<Option<&'a [u8]>> {
    match g.get(key.as_str()) {
        None => Ok(None),
        Some(Value::Array(a)) if a.elem_type() == ty && a.len() == n as u64 => Ok(Some(a.raw())),
        Some(_) => Err(Error::BadMetadata { key }),
    }
}

fn token_type_at(types: Option<&[u8]>, id: usize) -> TokenType {
    match types.and_then(|t| t.get(id * 4..id * 4 + 4)) {
        Some(b) => TokenType::from_i32(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        None => TokenType::Normal,
    }
}

fn is_special_type(t: TokenType) -> bool {
    matches!(
        t,
        TokenType::Control | TokenType::UserDefined | TokenType::Unknown
    )
}

impl<'a> Parts<'a> {
    fn read(g: &Gguf<'a>) -> Result<Parts<'a>> {
        let model = match g.get(MetaKey::TokenizerModel.as_str()) {
            None => {
                return Err(Error::MissingMetadata {
                    key: MetaKey::TokenizerModel,
                })
            }
            Some(Value::Str("gpt2")) => {
                let pre = match g.get(MetaKey::TokenizerPre.as_str()) {
                    None => PreTokenizer::Default,
                    Some(Value::Str(name)) => {
                        PreTokenizer::from_name(name).ok_or(Error::UnknownPreTokenizer)?
                    }
                    Some(_) => {
                        return Err(Error::BadMetadata {
                            key: MetaKey::TokenizerPre,
                        })
                    }
                };
                TokenizerModel::Bpe(pre)
            }
            Some(Value::Str("llama")) => TokenizerModel::Spm,
            Some(Value::Str(_)) => return Err(Error::UnsupportedTokenizer),
            Some(_) => {
                return Err(Error::BadMetadata {
                    key: MetaKey::TokenizerModel,
                })
            }
        };
        let tokens = match g.get(MetaKey::TokenizerTokens.as_str()) {
            None => {
                return Err(Error::MissingMetadata {
                    key: MetaKey::TokenizerTokens,
                })
            }
            Some(Value::Array(a)) if a.elem_type() == ValueType::String && !a.is_empty() => a,
            Some(_) => {
                return Err(Error::BadMetadata {
                    key: MetaKey::TokenizerTokens,
                })
            }
        };
        if tokens.len() > limits::MAX_VOCAB as u64 {
            return Err(Error::CapExceeded {
                what: Cap::Vocabulary,
                found: tokens.len(),
                cap: limits::MAX_VOCAB as u64,
            });
        }
        if tokens.raw().len() > limits::MAX_VOCAB_BYTES {
            return Err(Error::CapExceeded {
                what: Cap::VocabularyBytes,
                found: tokens.raw().len() as u64,
                cap: limits::MAX_VOCAB_BYTES as u64,
            });
        }
        let n_vocab = tokens.len() as usize;
        let types = fixed_array(g, MetaKey::TokenizerTokenType, ValueType::I32, n_vocab)?;
        let scores = fixed_array(g, MetaKey::TokenizerScores, ValueType::F32, n_vocab)?;
        let merges = match (model, g.get(MetaKey::TokenizerMerges.as_str())) {
            (TokenizerModel::Spm, _) => None,
            (_, None) => {
                return Err(Error::MissingMetadata {
                    key: MetaKey::TokenizerMerges,
                })
            }
            (_, Some(Value::Array(a))) if a.elem_type() == ValueType::String => {
                if a.len() > limits::MAX_MERGES as u64 {
                    return Err(Error::CapExceeded {
                        what: Cap::Merges,
                        found: a.len(),
                        cap: limits::MAX_MERGES as u64,
                    });
                }
                Some(a)
            }
            (_, Some(_)) => {
                return Err(Error::BadMetadata {
                    key: MetaKey::TokenizerMerges,
                })
            }
        };
        let n_special = (0..n_vocab)
            .filter(|&i| is_special_type(token_type_at(types, i)))
            .count();
        Ok(Parts {
            model,
            tokens,
            types,
            scores,
            merges,
            n_vocab,
            n_special,
        })
    }

    fn layout(&self) -> Result<Layout> {
        let too_big = Error::CapExceeded {
            what: Cap::Vocabulary,
            found: self.n_vocab as u64,
            cap: limits::MAX_VOCAB as u64,
        };
        let n_merges = self.merges.map_or(0, |m| m.len() as usize);
        Ok(Layout {
            n_vocab: self.n_vocab,
            table: table_cap(self.n_vocab).ok_or(too_big)?,
            merges: if n_merges == 0 {
                0
            } else {
                table_cap(n_merges).ok_or(too_big)?
            },
            specials: self.n_special,
        })
    }
}

/// A vocabulary ready to encode and decode, borrowing the GGUF bytes and its index.
#[derive(Debug, Clone)]
pub struct Tokenizer<'a> {
    model: TokenizerModel,
    tokens: &'a [u8],
    types: Option<&'a [u8]>,
    scores: Option<&'a [u8]>,
    n_vocab: u32,
    offsets: &'a [u32],
    table: &'a [u32],
    merges: &'a [u32],
    byte_ids: &'a [u32],
    specials: &'a [u32],
    special_first: [u32; 8],
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    eog: heapless::Vec<u32, 8>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
}

/// Token texts that end a turn in common chat formats (as llama.cpp guesses them).
const EOG_TEXTS: [&str; 9] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "</s>",
];

impl<'a> Tokenizer<'a> {
    /// Words of index memory [`Tokenizer::new`] needs for this file.
    pub fn index_words(g: &Gguf<'a>) -> Result<usize> {
        let parts = Parts::read(g)?;
        parts.layout()?.words().ok_or(Error::CapExceeded {
            what: Cap::Vocabulary,
            found: parts.n_vocab as u64,
            cap: limits::MAX_VOCAB as u64,
        })
    }

    /// Builds the tokenizer of `g` in `index` (at least [`Tokenizer::index_words`] words).
    pub fn new(g: &Gguf<'a>, index: &'a mut [u32]) -> Result<Tokenizer<'a>> {
        let parts = Parts::read(g)?;
        let layout = parts.layout()?;
        let need = layout.words().ok_or(Error::CapExceeded {
            what: Cap::Vocabulary,
            found: parts.n_vocab as u64,
            cap: limits::MAX_VOCAB as u64,
        })?;
        if index.len() < need {
            return Err(Error::BufferTooSmall {
                needed: need as u64,
                found: index.len() as u64,
            });
        }
        let (offsets, rest) = index.split_at_mut(layout.n_vocab + 1);
        let (table, rest) = rest.split_at_mut(layout.table);
        let (merges, rest) = rest.split_at_mut(layout.merges * 4);
        let (byte_ids, rest) = rest.split_at_mut(256);
        let (specials, _) = rest.split_at_mut(layout.specials);

        // Offsets of each token's text inside the array bytes (the u64 length
        // prefix sits just before); the sentinel makes `offsets[i+1] - 8` the end.
        let raw = parts.tokens.raw();
        let mut n = 0usize;
        for v in parts.tokens.iter() {
            let Value::Str(s) = v else {
                return Err(Error::BadMetadata {
                    key: MetaKey::TokenizerTokens,
                });
            };
            let off = (s.as_ptr() as usize).wrapping_sub(raw.as_ptr() as usize);
            if n >= layout.n_vocab || off > raw.len() {
                return Err(Error::BadMetadata {
                    key: MetaKey::TokenizerTokens,
                });
            }
            offsets[n] = off as u32;
            n += 1;
        }
        if n != layout.n_vocab {
            return Err(Error::BadMetadata {
                key: MetaKey::TokenizerTokens,
            });
        }
        offsets[n] = (raw.len() + 8) as u32;

        let mut tok = Tokenizer {
            model: parts.model,
            tokens: raw,
            types: parts.types,
            scores: parts.scores,
            n_vocab: layout.n_vocab as u32,
            offsets: &[],
            table: &[],
            merges: &[],
            byte_ids: &[],
            specials: &[],
            special_first: [0; 8],
            bos: None,
            eos: None,
            unk: None,
            eog: heapless::Vec::new(),
            add_bos: false,
            add_eos: false,
            add_space_prefix: false,
        };

        // Token hash table over the stored spelling; a repeated text maps to its last id.
        table.fill(0);
        let mask = table.len() - 1;
        for id in 0..layout.n_vocab as u32 {
            let text = token_text_in(raw, offsets, id);
            let mut i = spelled_hash(Spelling::Raw, &[text]) as usize & mask;
            loop {
                let v = table[i];
                if v == 0 || token_text_in(raw, offsets, v - 1) == text {
                    table[i] = id + 1;
                    break;
                }
                i = (i + 1) & mask;
            }
        }
        let offsets: &'a [u32] = offsets;
        let table: &'a [u32] = table;
        tok.offsets = offsets;
        tok.table = table;

        // Byte tokens: `<0xXX>` pieces (SentencePiece) or each byte's GPT-2 character.
        byte_ids.fill(NONE);
        match parts.model {
            TokenizerModel::Spm => {
                for id in 0..tok.n_vocab {
                    if tok.token_type(id) == TokenType::Byte {
                        if let Some(b) = parse_byte_token(tok.token_bytes(id)) {
                            byte_ids[b as usize] = id;
                        }
                    }
                }
            }
            TokenizerModel::Bpe(_) => {
                for b in 0..=255u8 {
                    if let Some(id) = tok.find_spelled(Spelling::Gpt2, &[&[b]]) {
                        byte_ids[b as usize] = id;
                    }
                }
            }
        }
        tok.byte_ids = byte_ids;

        // Merge table: (left id, right id) -> (rank, merged id). The first
        // occurrence of a pair keeps the lowest rank; a merge whose parts or
        // result are not tokens can never apply and is left out.
        merges.fill(0);
        if let Some(list) = parts.merges {
            let mmask = merges.len() / 4 - 1;
            for (rank, v) in list.iter().enumerate() {
                let Value::Str(m) = v else {
                    return Err(Error::BadMetadata {
                        key: MetaKey::TokenizerMerges,
                    });
                };
                let b = m.as_bytes();
                let Some(sp) = b.iter().skip(1).position(|&c| c == b' ').map(|p| p + 1) else {
                    return Err(Error::BadMetadata {
                        key: MetaKey::TokenizerMerges,
                    });
                };
                let (l, r) = (&b[..sp], &b[sp + 1..]);
                let (Some(li), Some(ri), Some(res)) = (
                    tok.find_spelled(Spelling::Raw, &[l]),
                    tok.find_spelled(Spelling::Raw, &[r]),
                    tok.find_spelled(Spelling::Raw, &[l, r]),
                ) else {
                    continue;
                };
                let mut i = mix2(li, ri) as usize & mmask;
                loop {
                    let w = &mut merges[i * 4..i * 4 + 4];
                    if w[0] == 0 {
                        w.copy_from_slice(&[li + 1, ri, rank as u32, res]);
                        break;
                    }
                    if w[0] == li + 1 && w[1] == ri {
                        break;
                    }
                    i = (i + 1) & mmask;
                }
            }
        }
        tok.merges = merges;

        // Special tokens, longest first, and a set of their first bytes.
        let mut k = 0;
        for id in 0..tok.n_vocab {
            if is_special_type(tok.token_type(id)) && k < specials.len() {
                specials[k] = id;
                k += 1;
            }
        }
        let specials = &mut specials[..k];
        specials.sort_unstable_by(|&a, &b| {
            tok.token_bytes(b)
                .len()
                .cmp(&tok.token_bytes(a).len())
                .then(a.cmp(&b))
        });
        for &id in specials.iter() {
            if let Some(&b) = tok.token_bytes(id).first() {
                tok.special_first[(b >> 5) as usize] |= 1 << (b & 31);
            }
        }
        tok.specials = specials;

        // Special ids and flags.
        let id_key = |key: MetaKey| -> Result<Option<u32>> {
            match g.get(key.as_str()) {
                None => Ok(None),
                Some(v) => match v.as_u32() {
                    Some(id) if id < layout.n_vocab as u32 => Ok(Some(id)),
                    // llama.cpp writes -1 for "none" in some files.
                    _ if matches!(v, Value::I32(-1)) => Ok(None),
                    _ => Err(Error::BadMetadata { key }),
                },
            }
        };
        let flag = |key: MetaKey, default: bool| -> Result<bool> {
            match g.get(key.as_str()) {
                None => Ok(default),
                Some(Value::Bool(b)) => Ok(b),
                Some(_) => Err(Error::BadMetadata { key }),
            }
        };
        let spm = parts.model == TokenizerModel::Spm;
        let llama3 = parts.model == TokenizerModel::Bpe(PreTokenizer::Llama3);
        tok.bos = id_key(MetaKey::BosTokenId)?;
        tok.eos = id_key(MetaKey::EosTokenId)?;
        tok.unk = id_key(MetaKey::UnknownTokenId)?;
        let eot = id_key(MetaKey::EotTokenId)?;
        let eom = id_key(MetaKey::EomTokenId)?;
        tok.add_bos = flag(MetaKey::AddBosToken, spm || llama3)?;
        tok.add_eos = flag(MetaKey::AddEosToken, false)?;
        tok.add_space_prefix = flag(MetaKey::AddSpacePrefix, spm)?;
        for id in [tok.eos, eot, eom].into_iter().flatten() {
            tok.push_eog(id);
        }
        for &id in tok.specials {
            if tok.token_type(id) == TokenType::Control {
                let text = tok.token_bytes(id);
                if EOG_TEXTS.iter().any(|t| t.as_bytes() == text) {
                    tok.push_eog(id);
                }
            }
        }
        Ok(tok)
    }

    fn push_eog(&mut self, id: u32) {
        if !self.eog.contains(&id) {
            let _ = self.eog.push(id);
        }
    }

    /// The vocabulary kind.
    pub fn model(&self) -> TokenizerModel {
        self.model
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> u32 {
        self.n_vocab
    }

    /// Beginning-of-sequence token, if the vocabulary has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token, if any.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether encoding with `add_special` puts BOS first.
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// Tokens that end generation: EOS, EOT, EOM and the control tokens
    /// that end a turn (`<|im_end|>`, `<|eot_id|>`, `<|endoftext|>`, ...).
    pub fn end_of_generation(&self) -> &[u32] {
        &self.eog
    }

    /// Whether `id` ends generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The role of token `id` (`Normal` when the file gives none).
    pub fn token_type(&self, id: u32) -> TokenType {
        token_type_at(self.types, id as usize)
    }

    /// The token's score (SentencePiece), 0 when the file gives none.
    pub fn score(&self, id: u32) -> f32 {
        let i = id as usize * 4;
        match self.scores.and_then(|s| s.get(i..i + 4)) {
            Some(b) => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            None => 0.0,
        }
    }

    /// The token's text as stored in the vocabulary (GPT-2 characters, `▁`).
    pub fn token_text(&self, id: u32) -> Option<&'a str> {
        if id >= self.n_vocab {
            return None;
        }
        core::str::from_utf8(self.token_bytes(id)).ok()
    }

    fn token_bytes(&self, id: u32) -> &'a [u8] {
        token_text_in(self.tokens, self.offsets, id)
    }

    /// The token whose stored text is the spelling of `parts` concatenated.
    fn find_spelled(&self, sp: Spelling, parts: &[&[u8]]) -> Option<u32> {
        let mask = self.table.len().checked_sub(1)?;
        let mut i = spelled_hash(sp, parts) as usize & mask;
        // The table always has empty slots (load <= 0.8), so this ends.
        loop {
            let v = *self.table.get(i)?;
            if v == 0 {
                return None;
            }
            if spelled_eq(sp, parts, self.token_bytes(v - 1)) {
                return Some(v - 1);
            }
            i = (i + 1) & mask;
        }
    }

    /// The token whose stored text is exactly `text`.
    pub fn find(&self, text: &str) -> Option<u32> {
        self.find_spelled(Spelling::Raw, &[text.as_bytes()])
    }

    fn merge(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        let slots = self.merges.len() / 4;
        if slots == 0 {
            return None;
        }
        let mask = slots - 1;
        let mut i = mix2(left, right) as usize & mask;
        loop {
            let w = self.merges.get(i * 4..i * 4 + 4)?;
            if w[0] == 0 {
                return None;
            }
            if w[0] == left + 1 && w[1] == right {
                return Some((w[2], w[3]));
            }
            i = (i + 1) & mask;
        }
    }

    /// Scratch words that encoding a word (or text) of `bytes` bytes may need.
    pub fn scratch_words(bytes: usize) -> usize {
        Merger::words(bytes.saturating_add(1))
    }

    /// Encodes `text`, handing each id to `emit`; working memory from `scratch`.
    pub fn encode_with<S: Scratch>(
        &self,
        text: &str,
        opt: EncodeOptions,
        scratch: &mut S,
        emit: &mut dyn FnMut(u32) -> Result<()>,
    ) -> Result<()> {
        if opt.add_special && self.add_bos {
            if let Some(b) = self.bos {
                emit(b)?;
            }
        }
        let mut prev_special = true;
        self.partition(text, opt.parse_special, &mut |piece| match piece {
            Piece::Special(id) => {
                prev_special = true;
                emit(id)
            }
            Piece::Text(s) => {
                let r = match self.model {
                    TokenizerModel::Bpe(pre) => {
                        pre.split(s, &mut |w| self.bpe_word(pre, w.as_bytes(), scratch, emit))
                    }
                    TokenizerModel::Spm => {
                        self.spm(s, self.add_space_prefix && prev_special, scratch, emit)
                    }
                };
                prev_special = false;
                r
            }
        })?;
        if opt.add_special && self.add_eos {
            if let Some(e) = self.eos {
                emit(e)?;
            }
        }
        Ok(())
    }

    /// Encodes into `out`, returning the count; `scratch` needs
    /// [`Tokenizer::scratch_words`]`(text.len())` words.
    pub fn encode_into(
        &self,
        text: &str,
        opt: EncodeOptions,
        mut scratch: &mut [u32],
        out: &mut [u32],
    ) -> Result<usize> {
        let mut n = 0usize;
        let cap = out.len();
        self.encode_with(text, opt, &mut scratch, &mut |id| {
            let slot = out.get_mut(n).ok_or(Error::BufferTooSmall {
                needed: n as u64 + 1,
                found: cap as u64,
            })?;
            *slot = id;
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }

    /// Encodes `text` into a new vector.
    #[cfg(feature = "alloc")]
    pub fn encode(&self, text: &str, opt: EncodeOptions) -> Result<alloc::vec::Vec<u32>> {
        let mut ids = alloc::vec::Vec::new();
        let mut scratch = alloc::vec::Vec::new();
        self.encode_with(text, opt, &mut scratch, &mut |id| {
            ids.push(id);
            Ok(())
        })?;
        Ok(ids)
    }

    /// Splits text at special tokens, leftmost-longest.
    fn partition(
        &self,
        text: &str,
        parse_special: bool,
        f: &mut dyn FnMut(Piece<'_>) -> Result<()>,
    ) -> Result<()> {
        let b = text.as_bytes();
        let mut start = 0;
        let mut i = 0;
        'scan: while i < b.len() {
            let c = b[i];
            if self.special_first[(c >> 5) as usize] & (1 << (c & 31)) != 0 {
                for &id in self.specials {
                    let ty = self.token_type(id);
                    if !parse_special && ty != TokenType::UserDefined {
                        continue;
                    }
                    let t = self.token_bytes(id);
                    if !t.is_empty() && b[i..].starts_with(t) {
                        if let Some(s) = text.get(start..i).filter(|s| !s.is_empty()) {
                            f(Piece::Text(s))?;
                        }
                        f(Piece::Special(id))?;
                        i += t.len();
                        start = i;
                        continue 'scan;
                    }
                }
            }
            i += 1;
        }
        match text.get(start..) {
            Some(s) if !s.is_empty() => f(Piece::Text(s)),
            _ => Ok(()),
        }
    }

    /// The id for a byte with no better token: its byte token, else unknown.
    fn byte_token(&self, b: u8) -> Result<u32> {
        match self.byte_ids.get(b as usize) {
            Some(&id) if id != NONE => Ok(id),
            _ => self.unk.ok_or(Error::Untokenizable { byte: b }),
        }
    }

    /// Byte-level BPE of one pre-tokenized word.
    fn bpe_word<S: Scratch>(
        &self,
        pre: PreTokenizer,
        word: &[u8],
        scratch: &mut S,
        emit: &mut dyn FnMut(u32) -> Result<()>,
    ) -> Result<()> {
        if word.is_empty() {
            return Ok(());
        }
        // Llama 3 takes a whole word that is itself a token without merging.
        if pre.ignore_merges() {
            if let Some(id) = self.find_spelled(Spelling::Gpt2, &[word]) {
                return emit(id);
            }
        }
        if word.len() == 1 {
            return emit(self.byte_token(word[0])?);
        }
        let mut m = Merger::new(scratch.take(Merger::words(word.len()))?, word.len());
        for (i, &b) in word.iter().enumerate() {
            m.init(
                i,
                i as u32,
                1,
                self.byte_ids.get(b as usize).copied().unwrap_or(NONE),
            );
        }
        m.run(&mut |l, r| match (l.id, r.id) {
            (NONE, _) | (_, NONE) => None,
            (a, b) => self.merge(a, b),
        });
        m.for_each(&mut |start, len, id| {
            if id != NONE {
                emit(id)
            } else {
                for &b in &word[start as usize..(start + len) as usize] {
                    emit(self.byte_token(b)?)?;
                }
                Ok(())
            }
        })
    }

    /// SentencePiece BPE of one stretch of text between special tokens.
    fn spm<S: Scratch>(
        &self,
        text: &str,
        prefix: bool,
        scratch: &mut S,
        emit: &mut dyn FnMut(u32) -> Result<()>,
    ) -> Result<()> {
        // The logical text is an optional space, then `text`; symbols are its
        // characters; `range` gives the parts of a logical byte range.
        let raw = text.as_bytes();
        let p = prefix as usize;
        let range = |a: usize, b: usize| -> [&[u8]; 2] {
            let head: &[u8] = if p == 1 && a == 0 { b" " } else { b"" };
            let lo = a.max(p) - p;
            let hi = (b - p).max(lo);
            [head, raw.get(lo..hi).unwrap_or(b"")]
        };
        let n_chars = p + text.chars().count();
        if n_chars == 0 {
            return Ok(());
        }
        let mut m = Merger::new(scratch.take(Merger::words(n_chars))?, n_chars);
        if prefix {
            m.init(0, 0, 1, NONE);
        }
        for (k, (i, c)) in text.char_indices().enumerate() {
            m.init(k + p, (i + p) as u32, c.len_utf8() as u32, NONE);
        }
        m.run(&mut |l, r| {
            let parts = range(l.start as usize, (r.start + r.len) as usize);
            let id = self.find_spelled(Spelling::Spm, &parts)?;
            Some((score_key(self.score(id)), id))
        });
        m.for_each(&mut |start, len, id| {
            if id != NONE {
                return emit(id);
            }
            let parts = range(start as usize, (start + len) as usize);
            if let Some(id) = self.find_spelled(Spelling::Spm, &parts) {
                return emit(id);
            }
            // Byte fallback over the vocabulary spelling (a space is `▁`'s bytes).
            let mut buf = [0u8; 3];
            for part in parts {
                for &b in part {
                    let n = Spelling::Spm.map(b, &mut buf);
                    for &x in &buf[..n] {
                        emit(self.byte_token(x)?)?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Hands the bytes of token `id` to `f`. Control and unknown tokens give
    /// their text only when `special`; unused tokens give nothing.
    pub fn piece(&self, id: u32, special: bool, f: &mut dyn FnMut(&[u8])) -> Result<()> {
        if id >= self.n_vocab {
            return Err(Error::TokenOutOfRange {
                token: id,
                vocab: self.n_vocab,
            });
        }
        let text = self.token_bytes(id);
        match self.token_type(id) {
            TokenType::Control | TokenType::Unknown => {
                if special {
                    f(text);
                }
            }
            TokenType::UserDefined => f(text),
            TokenType::Unused => {}
            TokenType::Byte if self.model == TokenizerModel::Spm => {
                if let Some(b) = parse_byte_token(text) {
                    f(&[b]);
                }
            }
            TokenType::Normal | TokenType::Byte => match self.model {
                TokenizerModel::Spm => {
                    // `▁` back to spaces.
                    let mut rest = text;
                    while let Some(at) = rest.windows(3).position(|w| w == [0xE2, 0x96, 0x81]) {
                        f(&rest[..at]);
                        f(b" ");
                        rest = &rest[at + 3..];
                    }
                    f(rest);
                }
                TokenizerModel::Bpe(_) => {
                    let mut buf = [0u8; 32];
                    let mut n = 0;
                    let s = core::str::from_utf8(text).unwrap_or("");
                    for c in s.chars() {
                        if n + 4 > buf.len() {
                            f(&buf[..n]);
                            n = 0;
                        }
                        match gpt2_byte(c) {
                            Some(b) => {
                                buf[n] = b;
                                n += 1;
                            }
                            None => n += c.encode_utf8(&mut buf[n..]).len(),
                        }
                    }
                    f(&buf[..n]);
                }
            },
        }
        Ok(())
    }

    /// Decodes `ids` as one text (lossy for invalid UTF-8), from the start of a text.
    #[cfg(feature = "alloc")]
    pub fn decode(&self, ids: &[u32], special: bool) -> Result<alloc::string::String> {
        let mut s = alloc::string::String::new();
        let mut d = StreamDecoder::new(self, special, true);
        for &id in ids {
            d.push(self, id, &mut |t| s.push_str(t))?;
        }
        d.finish(&mut |t| s.push_str(t));
        Ok(s)
    }
}

fn token_text_in<'a>(raw: &'a [u8], offsets: &[u32], id: u32) -> &'a [u8] {
    let i = id as usize;
    match (offsets.get(i), offsets.get(i + 1)) {
        (Some(&a), Some(&b)) => raw
            .get(a as usize..(b as usize).saturating_sub(8).max(a as usize))
            .unwrap_or(b""),
        _ => b"",
    }
}

/// `<0xAB>` -> 0xAB.
fn parse_byte_token(t: &[u8]) -> Option<u8> {
    if t.len() != 6 || !t.starts_with(b"<0x") || t[5] != b'>' {
        return None;
    }
    let hex = |c: u8| (c as char).to_digit(16);
    Some((hex(t[3])? * 16 + hex(t[4])?) as u8)
}

/// Orders scores so that a higher score gives a smaller key.
fn score_key(s: f32) -> u32 {
    let bits = s.to_bits();
    let ascending = if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    };
    !ascending
}

enum Piece<'t> {
    Text(&'t str),
    Special(u32),
}

/// Turns a stream of ids into text as it comes, with no allocation: bytes are
/// held back only while they end in an unfinished UTF-8 character.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    utf8: Utf8Stream,
    special: bool,
    strip_space: bool,
}

impl StreamDecoder {
    /// A decoder; `at_start` drops the space SentencePiece vocabularies prefix
    /// to the first word of a text (generated continuations keep theirs).
    pub fn new(tok: &Tokenizer<'_>, special: bool, at_start: bool) -> Self {
        StreamDecoder {
            utf8: Utf8Stream::new(),
            special,
            strip_space: at_start && tok.add_space_prefix,
        }
    }

    /// Decodes one more id; `sink` receives whatever text it completes.
    pub fn push(&mut self, tok: &Tokenizer<'_>, id: u32, sink: &mut dyn FnMut(&str)) -> Result<()> {
        let strip = core::mem::take(&mut self.strip_space);
        let mut first = true;
        let utf8 = &mut self.utf8;
        tok.piece(id, self.special, &mut |mut b| {
            if strip && first && !b.is_empty() {
                if b[0] == b' ' {
                    b = &b[1..];
                }
                first = false;
            }
            utf8.push(b, sink);
        })
    }

    /// Ends the stream; an unfinished character becomes U+FFFD.
    pub fn finish(&mut self, sink: &mut dyn FnMut(&str)) {
        self.utf8.finish(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_byte_map_round_trips() {
        for b in 0..=255u8 {
            let c = char::from_u32(GPT2_CHAR[b as usize] as u32).unwrap();
            assert_eq!(gpt2_byte(c), Some(b));
            let mut buf = [0u8; 3];
            let n = Spelling::Gpt2.map(b, &mut buf);
            let mut want = [0u8; 4];
            assert_eq!(&buf[..n], c.encode_utf8(&mut want).as_bytes());
        }
        assert_eq!(GPT2_CHAR[b' ' as usize], 0x120); // 'Ġ'
        assert_eq!(gpt2_byte('€'), None);
    }

    #[test]
    fn score_keys_order_descending() {
        let s = [f32::NEG_INFINITY, -3.5, -0.0, 0.0, 1.0, 7.25, f32::INFINITY];
        for w in s.windows(2) {
            assert!(score_key(w[0]) >= score_key(w[1]), "{w:?}");
        }
        assert!(score_key(-1.0) > score_key(2.0));
    }

    #[test]
    fn byte_tokens_parse() {
        assert_eq!(parse_byte_token(b"<0x0A>"), Some(10));
        assert_eq!(parse_byte_token(b"<0xff>"), Some(255));
        assert_eq!(parse_byte_token(b"<0xG0>"), None);
        assert_eq!(parse_byte_token(b"<0x0A"), None);
    }
}
