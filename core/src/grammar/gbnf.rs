//! GBNF, llama.cpp's grammar format, parsed into caller memory.
//!
//! The syntax is llama.cpp's (`grammars/README.md` there): `name ::= alternatives`
//! rules, one per line (a rule continues past a newline only inside
//! parentheses or after `|`), string literals with `\n \r \t \\ \" \[ \] \xHH
//! \uHHHH \UHHHHHHHH` escapes, character classes `[a-z]` and `[^...]`, `.` for
//! any character, groups, and the postfix operators `* + ? {m} {m,} {m,n}`;
//! `#` starts a comment. The start rule is `root`.
//!
//! Unlike llama.cpp, which rewrites repetitions into generated rules, the
//! encoding keeps them as one element with a count, so parsing writes one
//! flat array in a single pass and a bounded `{m,n}` costs one word, not n
//! copies of its item.
//!
//! Encoding: one `u32` header per element, kind in the top four bits:
//!
//! | kind | payload | followed by |
//! | --- | --- | --- |
//! | `CLASS` | ranges (low 16 bits), `NEGATED` | `lo, hi` code points per range |
//! | `REF` | rule index | |
//! | `GROUP` | words up to and including its `END` | alternatives split by `ALT` |
//! | `ALT`, `END` | | |
//! | `REPEAT` | `min`, `max` (12 bits each; `max` = `UNBOUNDED`) | one `CLASS`, `REF` or `GROUP` |
//!
//! A rule's body is one `GROUP`.

#![forbid(unsafe_code)]

use crate::error::{Error, GrammarFault, Result};

pub(crate) const CLASS: u32 = 1;
pub(crate) const REF: u32 = 2;
pub(crate) const GROUP: u32 = 3;
pub(crate) const ALT: u32 = 4;
pub(crate) const END: u32 = 5;
pub(crate) const REPEAT: u32 = 6;

const KIND_SHIFT: u32 = 28;
const PAYLOAD: u32 = (1 << KIND_SHIFT) - 1;
pub(crate) const NEGATED: u32 = 1 << 16;
/// `max` of a repetition with no upper bound.
pub(crate) const UNBOUNDED: u32 = 0xFFF;
/// The largest count `{m,n}` may name.
pub const MAX_REPEAT: u32 = UNBOUNDED - 1;
/// Grammars are at most this many words (positions fit 20 bits of a frame).
pub const MAX_WORDS: usize = 1 << 20;
/// Nesting of groups past this depth is refused.
const MAX_NESTING: u32 = 128;
/// The left-recursion check follows at most this many rule references and
/// groups in a row (the recursion's depth).
const MAX_LEFT_DEPTH: u32 = 1024;
/// Rules per grammar.
pub const MAX_RULES: usize = 4096;
/// Ranges per character class.
pub const MAX_CLASS_RANGES: u32 = 1024;

#[inline]
pub(crate) fn kind(w: u32) -> u32 {
    w >> KIND_SHIFT
}

#[inline]
pub(crate) fn payload(w: u32) -> u32 {
    w & PAYLOAD
}

#[inline]
fn header(kind: u32, payload: u32) -> u32 {
    (kind << KIND_SHIFT) | payload
}

/// One rule's name and place, in caller memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleSlot {
    name_at: u32,
    name_len: u32,
    /// Word offset of the rule's `GROUP`; `u32::MAX` while undefined.
    start: u32,
    /// Byte offset of the first reference or the definition (for errors).
    seen_at: u32,
    /// Bit 0: can match the empty string; bits 1-2: left-recursion colour.
    flags: u32,
}

/// A parsed grammar: a flat element array and its rule table, both borrowed
/// from the caller.
#[derive(Debug, Clone, Copy)]
pub struct Grammar<'m> {
    pub(crate) words: &'m [u32],
    pub(crate) rules: &'m [RuleSlot],
    pub(crate) root: u32,
}

impl<'m> Grammar<'m> {
    /// Words of element memory that parsing `src` needs at most.
    pub const fn words_for(src: &str) -> usize {
        3 * src.len() + 8
    }

    /// Rule slots that parsing `src` needs at most.
    pub const fn rules_for(src: &str) -> usize {
        src.len() / 2 + 2
    }

