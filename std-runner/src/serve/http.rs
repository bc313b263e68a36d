//! The HTTP side of `ember serve`: axum routes, access control and request
//! counting around them, the request handler that checks, tokenizes and
//! queues a request for the engine, and the answer, whole or as server-sent
//! events; `/tokenize`, `/detokenize` and `/metrics`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request as HttpRequest, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ember_core::tokenizer::{EncodeOptions, Tokenizer};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::api::{
    busy, engine_failed, parse_detokenize, parse_request, parse_tokenize, timed_out,
    timeout_message, unauthorized, usage, ApiError, ApiResult, Kind, Meta, Prompt,
};
use super::engine::{Ev, Job};
use super::metrics::{route_label, Gauges, Metrics};
use crate::run::TokenLogprobs;
use crate::template::{ChatTemplate, RenderError};

/// State the handlers share.
pub(super) struct Shared {
    pub(super) tok: &'static Tokenizer<'static>,
    pub(super) template: ChatTemplate,
    pub(super) model_id: String,
    pub(super) ctx: usize,
    pub(super) max_tokens: usize,
    pub(super) max_body: usize,
    pub(super) queue: usize,
    pub(super) jobs: Mutex<Sender<Job>>,
    /// Requests queued but not yet in a slot.
    pub(super) waiting: Arc<AtomicUsize>,
    /// Slots generating now.
    pub(super) busy: Arc<AtomicUsize>,
    pub(super) slots: usize,
    /// Paged KV: free blocks (the engine publishes it) and blocks in all.
    pub(super) blocks: Option<(Arc<AtomicUsize>, usize)>,
    pub(super) accepting: AtomicBool,
    pub(super) next_id: AtomicU64,
    /// API keys; empty: no access control.
    pub(super) keys: Vec<Vec<u8>>,
    /// How long a request may run, from arrival to its last token.
    pub(super) timeout: Option<Duration>,
    pub(super) metrics: Arc<Metrics>,
}

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(not_found)
        // Outermost last: every answer is counted, 401s included.
        .layer(middleware::from_fn_with_state(shared.clone(), authorize))
        .layer(middleware::from_fn_with_state(shared.clone(), count))
        .with_state(shared)
}

/// Counts each answer by route and status code.
async fn count(State(sh): State<Arc<Shared>>, req: HttpRequest, next: Next) -> Response {
    let route = route_label(req.uri().path());
    let r = next.run(req).await;
    sh.metrics.request(route, r.status().as_u16());
    r
}

/// With keys configured, every route but `/health` needs
/// `Authorization: Bearer KEY`.
async fn authorize(State(sh): State<Arc<Shared>>, req: HttpRequest, next: Next) -> Response {
    if sh.keys.is_empty() || req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .and_then(|h| {
            let (scheme, rest) = h.split_at(h.iter().position(|&b| b == b' ')?);
            scheme
                .eq_ignore_ascii_case(b"bearer")
                .then(|| rest.trim_ascii())
        });
    match given {
        None => unauthorized(
            "this server needs an API key: send the header 'Authorization: Bearer KEY'",
        )
        .into_response(),
        Some(k) if key_matches(&sh.keys, k) => next.run(req).await,
        Some(_) => unauthorized("the API key is not one of this server's").into_response(),
    }
}

