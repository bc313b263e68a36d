//! The `ember` command line (see DESIGN.md for the contract).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ember_core::gguf::Gguf;
use ember_core::kernels::Kernels;
use ember_core::model::Llama;
use serde_json::json;

use crate::detok::Detokenizer;
use crate::run::{generate, RunOptions};

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
    /// Generate from a prompt (greedy decoding).
    Run(RunArgs),
    /// Rewrite a GGUF file with its weight matrices in another type.
    Convert(ConvertArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KernelChoice {
    /// The portable scalar reference, end to end.
    Scalar,
    /// The fastest kernels this CPU supports.
    Auto,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Prompt text (needs the tokenizer; until then use --prompt-ids).
    pub prompt: Option<String>,
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
    /// Kernel set.
    #[arg(long, value_enum, default_value_t = KernelChoice::Auto)]
    pub kernels: KernelChoice,
    /// KV cache capacity in tokens [default: the model's context length, at most 8192].
    /// Memory is reserved up front but only touched as tokens arrive.
    #[arg(long, short = 'c')]
    pub ctx: Option<usize>,
    /// Prompt tokens per forward chunk.
    #[arg(long, short = 'b', default_value_t = 512)]
    pub batch: usize,
    /// Keep generating after the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
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

fn model_path(arg: &Option<PathBuf>) -> Result<PathBuf> {
    match arg {
        Some(p) => Ok(p.clone()),
        None => crate::model_store::default_model(),
    }
}

pub fn main_with(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) => cmd_run(a),
        Command::Convert(a) => {
            let ty = crate::convert::parse_type(&a.ty)?;
            crate::convert::convert_file(&a.input, &a.output, ty)
                .with_context(|| format!("converting {}", a.input.display()))?;
            eprintln!("ember: wrote {} ({})", a.output.display(), ty.name());
            Ok(())
        }
    }
}

fn cmd_run(a: RunArgs) -> Result<()> {
    let prompt_ids = match (&a.prompt_ids, &a.prompt) {
        (Some(ids), None) => parse_ids(ids)?,
        (Some(_), Some(_)) => bail!("give either a text prompt or --prompt-ids, not both"),
        (None, Some(_)) => bail!("text prompts need the tokenizer, which this build does not have yet; pass --prompt-ids"),
        (None, None) => bail!("no prompt: pass --prompt-ids 1,2,3"),
    };
    if prompt_ids.is_empty() {
        bail!("--prompt-ids: the prompt is empty");
    }
    if a.logits_all && a.top_logits == 0 {
        bail!("--logits-all needs --top-logits K with K >= 1");
    }
    let path = model_path(&a.model)?;
    let map = crate::mmap::map(&path)?;
    let g = Gguf::parse(&map).with_context(|| format!("{}", path.display()))?;
    let model = Llama::from_gguf(&g).with_context(|| format!("{}", path.display()))?;
    let detok = Detokenizer::from_gguf(&g);
    let kernels = match a.kernels {
        KernelChoice::Scalar => Kernels::scalar(),
        KernelChoice::Auto => Kernels::detect(),
    };
    let ctx = a.ctx.unwrap_or(match model.config.context_length {
        0 => 2048,
        n => n.min(8192),
    });
    let eos = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
        .iter()
        .filter_map(|k| g.get(k).and_then(|v| v.as_u32()))
        .collect();
    let opt = RunOptions {
        prompt_ids,
        n_predict: a.n,
        top_logits: a.top_logits,
        logits_all: a.logits_all,
        ctx,
        batch: a.batch,
        ignore_eos: a.ignore_eos,
        eos,
    };

    // Stream text to stdout as it is generated (human mode), holding back
    // bytes until they form whole UTF-8 characters.
    let mut pending: Vec<u8> = Vec::new();
    let stream = !a.json;
    let out = generate(&model, kernels, &opt, |id| {
        if let (true, Some(d)) = (stream, &detok) {
            pending.extend_from_slice(d.piece(id));
            let valid = match std::str::from_utf8(&pending) {
                Ok(_) => pending.len(),
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                Err(_) => pending.len(),
            };
            let mut so = std::io::stdout().lock();
            let _ = so.write_all(String::from_utf8_lossy(&pending[..valid]).as_bytes());
            let _ = so.flush();
            pending.drain(..valid);
        }
    })?;
    let text = detok
        .as_ref()
        .map(|d| d.decode(&out.ids))
        .unwrap_or_default();
    if stream {
        if !pending.is_empty() {
            print!("{}", String::from_utf8_lossy(&pending));
        }
        println!();
    }
    eprintln!(
        "ember: {} prompt tokens, {} generated; prefill {:.1} tok/s, decode {:.1} tok/s ({} kernels, {:.1} MiB session)",
        opt.prompt_ids.len(),
        out.ids.len(),
        out.prefill_tok_s,
        out.decode_tok_s,
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
        });
        if let Some(all) = &out.top_logits_all {
            j["top_logits_all"] = all.iter().map(|v| pairs(v)).collect::<Vec<_>>().into();
        }
        println!("{j}");
    }
    Ok(())
}
