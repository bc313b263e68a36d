use super::*;
use crate::error::{Error, GrammarFault};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

fn fault(src: &str) -> (GrammarFault, u32) {
    match GrammarBuf::parse(src) {
        Err(Error::Grammar { fault, at }) => (fault, at),
        other => panic!("{src:?}: expected a grammar error, got {other:?}"),
    }
}

/// A vocabulary of the 256 single bytes plus EOG (id 256).
fn bytes_vocab() -> VocabBuf {
    let singles: Vec<[u8; 1]> = (0..=255u8).map(|b| [b]).collect();
    let mut pieces: Vec<&[u8]> = singles.iter().map(|b| &b[..]).collect();
    pieces.push(b"");
    VocabBuf::from_pieces(&pieces, &[256]).unwrap()
}

/// Whether the grammar takes all of `text` and may end there.
fn matches(src: &str, text: &str) -> bool {
    let g = GrammarBuf::parse(src).unwrap();
    let v = bytes_vocab();
    let v = v.vocab();
    let mut m = Matcher::alloc(&g.grammar()).unwrap();
    for &b in text.as_bytes() {
        if !m.allows(&v, b as u32).unwrap() {
            return false;
        }
        m.accept(&v, b as u32).unwrap();
    }
    m.can_end()
}

#[test]
fn parse_errors_name_the_fault_and_place() {
    assert_eq!(fault("root ::= \"a"), (GrammarFault::Syntax, 11));
    assert_eq!(fault("root ::= x"), (GrammarFault::UndefinedRule, 9));
    assert_eq!(fault("a ::= \"x\""), (GrammarFault::NoRoot, 0));
    assert_eq!(
        fault("root ::= \"a\"\nroot ::= \"b\""),
        (GrammarFault::DuplicateRule, 13)
    );
    assert_eq!(
        fault("root ::= root \"a\" | \"b\"").0,
        GrammarFault::LeftRecursion
    );
    // Through another rule, after a part that can be empty.
    assert_eq!(
        fault("root ::= x\nx ::= \"a\"? y\ny ::= root \"b\"").0,
        GrammarFault::LeftRecursion
    );
    assert_eq!(
        fault("root ::= \"a\"{4095}").0,
        GrammarFault::RepetitionTooLarge
    );
    assert_eq!(fault("root ::= [z-a]").0, GrammarFault::BadCharacter);
    assert_eq!(fault("root ::= \"\\q\"").0, GrammarFault::Syntax);
    assert_eq!(fault("root ::= *").0, GrammarFault::Syntax);
    assert_eq!(fault("root ::= (\"a\"").0, GrammarFault::Syntax);
    assert_eq!(fault("root ::= \"a\"{3,2}").0, GrammarFault::Syntax);
    assert_eq!(fault("root = \"a\"").0, GrammarFault::Syntax);
    // Right recursion is fine.
    assert!(GrammarBuf::parse("root ::= \"a\" root | \"b\"").is_ok());
}

#[test]
fn a_small_buffer_is_an_error_not_a_panic() {
    let src = "root ::= \"abc\" [x-z]*";
    let mut words = [0u32; 4];
    let mut rules = [RuleSlot::default(); 4];
    assert!(matches!(
        Grammar::parse(src, &mut words, &mut rules),
        Err(Error::BufferTooSmall { .. })
    ));
    let g = GrammarBuf::parse(src).unwrap();
    let mut mem = [0u32; 100];
    assert!(matches!(
        Matcher::new(&g.grammar(), &mut mem[..], 16, 1024),
        Err(Error::BufferTooSmall { .. })
    ));
}

