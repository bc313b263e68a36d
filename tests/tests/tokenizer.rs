//! The tokenizer against llama.cpp's ids on SmolLM2 (`golden/tokenizer_cases.json`),
//! round trips, streaming decode, and long inputs.

use std::path::PathBuf;

use ember_core::gguf::Gguf;
use ember_core::quant::GgmlType;
use ember_core::tokenizer::{EncodeOptions, StreamDecoder, Tokenizer};
use serde_json::Value;

fn golden(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden JSON")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// The SmolLM2 file's bytes (the tokenizer is the same in every type; Q8_0 is
/// the file the golden ids were made with).
fn smollm_bytes() -> &'static [u8] {
    use std::sync::OnceLock;
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let path = ember_runner::model_store::converted(GgmlType::Q8_0)
            .unwrap_or_else(|e| panic!("model: {e:#}"));
        std::fs::read(path).expect("read model")
    })
}

fn smollm() -> &'static Tokenizer<'static> {
    use std::sync::OnceLock;
    static TOK: OnceLock<Tokenizer<'static>> = OnceLock::new();
    TOK.get_or_init(|| {
        let g: &'static Gguf<'static> = Box::leak(Box::new(Gguf::parse(smollm_bytes()).unwrap()));
        let index = vec![0u32; Tokenizer::index_words(g).unwrap()].leak();
        Tokenizer::new(g, index).unwrap()
    })
}

fn enc(t: &Tokenizer, s: &str, special: bool) -> Vec<u32> {
    t.encode(
        s,
        EncodeOptions {
            add_special: true,
            parse_special: special,
        },
    )
    .unwrap()
}

#[test]
fn golden_cases_match_llama_cpp() {
    let g = golden("tokenizer_cases.json");
    let t = smollm();
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 20);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        for (special, key) in [(false, "ids_special_false"), (true, "ids_special_true")] {
            let got = enc(t, text, special);
            assert_eq!(got, ids(&c[key]), "{text:?} special={special}");
            let detok = c[if special {
                "detok_special_true"
            } else {
                "detok_special_false"
            }]
            .as_str()
            .unwrap();
            assert_eq!(t.decode(&got, special).unwrap(), detok, "{text:?}");
            assert_eq!(t.decode(&got, true).unwrap(), text, "round trip {text:?}");
        }
    }
}

fn spm_bytes() -> &'static [u8] {
    use std::sync::OnceLock;
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden/spm_vocab.json");
        ember_tests::spm_vocab_gguf(&std::fs::read_to_string(dir).unwrap())
    })
}

fn spm() -> &'static Tokenizer<'static> {
    use std::sync::OnceLock;
    static TOK: OnceLock<Tokenizer<'static>> = OnceLock::new();
    TOK.get_or_init(|| {
        let g: &'static Gguf<'static> = Box::leak(Box::new(Gguf::parse(spm_bytes()).unwrap()));
        let index = vec![0u32; Tokenizer::index_words(g).unwrap()].leak();
        Tokenizer::new(g, index).unwrap()
    })
}

#[test]
fn sentencepiece_matches_llama_cpp() {
    use sha2::{Digest, Sha256};
    let g = golden("spm_cases.json");
    // The same file llama.cpp tokenized.
    let sha = format!("{:x}", Sha256::digest(spm_bytes()));
    assert_eq!(sha, g["meta"]["gguf_sha256"].as_str().unwrap());
    let t = spm();
    for c in g["cases"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        for bos in [false, true] {
            for special in [false, true] {
                let got = t
                    .encode(
                        text,
                        EncodeOptions {
                            add_special: bos,
                            parse_special: special,
                        },
                    )
                    .unwrap();
                let key = format!("ids_bos_{bos}_special_{special}");
                assert_eq!(got, ids(&c[&key]), "{text:?} {key}");
            }
        }
        let ids = ids(&c["ids_bos_false_special_true"]);
        for (special, key) in [(false, "detok_special_false"), (true, "detok_special_true")] {
            assert_eq!(
                t.decode(&ids, special).unwrap(),
                c[key].as_str().unwrap(),
                "{text:?}"
            );
        }
    }
}

