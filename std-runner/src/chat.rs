//! `ember chat`: an interactive multi-turn conversation.
//!
//! Each turn renders the whole conversation with the chat template (the
//! file's, its family's built-in one, or `--chat-template`) and
//! feeds only the tokens past what the KV cache already holds (the common
//! prefix of the new rendering and the tokens fed so far), so earlier turns are
//! not recomputed. On a terminal the line editor keeps history; piped input is
//! read line by line. `/reset` starts over, Ctrl-D (end of input) quits.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use ember_core::model::MemoryPlan;

use crate::device::open_one;
use ember_core::sampling::{Candidate, Sampler};
use ember_core::tokenizer::StreamDecoder;

use crate::args::{ExecArgs, KvArgs, SamplingArgs};
use crate::constrain::Constraint;
use crate::load::load_model;
use crate::run::{continue_sampling, Decode};
use crate::template::TemplateArgs;
use crate::text::{prompt_text, Message, StopText};
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// GGUF model file [default: SmolLM2-135M-Instruct, fetched once into $EMBER_HOME]
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// A system message that opens every conversation.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Most tokens per reply [default: until an end-of-generation token, at
    /// most the context (--ctx)].
    #[arg(short = 'n', long = "n-predict", value_name = "N")]
    pub n: Option<usize>,
    #[command(flatten)]
    pub template: TemplateArgs,
    #[command(flatten)]
    pub kv: KvArgs,
    /// Prompt tokens per forward chunk.
    #[arg(long, short = 'b', default_value_t = 512)]
    pub batch: usize,
    #[command(flatten)]
    pub exec: ExecArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Where user lines come from.
enum Input {
    Editor(Box<rustyline::DefaultEditor>),
    Piped(std::io::StdinLock<'static>),
}

enum Line {
    Text(String),
    Skip(&'static str),
    End,
}

impl Input {
    fn open() -> Result<Input> {
        if std::io::stdin().is_terminal() {
            let ed = rustyline::DefaultEditor::new().context("starting the line editor")?;
            Ok(Input::Editor(Box::new(ed)))
        } else {
            Ok(Input::Piped(std::io::stdin().lock()))
        }
    }