#[test]
fn literals_classes_groups_and_repetitions() {
    let g = "root ::= \"ab\" [0-9]+ (\"x\" | \"yz\")? [^a-c]{2,3} .";
    assert!(matches(g, "ab1xdd!"));
    assert!(matches(g, "ab123yzdde!"));
    assert!(matches(g, "ab9\u{e9}\u{e9}\u{e9}\u{1F600}"));
    assert!(!matches(g, "ab1xd"));
    assert!(!matches(g, "abxdd!"));
    assert!(!matches(g, "ab1xddd!!"));
    assert!(!matches(g, "ab1xad!"));
    let bounded = "root ::= \"a\"{2,3} \"b\"{2} \"c\"{1,}";
    assert!(matches(bounded, "aabbc"));
    assert!(matches(bounded, "aaabbccc"));
    assert!(!matches(bounded, "abbc"));
    assert!(!matches(bounded, "aaaabbc"));
    assert!(!matches(bounded, "aabbbc"));
    assert!(!matches(bounded, "aabb"));
    // Repetition of a repetition, escapes, comments and line breaks in groups.
    let nested =
        "# comment\nroot ::= (\"a\"{2})* \"\\x41\\u00e9\\n\" (\n  \"b\" # x\n  | \"c\"\n)\n";
    assert!(matches(nested, "aaaaA\u{e9}\nb"));
    assert!(matches(nested, "A\u{e9}\nc"));
    assert!(!matches(nested, "aaaA\u{e9}\nb"));
}

#[test]
fn loops_through_the_empty_string_end() {
    // An unbounded repetition of something that can be empty.
    let g = "root ::= (\"a\"*)* \"b\" x*\nx ::= \"c\"?";
    assert!(matches(g, "b"));
    assert!(matches(g, "aaab"));
    assert!(matches(g, "abccc"));
    assert!(!matches(g, "ba"));
}

