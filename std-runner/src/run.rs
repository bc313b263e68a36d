//! `ember run`: generation from a prompt (sampled, greedy, or beam search
//! with `--beams`), streaming text to stdout; and the generation loop itself
//! (sampled or greedy, with teacher-forced logits), which `chat` shares.
//!
//! As llama.cpp's CLI, a run goes on until the model ends its turn (an
//! end-of-generation token) or the prompt and reply fill the context
//! (`--ctx`); `-n` caps it sooner.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use ember_core::gguf::Gguf;
use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan};
use ember_core::sampling::{Candidate, Sampler, SamplerConfig};
use std::sync::Arc;

use crate::constrain::{self, Constraint};
use ember_core::tokenizer::{StreamDecoder, Tokenizer};
use ember_core::KvOptions;
use serde_json::json;

use crate::args::{ExecArgs, KvArgs, SamplingArgs};
use crate::device::{open_one, Device, One};
use crate::load::load_model;
use crate::template::TemplateArgs;
use crate::text::{encode_prompt, prompt_text, Message, StopText};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Prompt text ('-' reads stdin). With --chat, the user's message.
    pub prompt: Option<String>,
    /// Wrap the prompt as a user message in the chat template (the file's, its
    /// family's built-in one, or --chat-template).
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
    /// Most tokens to generate [default: until an end-of-generation token, or
    /// until the prompt and reply fill the context (--ctx)].
    #[arg(short = 'n', long = "n-predict", value_name = "N")]
    pub n: Option<usize>,
    /// Report the K largest logits after the last prompt token; with --json
    /// also their log-probabilities, and for every generated token its
    /// log-probability and the K most likely tokens at its step.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub top_logits: usize,
    /// With --top-logits: report them after every prompt token (teacher forcing).
    #[arg(long)]
    pub logits_all: bool,
    /// Print one JSON object on stdout at the end; human text goes to stderr.
    #[arg(long)]
    pub json: bool,
    /// Print the prompt as the model reads it (after the chat template) and its
    /// token count on stderr before generating.
    #[arg(long)]
    pub verbose_prompt: bool,
    #[command(flatten)]
    pub template: TemplateArgs,
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

