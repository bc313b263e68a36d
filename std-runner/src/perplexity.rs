//! `ember perplexity`: how well the model predicts a text.
//!
//! - **Dense** (no `--window`): the text is cut into chunks of `--ctx` tokens,
//!   each evaluated from an empty cache, and every prediction in the chunk is
//!   scored. With `--second-half`, only the second half of each chunk is scored
//!   (every scored token then has at least `ctx/2` tokens of context), as
//!   llama.cpp's `llama-perplexity` does, for numbers comparable with it.
//! - **Streaming** (`--window W --sinks S`): the whole text goes through one
//!   ring cache of `S + W` positions, token by token once it is full, and every
//!   prediction is scored, as the StreamingLLM paper evaluates.
//!
//! Perplexity is `exp(mean negative log-likelihood)`, accumulated in f64.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use ember_core::model::MemoryPlan;

use crate::device::{open_one, One};
use ember_core::tokenizer::EncodeOptions;
use serde_json::json;

use crate::args::{ExecArgs, KvArgs};
use crate::load::load_model;

#[derive(Debug, Args)]
pub struct PerplexityArgs {
    /// UTF-8 text file to score.
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    /// GGUF model file, or a model fetched once into $EMBER_HOME by name (smollm2-135m, gemma3-270m) [default: smollm2-135m]
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub kv: KvArgs,
    /// Dense mode: score only the second half of each chunk, as llama.cpp's
    /// llama-perplexity does (each scored token has at least ctx/2 of context).
    #[arg(long)]
    pub second_half: bool,
    /// Score at most this many tokens of the text (from its start).
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,
    /// Prompt tokens per forward chunk.
    #[arg(long, short = 'b', default_value_t = 512)]
    pub batch: usize,
    #[command(flatten)]
    pub exec: ExecArgs,
    /// Print {"ppl":x,"tokens":N,...} on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Negative log-likelihood of `next` under `logits` (f64).
pub fn nll(logits: &[f32], next: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    lse - logits.get(next as usize).copied().unwrap_or(f32::NAN) as f64
}

/// Mean NLL and count over the scored predictions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Score {
    pub sum: f64,
    pub n: usize,
}

impl Score {
    pub fn ppl(&self) -> f64 {
        (self.sum / self.n.max(1) as f64).exp()
    }
}

/// Dense evaluation: chunks of `ctx`, each from an empty cache; predictions
/// from chunk index `first` on are scored (0: all; `ctx / 2`: llama.cpp's).
pub fn dense(
    s: &mut One,
    tokens: &[u32],
    ctx: usize,
    first: usize,
    progress: &mut dyn FnMut(usize, Score),
) -> Result<Score> {
    dense_each(s, tokens, ctx, first, progress, &mut |_, _| {})
}

/// [`dense`], reporting every scored token as `each(i, nll)`: the negative
/// log-likelihood of predicting token `i` of the text.
pub fn dense_each(
    s: &mut One,
    tokens: &[u32],
    ctx: usize,
    first: usize,
    progress: &mut dyn FnMut(usize, Score),
    each: &mut dyn FnMut(usize, f64),
) -> Result<Score> {
    let mut score = Score::default();
    for (ci, chunk) in tokens.chunks_exact(ctx).enumerate() {
        s.reset();
        s.forward_all_from(&chunk[..ctx - 1], first, &mut |j, l| {
            let x = nll(l, chunk[j + 1]);
            each(ci * ctx + j + 1, x);
            score.sum += x;
            score.n += 1;
        })?;
        progress((ci + 1) * ctx, score);
    }
    Ok(score)
}

/// Streaming evaluation: every prediction over one ring cache.
pub fn streaming(
    s: &mut One,
    tokens: &[u32],
    progress: &mut dyn FnMut(usize, Score),
) -> Result<Score> {
    streaming_each(s, tokens, progress, &mut |_, _| {})
}

