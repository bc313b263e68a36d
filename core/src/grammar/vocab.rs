//! A vocabulary's token bytes in byte order, for the grammar's mask.
//!
//! Words: `[n, sorted, n_eog, offs (n + 1), order (sorted), eog (n_eog)]`.
//! `offs` gives each token's bytes by id; `order` lists the tokens with any
//! bytes, sorted by their bytes, each packed with the length of the prefix it
//! shares with the one before (capped at 255: a shorter shared prefix only
//! costs the walk a little repeated work).

#![forbid(unsafe_code)]

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

const HEAD: usize = 3;

/// Token bytes and their byte order, borrowed from caller memory.
#[derive(Debug, Clone, Copy)]
pub struct Vocab<'v> {
    pub(crate) bytes: &'v [u8],
    offs: &'v [u32],
    order: &'v [u32],
    eog: &'v [u32],
}

impl<'v> Vocab<'v> {
    /// Bytes of text memory for `tok`'s tokens (their decoded bytes).
    pub fn bytes_for(tok: &Tokenizer<'_>) -> Result<usize> {
        let mut n = 0;
        for id in 0..tok.vocab_size() {
            tok.piece(id, false, &mut |b| n += b.len())?;
        }
        Ok(n)
    }

    /// Words of index memory for a vocabulary of `n` tokens, `eog` of them
    /// ending generation.
    pub const fn words_for(n: usize, eog: usize) -> usize {
        HEAD + 2 * n + 1 + eog
    }

    /// The vocabulary of `tok`: each token's bytes as decoding gives them
    /// (control tokens have none), end-of-generation tokens apart.
    pub fn from_tokenizer(
        tok: &Tokenizer<'_>,
        bytes: &'v mut [u8],
        words: &'v mut [u32],
    ) -> Result<Self> {
        Self::build(
            tok.vocab_size() as usize,
            tok.end_of_generation(),
            &mut |id, f| tok.piece(id, false, f),
            bytes,
            words,
        )
    }

    /// A vocabulary of `n` tokens whose bytes `pieces` hands over, token by
    /// token, in any number of calls to its sink.
    #[allow(clippy::type_complexity)]
    pub fn build(
        n: usize,
        eog: &[u32],
        pieces: &mut dyn FnMut(u32, &mut dyn FnMut(&[u8])) -> Result<()>,
        bytes: &'v mut [u8],
        words: &'v mut [u32],
    ) -> Result<Self> {
        let need = Self::words_for(n, eog.len());
        if words.len() < need || n >= 1 << 24 {
            return Err(Error::BufferTooSmall {
                needed: need as u64,
                found: words.len() as u64,
            });
        }
        let (head, rest) = words.split_at_mut(HEAD);
        let (offs, rest) = rest.split_at_mut(n + 1);
        let (order, rest) = rest.split_at_mut(n);
        let eog_out = &mut rest[..eog.len()];
        eog_out.copy_from_slice(eog);
        // Bytes by id.
        let mut len = 0usize;
        let mut over = false;
        for (id, off) in offs[..n].iter_mut().enumerate() {
            *off = len as u32;
            pieces(id as u32, &mut |b| {
                if len + b.len() <= bytes.len() {
                    bytes[len..len + b.len()].copy_from_slice(b);
                } else {
                    over = true;
                }
                len += b.len();
            })?;
        }
        offs[n] = len as u32;
        if over || len > u32::MAX as usize {
            return Err(Error::BufferTooSmall {
                needed: len as u64,
                found: bytes.len() as u64,
            });
        }
        let text = &bytes[..len];
        let tok = |id: u32| &text[offs[id as usize] as usize..offs[id as usize + 1] as usize];
        // Tokens with bytes, in byte order (ties by id).
        let mut sorted = 0;
        for id in 0..n as u32 {
            if !tok(id).is_empty() && !eog.contains(&id) {
                order[sorted] = id;
                sorted += 1;
            }
        }
        let order = &mut order[..sorted];
        order.sort_unstable_by(|&a, &b| tok(a).cmp(tok(b)).then(a.cmp(&b)));
        let mut prev: &[u8] = &[];
        for o in order.iter_mut() {
            let t = tok(*o);
            let lcp = t
                .iter()
                .zip(prev)
                .take_while(|(a, b)| a == b)
                .count()
                .min(255);
            prev = t;
            *o |= (lcp as u32) << 24;
        }
        head[0] = n as u32;
        head[1] = sorted as u32;
        head[2] = eog.len() as u32;
        Ok(Self::view(text, words))
    }

    /// The vocabulary [`Vocab::build`] wrote into `words`, over its `bytes`.
    pub fn view(bytes: &'v [u8], words: &'v [u32]) -> Self {
        let (n, sorted, eog) = (words[0] as usize, words[1] as usize, words[2] as usize);
        let offs = &words[HEAD..HEAD + n + 1];
        let order = &words[HEAD + n + 1..HEAD + n + 1 + sorted];
        let eog = &words[HEAD + 2 * n + 1..HEAD + 2 * n + 1 + eog];
        Vocab {
            bytes,
            offs,
            order,
            eog,
        }
    }

    /// Tokens in the vocabulary.
    pub fn len(&self) -> usize {
        self.offs.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token `id`'s bytes (empty for control tokens and ids out of range).
    pub fn bytes(&self, id: u32) -> &'v [u8] {
        match (self.offs.get(id as usize), self.offs.get(id as usize + 1)) {
            (Some(&a), Some(&b)) => &self.bytes[a as usize..b as usize],
            _ => &[],
        }
    }

    /// The end-of-generation tokens.
    pub fn eog(&self) -> &'v [u32] {
        self.eog
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// Tokens with bytes.
    pub(crate) fn sorted_len(&self) -> usize {
        self.order.len()
    }

    /// The `i`-th token in byte order and the prefix it shares with the one before.
    #[inline]
    pub(crate) fn sorted(&self, i: usize) -> (u32, u32) {
        let w = self.order[i];
        (w & 0xFF_FFFF, w >> 24)
    }
}
