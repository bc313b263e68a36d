//! Argument types shared by several commands: kernels, threads and model
//! memory (`ExecArgs`), the KV cache (`KvArgs`), sampling (`SamplingArgs`),
//! and the defaults behind them (the model path, the context length).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use ember_core::kernels::Kernels;
use ember_core::model::Llama;
use ember_core::sampling::SamplerConfig;
use ember_core::{KvOptions, KvType};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KernelChoice {
    /// The portable scalar reference, end to end.
    Scalar,
    /// The fastest kernels this CPU supports.
    Auto,
    /// x86_64 AVX2 + FMA + F16C (an error where the CPU lacks them).
    Avx2,
    /// AVX2 with AVX-512F prefill tiles (an error where the CPU lacks them).
    Avx512,
    /// AArch64 NEON (an error on other CPUs).
    Neon,
    /// The scalar reference with Q8_0 matrices multiplied by activations
    /// quantized to Q8_0 (ggml's integer dots): what the Cortex-M DSP
    /// firmware computes, bit for bit.
    #[value(name = "scalar-q8")]
    ScalarQ8,
    /// The scalar reference with decode multiplying quantized rows by
    /// activations in 16-bit blocks: what the fast x86 kernels compute.
    #[value(name = "scalar-q16")]
    ScalarQ16,
}

/// How the work runs: kernels, threads, model memory (run, chat,
/// perplexity, bench).
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// Where the forward pass runs: this machine's cores, or a GPU (builds
    /// with the `gpu` feature; the GPU keeps f32 dense KV caches).
    #[arg(long, value_enum, default_value_t = crate::device::Device::Cpu)]
    pub device: crate::device::Device,
    /// Kernel set.
    #[arg(long, value_enum, default_value_t = KernelChoice::Auto)]
    pub kernels: KernelChoice,
    /// Worker threads splitting each step [default: the physical cores].
    #[arg(long, short = 't', value_name = "N")]
    pub threads: Option<usize>,
    /// Use the model file in place through a memory map (zero-copy) instead
    /// of a copy in huge pages (faster decode, one read of the file at start).
    #[arg(long)]
    pub mmap: bool,
    /// Multiply by the file's rows as stored: no interleaved copy of Q8_0
    /// and Q4_1 matrices, and with several threads no copy of the layers'
    /// matrices laid out by worker (saves the copy's memory: the size of
    /// those weights; F16 and F32 layers are copied only with several
    /// threads). Q8_0 decode gives the same bits either way and its prefill
    /// goes back to f32 tiles; Q4_1 decode from the file's rows sums each
    /// row in two chains (within rounding of the copy's reference order).
    #[arg(long)]
    pub no_repack: bool,
}

impl ExecArgs {
    pub fn kernels(&self) -> Result<Kernels> {
        kernels(self.kernels)
    }

    /// The thread count after checks.
    pub fn threads(&self) -> Result<usize> {
        crate::pool::thread_count(self.threads)
    }

    /// Interleaved copies of `model`'s Q8_0 and Q4_1 matrices for `kernels`,
    /// and with several threads the layers' matrices laid out by worker,
    /// unless `--no-repack` (then none).
    pub fn packs(
        &self,
        model: &ember_core::model::Llama,
        kernels: &Kernels,
    ) -> Result<crate::pack::Packs> {
        crate::pack::Packs::build(model, kernels, !self.no_repack, self.threads()?)
    }

    /// The model file's bytes.
    pub fn load(&self, path: &std::path::Path) -> Result<crate::mmap::ModelBytes> {
        crate::mmap::load(path, self.mmap)
    }
}

/// KV element types on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KvTypeArg {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
}

impl From<KvTypeArg> for KvType {
    fn from(t: KvTypeArg) -> KvType {
        match t {
            KvTypeArg::F32 => KvType::F32,
            KvTypeArg::F16 => KvType::F16,
            KvTypeArg::Q8_0 => KvType::Q8_0,
        }
    }
}

/// KV cache flags shared by `run`, `chat` and `perplexity`.
#[derive(Debug, Clone, Args)]
pub struct KvArgs {
    /// KV cache capacity in tokens: sinks + window [default: the model's context
    /// length, at most 8192]. Memory is reserved up front but only touched as
    /// tokens arrive.
    #[arg(long, short = 'c')]
    pub ctx: Option<usize>,
    /// Attention window: once the cache is full, keep the sinks and the latest W
    /// tokens, evicting older ones, so generation can go on for ever in fixed
    /// memory [default: the context minus the sinks].
    #[arg(long, value_name = "W")]
    pub window: Option<usize>,
    /// Attention sinks: the first S tokens stay in the cache for ever
    /// [default: 4, or half the cache if that is smaller].
    #[arg(long, value_name = "S")]
    pub sinks: Option<usize>,
    /// Element type of cached keys and values (f16 halves the memory of f32;
    /// q8_0 takes about a quarter).
    #[arg(long, value_enum, default_value_t = KvTypeArg::F16)]
    pub kv_type: KvTypeArg,
}

