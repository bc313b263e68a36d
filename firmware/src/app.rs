//! What every image does: load a model from bytes, generate, print ids.

use core::fmt::Write as _;

use ember_core::gguf::Gguf;
use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan, Session};
use ember_core::parallel::Parallel;
use ember_core::quant::{q8_0::pack_rows_x4, BlockQ8_0, BlockQ8_0x4, GgmlType};
use ember_core::sampling::{Candidate, Sampler, SamplerConfig};
use ember_core::tokenizer::{EncodeOptions, StreamDecoder, Tokenizer};
use ember_core::{Error, KvOptions};

use crate::arena::{Carver, NoRoom};
use crate::{code, exit, mark};

/// The most ids one run prints.
pub const MAX_IDS: usize = 64;

/// Ends the image with a defmt error line and exit code 1 when the core
/// reports an error, or when a static buffer is too small.
pub trait OrExit<T> {
    fn or_exit(self, what: &str) -> T;
}

impl<T> OrExit<T> for Result<T, Error> {
    fn or_exit(self, what: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => {
                defmt::error!("{=str}: {}", what, e);
                exit(code::CORE_ERROR)
            }
        }
    }
}

impl<T> OrExit<T> for Result<T, NoRoom> {
    fn or_exit(self, what: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => {
                defmt::error!(
                    "{=str}: the static buffer is too small: {=usize} bytes needed, {=usize} left",
                    what,
                    e.needed,
                    e.left
                );
                exit(code::CORE_ERROR)
            }
        }
    }
}

/// A parsed model with its tokenizer, over static memory.
pub struct Loaded<'a> {
    pub model: &'a mut Llama<'a>,
    pub tokenizer: Tokenizer<'a>,
}

/// Parses and validates `bytes` (GGUF) into `gguf` and `model` and builds
/// the tokenizer's index in `mem`. Every failure is a defmt error line and exit code 1.
pub fn load<'a>(
    bytes: &'a [u8],
    gguf: &'a mut Option<Gguf<'a>>,
    model: &'a mut Option<Llama<'a>>,
    mem: &mut Carver<'a>,
) -> Loaded<'a> {
    let g = gguf.insert(Gguf::parse(bytes).or_exit("reading the GGUF"));
    // Built in the caller's slot: the model's layer table is 34 KB, and
    // moving it out of `Result`s kept three copies on this frame's stack.
    let model = Llama::load_into(g, model).or_exit("loading the model");
    let words = Tokenizer::index_words(g).or_exit("sizing the tokenizer");
    let index = mem.take::<u32>(words).or_exit("the tokenizer index");
    let tokenizer = Tokenizer::new(g, index).or_exit("building the tokenizer");
    let c = &model.config;
    defmt::info!(
        "model: {=usize} bytes, dim {=usize}, {=usize} layers, {=usize}/{=usize} heads, ffn {=usize}, vocab {=usize}",
        bytes.len(),
        c.dim,
        c.n_layers,
        c.n_heads,
        c.n_kv_heads,
        c.ffn_dim,
        c.vocab_size
    );
    Loaded { model, tokenizer }
}

/// Where `kernels` has a four-row int8 kernel (the Cortex-M DSP table),
/// copies every Q8_0 matrix's whole groups of four rows, interleaved
/// ([`BlockQ8_0x4`]), into packs cut from `mem`, and points the model at
/// them: the same numbers at about 1.33 instructions per multiply-accumulate
/// instead of 1.50. The packs are as large as the Q8_0 matrices, so a board
/// without that much RAM goes on without them (an info line says so).
/// Returns the bytes packed.
pub fn pack<'a>(l: &mut Loaded<'a>, kernels: &Kernels, mem: &mut Carver<'a>) -> usize {
    if kernels.int8.and_then(|k| k.q8_0x4).is_none() {
        return 0;
    }
    let mut blocks = 0usize;
    let _ = l.model.weights.visit_matrices(|m| {
        blocks = blocks.saturating_add(m.packed4_len());
        Ok::<(), ()>(())
    });
    let bytes = blocks.saturating_mul(core::mem::size_of::<BlockQ8_0x4>());
    // The first pack may need up to 3 bytes of padding to its 4-byte
    // alignment; the rest follow whole (136-byte blocks).
    if bytes == 0 || bytes.saturating_add(3) > mem.left() {
        defmt::info!(
            "weights not packed in fours: {=usize} bytes needed, {=usize} left",
            bytes,
            mem.left()
        );
        return 0;
    }
    l.model
        .weights
        .visit_matrices(|m| {
            let n = m.packed4_len();
            if let (Some(d), true) = (m.data.as_blocks::<BlockQ8_0>(GgmlType::Q8_0), n > 0) {
                let p = mem.take::<BlockQ8_0x4>(n).or_exit("the packed weights");
                pack_rows_x4(d, m.row_blocks(), p);
                *m = m.with_packed4(p)?;
            }
            Ok::<(), Error>(())
        })
        .or_exit("packing the weights");
    defmt::info!("weights packed in fours: {=usize} bytes", bytes);
    bytes
}

/// One generation's settings; the cache and batch are the [`Buffers`]' plan.
#[derive(Clone, Copy)]
pub struct Spec<'p> {
    pub kernels: Kernels,
    pub prompt: &'p [u32],
    pub n_predict: usize,
    pub sampling: SamplerConfig,
}

