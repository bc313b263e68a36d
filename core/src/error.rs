//! The one error type of the core: small, `Copy`, no strings.
//!
//! Variants carry the numbers that locate a problem (byte offsets, tensor
//! indices, expected and found values) so a caller can print a precise message
//! without the core owning any text beyond static names.

#![forbid(unsafe_code)]

use core::fmt;

use crate::arch::Arch;
use crate::ggml_type::GgmlType;

/// Everything that can go wrong in the core.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Error {
    /// The input ended before a field that starts at `offset` and needs `needed` bytes.
    Truncated { offset: u64, needed: u64 },
    /// The first four bytes are not `GGUF`.
    BadMagic { found: u32 },
    /// GGUF versions 2 and 3 are read; this file has another.
    UnsupportedVersion { found: u32 },
    /// A count or length in the file is over one of the named caps in [`Cap`].
    CapExceeded { what: Cap, found: u64, cap: u64 },
    /// A string (key, value or tensor name) at `offset` is not valid UTF-8.
    InvalidUtf8 { offset: u64 },
    /// A metadata value type id that GGUF does not define.
    UnknownValueType { offset: u64, found: u32 },
    /// `general.alignment` is zero, not a power of two, or over the cap.
    BadAlignment { found: u64 },
    /// Tensor `tensor` has a ggml type id this reader does not know.
    UnknownTensorType { tensor: u32, found: u32 },
    /// Tensor `tensor` has a zero dimension, or a row length that is not a
    /// whole number of its type's blocks.
    BadTensorShape { tensor: u32 },
    /// The element or byte count of tensor `tensor` overflows 64 bits.
    DimensionOverflow { tensor: u32 },
    /// Tensor `tensor`'s data offset is not a multiple of the file's alignment.
    MisalignedTensor { tensor: u32, offset: u64 },
    /// Tensor `tensor`'s data ends at `end`, past the data section (`data_len` bytes).
    TensorOutOfBounds {
        tensor: u32,
        end: u64,
        data_len: u64,
    },
    /// Two tensors share a name; the second is `tensor`.
    DuplicateTensor { tensor: u32 },
    /// A slice handed to a typed view is not aligned for its element type.
    MisalignedData { align: u32 },
    /// A required metadata key is missing.
    MissingMetadata { key: MetaKey },
    /// A metadata key holds a value of the wrong type or out of range.
    BadMetadata { key: MetaKey },
    /// A family's required hyper-parameter (`{arch}.{key}`) is missing.
    MissingHyperparameter { arch: Arch, key: MetaKey },
    /// A family's hyper-parameter (`{arch}.{key}`) has a wrong type, is out
    /// of range or contradicts another.
    BadHyperparameter { arch: Arch, key: MetaKey },
    /// `general.architecture` names a model family this core does not run.
    UnsupportedArchitecture,
    /// A required tensor is absent.
    MissingTensor { kind: TensorKind, layer: u16 },
    /// A tensor's dimensions differ from those the config implies.
    WrongShape {
        kind: TensorKind,
        layer: u16,
        expected: [u64; 2],
        found: [u64; 2],
    },
    /// A tensor's type cannot be used in its role (e.g. a quantized norm).
    UnsupportedTensorType {
        kind: TensorKind,
        layer: u16,
        ty: GgmlType,
    },
    /// A KV cache of zero positions was asked for.
    KvCapacityZero,
    /// A streaming KV cache needs at least one non-sink position.
    KvWindowZero,
    /// The KV element type cannot hold rows of `kv_dim` (q8_0 needs whole
    /// 32-element blocks per head).
    KvTypeUnsupported { kv_dim: u32 },
    /// A batch size of zero was asked for.
    BatchZero,
    /// The KV cache holds `capacity` positions; this call needs `needed`.
    KvCacheFull { capacity: u32, needed: u64 },
    /// A KV pool has `free` blocks; growing a cache needs `needed`.
    KvPoolFull { needed: u32, free: u32 },
    /// A paged KV cache was used without its pool, or with another pool's
    /// shape (or a dense one where a paged one is needed).
    KvPaged,
    /// A caller buffer holds `found` elements; `needed` are required.
    BufferTooSmall { needed: u64, found: u64 },
    /// A token id is not below the vocabulary size.
    TokenOutOfRange { token: u32, vocab: u32 },
    /// An empty token list was given where at least one token is needed.
    EmptyInput,
    /// An operation's input lengths disagree (`expected` vs `found` elements).
    LengthMismatch { expected: u64, found: u64 },
    /// `tokenizer.ggml.model` names a tokenizer this core does not implement
    /// (it reads `gpt2` byte-level BPE and `llama` SentencePiece BPE).
    UnsupportedTokenizer,
    /// `tokenizer.ggml.pre` names pre-tokenizer rules this core does not know.
    UnknownPreTokenizer,
    /// A piece of text has no token and the vocabulary has no byte or unknown
    /// token to stand for it.
    Untokenizable { byte: u8 },
    /// A sampling parameter is out of its range (see [`SamplerParam`]).
    InvalidSamplerParam { param: SamplerParam },
    /// Every logit is NaN or negative infinity: there is nothing to sample.
    NoCandidate,
    /// A grammar's text is malformed at byte `at` (see [`GrammarFault`]).
    Grammar { fault: GrammarFault, at: u32 },
    /// The grammar cannot take token `token` at this point.
    GrammarRejected { token: u32 },
}