impl KvArgs {
    /// The cache for `model`: streaming (sinks + window) or dense (`--ctx` only,
    /// for perplexity's chunks).
    pub fn options(&self, model: &Llama, streaming: bool) -> Result<KvOptions> {
        let capacity = match (self.window, self.ctx) {
            (Some(0), _) => bail!("--window must be at least 1"),
            (Some(w), Some(c)) if c != self.sinks.unwrap_or(4).saturating_add(w) => bail!(
                "--ctx {c} disagrees with --sinks {} + --window {w}; give one or the other",
                self.sinks.unwrap_or(4)
            ),
            (Some(w), _) => self.sinks.unwrap_or(4).saturating_add(w),
            (None, Some(c)) => c,
            (None, None) => context(None, model, MAX_DEFAULT_CTX),
        };
        if capacity == 0 {
            bail!("--ctx must be at least 1");
        }
        let opt = if streaming {
            let sinks = match self.sinks {
                Some(s) if s >= capacity => {
                    bail!("--sinks {s} leaves no room for a window in a {capacity}-token cache")
                }
                Some(s) => s,
                // With --window the cache is 4 + W; from --ctx alone, a small
                // cache keeps at least half of itself for the window.
                None if self.window.is_some() => 4,
                None => 4.min(capacity / 2),
            };
            KvOptions::streaming(sinks, capacity - sinks)
        } else {
            KvOptions::dense(capacity)
        };
        Ok(opt.with_type(self.kv_type.into()))
    }
}

/// Sampling flags shared by `run` and `chat` (defaults as llama.cpp's).
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Temperature; 0 is greedy decoding (ties go to the lowest id).
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    pub temp: f32,
    /// Keep only the K most likely tokens (K >= 1; K >= vocabulary size keeps all).
    #[arg(
        long,
        value_name = "K",
        default_value_t = 40,
        allow_negative_numbers = true
    )]
    pub top_k: i64,
    /// Keep the most likely tokens whose probabilities add up to P (0 <= P <= 1; 1 is off, 0 keeps the most likely token, as llama.cpp).
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.95,
        allow_negative_numbers = true
    )]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one (P >= 0; 0 is off, above 1 keeps the most likely token, as llama.cpp).
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.05,
        allow_negative_numbers = true
    )]
    pub min_p: f32,
    /// Penalise tokens seen in the last --repeat-last-n tokens (1.0 is off).
    #[arg(
        long,
        value_name = "R",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at (0 to 256).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 64,
        allow_negative_numbers = true
    )]
    pub repeat_last_n: i64,
    /// Subtract this from the logit of every recent token.
    #[arg(
        long,
        value_name = "X",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub presence_penalty: f32,
    /// Subtract this times its count from the logit of every recent token.
    #[arg(
        long,
        value_name = "X",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub frequency_penalty: f32,
    /// PRNG seed [default: a random one; the seed used is printed so a run can be repeated].
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Stop when the text contains this string (not printed); may be repeated.
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Speculative decoding by prompt lookup: draft up to N tokens from an
    /// earlier occurrence of the last few tokens and check them in one batched
    /// step (the output is the same as without it; 0 is off).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub lookup: usize,
    /// Constrain the output to a GBNF grammar (llama.cpp's format; start rule `root`).
    #[arg(long, value_name = "GBNF", group = "constraint")]
    pub grammar: Option<String>,
    /// --grammar from a file.
    #[arg(long, value_name = "FILE", group = "constraint")]
    pub grammar_file: Option<std::path::PathBuf>,
    /// Constrain the output to JSON valid against this JSON schema ('{}' for any JSON value).
    #[arg(long, short = 'j', value_name = "SCHEMA", group = "constraint")]
    pub json_schema: Option<String>,
    /// --json-schema from a file.
    #[arg(long, value_name = "FILE", group = "constraint")]
    pub json_schema_file: Option<std::path::PathBuf>,
}

impl SamplingArgs {
    /// The grammar the output must follow, if one was given.
    pub fn grammar(&self) -> Result<Option<ember_core::grammar::GrammarBuf>> {
        use crate::constrain::{parse_gbnf, schema_grammar};
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        Ok(Some(if let Some(g) = &self.grammar {
            parse_gbnf(g)?
        } else if let Some(f) = &self.grammar_file {
            parse_gbnf(&read(f)?).with_context(|| format!("--grammar-file {}", f.display()))?
        } else if let Some(s) = &self.json_schema {
            schema_grammar(s).context("--json-schema")?
        } else if let Some(f) = &self.json_schema_file {
            schema_grammar(&read(f)?)
                .with_context(|| format!("--json-schema-file {}", f.display()))?
        } else {
            return Ok(None);
        }))
    }

