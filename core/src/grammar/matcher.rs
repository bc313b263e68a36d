//! Matching a grammar byte by byte, and the mask of the tokens it allows.
//!
//! A parse position is a set of stacks, as in llama.cpp's grammar engine:
//! each stack holds frames (an element's word offset and a repetition count),
//! bottom to top, and its top is a character class still to match; an empty
//! stack has matched all of `root`. Consuming a character keeps the stacks
//! whose top class takes it and expands what follows until every top is a
//! class again. Tokens are byte strings, so the state also holds a partly read
//! UTF-8 character: while one is open, a stack survives only if its top class
//! takes some character that starts with those bytes.
//!
//! The mask walks the vocabulary in byte order (see [`Vocab`]): tokens that
//! share a prefix share its states, and a prefix no stack takes drops every
//! token under it at once. States are interned in caller memory with a
//! 256-entry transition row each, so a state met again (every character of a
//! JSON string leads back to the same one) costs one table read per byte, and
//! the table carries over from step to step until it fills, when it starts
//! again empty. No step allocates.

#![forbid(unsafe_code)]

use super::gbnf::{
    alternatives, elem_len, kind, payload, Grammar, ALT, CLASS, END, GROUP, NEGATED, REF, REPEAT,
    UNBOUNDED,
};
use super::vocab::Vocab;
use crate::error::{Error, GrammarFault, Result};

/// Frames one stack may hold (nesting of rules and groups).
pub const MAX_DEPTH: usize = 256;
/// Stacks one state may hold (open alternatives at once).
pub const MAX_STACKS: usize = 256;
/// Tokens longer than this many bytes are never allowed.
pub const MAX_TOKEN_BYTES: usize = 256;
/// Expansion recursion past this depth is a grammar too complex to match.
const MAX_EXPAND: u32 = 512;

const DEAD: u32 = 1;

/// The grammar as the matcher keeps it: elements and rule starts.
#[derive(Clone, Copy)]
struct G<'a> {
    words: &'a [u32],
    starts: &'a [u32],
    root: u32,
}

impl G<'_> {
    #[inline]
    fn rule_start(&self, r: u32) -> u32 {
        self.starts[r as usize]
    }
}

#[inline]
fn frame(pos: usize, count: u32) -> u32 {
    (pos as u32) | (count << 20)
}

#[inline]
fn frame_pos(f: u32) -> usize {
    (f & 0xF_FFFF) as usize
}

#[inline]
fn frame_count(f: u32) -> u32 {
    f >> 20
}

/// The UTF-8 part of a state: bytes still needed (bits 24-25), the
/// character's length (bits 26-27) and its bits so far.
#[inline]
fn utf8_word(need: u32, total: u32, val: u32) -> u32 {
    (need << 24) | (total << 26) | val
}

/// The stacks of a state `[utf8, n, (len, frames...)...]`.
fn stacks(state: &[u32]) -> impl Iterator<Item = &[u32]> {
    let n = state[1] as usize;
    let mut at = 2;
    (0..n).map(move |_| {
        let len = state[at] as usize;
        let s = &state[at + 1..at + 1 + len];
        at += 1 + len;
        s
    })
}

/// The class a terminal top frame matches with, and the frame that replaces
/// it once a character is taken.
fn terminal(g: &G<'_>, top: u32) -> Option<(usize, u32)> {
    let pos = frame_pos(top);
    let w = g.words[pos];
    match kind(w) {
        CLASS => Some((pos, frame(pos + elem_len(g.words, pos), 0))),
        REPEAT if kind(g.words[pos + 1]) == CLASS => {
            let (min, max) = (payload(w) & 0xFFF, payload(w) >> 12);
            let c = frame_count(top);
            let next = if max == UNBOUNDED {
                (c + 1).min(min)
            } else {
                c + 1
            };
            Some((pos + 1, frame(pos, next)))
        }
        _ => None,
    }
}

fn class_ranges(words: &[u32], pos: usize) -> (bool, &[u32]) {
    let w = words[pos];
    let n = (payload(w) & 0xFFFF) as usize;
    (payload(w) & NEGATED != 0, &words[pos + 1..pos + 1 + 2 * n])
}

fn class_matches(words: &[u32], pos: usize, cp: u32) -> bool {
    let (neg, r) = class_ranges(words, pos);
    let inside = r.chunks_exact(2).any(|p| p[0] <= cp && cp <= p[1]);
    inside != neg
}