/// What is wrong with a grammar, named for errors.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum GrammarFault {
    /// Text the GBNF syntax does not allow.
    Syntax,
    /// A reference to a rule that is never defined.
    UndefinedRule,
    /// No rule named `root`.
    NoRoot,
    /// A rule defined twice.
    DuplicateRule,
    /// A rule that can reach itself again before consuming a character.
    LeftRecursion,
    /// A repetition count over the cap (`{m,n}` with n above 4095).
    RepetitionTooLarge,
    /// A code point above U+10FFFF, or a reversed range.
    BadCharacter,
    /// Matching needs more nested rules or alternatives at once than the
    /// matcher holds (the byte offset is 0).
    TooComplex,
}

impl GrammarFault {
    /// A short lowercase description for messages.
    pub const fn describe(self) -> &'static str {
        match self {
            GrammarFault::Syntax => "syntax error",
            GrammarFault::UndefinedRule => "reference to an undefined rule",
            GrammarFault::NoRoot => "no rule named root",
            GrammarFault::DuplicateRule => "rule defined twice",
            GrammarFault::LeftRecursion => "left recursion",
            GrammarFault::RepetitionTooLarge => "repetition count over 4095",
            GrammarFault::BadCharacter => "code point out of range or reversed range",
            GrammarFault::TooComplex => {
                "more nested rules or open alternatives than the matcher holds"
            }
        }
    }
}

/// The sampling parameters, named for errors.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SamplerParam {
    Temperature,
    TopK,
    TopP,
    MinP,
    RepeatPenalty,
    RepeatLastN,
    FrequencyPenalty,
    PresencePenalty,
}

impl SamplerParam {
    /// The parameter's name and its valid range, for messages.
    pub const fn describe(self) -> &'static str {
        match self {
            SamplerParam::Temperature => "temperature must be a finite number >= 0",
            SamplerParam::TopK => "top-k must be at least 1",
            SamplerParam::TopP => "top-p must be in [0, 1]",
            SamplerParam::MinP => "min-p must be a finite number >= 0",
            SamplerParam::RepeatPenalty => "repeat penalty must be a finite number > 0",
            SamplerParam::RepeatLastN => "the penalty window is longer than the sampler holds",
            SamplerParam::FrequencyPenalty => "frequency penalty must be finite",
            SamplerParam::PresencePenalty => "presence penalty must be finite",
        }
    }
}