/// Whether `given` equals one of `keys`, in time that depends only on the
/// lengths: every key is compared, every byte of each, with no early exit.
pub(super) fn key_matches(keys: &[Vec<u8>], given: &[u8]) -> bool {
    let mut found = 0u8;
    for k in keys {
        let n = k.len().max(given.len());
        let mut diff = u8::from(k.len() != given.len());
        for i in 0..n {
            diff |= k.get(i).copied().unwrap_or(0) ^ given.get(i).copied().unwrap_or(0);
        }
        found |= u8::from(std::hint::black_box(diff) == 0);
    }
    found == 1
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

async fn metrics(State(sh): State<Arc<Shared>>) -> Response {
    let text = sh.metrics.render(&Gauges {
        queued: sh.waiting.load(Ordering::SeqCst),
        busy: sh.busy.load(Ordering::SeqCst),
        slots: sh.slots,
        blocks: sh
            .blocks
            .as_ref()
            .map(|(free, all)| (free.load(Ordering::SeqCst), *all)),
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn body_bytes(sh: &Shared, body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, sh.max_body)
        .await
        .map_err(|_| ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the request body is over {} bytes", sh.max_body),
            kind: "invalid_request_error",
            param: None,
            code: None,
        })
}

/// The bytes of token `id` (control tokens as their text).
fn piece_bytes(tok: &Tokenizer, id: u32) -> Vec<u8> {
    let mut b = Vec::new();
    let _ = tok.piece(id, true, &mut |p| b.extend_from_slice(p));
    b
}

/// A piece as text when it is UTF-8, else as its bytes.
fn piece_json(tok: &Tokenizer, id: u32) -> Value {
    let b = piece_bytes(tok, id);
    match String::from_utf8(b) {
        Ok(s) => Value::String(s),
        Err(e) => json!(e.into_bytes()),
    }
}

/// `POST /tokenize`, as llama.cpp's server has it.
async fn tokenize(State(sh): State<Arc<Shared>>, body: Body) -> ApiResult {
    let bytes = body_bytes(&sh, body).await?;
    let req = parse_tokenize(&bytes).map_err(|(m, p)| ApiError::bad(m, p))?;
    let ids = sh
        .tok
        .encode(
            &req.content,
            EncodeOptions {
                add_special: req.add_special,
                parse_special: req.parse_special,
            },
        )
        .map_err(|e| ApiError::bad(format!("cannot tokenize: {e}"), Some("content")))?;
    let tokens: Vec<Value> = if req.with_pieces {
        ids.iter()
            .map(|&id| json!({"id": id, "piece": piece_json(sh.tok, id)}))
            .collect()
    } else {
        ids.iter().map(|&id| json!(id)).collect()
    };
    Ok(axum::Json(json!({ "tokens": tokens })).into_response())
}

/// `POST /detokenize`: the text of token ids (control tokens as their text).
async fn detokenize(State(sh): State<Arc<Shared>>, body: Body) -> ApiResult {
    let bytes = body_bytes(&sh, body).await?;
    let ids =
        parse_detokenize(&bytes, sh.tok.vocab_size()).map_err(|(m, p)| ApiError::bad(m, p))?;
    let content = sh
        .tok
        .decode(&ids, true)
        .map_err(|e| ApiError::bad(format!("cannot decode: {e}"), Some("tokens")))?;
    Ok(axum::Json(json!({ "content": content })).into_response())
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message:
            "no such endpoint (try /v1/chat/completions, /v1/completions, /v1/models, /tokenize, /detokenize, /metrics, /health)"
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
    let arrived = Instant::now();
    let deadline = sh.timeout.map(|t| arrived + t);
    let bytes = body_bytes(&sh, body).await?;
    let req = parse_request(&bytes, kind == Kind::Chat, crate::args::random_seed())
        .map_err(|(m, p)| ApiError::bad(m, p))?;
    // Prompt tokens.
    let prompt = match kind {
        // A template that refuses the conversation (raise_exception: roles
        // that do not alternate, ...) is a bad request; one that breaks is
        // the server's fault.
        Kind::Chat => sh
            .template
            .encode(sh.tok, &req.messages, true)
            .map_err(|e| match e.downcast_ref::<RenderError>() {
                Some(r) if !r.raised => engine_failed(r.message.clone()),
                _ => ApiError::bad(format!("{e:#}"), Some("messages")),
            })?,
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
        cache_prompt: req.cache_prompt,
        logprobs: req.logprobs,
        grammar: req.grammar.clone(),
        arrived,
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
    let limit = Limit {
        deadline,
        secs: sh.timeout.map_or(0, |t| t.as_secs()),
    };
    let lp = req.logprobs.is_some().then(|| Logprobs::new(sh.tok, kind));
    if req.stream {
        Ok(stream_response(meta, rx, req.include_usage, limit, lp))
    } else {
        whole_response(meta, rx, limit, lp).await
    }
}

/// A request's time limit.
#[derive(Clone, Copy)]
struct Limit {
    deadline: Option<Instant>,
    secs: u64,
}

impl Limit {
    /// The engine's next event, or `Err` once the deadline has passed.
    async fn recv(&self, rx: &mut UnboundedReceiver<Ev>) -> Result<Option<Ev>, ()> {
        match self.deadline {
            Some(d) => tokio::time::timeout_at(tokio::time::Instant::from_std(d), rx.recv())
                .await
                .map_err(|_| ()),
            None => Ok(rx.recv().await),
        }
    }
}

/// Turns the engine's per-token log-probabilities into OpenAI's shapes:
/// chat's `{"content": [{token, logprob, bytes, top_logprobs}]}`, or the
/// legacy completions' `{tokens, token_logprobs, top_logprobs, text_offset}`.
struct Logprobs {
    tok: &'static Tokenizer<'static>,
    kind: Kind,
    /// Characters of reply text before the next token (completions'
    /// `text_offset`).
    offset: usize,
}

impl Logprobs {
    fn new(tok: &'static Tokenizer<'static>, kind: Kind) -> Logprobs {
        Logprobs {
            tok,
            kind,
            offset: 0,
        }
    }

    fn entry(&self, id: u32, logprob: f32) -> Value {
        let b = piece_bytes(self.tok, id);
        json!({"token": String::from_utf8_lossy(&b), "logprob": logprob, "bytes": b})
    }

    /// The `logprobs` object of a choice (or chunk) holding `tokens`.
    fn render(&mut self, tokens: &[TokenLogprobs]) -> Value {
        match self.kind {
            Kind::Chat => {
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let mut e = self.entry(t.id, t.logprob);
                        e["top_logprobs"] = t.top.iter().map(|&(i, l)| self.entry(i, l)).collect();
                        e
                    })
                    .collect();
                json!({"content": content, "refusal": null})
            }
            Kind::Completion => {
                let (mut strs, mut lps, mut tops, mut offs) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for t in tokens {
                    let piece =
                        |id| String::from_utf8_lossy(&piece_bytes(self.tok, id)).into_owned();
                    strs.push(piece(t.id));
                    lps.push(t.logprob);
                    // The chosen token is always among them (OpenAI's legacy
                    // API: up to logprobs + 1 entries).
                    let mut top = Map::new();
                    for &(i, l) in t.top.iter().chain(std::iter::once(&(t.id, t.logprob))) {
                        top.entry(piece(i)).or_insert(json!(l));
                    }
                    tops.push(Value::Object(top));
                    offs.push(self.offset);
                    // The text the token adds to the reply (control tokens add none).
                    let mut shown = Vec::new();
                    let _ = self
                        .tok
                        .piece(t.id, false, &mut |b| shown.extend_from_slice(b));
                    self.offset += shown.iter().filter(|&&b| b & 0xC0 != 0x80).count();
                }
                json!({"tokens": strs, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs})
            }
        }
    }
}

async fn whole_response(
    m: Meta,
    mut rx: UnboundedReceiver<Ev>,
    limit: Limit,
    mut lp: Option<Logprobs>,
) -> ApiResult {
    let mut text = String::new();
    let mut tokens: Vec<TokenLogprobs> = Vec::new();
    loop {
        // Past the deadline `rx` is dropped with this function: the engine
        // frees the request's slot at its next step.
        let ev = limit
            .recv(&mut rx)
            .await
            .map_err(|_| timed_out(limit.secs))?;
        match ev {
            Some(Ev::Text(t, l)) => {
                text.push_str(&t);
                tokens.extend(l);
            }
            Some(Ev::Done {
                finish,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
            }) => {
                let logprobs = match &mut lp {
                    Some(lp) => lp.render(&tokens),
                    None => Value::Null,
                };
                let choice = match m.kind {
                    Kind::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": logprobs,
                        "finish_reason": finish,
                    }),
                    Kind::Completion => json!({
                        "index": 0,
                        "text": text,
                        "logprobs": logprobs,
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
                    "usage": usage(prompt_tokens, completion_tokens, cached_tokens),
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
    rx: UnboundedReceiver<Ev>,
    include_usage: bool,
    limit: Limit,
    lp: Option<Logprobs>,
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
    let delta = move |text: Option<&str>, logprobs: Value, finish: Option<&str>| -> Value {
        match kind {
            Kind::Chat => {
                let d = match text {
                    Some(t) => json!({"content": t}),
                    None => json!({}),
                };
                json!([{"index": 0, "delta": d, "logprobs": logprobs, "finish_reason": finish}])
            }
            Kind::Completion => {
                json!([{"index": 0, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": finish}])
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
        rx: UnboundedReceiver<Ev>,
        out: VecDeque<Bytes>,
        done: bool,
        chunk: C,
        delta: D,
        lp: Option<Logprobs>,
    }
    let st = St {
        rx,
        out: first,
        done: false,
        chunk,
        delta,
        lp,
    };
    let error_event = |message: String, code: Option<&str>| -> Bytes {
        let err = json!({"error": {"message": message, "type": "server_error", "param": null, "code": code}});
        Bytes::from(format!("data: {err}\n\n"))
    };
    let stream = futures_util::stream::unfold(st, move |mut st| async move {
        loop {
            if let Some(b) = st.out.pop_front() {
                return Some((Ok::<Bytes, std::convert::Infallible>(b), st));
            }
            if st.done {
                return None;
            }
            let ev = match limit.recv(&mut st.rx).await {
                Ok(ev) => ev,
                Err(()) => {
                    // Closing the channel tells the engine to free the slot.
                    st.rx.close();
                    st.out
                        .push_back(error_event(timeout_message(limit.secs), Some("timeout")));
                    st.out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                    st.done = true;
                    continue;
                }
            };
            match ev {
                Some(Ev::Text(t, l)) => {
                    let logprobs = match (&mut st.lp, l) {
                        (Some(lp), Some(l)) => lp.render(std::slice::from_ref(&l)),
                        (Some(lp), None) => lp.render(&[]),
                        _ => Value::Null,
                    };
                    let c = (st.chunk)((st.delta)(Some(&t), logprobs, None), None);
                    st.out.push_back(c);
                }
                Some(Ev::Done {
                    finish,
                    prompt_tokens: p,
                    completion_tokens,
                    cached_tokens,
                }) => {
                    let c = (st.chunk)((st.delta)(None, Value::Null, Some(finish)), None);
                    st.out.push_back(c);
                    if include_usage {
                        let u =
                            (st.chunk)(json!([]), Some(usage(p, completion_tokens, cached_tokens)));
                        st.out.push_back(u);
                    }
                    st.out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                    st.done = true;
                }
                Some(Ev::Fail(e)) => {
                    st.out.push_back(error_event(e, None));
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