/// Whether the class takes some code point in `lo..=hi`.
fn class_meets(words: &[u32], pos: usize, lo: u32, hi: u32) -> bool {
    let (neg, r) = class_ranges(words, pos);
    if !neg {
        return r.chunks_exact(2).any(|p| p[0] <= hi && lo <= p[1]);
    }
    // A negated class misses the range only if its ranges (sorted, disjoint
    // and not touching: see the parser) cover all of it, which one does.
    !r.chunks_exact(2).any(|p| p[0] <= lo && hi <= p[1])
}

/// A stack under construction (frames bottom to top).
struct Work {
    f: [u32; MAX_DEPTH],
    n: usize,
}

impl Work {
    fn push(&mut self, x: u32) -> Result<()> {
        if self.n == MAX_DEPTH {
            return Err(too_complex());
        }
        self.f[self.n] = x;
        self.n += 1;
        Ok(())
    }
}

fn too_complex() -> Error {
    Error::Grammar {
        fault: GrammarFault::TooComplex,
        at: 0,
    }
}

/// The stacks of a new state, written as `[utf8, n, (len, frames...)...]`
/// into `buf`, each once.
struct Out<'b> {
    buf: &'b mut [u32],
    len: usize,
    /// Expansions left for this step: a grammar whose optional parts
    /// multiply (`("" | ""){0,100}`) ends as too complex, not as a hang.
    budget: u32,
}

/// Expansions one step may make.
const EXPAND_BUDGET: u32 = 1 << 16;

impl<'b> Out<'b> {
    fn new(buf: &'b mut [u32], utf8: u32) -> Result<Self> {
        if buf.len() < 2 {
            return Err(full());
        }
        buf[0] = utf8;
        buf[1] = 0;
        Ok(Out {
            buf,
            len: 2,
            budget: EXPAND_BUDGET,
        })
    }

    fn add(&mut self, s: &[u32]) -> Result<()> {
        if stacks(&self.buf[..self.len]).any(|t| t == s) {
            return Ok(());
        }
        if self.buf[1] as usize == MAX_STACKS {
            return Err(too_complex());
        }
        let end = self.len + 1 + s.len();
        if end > self.buf.len() {
            return Err(full());
        }
        self.buf[self.len] = s.len() as u32;
        self.buf[self.len + 1..end].copy_from_slice(s);
        self.len = end;
        self.buf[1] += 1;
        Ok(())
    }
}

/// Out of intern memory: the caller clears the table and goes on.
fn full() -> Error {
    Error::BufferTooSmall {
        needed: 0,
        found: 0,
    }
}

/// A repetition frame entered again without consuming anything: meeting it
/// again on the same path would loop.
struct Guard<'a> {
    depth: usize,
    frame: u32,
    /// Any count of the same repetition matches: past its minimum, a
    /// higher count allows less than the one already being expanded.
    any_count: bool,
    prev: Option<&'a Guard<'a>>,
}

