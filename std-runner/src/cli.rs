//! The `ember` command line (see DESIGN.md for the contract).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ember_core::gguf::Gguf;
use ember_core::kernels::Kernels;
use ember_core::model::Llama;
use serde_json::json;

use ember_core::tokenizer::{StreamDecoder, Tokenizer};

use ember_core::sampling::SamplerConfig;
use ember_core::{KvOptions, KvType};

use crate::run::{generate, RunOptions};
use crate::text::{encode_prompt, prompt_text, ChatTemplate, Message, StopText};

#[derive(Debug, Parser)]
#[command(
    name = "ember",
    version,
    about = "Run llama-family GGUF models, from microcontrollers to servers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate from a prompt (greedy decoding), streaming text to stdout.
    Run(RunArgs),
    /// Talk to the model: an interactive multi-turn chat using the file's chat template.
    Chat(crate::chat::ChatArgs),
    /// Print the token ids of a text.
    Tokenize(TokenizeArgs),
    /// Score a text file: dense chunks of --ctx, or streaming through --sinks + --window.
    Perplexity(crate::perplexity::PerplexityArgs),
    /// Rewrite a GGUF file with its weight matrices in another type.
    Convert(ConvertArgs),
    /// Write a deterministic random-weights llama GGUF of any shape.
    Synth(SynthArgs),
    /// Measure prefill (pp) and decode (tg) speed, as llama-bench does.
    Bench(crate::bench::BenchArgs),
    /// Serve the model over HTTP with OpenAI's API, batching requests together.
    Serve(crate::serve::ServeArgs),
}

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

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Prompt text ('-' reads stdin). With --chat, the user's message.
    pub prompt: Option<String>,
    /// Wrap the prompt as a user message in the file's chat template.
    #[arg(long)]
    pub chat: bool,
    /// With --chat: a system message.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Recognise control tokens written in the prompt (e.g. <|im_end|>).
    #[arg(long)]
    pub special: bool,
    /// GGUF model file [default: SmolLM2-135M-Instruct, fetched once into $EMBER_HOME]
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Prompt as comma-separated token ids, e.g. 1,2,3.
    #[arg(long, value_name = "IDS")]
    pub prompt_ids: Option<String>,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 32)]
    pub n: usize,
    /// Report the K largest logits after the last prompt token.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub top_logits: usize,
    /// With --top-logits: report them after every prompt token (teacher forcing).
    #[arg(long)]
    pub logits_all: bool,
    /// Print one JSON object on stdout at the end; human text goes to stderr.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub exec: ExecArgs,
    #[command(flatten)]
    pub kv: KvArgs,
    /// Prompt tokens per forward chunk.
    #[arg(long, short = 'b', default_value_t = 512)]
    pub batch: usize,
    /// Keep generating after the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Beam search with N beams (each with its own KV cache) instead of sampling.
    #[arg(long, value_name = "N")]
    pub beams: Option<usize>,
    /// With --beams: rank hypotheses by logprob / length^A.
    #[arg(
        long,
        value_name = "A",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    pub length_penalty: f64,
}

/// How the work runs: kernels, threads, model memory (run, chat,
/// perplexity, bench).
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
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
            (None, None) => context(None, model),
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
    /// Keep the most likely tokens whose probabilities add up to P (0 < P <= 1; 1 is off).
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.95,
        allow_negative_numbers = true
    )]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0 <= P <= 1; 0 is off).
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
}

impl SamplingArgs {
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
        if !(p > 0.0 && p <= 1.0) {
            bail!("--top-p must be in (0, 1] (got {p})");
        }
        let m = self.min_p;
        if !(0.0..=1.0).contains(&m) {
            bail!("--min-p must be in [0, 1] (got {m})");
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

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output GGUF.
    pub output: PathBuf,
    #[arg(long)]
    pub dim: usize,
    #[arg(long)]
    pub layers: usize,
    #[arg(long)]
    pub heads: usize,
    #[arg(long)]
    pub kv_heads: usize,
    #[arg(long)]
    pub ffn: usize,
    #[arg(long)]
    pub vocab: usize,
    /// Context length written to the metadata.
    #[arg(long, default_value_t = 256)]
    pub ctx: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Weight type: q8_0, f16, q4_0, q4_1 or f32.
    #[arg(long = "type", short = 't', default_value = "q8_0")]
    pub ty: String,
}

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// Text to tokenize ('-' reads stdin).
    pub text: String,
    /// GGUF model file [default: SmolLM2-135M-Instruct, fetched once into $EMBER_HOME]
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Recognise control tokens written in the text (e.g. <|im_start|>).
    #[arg(long)]
    pub special: bool,
    /// Do not add BOS/EOS even if the vocabulary asks for them.
    #[arg(long)]
    pub no_bos: bool,
    /// Print {"ids":[..]} on stdout instead of one "id -> 'piece'" line per token.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Input GGUF.
    pub input: PathBuf,
    /// Output GGUF.
    pub output: PathBuf,
    /// Target type: q8_0, f16, q4_0 or q4_1 (also f32).
    #[arg(long = "type", short = 't')]
    pub ty: String,
}

