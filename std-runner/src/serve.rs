//! `ember serve`: an OpenAI-compatible HTTP server with continuous batching.
//!
//! HTTP runs on tokio + axum; the model runs on one engine thread (with the
//! worker pool under it). Handlers parse and check a request, tokenize it and
//! queue it; the engine keeps `--parallel` slots, each with its own KV cache
//! from a pool allocated at start. Every step advances all active slots in
//! one batched forward pass ([`ember_core::model::Batch`]): one token for each
//! slot that is generating, and a prompt chunk of up to `--batch` tokens for
//! slots still reading their prompt, so a long prompt never stalls the others
//! for more than one chunk. Requests join at the next step and leave as soon
//! as they finish or their client goes away.
//!
//! A sequence's tokens are the same whoever else is in the batch: the core
//! gives each sequence of a step exactly the numbers it gets alone, and each
//! request's prompt is cut into the same chunks whatever the traffic.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Args;
use ember_core::gguf::Gguf;
use ember_core::kernels::Kernels;
use ember_core::kv_cache::KvCache;
use ember_core::model::{Batch, Llama, MemoryPlan, Seq};
use ember_core::sampling::{Candidate, Sampler, SamplerConfig, MAX_PENALTY_WINDOW};
use ember_core::tokenizer::{StreamDecoder, Tokenizer};
use ember_core::KvOptions;
use serde_json::{json, Value};

use crate::cli::{ExecArgs, KvTypeArg};
use crate::text::{ChatTemplate, Message, StopText};

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
    /// Element type of cached keys and values.
    #[arg(long, value_enum, default_value_t = KvTypeArg::F16)]
    pub kv_type: KvTypeArg,
    #[command(flatten)]
    pub exec: ExecArgs,
}

/// What the engine tells a request's handler.
#[derive(Debug)]
enum Ev {
    /// Text to append (already cut at stop strings).
    Text(String),
    /// The end: why, and the token counts.
    Done {
        finish: &'static str,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The engine could not run the request.
    Fail(String),
}

/// A checked request, ready for a slot.
struct Job {
    prompt: Vec<u32>,
    sampling: SamplerConfig,
    max_tokens: usize,
    stops: Vec<String>,
    ignore_eos: bool,
    tx: tokio::sync::mpsc::UnboundedSender<Ev>,
}

/// State the handlers share.
struct Shared {
    tok: &'static Tokenizer<'static>,
    template: ChatTemplate,
    model_id: String,
    ctx: usize,
    max_tokens: usize,
    max_body: usize,
    queue: usize,
    jobs: Mutex<Sender<Job>>,
    /// Requests queued but not yet in a slot.
    waiting: Arc<AtomicUsize>,
    /// Slots generating now.
    busy: Arc<AtomicUsize>,
    slots: usize,
    accepting: AtomicBool,
    next_id: AtomicU64,
}

/// An OpenAI-style error answer.
struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl ApiError {
    fn bad(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }});
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

type ApiResult = std::result::Result<Response, ApiError>;

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

/// The parts of a request body the server uses, checked.
#[derive(Debug, Clone)]
pub struct Request {
    pub messages: Vec<Message>,
    pub prompt: Prompt,
    pub max_tokens: Option<usize>,
    pub sampling: SamplerConfig,
    pub stops: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Keep generating past end-of-generation tokens (llama.cpp's server
    /// field; benchmarks use it).
    pub ignore_eos: bool,
}

/// A completion prompt: text or token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    None,
    Text(String),
    Ids(Vec<u32>),
}

/// Most stop strings a request may give.
const MAX_STOPS: usize = 16;
/// Most chat messages a request may give.
const MAX_MESSAGES: usize = 4096;