pub fn cmd_run(a: RunArgs) -> Result<()> {
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
    if !a.chat && (a.template.chat_template.is_some() || a.template.chat_template_kwargs.is_some())
    {
        bail!("--chat-template and --chat-template-kwargs need --chat");
    }
    let sampling = a.sampling.config()?;
    let grammar = a.sampling.grammar()?;
    if grammar.is_some() && a.beams.is_some() {
        bail!("a grammar or JSON schema constrains sampling; --beams does not sample");
    }
    if a.beams == Some(0) {
        bail!("--beams must be at least 1");
    }
    if !a.length_penalty.is_finite() {
        bail!("--length-penalty must be finite");
    }
    let prompt = a.prompt.as_deref().map(prompt_text).transpose()?;
    let mut file = load_model(&a.model, &a.exec)?;
    let m = file.parse(&a.exec)?;
    let (g, model) = (&m.gguf, &m.model);
    let tok = match &prompt {
        // Text in needs the tokenizer; ids in only use it for output text.
        Some(_) => Some(m.tokenizer?),
        None => m.tokenizer.ok(),
    };
    // The text the model reads (after the chat template), when text came in.
    let mut rendered: Option<String> = None;
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
            let template = a.template.load(g, t)?;
            let chat = template.render(&msgs, true)?;
            if a.verbose_prompt {
                eprintln!("ember: chat template: {}", template.origin());
            }
            let ids = template.encode_text(t, &chat)?;
            rendered = Some(chat);
            ids
        }
        (None, Some(text), Some(t)) => {
            rendered = Some(text.clone());
            encode_prompt(t, text, a.special)?
        }
        _ => bail!("no prompt: give a text prompt or --prompt-ids 1,2,3"),
    };
    if a.verbose_prompt {
        eprintln!("ember: prompt ({} tokens):", prompt_ids.len());
        match &rendered {
            Some(text) => eprintln!("{text}"),
            None => eprintln!("{prompt_ids:?}"),
        }
    }
    let kernels = m.kernels;
    let threads = a.exec.threads()?;
    if let Some(beams) = a.beams {
        if a.exec.device != Device::Cpu {
            bail!("--beams runs on --device cpu");
        }
        return run_beams(&a, model, kernels, tok.as_ref(), g, prompt_ids, beams);
    }
    let kv = a.kv.options(model, true)?;
    if prompt_ids.len() > kv.capacity {
        bail!(
            "the prompt is {} tokens but the context holds {}; raise --ctx or shorten the prompt",
            prompt_ids.len(),
            kv.capacity
        );
    }
    let n_predict = a.n.unwrap_or(until_full(kv.capacity, prompt_ids.len()));
    let constraint = match (&grammar, &tok) {
        (Some(g), Some(t)) => Some(Constraint::new(g, Arc::new(constrain::vocab(t)?))?),
        (Some(_), None) => bail!("a grammar needs the model's tokenizer, and this file has none"),
        (None, _) => None,
    };
    let opt = RunOptions {
        prompt_ids,
        n_predict,
        top_logits: a.top_logits,
        logits_all: a.logits_all,
        kv,
        batch: a.batch,
        ignore_eos: a.ignore_eos,
        eos: stop_ids(g, tok.as_ref()),
        sampling,
        threads,
        device: a.exec.device,
        constraint,
        lookup: a.sampling.lookup,
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
    let out = generate(model, kernels, &opt, |id| {
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
    if opt.lookup > 0 {
        eprintln!(
            "ember: prompt lookup drafted {} tokens, kept {}",
            out.lookup.0, out.lookup.1
        );
    }
    eprintln!(
        "ember: {} prompt tokens, {} generated; prefill {:.1} tok/s, decode {:.1} tok/s; seed {} ({})",
        opt.prompt_ids.len(),
        out.ids.len(),
        out.prefill_tok_s,
        out.decode_tok_s,
        sampling.seed,
        match a.exec.device {
            Device::Cpu => format!(
                "{} kernels, {:.1} MiB session",
                kernels.name,
                out.arena_bytes as f64 / (1 << 20) as f64
            ),
            Device::Gpu => format!("GPU: {}", out.engine),
        }
    );
    if a.json {
        let pairs = |v: &[(u32, f32)]| v.iter().map(|&(i, l)| json!([i, l])).collect::<Vec<_>>();
        let mut j = json!({
            "prompt_ids": opt.prompt_ids,
            "prompt": rendered,
            "ids": out.ids,
            "text": text,
            "prompt_tokens": opt.prompt_ids.len(),
            "generated_tokens": out.ids.len(),
            "prefill_tok_s": out.prefill_tok_s,
            "decode_tok_s": out.decode_tok_s,
            "top_logits": pairs(&out.top_logits),
            "top_logprobs": pairs(&out.top_logprobs),
            "kernels": kernels.name,
            "device": out.engine,
            "threads": threads,
            "seed": sampling.seed,
            "kv": {"capacity": opt.kv.capacity, "sinks": opt.kv.sinks, "type": opt.kv.ty.name()},
            "decode_tok_s_per_500": out.decode_tok_s_per_500,
        });
        if opt.lookup > 0 {
            j["lookup"] = json!({"drafted": out.lookup.0, "accepted": out.lookup.1});
        }
        if let Some(all) = &out.top_logits_all {
            j["top_logits_all"] = all.iter().map(|v| pairs(v)).collect::<Vec<_>>().into();
        }
        if let Some(all) = &out.top_logprobs_all {
            j["top_logprobs_all"] = all.iter().map(|v| pairs(v)).collect::<Vec<_>>().into();
        }
        if opt.top_logits > 0 {
            j["logprobs"] = out
                .logprobs
                .iter()
                .map(|t| json!({"id": t.id, "logprob": t.logprob, "top_logprobs": pairs(&t.top)}))
                .collect::<Vec<_>>()
                .into();
        }
        println!("{j}");
    }
    Ok(())
}

/// `ember run --beams N`: beam search from the prompt, the best hypothesis
/// printed (with `--json`, every hypothesis).
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
    // Without -n: until every beam ends, or the context is full.
    let (ctx, n) = match a.n {
        Some(n) => (a.kv.ctx.unwrap_or(prompt_ids.len() + n), n),
        None => {
            let ctx = crate::args::context(a.kv.ctx, model, crate::args::MAX_DEFAULT_CTX);
            if prompt_ids.len() > ctx {
                bail!(
                    "the prompt is {} tokens but the context holds {ctx}; raise --ctx or shorten the prompt",
                    prompt_ids.len()
                );
            }
            (ctx, until_full(ctx, prompt_ids.len()))
        }
    };
    let kv = KvOptions::dense(ctx).with_type(a.kv.kv_type.into());
    let opt = crate::beam::BeamOptions {
        beams,
        n_predict: n,
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

/// The default length of a run: what the context holds after the prompt
/// (at least one token).
pub fn until_full(capacity: usize, prompt: usize) -> usize {
    capacity.saturating_sub(prompt).max(1)
}

/// What one `ember run` does.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub prompt_ids: Vec<u32>,
    /// Tokens to generate.
    pub n_predict: usize,
    /// K of `top_logits` (0: none).
    pub top_logits: usize,
    /// Report the top logits at every prompt position.
    pub logits_all: bool,
    /// The KV cache (capacity, sinks, element type, streaming).
    pub kv: ember_core::KvOptions,
    /// Tokens per forward chunk in prefill.
    pub batch: usize,
    /// Keep generating past the end-of-sequence token.
    pub ignore_eos: bool,
    /// End-of-sequence ids that stop generation.
    pub eos: Vec<u32>,
    /// How the next token is chosen.
    pub sampling: SamplerConfig,
    /// Worker threads splitting each step.
    pub threads: usize,
    /// Where the forward pass runs.
    pub device: Device,
    /// The grammar the output follows, at its start.
    pub constraint: Option<Constraint>,
    /// Prompt-lookup drafts per step (0: off).
    pub lookup: usize,
}

/// What it produced.
#[derive(Debug, Clone, Default)]
pub struct RunOutput {
    pub ids: Vec<u32>,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    /// Top K after the last prompt token.
    pub top_logits: Vec<(u32, f32)>,
    /// Top K after every prompt token (with `logits_all`).
    pub top_logits_all: Option<Vec<Vec<(u32, f32)>>>,
    /// `top_logits` as log-probabilities ([`top_logprobs`]).
    pub top_logprobs: Vec<(u32, f32)>,
    /// `top_logits_all` as log-probabilities.
    pub top_logprobs_all: Option<Vec<Vec<(u32, f32)>>>,
    /// With `top_logits` K >= 1: each generated token's log-probability and
    /// the K most likely tokens at its step.
    pub logprobs: Vec<TokenLogprobs>,
    /// Bytes of the session arena (KV cache and scratch).
    pub arena_bytes: usize,
    /// What ran the arithmetic: the kernel table or the GPU adapter.
    pub engine: String,
    /// Decode speed over each run of 500 generated tokens.
    pub decode_tok_s_per_500: Vec<f64>,
    /// Tokens drafted by prompt lookup, and how many were kept.
    pub lookup: (usize, usize),
}

/// The index of the largest logit; ties go to the lowest id, NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// The `k` largest logits, largest first; ties go to the lower id, NaN is skipped.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return top;
    }
    for (i, &v) in logits.iter().enumerate() {
        if v.is_nan() || (top.len() == k && v <= top[k - 1].1) {
            continue;
        }
        let at = top.partition_point(|&(_, t)| t >= v);
        top.insert(at, (i as u32, v));
        top.truncate(k);
    }
    top
}