/// Parses `1,2,3` (spaces allowed).
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u32>()
                .with_context(|| format!("--prompt-ids: '{p}' is not a token id"))
        })
        .collect()
}

pub fn model_path(arg: &Option<PathBuf>) -> Result<PathBuf> {
    match arg {
        Some(p) => Ok(p.clone()),
        None => crate::model_store::default_model(),
    }
}

pub fn main_with(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) => cmd_run(a),
        Command::Chat(a) => crate::chat::cmd_chat(a),
        Command::Tokenize(a) => cmd_tokenize(a),
        Command::Perplexity(a) => crate::perplexity::cmd_perplexity(a),
        Command::Bench(a) => crate::bench::cmd_bench(a),
        Command::Serve(a) => crate::serve::cmd_serve(a),
        Command::Synth(a) => {
            let cfg = crate::synth::SynthConfig {
                dim: a.dim,
                layers: a.layers,
                heads: a.heads,
                kv_heads: a.kv_heads,
                ffn: a.ffn,
                vocab: a.vocab,
                ctx: a.ctx,
                seed: a.seed,
                ty: crate::convert::parse_type(&a.ty)?,
            };
            let bytes = crate::synth::synth(&cfg)?;
            std::fs::write(&a.output, &bytes)
                .with_context(|| format!("cannot write {}", a.output.display()))?;
            eprintln!(
                "ember: wrote {} ({} bytes)",
                a.output.display(),
                bytes.len()
            );
            Ok(())
        }
        Command::Convert(a) => {
            let ty = crate::convert::parse_type(&a.ty)?;
            crate::convert::convert_file(&a.input, &a.output, ty)
                .with_context(|| format!("converting {}", a.input.display()))?;
            eprintln!("ember: wrote {} ({})", a.output.display(), ty.name());
            Ok(())
        }
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

/// The KV capacity: `--ctx`, else the model's context length (at most 8192).
pub fn context(ctx: Option<usize>, model: &Llama) -> usize {
    ctx.unwrap_or(match model.config.context_length {
        0 => 2048,
        n => n.min(8192),
    })
}

/// Ids that end generation: the tokenizer's end-of-generation set, else the
/// metadata's EOS/EOT ids for a file with no tokenizer.
fn stop_ids(g: &Gguf, tok: Option<&Tokenizer>) -> Vec<u32> {
    match tok {
        Some(t) => t.end_of_generation().to_vec(),
        None => ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
            .iter()
            .filter_map(|k| g.get(k).and_then(|v| v.as_u32()))
            .collect(),
    }
}

