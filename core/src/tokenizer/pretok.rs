//! Pre-tokenizers: how byte-level BPE vocabularies cut text into words before
//! merging. Each is the regular expression (or sequence of them) that the
//! vocabulary was trained with, written out by hand so the core needs no regex
//! engine and no allocator: a single left-to-right pass per expression.
//!
//! As with a regex split, the text between matches is kept as a word too, and a
//! sequence of expressions applies each one to the words the previous produced.
//! A "fragment end" counts as the end of text for look-aheads (`(?!\S)`).

use super::unicode::{
    in_table, is_letter, is_mark, is_number, is_other, is_punctuation, is_space, is_symbol,
};
use crate::Result;

/// The splitting rules named by `tokenizer.ggml.pre` (llama.cpp's
/// `llama_vocab_pre_type`; expressions as in its `llm_tokenizer_bpe`).
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
    /// Qwen2, Qwen2.5, Qwen3: Llama 3's expression with `\p{N}` one digit at a time.
    Qwen2,
    /// Qwen3.5: Qwen2's expression with combining marks (`\p{M}`) counted as
    /// letters: `[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+` and ` ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*`.
    Qwen35,
    /// DeepSeek LLM: `[\r\n]`, then `\s?` + Latin-like letters, then `\s?` +
    /// ASCII and full-width punctuation, then trailing `\s+$`, then CJK and
    /// Hangul runs, then `\p{N}+`.
    DeepseekLlm,
    /// DeepSeek Coder: `[\r\n]`, `\s?\p{L}+`, `\s?\p{P}+`, CJK and Hangul
    /// runs, then every `\p{N}` on its own.
    DeepseekCoder,
    /// DeepSeek V3 / R1: `\p{N}{1,3}`, then Han and kana runs, then
    /// ``[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+``
    /// `|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
    DeepseekV3,
    /// Falcon: runs of punctuation (and `` $+<=>^~|` ``), GPT-2's expression,
    /// then `[0-9]{3}`.
    Falcon,
    /// A GPT-2-type vocabulary with no pre-tokenizer named: runs of
    /// punctuation, then GPT-2's expression, then `\p{N}+`, then `[0-9]{3}`.
    Default,
}

impl PreTokenizer {
    /// Maps a `tokenizer.ggml.pre` name to its rules (`None`: unknown name).
    /// Names that share an expression in llama.cpp share a variant here.
    pub fn from_name(name: &str) -> Option<PreTokenizer> {
        Some(match name {
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva" | "minerva-7b" | "mellum2" => PreTokenizer::Smollm,
            "gpt2" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v1-en"
            | "jina-v2-es" | "jina-v2-de" | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo"
            | "jais" | "trillion" | "exaone4" | "a.x-4.0" | "mellum" | "modern-bert"
            | "granite-docling" => PreTokenizer::Gpt2,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => PreTokenizer::Llama3,
            "qwen2" | "deepseek-r1-qwen" | "megrez" | "stablelm2" | "hunyuan" | "solar-open"
            | "kormo" | "f2llmv2" => PreTokenizer::Qwen2,
            "qwen35" => PreTokenizer::Qwen35,
            "deepseek-llm" => PreTokenizer::DeepseekLlm,
            "deepseek-coder" => PreTokenizer::DeepseekCoder,
            "deepseek-v3" | "hunyuan-dense" | "joyai-llm" | "hy_v4" => PreTokenizer::DeepseekV3,
            "falcon" => PreTokenizer::Falcon,
            "default" => PreTokenizer::Default,
            _ => return None,
        })
    }

    /// Whether a word that is itself a token is taken whole, before merging
    /// (llama.cpp's `ignore_merges`, set for Llama 3's vocabularies).
    pub fn ignore_merges(self) -> bool {
        self == PreTokenizer::Llama3
    }

