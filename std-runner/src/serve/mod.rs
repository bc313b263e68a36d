//! `ember serve`: an OpenAI-compatible HTTP server with continuous batching.
//!
//! HTTP runs on tokio + axum; the model runs on one engine thread (with the
//! worker pool under it). Handlers parse and check a request, tokenize it and
//! queue it; the engine advances every active request in one batched forward
//! pass per step.
//!
//! | module | what |
//! | --- | --- |
//! | this one | the flags, start-up (model, memory, engine thread, listener), shutdown |
//! | `api` | OpenAI's request and response types, request parsing and checks |
//! | `http` | axum routes, API keys, the request handler, whole and streamed (SSE) answers, tokenize |
//! | `engine` | the continuous batching engine: slots, steps, sampling, log-probabilities |
//! | `metrics` | `/metrics` in the Prometheus text format |

mod api;
mod engine;
mod http;
mod metrics;

pub use api::{
    parse_detokenize, parse_request, parse_tokenize, Prompt, Request, TokenizeRequest,
    MAX_TOP_LOGPROBS,
};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use clap::Args;
use ember_core::model::{Llama, MemoryPlan};
use ember_core::tokenizer::Tokenizer;
use ember_core::KvOptions;

use crate::args::{context, ExecArgs, KvTypeArg, MAX_DEFAULT_SERVE_CTX};
use crate::device::Device;
use crate::load::{load_model, ModelFile};
use crate::template::TemplateArgs;
use engine::{engine_main, EngineConfig, Job};
use http::{router, Shared};
use metrics::Metrics;

/// `ember serve` flags.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// GGUF model file [default: SmolLM2-135M-Instruct, fetched once].
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests generated at once (slots, each with its own KV cache).
    #[arg(long, short = 'p', default_value_t = 4)]
    pub parallel: usize,
    /// KV cache capacity of each slot, in tokens (prompt plus reply)
    /// [default: the model's context length, at most 2048].
    #[arg(long, short = 'c')]
    pub ctx: Option<usize>,
    /// Prompt tokens a slot reads per step (longer prompts take several
    /// steps, so other streams keep flowing).
    #[arg(long, short = 'b', default_value_t = 64)]
    pub batch: usize,
    /// Requests that may wait for a slot; beyond them the server answers 503.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Largest `max_tokens` a request may ask for.
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body: usize,
    /// Draft up to N tokens per generating request and step by prompt
    /// lookup (the latest earlier match of its last tokens) and check them
    /// in the same step: the same reply, faster where it repeats its
    /// context (0: off).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub lookup: usize,
    /// Keep keys and values in one pool of this many MiB, in blocks that
    /// requests take as they grow (paged KV), instead of a whole --ctx cache
    /// per slot: many short requests fit where few whole caches would.
    /// Set --parallel to the most requests to run at once (CPU only).
    #[arg(long, value_name = "MIB")]
    pub kv_memory: Option<usize>,
    /// Positions per block of the --kv-memory pool.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub kv_block: usize,
    /// Element type of cached keys and values.
    #[arg(long, value_enum, default_value_t = KvTypeArg::F16)]
    pub kv_type: KvTypeArg,
    /// An API key clients must send as `Authorization: Bearer KEY` on every
    /// route but /health (repeat for several keys).
    #[arg(long, value_name = "KEY")]
    pub api_key: Vec<String>,
    /// A file of API keys, one a line (blank lines are skipped).
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Seconds a request may take from arrival to its last token; past it the
    /// request ends with an error and its slot is freed (0: no limit).
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub timeout: u64,
    #[command(flatten)]
    pub exec: ExecArgs,
    #[command(flatten)]
    pub template: TemplateArgs,
}