/// `ln Σ exp(l)` over the logits, with the largest subtracted first and the
/// sum in f64, in index order (so one set of logits gives one value). NaN
/// logits are left out.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits
        .iter()
        .filter(|v| !v.is_nan())
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if !max.is_finite() {
        return max as f64;
    }
    let m = max as f64;
    let sum: f64 = logits
        .iter()
        .filter(|v| !v.is_nan())
        .map(|&v| (v as f64 - m).exp())
        .sum();
    m + sum.ln()
}

/// A log-probability from a logit and its step's [`log_sum_exp`].
fn logprob(logit: f32, lse: f64) -> f32 {
    (logit as f64 - lse) as f32
}

/// The `k` most likely tokens with their log-probabilities: log-softmax of
/// the raw logits, before any sampling transform (temperature, penalties,
/// truncation); the order and ties of [`top_k`].
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let lse = log_sum_exp(logits);
    top_k(logits, k)
        .into_iter()
        .map(|(i, l)| (i, logprob(l, lse)))
        .collect()
}

/// One generated token's log-probability and the `k` most likely tokens at
/// its step (what `ember run --top-logits K --json` reports as `logprobs`,
/// and `ember serve` as `logprobs` / `top_logprobs`).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// [`TokenLogprobs`] of token `id` drawn from `logits`.
pub fn token_logprobs(logits: &[f32], id: u32, k: usize) -> TokenLogprobs {
    let lse = log_sum_exp(logits);
    let l = logits.get(id as usize).copied().unwrap_or(f32::NAN);
    TokenLogprobs {
        id,
        logprob: logprob(l, lse),
        top: top_k(logits, k)
            .into_iter()
            .map(|(i, l)| (i, logprob(l, lse)))
            .collect(),
    }
}