    /// The sampler configuration, each flag checked and named if wrong.
    pub fn config(&self) -> Result<SamplerConfig> {
        let t = self.temp;
        if !(t.is_finite() && t >= 0.0) {
            bail!("--temp must be a finite number >= 0 (got {t})");
        }
        if self.top_k < 1 {
            bail!("--top-k must be at least 1 (got {}); a K at or above the vocabulary size keeps every token", self.top_k);
        }
        let p = self.top_p;
        if !(0.0..=1.0).contains(&p) {
            bail!("--top-p must be in [0, 1] (got {p})");
        }
        let m = self.min_p;
        if !(m.is_finite() && m >= 0.0) {
            bail!("--min-p must be a finite number >= 0 (got {m})");
        }
        let r = self.repeat_penalty;
        if !(r.is_finite() && r > 0.0) {
            bail!("--repeat-penalty must be a finite number > 0 (got {r})");
        }
        if !(0..=ember_core::sampling::MAX_PENALTY_WINDOW as i64).contains(&self.repeat_last_n) {
            bail!(
                "--repeat-last-n must be between 0 and {} (got {})",
                ember_core::sampling::MAX_PENALTY_WINDOW,
                self.repeat_last_n
            );
        }
        if !self.presence_penalty.is_finite() {
            bail!("--presence-penalty must be finite");
        }
        if !self.frequency_penalty.is_finite() {
            bail!("--frequency-penalty must be finite");
        }
        let cfg = SamplerConfig {
            temperature: t,
            top_k: self.top_k.min(u32::MAX as i64) as u32,
            top_p: p,
            min_p: m,
            repeat_penalty: r,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            repeat_last_n: self.repeat_last_n as usize,
            seed: self.seed.unwrap_or_else(random_seed),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// A seed for runs that were not given one (printed, so they can be repeated).
pub(crate) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    // Keep seeds short enough to type.
    h.finish() % 1_000_000_000
}

/// `--model` (a file, or a stored model's name), else the default model (fetched once into the cache).
pub fn model_path(arg: &Option<PathBuf>) -> Result<PathBuf> {
    use crate::model_store::{by_name, default_model, stored};
    match arg {
        // A name Ember fetches itself (`gemma3-270m`), unless a file has it.
        Some(p) if !p.exists() => match p.to_str().and_then(by_name) {
            Some(m) => stored(m),
            None => Ok(p.clone()),
        },
        Some(p) => Ok(p.clone()),
        None => default_model(),
    }
}

/// Kernel table for a `--kernels` choice; an error names what the CPU lacks.
pub fn kernels(choice: KernelChoice) -> Result<Kernels> {
    Ok(match choice {
        KernelChoice::Scalar => Kernels::scalar(),
        KernelChoice::Auto => Kernels::detect(),
        KernelChoice::ScalarQ8 => Kernels::scalar_int8(),
        KernelChoice::ScalarQ16 => Kernels::scalar_q16(),
        KernelChoice::Avx2 => Kernels::avx2().context(
            "--kernels avx2: this CPU lacks AVX2, FMA or F16C (or is not x86_64); use --kernels auto",
        )?,
        KernelChoice::Avx512 => Kernels::avx512().context(
            "--kernels avx512: this CPU lacks AVX-512F (or AVX2, FMA, F16C); use --kernels auto",
        )?,
        KernelChoice::Neon => Kernels::neon()
            .context("--kernels neon: this CPU is not AArch64 with NEON; use --kernels auto")?,
    })
}

/// The most the KV capacity of `run`, `chat` and `perplexity` defaults to
/// (their one cache is reserved up front but touched only as tokens arrive).
pub const MAX_DEFAULT_CTX: usize = 8192;

/// The most each `serve` slot's KV capacity defaults to: `--parallel` caches
/// are allocated at start, so the default stays smaller.
pub const MAX_DEFAULT_SERVE_CTX: usize = 2048;

/// The default KV capacity for a file that states no context length.
pub const UNSTATED_CTX: usize = 2048;

/// The KV capacity: `--ctx`, else the model's context length, at most `cap`
/// ([`MAX_DEFAULT_CTX`] or [`MAX_DEFAULT_SERVE_CTX`]).
pub fn context(ctx: Option<usize>, model: &Llama, cap: usize) -> usize {
    ctx.unwrap_or(match model.config.context_length {
        0 => UNSTATED_CTX,
        n => n.min(cap),
    })
}