    /// Calls `f` with each word of `text`, in order; the words concatenate to `text`.
    pub fn split(self, text: &str, f: &mut dyn FnMut(&str) -> Result<()>) -> Result<()> {
        match self {
            PreTokenizer::Gpt2 => split_gpt2(text, f),
            PreTokenizer::Smollm => split_each(text, is_number, &mut |w| split_gpt2(w, f)),
            PreTokenizer::Llama3 => split_llama3(text, LLAMA3, f),
            PreTokenizer::Qwen2 => split_llama3(text, QWEN2, f),
            PreTokenizer::Qwen35 => split_llama3(text, QWEN35, f),
            PreTokenizer::DeepseekLlm => split_each(text, is_newline, &mut |w| {
                split_matches(
                    w,
                    |s, i| lead_run(s, i, is_space, is_deepseek_latin),
                    &mut |w| {
                        split_matches(
                            w,
                            |s, i| lead_run(s, i, is_space, is_deepseek_punct),
                            &mut |w| {
                                split_trailing_space(w, &mut |w| {
                                    split_runs(w, is_cjk_hangul, &mut |w| {
                                        split_runs(w, is_number, f)
                                    })
                                })
                            },
                        )
                    },
                )
            }),
            PreTokenizer::DeepseekCoder => split_each(text, is_newline, &mut |w| {
                split_matches(w, |s, i| lead_run(s, i, is_space, is_letter), &mut |w| {
                    split_matches(
                        w,
                        |s, i| lead_run(s, i, is_space, is_punctuation),
                        &mut |w| split_runs(w, is_cjk_hangul, &mut |w| split_each(w, is_number, f)),
                    )
                })
            }),
            PreTokenizer::DeepseekV3 => split_matches(text, number_group_end, &mut |w| {
                split_runs(w, is_han_kana, &mut |w| {
                    split_matches(w, deepseek_v3_end, f)
                })
            }),
            PreTokenizer::Falcon => split_runs(
                text,
                |c| {
                    is_punctuation(c)
                        || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|' | '`')
                },
                &mut |w| split_gpt2(w, &mut |w| split_ascii_digits3(w, f)),
            ),
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

fn is_newline(c: char) -> bool {
    c == '\r' || c == '\n'
}

/// DeepSeek LLM's letter class, as written in its expression:
/// `[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕ…𞤀-𞥃]`
/// (cased letters of the Latin, Greek, Cyrillic, Armenian, Georgian, Cherokee,
/// Glagolitic, Coptic, Deseret, Osage, Old Hungarian, Warang Citi and Adlam scripts).
static DEEPSEEK_LATIN: [(u32, u32); 84] = [
    (0x0041, 0x005A),
    (0x0061, 0x007A),
    (0x00B5, 0x00B5),
    (0x00C0, 0x00D6),
    (0x00D8, 0x00F6),
    (0x00F8, 0x01BA),
    (0x01BC, 0x01BF),
    (0x01C4, 0x0293),
    (0x0295, 0x02AF),
    (0x0370, 0x0373),
    (0x0376, 0x0377),
    (0x037B, 0x037D),
    (0x037F, 0x037F),
    (0x0386, 0x0386),
    (0x0388, 0x038A),
    (0x038C, 0x038C),
    (0x038E, 0x03A1),
    (0x03A3, 0x03F5),
    (0x03F7, 0x0481),
    (0x048A, 0x052F),
    (0x0531, 0x0556),
    (0x10A0, 0x10C5),
    (0x13A0, 0x13F5),
    (0x13F8, 0x13FD),
    (0x1C90, 0x1CBA),
    (0x1CBD, 0x1CBF),
    (0x1D00, 0x1D2B),
    (0x1D6B, 0x1D77),
    (0x1D79, 0x1D9A),
    (0x1E00, 0x1F15),
    (0x1F18, 0x1F1D),
    (0x1F20, 0x1F45),
    (0x1F48, 0x1F4D),
    (0x1F50, 0x1F57),
    (0x1F59, 0x1F59),
    (0x1F5B, 0x1F5B),
    (0x1F5D, 0x1F5D),
    (0x1F5F, 0x1F7D),
    (0x1F80, 0x1FB4),
    (0x1FB6, 0x1FBC),
    (0x1FBE, 0x1FBE),
    (0x1FC2, 0x1FC4),
    (0x1FC6, 0x1FCC),
    (0x1FD0, 0x1FD3),
    (0x1FD6, 0x1FDB),
    (0x1FE0, 0x1FEC),
    (0x1FF2, 0x1FF4),
    (0x1FF6, 0x1FFC),
    (0x2102, 0x2102),
    (0x2107, 0x2107),
    (0x210A, 0x2113),
    (0x2115, 0x2115),
    (0x2119, 0x211D),
    (0x2124, 0x2124),
    (0x2126, 0x2126),
    (0x2128, 0x2128),
    (0x212A, 0x212D),
    (0x212F, 0x2134),
    (0x2139, 0x2139),
    (0x213C, 0x213F),
    (0x2145, 0x2149),
    (0x214E, 0x214E),
    (0x2183, 0x2184),
    (0x2C00, 0x2C7B),
    (0x2C7E, 0x2CE4),
    (0x2CEB, 0x2CEE),
    (0x2CF2, 0x2CF3),
    (0xA640, 0xA66D),
    (0xA680, 0xA69B),
    (0xA722, 0xA76F),
    (0xA771, 0xA787),
    (0xA78B, 0xA78E),
    (0xAB70, 0xABBF),
    (0xFB00, 0xFB06),
    (0xFB13, 0xFB17),
    (0xFF21, 0xFF3A),
    (0xFF41, 0xFF5A),
    (0x10400, 0x1044F),
    (0x104B0, 0x104D3),
    (0x104D8, 0x104FB),
    (0x10C80, 0x10CB2),
    (0x10CC0, 0x10CF2),
    (0x118A0, 0x118DF),
    (0x1E900, 0x1E943),
];

fn is_deepseek_latin(c: char) -> bool {
    in_table(&DEEPSEEK_LATIN, c)
}

/// DeepSeek LLM's punctuation class `[!-/:-~！-／：-～‘-‟　-。]` (ASCII `!`..`/`
/// and `:`..`~`, their full-width forms, curly quotes, U+3000..U+3002).
fn is_deepseek_punct(c: char) -> bool {
    matches!(c, '!'..='/' | ':'..='~' | '！'..='／' | '：'..='～' | '\u{2018}'..='\u{201F}' | '\u{3000}'..='\u{3002}')
}

/// `[一-龥ࠀ-一가-퟿]`: U+0800..U+9FA5 and U+AC00..U+D7FF (DeepSeek LLM and Coder).
fn is_cjk_hangul(c: char) -> bool {
    matches!(c, '\u{0800}'..='\u{9FA5}' | '\u{AC00}'..='\u{D7FF}')
}

/// `[一-龥぀-ゟ゠-ヿ]`: Han U+4E00..U+9FA5, hiragana and katakana (DeepSeek V3).
fn is_han_kana(c: char) -> bool {
    matches!(c, '\u{4E00}'..='\u{9FA5}' | '\u{3040}'..='\u{30FF}')
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

/// An isolated split on one expression: `m(s, i)` is the end of the match
/// that starts at byte `i`, if one does; the text between matches is a word too.
fn split_matches(
    s: &str,
    m: impl Fn(&str, usize) -> Option<usize>,
    f: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<()> {
    let (mut start, mut pos) = (0, 0);
    while let Some(c) = at(s, pos) {
        match m(s, pos) {
            Some(end) if end > pos => {
                emit(s, &mut start, pos, f)?;
                emit(s, &mut start, end, f)?;
                pos = end;
            }
            _ => pos += c.len_utf8(),
        }
    }
    emit(s, &mut start, s.len(), f)
}

/// `L?C+` at `i`, where `L` is `lead` and `C` is `class`: one optional leading
/// character, then a run of the class (the lead is taken only when a run follows).
fn lead_run(s: &str, i: usize, lead: fn(char) -> bool, class: fn(char) -> bool) -> Option<usize> {
    let c = at(s, i)?;
    let after = i + c.len_utf8();
    // Either the lead and a run after it, or a run from `c` itself.
    let matched = (lead(c) && at(s, after).is_some_and(class)) || class(c);
    matched.then(|| skip_while(s, after, class))
}

/// `\s+$`: the text, then its trailing whitespace.
fn split_trailing_space(s: &str, f: &mut dyn FnMut(&str) -> Result<()>) -> Result<()> {
    let body = s.trim_end_matches(is_space);
    let mut start = 0;
    emit(s, &mut start, body.len(), f)?;
    emit(s, &mut start, s.len(), f)
}

/// `\p{N}{1,3}` at `i`.
fn number_group_end(s: &str, i: usize) -> Option<usize> {
    let mut q = i;
    for _ in 0..3 {
        match at(s, q) {
            Some(d) if is_number(d) => q += d.len_utf8(),
            _ => break,
        }
    }
    (q > i).then_some(q)
}

/// DeepSeek V3's third expression at `i`:
/// ``[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+``
/// `|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*`
/// `|\s*[\r\n]+|\s+(?!\S)|\s+`. Digits and other characters outside these
/// classes match nothing and are left between matches.
fn deepseek_v3_end(s: &str, i: usize) -> Option<usize> {
    let c = at(s, i)?;
    let after = i + c.len_utf8();
    let next = at(s, after);
    let word = |c: char| is_letter(c) || is_mark(c);
    let punct = |c: char| is_punctuation(c) || is_symbol(c);
    if c.is_ascii_punctuation() && next.is_some_and(|d| d.is_ascii_alphabetic()) {
        return Some(skip_while(s, after, |d| d.is_ascii_alphabetic()));
    }
    if word(c) {
        return Some(skip_while(s, after, word));
    }
    if !(is_newline(c) || punct(c)) && next.is_some_and(word) {
        return Some(skip_while(s, after, word));
    }
    let (body, c2) = if c == ' ' {
        (after, next)
    } else {
        (i, Some(c))
    };
    if c2.is_some_and(punct) {
        let end = skip_while(s, body, punct);
        return Some(skip_while(s, end, is_newline));
    }
    newlines_end(s, i).or_else(|| whitespace_end(s, i))
}

/// `\s*[\r\n]+` at `pos`: through the last newline of the whitespace run.
fn newlines_end(s: &str, pos: usize) -> Option<usize> {
    let mut q = pos;
    let mut end = None;
    while let Some(d) = at(s, q) {
        if !is_space(d) {
            break;
        }
        q += d.len_utf8();
        if is_newline(d) {
            end = Some(q);
        }
    }
    end
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

/// The classes and number grouping that tell Llama 3's expression from its
/// Qwen variants.
#[derive(Clone, Copy)]
struct Llama3Rules {
    /// `\p{N}{1,N}`: digits per group.
    digits: usize,
    /// What a word is made of: `\p{L}`, or `[\p{L}\p{M}]` (Qwen3.5).
    word: fn(char) -> bool,
    /// `[^\s\p{L}\p{N}]` or `[^\s\p{L}\p{M}\p{N}]`.
    other: fn(char) -> bool,
}

const LLAMA3: Llama3Rules = Llama3Rules {
    digits: 3,
    word: is_letter,
    other: is_other,
};
const QWEN2: Llama3Rules = Llama3Rules {
    digits: 1,
    ..LLAMA3
};
const QWEN35: Llama3Rules = Llama3Rules {
    digits: 1,
    word: |c| is_letter(c) || is_mark(c),
    other: |c| is_other(c) && !is_mark(c),
};

fn split_llama3(s: &str, r: Llama3Rules, f: &mut dyn FnMut(&str) -> Result<()>) -> Result<()> {
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
        // [^\r\n\p{L}\p{N}]?\p{L}+ (or [\p{L}\p{M}]+)
        if !(is_newline(c) || is_number(c)) && ((r.word)(c) || next.is_some_and(r.word)) {
            let end = skip_while(s, after, r.word);
            emit(s, &mut start, end, f)?;
            pos = start;
            continue;
        }
        // \p{N}{1,3} (or \p{N})
        if is_number(c) {
            let mut q = pos;
            let mut n = 0;
            while let Some(d) = at(s, q) {
                if !is_number(d) {
                    break;
                }
                if n == r.digits {
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
        if c2.is_some_and(r.other) {
            let end = skip_while(s, body, r.other);
            let end = skip_while(s, end, is_newline);
            emit(s, &mut start, end, f)?;
            pos = start;
            continue;
        }
        // \s*[\r\n]+, then \s+(?!\S)|\s+, else a single character.
        let end = newlines_end(s, pos)
            .or_else(|| whitespace_end(s, pos))
            .unwrap_or(after);
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
    fn qwen_words() {
        let w = words(PreTokenizer::Qwen2, "I'M 1234 ok?!\n\n  x");
        assert_eq!(
            w,
            ["I", "'M", " ", "1", "2", "3", "4", " ok", "?!\n\n", " ", " x"]
        );
        // A combining mark joins the word in Qwen3.5 and splits it in Qwen2.
        assert_eq!(words(PreTokenizer::Qwen2, "x\u{301}y"), ["x", "\u{301}y"]);
        assert_eq!(words(PreTokenizer::Qwen35, "x\u{301}y"), ["x\u{301}y"]);
    }

    #[test]
    fn deepseek_sequences() {
        assert_eq!(
            words(PreTokenizer::DeepseekLlm, "Hi, 世界 12\n ok  "),
            ["Hi", ",", " ", "世界", " ", "12", "\n", " ok", "  "]
        );
        assert_eq!(
            words(PreTokenizer::DeepseekCoder, "x=12 中"),
            ["x", "=", "1", "2", " ", "中"]
        );
        assert_eq!(
            words(PreTokenizer::DeepseekV3, "$100 .NET 12345 かな"),
            ["$", "100", " .", "NET", " ", "123", "45", " ", "かな"]
        );
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
        for (name, pre) in [
            ("qwen2", PreTokenizer::Qwen2),
            ("deepseek-r1-qwen", PreTokenizer::Qwen2),
            ("qwen35", PreTokenizer::Qwen35),
            ("deepseek-llm", PreTokenizer::DeepseekLlm),
            ("deepseek-coder", PreTokenizer::DeepseekCoder),
            ("deepseek-v3", PreTokenizer::DeepseekV3),
            ("falcon", PreTokenizer::Falcon),
        ] {
            assert_eq!(PreTokenizer::from_name(name), Some(pre), "{name}");
        }
        assert_eq!(PreTokenizer::from_name("no-such"), None);
        assert_eq!(PreTokenizer::from_name("Qwen2"), None);
    }
}
