//! The bodies of the fuzz targets (`fuzz/`), shared with the regression
//! test that replays every seed and every past finding
//! (`tests/fuzz_regressions.rs`). Each takes arbitrary bytes and panics
//! only when an invariant breaks.

use ember_core::gguf::Gguf;
use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan, Session};
use ember_core::sampling::{Candidate, Sampler, SamplerConfig};
use ember_core::tokenizer::{EncodeOptions, StreamDecoder, TokenType, Tokenizer, TokenizerModel};
use ember_runner::serve::{
    parse_detokenize, parse_request, parse_tokenize, Prompt, MAX_TOP_LOGPROBS,
};

/// Arenas above this are not allocated (a hostile file may ask for more).
const MAX_ARENA_BYTES: usize = 64 << 20;

/// Arbitrary bytes as a GGUF file: parse, list tensors, build the tokenizer,
/// load the model and run a few tokens when it is small. Nothing may panic,
/// read out of bounds or allocate what the file claims.
pub fn gguf_load(data: &[u8]) {
    // GGUF tensors want 32-byte alignment; give the bytes an aligned home.
    let mut buf = vec![0f32; data.len().div_ceil(4) + 8];
    let bytes = ember_core::quant::as_bytes_mut(&mut buf[..]);
    let off = bytes.as_ptr().align_offset(32);
    bytes[off..off + data.len()].copy_from_slice(data);
    let bytes = &bytes[off..off + data.len()];
    let Ok(g) = Gguf::parse(bytes) else { return };
    for t in g.tensors() {
        let _ = (t.name, t.n_rows());
    }
    if let Ok(words) = Tokenizer::index_words(&g) {
        if words <= 1 << 22 {
            let mut index = vec![0u32; words];
            if let Ok(tok) = Tokenizer::new(&g, &mut index) {
                let _ = tok.encode("Hello, world! <|im_end|>", EncodeOptions::default());
                let _ = tok.decode(&[0, 1, 2, 3, u32::MAX], true);
            }
        }
    }
    let Ok(model) = Llama::from_gguf(&g) else {
        return;
    };
    let Ok(plan) = MemoryPlan::new(&model.config, 8, 4) else {
        return;
    };
    if plan.bytes() > MAX_ARENA_BYTES {
        return;
    }
    let mut arena = plan.alloc();
    let Ok(mut s) = Session::new(&model, Kernels::detect(), plan, &mut arena) else {
        return;
    };
    let v = (model.config.vocab_size as u32).max(1);
    let _ = s.forward(&[0, 1 % v, 7 % v]);
    let _ = s.forward(&[v]);
    let _ = s.forward(&[2 % v]);
}

/// A tokenizer on arbitrary text (first byte even) or ids (odd): valid
/// UTF-8 always encodes and round-trips without control tokens; arbitrary
/// ids decode without panicking, and streamed text equals the whole.
pub fn tokenizer(tok: &Tokenizer, data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let text = String::from_utf8_lossy(rest);
        let plain = EncodeOptions {
            add_special: false,
            parse_special: false,
        };
        let ids = tok.encode(&text, plain).expect("valid UTF-8 encodes");
        let back = tok.decode(&ids, false).expect("its own ids decode");
        // Text spelled in ordinary and byte tokens comes back exactly. A
        // character the vocabulary cannot spell becomes its unknown or
        // end-of-text token (as in Hugging Face's tokenizer), and after a
        // user-defined token a SentencePiece vocabulary starts the next
        // text with a space (as llama.cpp does): neither round-trips. Nor
        // does U+2581, SentencePiece's own mark for a space.
        let spm = tok.model() == TokenizerModel::Spm;
        let spelled = !(spm && text.contains('\u{2581}'))
            && ids
                .iter()
                .all(|&i| matches!(tok.token_type(i), TokenType::Normal | TokenType::Byte));
        if spelled {
            assert_eq!(back, text, "{:?} round trip", tok.model());
        }
        let special = EncodeOptions {
            add_special: mode & 2 != 0,
            parse_special: true,
        };
        tok.encode(&text, special).expect("valid UTF-8 encodes");
    } else {
        let ids: Vec<u32> = rest
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) % (tok.vocab_size() + 8))
            .collect();
        let special = mode & 2 != 0;
        let whole = tok.decode(&ids, special);
        let mut streamed = String::new();
        let mut d = StreamDecoder::new(tok, special, true);
        let mut ok = true;
        for &id in &ids {
            if d.push(tok, id, &mut |s| streamed.push_str(s)).is_err() {
                ok = false;
                break;
            }
        }
        d.finish(&mut |s| streamed.push_str(s));
        if let (Ok(w), true) = (whole, ok) {
            assert_eq!(
                w,
                streamed,
                "{:?} streamed decode equals whole",
                tok.model()
            );
        }
    }
}