/// Every way of cutting `ids` into two or three runs streams the same text as
/// decoding them at once.
fn assert_streams_like_whole(t: &Tokenizer, ids: &[u32], special: bool) {
    let whole = t.decode(ids, special).unwrap();
    let n = ids.len();
    let step = (n / 12).max(1);
    for i in (0..=n).step_by(step) {
        for j in (i..=n).step_by(step) {
            let mut s = String::new();
            let mut d = StreamDecoder::new(t, special, true);
            for run in [&ids[..i], &ids[i..j], &ids[j..]] {
                for &id in run {
                    d.push(t, id, &mut |x| s.push_str(x)).unwrap();
                }
            }
            d.finish(&mut |x| s.push_str(x));
            assert_eq!(s, whole);
        }
    }
}

#[test]
fn streaming_decode_emits_whole_characters_as_soon_as_complete() {
    let t = smollm();
    // 😀 is three tokens of one and two bytes: nothing comes out until the last.
    let ids = enc(t, "😀!", false);
    assert_eq!(ids, [10813, 242, 218, 17]);
    let mut d = StreamDecoder::new(t, false, true);
    let mut seen = Vec::new();
    for &id in &ids {
        let mut s = String::new();
        d.push(t, id, &mut |x| s.push_str(x)).unwrap();
        seen.push(s);
    }
    assert_eq!(seen, ["", "", "😀", "!"]);
    // A character cut off at the end becomes U+FFFD, never a panic.
    assert_eq!(t.decode(&ids[..2], false).unwrap(), "\u{FFFD}");
    assert_eq!(t.decode(&[242, 218], false).unwrap(), "\u{FFFD}\u{FFFD}");
    assert!(t.decode(&[t.vocab_size()], false).is_err());
}

#[test]
fn long_inputs_are_not_quadratic() {
    // One 1 MB word (a single pre-token) and 1 MB of prose; both round-trip.
    let t = smollm();
    let word = "ab".repeat(1 << 19);
    let ids = enc(t, &word, false);
    assert_eq!(t.decode(&ids, false).unwrap(), word);
    let prose = "The quick brown fox jumps over the lazy dog; 12 pies. ".repeat(20_000);
    let ids = enc(t, &prose, false);
    assert!(ids.len() > 200_000);
    assert_eq!(t.decode(&ids, false).unwrap(), prose);
    let s = spm();
    let ids = s.encode(&word, EncodeOptions::default()).unwrap();
    assert_eq!(s.decode(&ids[1..], false).unwrap(), word);
}

#[test]
fn caller_buffers_need_no_allocator() {
    let t = smollm();
    let text = "Hello world, 2024!";
    let mut scratch = vec![0u32; Tokenizer::scratch_words(text.len())];
    let mut out = [0u32; 16];
    let n = t
        .encode_into(text, EncodeOptions::default(), &mut scratch, &mut out)
        .unwrap();
    assert_eq!(&out[..n], enc(t, text, false).as_slice());
    // Too small an output or scratch buffer is an error, not a panic.
    let mut tiny = [0u32; 2];
    assert!(matches!(
        t.encode_into(text, EncodeOptions::default(), &mut scratch, &mut tiny),
        Err(ember_core::Error::BufferTooSmall { .. })
    ));
    let mut small = vec![0u32; 8];
    assert!(matches!(
        t.encode_into(text, EncodeOptions::default(), &mut small, &mut out),
        Err(ember_core::Error::BufferTooSmall { .. })
    ));
}