    /// Parses `src` into `words` and `rules` (see [`Grammar::words_for`] and
    /// [`Grammar::rules_for`]).
    pub fn parse(
        src: &str,
        words: &'m mut [u32],
        rules: &'m mut [RuleSlot],
    ) -> Result<Grammar<'m>> {
        let mut p = Parser {
            src: src.as_bytes(),
            at: 0,
            out: words,
            len: 0,
            rules,
            n_rules: 0,
        };
        p.grammar()?;
        let Parser {
            out,
            len,
            rules,
            n_rules,
            ..
        } = p;
        let (words, rules) = (&out[..len], &rules[..n_rules]);
        let root = (0..n_rules)
            .find(|&r| name_of(src.as_bytes(), &rules[r]) == b"root")
            .ok_or(Error::Grammar {
                fault: GrammarFault::NoRoot,
                at: 0,
            })? as u32;
        Ok(Grammar {
            words,
            rules,
            root: rules[root as usize].start,
        })
    }

    /// The number of rules.
    pub fn rules(&self) -> usize {
        self.rules.len()
    }

    /// The word offset of rule `r`'s body.
    #[inline]
    pub(crate) fn rule_start(&self, r: u32) -> u32 {
        self.rules[r as usize].start
    }
}

fn name_of<'s>(src: &'s [u8], r: &RuleSlot) -> &'s [u8] {
    &src[r.name_at as usize..(r.name_at + r.name_len) as usize]
}

/// Words from `pos` to the end of its element.
pub(crate) fn elem_len(words: &[u32], pos: usize) -> usize {
    let w = words[pos];
    match kind(w) {
        CLASS => 1 + 2 * (payload(w) & 0xFFFF) as usize,
        GROUP => payload(w) as usize,
        REPEAT => 1 + elem_len(words, pos + 1),
        _ => 1,
    }
}

/// The alternatives' first words of the group at `pos`, in order.
pub(crate) fn alternatives(words: &[u32], pos: usize) -> impl Iterator<Item = usize> + '_ {
    let end = pos + payload(words[pos]) as usize - 1;
    let mut at = Some(pos + 1);
    core::iter::from_fn(move || {
        let start = at?;
        // Find this alternative's end (its ALT or the group's END).
        let mut p = start;
        while p < end && kind(words[p]) != ALT {
            p += elem_len(words, p);
        }
        at = if p < end { Some(p + 1) } else { None };
        Some(start)
    })
}

struct Parser<'s, 'm> {
    src: &'s [u8],
    at: usize,
    out: &'m mut [u32],
    len: usize,
    rules: &'m mut [RuleSlot],
    n_rules: usize,
}

impl Parser<'_, '_> {
    fn fail(&self, fault: GrammarFault) -> Error {
        Error::Grammar {
            fault,
            at: self.at as u32,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.at).copied()
    }

    fn emit(&mut self, w: u32) -> Result<usize> {
        if self.len >= self.out.len() || self.len >= MAX_WORDS {
            return Err(Error::BufferTooSmall {
                needed: self.len as u64 + 1,
                found: self.out.len() as u64,
            });
        }
        self.out[self.len] = w;
        self.len += 1;
        Ok(self.len - 1)
    }

    /// Inserts `w` at `pos`, moving the words after it up by one.
    fn insert(&mut self, pos: usize, w: u32) -> Result<()> {
        self.emit(0)?;
        self.out.copy_within(pos..self.len - 1, pos + 1);
        self.out[pos] = w;
        Ok(())
    }