/// [`streaming`], reporting every scored token as `each(i, nll)`.
pub fn streaming_each(
    s: &mut One,
    tokens: &[u32],
    progress: &mut dyn FnMut(usize, Score),
    each: &mut dyn FnMut(usize, f64),
) -> Result<Score> {
    let mut score = Score::default();
    s.reset();
    let step = 1024;
    for (ci, part) in tokens[..tokens.len() - 1].chunks(step).enumerate() {
        let base = ci * step;
        s.forward_all(part, &mut |j, l| {
            let x = nll(l, tokens[base + j + 1]);
            each(base + j + 1, x);
            score.sum += x;
            score.n += 1;
        })?;
        progress(base + part.len(), score);
    }
    Ok(score)
}

pub fn cmd_perplexity(a: PerplexityArgs) -> Result<()> {
    let bytes =
        std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not valid UTF-8 (invalid byte at offset {})",
            a.file.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let mut file = load_model(&a.model, &a.exec)?;
    let m = file.parse(&a.exec)?;
    let model = &m.model;
    let tok = m.tokenizer?;
    let mut tokens = tok
        .encode(&text, EncodeOptions::default())
        .context("tokenizing the text")?;
    if let Some(n) = a.max_tokens {
        tokens.truncate(n);
    }
    let streaming_mode = a.kv.window.is_some();
    if streaming_mode && a.second_half {
        bail!("--second-half is for dense mode (no --window)");
    }
    let kv = a.kv.options(model, streaming_mode)?;
    if !streaming_mode && tokens.len() < kv.capacity {
        bail!(
            "the text has {} tokens, fewer than one --ctx {} chunk",
            tokens.len(),
            kv.capacity
        );
    }
    if tokens.len() < 2 {
        bail!("the text has fewer than 2 tokens");
    }
    let threads = a.exec.threads()?;
    let pool = crate::pool::Pool::new(threads)?;
    let plan = MemoryPlan::with_threads(&model.config, kv, a.batch, threads)?;
    if streaming_mode && a.exec.device == crate::device::Device::Gpu {
        bail!("the GPU engine keeps dense caches: streaming evaluation (--window, --sinks) runs on --device cpu");
    }
    let mut arena = Vec::new();
    let mut s = open_one(
        model,
        m.kernels,
        a.exec.device,
        plan,
        true,
        &mut arena,
        &pool,
    )?;
    let t0 = Instant::now();
    let total = if streaming_mode {
        tokens.len()
    } else {
        tokens.len() / kv.capacity * kv.capacity
    };
    let mut progress = |done: usize, sc: Score| {
        let mut e = std::io::stderr().lock();
        let _ = write!(
            e,
            "\rember: {done}/{total} tokens, ppl {:.4} ({:.0} tok/s)   ",
            sc.ppl(),
            done as f64 / t0.elapsed().as_secs_f64().max(1e-9)
        );
    };
    let score = if streaming_mode {
        streaming(&mut s, &tokens, &mut progress)?
    } else {
        let first = if a.second_half { kv.capacity / 2 } else { 0 };
        dense(&mut s, &tokens, kv.capacity, first, &mut progress)?
    };
    eprintln!();
    let mode = match (streaming_mode, a.second_half) {
        (true, _) => "streaming",
        (false, false) => "dense",
        (false, true) => "dense-second-half",
    };
    eprintln!(
        "ember: {mode} perplexity {:.4} over {} scored tokens ({} in the text; cache {} = {} sinks + {} window, {}); {:.1} s",
        score.ppl(),
        score.n,
        tokens.len(),
        kv.capacity,
        kv.sinks,
        kv.window(),
        kv.ty.name(),
        t0.elapsed().as_secs_f64()
    );
    if a.json {
        println!(
            "{}",
            json!({
                "ppl": score.ppl(),
                "tokens": score.n,
                "text_tokens": tokens.len(),
                "mode": mode,
                "ctx": kv.capacity,
                "sinks": kv.sinks,
                "window": kv.window(),
                "kv_type": kv.ty.name(),
            })
        );
    } else {
        println!("{:.4}", score.ppl());
    }
    Ok(())
}