#[test]
fn end_of_generation_ids_come_from_metadata_and_names() {
    let t = smollm();
    assert_eq!(t.eos(), Some(2));
    assert!(t.is_eog(2) && t.is_eog(0) && !t.is_eog(1));
    assert!(!t.add_bos());
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn gpt2_round_trips_any_unicode(s in any::<String>()) {
            let t = smollm();
            let ids = enc(t, &s, false);
            prop_assert_eq!(t.decode(&ids, false).unwrap(), s.clone());
            assert_streams_like_whole(t, &ids, false);
        }

        #[test]
        fn gpt2_round_trips_text_like_strings(s in "[ a-zA-Z0-9'.,!?\n\t<|>é中😀]{0,80}") {
            let t = smollm();
            for special in [false, true] {
                let ids = enc(t, &s, special);
                prop_assert_eq!(t.decode(&ids, true).unwrap(), s.clone());
                assert_streams_like_whole(t, &ids, special);
            }
        }

        #[test]
        fn sentencepiece_round_trips_any_unicode(s in any::<String>()) {
            // SentencePiece spells spaces as U+2581, so that character itself
            // decodes to a space: the one loss the format has by design.
            let s = s.replace('\u{2581}', "");
            let t = spm();
            let ids = t.encode(&s, EncodeOptions { add_special: false, parse_special: false }).unwrap();
            prop_assert_eq!(t.decode(&ids, false).unwrap(), s.clone());
            assert_streams_like_whole(t, &ids, false);
        }

        #[test]
        fn any_ids_decode_without_panicking(ids in proptest::collection::vec(0u32..49152, 0..40)) {
            let t = smollm();
            let s = t.decode(&ids, true).unwrap();
            // Lossy decoding of the concatenated bytes, streamed or not.
            let mut bytes = Vec::new();
            for &id in &ids {
                t.piece(id, true, &mut |b| bytes.extend_from_slice(b)).unwrap();
            }
            prop_assert_eq!(s, String::from_utf8_lossy(&bytes).into_owned());
            assert_streams_like_whole(t, &ids, true);
        }
    }
}

#[test]
fn pre_tokenizers_split_like_their_published_expressions() {
    use ember_core::tokenizer::PreTokenizer;
    let g = golden("pretokenizer_cases.json");
    let names: Vec<&String> = g["cases"].as_object().unwrap().keys().collect();
    assert_eq!(names.len(), 9, "{names:?}");
    for (name, pre) in [
        ("gpt2", PreTokenizer::Gpt2),
        ("smollm", PreTokenizer::Smollm),
        ("llama3", PreTokenizer::Llama3),
        ("qwen2", PreTokenizer::Qwen2),
        ("qwen35", PreTokenizer::Qwen35),
        ("deepseek-llm", PreTokenizer::DeepseekLlm),
        ("deepseek-coder", PreTokenizer::DeepseekCoder),
        ("deepseek-v3", PreTokenizer::DeepseekV3),
        ("falcon", PreTokenizer::Falcon),
    ] {
        assert_eq!(PreTokenizer::from_name(name), Some(pre));
        let cases = g["cases"][name].as_array().unwrap();
        assert!(cases.len() > 300);
        for c in cases {
            let text = c[0].as_str().unwrap();
            let want: Vec<&str> = c[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_str().unwrap())
                .collect();
            let mut got: Vec<String> = Vec::new();
            pre.split(text, &mut |w| {
                got.push(w.to_string());
                Ok(())
            })
            .unwrap();
            assert_eq!(got, want, "{name} {text:?}");
        }
    }
}

/// A tiny GPT-2 vocabulary GGUF with `edit` applied to its writer.
fn tiny_bpe(edit: impl FnOnce(&mut ember_core::gguf_writer::GgufWriter)) -> Vec<u8> {
    let mut w = ember_core::gguf_writer::GgufWriter::new();
    w.add_str("general.architecture", "llama");
    edit(&mut w);
    w.to_bytes()
}

fn build(bytes: &[u8]) -> ember_core::Result<u32> {
    let g = Gguf::parse(bytes)?;
    let mut index = vec![0u32; Tokenizer::index_words(&g)?];
    let t = Tokenizer::new(&g, &mut index)?;
    Ok(t.vocab_size())
}