/// Static buffers for generation, cut from an arena by [`Buffers::new`].
pub struct Buffers<'a> {
    pub arena: &'a mut [f32],
    pub candidates: &'a mut [Candidate],
    pub plan: MemoryPlan,
}

impl<'a> Buffers<'a> {
    /// The session memory the core's plan asks for, and the sampler's scratch.
    pub fn new(model: &Llama, kv: KvOptions, batch: usize, mem: &mut Carver<'a>) -> Buffers<'a> {
        Self::with_threads(model, kv, batch, 1, mem)
    }

    /// As [`Buffers::new`], with matmul and attention scratch for `threads`
    /// workers ([`MemoryPlan::with_threads`]).
    pub fn with_threads(
        model: &Llama,
        kv: KvOptions,
        batch: usize,
        threads: usize,
        mem: &mut Carver<'a>,
    ) -> Buffers<'a> {
        // No packed matrices here, so no batch of activation blocks for them.
        let plan = MemoryPlan::with_threads(&model.config, kv, batch, threads)
            .and_then(|p| p.without_packed_prefill(&model.config))
            .or_exit("planning memory");
        defmt::info!(
            "memory plan: {=usize} bytes ({=usize} of KV cache), sampler {=usize} bytes",
            plan.bytes(),
            plan.kv_bytes(),
            Sampler::scratch_len(model.config.vocab_size) * core::mem::size_of::<Candidate>()
        );
        let arena = mem.take::<f32>(plan.f32_len()).or_exit("the session arena");
        let candidates = mem
            .take::<Candidate>(Sampler::scratch_len(model.config.vocab_size))
            .or_exit("the sampler scratch");
        Buffers {
            arena,
            candidates,
            plan,
        }
    }
}

/// Generates like `ember run --prompt-ids … -n N`: the prompt in chunks of
/// `batch`, then one token at a time, stopping after an end-of-generation
/// id. Marks (for the instruction-count plugin) go before the prompt, after
/// it, and after the last decode step.
pub fn generate(
    l: &Loaded,
    spec: &Spec,
    bufs: &mut Buffers,
) -> Result<heapless::Vec<u32, MAX_IDS>, Error> {
    generate_on(l, spec, bufs, None)
}

/// As [`generate`], each step split over `par`'s workers when given (the
/// plan must have scratch for them: [`Buffers::with_threads`]).
pub fn generate_on(
    l: &Loaded,
    spec: &Spec,
    bufs: &mut Buffers,
    par: Option<&dyn Parallel>,
) -> Result<heapless::Vec<u32, MAX_IDS>, Error> {
    let mut sampler = Sampler::new(spec.sampling)?;
    let mut s = Session::new(l.model, spec.kernels, bufs.plan, bufs.arena)?;
    if let Some(par) = par {
        s.set_parallel(par)?;
    }
    s.reserve(spec.prompt.len() + spec.n_predict.saturating_sub(1))?;
    let n_predict = spec.n_predict.min(MAX_IDS);
    mark();
    s.forward(spec.prompt)?;
    mark();
    for &id in spec.prompt {
        sampler.accept(id);
    }
    let mut ids = heapless::Vec::new();
    for i in 0..n_predict {
        let next = sampler.sample(s.logits(), bufs.candidates)?;
        sampler.accept(next);
        let _ = ids.push(next);
        if l.tokenizer.is_eog(next) || i + 1 == n_predict {
            break;
        }
        s.forward(&[next])?;
    }
    mark();
    Ok(ids)
}

/// Ids as `a,b,c`.
pub fn id_list(ids: &[u32]) -> heapless::String<{ MAX_IDS * 11 }> {
    let mut s = heapless::String::new();
    for (i, id) in ids.iter().enumerate() {
        let _ = write!(s, "{}{}", if i > 0 { "," } else { "" }, id);
    }
    s
}

/// Tokenizes `text` (with BOS when the model asks for it) into `out`.
pub fn tokenize<'o>(l: &Loaded, text: &str, mem: &mut Carver, out: &'o mut [u32]) -> &'o [u32] {
    let scratch = mem
        .take::<u32>(Tokenizer::scratch_words(text.len()))
        .or_exit("the tokenizer scratch");
    let opt = EncodeOptions {
        add_special: true,
        parse_special: false,
    };
    let n = l
        .tokenizer
        .encode_into(text, opt, scratch, out)
        .or_exit("tokenizing the prompt");
    &out[..n]
}

/// Prints `text=…` for `ids`, decoded as a stream (multi-byte characters
/// whole), in pieces of at most 256 bytes.
pub fn print_text(l: &Loaded, ids: &[u32]) {
    let mut text: heapless::String<256> = heapless::String::new();
    let mut sink = |piece: &str| {
        for ch in piece.chars() {
            let _ = text.push(ch);
        }
    };
    let mut dec = StreamDecoder::new(&l.tokenizer, false, true);
    for &id in ids {
        dec.push(&l.tokenizer, id, &mut sink).or_exit("decoding");
    }
    dec.finish(&mut sink);
    defmt::println!("text={=str}", text.as_str());
}

/// The closing stats line.
pub fn print_stats(plan: &MemoryPlan, arena_used: usize) {
    let (peak, size) = crate::stack::peak();
    defmt::println!(
        "stats: stack_peak={=usize} stack_size={=usize} plan_bytes={=usize} static_arena_used={=usize} heap=none",
        peak,
        size,
        plan.bytes(),
        arena_used
    );
}
