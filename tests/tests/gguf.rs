//! Hostile-input tests for the GGUF reader, the model loader and the session.
//!
//! A tiny llama model (dim 64, 2 layers, 4 heads / 2 KV heads, ffn 96, vocab
//! 64, a mix of F32/F16/Q8_0/Q4_0/Q4_1 tensors) is built in memory with
//! [`GgufWriter`]; it is the positive control. Every other test breaks one
//! thing, by editing the model's spec or by writing header bytes by hand, and
//! checks the exact [`Error`] variant (never message text). Nothing here may
//! panic inside the core: the truncation sweep and the mutation loop feed
//! thousands of broken files through parse, load and forward.

use std::panic::{catch_unwind, AssertUnwindSafe};

use ember_core::arch::Arch;
use ember_core::error::{Cap, Error, MetaKey, TensorKind};
use ember_core::gguf::{limits, Gguf, Value};
use ember_core::gguf_writer::GgufWriter;
use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan, Session, MAX_BATCH, MAX_KV_CAPACITY};
use ember_core::quant::{self, BlockQ4_0, BlockQ4_1, BlockQ8_0, GgmlType};
use ember_core::KvOptions;

/// `assert_err!(result, pattern [if guard])`: the result is an `Err` whose
/// error matches the pattern; evaluates to the error.
macro_rules! assert_err {
    ($res:expr, $($pat:tt)+) => {{
        match $res {
            Err(e) if matches!(e, $($pat)+) => e,
            other => panic!(
                "expected Err({}), got {:?}",
                stringify!($($pat)+),
                other
            ),
        }
    }};
}

// ---------------------------------------------------------------------------
// Deterministic randomness.

struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift((seed ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(0x2545_F491_4F6C_DD1D) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------
// File bytes in 4-byte-aligned memory, so F32/F16 tensors can be viewed in
// place (a plain Vec<u8> promises alignment 1 only).

struct Aligned {
    words: Vec<f32>,
    len: usize,
}

impl Aligned {
    fn new(bytes: &[u8]) -> Self {
        let words = bytes
            .chunks(4)
            .map(|c| {
                let mut a = [0u8; 4];
                a[..c.len()].copy_from_slice(c);
                f32::from_bits(u32::from_le_bytes(a))
            })
            .collect();
        Aligned {
            words,
            len: bytes.len(),
        }
    }

    fn bytes(&self) -> &[u8] {
        &quant::as_bytes(&self.words)[..self.len]
    }

    fn get(&self, i: usize) -> u8 {
        self.bytes()[i]
    }

    fn set(&mut self, i: usize, v: u8) {
        let w = &mut self.words[i / 4];
        let shift = 8 * (i % 4);
        let bits = (w.to_bits() & !(0xff << shift)) | ((v as u32) << shift);
        *w = f32::from_bits(bits);
    }
}

// ---------------------------------------------------------------------------
// The tiny model, as an editable spec.

const DIM: u64 = 64;
const N_LAYERS: u64 = 2;
const N_HEADS: u64 = 4;
const N_KV_HEADS: u64 = 2;
const HEAD_DIM: u64 = DIM / N_HEADS;
const KV_DIM: u64 = N_KV_HEADS * HEAD_DIM;
const FFN: u64 = 96;
const VOCAB: u64 = 64;

const F32: u32 = 0;
const F16: u32 = 1;
const Q4_0: u32 = 2;
const Q4_1: u32 = 3;
const Q8_0: u32 = 8;
const Q5_0: u32 = 6;
const Q5_1: u32 = 7;
const Q2_K: u32 = 10;
const Q4_K: u32 = 12;
const Q6_K: u32 = 14;

#[derive(Debug, Clone)]
enum MetaVal {
    U32(u32),
    F32(f32),
    Str(String),
    StrArr(Vec<String>),
    I32Arr(Vec<i32>),
    Bool(bool),
}

#[derive(Debug, Clone)]
struct TensorSpec {
    name: String,
    /// ggml order: `[cols, rows]`.
    dims: Vec<u64>,
    /// Raw ggml type id.
    ty: u32,
}

#[derive(Debug, Clone)]
struct Spec {
    version: u32,
    alignment: u64,
    meta: Vec<(String, MetaVal)>,
    tensors: Vec<TensorSpec>,
}

impl Spec {
    /// The valid tiny llama.
    fn tiny() -> Spec {
        let mut s = Spec {
            version: 3,
            alignment: 32,
            meta: Vec::new(),
            tensors: Vec::new(),
        };
        s.set("general.architecture", MetaVal::Str("llama".into()));
        s.set("general.name", MetaVal::Str("ember-tiny".into()));
        s.set("llama.block_count", MetaVal::U32(N_LAYERS as u32));
        s.set("llama.embedding_length", MetaVal::U32(DIM as u32));
        s.set("llama.feed_forward_length", MetaVal::U32(FFN as u32));
        s.set("llama.attention.head_count", MetaVal::U32(N_HEADS as u32));
        s.set(
            "llama.attention.head_count_kv",
            MetaVal::U32(N_KV_HEADS as u32),
        );
        s.set("llama.context_length", MetaVal::U32(128));
        s.set("llama.rope.freq_base", MetaVal::F32(10_000.0));
        s.set("llama.attention.layer_norm_rms_epsilon", MetaVal::F32(1e-5));
        s.set("llama.vocab_size", MetaVal::U32(VOCAB as u32));
        s.set("tokenizer.ggml.add_bos_token", MetaVal::Bool(true));
        s.set(
            "tokenizer.ggml.tokens",
            MetaVal::StrArr((0..VOCAB).map(|i| format!("t{i}")).collect()),
        );
        s.set(
            "tokenizer.ggml.token_type",
            MetaVal::I32Arr(vec![1; VOCAB as usize]),
        );

        s.add("token_embd.weight", &[DIM, VOCAB], Q8_0);
        s.add("output_norm.weight", &[DIM], F32);
        s.add("output.weight", &[DIM, VOCAB], Q8_0);
        for l in 0..N_LAYERS {
            // Layer 0 is all Q8_0; layer 1 mixes every supported type.
            let t = |q8: bool, other: u32| if l == 0 || q8 { Q8_0 } else { other };
            s.add(&format!("blk.{l}.attn_norm.weight"), &[DIM], F32);
            s.add(
                &format!("blk.{l}.attn_q.weight"),
                &[DIM, DIM],
                t(false, F16),
            );
            s.add(
                &format!("blk.{l}.attn_k.weight"),
                &[DIM, KV_DIM],
                t(false, F32),
            );
            s.add(
                &format!("blk.{l}.attn_v.weight"),
                &[DIM, KV_DIM],
                t(false, Q4_0),
            );
            s.add(
                &format!("blk.{l}.attn_output.weight"),
                &[DIM, DIM],
                t(false, Q4_1),
            );
            s.add(&format!("blk.{l}.ffn_norm.weight"), &[DIM], F32);
            s.add(
                &format!("blk.{l}.ffn_gate.weight"),
                &[DIM, FFN],
                t(true, Q8_0),
            );
            s.add(
                &format!("blk.{l}.ffn_up.weight"),
                &[DIM, FFN],
                t(false, Q4_0),
            );
            s.add(
                &format!("blk.{l}.ffn_down.weight"),
                &[FFN, DIM],
                t(false, Q4_1),
            );
        }
        s
    }

    fn set(&mut self, key: &str, v: MetaVal) -> &mut Self {
        match self.meta.iter_mut().find(|(k, _)| k == key) {
            Some((_, old)) => *old = v,
            None => self.meta.push((key.into(), v)),
        }
        self
    }

    fn remove(&mut self, key: &str) -> &mut Self {
        let n = self.meta.len();
        self.meta.retain(|(k, _)| k != key);
        assert_eq!(self.meta.len() + 1, n, "no key {key}");
        self
    }

    fn add(&mut self, name: &str, dims: &[u64], ty: u32) -> &mut Self {
        self.tensors.push(TensorSpec {
            name: name.into(),
            dims: dims.into(),
            ty,
        });
        self
    }

    fn tensor(&mut self, name: &str) -> &mut TensorSpec {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    fn remove_tensor(&mut self, name: &str) -> &mut Self {
        let n = self.tensors.len();
        self.tensors.retain(|t| t.name != name);
        assert_eq!(self.tensors.len() + 1, n, "no tensor {name}");
        self
    }

    fn build(&self) -> Vec<u8> {
        let mut w = GgufWriter::new();
        w.version(self.version).alignment(self.alignment);
        for (k, v) in &self.meta {
            match v {
                MetaVal::U32(x) => w.add_u32(k, *x),
                MetaVal::F32(x) => w.add_f32(k, *x),
                MetaVal::Str(x) => w.add_str(k, x),
                MetaVal::StrArr(xs) => {
                    let refs: Vec<&str> = xs.iter().map(|s| s.as_str()).collect();
                    w.add_str_array(k, &refs)
                }
                MetaVal::I32Arr(xs) => w.add_i32_array(k, xs),
                MetaVal::Bool(x) => w.add_bool(k, *x),
            };
        }
        for t in &self.tensors {
            w.add_tensor_raw(&t.name, &t.dims, t.ty, tensor_data(t));
        }
        w.to_bytes()
    }

    fn aligned(&self) -> Aligned {
        Aligned::new(&self.build())
    }
}

/// Deterministic small values for a tensor, encoded in its type.
fn tensor_data(t: &TensorSpec) -> Vec<u8> {
    let n: u64 = t.dims.iter().product();
    let mut rng = XorShift::new(fnv1a(&t.name));
    let norm = t.name.ends_with("norm.weight");
    let vals: Vec<f32> = (0..n)
        .map(|_| {
            if norm {
                1.0 + 0.1 * rng.unit()
            } else {
                0.5 * rng.unit()
            }
        })
        .collect();
    let blocks = vals.len() / GgmlType::from_id(t.ty).map_or(1, |ty| ty.block_len());
    match t.ty {
        F32 => quant::as_bytes(&vals).to_vec(),
        F16 => vals
            .iter()
            .flat_map(|&v| quant::f32_to_f16_bits(v))
            .collect(),
        Q8_0 => {
            let mut b = vec![BlockQ8_0::ZERO; blocks];
            quant::q8_0::quantize_row(&vals, &mut b);
            quant::as_bytes(&b).to_vec()
        }
        Q4_0 => {
            let mut b = vec![BlockQ4_0::ZERO; blocks];
            quant::q4_0::quantize_row(&vals, &mut b);
            quant::as_bytes(&b).to_vec()
        }
        Q4_1 => {
            let mut b = vec![BlockQ4_1::ZERO; blocks];
            quant::q4_1::quantize_row(&vals, &mut b);
            quant::as_bytes(&b).to_vec()
        }
        _ => vec![0; 32],
    }
}

/// Builds `spec`, checks it parses, and returns what `Llama::from_gguf` says.
fn load_result(spec: &Spec) -> Result<(), Error> {
    let buf = spec.aligned();
    let g = Gguf::parse(buf.bytes()).expect("the spec should still parse");
    Llama::from_gguf(&g).map(|_| ())
}

/// Runs `f` on a session over the tiny model with the given plan.
fn with_session<R>(kv: usize, batch: usize, f: impl FnOnce(&mut Session) -> R) -> R {
    let buf = Spec::tiny().aligned();
    let g = Gguf::parse(buf.bytes()).unwrap();
    let model = Llama::from_gguf(&g).unwrap();
    let plan = MemoryPlan::new(&model.config, kv, batch).unwrap();
    let mut arena = plan.alloc();
    let mut s = Session::new(&model, Kernels::scalar(), plan, &mut arena).unwrap();
    f(&mut s)
}

// ---------------------------------------------------------------------------
// Hand-written header bytes, with every field's position recorded.

#[derive(Debug, Clone, Copy)]
struct Field {
    what: &'static str,
    start: u64,
    len: u64,
}

#[derive(Debug, Clone, Default)]
struct Raw {
    b: Vec<u8>,
    fields: Vec<Field>,
}

impl Raw {
    /// Magic, version, tensor count and metadata count.
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw::default();
        r.field("magic", b"GGUF")
            .u32("version", version)
            .u64("tensor count", n_tensors)
            .u64("metadata count", n_kv);
        r
    }

    fn pos(&self) -> u64 {
        self.b.len() as u64
    }

    fn field(&mut self, what: &'static str, bytes: &[u8]) -> &mut Self {
        self.fields.push(Field {
            what,
            start: self.pos(),
            len: bytes.len() as u64,
        });
        self.b.extend_from_slice(bytes);
        self
    }

    fn u32(&mut self, what: &'static str, v: u32) -> &mut Self {
        self.field(what, &v.to_le_bytes())
    }

    fn u64(&mut self, what: &'static str, v: u64) -> &mut Self {
        self.field(what, &v.to_le_bytes())
    }

    /// A GGUF string: u64 length, then the bytes (not necessarily UTF-8).
    fn str(&mut self, what: &'static str, s: &[u8]) -> &mut Self {
        self.u64(what, s.len() as u64);
        if !s.is_empty() {
            self.field(what, s);
        }
        self
    }

    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str("tensor name", name.as_bytes())
            .u32("n_dims", dims.len() as u32);
        for &d in dims {
            self.u64("dim", d);
        }
        self.u32("tensor type", ty).u64("tensor offset", offset)
    }

    /// Zero padding to `align` (not a field).
    fn pad(&mut self, align: u64) -> &mut Self {
        let n = self.pos().div_ceil(align) * align;
        self.b.resize(n as usize, 0);
        self
    }

    /// Unrecorded bytes (tensor data).
    fn data(&mut self, bytes: &[u8]) -> &mut Self {
        self.b.extend_from_slice(bytes);
        self
    }

    fn parse(&self) -> Result<(), Error> {
        let a = Aligned::new(&self.b);
        Gguf::parse(a.bytes()).map(|_| ())
    }
}

// ---------------------------------------------------------------------------
// Positive controls.

#[test]
fn tiny_model_parses_loads_and_runs() {
    let buf = Spec::tiny().aligned();
    let g = Gguf::parse(buf.bytes()).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.n_tensors, 3 + 9 * N_LAYERS);
    assert_eq!(g.n_metadata, 14);
    assert_eq!(g.data_start % 32, 0);
    assert_eq!(g.metadata().count() as u64, g.n_metadata);
    assert_eq!(g.tensors().count() as u64, g.n_tensors);
    assert_eq!(
        g.get("general.architecture").and_then(|v| v.as_str()),
        Some("llama")
    );
    assert_eq!(g.get("llama.block_count").and_then(|v| v.as_u32()), Some(2));
    let toks = g
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .unwrap();
    assert_eq!(toks.len(), VOCAB);
    assert_eq!(toks.get(5).and_then(|v| v.as_str()), Some("t5"));
    assert_eq!(toks.iter().count() as u64, VOCAB);
    let q = g.tensor("blk.1.attn_q.weight").unwrap();
    assert_eq!((q.ty, q.n_dims, q.dims), (GgmlType::F16, 2, [64, 64, 1, 1]));
    assert_eq!(q.data.len(), 64 * 64 * 2);
    for t in g.tensors() {
        let rows = t.n_rows();
        assert_eq!(
            t.data.len() as u64,
            t.ty.row_bytes(t.dims[0]).unwrap() * rows,
            "{}",
            t.name
        );
    }

    let model = Llama::from_gguf(&g).unwrap();
    let c = model.config;
    assert_eq!(
        (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim),
        (64, 2, 4, 2, 16)
    );
    assert_eq!((c.ffn_dim, c.vocab_size, c.rope_dim), (96, 64, 16));

    let plan = MemoryPlan::new(&c, 16, 4).unwrap();
    let mut arena = plan.alloc();
    let mut s = Session::new(&model, Kernels::scalar(), plan, &mut arena).unwrap();
    let batched = s.forward(&[1, 2, 3, 4, 5]).unwrap().to_vec();
    assert_eq!(batched.len(), VOCAB as usize);
    assert!(batched.iter().all(|v| v.is_finite()), "{batched:?}");
    assert!(
        batched.iter().any(|&v| v != batched[0]),
        "logits should not be constant"
    );
    assert_eq!(s.pos(), 5);

    // One token at a time reaches the same logits as the batched prefill.
    s.reset();
    assert_eq!(s.pos(), 0);
    let mut last = Vec::new();
    for t in 1..=5 {
        last = s.forward(&[t]).unwrap().to_vec();
    }
    assert_eq!(s.pos(), 5);
    for (a, b) in batched.iter().zip(&last) {
        assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
    }
}