fn cmd_run(a: RunArgs) -> Result<()> {
    if a.logits_all && a.top_logits == 0 {
        bail!("--logits-all needs --top-logits K with K >= 1");
    }
    if a.chat && a.prompt.is_none() {
        bail!("--chat needs the user's message as the prompt");
    }
    if a.system.is_some() && !a.chat {
        bail!("--system needs --chat");
    }
    if a.prompt_ids.is_some() && (a.prompt.is_some() || a.chat) {
        bail!("give either a text prompt or --prompt-ids, not both");
    }
    let sampling = a.sampling.config()?;
    if a.beams == Some(0) {
        bail!("--beams must be at least 1");
    }
    if !a.length_penalty.is_finite() {
        bail!("--length-penalty must be finite");
    }
    let prompt = a.prompt.as_deref().map(prompt_text).transpose()?;
    let path = model_path(&a.model)?;
    let map = a.exec.load(&path)?;
    let g = Gguf::parse(&map).with_context(|| format!("{}", path.display()))?;
    let model = Llama::from_gguf(&g).with_context(|| format!("{}", path.display()))?;
    let packs = a.exec.packs(&model, &a.exec.kernels()?)?;
    let model = packs.apply(model)?;
    let mut index = Vec::new();
    let tok = match &prompt {
        // Text in needs the tokenizer; ids in only use it for output text.
        Some(_) => Some(crate::text::tokenizer(&g, &mut index)?),
        None => crate::text::tokenizer(&g, &mut index).ok(),
    };
    let prompt_ids = match (&a.prompt_ids, &prompt, &tok) {
        (Some(ids), _, _) => {
            let ids = parse_ids(ids)?;
            if ids.is_empty() {
                bail!("--prompt-ids: the prompt is empty");
            }
            ids
        }
        (None, Some(text), Some(t)) if a.chat => {
            let mut msgs = Vec::new();
            if let Some(sys) = &a.system {
                msgs.push(Message::new("system", &prompt_text(sys)?));
            }
            msgs.push(Message::new("user", text));
            ChatTemplate::from_gguf(&g, t)?.encode(t, &msgs, true)?
        }
        (None, Some(text), Some(t)) => encode_prompt(t, text, a.special)?,
        _ => bail!("no prompt: give a text prompt or --prompt-ids 1,2,3"),
    };
    let kernels = a.exec.kernels()?;
    let threads = a.exec.threads()?;
    if let Some(beams) = a.beams {
        return run_beams(&a, &model, kernels, tok.as_ref(), &g, prompt_ids, beams);
    }
    let kv = a.kv.options(&model, true)?;
    if prompt_ids.len() > kv.capacity {
        bail!(
            "the prompt is {} tokens but the context holds {}; raise --ctx or shorten the prompt",
            prompt_ids.len(),
            kv.capacity
        );
    }
    let opt = RunOptions {
        prompt_ids,
        n_predict: a.n,
        top_logits: a.top_logits,
        logits_all: a.logits_all,
        kv,
        batch: a.batch,
        ignore_eos: a.ignore_eos,
        eos: stop_ids(&g, tok.as_ref()),
        sampling,
        threads,
    };

    // Stream text to stdout as it is generated (human mode); end-of-generation
    // tokens print nothing; a stop string ends the run and is not printed.
    let stream = !a.json;
    let mut text = String::new();
    let mut stops = StopText::new(&a.sampling.stop);
    let mut dec = tok.as_ref().map(|t| StreamDecoder::new(t, false, false));
    let emit = |s: &str, text: &mut String| {
        text.push_str(s);
        if stream {
            let mut so = std::io::stdout().lock();
            let _ = so.write_all(s.as_bytes());
            let _ = so.flush();
        }
    };
    let out = generate(&model, kernels, &opt, |id| {
        if let (Some(t), Some(d)) = (&tok, &mut dec) {
            if t.is_eog(id) && !a.ignore_eos {
                return true;
            }
            let _ = d.push(t, id, &mut |s| {
                let ok = stops.push(s);
                emit(&ok, &mut text);
            });
        }
        !stops.stopped()
    })?;
    if let Some(d) = &mut dec {
        d.finish(&mut |s| {
            let ok = stops.push(s);
            emit(&ok, &mut text);
        });
    }
    let rest = stops.finish();
    emit(&rest, &mut text);
    if stream {
        emit("\n", &mut String::new());
    }
    eprintln!(
        "ember: {} prompt tokens, {} generated; prefill {:.1} tok/s, decode {:.1} tok/s; seed {} ({} kernels, {:.1} MiB session)",
        opt.prompt_ids.len(),
        out.ids.len(),
        out.prefill_tok_s,
        out.decode_tok_s,
        sampling.seed,
        kernels.name,
        out.arena_bytes as f64 / (1 << 20) as f64
    );
    if a.json {
        let pairs = |v: &[(u32, f32)]| v.iter().map(|&(i, l)| json!([i, l])).collect::<Vec<_>>();
        let mut j = json!({
            "prompt_ids": opt.prompt_ids,
            "ids": out.ids,
            "text": text,
            "prompt_tokens": opt.prompt_ids.len(),
            "generated_tokens": out.ids.len(),
            "prefill_tok_s": out.prefill_tok_s,
            "decode_tok_s": out.decode_tok_s,
            "top_logits": pairs(&out.top_logits),
            "kernels": kernels.name,
            "threads": threads,
            "seed": sampling.seed,
            "kv": {"capacity": opt.kv.capacity, "sinks": opt.kv.sinks, "type": opt.kv.ty.name()},
            "decode_tok_s_per_500": out.decode_tok_s_per_500,
        });
        if let Some(all) = &out.top_logits_all {
            j["top_logits_all"] = all.iter().map(|v| pairs(v)).collect::<Vec<_>>().into();
        }
        println!("{j}");
    }
    Ok(())
}

