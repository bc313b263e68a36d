//! OpenAI's API as `ember serve` speaks it: the request body, parsed and
//! checked field by field; the error answer; the parts every response repeats.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ember_core::sampling::{SamplerConfig, MAX_PENALTY_WINDOW};
use serde_json::{json, Value};

use crate::text::Message;

/// An OpenAI-style error answer.
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) message: String,
    pub(super) kind: &'static str,
    pub(super) param: Option<&'static str>,
    pub(super) code: Option<&'static str>,
}

impl ApiError {
    pub(super) fn bad(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
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
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

pub(super) type ApiResult = std::result::Result<Response, ApiError>;

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
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
    /// Reuse the longest prefix of the prompt that a slot's cache still
    /// holds (llama.cpp's server field; on unless `false`). The reply is the
    /// same either way.
    pub cache_prompt: bool,
    /// Report each generated token's log-probability and this many of the
    /// most likely tokens at its step (chat: `logprobs: true` with
    /// `top_logprobs`; completions: the integer `logprobs`).
    pub logprobs: Option<usize>,
    /// The grammar the reply follows (`response_format` or `grammar`).
    pub grammar: Option<std::sync::Arc<ember_core::grammar::GrammarBuf>>,
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
/// Most alternatives `top_logprobs` (chat) or `logprobs` (completions) may
/// ask for at each step (OpenAI's bound).
pub const MAX_TOP_LOGPROBS: usize = 20;

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
        if !(0.0..=1.0).contains(&p) {
            return Err(bad(
                "top_p",
                "must be in [0, 1] (0 keeps the most likely token)",
            ));
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
        if !(m.is_finite() && m >= 0.0) {
            return Err(bad(
                "min_p",
                "must be a finite number >= 0 (above 1 keeps the most likely token)",
            ));
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
    let cache_prompt = match o.get("cache_prompt") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("cache_prompt", "must be true or false")),
    };
    let range = format!("must be an integer in [0, {MAX_TOP_LOGPROBS}]");
    let logprobs = if chat {
        // Chat: `logprobs` switches them on, `top_logprobs` asks for alternatives.
        let on = match o.get("logprobs") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("logprobs", "must be true or false")),
        };
        let top = match int("top_logprobs").map_err(|_| bad("top_logprobs", &range))? {
            Some(n) if !(0..=MAX_TOP_LOGPROBS as i64).contains(&n) => {
                return Err(bad("top_logprobs", &range))
            }
            Some(_) if !on => return Err(bad("top_logprobs", "needs 'logprobs': true")),
            Some(n) => n as usize,
            None => 0,
        };
        on.then_some(top)
    } else {
        // Completions (the legacy API): `logprobs` is the number of alternatives.
        match o.get("logprobs") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(k) if k <= MAX_TOP_LOGPROBS as u64 => Some(k as usize),
                _ => return Err(bad("logprobs", &range)),
            },
            Some(_) => return Err(bad("logprobs", &range)),
        }
    };
    let grammar = parse_constraint(o)?.map(std::sync::Arc::new);
    Ok(Request {
        grammar,
        ignore_eos,
        cache_prompt,
        logprobs,
        messages,
        prompt,
        max_tokens,
        sampling: s,
        stops,
        stream,
        include_usage,
    })
}

/// The longest grammar a request may bring (its own GBNF or the one its
/// schema becomes): parsing stays well under a second even for hostile text.
pub const MAX_GRAMMAR_BYTES: usize = 128 << 10;

/// The grammar a request asks for: OpenAI's `response_format` (`text`,
/// `json_object`, or `json_schema` with its `schema`; `json_object` may
/// carry a `schema` too, as llama.cpp's server allows) or llama.cpp's
/// `grammar` (GBNF).
fn parse_constraint(
    o: &serde_json::Map<String, Value>,
) -> std::result::Result<Option<ember_core::grammar::GrammarBuf>, (String, Option<&'static str>)> {
    use crate::constrain::parse_gbnf;
    let rf = "response_format";
    let schema = |v: &Value| -> std::result::Result<_, (String, Option<&'static str>)> {
        let gbnf =
            crate::json_schema::to_gbnf(v).map_err(|e| (format!("'{rf}': {e}"), Some(rf)))?;
        if gbnf.len() > MAX_GRAMMAR_BYTES {
            return Err((
                format!("'{rf}': the schema's grammar is over {MAX_GRAMMAR_BYTES} bytes"),
                Some(rf),
            ));
        }
        parse_gbnf(&gbnf)
            .map(Some)
            .map_err(|e| (format!("'{rf}': {e:#}"), Some(rf)))
    };
    let from_format = match o.get(rf) {
        None | Some(Value::Null) => None,
        Some(Value::Object(f)) => match f.get("type").and_then(Value::as_str) {
            Some("text") => None,
            Some("json_object") => match f.get("schema") {
                Some(s) if !s.is_null() => schema(s)?,
                _ => Some(
                    ember_core::grammar::GrammarBuf::parse(ember_core::grammar::JSON)
                        .map_err(|e| (format!("'{rf}': {e}"), Some(rf)))?,
                ),
            },
            Some("json_schema") => {
                let s = f
                    .get("json_schema")
                    .and_then(|j| j.get("schema"))
                    .ok_or_else(|| {
                        (
                            format!("'{rf}' of type json_schema needs json_schema.schema"),
                            Some(rf),
                        )
                    })?;
                schema(s)?
            }
            _ => {
                return Err((
                    format!("'{rf}' type must be text, json_object or json_schema"),
                    Some(rf),
                ))
            }
        },
        Some(_) => return Err((format!("'{rf}' must be an object"), Some(rf))),
    };
    let from_grammar = match o.get("grammar") {
        None | Some(Value::Null) => None,
        Some(Value::String(g)) if g.trim().is_empty() => None,
        Some(Value::String(g)) if g.len() > MAX_GRAMMAR_BYTES => {
            return Err((
                format!("'grammar' is over {MAX_GRAMMAR_BYTES} bytes"),
                Some("grammar"),
            ))
        }
        Some(Value::String(g)) => {
            Some(parse_gbnf(g).map_err(|e| (format!("'grammar': {e:#}"), Some("grammar")))?)
        }
        Some(_) => return Err(("'grammar' must be a string (GBNF)".into(), Some("grammar"))),
    };
    match (from_format, from_grammar) {
        (Some(_), Some(_)) => Err((
            "give either 'response_format' or 'grammar', not both".into(),
            Some("grammar"),
        )),
        (a, b) => Ok(a.or(b)),
    }
}