/// Runs the prompt, then generation; `on_token` sees each new id as it comes
/// and returns false to stop (a stop string was completed).
pub fn generate(
    model: &Llama,
    kernels: Kernels,
    opt: &RunOptions,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<RunOutput> {
    let mut sampler = Sampler::new(opt.sampling)?;
    let mut scratch = vec![Candidate::default(); Sampler::scratch_len(model.config.vocab_size)];
    let pool = crate::pool::Pool::new(opt.threads)?;
    let plan = MemoryPlan::with_threads(&model.config, opt.kv, opt.batch, opt.threads)?;
    let mut arena = Vec::new();
    let mut s = open_one(
        model,
        kernels,
        opt.device,
        plan,
        opt.logits_all || opt.lookup > 0,
        &mut arena,
        &pool,
    )?;
    let mut out = RunOutput {
        arena_bytes: if opt.device == Device::Cpu {
            plan.bytes()
        } else {
            0
        },
        engine: s.engine_name(),
        ..Default::default()
    };
    // Nothing to generate past the cache: say so before spending any time.
    s.reserve(opt.prompt_ids.len() + opt.n_predict.saturating_sub(1))?;

    let t0 = Instant::now();
    if opt.logits_all {
        let mut all = Vec::with_capacity(opt.prompt_ids.len());
        let mut all_lp = Vec::with_capacity(opt.prompt_ids.len());
        s.forward_all(&opt.prompt_ids, &mut |_, l| {
            all.push(top_k(l, opt.top_logits));
            all_lp.push(top_logprobs(l, opt.top_logits));
        })?;
        out.top_logits_all = Some(all);
        out.top_logprobs_all = Some(all_lp);
    } else {
        // Greedy with nothing reported from the logits: where they are
        // on a GPU, only the chosen token comes back.
        if opt.sampling.is_greedy()
            && opt.top_logits == 0
            && opt.constraint.is_none()
            && opt.lookup == 0
        {
            s.read_logits(false);
        }
        s.forward(&opt.prompt_ids)?;
    }
    let prefill = t0.elapsed().as_secs_f64();
    out.prefill_tok_s = opt.prompt_ids.len() as f64 / prefill.max(1e-9);
    out.top_logits = top_k(s.logits(), opt.top_logits);
    out.top_logprobs = top_logprobs(s.logits(), opt.top_logits);

    for &id in &opt.prompt_ids {
        sampler.accept(id);
    }
    let mut logprobs = Vec::new();
    let mut constraint = opt.constraint.clone();
    let decoded = continue_sampling(
        &mut s,
        &mut sampler,
        constraint.as_mut(),
        &mut scratch,
        &Decode {
            n_predict: opt.n_predict,
            eos: &opt.eos,
            ignore_eos: opt.ignore_eos,
            lookup: opt.lookup,
            context: &opt.prompt_ids,
        },
        &mut |id, logits| {
            if opt.top_logits > 0 {
                logprobs.push(token_logprobs(logits, id, opt.top_logits));
            }
            on_token(id)
        },
    )?;
    out.logprobs = logprobs;
    out.ids = decoded.ids;
    out.decode_tok_s = decoded.tok_s;
    out.decode_tok_s_per_500 = decoded.per_500;
    out.lookup = (decoded.drafted, decoded.accepted);
    Ok(out)
}

/// How [`continue_sampling`] decodes.
#[derive(Debug, Clone, Copy)]
pub struct Decode<'a> {
    /// At most this many tokens.
    pub n_predict: usize,
    /// Ids that end generation (returned but not fed back).
    pub eos: &'a [u32],
    /// Go on past `eos`.
    pub ignore_eos: bool,
    /// Draft up to this many tokens by prompt lookup and check them in one
    /// batched step (0: off).
    pub lookup: usize,
    /// The tokens already fed (prompt, conversation): where drafts are looked up.
    pub context: &'a [u32],
}