fn f32_at(d: &[u8], i: usize) -> f32 {
    let b = d.get(i * 4..i * 4 + 4).unwrap_or(&[0; 4]);
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// The sampler on arbitrary logits (NaN, ±inf, huge, subnormal) and
/// parameters (the first 40 bytes): bad parameters are errors, and a drawn
/// id is always inside the vocabulary.
pub fn sampler(data: &[u8]) {
    if data.len() < 40 {
        return;
    }
    let (head, rest) = data.split_at(40);
    let cfg = SamplerConfig {
        temperature: f32_at(head, 0),
        top_k: u32::from_le_bytes([head[4], head[5], head[6], head[7]]),
        top_p: f32_at(head, 2),
        min_p: f32_at(head, 3),
        repeat_penalty: f32_at(head, 4),
        frequency_penalty: f32_at(head, 5),
        presence_penalty: f32_at(head, 6),
        repeat_last_n: u16::from_le_bytes([head[28], head[29]]) as usize,
        seed: u64::from_le_bytes([
            head[32], head[33], head[34], head[35], head[36], head[37], head[38], head[39],
        ]),
    };
    let logits: Vec<f32> = rest
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .take(4096)
        .collect();
    let Ok(mut s) = Sampler::new(cfg) else { return };
    let mut scratch = vec![Candidate::default(); Sampler::scratch_len(logits.len())];
    for step in 0..4u32 {
        match s.sample(&logits, &mut scratch) {
            Ok(id) => {
                assert!((id as usize) < logits.len(), "id {id} of {}", logits.len());
                s.accept(id);
            }
            Err(_) => break,
        }
        s.accept(step);
    }
    if !logits.is_empty() {
        // A short scratch is an error, not a panic.
        let _ = s.sample(&logits, &mut scratch[..logits.len() - 1]);
    }
}

/// `ember serve`'s request parsing on arbitrary bodies, for both completion
/// endpoints and for `/tokenize` and `/detokenize`: an error names the
/// problem; an accepted request is within range.
pub fn server_request(data: &[u8]) {
    if let Err((msg, _)) = parse_tokenize(data) {
        assert!(!msg.is_empty());
    }
    match parse_detokenize(data, 1000) {
        Ok(ids) => assert!(ids.iter().all(|&i| i < 1000)),
        Err((msg, _)) => assert!(!msg.is_empty()),
    }
    for chat in [true, false] {
        match parse_request(data, chat, 7) {
            Ok(r) => {
                r.sampling
                    .validate()
                    .expect("accepted parameters are valid");
                assert!(r.max_tokens.is_none_or(|m| m >= 1));
                assert!(r.stops.len() <= 16);
                assert!(r.logprobs.is_none_or(|k| k <= MAX_TOP_LOGPROBS));
                if chat {
                    assert!(!r.messages.is_empty());
                } else {
                    assert!(r.prompt != Prompt::None);
                }
            }
            Err((msg, _)) => assert!(!msg.is_empty()),
        }
    }
}