/// Expands `w` until its top is a class (or it is empty), adding each
/// result to `out`.
fn expand(
    g: &G<'_>,
    w: &mut Work,
    out: &mut Out<'_>,
    level: u32,
    guard: Option<&Guard<'_>>,
) -> Result<()> {
    if level > MAX_EXPAND || out.budget == 0 {
        return Err(too_complex());
    }
    out.budget -= 1;
    if w.n == 0 {
        return out.add(&[]);
    }
    let top = w.f[w.n - 1];
    let mut gd = guard;
    while let Some(x) = gd {
        if x.depth == w.n
            && (x.frame == top || (x.any_count && frame_pos(x.frame) == frame_pos(top)))
        {
            return Ok(());
        }
        gd = x.prev;
    }
    let pos = frame_pos(top);
    let word = g.words[pos];
    match kind(word) {
        CLASS => out.add(&w.f[..w.n]),
        ALT | END => {
            // This sequence is done: back to the frame that entered it.
            w.n -= 1;
            let r = expand(g, w, out, level + 1, guard);
            w.n += 1;
            w.f[w.n - 1] = top;
            r
        }
        REF => enter(
            g,
            w,
            out,
            g.rule_start(payload(word)) as usize,
            frame(pos + 1, 0),
            level,
            guard,
        ),
        GROUP => enter(
            g,
            w,
            out,
            pos,
            frame(pos + elem_len(g.words, pos), 0),
            level,
            guard,
        ),
        REPEAT => {
            let (min, max) = (payload(word) & 0xFFF, payload(word) >> 12);
            let c = frame_count(top);
            if c >= min {
                w.f[w.n - 1] = frame(pos + elem_len(g.words, pos), 0);
                let r = expand(g, w, out, level + 1, guard);
                w.f[w.n - 1] = top;
                r?;
            }
            if max != UNBOUNDED && c >= max {
                return Ok(());
            }
            let next = if max == UNBOUNDED {
                (c + 1).min(min)
            } else {
                c + 1
            };
            let item = pos + 1;
            let back = frame(pos, next);
            // Coming back to an unbounded repetition with the same count
            // and nothing consumed is where this expansion started.
            let g2 = Guard {
                depth: w.n,
                frame: back,
                any_count: c >= min,
                prev: guard,
            };
            let guard = if back == top || c >= min {
                Some(&g2)
            } else {
                guard
            };
            match kind(g.words[item]) {
                CLASS => out.add(&w.f[..w.n]),
                REF => enter(
                    g,
                    w,
                    out,
                    g.rule_start(payload(g.words[item])) as usize,
                    back,
                    level,
                    guard,
                ),
                _ => enter(g, w, out, item, back, level, guard),
            }
        }
        _ => Ok(()),
    }
}

/// Replaces the top with `back` and expands each alternative of the group at `group`.
fn enter(
    g: &G<'_>,
    w: &mut Work,
    out: &mut Out<'_>,
    group: usize,
    back: u32,
    level: u32,
    guard: Option<&Guard<'_>>,
) -> Result<()> {
    let top = w.f[w.n - 1];
    // A group that ends its sequence returns straight to the frame below (a
    // tail call): right recursion (`list ::= item list | item`) takes no
    // stack.
    let tail = matches!(kind(g.words[frame_pos(back)]), ALT | END);
    if tail {
        w.n -= 1;
    } else {
        w.f[w.n - 1] = back;
    }
    let mut r = Ok(());
    for a in alternatives(g.words, group) {
        if let Err(e) = w.push(frame(a, 0)) {
            r = Err(e);
            break;
        }
        r = expand(g, w, out, level + 1, guard);
        w.n -= 1;
        if r.is_err() {
            break;
        }
    }
    if tail {
        w.n += 1;
    }
    w.f[w.n - 1] = top;
    r
}

/// The start state of `g` into `buf`; returns its length.
fn start(g: &G<'_>, buf: &mut [u32]) -> Result<usize> {
    let mut out = Out::new(buf, 0)?;
    let mut w = Work {
        f: [0; MAX_DEPTH],
        n: 0,
    };
    // Each of root's alternatives over an empty stack: ending one is the end.
    for a in alternatives(g.words, g.root as usize) {
        w.n = 0;
        w.push(frame(a, 0))?;
        expand(g, &mut w, &mut out, 0, None)?;
    }
    Ok(out.len)
}