#[test]
fn variants_that_must_load() {
    // GGUF v2.
    let mut s = Spec::tiny();
    s.version = 2;
    load_result(&s).unwrap();

    // Tied classifier: no output.weight, token_embd is reused.
    let mut s = Spec::tiny();
    s.remove_tensor("output.weight");
    load_result(&s).unwrap();

    // F32 embedding, and no optional metadata at all.
    let mut s = Spec::tiny();
    s.tensor("token_embd.weight").ty = F32;
    for k in [
        "llama.attention.head_count_kv",
        "llama.context_length",
        "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.vocab_size",
        "tokenizer.ggml.tokens",
    ] {
        s.remove(k);
    }
    // Without head_count_kv every head has its own K/V.
    for l in 0..N_LAYERS {
        for m in ["attn_k", "attn_v"] {
            s.tensor(&format!("blk.{l}.{m}.weight")).dims = vec![DIM, DIM];
        }
    }
    let buf = s.aligned();
    let g = Gguf::parse(buf.bytes()).unwrap();
    let m = Llama::from_gguf(&g).unwrap();
    assert_eq!(m.config.n_kv_heads, m.config.n_heads);

    // A non-default alignment, declared and used.
    let mut s = Spec::tiny();
    s.alignment = 64;
    s.set("general.alignment", MetaVal::U32(64));
    let buf = s.aligned();
    let g = Gguf::parse(buf.bytes()).unwrap();
    assert_eq!(g.alignment, 64);
    assert_eq!(g.data_start % 64, 0);
    Llama::from_gguf(&g).unwrap();

    // A file with no tensors and no metadata is a valid (empty) GGUF.
    let r = Raw::header(3, 0, 0);
    r.parse().unwrap();
}

// ---------------------------------------------------------------------------
// Truncation.