/// Parses and checks a request body (chat when `chat`, else completion).
/// Every problem is a message naming the field; unknown fields are ignored,
/// as OpenAI clients send more than a server needs.
pub fn parse_request(
    body: &[u8],
    chat: bool,
    seed: u64,
) -> std::result::Result<Request, (String, Option<&'static str>)> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| (format!("the body is not valid JSON: {e}"), None))?;
    let o = v
        .as_object()
        .ok_or_else(|| ("the body must be a JSON object".to_string(), None))?;
    let bad = |p: &'static str, m: &str| (format!("'{p}' {m}"), Some(p));
    let num = |p: &'static str| -> std::result::Result<Option<f64>, _> {
        match o.get(p) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(_) => Err(bad(p, "must be a number")),
        }
    };
    let int = |p: &'static str| -> std::result::Result<Option<i64>, _> {
        match o.get(p) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => Ok(Some(i)),
                None => match n.as_u64() {
                    Some(u) => Ok(Some(u.min(i64::MAX as u64) as i64)),
                    None => Err(bad(p, "must be an integer")),
                },
            },
            Some(_) => Err(bad(p, "must be an integer")),
        }
    };
    if let Some(m) = o.get("model") {
        if !m.is_string() && !m.is_null() {
            return Err(bad("model", "must be a string"));
        }
    }
    if let Some(n) = int("n")? {
        if n != 1 {
            return Err(bad("n", "must be 1 (one choice per request)"));
        }
    }
    let mut messages = Vec::new();
    let mut prompt = Prompt::None;
    if chat {
        let list = match o.get("messages") {
            Some(Value::Array(a)) => a,
            None | Some(Value::Null) => return Err(bad("messages", "is required")),
            Some(_) => return Err(bad("messages", "must be an array")),
        };
        if list.is_empty() {
            return Err(bad("messages", "must not be empty"));
        }
        if list.len() > MAX_MESSAGES {
            return Err(bad(
                "messages",
                &format!("may hold at most {MAX_MESSAGES} messages"),
            ));
        }
        for m in list {
            let role = m
                .get("role")
                .and_then(|r| r.as_str())
                .ok_or_else(|| bad("messages", "needs a string 'role' in every message"))?;
            let content = match m.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut s = String::new();
                    for p in parts {
                        match (p.get("type").and_then(|t| t.as_str()), p.get("text")) {
                            (Some("text"), Some(Value::String(t))) => s.push_str(t),
                            _ => {
                                return Err(bad(
                                    "messages",
                                    "content parts must be {\"type\": \"text\", \"text\": ...}",
                                ))
                            }
                        }
                    }
                    s
                }
                Some(_) => return Err(bad("messages", "content must be a string or text parts")),
            };
            messages.push(Message::new(role, &content));
        }
    } else {
        prompt = match o.get("prompt") {
            None | Some(Value::Null) => return Err(bad("prompt", "is required")),
            Some(Value::String(s)) => Prompt::Text(s.clone()),
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                Prompt::Text(a[0].as_str().unwrap_or_default().to_string())
            }
            Some(Value::Array(a)) if !a.is_empty() && a.iter().all(|x| x.is_u64()) => {
                let ids: Option<Vec<u32>> = a
                    .iter()
                    .map(|x| x.as_u64().and_then(|u| u32::try_from(u).ok()))
                    .collect();
                Prompt::Ids(ids.ok_or_else(|| bad("prompt", "token ids must fit in 32 bits"))?)
            }
            Some(_) => {
                return Err(bad(
                    "prompt",
                    "must be a string, or an array of token ids (one prompt per request)",
                ))
            }
        };
    }
    let max_tokens = match (int("max_tokens")?, int("max_completion_tokens")?) {
        (Some(m), _) | (None, Some(m)) => {
            if m < 1 {
                return Err(bad("max_tokens", "must be at least 1"));
            }
            Some(m as usize)
        }
        (None, None) => None,
    };
    let mut s = SamplerConfig {
        seed,
        ..SamplerConfig::default()
    };
    if let Some(t) = num("temperature")? {
        if !(t.is_finite() && t >= 0.0) {
            return Err(bad("temperature", "must be a finite number >= 0"));
        }
        s.temperature = t as f32;
    }
    if let Some(p) = num("top_p")? {
        if !(p > 0.0 && p <= 1.0) {
            return Err(bad("top_p", "must be in (0, 1]"));
        }
        s.top_p = p as f32;
    }
    if let Some(k) = int("top_k")? {
        if k < 0 {
            return Err(bad("top_k", "must be >= 0 (0 keeps every token)"));
        }
        s.top_k = u32::try_from(k).unwrap_or(u32::MAX);
    }
    if let Some(m) = num("min_p")? {
        if !(0.0..=1.0).contains(&m) {
            return Err(bad("min_p", "must be in [0, 1]"));
        }
        s.min_p = m as f32;
    }
    if let Some(r) = num("repeat_penalty")? {
        if !(r.is_finite() && r > 0.0) {
            return Err(bad("repeat_penalty", "must be a finite number > 0"));
        }
        s.repeat_penalty = r as f32;
    }
    if let Some(p) = num("presence_penalty")? {
        if !(-2.0..=2.0).contains(&p) {
            return Err(bad("presence_penalty", "must be in [-2, 2]"));
        }
        s.presence_penalty = p as f32;
    }
    if let Some(p) = num("frequency_penalty")? {
        if !(-2.0..=2.0).contains(&p) {
            return Err(bad("frequency_penalty", "must be in [-2, 2]"));
        }
        s.frequency_penalty = p as f32;
    }
    if let Some(n) = int("repeat_last_n")? {
        if n < 0 || n as usize > MAX_PENALTY_WINDOW {
            return Err(bad("repeat_last_n", "must be in [0, 256]"));
        }
        s.repeat_last_n = n as usize;
    }
    if let Some(v) = o.get("seed") {
        match v {
            Value::Null => {}
            Value::Number(n) if n.is_i64() || n.is_u64() => {
                s.seed = n.as_u64().unwrap_or_else(|| n.as_i64().unwrap_or(0) as u64);
            }
            _ => return Err(bad("seed", "must be an integer")),
        }
    }
    if s.validate().is_err() {
        return Err(("the sampling parameters are out of range".to_string(), None));
    }
    let stops = match o.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(x)) => vec![x.clone()],
        Some(Value::Array(a)) => {
            if a.len() > MAX_STOPS {
                return Err(bad(
                    "stop",
                    &format!("may hold at most {MAX_STOPS} strings"),
                ));
            }
            a.iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("stop", "must be a string or an array of strings"))?
        }
        Some(_) => return Err(bad("stop", "must be a string or an array of strings")),
    };
    let stream = match o.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("stream", "must be true or false")),
    };
    let include_usage = match o.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(so)) => match so.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("stream_options", "include_usage must be true or false")),
        },
        Some(_) => return Err(bad("stream_options", "must be an object")),
    };
    let ignore_eos = match o.get("ignore_eos") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("ignore_eos", "must be true or false")),
    };
    Ok(Request {
        ignore_eos,
        messages,
        prompt,
        max_tokens,
        sampling: s,
        stops,
        stream,
        include_usage,
    })
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
    let kernels = a.exec.kernels()?;
    let threads = a.exec.threads()?;
    let path = crate::cli::model_path(&a.model)?;
    // The model lives as long as the process: its bytes, parse, tokenizer
    // and weights are leaked so that every thread may borrow them.
    let bytes: &'static [u8] = Box::leak(Box::new(a.exec.load(&path)?));
    let g: &'static Gguf<'static> = Box::leak(Box::new(
        Gguf::parse(bytes).with_context(|| format!("{}", path.display()))?,
    ));
    let model = Llama::from_gguf(g).with_context(|| format!("{}", path.display()))?;
    let packs: &'static crate::pack::Packs = Box::leak(Box::new(a.exec.packs(&model, &kernels)?));
    let model: &'static Llama<'static> = Box::leak(Box::new(packs.apply(model)?));
    let index: &'static mut Vec<u32> = Box::leak(Box::new(Vec::new()));
    let tok: &'static Tokenizer<'static> = Box::leak(Box::new(
        crate::text::tokenizer(g, index).context("the server needs the model's tokenizer")?,
    ));
    let template = ChatTemplate::from_gguf(g, tok)?;
    let ctx = a.ctx.unwrap_or(match model.config.context_length {
        0 => 2048,
        n => n.min(2048),
    });
    if ctx < 2 {
        bail!("--ctx must be at least 2");
    }
    let kv = KvOptions::dense(ctx).with_type(a.kv_type.into());
    // Each step: one token per generating slot plus one prompt chunk.
    let max_batch = a.batch + a.parallel;
    let plan = MemoryPlan::batched(&model.config, kv, max_batch, threads, a.parallel)?;
    let model_id = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ember".into());

    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = mpsc::channel::<std::result::Result<(), String>>();
    let waiting = Arc::new(AtomicUsize::new(0));
    let busy = Arc::new(AtomicUsize::new(0));
    let stop_engine = Arc::new(AtomicBool::new(false));
    let engine = {
        let waiting = waiting.clone();
        let busy = busy.clone();
        let stop = stop_engine.clone();
        let cfg = EngineConfig {
            plan,
            kernels,
            threads,
            chunk: a.batch,
            waiting,
            busy,
            stop,
        };
        std::thread::Builder::new()
            .name("ember-engine".into())
            .spawn(move || engine_main(model, tok, cfg, jobs_rx, ready_tx))
            .context("cannot start the engine thread")?
    };
    // The slots' memory is allocated before the server listens: a size the
    // machine cannot give is an error at start.
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("{e}"),
        Err(_) => {
            return match engine.join() {
                Ok(Err(e)) => Err(e),
                _ => bail!("the engine thread stopped at start"),
            }
        }
    }
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
        accepting: AtomicBool::new(true),
        next_id: AtomicU64::new(1),
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
            "ember: serving {} on http://{local} ({} slots of {} tokens, {} kernels, {} threads, {:.1} MiB of KV cache, {:.1} MiB of repacked weights)",
            shared.model_id,
            a.parallel,
            ctx,
            kernels.name,
            threads,
            (plan.kv_bytes() * a.parallel) as f64 / (1 << 20) as f64,
            packs.bytes() as f64 / (1 << 20) as f64
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

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        .with_state(shared)
}