/// The state after byte `b` from `src`, into `dst`; `None` if no stack takes it.
fn step(g: &G<'_>, src: &[u32], b: u8, dst: &mut [u32]) -> Result<Option<usize>> {
    let u = src[0];
    let (need, total, val) = ((u >> 24) & 3, (u >> 26) & 3, u & 0x1F_FFFF);
    let b = b as u32;
    let (need, total, val) = if need == 0 {
        match b {
            0x00..=0x7F => (0, 0, b),
            0xC2..=0xDF => (1, 1, b & 0x1F),
            0xE0..=0xEF => (2, 2, b & 0x0F),
            0xF0..=0xF4 => (3, 3, b & 0x07),
            _ => return Ok(None),
        }
    } else if b & 0xC0 != 0x80 {
        return Ok(None);
    } else {
        (need - 1, total, (val << 6) | (b & 0x3F))
    };
    if need > 0 {
        // Inside a character: the stacks stay, if one can take a character
        // that starts with these bytes.
        let lo = (val << (6 * need)).max([0, 0x80, 0x800, 0x1_0000][total as usize]);
        let mut hi = ((val << (6 * need)) | ((1 << (6 * need)) - 1)).min(0x10_FFFF);
        // No character is a surrogate (ED A0..ED BF start only those).
        if lo >= 0xD800 && hi <= 0xDFFF {
            return Ok(None);
        }
        if lo < 0xD800 && (0xD800..=0xDFFF).contains(&hi) {
            hi = 0xD7FF;
        }
        let alive = lo <= hi
            && stacks(src).any(|s| {
                s.last()
                    .and_then(|&t| terminal(g, t))
                    .is_some_and(|(c, _)| class_meets(g.words, c, lo, hi))
            });
        if !alive {
            return Ok(None);
        }
        if dst.len() < src.len() {
            return Err(full());
        }
        dst[..src.len()].copy_from_slice(src);
        dst[0] = utf8_word(need, total, val);
        return Ok(Some(src.len()));
    }
    let cp = val;
    if (total == 1 && cp < 0x80) || (total == 2 && cp < 0x800) || (0xD800..0xE000).contains(&cp) {
        return Ok(None);
    }
    let mut out = Out::new(dst, 0)?;
    let mut w = Work {
        f: [0; MAX_DEPTH],
        n: 0,
    };
    for s in stacks(src) {
        let Some((&top, below)) = s.split_last() else {
            continue;
        };
        let Some((class, next)) = terminal(g, top) else {
            continue;
        };
        if !class_matches(g.words, class, cp) {
            continue;
        }
        w.n = 0;
        for &f in below {
            w.push(f)?;
        }
        w.push(next)?;
        expand(g, &mut w, &mut out, 0, None)?;
    }
    if out.buf[1] == 0 {
        return Ok(None);
    }
    Ok(Some(out.len))
}

/// Order-independent hash of a state's stacks.
fn hash(state: &[u32]) -> u32 {
    let mut h = state[0].wrapping_mul(0x9E37_79B9);
    for s in stacks(state) {
        let mut x: u32 = 0x811C_9DC5 ^ s.len() as u32;
        for &f in s {
            x = (x ^ f).wrapping_mul(0x0100_0193);
        }
        h = h.wrapping_add(x ^ (x >> 15));
    }
    h
}

fn same(a: &[u32], b: &[u32]) -> bool {
    a.len() == b.len()
        && a[0] == b[0]
        && a[1] == b[1]
        && stacks(a).all(|s| stacks(b).any(|t| t == s))
}

/// The sizes a matcher's memory is cut into.
#[derive(Debug, Clone, Copy)]
struct Layout {
    words: usize,
    rules: usize,
    cur: usize,
    slots: usize,
    states: usize,
    arena: usize,
}

impl Layout {
    const fn total(&self) -> usize {
        self.words
            + self.rules
            + self.cur
            + self.slots
            + 2 * self.states
            + 1
            + 128 * self.states
            + self.arena
    }
}

/// The matcher's memory, cut.
struct Parts<'a> {
    g: G<'a>,
    /// The current state, kept outside the table so clearing keeps it.
    cur: &'a mut [u32],
    /// Open addressing: state id + 1, 0 empty.
    slots: &'a mut [u32],
    hashes: &'a mut [u32],
    /// State id → arena offset; one more entry than states.
    offs: &'a mut [u32],
    /// 256 transitions per state, two 16-bit entries a word: 0 unknown,
    /// 1 dead, id + 2.
    rows: &'a mut [u32],
    arena: &'a mut [u32],
}

fn cut(mem: &mut [u32], l: Layout, root: u32) -> Parts<'_> {
    let (words, rest) = mem.split_at_mut(l.words);
    let (starts, rest) = rest.split_at_mut(l.rules);
    let (cur, rest) = rest.split_at_mut(l.cur);
    let (slots, rest) = rest.split_at_mut(l.slots);
    let (hashes, rest) = rest.split_at_mut(l.states);
    let (offs, rest) = rest.split_at_mut(l.states + 1);
    let (rows, rest) = rest.split_at_mut(128 * l.states);
    Parts {
        g: G {
            words,
            starts,
            root,
        },
        cur,
        slots,
        hashes,
        offs,
        rows,
        arena: &mut rest[..l.arena],
    }
}

/// The matcher's counters.
#[derive(Debug, Clone, Copy)]
struct Counters {
    /// Counts clears: a state id names a state within one epoch.
    epoch: u32,
    cur_len: usize,
    cur_id: Option<u32>,
    n_states: usize,
    ended: bool,
}