/// A small hand-written file whose every header field is recorded.
fn small_file() -> (Raw, u64, u64) {
    let mut r = Raw::header(3, 2, 4);
    r.str("key", b"general.architecture")
        .u32("value type", 8)
        .str("string value", b"llama");
    r.str("key", b"general.alignment")
        .u32("value type", 4)
        .u32("u32 value", 32);
    r.str("key", b"tokenizer.ggml.tokens")
        .u32("value type", 9)
        .u32("array element type", 8)
        .u64("array length", 2)
        .str("array string", b"a")
        .str("array string", b"bc");
    r.str("key", b"x.scores")
        .u32("value type", 9)
        .u32("array element type", 6)
        .u64("array length", 3);
    let scores: Vec<u8> = [1.0f32, 2.0, 3.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    r.field("fixed-size array payload", &scores);
    r.tensor("a", &[8, 2], F32, 0);
    r.tensor("b", &[4], F32, 64);
    let header_end = r.pos();
    r.pad(32);
    let data_start = r.pos();
    r.data(&[0x11; 64 + 16]);
    (r, header_end, data_start)
}

#[test]
fn truncated_at_every_header_field() {
    let (r, header_end, data_start) = small_file();
    r.parse().unwrap();
    let full = Aligned::new(&r.b);
    let bytes = full.bytes();
    assert!(r.fields.len() > 30);
    for f in &r.fields {
        let mut cuts = vec![f.start, f.start + f.len / 2, f.start + f.len - 1];
        cuts.dedup();
        for cut in cuts {
            let res = Gguf::parse(&bytes[..cut as usize]);
            assert!(
                matches!(
                    res,
                    Err(Error::Truncated { offset, needed }) if offset == f.start && needed == f.len
                ),
                "{} ({} bytes at {}) cut at {cut}: {res:?}",
                f.what,
                f.len,
                f.start
            );
        }
    }
    // Inside the padding after the tensor infos.
    assert!(
        data_start > header_end,
        "the small file should need padding"
    );
    for cut in header_end..data_start {
        assert_err!(
            Gguf::parse(&bytes[..cut as usize]),
            Error::Truncated { offset, needed }
                if offset == header_end && needed == data_start - header_end
        );
    }
    // Before and inside the data: tensor `a` (64 bytes at 0), then `b` (16 at 64).
    for k in 0..64u64 {
        assert_err!(
            Gguf::parse(&bytes[..(data_start + k) as usize]),
            Error::TensorOutOfBounds { tensor: 0, end: 64, data_len } if data_len == k
        );
    }
    for k in 64..80u64 {
        assert_err!(
            Gguf::parse(&bytes[..(data_start + k) as usize]),
            Error::TensorOutOfBounds { tensor: 1, end: 80, data_len } if data_len == k
        );
    }
    Gguf::parse(&bytes[..(data_start + 80) as usize]).unwrap();
}

#[test]
fn truncated_at_every_length() {
    let buf = Spec::tiny().aligned();
    let bytes = buf.bytes();
    let g = Gguf::parse(bytes).unwrap();
    let data_start = g.data_start as usize;
    let min_len = data_start
        + g.tensors()
            .map(|t| t.offset as usize + t.data.len())
            .max()
            .unwrap();
    assert!(min_len <= bytes.len());
    for cut in 0..bytes.len() {
        let res = Gguf::parse(&bytes[..cut]);
        if cut < data_start {
            assert_err!(res, Error::Truncated { .. });
        } else if cut < min_len {
            assert_err!(
                res,
                Error::TensorOutOfBounds { data_len, .. } if data_len == (cut - data_start) as u64
            );
        } else {
            assert!(res.is_ok(), "length {cut}: {res:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// Header.

#[test]
fn bad_magic() {
    let mut b = Spec::tiny().build();
    b[3] = b'G';
    assert_err!(
        Gguf::parse(&b),
        Error::BadMagic { found } if found == u32::from_le_bytes(*b"GGUG")
    );
    assert_err!(Gguf::parse(&[0u8; 4]), Error::BadMagic { found: 0 });
    // Byte-swapped magic (a big-endian writer).
    assert_err!(
        Gguf::parse(b"FUGG\0\0\0\x03"),
        Error::BadMagic { found } if found == u32::from_le_bytes(*b"FUGG")
    );
    // Too short to hold a magic at all.
    assert_err!(
        Gguf::parse(b"GGU"),
        Error::Truncated {
            offset: 0,
            needed: 4
        }
    );
    assert_err!(
        Gguf::parse(&[]),
        Error::Truncated {
            offset: 0,
            needed: 4
        }
    );
}

#[test]
fn unsupported_versions() {
    for v in [0, 1, 4, 5, u32::MAX] {
        let mut s = Spec::tiny();
        s.version = v;
        let buf = s.aligned();
        assert_err!(
            Gguf::parse(buf.bytes()),
            Error::UnsupportedVersion { found } if found == v
        );
        assert_err!(
            Raw::header(v, 0, 0).parse(),
            Error::UnsupportedVersion { found } if found == v
        );
    }
    for v in [2, 3] {
        Raw::header(v, 0, 0).parse().unwrap();
    }
}

#[test]
fn huge_counts() {
    let cap = limits::MAX_TENSORS;
    for n in [cap + 1, 1 << 40, u64::MAX] {
        assert_err!(
            Raw::header(3, n, 0).parse(),
            Error::CapExceeded { what: Cap::Tensors, found, cap: c } if found == n && c == cap
        );
    }
    let cap = limits::MAX_METADATA;
    for n in [cap + 1, u64::MAX] {
        assert_err!(
            Raw::header(3, 0, n).parse(),
            Error::CapExceeded { what: Cap::MetadataKeys, found, cap: c } if found == n && c == cap
        );
    }
    // At the caps the counts are accepted and the file simply runs out.
    assert_err!(
        Raw::header(3, limits::MAX_TENSORS, 0).parse(),
        Error::Truncated {
            offset: 24,
            needed: 8
        }
    );
    assert_err!(
        Raw::header(3, 0, limits::MAX_METADATA).parse(),
        Error::Truncated {
            offset: 24,
            needed: 8
        }
    );
}

// ---------------------------------------------------------------------------
// Metadata.

#[test]
fn huge_string_lengths() {
    let cap = limits::MAX_STRING;
    for n in [cap + 1, 1 << 40, u64::MAX] {
        // Key length.
        let mut r = Raw::header(3, 0, 1);
        r.u64("key length", n);
        assert_err!(
            r.parse(),
            Error::CapExceeded { what: Cap::StringLength, found, cap: c } if found == n && c == cap
        );
        // String value length.
        let mut r = Raw::header(3, 0, 1);
        r.str("key", b"k").u32("type", 8).u64("value length", n);
        assert_err!(
            r.parse(),
            Error::CapExceeded { what: Cap::StringLength, found, .. } if found == n
        );
        // String inside an array.
        let mut r = Raw::header(3, 0, 1);
        r.str("key", b"k")
            .u32("type", 9)
            .u32("elem", 8)
            .u64("len", 1)
            .u64("string length", n);
        assert_err!(
            r.parse(),
            Error::CapExceeded { what: Cap::StringLength, found, .. } if found == n
        );
        // Tensor name length.
        let mut r = Raw::header(3, 1, 0);
        r.u64("name length", n);
        assert_err!(
            r.parse(),
            Error::CapExceeded { what: Cap::StringLength, found, .. } if found == n
        );
    }
    // At the cap: accepted, then truncated.
    let mut r = Raw::header(3, 0, 1);
    r.u64("key length", cap);
    assert_err!(
        r.parse(),
        Error::Truncated { offset: 32, needed } if needed == cap
    );
}

#[test]
fn huge_array_lengths() {
    let cap = limits::MAX_ARRAY;
    for elem in [0u32, 6, 8, 9, 10] {
        for n in [cap + 1, 1 << 40, u64::MAX] {
            let mut r = Raw::header(3, 0, 1);
            r.str("key", b"arr")
                .u32("type", 9)
                .u32("elem", elem)
                .u64("len", n);
            assert_err!(
                r.parse(),
                Error::CapExceeded { what: Cap::ArrayLength, found, cap: c } if found == n && c == cap
            );
        }
        // At the cap: accepted, then the elements run past the end.
        let mut r = Raw::header(3, 0, 1);
        r.str("key", b"arr")
            .u32("type", 9)
            .u32("elem", elem)
            .u64("len", cap);
        assert_err!(r.parse(), Error::Truncated { .. });
    }
}

/// A key whose value is `levels` arrays nested in each other, the innermost
/// holding one u8.
fn nested_arrays(levels: usize) -> Raw {
    let mut r = Raw::header(3, 0, 1);
    r.str("key", b"nested").u32("type", 9);
    for _ in 1..levels {
        r.u32("elem", 9).u64("len", 1);
    }
    r.u32("elem", 0).u64("len", 1).field("u8", &[7]);
    r
}

#[test]
fn array_nesting_is_capped() {
    for levels in 1..=limits::MAX_NESTING as usize {
        nested_arrays(levels).parse().unwrap();
    }
    let too_deep = limits::MAX_NESTING as usize + 1;
    assert_err!(
        nested_arrays(too_deep).parse(),
        Error::CapExceeded { what: Cap::ArrayNesting, cap, .. } if cap == limits::MAX_NESTING as u64
    );
    assert_err!(
        nested_arrays(1000).parse(),
        Error::CapExceeded {
            what: Cap::ArrayNesting,
            ..
        }
    );
}

#[test]
fn unknown_value_types() {
    for bad in [13u32, 99, u32::MAX] {
        // As the pair's type. The type id sits right after the key "k" (24 + 8 + 1).
        let mut r = Raw::header(3, 0, 1);
        r.str("key", b"k").u32("type", bad).u32("value", 0);
        assert_err!(
            r.parse(),
            Error::UnknownValueType { offset: 33, found } if found == bad
        );
        // As an array's element type (after the pair's type id).
        let mut r = Raw::header(3, 0, 1);
        r.str("key", b"k")
            .u32("type", 9)
            .u32("elem", bad)
            .u64("len", 0);
        assert_err!(
            r.parse(),
            Error::UnknownValueType { offset: 37, found } if found == bad
        );
    }
    // The same through the writer's raw pair, after a valid pair.
    let mut w = GgufWriter::new();
    w.add_u32("ok", 1);
    let mut pair = Vec::new();
    pair.extend_from_slice(&3u64.to_le_bytes());
    pair.extend_from_slice(b"bad");
    pair.extend_from_slice(&42u32.to_le_bytes());
    w.add_raw(&pair);
    let b = w.to_bytes();
    assert_err!(Gguf::parse(&b), Error::UnknownValueType { found: 42, .. });
}

#[test]
fn invalid_utf8() {
    let bad: &[u8] = &[b'a', 0xff, 0xfe, b'z'];
    // In a key.
    let mut r = Raw::header(3, 0, 1);
    r.str("key", bad).u32("type", 4).u32("value", 1);
    assert_err!(r.parse(), Error::InvalidUtf8 { offset: 32 });
    // In a string value: the key "k" ends at 33, type id to 37, length to 45.
    let mut r = Raw::header(3, 0, 1);
    r.str("key", b"k").u32("type", 8).str("value", bad);
    assert_err!(r.parse(), Error::InvalidUtf8 { offset: 45 });
    // In a string array element (overlong encoding of '/').
    let mut r = Raw::header(3, 0, 1);
    r.str("key", b"k")
        .u32("type", 9)
        .u32("elem", 8)
        .u64("len", 2)
        .str("s", b"fine")
        .str("s", &[0xc0, 0xaf]);
    assert_err!(r.parse(), Error::InvalidUtf8 { .. });
    // In a tensor name.
    let mut r = Raw::header(3, 1, 0);
    r.str("name", &[0xed, 0xa0, 0x80]); // a UTF-16 surrogate
    r.u32("n_dims", 1)
        .u64("dim", 8)
        .u32("ty", F32)
        .u64("off", 0);
    r.pad(32).data(&[0; 32]);
    assert_err!(r.parse(), Error::InvalidUtf8 { offset: 32 });
}

#[test]
fn bad_alignment() {
    for a in [0u32, 3, 6, 48, 1 << 17, u32::MAX] {
        let mut s = Spec::tiny();
        s.set("general.alignment", MetaVal::U32(a));
        let buf = s.aligned();
        assert_err!(
            Gguf::parse(buf.bytes()),
            Error::BadAlignment { found } if found == a as u64
        );
    }
    // Not an integer at all.
    let mut s = Spec::tiny();
    s.set("general.alignment", MetaVal::Str("32".into()));
    let buf = s.aligned();
    assert_err!(Gguf::parse(buf.bytes()), Error::BadAlignment { .. });
    // A negative integer.
    let mut r = Raw::header(3, 0, 1);
    r.str("key", b"general.alignment")
        .u32("type", 5)
        .u32("i32", (-32i32) as u32);
    assert_err!(r.parse(), Error::BadAlignment { .. });
    // The largest allowed alignment is fine.
    let mut r = Raw::header(3, 0, 1);
    r.str("key", b"general.alignment")
        .u32("type", 4)
        .u32("u32", limits::MAX_ALIGNMENT as u32);
    r.parse().unwrap();
}

// ---------------------------------------------------------------------------
// Tensor infos.

/// One tensor info after a valid 32-byte F32 tensor "ok", then data.
fn second_tensor(dims: &[u64], ty: u32, offset: u64) -> Raw {
    let mut r = Raw::header(3, 2, 0);
    r.tensor("ok", &[8], F32, 0);
    r.tensor("bad", dims, ty, offset);
    r.pad(32).data(&[0; 64]);
    r
}

#[test]
fn too_many_dims() {
    let r = second_tensor(&[1, 1, 1, 1, 32], F32, 32);
    assert_err!(
        r.parse(),
        Error::CapExceeded {
            what: Cap::TensorDims,
            found: 5,
            cap: 4
        }
    );
    let mut r = Raw::header(3, 1, 0);
    r.str("name", b"t").u32("n_dims", u32::MAX);
    assert_err!(
        r.parse(),
        Error::CapExceeded {
            what: Cap::TensorDims,
            ..
        }
    );
    // Four dims is the most, and fine.
    second_tensor(&[8, 1, 1, 1], F32, 32).parse().unwrap();
    // Zero dims is refused.
    assert!(second_tensor(&[], F32, 32).parse().is_err());
}

#[test]
fn zero_dimension() {
    for dims in [&[0u64][..], &[8, 0], &[8, 1, 1, 0]] {
        assert_err!(
            second_tensor(dims, F32, 32).parse(),
            Error::BadTensorShape { tensor: 1 }
        );
    }
}

#[test]
fn dimension_overflow() {
    for dims in [
        &[1u64 << 32, 1 << 32][..],
        &[u64::MAX, 2],
        &[1 << 16, 1 << 16, 1 << 16, 1 << 16],
        &[2, u64::MAX],
    ] {
        assert_err!(
            second_tensor(dims, F32, 32).parse(),
            Error::DimensionOverflow { tensor: 1 }
        );
    }
    // Fits in 64 bits but is over the element cap.
    assert_err!(
        second_tensor(&[1 << 21, 1 << 20], F32, 32).parse(),
        Error::CapExceeded { what: Cap::TensorElements, found, cap }
            if found == 1 << 41 && cap == limits::MAX_ELEMENTS
    );
    assert_err!(
        second_tensor(&[u64::MAX], F32, 32).parse(),
        Error::CapExceeded {
            what: Cap::TensorElements,
            ..
        }
    );
}

#[test]
fn row_not_whole_blocks() {
    for (ty, cols) in [
        (Q8_0, 33u64),
        (Q8_0, 16),
        (Q4_0, 48),
        (Q4_1, 1),
        (Q5_0, 40),
        (Q5_1, 16),
        // K-quants take rows of whole 256-element super-blocks.
        (Q4_K, 576),
        (Q6_K, 128),
        (Q2_K, 32),
    ] {
        assert_err!(
            second_tensor(&[cols, 2], ty, 32).parse(),
            Error::BadTensorShape { tensor: 1 }
        );
    }
    // Float types take any row length.
    second_tensor(&[3, 2], F32, 32).parse().unwrap();
    second_tensor(&[15], F16, 32).parse().unwrap();
    // Through the writer as well.
    let mut s = Spec::tiny();
    s.add("odd.weight", &[40, 2], Q8_0);
    let buf = s.aligned();
    let idx = s.tensors.len() as u32 - 1;
    assert_err!(
        Gguf::parse(buf.bytes()),
        Error::BadTensorShape { tensor } if tensor == idx
    );
}

#[test]
fn unknown_tensor_types() {
    // 4 and 5 were Q4_2/Q4_3 (removed); 9 is Q8_1 and 16 IQ2_XXS, which
    // this core does not read.
    for ty in [4u32, 5, 9, 16, 99, u32::MAX] {
        assert_err!(
            second_tensor(&[32], ty, 32).parse(),
            Error::UnknownTensorType { tensor: 1, found } if found == ty
        );
    }
    let mut s = Spec::tiny();
    s.tensor("blk.0.attn_q.weight").ty = 99;
    let idx = s
        .tensors
        .iter()
        .position(|t| t.name == "blk.0.attn_q.weight")
        .unwrap() as u32;
    let buf = s.aligned();
    assert_err!(
        Gguf::parse(buf.bytes()),
        Error::UnknownTensorType { tensor, found: 99 } if tensor == idx
    );
}

#[test]
fn misaligned_tensor_offset() {
    for off in [4u64, 1, 31, 33] {
        assert_err!(
            second_tensor(&[8], F32, off).parse(),
            Error::MisalignedTensor { tensor: 1, offset } if offset == off
        );
    }
    // The file declares 64 but its tensors were placed at multiples of 32.
    let mut w = GgufWriter::new();
    w.add_u32("general.alignment", 64);
    w.add_tensor("a", &[8], GgmlType::F32, vec![0; 32]);
    w.add_tensor("b", &[8], GgmlType::F32, vec![0; 32]);
    let buf = Aligned::new(&w.to_bytes());
    assert_err!(
        Gguf::parse(buf.bytes()),
        Error::MisalignedTensor {
            tensor: 1,
            offset: 32
        }
    );
}

#[test]
fn tensor_data_out_of_bounds() {
    // second_tensor has 64 data bytes.
    assert_err!(
        second_tensor(&[8], F32, 1 << 40).parse(),
        Error::TensorOutOfBounds { tensor: 1, end, data_len: 64 } if end == (1 << 40) + 32
    );
    assert_err!(
        second_tensor(&[8], F32, 64).parse(),
        Error::TensorOutOfBounds {
            tensor: 1,
            end: 96,
            data_len: 64
        }
    );
    // Exactly at the end is fine.
    second_tensor(&[8], F32, 32).parse().unwrap();
    // Too many elements for the data.
    assert_err!(
        second_tensor(&[9], F32, 32).parse(),
        Error::TensorOutOfBounds {
            tensor: 1,
            end: 68,
            data_len: 64
        }
    );
    // An offset so large that offset + size wraps around u64. Either error
    // names the problem; what matters is that it is refused without wrapping.
    let off = u64::MAX - 31;
    assert_err!(
        second_tensor(&[64], F32, off).parse(),
        Error::TensorOutOfBounds { tensor: 1, .. } | Error::DimensionOverflow { tensor: 1 }
    );
    // And in a real model: the last tensor's data cut short by one byte.
    let mut b = Spec::tiny().build();
    b.pop();
    let n = Spec::tiny().tensors.len() as u32;
    assert_err!(
        Gguf::parse(&b),
        Error::TensorOutOfBounds { tensor, .. } if tensor == n - 1
    );
}

#[test]
fn duplicate_tensor_names() {
    let mut w = GgufWriter::new();
    for name in ["a", "b", "a"] {
        w.add_tensor(name, &[8], GgmlType::F32, vec![0; 32]);
    }
    let buf = Aligned::new(&w.to_bytes());
    assert_err!(
        Gguf::parse(buf.bytes()),
        Error::DuplicateTensor { tensor: 2 }
    );
    let mut s = Spec::tiny();
    s.add("blk.0.attn_q.weight", &[DIM, DIM], Q8_0);
    let idx = s.tensors.len() as u32 - 1;
    let buf = s.aligned();
    assert_err!(
        Gguf::parse(buf.bytes()),
        Error::DuplicateTensor { tensor } if tensor == idx
    );
}

/// The most tensors a file may have, all uniquely named, still parse (the
/// uniqueness check is quadratic; the cap keeps it bounded), and a duplicate
/// at the very end is still found.
#[test]
fn tensor_count_at_cap_parses() {
    let n = limits::MAX_TENSORS;
    let mut w = GgufWriter::new();
    for i in 0..n {
        w.add_tensor(
            &format!("blk.{i}.ffn_norm.weight"),
            &[8],
            GgmlType::F32,
            vec![0; 32],
        );
    }
    let buf = Aligned::new(&w.to_bytes());
    let t = std::time::Instant::now();
    let g = Gguf::parse(buf.bytes()).expect("parse");
    eprintln!("parsed {n} tensors in {:?}", t.elapsed());
    assert_eq!(g.tensors().count() as u64, n);

    let mut w = GgufWriter::new();
    for i in 0..n {
        let name = if i == n - 1 {
            "blk.0.ffn_norm.weight".to_string()
        } else {
            format!("blk.{i}.ffn_norm.weight")
        };
        w.add_tensor(&name, &[8], GgmlType::F32, vec![0; 32]);
    }
    let buf = Aligned::new(&w.to_bytes());
    assert_err!(Gguf::parse(buf.bytes()), Error::DuplicateTensor { tensor } if tensor as u64 == n - 1);
}

// ---------------------------------------------------------------------------
// Model loading.

#[test]
fn missing_tensors() {
    for (name, kind, layer) in [
        ("blk.1.ffn_down.weight", TensorKind::FfnDown, 1),
        ("blk.0.attn_q.weight", TensorKind::AttnQ, 0),
        ("blk.1.attn_norm.weight", TensorKind::AttnNorm, 1),
        ("blk.0.ffn_norm.weight", TensorKind::FfnNorm, 0),
        ("output_norm.weight", TensorKind::OutputNorm, 0),
        ("token_embd.weight", TensorKind::TokenEmbd, 0),
    ] {
        let mut s = Spec::tiny();
        s.remove_tensor(name);
        assert_err!(
            load_result(&s),
            Error::MissingTensor { kind: k, layer: l } if k == kind && l == layer
        );
    }
    // More blocks declared than the file has.
    let mut s = Spec::tiny();
    s.set("llama.block_count", MetaVal::U32(3));
    assert_err!(
        load_result(&s),
        Error::MissingTensor {
            kind: TensorKind::AttnNorm,
            layer: 2
        }
    );
}

#[test]
fn wrong_shapes() {
    let mut s = Spec::tiny();
    s.tensor("blk.0.attn_k.weight").dims = vec![DIM, DIM];
    assert_err!(
        load_result(&s),
        Error::WrongShape {
            kind: TensorKind::AttnK,
            layer: 0,
            expected: [64, 32],
            found: [64, 64]
        }
    );
    // Transposed.
    let mut s = Spec::tiny();
    s.tensor("blk.1.ffn_down.weight").dims = vec![DIM, FFN];
    assert_err!(
        load_result(&s),
        Error::WrongShape {
            kind: TensorKind::FfnDown,
            layer: 1,
            expected: [96, 64],
            found: [64, 96]
        }
    );
    // A norm of the wrong length.
    let mut s = Spec::tiny();
    s.tensor("blk.1.ffn_norm.weight").dims = vec![32];
    assert_err!(
        load_result(&s),
        Error::WrongShape {
            kind: TensorKind::FfnNorm,
            layer: 1,
            ..
        }
    );
    // A norm given as a matrix.
    let mut s = Spec::tiny();
    s.tensor("output_norm.weight").dims = vec![DIM, 2];
    assert_err!(
        load_result(&s),
        Error::WrongShape {
            kind: TensorKind::OutputNorm,
            layer: 0,
            ..
        }
    );
    // A matrix with a third dimension.
    let mut s = Spec::tiny();
    s.tensor("blk.0.attn_q.weight").dims = vec![DIM, DIM, 1];
    assert_err!(
        load_result(&s),
        Error::WrongShape {
            kind: TensorKind::AttnQ,
            layer: 0,
            ..
        }
    );
    // A classifier for another vocabulary.
    let mut s = Spec::tiny();
    s.tensor("output.weight").dims = vec![DIM, 32];
    assert_err!(
        load_result(&s),
        Error::WrongShape {
            kind: TensorKind::Output,
            layer: 0,
            expected: [64, 64],
            found: [64, 32]
        }
    );
}

#[test]
fn quantized_norm() {
    for (name, kind, layer, ty, gty) in [
        (
            "blk.0.attn_norm.weight",
            TensorKind::AttnNorm,
            0,
            Q8_0,
            GgmlType::Q8_0,
        ),
        (
            "blk.1.ffn_norm.weight",
            TensorKind::FfnNorm,
            1,
            Q4_0,
            GgmlType::Q4_0,
        ),
        (
            "output_norm.weight",
            TensorKind::OutputNorm,
            0,
            F16,
            GgmlType::F16,
        ),
    ] {
        let mut s = Spec::tiny();
        s.tensor(name).ty = ty;
        assert_err!(
            load_result(&s),
            Error::UnsupportedTensorType { kind: k, layer: l, ty: t }
                if k == kind && l == layer && t == gty
        );
    }
}

#[test]
fn architecture() {
    let mut s = Spec::tiny();
    s.set("general.architecture", MetaVal::Str("gpt2".into()));
    assert_err!(load_result(&s), Error::UnsupportedArchitecture);
    let mut s = Spec::tiny();
    s.set("general.architecture", MetaVal::Str("".into()));
    assert_err!(load_result(&s), Error::UnsupportedArchitecture);
    let mut s = Spec::tiny();
    s.remove("general.architecture");
    assert_err!(
        load_result(&s),
        Error::MissingMetadata {
            key: MetaKey::Architecture
        }
    );
    let mut s = Spec::tiny();
    s.set("general.architecture", MetaVal::U32(1));
    assert_err!(
        load_result(&s),
        Error::BadMetadata {
            key: MetaKey::Architecture
        }
    );
}

#[test]
fn missing_metadata() {
    for (k, key) in [
        ("llama.block_count", MetaKey::BlockCount),
        ("llama.embedding_length", MetaKey::EmbeddingLength),
        ("llama.attention.head_count", MetaKey::HeadCount),
        ("llama.feed_forward_length", MetaKey::FeedForwardLength),
    ] {
        let mut s = Spec::tiny();
        s.remove(k);
        assert_err!(
            load_result(&s),
            Error::MissingHyperparameter { arch: Arch::Llama, key: found } if found == key
        );
    }
}

#[test]
fn bad_metadata() {
    let cases: Vec<(&str, MetaVal, MetaKey)> = vec![
        (
            "llama.attention.head_count_kv",
            MetaVal::U32(3),
            MetaKey::HeadCountKv,
        ),
        (
            "llama.attention.head_count_kv",
            MetaVal::U32(8),
            MetaKey::HeadCountKv,
        ),
        (
            "llama.attention.head_count_kv",
            MetaVal::U32(0),
            MetaKey::HeadCountKv,
        ),
        ("llama.block_count", MetaVal::U32(0), MetaKey::BlockCount),
        (
            "llama.block_count",
            MetaVal::Str("2".into()),
            MetaKey::BlockCount,
        ),
        (
            "llama.embedding_length",
            MetaVal::F32(64.0),
            MetaKey::EmbeddingLength,
        ),
        ("llama.vocab_size", MetaVal::U32(65), MetaKey::VocabSize),
        (
            "llama.rope.freq_base",
            MetaVal::F32(f32::NAN),
            MetaKey::RopeFreqBase,
        ),
        (
            "llama.rope.freq_base",
            MetaVal::U32(10_000),
            MetaKey::RopeFreqBase,
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            MetaVal::F32(-1.0),
            MetaKey::RmsEpsilon,
        ),
        (
            "llama.rope.dimension_count",
            MetaVal::U32(17),
            MetaKey::RopeDimensionCount,
        ),
        (
            "llama.rope.dimension_count",
            MetaVal::U32(32),
            MetaKey::RopeDimensionCount,
        ),
        (
            "llama.attention.key_length",
            MetaVal::U32(15),
            MetaKey::KeyLength,
        ),
    ];
    for (k, v, key) in cases {
        let mut s = Spec::tiny();
        s.set(k, v.clone());
        assert_err!(
            load_result(&s),
            Error::BadHyperparameter { arch: Arch::Llama, key: found } if found == key
        );
    }
    // head_count 3 does not divide dim 64 (and no key_length says otherwise).
    let mut s = Spec::tiny();
    s.set("llama.attention.head_count", MetaVal::U32(3))
        .remove("llama.attention.head_count_kv");
    assert_err!(
        load_result(&s),
        Error::BadHyperparameter {
            arch: Arch::Llama,
            key: MetaKey::HeadCount
        }
    );
    // Over the caps.
    let mut s = Spec::tiny();
    s.set("llama.block_count", MetaVal::U32(129));
    assert_err!(
        load_result(&s),
        Error::CapExceeded {
            what: Cap::Layers,
            found: 129,
            cap: 128
        }
    );
    let mut s = Spec::tiny();
    s.set("llama.block_count", MetaVal::U32(u32::MAX));
    assert_err!(
        load_result(&s),
        Error::CapExceeded {
            what: Cap::Layers,
            ..
        }
    );
    let mut s = Spec::tiny();
    s.set("llama.attention.head_count", MetaVal::U32(1 << 20));
    assert_err!(
        load_result(&s),
        Error::CapExceeded {
            what: Cap::Heads,
            ..
        }
    );
}

#[test]
fn misaligned_file_bytes() {
    // The same file at an odd address: parsing needs no alignment, but the
    // F32 norms cannot be viewed in place.
    let b = Spec::tiny().build();
    let mut shifted = vec![0u8; b.len() + 1];
    shifted[1..].copy_from_slice(&b);
    let holder = Aligned::new(&shifted);
    let g = Gguf::parse(&holder.bytes()[1..]).unwrap();
    assert_err!(Llama::from_gguf(&g), Error::MisalignedData { .. });
}

// ---------------------------------------------------------------------------
// Memory plan and session.

#[test]
fn memory_plan_limits() {
    let buf = Spec::tiny().aligned();
    let g = Gguf::parse(buf.bytes()).unwrap();
    let model = Llama::from_gguf(&g).unwrap();
    let c = &model.config;
    assert_err!(MemoryPlan::new(c, 0, 1), Error::KvCapacityZero);
    assert_err!(MemoryPlan::new(c, 0, 0), Error::KvCapacityZero);
    assert_err!(MemoryPlan::new(c, 8, 0), Error::BatchZero);
    assert_err!(
        MemoryPlan::new(c, MAX_KV_CAPACITY + 1, 1),
        Error::CapExceeded {
            what: Cap::KvCapacity,
            ..
        }
    );
    assert_err!(
        MemoryPlan::new(c, usize::MAX, 1),
        Error::CapExceeded {
            what: Cap::KvCapacity,
            ..
        }
    );
    assert_err!(
        MemoryPlan::new(c, 8, MAX_BATCH + 1),
        Error::CapExceeded {
            what: Cap::Batch,
            ..
        }
    );

    // A too-small arena.
    let plan = MemoryPlan::new(c, 8, 2).unwrap();
    let n = plan.f32_len();
    let mut arena = vec![0.0f32; n];
    assert_err!(
        Session::new(&model, Kernels::scalar(), plan, &mut arena[..n - 1]),
        Error::BufferTooSmall { needed, found } if needed == n as u64 && found == n as u64 - 1
    );
    assert_err!(
        Session::new(&model, Kernels::scalar(), plan, &mut []),
        Error::BufferTooSmall { found: 0, .. }
    );
    // A forged plan is re-derived, not trusted.
    let forged = MemoryPlan {
        kv: KvOptions {
            capacity: 0,
            ..plan.kv
        },
        ..plan
    };
    assert_err!(
        Session::new(&model, Kernels::scalar(), forged, &mut arena),
        Error::KvCapacityZero
    );
    let forged = MemoryPlan {
        kv: KvOptions {
            capacity: 1000,
            ..plan.kv
        },
        ..plan
    };
    assert_err!(
        Session::new(&model, Kernels::scalar(), forged, &mut arena),
        Error::BufferTooSmall { .. }
    );
    let forged = MemoryPlan {
        max_batch: 0,
        ..plan
    };
    assert_err!(
        Session::new(&model, Kernels::scalar(), forged, &mut arena),
        Error::BatchZero
    );
    Session::new(&model, Kernels::scalar(), plan, &mut arena).unwrap();
}

#[test]
fn bad_tokens() {
    with_session(8, 2, |s| {
        assert_err!(s.forward(&[]), Error::EmptyInput);
        assert_err!(
            s.forward(&[VOCAB as u32]),
            Error::TokenOutOfRange {
                token: 64,
                vocab: 64
            }
        );
        // A bad token anywhere in the batch is found before anything runs.
        assert_err!(
            s.forward(&[1, 2, 3, u32::MAX]),
            Error::TokenOutOfRange {
                token: u32::MAX,
                vocab: 64
            }
        );
        assert_eq!(s.pos(), 0);
        let mut calls = 0;
        assert_err!(
            s.forward_all(&[], &mut |_, _| calls += 1),
            Error::EmptyInput
        );
        assert_err!(
            s.forward_all(&[0, 100], &mut |_, _| calls += 1),
            Error::TokenOutOfRange { token: 100, .. }
        );
        assert_eq!(calls, 0);
        assert_eq!(s.pos(), 0);
        let logits = s.forward(&[VOCAB as u32 - 1]).unwrap();
        assert_eq!(logits.len(), VOCAB as usize);
        assert_eq!(s.pos(), 1);
    });
}

#[test]
fn kv_cache_full() {
    with_session(4, 2, |s| {
        let first = s.forward(&[1, 2, 3]).unwrap().to_vec();
        assert_eq!(s.pos(), 3);
        assert_err!(
            s.forward(&[4, 5]),
            Error::KvCacheFull {
                capacity: 4,
                needed: 5
            }
        );
        // The failed call changed nothing: same position, same logits.
        assert_eq!(s.pos(), 3);
        assert_eq!(s.logits(), &first[..]);
        assert_err!(
            s.forward(&[0; 100]),
            Error::KvCacheFull {
                capacity: 4,
                needed: 103
            }
        );
        assert_eq!(s.pos(), 3);
        // The last slot still works.
        let l = s.forward(&[4]).unwrap();
        assert!(l.iter().all(|v| v.is_finite()));
        assert_eq!(s.pos(), 4);
        assert_err!(
            s.forward(&[0]),
            Error::KvCacheFull {
                capacity: 4,
                needed: 5
            }
        );
        assert_eq!(s.pos(), 4);
        // Reset starts over and reproduces the first run.
        s.reset();
        assert_eq!(s.pos(), 0);
        let again = s.forward(&[1, 2, 3]).unwrap();
        assert_eq!(again, &first[..]);
    });
}

// ---------------------------------------------------------------------------
// Mutation fuzzing.

/// Everything a caller might do with untrusted bytes. Errors are fine;
/// returns how far it got (0 parse failed, 1 parsed, 2 loaded, 3 ran).
fn exercise(bytes: &[u8]) -> u32 {
    let Ok(g) = Gguf::parse(bytes) else {
        return 0;
    };
    // Walk every accessor: a parsed file must be fully readable.
    assert_eq!(g.metadata().count() as u64, g.n_metadata, "metadata walk");
    assert_eq!(g.metadata_raw().count() as u64, g.n_metadata, "raw walk");
    assert_eq!(g.tensors().count() as u64, g.n_tensors, "tensor walk");
    for (k, v) in g.metadata() {
        let _ = g.get(k);
        if let Value::Array(a) = v {
            let n = a.iter().count() as u64;
            assert_eq!(n, a.len(), "array {k}");
            let _ = a.get(0);
            let _ = a.get(a.len().saturating_sub(1));
            let _ = a.get(a.len());
        }
    }
    for t in g.tensors() {
        let _ = g.tensor(t.name);
        let _ = t.n_elements();
    }
    let _ = g.data();

    let Ok(model) = Llama::from_gguf(&g) else {
        return 1;
    };
    let Ok(plan) = MemoryPlan::new(&model.config, 3, 2) else {
        return 2;
    };
    let mut arena = plan.alloc();
    let Ok(mut s) = Session::new(&model, Kernels::scalar(), plan, &mut arena) else {
        return 2;
    };
    match s.forward(&[0]) {
        Ok(l) => assert_eq!(l.len(), model.config.vocab_size),
        Err(_) => return 2,
    }
    let _ = s.forward(&[1, 2]);
    let _ = s.forward(&[3]);
    3
}

/// Values at and around the reader's limits, for 4- and 8-byte fields.
const EDGES: [u64; 18] = [
    0,
    1,
    2,
    3,
    31,
    32,
    33,
    64,
    0xff,
    limits::MAX_TENSORS,
    limits::MAX_TENSORS + 1,
    limits::MAX_STRING,
    limits::MAX_STRING + 1,
    1 << 32,
    limits::MAX_ELEMENTS,
    i64::MAX as u64,
    u64::MAX - 31,
    u64::MAX,
];

#[test]
fn mutations_never_panic() {
    let base = Spec::tiny().build();
    let data_start = Gguf::parse(Aligned::new(&base).bytes()).unwrap().data_start as usize;
    let mut buf = Aligned::new(&base);
    let mut rng = XorShift::new(0x0e3b_e700);
    let mut reached = [0u32; 4];
    const ITERS: u32 = 20_000;
    for iter in 0..ITERS {
        let mut undo = Vec::new();
        let n_mut = 1 + rng.below(4);
        for _ in 0..n_mut {
            // Mostly the header, where the structure is; sometimes the data.
            let pos = if rng.below(4) == 0 {
                rng.below(base.len() as u64)
            } else {
                rng.below(data_start as u64)
            } as usize;
            let old = buf.get(pos);
            // A third of the time, overwrite a 4- or 8-byte field with a
            // number that sits on or next to a boundary the reader checks.
            if rng.below(3) == 0 {
                let v = EDGES[rng.below(EDGES.len() as u64) as usize].to_le_bytes();
                let width = if rng.below(2) == 0 { 8 } else { 4 };
                for (k, &byte) in v.iter().enumerate().take(width) {
                    if pos + k < base.len() {
                        undo.push((pos + k, buf.get(pos + k)));
                        buf.set(pos + k, byte);
                    }
                }
                continue;
            }
            let new = match rng.below(5) {
                0 => old ^ (1 << rng.below(8)),
                1 => 0,
                2 => 0xff,
                3 => old.wrapping_add(1),
                _ => rng.next() as u8,
            };
            undo.push((pos, old));
            buf.set(pos, new);
        }
        let cut = if rng.below(8) == 0 {
            rng.below(base.len() as u64) as usize
        } else {
            base.len()
        };
        let bytes = &buf.bytes()[..cut];
        let got = catch_unwind(AssertUnwindSafe(|| exercise(bytes)));
        match got {
            Ok(level) => reached[level as usize] += 1,
            Err(_) => {
                let muts: Vec<(usize, u8, u8)> =
                    undo.iter().map(|&(p, old)| (p, old, buf.get(p))).collect();
                panic!(
                    "panic at iteration {iter}: mutations (pos, old, new) {muts:?}, \
                     length {cut} of {}",
                    base.len()
                );
            }
        }
        for &(p, old) in undo.iter().rev() {
            buf.set(p, old);
        }
    }
    assert_eq!(buf.bytes(), &base[..], "undo restored the file");
    println!("mutation outcomes [parse error, parsed, loaded, ran]: {reached:?}");
    // The loop must reach every stage, or it tests less than it claims.
    // (A file that loads always runs, so "loaded" alone may stay at zero.)
    assert!(
        reached[0] > 0 && reached[1] > 0 && reached[3] > 0,
        "{reached:?}"
    );
    assert_eq!(reached.iter().sum::<u32>(), ITERS);
}

/// The tiny model as a file of family `arch`: its keys carry the family's
/// prefix, and it has the family's own tensors (QK-norms, post-norms and a
/// window for Gemma 3, biases for Qwen2, fused matrices for Phi-3).
fn family(arch: Arch) -> Spec {
    let mut s = Spec::tiny();
    let name = arch.name();
    for (k, _) in s.meta.iter_mut() {
        if let Some(rest) = k.strip_prefix("llama.") {
            *k = format!("{name}.{rest}");
        }
    }
    s.set("general.architecture", MetaVal::Str(name.into()));
    for l in 0..N_LAYERS {
        let p = |t: &str| format!("blk.{l}.{t}");
        match arch {
            Arch::Qwen2 => {
                s.add(&p("attn_q.bias"), &[DIM], F32);
                s.add(&p("attn_k.bias"), &[KV_DIM], F32);
                s.add(&p("attn_v.bias"), &[KV_DIM], F32);
            }
            Arch::Qwen3 | Arch::Gemma3 => {
                s.add(&p("attn_q_norm.weight"), &[HEAD_DIM], F32);
                s.add(&p("attn_k_norm.weight"), &[HEAD_DIM], F32);
                if arch == Arch::Gemma3 {
                    s.add(&p("post_attention_norm.weight"), &[DIM], F32);
                    s.add(&p("post_ffw_norm.weight"), &[DIM], F32);
                }
            }
            Arch::Phi3 => {
                for t in ["attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up"] {
                    s.remove_tensor(&p(&format!("{t}.weight")));
                }
                s.add(&p("attn_qkv.weight"), &[DIM, DIM + 2 * KV_DIM], Q8_0);
                s.add(&p("ffn_up.weight"), &[DIM, 2 * FFN], Q8_0);
            }
            _ => {}
        }
    }
    if arch == Arch::Gemma3 {
        s.set("gemma3.attention.sliding_window", MetaVal::U32(16));
    }
    s
}

/// Every family loads and runs; its bad hyper-parameters and tensors are
/// one error naming the key or tensor, never a panic.
#[test]
fn families_load_and_refuse_bad_input() {
    for arch in Arch::ALL {
        let s = family(arch);
        let bytes = s.aligned();
        let g = Gguf::parse(bytes.bytes()).unwrap();
        let m = Llama::from_gguf(&g).unwrap_or_else(|e| panic!("{}: {e}", arch.name()));
        assert_eq!(m.config.arch, arch);
        let plan = MemoryPlan::new(&m.config, 32, 4).unwrap();
        let mut arena = plan.alloc();
        let mut sess = Session::new(&m, Kernels::detect(), plan, &mut arena).unwrap();
        for t in 0..20u32 {
            let l = sess.forward(&[t % VOCAB as u32]).unwrap();
            assert!(l.iter().all(|v| v.is_finite()), "{}", arch.name());
        }
    }
    let bad = |arch: Arch, key: MetaKey| move |e: &Error| matches!(*e, Error::BadHyperparameter { arch: a, key: k } if a == arch && k == key);
    // Head counts that do not divide, under the family's own prefix.
    let mut s = family(Arch::Qwen3);
    s.set("qwen3.attention.head_count_kv", MetaVal::U32(3));
    let e = load_result(&s).unwrap_err();
    assert!(bad(Arch::Qwen3, MetaKey::HeadCountKv)(&e), "{e:?}");
    assert_eq!(
        e.to_string(),
        "metadata key qwen3.attention.head_count_kv has a wrong type or value, or contradicts another"
    );
    // A key the family needs, missing; a llama key in a gemma3 file does not stand in.
    let mut s = family(Arch::Gemma3);
    s.remove("gemma3.block_count")
        .set("llama.block_count", MetaVal::U32(2));
    let e = load_result(&s).unwrap_err();
    assert_eq!(
        e,
        Error::MissingHyperparameter {
            arch: Arch::Gemma3,
            key: MetaKey::BlockCount
        }
    );
    assert_eq!(e.to_string(), "missing metadata key gemma3.block_count");
    // A window larger than the context.
    let mut s = family(Arch::Gemma3);
    s.set("gemma3.attention.sliding_window", MetaVal::U32(129));
    let e = load_result(&s).unwrap_err();
    assert!(bad(Arch::Gemma3, MetaKey::SlidingWindow)(&e), "{e:?}");
    // Value heads of another width than key heads; an unknown RoPE scaling.
    let mut s = family(Arch::Qwen2);
    s.set(
        "qwen2.attention.value_length",
        MetaVal::U32(HEAD_DIM as u32 * 2),
    );
    assert!(bad(Arch::Qwen2, MetaKey::ValueLength)(
        &load_result(&s).unwrap_err()
    ));
    let mut s = family(Arch::Llama);
    s.set("llama.rope.scaling.type", MetaVal::Str("yarn".into()));
    assert!(bad(Arch::Llama, MetaKey::RopeScalingType)(
        &load_result(&s).unwrap_err()
    ));
    // A window pattern of the wrong length.
    let mut s = family(Arch::Gemma3);
    s.set(
        "gemma3.attention.sliding_window_pattern",
        MetaVal::I32Arr(vec![1; 3]),
    );
    assert!(bad(Arch::Gemma3, MetaKey::SlidingWindowPattern)(
        &load_result(&s).unwrap_err()
    ));
    // A fused tensor of the wrong size.
    let mut s = family(Arch::Phi3);
    s.tensor("blk.1.attn_qkv.weight").dims = vec![DIM, DIM + KV_DIM];
    assert_err!(
        load_result(&s),
        Error::WrongShape {
            kind: TensorKind::AttnQkv,
            layer: 1,
            ..
        }
    );
    let mut s = family(Arch::Phi3);
    s.tensor("blk.0.ffn_up.weight").dims = vec![DIM, FFN];
    assert_err!(
        load_result(&s),
        Error::WrongShape {
            kind: TensorKind::FfnUp,
            layer: 0,
            ..
        }
    );
    // A family's required tensor missing, or of the wrong length.
    let mut s = family(Arch::Gemma3);
    s.remove_tensor("blk.1.post_ffw_norm.weight");
    assert_err!(
        load_result(&s),
        Error::MissingTensor {
            kind: TensorKind::FfnPostNorm,
            layer: 1
        }
    );
    assert_eq!(
        load_result(&s).unwrap_err().to_string(),
        "missing tensor blk.1.post_ffw_norm.weight"
    );
    let mut s = family(Arch::Qwen2);
    s.tensor("blk.0.attn_k.bias").dims = vec![KV_DIM + 1];
    assert_err!(
        load_result(&s),
        Error::WrongShape {
            kind: TensorKind::AttnKBias,
            layer: 0,
            ..
        }
    );
}