async fn health(State(sh): State<Arc<Shared>>) -> Response {
    let busy = sh.busy.load(Ordering::SeqCst);
    axum::Json(json!({
        "status": "ok",
        "slots_busy": busy,
        "slots_idle": sh.slots.saturating_sub(busy),
        "queued": sh.waiting.load(Ordering::SeqCst),
    }))
    .into_response()
}

async fn models(State(sh): State<Arc<Shared>>) -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{"id": sh.model_id, "object": "model", "created": now(), "owned_by": "ember"}],
    }))
    .into_response()
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message:
            "no such endpoint (try /v1/chat/completions, /v1/completions, /v1/models, /health)"
                .into(),
        kind: "invalid_request_error",
        param: None,
        code: None,
    }
}

async fn chat(State(sh): State<Arc<Shared>>, body: Body) -> ApiResult {
    handle(sh, body, Kind::Chat).await
}

async fn completions(State(sh): State<Arc<Shared>>, body: Body) -> ApiResult {
    handle(sh, body, Kind::Completion).await
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn handle(sh: Arc<Shared>, body: Body, kind: Kind) -> ApiResult {
    let bytes: Bytes = axum::body::to_bytes(body, sh.max_body)
        .await
        .map_err(|_| ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the request body is over {} bytes", sh.max_body),
            kind: "invalid_request_error",
            param: None,
            code: None,
        })?;
    let req = parse_request(&bytes, kind == Kind::Chat, crate::cli::random_seed())
        .map_err(|(m, p)| ApiError::bad(m, p))?;
    // Prompt tokens.
    let prompt = match kind {
        Kind::Chat => sh
            .template
            .encode(sh.tok, &req.messages, true)
            .map_err(|e| ApiError::bad(format!("{e:#}"), Some("messages")))?,
        Kind::Completion => match &req.prompt {
            Prompt::Text(t) => {
                let ids = crate::text::encode_prompt(sh.tok, t, false)
                    .map_err(|e| ApiError::bad(format!("{e:#}"), Some("prompt")))?;
                ids
            }
            Prompt::Ids(ids) => {
                let v = sh.tok.vocab_size();
                if let Some(&bad) = ids.iter().find(|&&i| i >= v) {
                    return Err(ApiError::bad(
                        format!("token id {bad} is outside the vocabulary of {v}"),
                        Some("prompt"),
                    ));
                }
                ids.clone()
            }
            Prompt::None => return Err(ApiError::bad("'prompt' is required", Some("prompt"))),
        },
    };
    if prompt.len() >= sh.ctx {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "the prompt is {} tokens; this server's context holds {} (prompt and reply)",
                prompt.len(),
                sh.ctx
            ),
            kind: "invalid_request_error",
            param: Some("messages"),
            code: Some("context_length_exceeded"),
        });
    }
    let room = sh.ctx - prompt.len();
    let max_tokens = match req.max_tokens {
        Some(m) if m > sh.max_tokens => {
            return Err(ApiError::bad(
                format!(
                    "'max_tokens' is {m}; this server allows at most {}",
                    sh.max_tokens
                ),
                Some("max_tokens"),
            ))
        }
        Some(m) => m.min(room),
        None => room.min(sh.max_tokens),
    };
    if !sh.accepting.load(Ordering::SeqCst) {
        return Err(busy("the server is shutting down"));
    }
    // Queue, unless it is full.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    if sh.waiting.fetch_add(1, Ordering::SeqCst) >= sh.queue {
        sh.waiting.fetch_sub(1, Ordering::SeqCst);
        return Err(busy(
            "every slot is busy and the queue is full; retry later",
        ));
    }
    let job = Job {
        prompt,
        sampling: req.sampling,
        max_tokens,
        stops: req.stops.clone(),
        ignore_eos: req.ignore_eos,
        tx,
    };
    let sent = sh.jobs.lock().map(|j| j.send(job).is_ok()).unwrap_or(false);
    if !sent {
        sh.waiting.fetch_sub(1, Ordering::SeqCst);
        return Err(busy("the engine has stopped"));
    }
    let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
    let meta = Meta {
        id: match kind {
            Kind::Chat => format!("chatcmpl-{id}"),
            Kind::Completion => format!("cmpl-{id}"),
        },
        created: now(),
        model: sh.model_id.clone(),
        kind,
    };
    if req.stream {
        Ok(stream_response(meta, rx, req.include_usage))
    } else {
        whole_response(meta, rx).await
    }
}