/// A `POST /tokenize` body (llama.cpp's server fields).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizeRequest {
    pub content: String,
    /// Add BOS (and EOS) when the vocabulary asks for them (default false).
    pub add_special: bool,
    /// Recognise control tokens written in the text (default true).
    pub parse_special: bool,
    /// Answer `{"id", "piece"}` objects instead of bare ids (default false).
    pub with_pieces: bool,
}

/// Parses a `POST /tokenize` body.
pub fn parse_tokenize(
    body: &[u8],
) -> std::result::Result<TokenizeRequest, (String, Option<&'static str>)> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| (format!("the body is not valid JSON: {e}"), None))?;
    let o = v
        .as_object()
        .ok_or_else(|| ("the body must be a JSON object".to_string(), None))?;
    let content = match o.get("content") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => return Err(("'content' is required".into(), Some("content"))),
        Some(_) => return Err(("'content' must be a string".into(), Some("content"))),
    };
    let flag = |p: &'static str, default: bool| match o.get(p) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err((format!("'{p}' must be true or false"), Some(p))),
    };
    Ok(TokenizeRequest {
        content,
        add_special: flag("add_special", false)?,
        parse_special: flag("parse_special", true)?,
        with_pieces: flag("with_pieces", false)?,
    })
}

/// Parses a `POST /detokenize` body: token ids, each below `vocab`.
pub fn parse_detokenize(
    body: &[u8],
    vocab: u32,
) -> std::result::Result<Vec<u32>, (String, Option<&'static str>)> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| (format!("the body is not valid JSON: {e}"), None))?;
    let o = v
        .as_object()
        .ok_or_else(|| ("the body must be a JSON object".to_string(), None))?;
    let list = match o.get("tokens") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => return Err(("'tokens' is required".into(), Some("tokens"))),
        Some(_) => {
            return Err((
                "'tokens' must be an array of token ids".into(),
                Some("tokens"),
            ))
        }
    };
    list.iter()
        .map(|x| match x.as_u64() {
            Some(id) if id < vocab as u64 => Ok(id as u32),
            Some(id) => Err((
                format!("'tokens' holds {id}, outside the vocabulary of {vocab}"),
                Some("tokens"),
            )),
            None => Err((
                format!("'tokens' holds {x}, which is not a token id"),
                Some("tokens"),
            )),
        })
        .collect()
}

pub(super) fn busy(msg: &str) -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: msg.into(),
        kind: "server_error",
        param: None,
        code: Some("server_busy"),
    }
}

/// What every response of a request repeats.
pub(super) struct Meta {
    pub(super) id: String,
    pub(super) created: u64,
    pub(super) model: String,
    pub(super) kind: Kind,
}

/// OpenAI's `usage`: `cached` of the prompt's tokens came from a slot's
/// cache (`prompt_tokens_details.cached_tokens`).
pub(super) fn usage(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// 401: no key, or not one of the server's.
pub(super) fn unauthorized(msg: &str) -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: msg.into(),
        kind: "invalid_request_error",
        param: None,
        code: Some("invalid_api_key"),
    }
}

/// The message of a request that ran past `--timeout`.
pub(super) fn timeout_message(secs: u64) -> String {
    format!("the request ran past this server's time limit of {secs} s (--timeout)")
}

/// 504: the request ran past `--timeout`; its slot is freed.
pub(super) fn timed_out(secs: u64) -> ApiError {
    ApiError {
        status: StatusCode::GATEWAY_TIMEOUT,
        message: timeout_message(secs),
        kind: "server_error",
        param: None,
        code: Some("timeout"),
    }
}

pub(super) fn engine_failed(msg: String) -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: msg,
        kind: "server_error",
        param: None,
        code: None,
    }
}