    fn space(&mut self, newline_ok: bool) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' => self.at += 1,
                b'\r' | b'\n' if newline_ok => self.at += 1,
                b'#' => {
                    while !matches!(self.peek(), None | Some(b'\n') | Some(b'\r')) {
                        self.at += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn name(&mut self) -> Result<(u32, u32)> {
        let start = self.at;
        while matches!(self.peek(), Some(c) if is_name_byte(c)) {
            self.at += 1;
        }
        if self.at == start {
            return Err(self.fail(GrammarFault::Syntax));
        }
        Ok((start as u32, (self.at - start) as u32))
    }

    /// The rule index for a name, adding it (undefined) if new.
    fn rule(&mut self, (at, len): (u32, u32)) -> Result<u32> {
        let name = &self.src[at as usize..(at + len) as usize];
        if let Some(r) = (0..self.n_rules).find(|&r| name_of(self.src, &self.rules[r]) == name) {
            return Ok(r as u32);
        }
        if self.n_rules == MAX_RULES {
            return Err(self.fail(GrammarFault::TooComplex));
        }
        let slot = self
            .rules
            .get_mut(self.n_rules)
            .ok_or(Error::BufferTooSmall {
                needed: self.n_rules as u64 + 1,
                found: self.n_rules as u64,
            })?;
        *slot = RuleSlot {
            name_at: at,
            name_len: len,
            start: u32::MAX,
            seen_at: at,
            flags: 0,
        };
        self.n_rules += 1;
        Ok(self.n_rules as u32 - 1)
    }

    fn grammar(&mut self) -> Result<()> {
        self.space(true);
        while self.at < self.src.len() {
            let name = self.name()?;
            let r = self.rule(name)? as usize;
            if self.rules[r].start != u32::MAX {
                self.at = name.0 as usize;
                return Err(self.fail(GrammarFault::DuplicateRule));
            }
            self.rules[r].seen_at = name.0;
            self.space(false);
            if !self.src[self.at..].starts_with(b"::=") {
                return Err(self.fail(GrammarFault::Syntax));
            }
            self.at += 3;
            self.space(true);
            self.rules[r].start = self.len as u32;
            self.alternates(false, 0)?;
            self.space(false);
            match self.peek() {
                None => {}
                Some(b'\r') | Some(b'\n') => self.at += 1,
                Some(_) => return Err(self.fail(GrammarFault::Syntax)),
            }
            self.space(true);
        }
        if let Some(r) = self.rules[..self.n_rules]
            .iter()
            .find(|r| r.start == u32::MAX)
        {
            return Err(Error::Grammar {
                fault: GrammarFault::UndefinedRule,
                at: r.seen_at,
            });
        }
        self.check_left_recursion()
    }

    fn alternates(&mut self, nested: bool, depth: u32) -> Result<()> {
        if depth > MAX_NESTING {
            return Err(self.fail(GrammarFault::TooComplex));
        }
        let start = self.emit(header(GROUP, 0))?;
        self.sequence(nested, depth)?;
        while self.peek() == Some(b'|') {
            self.emit(header(ALT, 0))?;
            self.at += 1;
            self.space(true);
            self.sequence(nested, depth)?;
        }
        self.emit(header(END, 0))?;
        self.out[start] = header(GROUP, (self.len - start) as u32);
        Ok(())
    }

    fn sequence(&mut self, nested: bool, depth: u32) -> Result<()> {
        // Where the element a postfix operator applies to starts.
        let mut last: Option<usize> = None;
        while let Some(c) = self.peek() {
            match c {
                b'"' => {
                    self.at += 1;
                    let start = self.len;
                    let mut chars = 0;
                    loop {
                        match self.peek() {
                            None => return Err(self.fail(GrammarFault::Syntax)),
                            Some(b'"') => break,
                            Some(_) => {
                                let cp = self.char()?;
                                self.emit(header(CLASS, 1))?;
                                self.emit(cp)?;
                                self.emit(cp)?;
                                chars += 1;
                            }
                        }
                    }
                    self.at += 1;
                    last = match chars {
                        0 => None,
                        1 => Some(start),
                        _ => {
                            self.wrap_in_group(start)?;
                            Some(start)
                        }
                    };
                }
                b'[' => {
                    self.at += 1;
                    let start = self.emit(0)?;
                    let mut neg = 0;
                    if self.peek() == Some(b'^') {
                        neg = NEGATED;
                        self.at += 1;
                    }
                    let mut n = 0u32;
                    loop {
                        match self.peek() {
                            None => return Err(self.fail(GrammarFault::Syntax)),
                            Some(b']') => break,
                            Some(_) => {
                                let lo = self.char()?;
                                let mut hi = lo;
                                if self.peek() == Some(b'-')
                                    && self.src.get(self.at + 1) != Some(&b']')
                                {
                                    self.at += 1;
                                    if self.peek().is_none() {
                                        return Err(self.fail(GrammarFault::Syntax));
                                    }
                                    hi = self.char()?;
                                    if hi < lo {
                                        return Err(self.fail(GrammarFault::BadCharacter));
                                    }
                                }
                                self.emit(lo)?;
                                self.emit(hi)?;
                                n += 1;
                                if n > MAX_CLASS_RANGES {
                                    return Err(self.fail(GrammarFault::TooComplex));
                                }
                            }
                        }
                    }
                    self.at += 1;
                    let n = sort_ranges(&mut self.out[start + 1..start + 1 + 2 * n as usize]);
                    self.len = start + 1 + 2 * n;
                    self.out[start] = header(CLASS, n as u32 | neg);
                    last = Some(start);
                }
                b'.' => {
                    self.at += 1;
                    last = Some(self.emit(header(CLASS, NEGATED))?);
                }
                b'(' => {
                    self.at += 1;
                    self.space(true);
                    let start = self.len;
                    self.alternates(true, depth + 1)?;
                    if self.peek() != Some(b')') {
                        return Err(self.fail(GrammarFault::Syntax));
                    }
                    self.at += 1;
                    last = Some(start);
                }
                b'*' | b'+' | b'?' => {
                    let (min, max) = match c {
                        b'*' => (0, UNBOUNDED),
                        b'+' => (1, UNBOUNDED),
                        _ => (0, 1),
                    };
                    self.repeat(last, min, max, self.at)?;
                    self.at += 1;
                }
                b'{' => {
                    let at = self.at;
                    self.at += 1;
                    self.space(false);
                    let min = self.count()?;
                    self.space(false);
                    let max = if self.peek() == Some(b',') {
                        self.at += 1;
                        self.space(false);
                        if self.peek() == Some(b'}') {
                            UNBOUNDED
                        } else {
                            self.count()?
                        }
                    } else {
                        min
                    };
                    self.space(false);
                    if self.peek() != Some(b'}') {
                        return Err(self.fail(GrammarFault::Syntax));
                    }
                    self.at += 1;
                    if max < min {
                        self.at = at;
                        return Err(self.fail(GrammarFault::Syntax));
                    }
                    self.repeat(last, min, max, at)?;
                }
                c if is_name_byte(c) => {
                    let name = self.name()?;
                    let r = self.rule(name)?;
                    last = Some(self.emit(header(REF, r))?);
                }
                _ => break,
            }
            self.space(nested);
        }
        Ok(())
    }

    fn count(&mut self) -> Result<u32> {
        let start = self.at;
        let mut n: u32 = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            n = n.saturating_mul(10).saturating_add((c - b'0') as u32);
            self.at += 1;
        }
        if self.at == start {
            return Err(self.fail(GrammarFault::Syntax));
        }
        if n > MAX_REPEAT {
            self.at = start;
            return Err(self.fail(GrammarFault::RepetitionTooLarge));
        }
        Ok(n)
    }

    /// Makes the element at `last` the item of a repetition whose operator
    /// starts at byte `op` (where an error points).
    fn repeat(&mut self, last: Option<usize>, min: u32, max: u32, op: usize) -> Result<()> {
        // A repetition of a repetition (`x**`, `x{2}*`) is refused: written
        // with parentheses it counts against the nesting cap, so nothing
        // unbounded piles up.
        let Some(pos) = last.filter(|&p| kind(self.out[p]) != REPEAT) else {
            return Err(Error::Grammar {
                fault: GrammarFault::Syntax,
                at: op as u32,
            });
        };
        self.insert(pos, header(REPEAT, min | (max << 12)))
    }

    /// Makes the words from `pos` to the end one group of one alternative.
    fn wrap_in_group(&mut self, pos: usize) -> Result<()> {
        self.insert(pos, 0)?;
        self.emit(header(END, 0))?;
        self.out[pos] = header(GROUP, (self.len - pos) as u32);
        Ok(())
    }

    /// One character of a literal or class, escapes decoded.
    fn char(&mut self) -> Result<u32> {
        let c = self.src[self.at];
        if c == b'\\' {
            self.at += 1;
            let e = self.peek().ok_or(self.fail(GrammarFault::Syntax))?;
            self.at += 1;
            let hex = |p: &mut Self, n: usize| -> Result<u32> {
                let mut v: u32 = 0;
                for _ in 0..n {
                    let d = p
                        .peek()
                        .and_then(|c| (c as char).to_digit(16))
                        .ok_or(p.fail(GrammarFault::Syntax))?;
                    v = (v << 4) | d;
                    p.at += 1;
                }
                if v > 0x10FFFF {
                    return Err(p.fail(GrammarFault::BadCharacter));
                }
                Ok(v)
            };
            return match e {
                b'n' => Ok(b'\n' as u32),
                b'r' => Ok(b'\r' as u32),
                b't' => Ok(b'\t' as u32),
                b'\\' | b'"' | b'[' | b']' | b'-' | b'^' | b'/' => Ok(e as u32),
                b'x' => hex(self, 2),
                b'u' => hex(self, 4),
                b'U' => hex(self, 8),
                _ => {
                    self.at -= 2;
                    Err(self.fail(GrammarFault::Syntax))
                }
            };
        }
        // The source is a &str: a lead byte starts a whole character.
        let n = match c {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            _ => 4,
        };
        let s = core::str::from_utf8(&self.src[self.at..self.at + n])
            .map_err(|_| self.fail(GrammarFault::Syntax))?;
        self.at += n;
        Ok(s.chars().next().map_or(0, |c| c as u32))
    }

    /// Refuses a rule that can reach itself before consuming a character
    /// (matching it would never end).
    fn check_left_recursion(&mut self) -> Result<()> {
        let words = &self.out[..self.len];
        // Which rules can match the empty string: iterate to a fixed point.
        // Passes alternate in direction, so a chain in either order settles in one.
        for pass in 0.. {
            let mut changed = false;
            for i in 0..self.n_rules {
                let r = if pass % 2 == 0 {
                    i
                } else {
                    self.n_rules - 1 - i
                };
                if self.rules[r].flags & 1 == 0
                    && nullable(words, self.rules, self.rules[r].start as usize)
                {
                    self.rules[r].flags |= 1;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        for r in 0..self.n_rules {
            visit(words, self.rules, r, 0)?;
        }
        Ok(())
    }
}

/// Sorts a class's `lo, hi` pairs and merges those that overlap or touch;
/// returns how many remain: matching then scans sorted, disjoint ranges.
fn sort_ranges(r: &mut [u32]) -> usize {
    let n = r.len() / 2;
    // Insertion sort on pairs (at most MAX_CLASS_RANGES of them).
    for i in 1..n {
        let mut j = i;
        while j > 0 && r[2 * (j - 1)] > r[2 * j] {
            r.swap(2 * (j - 1), 2 * j);
            r.swap(2 * (j - 1) + 1, 2 * j + 1);
            j -= 1;
        }
    }
    let mut m = 0;
    for i in 0..n {
        let (lo, hi) = (r[2 * i], r[2 * i + 1]);
        if m > 0 && lo <= r[2 * (m - 1) + 1].saturating_add(1) {
            r[2 * (m - 1) + 1] = r[2 * (m - 1) + 1].max(hi);
        } else {
            r[2 * m] = lo;
            r[2 * m + 1] = hi;
            m += 1;
        }
    }
    m
}

fn is_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

fn nullable(words: &[u32], rules: &[RuleSlot], pos: usize) -> bool {
    let w = words[pos];
    match kind(w) {
        CLASS => false,
        REF => rules[payload(w) as usize].flags & 1 != 0,
        REPEAT => payload(w) & 0xFFF == 0 || nullable(words, rules, pos + 1),
        GROUP => alternatives(words, pos).any(|a| seq_nullable(words, rules, a)),
        _ => true,
    }
}

fn seq_nullable(words: &[u32], rules: &[RuleSlot], mut p: usize) -> bool {
    while !matches!(kind(words[p]), ALT | END) {
        if !nullable(words, rules, p) {
            return false;
        }
        p += elem_len(words, p);
    }
    true
}

const GREY: u32 = 2;
const BLACK: u32 = 4;

/// Depth-first search over "can start with" edges; a grey rule met again is a cycle.
fn visit(words: &[u32], rules: &mut [RuleSlot], r: usize, depth: u32) -> Result<()> {
    let colour = rules[r].flags & (GREY | BLACK);
    if colour == BLACK {
        return Ok(());
    }
    if colour == GREY {
        return Err(Error::Grammar {
            fault: GrammarFault::LeftRecursion,
            at: rules[r].seen_at,
        });
    }
    if depth > MAX_LEFT_DEPTH {
        return Err(Error::Grammar {
            fault: GrammarFault::TooComplex,
            at: rules[r].seen_at,
        });
    }
    rules[r].flags |= GREY;
    left_refs(words, rules, rules[r].start as usize, depth)?;
    rules[r].flags = (rules[r].flags & !GREY) | BLACK;
    Ok(())
}

/// Visits every rule the element at `pos` can start with.
fn left_refs(words: &[u32], rules: &mut [RuleSlot], pos: usize, depth: u32) -> Result<()> {
    let w = words[pos];
    match kind(w) {
        REF => visit(words, rules, payload(w) as usize, depth + 1),
        REPEAT => left_refs(words, rules, pos + 1, depth),
        GROUP if depth > MAX_LEFT_DEPTH => Err(Error::Grammar {
            fault: GrammarFault::TooComplex,
            at: 0,
        }),
        GROUP => {
            let depth = depth + 1;
            let mut alt = Some(pos + 1);
            while let Some(mut p) = alt {
                alt = None;
                loop {
                    match kind(words[p]) {
                        ALT => {
                            alt = Some(p + 1);
                            break;
                        }
                        END => break,
                        _ => {
                            left_refs(words, rules, p, depth)?;
                            let go_on = nullable(words, rules, p);
                            p += elem_len(words, p);
                            if !go_on {
                                // Skip to this alternative's end.
                                while !matches!(kind(words[p]), ALT | END) {
                                    p += elem_len(words, p);
                                }
                            }
                        }
                    }
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
