//! A vocabulary's token bytes in byte order, for the grammar's mask.
//!
//! Words: `[n, sorted, n_eog, offs (n + 1), order (n), place (n), eog]`.
//! The tokens with any bytes are listed in byte order (`order`: the token id,
//! packed with the length of the prefix it shares with the one before,
//! capped at 255: a shorter shared prefix only costs the walk a little
//! repeated work), and their bytes are stored in that order, so the mask's
//! walk reads them front to back; `place` finds a token's rank from its id.
//! Building needs twice the bytes (the second half holds them by id while
//! they are sorted).

#![forbid(unsafe_code)]

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

const HEAD: usize = 3;
const NONE: u32 = u32::MAX;

/// Token bytes and their byte order, borrowed from caller memory.
#[derive(Debug, Clone, Copy)]
pub struct Vocab<'v> {
    pub(crate) bytes: &'v [u8],
    offs: &'v [u32],
    order: &'v [u32],
    place: &'v [u32],
    eog: &'v [u32],
}

impl<'v> Vocab<'v> {
    /// Bytes of text memory for building `tok`'s vocabulary (twice its
    /// tokens' decoded bytes).
    pub fn bytes_for(tok: &Tokenizer<'_>) -> Result<usize> {
        let mut n = 0;
        for id in 0..tok.vocab_size() {
            tok.piece(id, false, &mut |b| n += b.len())?;
        }
        Ok(2 * n)
    }

    /// Words of index memory for a vocabulary of `n` tokens, `eog` of them
    /// ending generation.
    pub const fn words_for(n: usize, eog: usize) -> usize {
        HEAD + 3 * n + 1 + eog
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
        let (place, rest) = rest.split_at_mut(n);
        rest[..eog.len()].copy_from_slice(eog);
        // Bytes by id into the second half; `place` holds their offsets for now.
        let half = bytes.len() / 2;
        let (sorted_bytes, by_id) = bytes.split_at_mut(half);
        let mut len = 0usize;
        let mut over = false;
        let mut starts = 0u32;
        for (id, p) in place.iter_mut().enumerate() {
            *p = len as u32;
            pieces(id as u32, &mut |b| {
                if len + b.len() <= by_id.len() {
                    by_id[len..len + b.len()].copy_from_slice(b);
                } else {
                    over = true;
                }
                len += b.len();
            })?;
            starts = len as u32;
        }
        if over || len > u32::MAX as usize / 2 {
            return Err(Error::BufferTooSmall {
                needed: 2 * len as u64,
                found: bytes.len() as u64,
            });
        }
        let end = |id: usize| if id + 1 < n { place[id + 1] } else { starts };
        let tok = |id: u32| &by_id[place[id as usize] as usize..end(id as usize) as usize];
        // Tokens with bytes, in byte order (ties by id).
        let mut sorted = 0;
        for id in 0..n as u32 {
            if !tok(id).is_empty() && !eog.contains(&id) {
                order[sorted] = id;
                sorted += 1;
            }
        }
        order[..sorted].sort_unstable_by(|&a, &b| tok(a).cmp(tok(b)).then(a.cmp(&b)));
        // Bytes in that order, with each one's shared prefix.
        let mut at = 0usize;
        let mut prev: &[u8] = &[];
        for (rank, o) in order[..sorted].iter_mut().enumerate() {
            let t = tok(*o);
            sorted_bytes[at..at + t.len()].copy_from_slice(t);
            offs[rank] = at as u32;
            at += t.len();
            let lcp = t
                .iter()
                .zip(prev)
                .take_while(|(a, b)| a == b)
                .count()
                .min(255);
            prev = t;
            *o |= (lcp as u32) << 24;
        }
        offs[sorted] = at as u32;
        place.fill(NONE);
        for (rank, &o) in order[..sorted].iter().enumerate() {
            place[(o & 0xFF_FFFF) as usize] = rank as u32;
        }
        head[0] = n as u32;
        head[1] = sorted as u32;
        head[2] = eog.len() as u32;
        Ok(Self::view(&bytes[..at], words))
    }

    /// The vocabulary [`Vocab::build`] wrote into `words`, over its `bytes`.
    pub fn view(bytes: &'v [u8], words: &'v [u32]) -> Self {
        let (n, sorted, eog) = (words[0] as usize, words[1] as usize, words[2] as usize);
        let w = &words[HEAD..];
        Vocab {
            bytes,
            offs: &w[..sorted + 1],
            order: &w[n + 1..n + 1 + sorted],
            place: &w[2 * n + 1..3 * n + 1],
            eog: &w[3 * n + 1..3 * n + 1 + eog],
        }
    }

    /// Tokens in the vocabulary.
    pub fn len(&self) -> usize {
        self.place.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token `id`'s bytes (empty for control tokens and ids out of range).
    pub fn bytes(&self, id: u32) -> &'v [u8] {
        match self.place.get(id as usize) {
            Some(&r) if r != NONE => self.ranked(r as usize),
            _ => &[],
        }
    }

    /// The bytes of the token of rank `r` in byte order.
    #[inline]
    fn ranked(&self, r: usize) -> &'v [u8] {
        &self.bytes[self.offs[r] as usize..self.offs[r + 1] as usize]
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

    /// The `i`-th token in byte order, its bytes, and the prefix it shares
    /// with the one before.
    #[inline]
    pub(crate) fn sorted(&self, i: usize) -> (u32, &'v [u8], u32) {
        let w = self.order[i];
        (w & 0xFF_FFFF, self.ranked(i), w >> 24)
    }
}