#[test]
fn bad_tokenizer_metadata_is_an_error() {
    use ember_core::error::MetaKey;
    use ember_core::Error;
    let ok = |w: &mut ember_core::gguf_writer::GgufWriter| {
        w.add_str("tokenizer.ggml.model", "gpt2")
            .add_str("tokenizer.ggml.pre", "gpt2")
            .add_str_array("tokenizer.ggml.tokens", &["a", "b", "ab", "<|end|>"])
            .add_i32_array("tokenizer.ggml.token_type", &[1, 1, 1, 3])
            .add_str_array("tokenizer.ggml.merges", &["a b", "x y"]);
    };
    assert_eq!(build(&tiny_bpe(ok)), Ok(4));

    assert_eq!(
        build(&tiny_bpe(|_| {})),
        Err(Error::MissingMetadata {
            key: MetaKey::TokenizerModel
        })
    );
    assert_eq!(
        build(&tiny_bpe(|w| {
            w.add_str("tokenizer.ggml.model", "bert");
        })),
        Err(Error::UnsupportedTokenizer)
    );
    assert_eq!(
        build(&tiny_bpe(|w| {
            w.add_str("tokenizer.ggml.model", "gpt2")
                .add_str("tokenizer.ggml.pre", "klingon");
        })),
        Err(Error::UnknownPreTokenizer)
    );
    assert_eq!(
        build(&tiny_bpe(|w| {
            w.add_str("tokenizer.ggml.model", "gpt2")
                .add_str("tokenizer.ggml.pre", "gpt2");
        })),
        Err(Error::MissingMetadata {
            key: MetaKey::TokenizerTokens
        })
    );
    assert_eq!(
        build(&tiny_bpe(|w| {
            w.add_str("tokenizer.ggml.model", "gpt2")
                .add_str("tokenizer.ggml.pre", "gpt2")
                .add_str_array("tokenizer.ggml.tokens", &["a"]);
        })),
        Err(Error::MissingMetadata {
            key: MetaKey::TokenizerMerges
        })
    );
    // Arrays of the wrong type or length, a merge with no space, an id past the vocabulary.
    let base = |w: &mut ember_core::gguf_writer::GgufWriter| {
        w.add_str("tokenizer.ggml.model", "gpt2")
            .add_str("tokenizer.ggml.pre", "gpt2")
            .add_str_array("tokenizer.ggml.tokens", &["a", "b", "ab"]);
    };
    type Edit<'a> = Box<dyn Fn(&mut ember_core::gguf_writer::GgufWriter) + 'a>;
    let cases: Vec<(Edit<'_>, MetaKey)> = vec![
        (
            Box::new(|w| {
                base(w);
                w.add_i32_array("tokenizer.ggml.token_type", &[1, 1]);
                w.add_str_array("tokenizer.ggml.merges", &["a b"]);
            }),
            MetaKey::TokenizerTokenType,
        ),
        (
            Box::new(|w| {
                base(w);
                w.add_u32("tokenizer.ggml.merges", 3);
            }),
            MetaKey::TokenizerMerges,
        ),
        (
            Box::new(|w| {
                base(w);
                w.add_str_array("tokenizer.ggml.merges", &["ab"]);
            }),
            MetaKey::TokenizerMerges,
        ),
        (
            Box::new(|w| {
                base(w);
                w.add_str_array("tokenizer.ggml.merges", &["a b"]);
                w.add_u32("tokenizer.ggml.eos_token_id", 3);
            }),
            MetaKey::EosTokenId,
        ),
        (
            Box::new(|w| {
                base(w);
                w.add_str_array("tokenizer.ggml.merges", &["a b"]);
                w.add_u32("tokenizer.ggml.add_bos_token", 1);
            }),
            MetaKey::AddBosToken,
        ),
        (
            Box::new(|w| {
                w.add_str("tokenizer.ggml.model", "gpt2");
                w.add_i32_array("tokenizer.ggml.tokens", &[1, 2]);
            }),
            MetaKey::TokenizerTokens,
        ),
    ];
    for (i, (edit, key)) in cases.into_iter().enumerate() {
        assert_eq!(
            build(&tiny_bpe(edit)),
            Err(Error::BadMetadata { key }),
            "case {i}"
        );
    }
    // A vocabulary with no byte tokens cannot spell every text: an error, not a panic.
    let bytes = tiny_bpe(ok);
    let g = Gguf::parse(&bytes).unwrap();
    let mut index = vec![0u32; Tokenizer::index_words(&g).unwrap()];
    let t = Tokenizer::new(&g, &mut index).unwrap();
    assert_eq!(t.encode("ab", EncodeOptions::default()).unwrap(), [2]);
    assert_eq!(
        t.encode("abc", EncodeOptions::default()),
        Err(Error::Untokenizable { byte: b'c' })
    );
    assert!(t.is_eog(3));
    // Index buffers that are too small are refused.
    let mut small = vec![0u32; 10];
    assert!(matches!(
        Tokenizer::new(&g, &mut small),
        Err(Error::BufferTooSmall { .. })
    ));
}