/// Bytes of memory the system says are available (Linux), if it says.
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn run_beams(
    a: &RunArgs,
    model: &Llama,
    kernels: Kernels,
    tok: Option<&Tokenizer>,
    g: &Gguf,
    prompt_ids: Vec<u32>,
    beams: usize,
) -> Result<()> {
    // Each beam's cache holds the prompt and the reply, no more (unless --ctx says).
    if a.kv.window.is_some() {
        bail!("--beams keeps whole sequences: it takes --ctx, not --window");
    }
    let ctx = a.kv.ctx.unwrap_or(prompt_ids.len() + a.n);
    let kv = KvOptions::dense(ctx).with_type(a.kv.kv_type.into());
    let plan = ember_core::model::MemoryPlan::with_kv(&model.config, kv, a.batch)?;
    let need = (plan.bytes() as u64).saturating_mul(beams as u64);
    if let Some(avail) = mem_available() {
        if need > avail {
            bail!(
                "--beams {beams} needs {:.1} GiB ({:.1} MiB per beam) but {:.1} GiB is available; use fewer beams or a smaller --ctx",
                need as f64 / (1u64 << 30) as f64,
                plan.bytes() as f64 / (1u64 << 20) as f64,
                avail as f64 / (1u64 << 30) as f64
            );
        }
    }
    let opt = crate::beam::BeamOptions {
        beams,
        n_predict: a.n,
        length_penalty: a.length_penalty,
        eos: if a.ignore_eos {
            Vec::new()
        } else {
            stop_ids(g, tok)
        },
        kv,
        batch: a.batch,
    };
    let t0 = std::time::Instant::now();
    let hyps = crate::beam::beam_search(model, kernels, &prompt_ids, &opt)?;
    let secs = t0.elapsed().as_secs_f64();
    let best = hyps.first().context("beam search produced nothing")?;
    let text_of = |ids: &[u32]| -> String {
        match tok {
            Some(t) => {
                let body: Vec<u32> = ids.iter().copied().filter(|&i| !t.is_eog(i)).collect();
                let mut s = String::new();
                let mut d = StreamDecoder::new(t, false, false);
                for id in body {
                    let _ = d.push(t, id, &mut |x| s.push_str(x));
                }
                d.finish(&mut |x| s.push_str(x));
                s
            }
            None => String::new(),
        }
    };
    let text = text_of(&best.ids);
    if !a.json {
        println!("{text}");
    }
    eprintln!(
        "ember: {} prompt tokens, {} generated; beam search with {beams} beams in {secs:.2} s; best logprob {:.3}, score {:.3}",
        prompt_ids.len(),
        best.ids.len(),
        best.logprob,
        best.score
    );
    if a.json {
        let all: Vec<_> = hyps
            .iter()
            .map(|h| {
                json!({"ids": h.ids, "text": text_of(&h.ids), "logprob": h.logprob, "score": h.score, "finished": h.finished})
            })
            .collect();
        println!(
            "{}",
            json!({
                "prompt_ids": prompt_ids,
                "ids": best.ids,
                "text": text,
                "prompt_tokens": prompt_ids.len(),
                "generated_tokens": best.ids.len(),
                "beams": all,
                "length_penalty": a.length_penalty,
            })
        );
    }
    Ok(())
}

fn cmd_tokenize(a: TokenizeArgs) -> Result<()> {
    let text = prompt_text(&a.text)?;
    let path = model_path(&a.model)?;
    let map = crate::mmap::map(&path)?;
    let g = Gguf::parse(&map).with_context(|| format!("{}", path.display()))?;
    let mut index = Vec::new();
    let tok = crate::text::tokenizer(&g, &mut index)?;
    let ids = tok
        .encode(
            &text,
            ember_core::tokenizer::EncodeOptions {
                add_special: !a.no_bos,
                parse_special: a.special,
            },
        )
        .context("tokenizing")?;
    let mut so = std::io::stdout().lock();
    if a.json {
        writeln!(so, "{}", json!({ "ids": ids }))?;
    } else {
        for &id in &ids {
            let mut piece = Vec::new();
            tok.piece(id, true, &mut |b| piece.extend_from_slice(b))?;
            writeln!(
                so,
                "{id:>7} -> '{}'",
                String::from_utf8_lossy(&piece).escape_debug()
            )?;
        }
    }
    Ok(())
}
