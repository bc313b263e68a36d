//! The HTTP side of `ember serve`: axum routes, the request handler that
//! checks, tokenizes and queues a request for the engine, and the answer,
//! whole or as server-sent events.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ember_core::tokenizer::Tokenizer;
use serde_json::{json, Value};

use super::api::{
    busy, engine_failed, parse_request, usage, ApiError, ApiResult, Kind, Meta, Prompt,
};
use super::engine::{Ev, Job};
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
    pub(super) accepting: AtomicBool,
    pub(super) next_id: AtomicU64,
}

pub(super) fn router(shared: Arc<Shared>) -> Router {
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