/// The named caps that untrusted counts are checked against before use.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Cap {
    Tensors,
    MetadataKeys,
    StringLength,
    ArrayLength,
    ArrayNesting,
    TensorDims,
    TensorElements,
    Layers,
    Heads,
    Dimension,
    Vocabulary,
    KvCapacity,
    Batch,
    VocabularyBytes,
    Merges,
    Threads,
    Sequences,
}

impl Cap {
    /// A short lowercase name for messages.
    pub const fn name(self) -> &'static str {
        match self {
            Cap::Tensors => "tensor count",
            Cap::MetadataKeys => "metadata key count",
            Cap::StringLength => "string length",
            Cap::ArrayLength => "array length",
            Cap::ArrayNesting => "array nesting depth",
            Cap::TensorDims => "tensor dimension count",
            Cap::TensorElements => "tensor element count",
            Cap::Layers => "layer count",
            Cap::Heads => "head count",
            Cap::Dimension => "model dimension",
            Cap::Vocabulary => "vocabulary size",
            Cap::KvCapacity => "KV cache capacity",
            Cap::Batch => "batch size",
            Cap::Sequences => "sequences per step",
            Cap::Threads => "worker thread count",
            Cap::VocabularyBytes => "vocabulary text size",
            Cap::Merges => "BPE merge count",
        }
    }
}

/// The metadata keys the model reads, named without allocating.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MetaKey {
    Architecture,
    Alignment,
    BlockCount,
    EmbeddingLength,
    FeedForwardLength,
    HeadCount,
    HeadCountKv,
    KeyLength,
    ContextLength,
    RopeFreqBase,
    RopeDimensionCount,
    RmsEpsilon,
    VocabSize,
    ValueLength,
    SlidingWindow,
    SlidingWindowPattern,
    RopeFreqBaseSwa,
    RopeScalingType,
    RopeScalingFactor,
    FinalLogitSoftcapping,
    TokenizerModel,
    TokenizerPre,
    TokenizerTokens,
    TokenizerTokenType,
    TokenizerScores,
    TokenizerMerges,
    BosTokenId,
    EosTokenId,
    EotTokenId,
    EomTokenId,
    UnknownTokenId,
    AddBosToken,
    AddEosToken,
    AddSpacePrefix,
}