/// Where a byte leads from an interned state.
enum Next {
    Dead,
    State(u32),
    /// The table or arena is full: clear and retry.
    Full,
}

/// A grammar's place in a text. It owns its memory `M` (`&mut [u32]` with
/// no allocator, `Vec<u32>` on a host): a copy of the grammar, the current
/// state, and the table of interned states with their transitions.
#[derive(Debug, Clone)]
pub struct Matcher<M> {
    mem: M,
    layout: Layout,
    root: u32,
    c: Counters,
}

impl<M: AsMut<[u32]>> Matcher<M> {
    /// Words of memory for a matcher of `g` holding `states` interned states
    /// in an arena of `arena` words; the current state may use a quarter of
    /// the arena.
    pub fn words_for(g: &Grammar<'_>, states: usize, arena: usize) -> usize {
        Self::layout(g, states, arena).total()
    }

    fn layout(g: &Grammar<'_>, states: usize, arena: usize) -> Layout {
        Layout {
            words: g.words.len(),
            rules: g.rules(),
            cur: arena / 4,
            slots: (2 * states).next_power_of_two(),
            states,
            arena,
        }
    }

    /// A matcher at the start of `g` in `mem` (see [`Matcher::words_for`]).
    pub fn new(g: &Grammar<'_>, mut mem: M, states: usize, arena: usize) -> Result<Self> {
        let layout = Self::layout(g, states, arena);
        let found = mem.as_mut().len();
        if found < layout.total() || states == 0 || states > 0xFFF0 || arena < 64 {
            return Err(Error::BufferTooSmall {
                needed: layout.total() as u64,
                found: found as u64,
            });
        }
        let m = mem.as_mut();
        m[..g.words.len()].copy_from_slice(g.words);
        for r in 0..g.rules() {
            m[g.words.len() + r] = g.rule_start(r as u32);
        }
        let mut me = Matcher {
            mem,
            layout,
            root: g.root,
            c: Counters {
                epoch: 0,
                cur_len: 0,
                cur_id: None,
                n_states: 0,
                ended: false,
            },
        };
        me.reset()?;
        Ok(me)
    }

    fn parts(&mut self) -> (Parts<'_>, &mut Counters) {
        (cut(self.mem.as_mut(), self.layout, self.root), &mut self.c)
    }

    /// Back to the start of the grammar.
    pub fn reset(&mut self) -> Result<()> {
        let (p, c) = self.parts();
        c.cur_len = start(&p.g, p.cur)?;
        c.ended = false;
        let mut p = p;
        clear(&mut p, c);
        Ok(())
    }

    /// Whether the text so far is a whole sentence of the grammar.
    pub fn can_end(&mut self) -> bool {
        let (p, c) = self.parts();
        can_end(&p.cur[..c.cur_len])
    }

    /// Whether nothing but the end can follow.
    pub fn must_end(&mut self) -> bool {
        let (p, c) = self.parts();
        c.ended || must_end(&p.cur[..c.cur_len])
    }

    /// How many states the table holds now.
    pub fn interned(&self) -> usize {
        self.c.n_states
    }

    /// Whether the grammar takes token `id` here.
    pub fn allows(&mut self, vocab: &Vocab<'_>, id: u32) -> Result<bool> {
        let (mut p, c) = self.parts();
        let cur = &p.cur[..c.cur_len];
        if vocab.is_eog(id) {
            return Ok(!c.ended && can_end(cur));
        }
        let t = vocab.bytes(id);
        if t.is_empty() || t.len() > MAX_TOKEN_BYTES || c.ended || must_end(cur) {
            return Ok(false);
        }
        Ok(follow(&mut p, c, t)?.is_some())
    }

    /// Moves past token `id`; an error if the grammar does not take it.
    pub fn accept(&mut self, vocab: &Vocab<'_>, id: u32) -> Result<()> {
        let (mut p, c) = self.parts();
        let cur = &p.cur[..c.cur_len];
        let rejected = Error::GrammarRejected { token: id };
        if vocab.is_eog(id) {
            if c.ended || !can_end(cur) {
                return Err(rejected);
            }
            c.ended = true;
            return Ok(());
        }
        let t = vocab.bytes(id);
        if t.is_empty() || t.len() > MAX_TOKEN_BYTES || c.ended || must_end(cur) {
            return Err(rejected);
        }
        let r = follow(&mut p, c, t)?.ok_or(rejected)?;
        if r.len > p.cur.len() {
            return Err(too_complex());
        }
        p.cur[..r.len].copy_from_slice(&p.arena[r.at..r.at + r.len]);
        c.cur_len = r.len;
        c.cur_id = r.id;
        Ok(())
    }

