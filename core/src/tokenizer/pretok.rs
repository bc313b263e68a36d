//! Pre-tokenizers: how byte-level BPE vocabularies cut text into words before
//! merging. Each is the regular expression (or sequence of them) that the
//! vocabulary was trained with, written out by hand so the core needs no regex
//! engine and no allocator: a single left-to-right pass per expression.
//!
//! As with a regex split, the text between matches is kept as a word too, and a
//! sequence of expressions applies each one to the words the previous produced.
//! A "fragment end" counts as the end of text for look-aheads (`(?!\S)`).

use super::unicode::{is_letter, is_number, is_other, is_punctuation, is_space};
use crate::Result;

/// The splitting rules named by `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PreTokenizer {
    /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    Gpt2,
    /// SmolLM / StarCoder: every `\p{N}` on its own, then GPT-2's expression.
    Smollm,
    /// Llama 3: case-insensitive contractions, letters with one leading
    /// non-letter, numbers in groups of at most three, newlines kept apart.
    Llama3,
    /// A GPT-2-type vocabulary with no pre-tokenizer named: runs of
    /// punctuation, then GPT-2's expression, then `\p{N}+`, then `[0-9]{3}`.
    Default,
}

impl PreTokenizer {
    /// Maps a `tokenizer.ggml.pre` name to its rules (`None`: unknown name).
    pub fn from_name(name: &str) -> Option<PreTokenizer> {
        Some(match name {
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva" => PreTokenizer::Smollm,
            "gpt2" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v1-en"
            | "jina-v2-es" | "jina-v2-de" | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo"
            | "jais" | "trillion" => PreTokenizer::Gpt2,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => PreTokenizer::Llama3,
            "default" => PreTokenizer::Default,
            _ => return None,
        })
    }

    /// Calls `f` with each word of `text`, in order; the words concatenate to `text`.
    pub fn split(self, text: &str, f: &mut dyn FnMut(&str) -> Result<()>) -> Result<()> {
        match self {
            PreTokenizer::Gpt2 => split_gpt2(text, f),
            PreTokenizer::Smollm => split_each(text, is_number, &mut |w| split_gpt2(w, f)),
            PreTokenizer::Llama3 => split_llama3(text, f),
            PreTokenizer::Default => split_runs(
                text,
                |c| is_punctuation(c) || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|'),
                &mut |w| {
                    split_gpt2(w, &mut |w| {
                        split_runs(w, is_number, &mut |w| split_ascii_digits3(w, f))
                    })
                },
            ),
        }
    }
}

/// The character at byte offset `i`, if any.
#[inline]
fn at(s: &str, i: usize) -> Option<char> {
    s.get(i..).and_then(|t| t.chars().next())
}

/// Byte offset after the run of characters from `i` that satisfy `p`.
#[inline]
fn skip_while(s: &str, mut i: usize, p: impl Fn(char) -> bool) -> usize {
    while let Some(c) = at(s, i) {
        if !p(c) {
            break;
        }
        i += c.len_utf8();
    }
    i
}

/// Emits `s[*start..end]` (if non-empty) and moves `start` to `end`.
#[inline]
fn emit(
    s: &str,
    start: &mut usize,
    end: usize,
    f: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<()> {
    if end > *start {
        f(&s[*start..end])?;
    }
    *start = end;
    Ok(())
}

/// Each character matching `p` alone; the text between them as words.
fn split_each(s: &str, p: fn(char) -> bool, f: &mut dyn FnMut(&str) -> Result<()>) -> Result<()> {
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if p(c) {
            emit(s, &mut start, i, f)?;
            emit(s, &mut start, i + c.len_utf8(), f)?;
        }
    }
    emit(s, &mut start, s.len(), f)
}

