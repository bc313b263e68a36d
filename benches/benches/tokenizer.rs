//! Tokenizer throughput on SmolLM2's vocabulary: encoding English prose (bytes
//! per second) and decoding its ids back to text through the streaming decoder.
//! The text is the GNU GPL v3 from /usr/share/common-licenses (Debian's
//! base-files), repeated to 1 MB; `scripts/bench_tokenizer_hf.py` measures the
//! HF `tokenizers` library on the same text.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ember_core::gguf::Gguf;
use ember_core::quant::GgmlType;
use ember_core::tokenizer::{EncodeOptions, StreamDecoder, Tokenizer};

/// The benchmark text (shared with the HF script): GPL-3 repeated to 1 MB.
pub fn text() -> String {
    let base = std::fs::read_to_string("/usr/share/common-licenses/GPL-3").unwrap_or_else(|_| {
        "The quick brown fox jumps over the lazy dog, 1234 times.\n".repeat(600)
    });
    let mut s = String::with_capacity(1 << 20);
    while s.len() + base.len() <= 1 << 20 {
        s.push_str(&base);
    }
    s
}

fn bench(c: &mut Criterion) {
    let path = ember_runner::model_store::converted(GgmlType::Q8_0).expect("default model");
    let map = ember_runner::mmap::map(&path).expect("map");
    let g = Gguf::parse(&map).expect("parse");
    let mut index = vec![0u32; Tokenizer::index_words(&g).expect("index")];
    let tok = Tokenizer::new(&g, &mut index).expect("tokenizer");
    let text = text();
    let ids = tok.encode(&text, EncodeOptions::default()).expect("encode");

    let mut grp = c.benchmark_group("tokenizer_smollm2");
    grp.sample_size(10);
    grp.throughput(Throughput::Bytes(text.len() as u64));
    grp.bench_function("encode_1MB", |b| {
        let mut scratch = Vec::new();
        let mut n = 0usize;
        b.iter(|| {
            tok.encode_with(&text, EncodeOptions::default(), &mut scratch, &mut |_| {
                n += 1;
                Ok(())
            })
            .expect("encode");
            n
        })
    });
    grp.bench_function("decode_1MB", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            let mut d = StreamDecoder::new(&tok, false, true);
            for &id in &ids {
                d.push(&tok, id, &mut |s| bytes += s.len()).expect("decode");
            }
            bytes
        })
    });
    grp.finish();
    c.bench_function("tokenizer_smollm2/build_index", |b| {
        let mut idx = vec![0u32; index.len()];
        b.iter(|| {
            Tokenizer::new(&g, &mut idx)
                .expect("tokenizer")
                .vocab_size()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