/// What [`continue_sampling`] produced.
#[derive(Debug, Clone, Default)]
pub struct Decoded {
    pub ids: Vec<u32>,
    /// Generated tokens per second after the first.
    pub tok_s: f64,
    /// The same over each run of 500 tokens.
    pub per_500: Vec<f64>,
    /// Tokens drafted by prompt lookup, and how many of them were kept.
    pub drafted: usize,
    pub accepted: usize,
}

/// Generation from the session's current logits: up to `d.n_predict` ids,
/// stopping after an id in `d.eos` (returned but not fed back) unless
/// `d.ignore_eos`, when a grammar is complete, or when `on_token` (given each
/// id with the logits it was drawn from) returns false. Every id but the
/// last is fed back; the cache holds nothing more.
pub fn continue_sampling(
    s: &mut One,
    sampler: &mut Sampler,
    constraint: Option<&mut Constraint>,
    scratch: &mut [Candidate],
    d: &Decode,
    on_token: &mut dyn FnMut(u32, &[f32]) -> bool,
) -> Result<Decoded> {
    if d.lookup > 0 && d.n_predict > 1 {
        return continue_lookup(s, sampler, constraint, scratch, d, on_token);
    }
    let mut constraint = constraint;
    let t1 = Instant::now();
    let mut ids = Vec::new();
    let mut steps = 0usize;
    let mut per_500 = Vec::new();
    let mut lap = Instant::now();
    for i in 0..d.n_predict {
        let (next, finished) = draw(
            sampler,
            constraint.as_deref_mut(),
            s.logits(),
            s.greedy_id(),
            scratch,
        )?;
        ids.push(next);
        let go_on = on_token(next, s.logits());
        if !go_on || (!d.ignore_eos && d.eos.contains(&next)) || finished || i + 1 == d.n_predict {
            break;
        }
        s.forward(&[next])?;
        steps += 1;
        if steps.is_multiple_of(500) {
            per_500.push(500.0 / lap.elapsed().as_secs_f64().max(1e-9));
            lap = Instant::now();
        }
    }
    let secs = t1.elapsed().as_secs_f64();
    let tok_s = if steps > 0 {
        steps as f64 / secs.max(1e-9)
    } else {
        0.0
    };
    Ok(Decoded {
        ids,
        tok_s,
        per_500,
        ..Default::default()
    })
}