impl MetaKey {
    /// A family's key after its `{arch}.` prefix (`None`: a key of its own,
    /// such as `general.*` or `tokenizer.*`).
    pub const fn suffix(self) -> Option<&'static str> {
        Some(match self {
            MetaKey::BlockCount => "block_count",
            MetaKey::EmbeddingLength => "embedding_length",
            MetaKey::FeedForwardLength => "feed_forward_length",
            MetaKey::HeadCount => "attention.head_count",
            MetaKey::HeadCountKv => "attention.head_count_kv",
            MetaKey::KeyLength => "attention.key_length",
            MetaKey::ValueLength => "attention.value_length",
            MetaKey::ContextLength => "context_length",
            MetaKey::RopeFreqBase => "rope.freq_base",
            MetaKey::RopeDimensionCount => "rope.dimension_count",
            MetaKey::RmsEpsilon => "attention.layer_norm_rms_epsilon",
            MetaKey::VocabSize => "vocab_size",
            MetaKey::SlidingWindow => "attention.sliding_window",
            MetaKey::SlidingWindowPattern => "attention.sliding_window_pattern",
            MetaKey::RopeFreqBaseSwa => "rope.freq_base_swa",
            MetaKey::RopeScalingType => "rope.scaling.type",
            MetaKey::RopeScalingFactor => "rope.scaling.factor",
            MetaKey::FinalLogitSoftcapping => "final_logit_softcapping",
            _ => return None,
        })
    }

    /// The key as family `arch` spells it: `{arch}.{suffix}`, or the key
    /// itself when it has no prefix.
    pub fn key(self, arch: Arch) -> heapless::String<64> {
        let mut s = heapless::String::new();
        // Names are short: the buffer always holds them.
        let _ = fmt::Write::write_fmt(&mut s, format_args!("{}", KeyName(arch, self)));
        s
    }

    /// The GGUF key (a family's key spelled as `llama` spells it).
    pub const fn as_str(self) -> &'static str {
        match self {
            MetaKey::ValueLength => "llama.attention.value_length",
            MetaKey::SlidingWindow => "llama.attention.sliding_window",
            MetaKey::SlidingWindowPattern => "llama.attention.sliding_window_pattern",
            MetaKey::RopeFreqBaseSwa => "llama.rope.freq_base_swa",
            MetaKey::RopeScalingType => "llama.rope.scaling.type",
            MetaKey::RopeScalingFactor => "llama.rope.scaling.factor",
            MetaKey::FinalLogitSoftcapping => "llama.final_logit_softcapping",
            MetaKey::Architecture => "general.architecture",
            MetaKey::Alignment => "general.alignment",
            MetaKey::BlockCount => "llama.block_count",
            MetaKey::EmbeddingLength => "llama.embedding_length",
            MetaKey::FeedForwardLength => "llama.feed_forward_length",
            MetaKey::HeadCount => "llama.attention.head_count",
            MetaKey::HeadCountKv => "llama.attention.head_count_kv",
            MetaKey::KeyLength => "llama.attention.key_length",
            MetaKey::ContextLength => "llama.context_length",
            MetaKey::RopeFreqBase => "llama.rope.freq_base",
            MetaKey::RopeDimensionCount => "llama.rope.dimension_count",
            MetaKey::RmsEpsilon => "llama.attention.layer_norm_rms_epsilon",
            MetaKey::VocabSize => "llama.vocab_size",
            MetaKey::TokenizerModel => "tokenizer.ggml.model",
            MetaKey::TokenizerPre => "tokenizer.ggml.pre",
            MetaKey::TokenizerTokens => "tokenizer.ggml.tokens",
            MetaKey::TokenizerTokenType => "tokenizer.ggml.token_type",
            MetaKey::TokenizerScores => "tokenizer.ggml.scores",
            MetaKey::TokenizerMerges => "tokenizer.ggml.merges",
            MetaKey::BosTokenId => "tokenizer.ggml.bos_token_id",
            MetaKey::EosTokenId => "tokenizer.ggml.eos_token_id",
            MetaKey::EotTokenId => "tokenizer.ggml.eot_token_id",
            MetaKey::EomTokenId => "tokenizer.ggml.eom_token_id",
            MetaKey::UnknownTokenId => "tokenizer.ggml.unknown_token_id",
            MetaKey::AddBosToken => "tokenizer.ggml.add_bos_token",
            MetaKey::AddEosToken => "tokenizer.ggml.add_eos_token",
            MetaKey::AddSpacePrefix => "tokenizer.ggml.add_space_prefix",
        }
    }
}

/// `{arch}.{suffix}`, or the key itself when it has no family prefix.
struct KeyName(Arch, MetaKey);

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1.suffix() {
            Some(s) => write!(f, "{}.{s}", self.0.name()),
            None => f.write_str(self.1.as_str()),
        }
    }
}

/// The role of a weight tensor in the llama graph; names follow GGUF.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TensorKind {
    TokenEmbd,
    OutputNorm,
    Output,
    AttnNorm,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    FfnNorm,
    FfnGate,
    FfnUp,
    FfnDown,
    AttnQNorm,
    AttnKNorm,
    AttnPostNorm,
    FfnPostNorm,
    /// Q, K and V in one matrix (Phi-3).
    AttnQkv,
    AttnQBias,
    AttnKBias,
    AttnVBias,
    AttnQkvBias,
    /// Llama 3's per-pair RoPE frequency divisors.
    RopeFreqs,
    /// Phi-3's RoPE frequency divisors for the trained context.
    RopeFactorsShort,
}