/// A Gemma-3-shaped SentencePiece vocabulary (262,144 tokens, no space
/// prefix, user-defined and control tokens, byte fallback) builds within the
/// index limits and encodes as llama.cpp does. The ids below are what
/// llama.cpp (llama-cpp-python 0.3.36, `vocab_only`, `tokenize(text, add_bos,
/// special)`) gave for the file `cargo run -p ember-tests --example spm_gguf -- OUT gemma` writes.
#[test]
fn gemma_shaped_sentencepiece_matches_llama_cpp() {
    let bytes = ember_tests::gemma_spm_gguf();
    let g = Gguf::parse(&bytes).unwrap();
    let words = Tokenizer::index_words(&g).unwrap();
    // Offsets, a hash table of 2^19 slots, 256 byte ids and the specials: about 3.2 MB.
    assert!(words < 900_000, "{words}");
    let mut index = vec![0u32; words];
    let t = Tokenizer::new(&g, &mut index).unwrap();
    assert_eq!(t.vocab_size() as usize, ember_tests::GEMMA_VOCAB);
    assert_eq!((t.bos(), t.eos(), t.add_bos()), (Some(2), Some(1), true));
    // (text, ids with parse_special false, ids with parse_special true); no BOS.
    let turn: &[u32] = &[
        67, 275, 123, 104, 272, 123, 102, 270, 109, 102, 123, 274, 272, 117, 69, 290, 265, 267,
        276, 67, 268, 117, 273, 102, 270, 109, 102, 123, 274, 272, 117, 69, 266,
    ];
    let cases: &[(&str, &[u32], &[u32])] = &[
        ("Hello world", &[280, 287], &[280, 287]),
        (" Hello", &[281], &[281]),
        ("  Hello world", &[264, 280, 287], &[264, 280, 287]),
        (
            "Hello<table>world</table>",
            &[280, 291, 286, 292],
            &[280, 291, 286, 292],
        ),
        (
            "<start_of_turn>user\nHi<end_of_turn>\n\n",
            turn,
            &[5, 290, 265, 267, 276, 6, 266],
        ),
        (
            "héllo wörld",
            &[111, 202, 176, 279, 282, 202, 189, 272, 284],
            &[111, 202, 176, 279, 282, 202, 189, 272, 284],
        ),
        (
            "<unused42>Hello <unused5999>",
            &[335, 280, 263, 6292],
            &[335, 280, 263, 6292],
        ),
        ("", &[], &[]),
        ("\n\n\nHello", &[266, 265, 280], &[266, 265, 280]),
    ];
    for &(text, plain, special) in cases {
        for bos in [false, true] {
            for (parse_special, want) in [(false, plain), (true, special)] {
                let got = t
                    .encode(
                        text,
                        EncodeOptions {
                            add_special: bos,
                            parse_special,
                        },
                    )
                    .unwrap();
                let want: Vec<u32> = bos
                    .then_some(2)
                    .into_iter()
                    .chain(want.iter().copied())
                    .collect();
                assert_eq!(got, want, "{text:?} bos={bos} special={parse_special}");
            }
        }
        // No space is stripped or added on the way back.
        let ids = t
            .encode(
                text,
                EncodeOptions {
                    add_special: false,
                    parse_special: true,
                },
            )
            .unwrap();
        assert_eq!(t.decode(&ids, true).unwrap(), text);
    }
}