    fn read(&mut self) -> Result<Line> {
        match self {
            Input::Editor(ed) => match ed.readline("> ") {
                Ok(l) => {
                    let _ = ed.add_history_entry(l.as_str());
                    Ok(Line::Text(l))
                }
                Err(rustyline::error::ReadlineError::Interrupted) => Ok(Line::Skip("")),
                Err(rustyline::error::ReadlineError::Eof) => Ok(Line::End),
                Err(e) => bail!("reading input: {e}"),
            },
            Input::Piped(r) => {
                let mut buf = Vec::new();
                if r.read_until(b'\n', &mut buf).context("reading stdin")? == 0 {
                    return Ok(Line::End);
                }
                match String::from_utf8(buf) {
                    Ok(s) => Ok(Line::Text(s)),
                    Err(_) => Ok(Line::Skip("that line is not valid UTF-8; ignored")),
                }
            }
        }
    }
}

pub fn cmd_chat(a: ChatArgs) -> Result<()> {
    if a.n == Some(0) {
        bail!("-n must be at least 1");
    }
    let cfg = a.sampling.config()?;
    let grammar = a.sampling.grammar()?;
    let mut file = load_model(&a.model, &a.exec)?;
    let m = file.parse(&a.exec)?;
    let model = &m.model;
    let tok = m.tokenizer?;
    let template = a.template.load(&m.gguf, &tok)?;
    // Each reply follows the grammar from its start.
    let mut constraint = match &grammar {
        Some(g) => Some(Constraint::new(
            g,
            Arc::new(crate::constrain::vocab(&tok)?),
        )?),
        None => None,
    };
    let kv = a.kv.options(model, true)?;
    let ctx = kv.capacity;
    let n_reply = a.n.unwrap_or(ctx);
    let threads = a.exec.threads()?;
    let pool = crate::pool::Pool::new(threads)?;
    let plan = MemoryPlan::with_threads(&model.config, kv, a.batch, threads)?;
    let mut arena = Vec::new();
    let mut s = open_one(
        model,
        m.kernels,
        a.exec.device,
        plan,
        false,
        &mut arena,
        &pool,
    )?;
    let mut sampler = Sampler::new(cfg)?;
    let mut scratch = vec![Candidate::default(); Sampler::scratch_len(model.config.vocab_size)];
    let system = a.system.as_deref().map(prompt_text).transpose()?;
    let opening = || -> Vec<Message> { system.iter().map(|t| Message::new("system", t)).collect() };
    // Check the template renders a first question before one is asked
    // (templates such as Gemma's read messages[0], so not an empty list).
    let mut probe = opening();
    probe.push(Message::new("user", "Hello"));
    template.render(&probe, true)?;

    let mut history = opening();
    let mut fed: Vec<u32> = Vec::new();
    let mut input = Input::open()?;
    let interactive = matches!(input, Input::Editor(_));
    if interactive {
        eprintln!(
            "ember chat: {ctx}-token context, seed {}, chat template: {}. /reset starts over, Ctrl-D quits.",
            cfg.seed,
            template.origin()
        );
    }
    loop {
        let line = match input.read()? {
            Line::End => break,
            Line::Skip(msg) => {
                if !msg.is_empty() {
                    eprintln!("ember: {msg}");
                }
                continue;
            }
            Line::Text(l) => l,
        };
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        match line.trim() {
            "/reset" => {
                history = opening();
                fed.clear();
                s.reset();
                sampler.reset();
                eprintln!("ember: conversation reset");
                continue;
            }
            "/exit" | "/quit" => break,
            "/help" => {
                eprintln!("/reset starts a new conversation; /exit or Ctrl-D quits");
                continue;
            }
            cmd if cmd.starts_with('/') => {
                eprintln!("ember: unknown command {cmd} (/reset, /exit, /help)");
                continue;
            }
            _ => {}
        }

        history.push(Message::new("user", line));
        let ids = template.encode(&tok, &history, true)?;
        // Keep what the cache already holds of this rendering; feed the rest
        // (at least one token, for fresh logits).
        let mut common = fed.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        if common == ids.len() {
            common -= 1;
        }
        if ids.len() - common > ctx {
            history.pop();
            eprintln!(
                "ember: that message ({} tokens) is longer than the {ctx}-token context",
                ids.len() - common
            );
            continue;
        }
        // Past an eviction the cache cannot go back: if the new rendering
        // differs from what was fed (a boundary tokenised differently), the
        // tokens past what was fed follow what is cached. A windowed layer's
        // ring (Gemma 3) cannot go back further than a prompt chunk either;
        // then the conversation is fed again from the start.
        let start = if s.truncate(common).is_ok() {
            fed.truncate(common);
            common
        } else if !s.evicted() {
            s.reset();
            fed.clear();
            0
        } else {
            fed.len().min(ids.len() - 1)
        };
        s.forward(&ids[start..])?;
        fed.extend_from_slice(&ids[start..]);
        for &id in &ids[start..] {
            sampler.accept(id);
        }

        // The reply streams to stdout; the cache streams with it.
        let mut dec = StreamDecoder::new(&tok, false, false);
        let mut reply = String::new();
        let mut out = std::io::stdout().lock();
        let mut stops = StopText::new(&a.sampling.stop);
        if let Some(c) = &mut constraint {
            c.reset()?;
        }
        let reply_ids = continue_sampling(
            &mut s,
            &mut sampler,
            constraint.as_mut(),
            &mut scratch,
            &Decode {
                n_predict: n_reply,
                eos: tok.end_of_generation(),
                ignore_eos: false,
                lookup: a.sampling.lookup,
                context: &fed,
            },
            &mut |id, _| {
                if tok.is_eog(id) {
                    return true;
                }
                let _ = dec.push(&tok, id, &mut |t| {
                    let t = stops.push(t);
                    reply.push_str(&t);
                    let _ = out.write_all(t.as_bytes());
                    let _ = out.flush();
                });
                !stops.stopped()
            },
        )?
        .ids;
        dec.finish(&mut |t| {
            let t = stops.push(t);
            reply.push_str(&t);
            let _ = out.write_all(t.as_bytes());
        });
        let t = stops.finish();
        reply.push_str(&t);
        let _ = out.write_all(t.as_bytes());
        writeln!(out)?;
        out.flush()?;
        // Every id but the last was fed back.
        fed.extend_from_slice(&reply_ids[..reply_ids.len().saturating_sub(1)]);
        history.push(Message::new("assistant", &reply));
    }
    Ok(())
}