/// The next token from `logits` (or the device's greedy pick where the
/// logits stayed there), recorded by the sampler and the grammar; and
/// whether the grammar is then complete.
fn draw(
    sampler: &mut Sampler,
    constraint: Option<&mut Constraint>,
    logits: &[f32],
    greedy: Option<u32>,
    scratch: &mut [Candidate],
) -> Result<(u32, bool)> {
    let Some(c) = constraint else {
        let next = match greedy {
            Some(id) => id,
            None => sampler.sample(logits, scratch)?,
        };
        sampler.accept(next);
        return Ok((next, false));
    };
    let next = c.pick(sampler, logits, scratch)?;
    sampler.accept(next);
    c.accept(next)?;
    Ok((next, c.finished()))
}

/// The longest n-gram drafts look for (then shorter ones, down to 2).
pub const LOOKUP_NGRAM: usize = 3;

/// Up to `n` tokens that followed the most recent earlier occurrence of the
/// last few tokens of `hist` (the longest n-gram that occurs, from
/// [`LOOKUP_NGRAM`] down to 2), into `out`.
pub fn lookup_draft(hist: &[u32], n: usize, out: &mut Vec<u32>) {
    out.clear();
    if n == 0 {
        return;
    }
    for k in (2..=LOOKUP_NGRAM).rev() {
        if hist.len() <= k {
            continue;
        }
        let key = &hist[hist.len() - k..];
        if let Some(j) = (0..hist.len() - k).rev().find(|&j| &hist[j..j + k] == key) {
            let from = j + k;
            out.extend_from_slice(&hist[from..(from + n).min(hist.len())]);
            return;
        }
    }
}