    /// Sets bit `id` of `allowed` (one bit per token, `vocab.len()` bits)
    /// for every token the grammar takes here, and clears the others.
    pub fn mask(&mut self, vocab: &Vocab<'_>, allowed: &mut [u32]) -> Result<()> {
        let words = vocab.len().div_ceil(32);
        let found = allowed.len();
        let allowed = allowed.get_mut(..words).ok_or(Error::BufferTooSmall {
            needed: words as u64,
            found: found as u64,
        })?;
        allowed.fill(0);
        let (mut p, c) = self.parts();
        if c.ended {
            return Ok(());
        }
        let cur = &p.cur[..c.cur_len];
        let end = can_end(cur);
        if !must_end(cur) {
            walk(&mut p, c, vocab, allowed)?;
        }
        if end {
            for &e in vocab.eog() {
                if let Some(w) = allowed.get_mut(e as usize / 32) {
                    *w |= 1 << (e % 32);
                }
            }
        }
        Ok(())
    }
}

impl<M: AsMut<[u32]>> Matcher<M> {
    /// [`Matcher::mask`], taken from `cache` when this state's mask is
    /// there (inside a JSON string every token leads back to the same state)
    /// and kept there otherwise.
    pub fn mask_cached<C: AsMut<[u32]>>(
        &mut self,
        vocab: &Vocab<'_>,
        allowed: &mut [u32],
        cache: &mut MaskCache<C>,
    ) -> Result<()> {
        let words = vocab.len().div_ceil(32);
        if cache.words != words || allowed.len() < words {
            return Err(Error::LengthMismatch {
                expected: cache.words as u64,
                found: words.min(allowed.len()) as u64,
            });
        }
        let key = {
            let (mut p, c) = self.parts();
            if c.ended {
                None
            } else {
                let id = root(&mut p, c)?;
                Some((c.epoch, id))
            }
        };
        if let Some(bits) = key.and_then(|k| cache.get(k)) {
            allowed[..words].copy_from_slice(bits);
            return Ok(());
        }
        self.mask(vocab, allowed)?;
        if key.is_some() {
            // The walk may have cleared the table: file it under today's name.
            let (mut p, c) = self.parts();
            let id = root(&mut p, c)?;
            cache.put((c.epoch, id), &allowed[..words]);
        }
        Ok(())
    }
}

/// Masks by the state they were computed at, in caller memory: `entries`
/// masks of one bit per token, the least recently used replaced.
#[derive(Debug, Clone)]
pub struct MaskCache<M> {
    mem: M,
    words: usize,
    clock: u32,
}

/// Words before each cached mask: epoch, state id, last use.
const ENTRY_HEAD: usize = 3;

impl<M: AsMut<[u32]>> MaskCache<M> {
    /// Words of memory for `entries` masks of a vocabulary of `vocab` tokens.
    pub const fn words_for(entries: usize, vocab: usize) -> usize {
        entries * (ENTRY_HEAD + vocab.div_ceil(32))
    }

    /// A cache of as many masks as `mem` holds (at least one).
    pub fn new(mut mem: M, vocab: usize) -> Result<Self> {
        let words = vocab.div_ceil(32);
        let m = mem.as_mut();
        if m.len() < ENTRY_HEAD + words {
            return Err(Error::BufferTooSmall {
                needed: (ENTRY_HEAD + words) as u64,
                found: m.len() as u64,
            });
        }
        for e in m.chunks_exact_mut(ENTRY_HEAD + words) {
            e[1] = u32::MAX;
        }
        Ok(MaskCache {
            mem,
            words,
            clock: 0,
        })
    }

    fn get(&mut self, (epoch, id): (u32, u32)) -> Option<&[u32]> {
        self.clock = self.clock.wrapping_add(1);
        let clock = self.clock;
        let e = self
            .mem
            .as_mut()
            .chunks_exact_mut(ENTRY_HEAD + self.words)
            .find(|e| e[0] == epoch && e[1] == id)?;
        e[2] = clock;
        Some(&e[ENTRY_HEAD..])
    }