impl TensorKind {
    /// The GGUF tensor name, without the `blk.N.` prefix and `.weight` suffix.
    pub const fn as_str(self) -> &'static str {
        match self {
            TensorKind::TokenEmbd => "token_embd",
            TensorKind::OutputNorm => "output_norm",
            TensorKind::Output => "output",
            TensorKind::AttnNorm => "attn_norm",
            TensorKind::AttnQ => "attn_q",
            TensorKind::AttnK => "attn_k",
            TensorKind::AttnV => "attn_v",
            TensorKind::AttnOutput => "attn_output",
            TensorKind::FfnNorm => "ffn_norm",
            TensorKind::FfnGate => "ffn_gate",
            TensorKind::FfnUp => "ffn_up",
            TensorKind::FfnDown => "ffn_down",
            TensorKind::AttnQNorm => "attn_q_norm",
            TensorKind::AttnKNorm => "attn_k_norm",
            TensorKind::AttnPostNorm => "post_attention_norm",
            TensorKind::FfnPostNorm => "post_ffw_norm",
            TensorKind::AttnQkv | TensorKind::AttnQkvBias => "attn_qkv",
            TensorKind::AttnQBias => "attn_q",
            TensorKind::AttnKBias => "attn_k",
            TensorKind::AttnVBias => "attn_v",
            TensorKind::RopeFreqs => "rope_freqs",
            TensorKind::RopeFactorsShort => "rope_factors_short",
        }
    }

    /// `weight` or `bias`: the name's last part.
    pub const fn suffix(self) -> &'static str {
        match self {
            TensorKind::AttnQBias
            | TensorKind::AttnKBias
            | TensorKind::AttnVBias
            | TensorKind::AttnQkvBias => "bias",
            _ => "weight",
        }
    }

    /// Whether the tensor lives in a `blk.N.` layer.
    pub const fn per_layer(self) -> bool {
        !matches!(
            self,
            TensorKind::TokenEmbd
                | TensorKind::OutputNorm
                | TensorKind::Output
                | TensorKind::RopeFreqs
                | TensorKind::RopeFactorsShort
        )
    }
}

/// Writes `blk.{layer}.{kind}.weight` (or `{kind}.weight` for global tensors).
struct TensorName(TensorKind, u16);