/// [`continue_sampling`] with prompt-lookup drafts: each token is drawn as
/// plain decoding draws it, from the logits after the tokens before it,
/// with the same sampler and the same draws; a drafted token that the draw
/// confirms was already fed in the same step, and its logits (the same
/// bits as a one-token step's: drafts take the decode arithmetic) serve
/// the next draw. The first draw
/// that differs from its draft ends the batch: the cache drops the rest.
fn continue_lookup(
    s: &mut One,
    sampler: &mut Sampler,
    mut constraint: Option<&mut Constraint>,
    scratch: &mut [Candidate],
    d: &Decode,
    on_token: &mut dyn FnMut(u32, &[f32]) -> bool,
) -> Result<Decoded> {
    let t1 = Instant::now();
    let start = s.pos();
    let mut hist = d.context.to_vec();
    let mut out = Decoded::default();
    let mut lap = Instant::now();
    let vocab = s.logits().len();
    // rows[r]: the logits after the r-th token of the last batch.
    let mut rows: Vec<f32> = s.logits().to_vec();
    let mut row = 0usize;
    let mut drafts: Vec<u32> = Vec::new();
    // The token to feed and its drafts, one batched step.
    let mut batch: Vec<u32> = Vec::new();
    let mut confirmed = 0usize;
    // Where the last batch started.
    let mut base = s.pos();
    loop {
        let logits = &rows[row * vocab..(row + 1) * vocab];
        let (next, finished) = draw(sampler, constraint.as_deref_mut(), logits, None, scratch)?;
        out.ids.push(next);
        hist.push(next);
        let go_on = on_token(next, logits);
        let n = out.ids.len();
        if n.is_multiple_of(500) {
            out.per_500
                .push(500.0 / lap.elapsed().as_secs_f64().max(1e-9));
            lap = Instant::now();
        }
        if !go_on || (!d.ignore_eos && d.eos.contains(&next)) || finished || n == d.n_predict {
            break;
        }
        if confirmed < drafts.len() && drafts[confirmed] == next {
            // Drafted and fed already: its logits are the next row.
            confirmed += 1;
            out.accepted += 1;
            row = confirmed;
            continue;
        }
        // `next` is new: drop what the cache holds past the confirmed
        // drafts, then feed it with fresh drafts in one batch.
        if s.pos() > base + 1 + confirmed {
            s.truncate(base + 1 + confirmed)?;
        }
        let room = d.lookup.min(d.n_predict - n);
        if s.evicted() {
            drafts.clear(); // a streaming cache cannot take rejected drafts back
        } else {
            lookup_draft(&hist, room, &mut drafts);
        }
        while !drafts.is_empty() && s.reserve(1 + drafts.len()).is_err() {
            drafts.pop();
        }
        out.drafted += drafts.len();
        base = s.pos();
        batch.clear();
        batch.push(next);
        batch.extend_from_slice(&drafts);
        rows.resize(batch.len() * vocab, 0.0);
        s.forward_drafts(&batch, &mut |i, l| {
            rows[i * vocab..(i + 1) * vocab].copy_from_slice(l)
        })?;
        row = 0;
        confirmed = 0;
    }
    // Every id but the last fed, nothing else.
    let keep = start + out.ids.len() - 1;
    if s.pos() > keep {
        s.truncate(keep)?;
    }
    let secs = t1.elapsed().as_secs_f64();
    if out.ids.len() > 1 {
        out.tok_s = (out.ids.len() - 1) as f64 / secs.max(1e-9);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_drafts_follow_the_latest_longest_match() {
        let mut out = Vec::new();
        // No earlier "2 6 7"; "6 7" occurred twice, the latest followed by 8 9 2.
        lookup_draft(&[5, 6, 7, 1, 5, 6, 7, 8, 9, 2, 6, 7], 3, &mut out);
        assert_eq!(out, [8, 9, 2]);
        lookup_draft(&[5, 6, 7, 1, 5, 6, 7, 8, 9, 2, 6, 7], 1, &mut out);
        assert_eq!(out, [8]);
        // No trigram: the bigram "3 4" then.
        lookup_draft(&[1, 3, 4, 9, 9, 2, 3, 4], 4, &mut out);
        assert_eq!(out, [9, 9, 2, 3]);
        // Single tokens never draft.
        lookup_draft(&[1, 2, 3, 1], 4, &mut out);
        assert!(out.is_empty());
        lookup_draft(&[1, 2, 1, 2], 0, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn top_k_orders_and_breaks_ties_by_id() {
        let l = [1.0, 3.0, f32::NAN, 3.0, -1.0, 2.0];
        assert_eq!(top_k(&l, 3), vec![(1, 3.0), (3, 3.0), (5, 2.0)]);
        assert_eq!(argmax(&l), 1);
        assert_eq!(top_k(&l, 0), vec![]);
        assert_eq!(top_k(&l, 10).len(), 5);
    }

    #[test]
    fn logprobs_are_log_softmax_of_the_raw_logits() {
        let l = [1.0f32, 3.0, f32::NAN, 3.0, -1.0, 2.0];
        let finite = [1.0f64, 3.0, 3.0, -1.0, 2.0];
        let z: f64 = finite.iter().map(|v| v.exp()).sum();
        let lse = log_sum_exp(&l);
        assert!((lse - z.ln()).abs() < 1e-12, "{lse} vs {}", z.ln());
        let t = token_logprobs(&l, 5, 2);
        assert_eq!(t.id, 5);
        assert!((t.logprob as f64 - (2.0 - z.ln())).abs() < 1e-6);
        assert_eq!(t.top.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(t.top[0].1, t.top[1].1);
        assert_eq!(top_logprobs(&l, 2), t.top);
        assert!(top_logprobs(&l, 0).is_empty());
        // Probabilities sum to one.
        let all: f64 = top_logprobs(&l, 6).iter().map(|p| (p.1 as f64).exp()).sum();
        assert!((all - 1.0).abs() < 1e-6, "{all}");
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 3]), f64::NEG_INFINITY);
    }
}