/// Starts the server and serves until SIGTERM or Ctrl-C.
pub fn cmd_serve(a: ServeArgs) -> Result<()> {
    if a.parallel == 0 || a.parallel > 256 {
        bail!("--parallel must be in 1..=256 (got {})", a.parallel);
    }
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if a.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    if a.max_body < 64 {
        bail!("--max-body must be at least 64 bytes");
    }
    let keys = api_keys(&a.api_key, a.api_key_file.as_deref())?;
    let kernels = a.exec.kernels()?;
    let threads = a.exec.threads()?;
    // The model lives as long as the process: its file, tokenizer and
    // weights are leaked so that every thread may borrow them.
    let file: &'static mut ModelFile = Box::leak(Box::new(load_model(&a.model, &a.exec)?));
    let m = file.parse(&a.exec)?;
    let (path, packs) = (m.path, m.packs);
    let tok: &'static Tokenizer<'static> = Box::leak(Box::new(
        m.tokenizer
            .context("the server needs the model's tokenizer")?,
    ));
    let template = a.template.load(&m.gguf, tok)?;
    let template_origin = template.origin().to_string();
    let model: &'static Llama<'static> = Box::leak(Box::new(m.model));
    let ctx = context(a.ctx, model, MAX_DEFAULT_SERVE_CTX);
    if ctx < 2 {
        bail!("--ctx must be at least 2");
    }
    let kv = KvOptions::dense(ctx).with_type(a.kv_type.into());
    if a.lookup > 64 {
        bail!("--lookup must be at most 64 (got {})", a.lookup);
    }
    // Each step: one token per generating slot (and its drafts) plus one
    // prompt chunk.
    let max_batch = a.batch + a.parallel * (1 + a.lookup);
    let plan = MemoryPlan::batched(&model.config, kv, max_batch, threads, a.parallel)?;
    let paged = match a.kv_memory {
        None => None,
        Some(_) if a.exec.device != Device::Cpu => {
            bail!("--kv-memory (paged KV) runs on the CPU engine; the GPU keeps a cache per slot")
        }
        Some(mib) => {
            if a.kv_block == 0 || a.kv_block > 4096 {
                bail!("--kv-block must be in 1..=4096 (got {})", a.kv_block);
            }
            let c = &model.config;
            let row = kv
                .ty
                .row_bytes(c.kv_dim())
                .context("the KV type cannot hold this model's rows")?;
            let bb = ember_core::kv_cache::KvPool::block_bytes(a.kv_block, c.n_layers, row)
                .context("--kv-block is too large")?;
            let blocks =
                (mib as u128 * (1 << 20) / (2 * bb as u128)).min(u32::MAX as u128) as usize;
            let win = plan.windows(c);
            let one = ember_core::kv_cache::KvCache::table_len(&kv, &win, a.kv_block);
            if blocks < one {
                bail!(
                    "--kv-memory {mib} MiB holds {blocks} blocks of {} positions; one --ctx {ctx} request needs {one} ({:.1} MiB)",
                    a.kv_block,
                    (one * 2 * bb) as f64 / (1 << 20) as f64
                );
            }
            Some((blocks, a.kv_block))
        }
    };
    let blocks_free = Arc::new(AtomicUsize::new(paged.map_or(0, |p| p.0)));
    let model_id = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ember".into());

    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = mpsc::channel::<std::result::Result<String, String>>();
    let waiting = Arc::new(AtomicUsize::new(0));
    let busy = Arc::new(AtomicUsize::new(0));
    let stop_engine = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(Metrics::new());
    let engine = {
        let waiting = waiting.clone();
        let busy = busy.clone();
        let stop = stop_engine.clone();
        let cfg = EngineConfig {
            plan,
            kernels,
            device: a.exec.device,
            threads,
            chunk: a.batch,
            lookup: a.lookup,
            paged,
            blocks_free: blocks_free.clone(),
            waiting,
            busy,
            stop,
            metrics: metrics.clone(),
        };
        std::thread::Builder::new()
            .name("ember-engine".into())
            .spawn(move || engine_main(model, tok, cfg, jobs_rx, ready_tx))
            .context("cannot start the engine thread")?
    };
    // The slots' memory is allocated before the server listens: a size the
    // machine cannot give is an error at start.
    let engine_name = match ready_rx.recv() {
        Ok(Ok(name)) => name,
        Ok(Err(e)) => bail!("{e}"),
        Err(_) => {
            return match engine.join() {
                Ok(Err(e)) => Err(e),
                _ => bail!("the engine thread stopped at start"),
            }
        }
    };
    let shared = Arc::new(Shared {
        tok,
        template,
        model_id,
        ctx,
        max_tokens: a.max_tokens,
        max_body: a.max_body,
        queue: a.queue,
        jobs: Mutex::new(jobs_tx),
        waiting,
        busy,
        slots: a.parallel,
        blocks: paged.map(|p| (blocks_free.clone(), p.0)),
        accepting: AtomicBool::new(true),
        next_id: AtomicU64::new(1),
        keys,
        timeout: (a.timeout > 0).then(|| std::time::Duration::from_secs(a.timeout)),
        metrics,
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let addr = format!("{}:{}", a.host, a.port);
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local: SocketAddr = listener.local_addr()?;
        eprintln!(
            "ember: serving {} on http://{local} ({} slots of {} tokens, {engine_name}, {}; chat template: {template_origin}; {})",
            shared.model_id,
            a.parallel,
            ctx,
            match (a.exec.device, paged) {
                (Device::Cpu, Some((blocks, block))) => format!(
                    "{threads} threads, paged KV: {blocks} blocks of {block} positions ({} MiB), {:.1} MiB of repacked weights",
                    a.kv_memory.unwrap_or(0),
                    packs.bytes() as f64 / (1 << 20) as f64
                ),
                (Device::Cpu, None) => format!(
                    "{threads} threads, {:.1} MiB of KV cache, {:.1} MiB of repacked weights",
                    (plan.kv_bytes() * a.parallel) as f64 / (1 << 20) as f64,
                    packs.bytes() as f64 / (1 << 20) as f64
                ),
                (Device::Gpu, _) => format!(
                    "{:.1} MiB of f32 KV cache on the GPU",
                    (2 * a.parallel * ctx * model.config.kv_dim() * model.config.n_layers * 4) as f64
                        / (1 << 20) as f64
                ),
            },
            match shared.keys.len() {
                0 => "no API key".to_string(),
                1 => "1 API key".to_string(),
                n => format!("{n} API keys"),
            }
        );
        let app = router(shared.clone());
        let sh = shared.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                sh.accepting.store(false, Ordering::SeqCst);
                eprintln!("ember: shutting down: finishing requests in flight");
            })
            .await
            .context("the server failed")
    });
    stop_engine.store(true, Ordering::SeqCst);
    drop(shared);
    match engine.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => bail!("the engine thread panicked"),
    }
    result?;
    eprintln!("ember: stopped");
    Ok(())
}

/// The keys from `--api-key` and `--api-key-file`: none means open access.
fn api_keys(given: &[String], file: Option<&Path>) -> Result<Vec<Vec<u8>>> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for k in given {
        if k.trim().is_empty() {
            bail!("--api-key must not be empty");
        }
        keys.push(k.trim().as_bytes().to_vec());
    }
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read --api-key-file {}", f.display()))?;
        let before = keys.len();
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| l.as_bytes().to_vec()),
        );
        if keys.len() == before {
            bail!("--api-key-file {} holds no key", f.display());
        }
    }
    Ok(keys)
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