impl fmt::Display for TensorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, suffix) = (self.0.as_str(), self.0.suffix());
        if self.0.per_layer() {
            write!(f, "blk.{}.{name}.{suffix}", self.1)
        } else {
            write!(f, "{name}.{suffix}")
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Truncated { offset, needed } => write!(
                f,
                "file truncated: {needed} bytes needed at offset {offset} run past the end"
            ),
            Error::BadMagic { found } => {
                write!(f, "not a GGUF file (magic {found:#010x}, expected 0x46554747 \"GGUF\")")
            }
            Error::UnsupportedVersion { found } => {
                write!(f, "unsupported GGUF version {found} (versions 2 and 3 are read)")
            }
            Error::CapExceeded { what, found, cap } => {
                write!(f, "{} {found} is over the limit of {cap}", what.name())
            }
            Error::InvalidUtf8 { offset } => write!(f, "invalid UTF-8 in string at offset {offset}"),
            Error::UnknownValueType { offset, found } => {
                write!(f, "unknown metadata value type {found} at offset {offset}")
            }
            Error::BadAlignment { found } => {
                write!(f, "general.alignment {found} is not a power of two in 1..=65536")
            }
            Error::UnknownTensorType { tensor, found } => {
                write!(f, "tensor #{tensor} has unknown or unsupported ggml type {found}")
            }
            Error::BadTensorShape { tensor } => write!(
                f,
                "tensor #{tensor} has a zero dimension or a row that is not a whole number of blocks"
            ),
            Error::DimensionOverflow { tensor } => {
                write!(f, "tensor #{tensor}'s dimensions overflow")
            }
            Error::MisalignedTensor { tensor, offset } => {
                write!(f, "tensor #{tensor}'s data offset {offset} is not aligned")
            }
            Error::TensorOutOfBounds { tensor, end, data_len } => write!(
                f,
                "tensor #{tensor}'s data ends at {end}, past the {data_len}-byte data section"
            ),
            Error::DuplicateTensor { tensor } => {
                write!(f, "tensor #{tensor} repeats an earlier tensor's name")
            }
            Error::MisalignedData { align } => {
                write!(f, "tensor data is not {align}-byte aligned in memory")
            }
            Error::MissingMetadata { key } => write!(f, "missing metadata key {}", key.as_str()),
            Error::BadMetadata { key } => {
                write!(f, "metadata key {} has a wrong type or value", key.as_str())
            }
            Error::MissingHyperparameter { arch, key } => {
                write!(f, "missing metadata key {}", KeyName(arch, key))
            }
            Error::BadHyperparameter { arch, key } => write!(
                f,
                "metadata key {} has a wrong type or value, or contradicts another",
                KeyName(arch, key)
            ),
            Error::UnsupportedArchitecture => write!(
                f,
                "unsupported general.architecture (these run: llama, qwen2, qwen3, phi3, gemma3)"
            ),
            Error::MissingTensor { kind, layer } => {
                write!(f, "missing tensor {}", TensorName(kind, layer))
            }
            Error::WrongShape { kind, layer, expected, found } => write!(
                f,
                "tensor {} has shape {:?}, expected {:?}",
                TensorName(kind, layer),
                found,
                expected
            ),
            Error::UnsupportedTensorType { kind, layer, ty } => write!(
                f,
                "tensor {} has type {} which cannot be used there",
                TensorName(kind, layer),
                ty.name()
            ),
            Error::KvCapacityZero => write!(f, "KV cache capacity must be at least 1"),
            Error::KvWindowZero => write!(
                f,
                "a streaming KV cache needs a window of at least 1 position besides its sinks"
            ),
            Error::KvTypeUnsupported { kv_dim } => write!(
                f,
                "this KV element type cannot hold rows of {kv_dim} values (q8_0 needs heads of whole 32-value blocks)"
            ),
            Error::BatchZero => write!(f, "batch size must be at least 1"),
            Error::KvCacheFull { capacity, needed } => write!(
                f,
                "KV cache full: {needed} positions needed, capacity is {capacity}"
            ),
            Error::KvPoolFull { needed, free } => write!(
                f,
                "KV pool full: {needed} blocks needed, {free} free"
            ),
            Error::KvPaged => write!(
                f,
                "a paged KV cache needs its own pool (and a dense one its own memory)"
            ),
            Error::BufferTooSmall { needed, found } => {
                write!(f, "buffer too small: {needed} elements needed, {found} given")
            }
            Error::TokenOutOfRange { token, vocab } => {
                write!(f, "token id {token} is out of range (vocabulary size {vocab})")
            }
            Error::EmptyInput => write!(f, "empty input: at least one token is needed"),
            Error::LengthMismatch { expected, found } => {
                write!(f, "length mismatch: expected {expected} elements, found {found}")
            }
            Error::UnsupportedTokenizer => write!(
                f,
                "unsupported tokenizer.ggml.model (gpt2 and llama tokenizers are read)"
            ),
            Error::UnknownPreTokenizer => write!(f, "unknown pre-tokenizer in tokenizer.ggml.pre"),
            Error::InvalidSamplerParam { param } => write!(f, "{}", param.describe()),
            Error::NoCandidate => write!(f, "every logit is NaN or -inf: nothing to sample"),
            Error::Grammar { fault, at } => {
                write!(f, "grammar: {} at byte {at}", fault.describe())
            }
            Error::GrammarRejected { token } => {
                write!(f, "the grammar does not allow token {token} here")
            }
            Error::Untokenizable { byte } => write!(
                f,
                "byte 0x{byte:02x} has no token and the vocabulary has no byte or unknown token"
            ),
        }
    }
}

impl core::error::Error for Error {}

/// The core's result type.
pub type Result<T> = core::result::Result<T, Error>;