#[test]
fn json_takes_json_and_refuses_the_rest() {
    for ok in [
        "{}",
        "{\"a\": 1}",
        "{\"a\": [1, -2.5e+3, true, null, \"x\\\"y\\u00e9\"], \"b\": {\"c\": false}}",
        "{\n  \"k\": \"caf\u{e9} \u{1F600}\"\n}",
    ] {
        assert!(matches(JSON, ok), "{ok}");
    }
    // A surrogate escape only as a pair.
    assert!(matches(JSON, r#"{"e": "\ud83d\ude00"}"#));
    assert!(!matches(JSON, r#"{"e": "\ud83d"}"#));
    assert!(!matches(JSON, r#"{"e": "\ude00 "}"#));
    for bad in [
        "",
        "[]",
        "{\"a\"}",
        "{\"a\": 01}",
        "{\"a\": tru}",
        "{\"a\": \"\n\"}",
        "{}}",
        "{'a': 1}",
    ] {
        assert!(!matches(JSON, bad), "{bad}");
    }
}

/// Pieces over JSON's characters: every string of one and two of them, some
/// longer ones, and a split UTF-8 character.
fn json_pieces() -> Vec<Vec<u8>> {
    let alphabet = b"{}[]\":, \n0123456789-.eatrufnlsxbc\\";
    let mut p: Vec<Vec<u8>> = Vec::new();
    for &a in alphabet {
        p.push(vec![a]);
        for &b in alphabet {
            p.push(vec![a, b]);
        }
    }
    for s in [
        "{\"",
        "\":",
        "\": \"",
        "true",
        "false",
        "null",
        "\"}",
        "\n  \"",
        "caf\u{e9}",
        "\u{e9}\"",
        "12345",
    ] {
        p.push(s.as_bytes().to_vec());
    }
    p.push(vec![0xC3]);
    p.push(vec![0xA9, b'"']);
    p.push(vec![0xA9]);
    p.push(vec![0xFF]);
    p.push(vec![]); // a control token
    p.push(vec![]); // EOG
    p
}

#[test]
fn the_mask_is_what_each_token_alone_gets() {
    let g = GrammarBuf::parse(JSON).unwrap();
    let pieces = json_pieces();
    let refs: Vec<&[u8]> = pieces.iter().map(|p| &p[..]).collect();
    let eog = refs.len() as u32 - 1;
    let v = VocabBuf::from_pieces(&refs, &[eog]).unwrap();
    let v = v.vocab();
    let text = "{\"ab\": [1, {\"caf\u{e9}\": null}], \"x\": -2.5e3}";
    // A roomy table, and one so small that the walk starts it again often.
    let mut big = Matcher::alloc(&g.grammar()).unwrap();
    let mut small = Matcher::with_sizes(&g.grammar(), 3, 2048).unwrap();
    let mut bits = vec![0u32; v.len().div_ceil(32)];
    let mut bits_small = bits.clone();
    let mut bits_cached = bits.clone();
    let mut cache = MaskCache::alloc(2, v.len()).unwrap();
    let mut cached = Matcher::with_sizes(&g.grammar(), 8, 4096).unwrap();
    let bytes = text.as_bytes();
    let mut allowed_somewhere = 0;
    for at in 0..=bytes.len() {
        big.mask(&v, &mut bits).unwrap();
        small.mask(&v, &mut bits_small).unwrap();
        assert_eq!(bits, bits_small, "after {at} bytes");
        // Twice: once filled, once from the cache.
        for _ in 0..2 {
            cached
                .mask_cached(&v, &mut bits_cached, &mut cache)
                .unwrap();
            assert_eq!(bits, bits_cached, "after {at} bytes");
        }
        for id in 0..v.len() as u32 {
            let bit = bits[id as usize / 32] >> (id % 32) & 1 == 1;
            // A fresh matcher over the same prefix, asked about this token alone.
            let mut one = Matcher::alloc(&g.grammar()).unwrap();
            for &b in &bytes[..at] {
                let single = refs.iter().position(|p| *p == [b]).unwrap() as u32;
                one.accept(&v, single).unwrap();
            }
            assert_eq!(
                bit,
                one.allows(&v, id).unwrap(),
                "token {:?} after {at} bytes",
                refs[id as usize]
            );
            allowed_somewhere += bit as usize;
        }
        if at < bytes.len() {
            let single = refs.iter().position(|p| *p == [bytes[at]]).unwrap() as u32;
            big.accept(&v, single).unwrap();
            small.accept(&v, single).unwrap();
            cached.accept(&v, single).unwrap();
        }
    }
    assert!(allowed_somewhere > 100);
    // At the end only EOG (and whitespace) remain.
    assert!(big.allows(&v, eog).unwrap());
    big.accept(&v, eog).unwrap();
    big.mask(&v, &mut bits).unwrap();
    assert!(bits.iter().all(|&w| w == 0));
}

#[test]
fn tokens_span_symbols_and_split_characters() {
    let g = GrammarBuf::parse("root ::= \"{\\\"k\\\": \\\"\" [a-z\u{e9}]* \"\\\"}\"").unwrap();
    let pieces: [&[u8]; 7] = [
        b"{\"k",
        b"\": \"",
        &[0xC3],
        &[0xA9, b'a'],
        b"\"}",
        &[0xA9],
        b"",
    ];
    let v = VocabBuf::from_pieces(&pieces, &[6]).unwrap();
    let v = v.vocab();
    let mut m = Matcher::alloc(&g.grammar()).unwrap();
    let mut bits = [0u32; 1];
    m.mask(&v, &mut bits).unwrap();
    assert_eq!(bits[0], 0b1);
    m.accept(&v, 0).unwrap();
    m.accept(&v, 1).unwrap();
    m.mask(&v, &mut bits).unwrap();
    assert_eq!(bits[0], 0b10100); // the lead byte or the end, not a continuation byte
    assert!(matches!(
        m.accept(&v, 5),
        Err(Error::GrammarRejected { token: 5 })
    ));
    m.accept(&v, 2).unwrap();
    m.mask(&v, &mut bits).unwrap();
    assert_eq!(bits[0], 0b101000); // only continuation bytes now
    m.accept(&v, 3).unwrap();
    m.accept(&v, 4).unwrap();
    assert!(m.can_end());
    m.mask(&v, &mut bits).unwrap();
    assert_eq!(bits[0], 0b1000000);
    m.accept(&v, 6).unwrap();
    assert!(m.must_end());
}

#[test]
fn a_matcher_runs_in_borrowed_memory() {
    let src = "root ::= [a-c]{1,4}";
    let mut words = [0u32; 64];
    let mut rules = [RuleSlot::default(); 8];
    let g = Grammar::parse(src, &mut words, &mut rules).unwrap();
    let mut mem = [0u32; 8192];
    let need = Matcher::<&mut [u32]>::words_for(&g, 8, 512);
    let mut m = Matcher::new(&g, &mut mem[..need], 8, 512).unwrap();
    let pieces: [&[u8]; 4] = [b"a", b"bc", b"abc", b"d"];
    let mut vb = [0u8; 16];
    let mut vw = [0u32; 32];
    let v = Vocab::build(
        4,
        &[],
        &mut |id, f| {
            f(pieces[id as usize]);
            Ok(())
        },
        &mut vb,
        &mut vw,
    )
    .unwrap();
    let mut bits = [0u32; 1];
    m.mask(&v, &mut bits).unwrap();
    assert_eq!(bits[0], 0b0111);
    m.accept(&v, 2).unwrap();
    m.mask(&v, &mut bits).unwrap();
    assert_eq!(bits[0], 0b0001);
    m.reset().unwrap();
    m.mask(&v, &mut bits).unwrap();
    assert_eq!(bits[0], 0b0111);
}

#[test]
fn hostile_grammars_end_in_errors_not_crashes_or_hangs() {
    // Postfix operators piled up: refused at once (no nesting to overflow).
    let plus = format!("root ::= \"a\"{}", "+".repeat(50_000));
    assert_eq!(fault(&plus).0, GrammarFault::Syntax);
    // Optional parts that multiply: the expansion budget ends them.
    let mut g = String::from("root ::=");
    for _ in 0..40 {
        g.push_str(" a");
    }
    g.push_str(" \"x\"\na ::= \"\" | \"\"");
    let g = GrammarBuf::parse(&g).unwrap();
    assert_eq!(
        Matcher::alloc(&g.grammar()).unwrap_err(),
        Error::Grammar {
            fault: GrammarFault::TooComplex,
            at: 0
        }
    );
    // Classes hold at most MAX_CLASS_RANGES ranges.
    let big: String = (0..1100u32)
        .map(|i| char::from_u32(0x4E00 + 2 * i).unwrap())
        .collect();
    assert_eq!(
        fault(&format!("root ::= [{big}]")).0,
        GrammarFault::TooComplex
    );
    // Rules at most MAX_RULES.
    let many: String = (0..5000).map(|i| format!("r{i} ::= \"a\"\n")).collect();
    assert_eq!(
        fault(&format!("root ::= \"a\"\n{many}")).0,
        GrammarFault::TooComplex
    );
}

#[test]
fn repetitions_of_empty_things_and_right_recursion_stay_shallow() {
    assert!(matches("root ::= (\"\" | \"\"){0,100} \"x\"", "x"));
    assert!(matches("root ::= (\"a\"?){0,300} \"b\"", "aaab"));
    assert!(matches("root ::= (\"a\"?){0,300} \"b\"", "b"));
    // A right-recursive list far longer than a stack holds frames.
    let list = "root ::= item list\nlist ::= \",\" item list | \"\"\nitem ::= [0-9]";
    let text: String = (0..2000)
        .map(|i| {
            if i == 0 {
                "1".to_string()
            } else {
                ",2".to_string()
            }
        })
        .collect();
    assert!(matches(list, &text));
    assert!(!matches(list, &(text.clone() + ",")));
}

#[test]
fn classes_merge_their_ranges_and_surrogates_never_start() {
    let g = "root ::= [a-cb-dx]+";
    assert!(matches(g, "abcdx"));
    assert!(!matches(g, "e"));
    let neg = "root ::= [^b-dc-f]";
    assert!(matches(neg, "a") && matches(neg, "g") && !matches(neg, "e"));
    // ED A0..BF would start a surrogate: no token may leave the text there.
    let g = GrammarBuf::parse("root ::= [^\"]*").unwrap();
    let pieces: [&[u8]; 3] = [&[0xED], &[0xED, 0xA0], &[0xED, 0x9F]];
    let v = VocabBuf::from_pieces(&pieces, &[]).unwrap();
    let mut m = Matcher::alloc(&g.grammar()).unwrap();
    let mut bits = [0u32; 1];
    m.mask(&v.vocab(), &mut bits).unwrap();
    assert_eq!(bits[0], 0b101);
}