    fn put(&mut self, (epoch, id): (u32, u32), bits: &[u32]) {
        let clock = self.clock;
        let entries = self.mem.as_mut().chunks_exact_mut(ENTRY_HEAD + self.words);
        let age = |e: &[u32]| {
            if e[1] == u32::MAX {
                u32::MAX
            } else {
                clock.wrapping_sub(e[2])
            }
        };
        if let Some(e) = entries.max_by_key(|e| age(e)) {
            e[0] = epoch;
            e[1] = id;
            e[2] = clock;
            e[ENTRY_HEAD..].copy_from_slice(bits);
        }
    }
}

fn can_end(cur: &[u32]) -> bool {
    cur[0] == 0 && stacks(cur).any(|s| s.is_empty())
}

fn must_end(cur: &[u32]) -> bool {
    stacks(cur).all(|s| s.is_empty())
}

/// Interns the state of `len` words written at the arena's end.
fn intern(p: &mut Parts<'_>, c: &mut Counters, len: usize) -> Option<u32> {
    let at = p.offs[c.n_states] as usize;
    let state = &p.arena[at..at + len];
    let h = hash(state);
    let mask = p.slots.len() - 1;
    let mut i = h as usize & mask;
    loop {
        let s = p.slots[i];
        if s == 0 {
            break;
        }
        let id = (s - 1) as usize;
        let (a, b) = (p.offs[id] as usize, p.offs[id + 1] as usize);
        if p.hashes[id] == h && same(&p.arena[a..b], state) {
            return Some(id as u32);
        }
        i = (i + 1) & mask;
    }
    if c.n_states == p.hashes.len() {
        return None;
    }
    let id = c.n_states;
    p.slots[i] = id as u32 + 1;
    p.hashes[id] = h;
    p.rows[128 * id..128 * (id + 1)].fill(0);
    c.n_states += 1;
    p.offs[c.n_states] = (at + len) as u32;
    Some(id as u32)
}

/// The current state's id, interning it if needed.
fn root(p: &mut Parts<'_>, c: &mut Counters) -> Result<u32> {
    if let Some(id) = c.cur_id {
        return Ok(id);
    }
    for _ in 0..2 {
        let at = p.offs[c.n_states] as usize;
        if at + c.cur_len <= p.arena.len() {
            p.arena[at..at + c.cur_len].copy_from_slice(&p.cur[..c.cur_len]);
            if let Some(id) = intern(p, c, c.cur_len) {
                c.cur_id = Some(id);
                return Ok(id);
            }
        }
        clear(p, c);
    }
    Err(too_complex())
}

/// Transition `i` (state × 256 + byte) of the packed rows.
#[inline]
fn row_get(rows: &[u32], i: usize) -> u32 {
    (rows[i / 2] >> ((i & 1) * 16)) & 0xFFFF
}

#[inline]
fn row_set(rows: &mut [u32], i: usize, v: u32) {
    let sh = (i & 1) * 16;
    rows[i / 2] = (rows[i / 2] & !(0xFFFF << sh)) | (v << sh);
}

/// Empties the state table (the current state is kept).
fn clear(p: &mut Parts<'_>, c: &mut Counters) {
    p.slots.fill(0);
    p.offs[0] = 0;
    c.n_states = 0;
    c.cur_id = None;
    c.epoch = c.epoch.wrapping_add(1);
}

fn next(p: &mut Parts<'_>, c: &mut Counters, id: u32, b: u8) -> Result<Next> {
    let row = 256 * id as usize + b as usize;
    match row_get(p.rows, row) {
        0 => {}
        DEAD => return Ok(Next::Dead),
        x => return Ok(Next::State(x - 2)),
    }
    let (a, e) = (
        p.offs[id as usize] as usize,
        p.offs[id as usize + 1] as usize,
    );
    let end = p.offs[c.n_states] as usize;
    let (src, dst) = p.arena.split_at_mut(end);
    match step(&p.g, &src[a..e], b, dst) {
        Ok(None) => {
            row_set(p.rows, row, DEAD);
            Ok(Next::Dead)
        }
        Ok(Some(len)) => match intern(p, c, len) {
            Some(n) => {
                row_set(p.rows, row, n + 2);
                Ok(Next::State(n))
            }
            None => Ok(Next::Full),
        },
        Err(Error::BufferTooSmall { .. }) => Ok(Next::Full),
        Err(e) => Err(e),
    }
}

