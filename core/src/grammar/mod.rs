//! Grammar-constrained generation: the text a model writes follows a
//! grammar (llama.cpp's GBNF), with no allocator.
//!
//! - [`Grammar::parse`] reads GBNF into caller memory;
//! - [`Vocab`] holds the vocabulary's token bytes in byte order;
//! - [`Matcher`] follows the text token by token and gives the mask of the
//!   tokens the grammar takes next ([`Matcher::mask`]), for
//!   [`crate::sampling::Sampler::sample_masked`].
//!
//! Tokens may span several grammar symbols and end inside a UTF-8
//! character: matching is on bytes. [`JSON`] is any JSON object, as
//! OpenAI's `response_format: {"type": "json_object"}` asks.

#![forbid(unsafe_code)]

pub mod gbnf;
mod matcher;
mod vocab;

pub use gbnf::{Grammar, RuleSlot, MAX_REPEAT};
pub use matcher::{MaskCache, Matcher, MAX_DEPTH, MAX_STACKS, MAX_TOKEN_BYTES};
pub use vocab::Vocab;

#[cfg(feature = "alloc")]
use crate::error::Result;
#[cfg(feature = "alloc")]
use alloc::{vec, vec::Vec};

/// A JSON object (RFC 8259), with at most one newline and 20 spaces or
/// tabs between tokens, so a model cannot pad forever; a `\u` escape of a
/// surrogate comes only as a high and low pair.
pub const JSON: &str = r#"root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ( "," ws string ":" ws value )* )? "}" ws
array  ::= "[" ws ( value ( "," ws value )* )? "]" ws
string ::= "\"" char* "\"" ws
char   ::= [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" hex-bmp | "u" [dD] [89abAB] hex hex "\\u" [dD] [c-fC-F] hex hex )
hex-bmp ::= [0-9a-cA-Ce-fE-F] hex hex hex | [dD] [0-7] hex hex
hex    ::= [0-9a-fA-F]
number ::= "-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,4} )? ws
ws     ::= | " " | "\n" [ \t]{0,20}
"#;

/// A parsed grammar that owns its memory.
#[cfg(feature = "alloc")]
#[derive(Debug, Clone)]
pub struct GrammarBuf {
    words: Vec<u32>,
    rules: Vec<RuleSlot>,
    root: u32,
}

#[cfg(feature = "alloc")]
impl GrammarBuf {
    pub fn parse(src: &str) -> Result<Self> {
        let mut words = vec![0; Grammar::words_for(src)];
        let mut rules = vec![RuleSlot::default(); Grammar::rules_for(src)];
        let (n_words, n_rules, root) = {
            let g = Grammar::parse(src, &mut words, &mut rules)?;
            (g.words.len(), g.rules(), g.root)
        };
        words.truncate(n_words);
        rules.truncate(n_rules);
        Ok(GrammarBuf { words, rules, root })
    }

    pub fn grammar(&self) -> Grammar<'_> {
        Grammar {
            words: &self.words,
            rules: &self.rules,
            root: self.root,
        }
    }
}

/// A vocabulary index that owns its memory.
#[cfg(feature = "alloc")]
#[derive(Debug, Clone)]
pub struct VocabBuf {
    bytes: Vec<u8>,
    words: Vec<u32>,
}

#[cfg(feature = "alloc")]
impl VocabBuf {
    pub fn from_tokenizer(tok: &crate::tokenizer::Tokenizer<'_>) -> Result<Self> {
        let mut bytes = vec![0; Vocab::bytes_for(tok)?];
        let mut words =
            vec![0; Vocab::words_for(tok.vocab_size() as usize, tok.end_of_generation().len())];
        let n = Vocab::from_tokenizer(tok, &mut bytes, &mut words)?
            .bytes
            .len();
        bytes.truncate(n);
        Ok(VocabBuf { bytes, words })
    }

    /// A vocabulary of the given token texts, `eog` ending generation.
    pub fn from_pieces(pieces: &[&[u8]], eog: &[u32]) -> Result<Self> {
        let mut bytes = vec![0; 2 * pieces.iter().map(|p| p.len()).sum::<usize>()];
        let mut words = vec![0; Vocab::words_for(pieces.len(), eog.len())];
        let n = Vocab::build(
            pieces.len(),
            eog,
            &mut |id, f| {
                f(pieces[id as usize]);
                Ok(())
            },
            &mut bytes,
            &mut words,
        )?
        .bytes
        .len();
        bytes.truncate(n);
        Ok(VocabBuf { bytes, words })
    }

    pub fn vocab(&self) -> Vocab<'_> {
        Vocab::view(&self.bytes, &self.words)
    }
}

/// The default table size for a host: 1024 states in a 256 Ki-word arena
/// (about 2.3 MiB with the grammar's copy).
#[cfg(feature = "alloc")]
pub const HOST_STATES: usize = 1024;
#[cfg(feature = "alloc")]
pub const HOST_ARENA: usize = 1 << 18;

#[cfg(feature = "alloc")]
impl Matcher<Vec<u32>> {
    /// A matcher with memory of its own, sized for a host.
    pub fn alloc(g: &Grammar<'_>) -> Result<Self> {
        Self::with_sizes(g, HOST_STATES, HOST_ARENA)
    }

    pub fn with_sizes(g: &Grammar<'_>, states: usize, arena: usize) -> Result<Self> {
        let mem = vec![0; Matcher::<Vec<u32>>::words_for(g, states, arena)];
        Matcher::new(g, mem, states, arena)
    }
}

#[cfg(feature = "alloc")]
impl MaskCache<Vec<u32>> {
    /// A cache of `entries` masks with memory of its own.
    pub fn alloc(entries: usize, vocab: usize) -> Result<Self> {
        MaskCache::new(
            vec![0; MaskCache::<Vec<u32>>::words_for(entries.max(1), vocab)],
            vocab,
        )
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests;
