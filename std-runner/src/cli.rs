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

use crate::run::{generate, RunOptions};
use crate::text::{encode_prompt, prompt_text, ChatTemplate, Message};

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
        Command::Convert(a) => {
            let ty = crate::convert::parse_type(&a.ty)?;
            crate::convert::convert_file(&a.input, &a.output, ty)
                .with_context(|| format!("converting {}", a.input.display()))?;
            eprintln!("ember: wrote {} ({})", a.output.display(), ty.name());
            Ok(())
        }
    }
}

/// Kernel table for a `--kernels` choice.
pub fn kernels(choice: KernelChoice) -> Kernels {
    match choice {
        KernelChoice::Scalar => Kernels::scalar(),
        KernelChoice::Auto => Kernels::detect(),
    }
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
    let prompt = a.prompt.as_deref().map(prompt_text).transpose()?;
    let path = model_path(&a.model)?;
    let map = crate::mmap::map(&path)?;
    let g = Gguf::parse(&map).with_context(|| format!("{}", path.display()))?;
    let model = Llama::from_gguf(&g).with_context(|| format!("{}", path.display()))?;
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
    let kernels = kernels(a.kernels);
    let ctx = context(a.ctx, &model);
    if ctx > 0 && prompt_ids.len() > ctx {
        bail!(
            "the prompt is {} tokens but the context holds {ctx}; raise --ctx or shorten the prompt",
            prompt_ids.len()
        );
    }
    let opt = RunOptions {
        prompt_ids,
        n_predict: a.n,
        top_logits: a.top_logits,
        logits_all: a.logits_all,
        ctx,
        batch: a.batch,
        ignore_eos: a.ignore_eos,
        eos: stop_ids(&g, tok.as_ref()),
    };

    // Stream text to stdout as it is generated (human mode); end-of-generation
    // tokens print nothing.
    let stream = !a.json;
    let mut text = String::new();
    let mut dec = tok.as_ref().map(|t| StreamDecoder::new(t, false, false));
    let mut so = std::io::stdout().lock();
    let out = generate(&model, kernels, &opt, |id| {
        if let (Some(t), Some(d)) = (&tok, &mut dec) {
            if t.is_eog(id) && !a.ignore_eos {
                return;
            }
            let _ = d.push(t, id, &mut |s| {
                text.push_str(s);
                if stream {
                    let _ = so.write_all(s.as_bytes());
                    let _ = so.flush();
                }
            });
        }
    })?;
    if let Some(d) = &mut dec {
        d.finish(&mut |s| {
            text.push_str(s);
            if stream {
                let _ = so.write_all(s.as_bytes());
            }
        });
    }
    if stream {
        let _ = writeln!(so);
    }
    drop(so);
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