/// Maximal runs of characters matching `p`, and the text between them.
fn split_runs(
    s: &str,
    p: impl Fn(char) -> bool,
    f: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<()> {
    let mut start = 0;
    let mut prev: Option<bool> = None;
    for (i, c) in s.char_indices() {
        let m = p(c);
        if prev.is_some_and(|q| q != m) {
            emit(s, &mut start, i, f)?;
        }
        prev = Some(m);
    }
    emit(s, &mut start, s.len(), f)
}

/// `[0-9][0-9][0-9]`: leftmost groups of three ASCII digits, and the rest.
fn split_ascii_digits3(s: &str, f: &mut dyn FnMut(&str) -> Result<()>) -> Result<()> {
    let b = s.as_bytes();
    let (mut start, mut i) = (0, 0);
    while i < b.len() {
        if i + 3 <= b.len() && b[i..i + 3].iter().all(u8::is_ascii_digit) {
            emit(s, &mut start, i, f)?;
            emit(s, &mut start, i + 3, f)?;
            i += 3;
        } else {
            i += 1;
        }
    }
    emit(s, &mut start, s.len(), f)
}

/// The whitespace rules shared by GPT-2 and Llama 3: `\s+(?!\S)|\s+`.
/// Returns the end of the match at `pos` (a run followed by more text leaves
/// its last character for the next word), or `None` if `pos` is not whitespace.
fn whitespace_end(s: &str, pos: usize) -> Option<usize> {
    let mut q = pos;
    let mut last = pos;
    let mut n = 0usize;
    while let Some(c) = at(s, q) {
        if !is_space(c) {
            break;
        }
        last = q;
        q += c.len_utf8();
        n += 1;
    }
    match n {
        0 => None,
        1 => Some(q),
        _ if q < s.len() => Some(last),
        _ => Some(q),
    }
}

fn split_gpt2(s: &str, f: &mut dyn FnMut(&str) -> Result<()>) -> Result<()> {
    let mut start = 0;
    let mut pos = 0;
    while let Some(c) = at(s, pos) {
        let after = pos + c.len_utf8();
        let next = at(s, after);
        // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive)
        if c == '\'' {
            if let Some(c1) = next {
                if matches!(c1, 's' | 't' | 'm' | 'd') {
                    emit(s, &mut start, after + 1, f)?;
                    pos = start;
                    continue;
                }
                let c2 = at(s, after + c1.len_utf8());
                if matches!(
                    (c1, c2),
                    ('r', Some('e')) | ('v', Some('e')) | ('l', Some('l'))
                ) {
                    emit(s, &mut start, after + 2, f)?;
                    pos = start;
                    continue;
                }
            }
        }
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
        let (body, c2) = if c == ' ' {
            (after, next)
        } else {
            (pos, Some(c))
        };
        if let Some(c2) = c2 {
            let class: Option<fn(char) -> bool> = if is_letter(c2) {
                Some(is_letter)
            } else if is_number(c2) {
                Some(is_number)
            } else if is_other(c2) {
                Some(is_other)
            } else {
                None
            };
            if let Some(p) = class {
                let end = skip_while(s, body, p);
                emit(s, &mut start, end, f)?;
                pos = start;
                continue;
            }
        }
        // `\s+(?!\S)|\s+`, else a single character on its own.
        let end = whitespace_end(s, pos).unwrap_or(after);
        emit(s, &mut start, end, f)?;
        pos = start;
    }
    Ok(())
}

fn split_llama3(s: &str, f: &mut dyn FnMut(&str) -> Result<()>) -> Result<()> {
    let mut start = 0;
    let mut pos = 0;
    while let Some(c) = at(s, pos) {
        let after = pos + c.len_utf8();
        let next = at(s, after);
        // (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if c == '\'' {
            if let Some(c1) = next {
                let l1 = c1.to_ascii_lowercase();
                if matches!(l1, 's' | 't' | 'm' | 'd') {
                    emit(s, &mut start, after + c1.len_utf8(), f)?;
                    pos = start;
                    continue;
                }
                if let Some(c2) = at(s, after + c1.len_utf8()) {
                    let l2 = c2.to_ascii_lowercase();
                    if matches!((l1, l2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                        emit(s, &mut start, after + c1.len_utf8() + c2.len_utf8(), f)?;
                        pos = start;
                        continue;
                    }
                }
            }
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(c == '\r' || c == '\n' || is_number(c))
            && (is_letter(c) || next.is_some_and(is_letter))
        {
            let end = skip_while(s, after, is_letter);
            emit(s, &mut start, end, f)?;
            pos = start;
            continue;
        }
        // \p{N}{1,3}
        if is_number(c) {
            let mut q = pos;
            let mut n = 0;
            while let Some(d) = at(s, q) {
                if !is_number(d) {
                    break;
                }
                if n == 3 {
                    emit(s, &mut start, q, f)?;
                    n = 0;
                }
                q += d.len_utf8();
                n += 1;
            }
            emit(s, &mut start, q, f)?;
            pos = start;
            continue;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let (body, c2) = if c == ' ' {
            (after, next)
        } else {
            (pos, Some(c))
        };
        if c2.is_some_and(is_other) {
            let end = skip_while(s, body, is_other);
            let end = skip_while(s, end, |d| d == '\r' || d == '\n');
            emit(s, &mut start, end, f)?;
            pos = start;
            continue;
        }
        // \s*[\r\n]+
        let mut q = pos;
        let mut last_newline_end = None;
        while let Some(d) = at(s, q) {
            if !is_space(d) {
                break;
            }
            q += d.len_utf8();
            if d == '\r' || d == '\n' {
                last_newline_end = Some(q);
            }
        }
        if let Some(end) = last_newline_end {
            emit(s, &mut start, end, f)?;
            pos = start;
            continue;
        }
        // \s+(?!\S)|\s+, else a single character.
        let end = whitespace_end(s, pos).unwrap_or(after);
        emit(s, &mut start, end, f)?;
        pos = start;
    }
    Ok(())
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;

    fn words(p: PreTokenizer, s: &str) -> Vec<String> {
        let mut v = Vec::new();
        p.split(s, &mut |w| {
            v.push(w.to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(v.concat(), s);
        v
    }

    #[test]
    fn gpt2_words() {
        let w = words(PreTokenizer::Gpt2, "Hello world, it's   me 2024!\n\n");
        assert_eq!(
            w,
            ["Hello", " world", ",", " it", "'s", "  ", " me", " 2024", "!", "\n\n"]
        );
        assert_eq!(words(PreTokenizer::Gpt2, "I'M"), ["I", "'", "M"]);
        assert_eq!(words(PreTokenizer::Gpt2, "a\t\tb"), ["a", "\t", "\t", "b"]);
    }

    #[test]
    fn smollm_splits_every_digit() {
        let w = words(PreTokenizer::Smollm, "In 2024, pi");
        assert_eq!(w, ["In", " ", "2", "0", "2", "4", ",", " pi"]);
    }

    #[test]
    fn llama3_words() {
        let w = words(PreTokenizer::Llama3, "I'M 1234567 ok?!\n\n  x");
        assert_eq!(
            w,
            ["I", "'M", " ", "123", "456", "7", " ok", "?!\n\n", " ", " x"]
        );
        assert_eq!(
            words(PreTokenizer::Llama3, "a \n\n b"),
            ["a", " \n\n", " b"]
        );
    }

    #[test]
    fn default_sequence() {
        let w = words(PreTokenizer::Default, "x=12345 (ok)");
        assert_eq!(w, ["x", "=", "123", "45", " ", "(", "ok", ")"]);
    }

    #[test]
    fn names() {
        assert_eq!(
            PreTokenizer::from_name("smollm"),
            Some(PreTokenizer::Smollm)
        );
        assert_eq!(
            PreTokenizer::from_name("llama-bpe"),
            Some(PreTokenizer::Llama3)
        );
        assert_eq!(PreTokenizer::from_name("no-such"), None);
    }
}