fn busy(msg: &str) -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: msg.into(),
        kind: "server_error",
        param: None,
        code: Some("server_busy"),
    }
}

/// What every response of a request repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

fn engine_failed(msg: String) -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: msg,
        kind: "server_error",
        param: None,
        code: None,
    }
}

async fn whole_response(m: Meta, mut rx: tokio::sync::mpsc::UnboundedReceiver<Ev>) -> ApiResult {
    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(Ev::Text(t)) => text.push_str(&t),
            Some(Ev::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            }) => {
                let choice = match m.kind {
                    Kind::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": null,
                        "finish_reason": finish,
                    }),
                    Kind::Completion => json!({
                        "index": 0,
                        "text": text,
                        "logprobs": null,
                        "finish_reason": finish,
                    }),
                };
                let object = match m.kind {
                    Kind::Chat => "chat.completion",
                    Kind::Completion => "text_completion",
                };
                return Ok(axum::Json(json!({
                    "id": m.id,
                    "object": object,
                    "created": m.created,
                    "model": m.model,
                    "choices": [choice],
                    "usage": usage(prompt_tokens, completion_tokens),
                }))
                .into_response());
            }
            Some(Ev::Fail(e)) => return Err(engine_failed(e)),
            None => return Err(engine_failed("the engine dropped the request".into())),
        }
    }
}

/// Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`.
fn stream_response(
    m: Meta,
    rx: tokio::sync::mpsc::UnboundedReceiver<Ev>,
    include_usage: bool,
) -> Response {
    let object = match m.kind {
        Kind::Chat => "chat.completion.chunk",
        Kind::Completion => "text_completion",
    };
    let chunk = move |choice: Value, usage_v: Option<Value>| -> Bytes {
        let mut c = json!({
            "id": m.id,
            "object": object,
            "created": m.created,
            "model": m.model,
            "choices": choice,
        });
        if let Some(u) = usage_v {
            c["usage"] = u;
        } else if include_usage {
            c["usage"] = Value::Null;
        }
        Bytes::from(format!("data: {c}\n\n"))
    };
    let kind = m.kind;
    let delta = move |text: Option<&str>, finish: Option<&str>| -> Value {
        match kind {
            Kind::Chat => {
                let d = match text {
                    Some(t) => json!({"content": t}),
                    None => json!({}),
                };
                json!([{"index": 0, "delta": d, "logprobs": null, "finish_reason": finish}])
            }
            Kind::Completion => {
                json!([{"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish}])
            }
        }
    };
    // The first chunk (chat: the role) goes out at once.
    let mut first: VecDeque<Bytes> = VecDeque::new();
    if kind == Kind::Chat {
        first.push_back(chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
            None,
        ));
    }
    struct St<C, D> {
        rx: tokio::sync::mpsc::UnboundedReceiver<Ev>,
        out: VecDeque<Bytes>,
        done: bool,
        chunk: C,
        delta: D,
    }
    let st = St {
        rx,
        out: first,
        done: false,
        chunk,
        delta,
    };
    let stream = futures_util::stream::unfold(st, move |mut st| async move {
        loop {
            if let Some(b) = st.out.pop_front() {
                return Some((Ok::<Bytes, std::convert::Infallible>(b), st));
            }
            if st.done {
                return None;
            }
            match st.rx.recv().await {
                Some(Ev::Text(t)) => {
                    let c = (st.chunk)((st.delta)(Some(&t), None), None);
                    st.out.push_back(c);
                }
                Some(Ev::Done {
                    finish,
                    prompt_tokens: p,
                    completion_tokens,
                }) => {
                    let c = (st.chunk)((st.delta)(None, Some(finish)), None);
                    st.out.push_back(c);
                    if include_usage {
                        let u = (st.chunk)(json!([]), Some(usage(p, completion_tokens)));
                        st.out.push_back(u);
                    }
                    st.out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                    st.done = true;
                }
                Some(Ev::Fail(e)) => {
                    let err = json!({"error": {"message": e, "type": "server_error", "param": null, "code": null}});
                    st.out.push_back(Bytes::from(format!("data: {err}\n\n")));
                    st.out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                    st.done = true;
                }
                None => st.done = true,
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// What the engine thread needs besides the model and its queue.
struct EngineConfig {
    plan: MemoryPlan,
    kernels: Kernels,
    threads: usize,
    chunk: usize,
    /// Requests queued but not yet in a slot (the engine counts them down).
    waiting: Arc<AtomicUsize>,
    /// Slots generating now (the engine publishes it).
    busy: Arc<AtomicUsize>,
    /// Set when the server has stopped accepting: leave once idle.
    stop: Arc<AtomicBool>,
}

/// A request in a slot.
struct Slot {
    job: Job,
    cache: usize,
    sampler: Sampler,
    fed: usize,
    generated: usize,
    next: u32,
    dec: StreamDecoder,
    stops: StopText,
}

/// The engine: admits queued requests into free slots and advances every
/// active slot one step at a time until told to stop with nothing left.
fn engine_main(
    model: &'static Llama<'static>,
    tok: &'static Tokenizer<'static>,
    cfg: EngineConfig,
    rx: Receiver<Job>,
    ready: Sender<std::result::Result<(), String>>,
) -> Result<()> {
    let plan = cfg.plan;
    let (waiting, busy, stop) = (&cfg.waiting, &cfg.busy, &cfg.stop);
    let c = &model.config;
    // Set-up errors go to the starting thread, which reports them.
    let started = (|| -> Result<_> {
        let pool = crate::pool::Pool::new(cfg.threads)?;
        let scratch = crate::arena::zeroed(plan.scratch_len, "the batch scratch")?;
        let mem: Vec<(Vec<f32>, Vec<f32>)> = (0..plan.seqs)
            .map(|_| {
                let k = crate::arena::zeroed(plan.kv_len, "the slots' KV caches")?;
                Ok((
                    k,
                    crate::arena::zeroed(plan.kv_len, "the slots' KV caches")?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok((pool, scratch, mem))
    })();
    let (pool, mut scratch, mut mem) = match started {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}")));
            return Ok(());
        }
    };
    let mut batch = Batch::new(model, cfg.kernels, plan, &mut scratch)?;
    batch.set_parallel(&pool)?;
    let mut caches: Vec<KvCache> = mem
        .iter_mut()
        .map(|(k, v)| plan.cache(c, k, v))
        .collect::<ember_core::Result<_>>()?;
    let _ = ready.send(Ok(()));
    let mut free: Vec<usize> = (0..plan.seqs).rev().collect();
    let mut active: Vec<Slot> = Vec::new();
    let mut cand = vec![Candidate::default(); Sampler::scratch_len(c.vocab_size)];
    loop {
        busy.store(active.len(), Ordering::SeqCst);
        // Admit queued requests while slots are free; with nothing to do,
        // wait for one.
        while !free.is_empty() {
            let job = if active.is_empty() {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(j) => j,
                    Err(RecvTimeoutError::Timeout) if stop.load(Ordering::SeqCst) => return Ok(()),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                }
            } else {
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
                }
            };
            waiting.fetch_sub(1, Ordering::SeqCst);
            if job.tx.is_closed() {
                continue;
            }
            let sampler = match Sampler::new(job.sampling) {
                Ok(s) => s,
                Err(e) => {
                    let _ = job.tx.send(Ev::Fail(format!("{e}")));
                    continue;
                }
            };
            let cache = free.pop().unwrap_or_default();
            caches[cache].clear();
            let mut slot = Slot {
                cache,
                sampler,
                fed: 0,
                generated: 0,
                next: 0,
                dec: StreamDecoder::new(tok, false, false),
                stops: StopText::new(&job.stops),
                job,
            };
            for &id in &slot.job.prompt {
                slot.sampler.accept(id);
            }
            active.push(slot);
        }
        // A client that went away frees its slot now.
        active.retain(|s| {
            let gone = s.job.tx.is_closed();
            if gone {
                free.push(s.cache);
            }
            !gone
        });
        if active.is_empty() {
            continue;
        }

        // This step's work: one token for each generating slot, then prompt
        // chunks (each slot's chunks are the same whatever else runs) while
        // the step has room.
        let mut budget = plan.max_batch;
        let mut work: Vec<(usize, usize, usize)> = Vec::new(); // (slot, from, to) of its tokens
        for (i, s) in active.iter().enumerate() {
            if s.fed == s.job.prompt.len() {
                work.push((i, 0, 1));
                budget -= 1;
            }
        }
        for (i, s) in active.iter().enumerate() {
            let left = s.job.prompt.len() - s.fed;
            if left == 0 {
                continue;
            }
            let take = cfg.chunk.min(left).min(caches[s.cache].chunk_room());
            if take <= budget {
                work.push((i, s.fed, s.fed + take));
                budget -= take;
            }
        }
        let toks: Vec<Vec<u32>> = work
            .iter()
            .map(|&(i, a, b)| {
                let s = &active[i];
                if s.fed == s.job.prompt.len() {
                    vec![s.next]
                } else {
                    s.job.prompt[a..b].to_vec()
                }
            })
            .collect();
        // Each work item's cache, in work order.
        let mut by_cache: Vec<Option<&mut KvCache>> = caches.iter_mut().map(Some).collect();
        let mut seqs: Vec<Seq> = Vec::with_capacity(work.len());
        for (k, &(i, _, _)) in work.iter().enumerate() {
            let cache = by_cache[active[i].cache]
                .take()
                .context("two slots share a cache")?;
            seqs.push(Seq {
                cache,
                tokens: &toks[k],
            });
        }
        if let Err(e) = batch.step(&mut seqs) {
            drop(seqs);
            // The step changed nothing; the requests in it fail, the rest go on.
            for &(i, _, _) in &work {
                let _ = active[i]
                    .job
                    .tx
                    .send(Ev::Fail(format!("the model failed: {e}")));
            }
            let failed: Vec<usize> = work.iter().map(|w| w.0).collect();
            release(&mut active, &mut free, &failed);
            continue;
        }
        drop(seqs);

        // Sample where a prompt finished or a token was fed.
        let mut finished: Vec<usize> = Vec::new();
        for (k, &(i, a, b)) in work.iter().enumerate() {
            let s = &mut active[i];
            if s.fed < s.job.prompt.len() {
                s.fed += b - a;
                if s.fed < s.job.prompt.len() {
                    continue;
                }
            }
            let logits = batch.logits(k);
            let id = match s.sampler.sample(logits, &mut cand) {
                Ok(id) => id,
                Err(e) => {
                    let _ = s.job.tx.send(Ev::Fail(format!("sampling failed: {e}")));
                    finished.push(i);
                    continue;
                }
            };
            s.sampler.accept(id);
            s.generated += 1;
            let mut finish = None;
            if tok.is_eog(id) && !s.job.ignore_eos {
                finish = Some("stop");
            } else {
                let mut out = String::new();
                let stops = &mut s.stops;
                let _ = s.dec.push(tok, id, &mut |t| out.push_str(&stops.push(t)));
                if s.stops.stopped() {
                    finish = Some("stop");
                }
                if !out.is_empty() {
                    let _ = s.job.tx.send(Ev::Text(out));
                }
            }
            let full = caches[s.cache].pos() + 1 > caches[s.cache].capacity();
            if finish.is_none() && (s.generated >= s.job.max_tokens || full) {
                finish = Some("length");
            }
            match finish {
                Some(f) => {
                    if !s.stops.stopped() {
                        let mut out = String::new();
                        let stops = &mut s.stops;
                        s.dec.finish(&mut |t| out.push_str(&stops.push(t)));
                        out.push_str(&s.stops.finish());
                        if !out.is_empty() {
                            let _ = s.job.tx.send(Ev::Text(out));
                        }
                    }
                    let _ = s.job.tx.send(Ev::Done {
                        finish: f,
                        prompt_tokens: s.job.prompt.len(),
                        completion_tokens: s.generated,
                    });
                    finished.push(i);
                }
                None => s.next = id,
            }
        }
        release(&mut active, &mut free, &finished);
    }
}

/// Removes the slots at `gone` (indices into `active`) and frees their caches.
fn release(active: &mut Vec<Slot>, free: &mut Vec<usize>, gone: &[usize]) {
    let mut idx = 0;
    active.retain(|s| {
        let g = gone.contains(&idx);
        idx += 1;
        if g {
            free.push(s.cache);
        }
        !g
    });
}