/// Where a followed text leads: a span of the arena, interned or not.
struct Reached {
    at: usize,
    len: usize,
    id: Option<u32>,
}

/// Follows `bytes` from the current state; `None` if the grammar refuses them.
fn follow(p: &mut Parts<'_>, c: &mut Counters, bytes: &[u8]) -> Result<Option<Reached>> {
    'retry: for _ in 0..2 {
        let mut s = root(p, c)?;
        for &b in bytes {
            match next(p, c, s, b)? {
                Next::Dead => return Ok(None),
                Next::State(n) => s = n,
                Next::Full => {
                    clear(p, c);
                    continue 'retry;
                }
            }
        }
        let (a, e) = (p.offs[s as usize] as usize, p.offs[s as usize + 1] as usize);
        return Ok(Some(Reached {
            at: a,
            len: e - a,
            id: Some(s),
        }));
    }
    follow_uncached(p, c, bytes)
}

/// [`follow`] stepping between two halves of an emptied arena, for a table
/// too small to hold one token's states. The table is left empty but for
/// the current state.
fn follow_uncached(p: &mut Parts<'_>, c: &mut Counters, bytes: &[u8]) -> Result<Option<Reached>> {
    clear(p, c);
    let r = root(p, c)? as usize;
    let (mut at, mut len) = (
        p.offs[r] as usize,
        p.offs[r + 1] as usize - p.offs[r] as usize,
    );
    let base = p.offs[r + 1] as usize;
    let half = (p.arena.len() - base) / 2;
    for &byte in bytes {
        let to = if at == base { base + half } else { base };
        let (lo, hi) = p.arena.split_at_mut(at.max(to));
        let (src, dst) = if at < to {
            (&lo[at..at + len], &mut hi[..half])
        } else {
            (&hi[..len], &mut lo[to..to + half])
        };
        match step(&p.g, src, byte, dst) {
            Ok(None) => return Ok(None),
            Ok(Some(n)) => len = n,
            Err(Error::BufferTooSmall { .. }) => return Err(too_complex()),
            Err(e) => return Err(e),
        }
        at = to;
    }
    Ok(Some(Reached { at, len, id: None }))
}

/// The vocabulary walk behind [`Matcher::mask`].
fn walk(p: &mut Parts<'_>, c: &mut Counters, vocab: &Vocab<'_>, allowed: &mut [u32]) -> Result<()> {
    let mut path = [0u32; MAX_TOKEN_BYTES + 1];
    let mut idx = 0;
    let mut stalled = None;
    'walk: loop {
        path[0] = root(p, c)?;
        // path[..=valid]: the states after the last walked token's first bytes.
        let mut valid = 0;
        // The last walked token's first `dead` bytes lead nowhere.
        let mut dead = usize::MAX;
        while idx < vocab.sorted_len() {
            let (id, t, lcp) = vocab.sorted(idx);
            let lcp = lcp as usize;
            if lcp >= dead {
                idx += 1;
                continue;
            }
            dead = usize::MAX;
            let mut d = valid.min(lcp);
            if t.len() > MAX_TOKEN_BYTES {
                valid = d;
                idx += 1;
                continue;
            }
            while d < t.len() {
                // The table's answer, when it has one, without a call.
                let e = row_get(p.rows, 256 * path[d] as usize + t[d] as usize);
                if e > DEAD {
                    path[d + 1] = e - 2;
                    d += 1;
                    continue;
                }
                if e == DEAD {
                    dead = d + 1;
                    break;
                }
                match next(p, c, path[d], t[d])? {
                    Next::Dead => {
                        dead = d + 1;
                        break;
                    }
                    Next::State(s) => {
                        path[d + 1] = s;
                        d += 1;
                    }
                    Next::Full => {
                        // Start the table again from the current state, and
                        // the walk from this token; a token whose states
                        // alone overfill it is decided without the table.
                        if stalled == Some(idx) {
                            if follow_uncached(p, c, t)?.is_some() {
                                allowed[id as usize / 32] |= 1 << (id % 32);
                            }
                            idx += 1;
                        }
                        stalled = Some(idx);
                        clear(p, c);
                        continue 'walk;
                    }
                }
            }
            valid = d;
            if d == t.len() {
                allowed[id as usize / 32] |= 1 << (id % 32);
            }
            idx += 1;
        }
        return Ok(());
    }
}
