//! The code point classes the pre-tokenizers split on.
//!
//! `\p{L}`, `\p{N}`, `\p{P}`, `\p{M}` and `\p{S}` come from generated range tables
//! ([`super::unicode_tables`]); `\s` is Unicode `White_Space`, which is what
//! `char::is_whitespace` tests. ASCII takes a fast path.

use core::cmp::Ordering;

use super::unicode_tables::{LETTER, MARK, NUMBER, PUNCTUATION, SYMBOL};

/// Whether `c` lies in one of the sorted, disjoint inclusive ranges of `table`.
pub(super) fn in_table(table: &[(u32, u32)], c: char) -> bool {
    let c = c as u32;
    table
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                Ordering::Less
            } else if lo > c {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        })
        .is_ok()
}

/// `\p{L}`: general categories Lu, Ll, Lt, Lm, Lo.
#[inline]
pub fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphabetic()
    } else {
        in_table(&LETTER, c)
    }
}

/// `\p{N}`: general categories Nd, Nl, No.
#[inline]
pub fn is_number(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_digit()
    } else {
        in_table(&NUMBER, c)
    }
}

/// `\p{P}`: general categories Pc, Pd, Ps, Pe, Pi, Pf, Po.
#[inline]
pub fn is_punctuation(c: char) -> bool {
    in_table(&PUNCTUATION, c)
}

/// `\p{M}`: general categories Mn, Mc, Me (combining marks).
#[inline]
pub fn is_mark(c: char) -> bool {
    !c.is_ascii() && in_table(&MARK, c)
}

/// `\p{S}`: general categories Sm, Sc, Sk, So.
#[inline]
pub fn is_symbol(c: char) -> bool {
    in_table(&SYMBOL, c)
}

/// `\s`: the `White_Space` property.
#[inline]
pub fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// `[^\s\p{L}\p{N}]`: anything else.
#[inline]
pub fn is_other(c: char) -> bool {
    !is_space(c) && !is_letter(c) && !is_number(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        for c in ['a', 'Z', 'é', 'Ж', '中', 'ㄱ', 'ʰ'] {
            assert!(is_letter(c), "{c:?}");
            assert!(!is_number(c) && !is_space(c));
        }
        for c in ['0', '9', '½', '²', '٣', 'Ⅻ'] {
            assert!(is_number(c), "{c:?}");
            assert!(!is_letter(c));
        }
        for c in [' ', '\t', '\n', '\u{a0}', '\u{3000}', '\u{2028}'] {
            assert!(is_space(c), "{c:?}");
        }
        for c in ['!', ',', '\'', '«', '。'] {
            assert!(is_punctuation(c), "{c:?}");
            assert!(is_other(c));
        }
        for c in ['$', '+', '😀', '\u{fe0f}', '\u{200d}'] {
            assert!(is_other(c), "{c:?}");
            assert!(!is_punctuation(c));
        }
        for c in ['\u{301}', '\u{94d}', '\u{fe0f}', '\u{20dd}'] {
            assert!(is_mark(c) && !is_letter(c), "{c:?}");
        }
        for c in ['$', '+', '^', '`', '€', '©', '😀'] {
            assert!(is_symbol(c) && !is_punctuation(c), "{c:?}");
        }
        assert!(!is_mark('a') && !is_symbol('a') && !is_symbol('!'));
    }

    #[test]
    fn tables_are_sorted_and_disjoint() {
        for t in [
            &LETTER[..],
            &NUMBER[..],
            &PUNCTUATION[..],
            &MARK[..],
            &SYMBOL[..],
        ] {
            for w in t.windows(2) {
                assert!(w[0].0 <= w[0].1 && w[0].1 < w[1].0);
            }
        }
    }
}
