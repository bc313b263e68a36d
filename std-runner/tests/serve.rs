//! `ember serve` as clients use it, on an ephemeral loopback port: the
//! OpenAI endpoints, concurrent seeded requests equal to the same requests
//! served alone, the queue limit, cancellation, bad input, SIGTERM,
//! log-probabilities against `ember run`, API keys, `/metrics`, `/tokenize`
//! and `/detokenize`, and the request time limit.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ember_core::quant::GgmlType;
use serde_json::{json, Value};

fn model() -> String {
    ember_runner::model_store::converted(GgmlType::Q8_0)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .to_string_lossy()
        .into_owned()
}

/// A running server; killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        Server::start_model(&model(), extra)
    }

    fn start_model(m: &str, extra: &[&str]) -> Server {
        let mut args = vec!["serve", "--model", m, "--port", "0", "-t", "2"];
        args.extend_from_slice(extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(&args)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start ember serve");
        let err = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                if let Some(at) = line.find("http://") {
                    let addr = line[at + 7..].split_whitespace().next().unwrap_or("");
                    let _ = tx.send(addr.to_string());
                }
                eprintln!("[server] {line}");
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server printed its address");
        Server { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request; returns status, headers (lowercase names) and body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    http_with(addr, method, path, &[], body)
}

/// [`http`] with extra header lines (`"Name: value"`).
fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    extra: &[&str],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let extra: String = extra.iter().map(|h| format!("{h}\r\n")).collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
    out
}

fn post(addr: &str, path: &str, v: &Value) -> (u16, Value) {
    let (st, _, body) = http(addr, "POST", path, v.to_string().as_bytes());
    let j = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("JSON body, got {}", String::from_utf8_lossy(&body)));
    (st, j)
}

/// A streamed request's events: the JSON chunks and whether `[DONE]` ended it.
fn post_stream(addr: &str, path: &str, v: &Value) -> (u16, Vec<Value>, bool) {
    let (st, h, body) = http(addr, "POST", path, v.to_string().as_bytes());
    if st == 200 {
        assert!(
            h.iter()
                .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream")),
            "{h:?}"
        );
    }
    let text = String::from_utf8(body).unwrap();
    let mut chunks = Vec::new();
    let mut done = false;
    for line in text.lines() {
        let Some(d) = line.strip_prefix("data: ") else {
            continue;
        };
        assert!(!done, "nothing after [DONE]");
        if d == "[DONE]" {
            done = true;
        } else {
            chunks.push(serde_json::from_str(d).unwrap());
        }
    }
    (st, chunks, done)
}

/// The text and finish reason of a response, streamed or not.
fn text_of(path: &str, v: &Value) -> (String, String) {
    let c = &v["choices"][0];
    let finish = c["finish_reason"].as_str().unwrap_or("").to_string();
    if path.contains("chat") {
        (
            c["message"]["content"].as_str().unwrap().to_string(),
            finish,
        )
    } else {
        (c["text"].as_str().unwrap().to_string(), finish)
    }
}

fn streamed_text(path: &str, chunks: &[Value]) -> (String, String) {
    let mut text = String::new();
    let mut finish = String::new();
    for c in chunks {
        let ch = &c["choices"][0];
        let piece = if path.contains("chat") {
            ch["delta"]["content"].as_str()
        } else {
            ch["text"].as_str()
        };
        text.push_str(piece.unwrap_or(""));
        if let Some(f) = ch["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (text, finish)
}

/// Polls `/health` until `field` equals `want` (a minute at most).
fn wait_for(addr: &str, field: &str, want: u64) {
    let t0 = Instant::now();
    loop {
        let h = health(addr);
        if h[field] == want {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "/health never showed {field} = {want}: {h}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn health(addr: &str) -> Value {
    let (st, _, body) = http(addr, "GET", "/health", b"");
    assert_eq!(st, 200);
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn endpoints_answer_as_openai_clients_expect() {
    let s = Server::start(&["--parallel", "2", "--ctx", "256"]);
    let a = &s.addr;
    assert_eq!(health(a)["status"], "ok");
    let (st, _, body) = http(a, "GET", "/v1/models", b"");
    assert_eq!(st, 200);
    let m: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(m["object"], "list");
    assert!(m["data"][0]["id"].as_str().unwrap().contains("SmolLM2"));

    // A greedy chat completion.
    let req = json!({"model": "x", "messages": [{"role": "user", "content": "What is the capital of France?"}],
                     "max_tokens": 24, "temperature": 0});
    let (st, r) = post(a, "/v1/chat/completions", &req);
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    let (text, finish) = text_of("chat", &r);
    assert!(text.contains("Paris"), "{text}");
    assert!(finish == "stop" || finish == "length");
    let u = &r["usage"];
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );

    // The same request streamed gives the same text, in chunks, then [DONE].
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({"include_usage": true});
    let (st, chunks, done) = post_stream(a, "/v1/chat/completions", &sreq);
    assert_eq!(st, 200);
    assert!(done, "ends with data: [DONE]");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let (stext, sfinish) = streamed_text("chat", &chunks);
    assert_eq!((stext, sfinish), (text, finish));
    // The same prompt again: all but its last two tokens come from the cache.
    let (u, u1) = (&chunks.last().unwrap()["usage"], &r["usage"]);
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(u[k], u1[k], "{k}");
    }
    assert_eq!(u1["prompt_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        u["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            + 2,
        u["prompt_tokens"].as_u64().unwrap()
    );

    // A completion stops at a stop string, which is not returned.
    let req = json!({"prompt": "1, 2, 3, 4,", "max_tokens": 40, "temperature": 0, "stop": [" 7"]});
    let (st, r) = post(a, "/v1/completions", &req);
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["object"], "text_completion");
    let (text, finish) = text_of("completions", &r);
    assert_eq!(finish, "stop", "{text}");
    assert!(text.contains(" 5") && !text.contains(" 7"), "{text}");

    // max_tokens ends with "length" after exactly that many tokens.
    let req = json!({"prompt": [6403, 1980, 253], "max_tokens": 5, "ignore_eos": true, "seed": 1});
    let (st, r) = post(a, "/v1/completions", &req);
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    assert_eq!(r["usage"]["completion_tokens"], 5);
    assert_eq!(r["usage"]["prompt_tokens"], 3);
}

#[test]
fn a_greedy_completion_equals_ember_run() {
    let ids = [1u32, 504, 3458, 282, 2994, 314, 3067, 30, 378, 3458, 282];
    served_as_run(&model(), &ids);
}

/// Gemma 3 270M (sliding-window layers, its own family's pass) is served
/// as `ember run` generates.
#[test]
fn gemma3_is_served_as_ember_run_generates() {
    let m = ember_runner::model_store::stored(&ember_runner::model_store::GEMMA3_270M)
        .unwrap_or_else(|e| panic!("{e:#}"));
    // "Question: What is the capital of France?\nAnswer:" with BOS.
    let ids = [
        2u32, 14977, 236787, 2900, 563, 506, 5279, 529, 7001, 236881, 107, 7925, 236787,
    ];
    served_as_run(m.to_str().unwrap(), &ids);
}

/// A greedy completion of `ids` from a server over `m` equals `ember run`'s.
fn served_as_run(m: &str, ids: &[u32]) {
    let s = Server::start_model(m, &["--parallel", "2", "--ctx", "512"]);
    let req = json!({"prompt": ids, "max_tokens": 20, "temperature": 0, "ignore_eos": true});
    let (st, r) = post(&s.addr, "/v1/completions", &req);
    assert_eq!(st, 200, "{r}");
    let ids_arg: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let ids_arg = ids_arg.join(",");
    let o = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "run",
            "--model",
            m,
            "--prompt-ids",
            &ids_arg,
            "-n",
            "20",
            "--temp",
            "0",
            "--ignore-eos",
            "-b",
            "64",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["choices"][0]["text"], run["text"]);
}

/// One of the 16 requests: chat or completion, streamed or not, seeded.
fn request(i: usize) -> (&'static str, Value) {
    let topics = ["the sea", "a mountain", "bread", "the moon"];
    let t = topics[i % 4];
    let stream = i.is_multiple_of(3);
    if i.is_multiple_of(2) {
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": format!("Write one sentence about {t}.")}],
                   "max_tokens": 16 + i, "temperature": 0.9, "top_p": 0.95, "seed": 1000 + i,
                   "ignore_eos": true, "stream": stream}),
        )
    } else {
        (
            "/v1/completions",
            json!({"prompt": format!("Here is a story about {t}:"), "max_tokens": 12 + i,
                   "temperature": 1.1, "top_k": 30, "min_p": 0.02, "seed": 2000 + i,
                   "presence_penalty": 0.5, "frequency_penalty": 0.3, "repeat_penalty": 1.1,
                   "ignore_eos": true, "stream": stream}),
        )
    }
}

fn answer(addr: &str, path: &str, req: &Value) -> (String, String) {
    if req["stream"] == json!(true) {
        let (st, chunks, done) = post_stream(addr, path, req);
        assert_eq!(st, 200);
        assert!(done);
        streamed_text(path, &chunks)
    } else {
        let (st, r) = post(addr, path, req);
        assert_eq!(st, 200, "{r}");
        text_of(path, &r)
    }
}

#[test]
fn sixteen_concurrent_seeded_requests_equal_each_served_alone() {
    let s = Server::start(&["--parallel", "4", "--ctx", "256"]);
    let alone: Vec<(String, String)> = (0..16)
        .map(|i| {
            let (path, req) = request(i);
            answer(&s.addr, path, &req)
        })
        .collect();
    // All at once: 4 slots, the rest queue and join as slots free.
    let addr = s.addr.clone();
    let together: Vec<(String, String)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..16)
            .map(|i| {
                let addr = addr.clone();
                sc.spawn(move || {
                    let (path, req) = request(i);
                    answer(&addr, path, &req)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for i in 0..16 {
        assert!(!alone[i].0.is_empty(), "request {i} produced text");
        assert_eq!(together[i], alone[i], "request {i} differs when batched");
    }
    // Every slot comes free (the engine marks it after the last answer).
    wait_for(&s.addr, "slots_busy", 0);
}

#[test]
fn bad_requests_get_400_and_the_server_keeps_serving() {
    let s = Server::start(&[
        "--parallel",
        "2",
        "--ctx",
        "64",
        "--max-tokens",
        "100",
        "--max-body",
        "4096",
    ]);
    let a = &s.addr;
    let chat = "/v1/chat/completions";
    let comp = "/v1/completions";
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (comp, b"{not json".to_vec(), 400, "not valid JSON"),
        (comp, b"[1,2]".to_vec(), 400, "JSON object"),
        (comp, vec![0xff, 0xfe, b'{'], 400, "not valid JSON"),
        (
            comp,
            json!({}).to_string().into(),
            400,
            "'prompt' is required",
        ),
        (
            chat,
            json!({"prompt": "x"}).to_string().into(),
            400,
            "'messages' is required",
        ),
        (
            chat,
            json!({"messages": []}).to_string().into(),
            400,
            "must not be empty",
        ),
        (
            chat,
            json!({"messages": [{"content": "x"}]}).to_string().into(),
            400,
            "role",
        ),
        (
            chat,
            json!({"messages": msgs, "temperature": -1})
                .to_string()
                .into(),
            400,
            "temperature",
        ),
        (
            chat,
            json!({"messages": msgs, "temperature": "hot"})
                .to_string()
                .into(),
            400,
            "temperature",
        ),
        (
            chat,
            json!({"messages": msgs, "top_p": -0.5}).to_string().into(),
            400,
            "top_p",
        ),
        (
            chat,
            json!({"messages": msgs, "top_k": -3}).to_string().into(),
            400,
            "top_k",
        ),
        (
            chat,
            json!({"messages": msgs, "min_p": -1}).to_string().into(),
            400,
            "min_p",
        ),
        (
            chat,
            json!({"messages": msgs, "repeat_penalty": 0})
                .to_string()
                .into(),
            400,
            "repeat_penalty",
        ),
        (
            chat,
            json!({"messages": msgs, "presence_penalty": 9})
                .to_string()
                .into(),
            400,
            "presence_penalty",
        ),
        (
            chat,
            json!({"messages": msgs, "frequency_penalty": -9})
                .to_string()
                .into(),
            400,
            "frequency_penalty",
        ),
        (
            chat,
            json!({"messages": msgs, "seed": 1.5}).to_string().into(),
            400,
            "seed",
        ),
        (
            chat,
            json!({"messages": msgs, "stop": 7}).to_string().into(),
            400,
            "stop",
        ),
        (
            chat,
            json!({"messages": msgs, "stream": "yes"})
                .to_string()
                .into(),
            400,
            "stream",
        ),
        (
            chat,
            json!({"messages": msgs, "n": 3}).to_string().into(),
            400,
            "'n'",
        ),
        (
            chat,
            json!({"messages": msgs, "max_tokens": 0})
                .to_string()
                .into(),
            400,
            "max_tokens",
        ),
        (
            chat,
            json!({"messages": msgs, "max_tokens": 101})
                .to_string()
                .into(),
            400,
            "at most 100",
        ),
        (
            comp,
            json!({"prompt": [1, 99999999]}).to_string().into(),
            400,
            "outside the vocabulary",
        ),
        (
            comp,
            json!({"prompt": "word ".repeat(200)}).to_string().into(),
            400,
            "context",
        ),
        (
            comp,
            json!({"prompt": "x".repeat(5000)}).to_string().into(),
            413,
            "over 4096 bytes",
        ),
        (
            chat,
            json!({"messages": msgs, "logprobs": true, "top_logprobs": 21})
                .to_string()
                .into(),
            400,
            "'top_logprobs' must be an integer in [0, 20]",
        ),
        (
            chat,
            json!({"messages": msgs, "logprobs": true, "top_logprobs": -1})
                .to_string()
                .into(),
            400,
            "'top_logprobs' must be an integer in [0, 20]",
        ),
        (
            chat,
            json!({"messages": msgs, "top_logprobs": 2})
                .to_string()
                .into(),
            400,
            "'top_logprobs' needs 'logprobs': true",
        ),
        (
            chat,
            json!({"messages": msgs, "logprobs": 3}).to_string().into(),
            400,
            "'logprobs' must be true or false",
        ),
        (
            comp,
            json!({"prompt": "x", "logprobs": 21}).to_string().into(),
            400,
            "'logprobs' must be an integer in [0, 20]",
        ),
        (
            comp,
            json!({"prompt": "x", "logprobs": true}).to_string().into(),
            400,
            "'logprobs' must be an integer in [0, 20]",
        ),
        (
            "/tokenize",
            json!({"content": 5}).to_string().into(),
            400,
            "'content' must be a string",
        ),
        (
            "/tokenize",
            json!({"content": "x", "add_special": "yes"})
                .to_string()
                .into(),
            400,
            "'add_special' must be true or false",
        ),
        (
            "/detokenize",
            json!({"tokens": [1, 99999999]}).to_string().into(),
            400,
            "'tokens' holds 99999999, outside the vocabulary",
        ),
        (
            "/detokenize",
            json!({"tokens": [-1]}).to_string().into(),
            400,
            "'tokens' holds -1, which is not a token id",
        ),
        (
            "/detokenize",
            json!({"tokens": ["a"]}).to_string().into(),
            400,
            "not a token id",
        ),
        (
            "/detokenize",
            json!({"tokens": 3}).to_string().into(),
            400,
            "'tokens' must be an array",
        ),
        ("/detokenize", b"{}".to_vec(), 400, "'tokens' is required"),
        ("/v1/nothing", b"{}".to_vec(), 404, "no such endpoint"),
    ];
    for (path, body, want, needle) in cases {
        let (st, _, b) = http(a, "POST", path, &body);
        let v: Value = serde_json::from_slice(&b).unwrap_or_else(|_| {
            panic!(
                "{path} {needle}: JSON error body, got {}",
                String::from_utf8_lossy(&b)
            )
        });
        assert_eq!(st, want, "{path} {needle}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{path}: '{needle}' not in {v}");
        assert!(v["error"]["type"].is_string());
        if let Some(p) = needle.strip_prefix('\'').and_then(|n| n.split('\'').next()) {
            assert_eq!(v["error"]["param"], p, "{path}: the field is named: {v}");
        }
    }
    // Still serving.
    let (st, r) = post(a, comp, &json!({"prompt": "Hello", "max_tokens": 3}));
    assert_eq!(st, 200, "{r}");
}

#[test]
fn a_full_queue_gets_503_and_a_client_that_leaves_frees_its_slot() {
    let s = Server::start(&[
        "--parallel",
        "1",
        "--queue",
        "1",
        "--ctx",
        "8192",
        "--max-tokens",
        "8000",
    ]);
    let a = s.addr.clone();
    // A long stream holds the only slot.
    let body = json!({"prompt": "Tell me everything.", "max_tokens": 8000, "ignore_eos": true, "stream": true})
        .to_string();
    let mut long = TcpStream::connect(&a).unwrap();
    write!(
        long,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 256];
    let n = long.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    // The stream's headers can come before the engine takes the request
    // from the queue: wait until it holds the slot.
    wait_for(&a, "slots_busy", 1);
    wait_for(&a, "queued", 0);
    // One request waits in the queue...
    let queued = {
        let a = a.clone();
        std::thread::spawn(move || {
            post(
                &a,
                "/v1/completions",
                &json!({"prompt": "Hi", "max_tokens": 2}),
            )
        })
    };
    wait_for(&a, "queued", 1);
    // ...and the next one is turned away with Retry-After.
    let (st, h, b) = http(
        &a,
        "POST",
        "/v1/completions",
        json!({"prompt": "Hi"}).to_string().as_bytes(),
    );
    assert_eq!(st, 503, "{}", String::from_utf8_lossy(&b));
    assert!(h.iter().any(|(k, _)| k == "retry-after"), "{h:?}");
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["error"]["code"], "server_busy");
    // The long stream's client leaves: its 8000-token generation is cancelled
    // and the queued request gets the slot.
    drop(long);
    let (st, r) = queued.join().unwrap();
    assert_eq!(st, 200, "{r}");
    wait_for(&a, "slots_busy", 0);
}

#[cfg(unix)]
#[test]
fn sigterm_finishes_streams_in_flight_then_exits_zero() {
    let mut s = Server::start(&["--parallel", "2", "--ctx", "256"]);
    let a = s.addr.clone();
    let body =
        json!({"prompt": "Once upon a time", "max_tokens": 60, "ignore_eos": true, "stream": true})
            .to_string();
    let mut c = TcpStream::connect(&a).unwrap();
    write!(
        c,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = vec![0u8; 64];
    let n = c.read(&mut raw).unwrap();
    raw.truncate(n);
    let pid = s.child.id().to_string();
    let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(st.success());
    c.read_to_end(&mut raw).unwrap();
    let (status, _, body) = parse_response(&raw);
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    let code = s.child.wait().unwrap();
    assert_eq!(code.code(), Some(0), "exit status after SIGTERM");
}

#[test]
fn chat_template_flag_and_its_errors() {
    let dir = std::env::temp_dir().join(format!("ember-serve-tpl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Refuses two messages (raise_exception: the client's fault), breaks on
    // "break" (the template's fault), and otherwise is plain ChatML.
    let tpl = dir.join("t.jinja");
    std::fs::write(
        &tpl,
        "{% if messages|length > 1 %}{{ raise_exception('one message only') }}{% endif %}\
         {% if messages[0].content == 'break' %}{{ 1 + messages }}{% endif %}\
         <|im_start|>user\n{{ messages[0].content }}<|im_end|>\n<|im_start|>assistant\n",
    )
    .unwrap();
    let s = Server::start(&["--ctx", "64", "--chat-template", tpl.to_str().unwrap()]);
    let chat = "/v1/chat/completions";
    let ask = |msgs: Value| post(&s.addr, chat, &json!({"messages": msgs, "max_tokens": 2}));
    let (st, r) = ask(json!([{"role": "user", "content": "hi"}]));
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["usage"]["prompt_tokens"], 9, "{r}");
    let (st, r) = ask(json!([
        {"role": "user", "content": "hi"},
        {"role": "user", "content": "again"}
    ]));
    assert_eq!(st, 400, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("one message only"),
        "{r}"
    );
    let (st, r) = ask(json!([{"role": "user", "content": "break"}]));
    assert_eq!(st, 500, "{r}");
    assert_eq!(r["error"]["type"], "server_error", "{r}");
    // Still serving.
    let (st, _) = ask(json!([{"role": "user", "content": "hi"}]));
    assert_eq!(st, 200);
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `ember run --json` over `args` (with the test model).
fn ember_run(args: &[&str]) -> Value {
    let m = model();
    let mut all = vec!["run", "--model", &m];
    all.extend_from_slice(args);
    let o = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(&all)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A JSON number as the f32 it was written from.
fn f32_of(v: &Value) -> f32 {
    v.as_f64().unwrap_or_else(|| panic!("a number, got {v}")) as f32
}

/// The text of one token, from `/detokenize`.
fn piece(addr: &str, id: u64) -> String {
    let (st, r) = post(addr, "/detokenize", &json!({ "tokens": [id] }));
    assert_eq!(st, 200, "{r}");
    r["content"].as_str().unwrap().to_string()
}

#[test]
fn logprobs_equal_ember_run_top_logits() {
    let s = Server::start(&["--parallel", "2", "--ctx", "512"]);
    let a = &s.addr;
    let ids = [1u32, 504, 3458, 282, 2994, 314, 3067, 30, 378, 3458, 282];
    let ids_arg: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let ids_arg = ids_arg.join(",");
    let run = ember_run(&[
        "--prompt-ids",
        &ids_arg,
        "-n",
        "8",
        "--temp",
        "0",
        "--ignore-eos",
        "-b",
        "64",
        "--top-logits",
        "5",
        "--json",
    ]);
    let run_lp = run["logprobs"].as_array().unwrap();
    assert_eq!(run_lp.len(), 8);
    // run's own report: the top log-probabilities after the prompt are the
    // top logits less one constant, and the first token's alternatives.
    let (tl, tlp) = (
        run["top_logits"].as_array().unwrap(),
        run["top_logprobs"].as_array().unwrap(),
    );
    assert_eq!(tl.len(), 5);
    for (l, p) in tl.iter().zip(tlp) {
        assert_eq!(l[0], p[0]);
        let shift = f32_of(&l[1]) - f32_of(&p[1]);
        let first = f32_of(&tl[0][1]) - f32_of(&tlp[0][1]);
        assert!((shift - first).abs() < 1e-4, "{l} {p}");
    }
    assert_eq!(run_lp[0]["top_logprobs"], run["top_logprobs"]);

    // Completions (the legacy shape), whole and streamed.
    let req = json!({"prompt": ids, "max_tokens": 8, "temperature": 0, "ignore_eos": true, "logprobs": 5});
    let (st, r) = post(a, "/v1/completions", &req);
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["choices"][0]["text"], run["text"]);
    let lp = &r["choices"][0]["logprobs"];
    let text = r["choices"][0]["text"].as_str().unwrap();
    let mut offset = 0;
    for (i, want) in run_lp.iter().enumerate() {
        assert_eq!(
            f32_of(&lp["token_logprobs"][i]),
            f32_of(&want["logprob"]),
            "token {i}"
        );
        let chosen = piece(a, want["id"].as_u64().unwrap());
        assert_eq!(lp["tokens"][i], chosen.as_str(), "token {i}");
        // Up to logprobs + 1 alternatives: the top 5 and the chosen token.
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert!(top.len() <= 6, "{top:?}");
        for alt in want["top_logprobs"].as_array().unwrap() {
            let p = piece(a, alt[0].as_u64().unwrap());
            assert_eq!(f32_of(&top[&p]), f32_of(&alt[1]), "token {i}, {p:?}");
        }
        assert_eq!(f32_of(&top[&chosen]), f32_of(&want["logprob"]));
        assert_eq!(lp["text_offset"][i], offset, "token {i}");
        offset += chosen.chars().count();
    }
    assert_eq!(offset, text.chars().count());
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let (st, chunks, done) = post_stream(a, "/v1/completions", &sreq);
    assert_eq!(st, 200);
    assert!(done);
    let mut streamed =
        json!({"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []});
    for c in &chunks {
        let l = &c["choices"][0]["logprobs"];
        if l.is_null() {
            continue;
        }
        for k in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
            let more = l[k].as_array().unwrap().clone();
            streamed[k].as_array_mut().unwrap().extend(more);
        }
    }
    assert_eq!(&streamed, lp);

    // Chat (OpenAI's shape), greedy until the model ends its turn, against
    // `ember run --chat` on the same message.
    let q = "What is the capital of France?";
    let run = ember_run(&[
        "--chat",
        q,
        "-n",
        "12",
        "--temp",
        "0",
        "-b",
        "64",
        "--top-logits",
        "3",
        "--json",
    ]);
    let run_lp = run["logprobs"].as_array().unwrap();
    let req = json!({"messages": [{"role": "user", "content": q}], "max_tokens": 12,
                     "temperature": 0, "logprobs": true, "top_logprobs": 3});
    let (st, r) = post(a, "/v1/chat/completions", &req);
    assert_eq!(st, 200, "{r}");
    let content = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content, run["text"].as_str().unwrap());
    let entries = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    // Every generated token but an end-of-generation token that ends the turn.
    let eog = r["choices"][0]["finish_reason"] == "stop";
    assert_eq!(entries.len() + usize::from(eog), run_lp.len());
    let mut bytes = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let want = &run_lp[i];
        assert_eq!(f32_of(&e["logprob"]), f32_of(&want["logprob"]), "token {i}");
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        for (t, w) in top.iter().zip(want["top_logprobs"].as_array().unwrap()) {
            assert_eq!(f32_of(&t["logprob"]), f32_of(&w[1]), "token {i}");
            assert_eq!(t["token"], piece(a, w[0].as_u64().unwrap()).as_str());
        }
        // Sorted, most likely first; greedy picks the first.
        assert!(top
            .windows(2)
            .all(|w| f32_of(&w[0]["logprob"]) >= f32_of(&w[1]["logprob"])));
        assert_eq!(top[0]["token"], e["token"]);
        assert_eq!(top[0]["logprob"], e["logprob"]);
        assert!(f32_of(&e["logprob"]) <= 0.0);
        let b: Vec<u8> = e["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(String::from_utf8_lossy(&b), e["token"].as_str().unwrap());
        bytes.extend(b);
    }
    assert_eq!(String::from_utf8(bytes).unwrap(), content);
    // Streamed: the same entries, spread over the chunks.
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let (st, chunks, done) = post_stream(a, "/v1/chat/completions", &sreq);
    assert_eq!(st, 200);
    assert!(done);
    let streamed: Vec<Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(&streamed, entries);
    // Without `logprobs` there are none.
    let (st, r) = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": q}], "max_tokens": 2}),
    );
    assert_eq!(st, 200, "{r}");
    assert!(r["choices"][0]["logprobs"].is_null(), "{r}");
}

#[test]
fn api_keys_guard_every_route_but_health() {
    let dir = std::env::temp_dir().join(format!("ember-serve-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys");
    std::fs::write(&file, "\nsecond-key\n  third-key  \n\n").unwrap();
    let s = Server::start(&[
        "--ctx",
        "64",
        "--api-key",
        "first-key",
        "--api-key-file",
        file.to_str().unwrap(),
    ]);
    let a = &s.addr;
    let body = json!({"prompt": "Hi", "max_tokens": 1}).to_string();
    let routes: [(&str, &str, &[u8]); 6] = [
        ("GET", "/v1/models", b""),
        ("GET", "/metrics", b""),
        ("POST", "/v1/completions", body.as_bytes()),
        ("POST", "/tokenize", br#"{"content": "Hi"}"#),
        ("POST", "/detokenize", br#"{"tokens": [1]}"#),
        ("POST", "/v1/nothing", b"{}"),
    ];
    for (method, path, b) in routes {
        for hdr in [
            None,
            Some("Authorization: Bearer wrong-key"),
            Some("Authorization: Bearer first-ke"),
            Some("Authorization: Bearer first-keyy"),
            Some("Authorization: Basic first-key"),
        ] {
            let h: Vec<&str> = hdr.into_iter().collect();
            let (st, headers, body) = http_with(a, method, path, &h, b);
            assert_eq!(st, 401, "{method} {path} with {hdr:?}");
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
            assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
            assert!(
                headers
                    .iter()
                    .any(|(k, v)| k == "www-authenticate" && v == "Bearer"),
                "{headers:?}"
            );
        }
        for key in ["first-key", "second-key", "third-key"] {
            let h = format!("Authorization: Bearer {key}");
            let (st, _, body) = http_with(a, method, path, &[&h], b);
            let want = if path == "/v1/nothing" { 404 } else { 200 };
            assert_eq!(
                st,
                want,
                "{method} {path} with {key}: {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    // Load balancers probe /health without a key.
    assert_eq!(health(a)["status"], "ok");
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One sample of the Prometheus text format: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// One sample line of the Prometheus text format.
fn sample(line: &str) -> Sample {
    let (head, value) = line.rsplit_once(' ').expect("name and value");
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("a number in {line:?}")),
    };
    let (name, labels) = match head.split_once('{') {
        None => (head.to_string(), Vec::new()),
        Some((n, rest)) => {
            let rest = rest.strip_suffix('}').expect("labels end with }");
            let labels = rest
                .split(',')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("label=value");
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .expect("a quoted label value");
                    (k.to_string(), v.to_string())
                })
                .collect();
            (n.to_string(), labels)
        }
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    assert!(
        !name.is_empty() && name.chars().all(ok) && !name.starts_with(|c: char| c.is_ascii_digit()),
        "a metric name: {line:?}"
    );
    (name, labels, value)
}

/// `/metrics`, parsed: every sample, and each family's declared type.
fn scrape(addr: &str) -> (Vec<Sample>, Vec<(String, String)>) {
    let (st, h, body) = http(addr, "GET", "/metrics", b"");
    assert_eq!(st, 200);
    assert!(
        h.iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/plain; version=0.0.4")),
        "{h:?}"
    );
    let text = String::from_utf8(body).unwrap();
    let mut types: Vec<(String, String)> = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, ty) = t.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&ty), "{line:?}");
            types.push((name.to_string(), ty.to_string()));
        } else if line.starts_with("# HELP ") {
            continue;
        } else {
            assert!(!line.starts_with('#'), "{line:?}");
            let s = sample(line);
            // Each sample belongs to the family declared last.
            let (family, ty) = types.last().expect("# TYPE before the samples");
            let base = match ty.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|x| s.0.strip_suffix(x))
                    .unwrap_or(&s.0),
                _ => &s.0,
            };
            assert_eq!(base, family, "{line:?}");
            samples.push(s);
        }
    }
    (samples, types)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|s| s.2)
        .unwrap_or(0.0)
}

#[test]
fn metrics_count_the_requests_sent() {
    let s = Server::start(&["--parallel", "2", "--ctx", "256"]);
    let a = &s.addr;
    health(a);
    health(a);
    let (st, r1) = post(
        a,
        "/v1/completions",
        &json!({"prompt": "Once upon a time", "max_tokens": 5, "ignore_eos": true}),
    );
    assert_eq!(st, 200, "{r1}");
    let (st, chunks, done) = post_stream(
        a,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
                "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}}),
    );
    assert!(st == 200 && done);
    let u2 = &chunks.last().unwrap()["usage"];
    let (st, _) = post(a, "/v1/completions", &json!({"prompt": 7}));
    assert_eq!(st, 400);
    let (st, _, _) = http(a, "GET", "/nowhere", b"");
    assert_eq!(st, 404);
    let (st, _) = post(a, "/tokenize", &json!({"content": "Hi"}));
    assert_eq!(st, 200);
    wait_for(a, "slots_busy", 0);

    let (m, types) = scrape(a);
    let ty = |n: &str| types.iter().find(|t| t.0 == n).map(|t| t.1.as_str());
    assert_eq!(ty("ember_requests_total"), Some("counter"));
    assert_eq!(ty("ember_prompt_tokens_total"), Some("counter"));
    assert_eq!(ty("ember_generated_tokens_total"), Some("counter"));
    assert_eq!(ty("ember_time_to_first_token_seconds"), Some("histogram"));
    assert_eq!(ty("ember_time_per_output_token_seconds"), Some("histogram"));
    assert_eq!(ty("ember_queue_depth"), Some("gauge"));
    assert_eq!(ty("ember_slots_busy"), Some("gauge"));
    let req = |route: &str, code: &str| {
        value(
            &m,
            "ember_requests_total",
            &[("route", route), ("code", code)],
        )
    };
    // Two /health calls here, and at least one from wait_for.
    assert!(req("/health", "200") >= 3.0);
    assert_eq!(req("/v1/completions", "200"), 1.0);
    assert_eq!(req("/v1/chat/completions", "200"), 1.0);
    assert_eq!(req("/v1/completions", "400"), 1.0);
    assert_eq!(req("other", "404"), 1.0);
    assert_eq!(req("/tokenize", "200"), 1.0);
    // This scrape is counted once it is answered.
    assert_eq!(req("/metrics", "200"), 0.0);
    let n = |v: &Value| v.as_u64().unwrap() as f64;
    let u1 = &r1["usage"];
    assert_eq!(
        value(&m, "ember_prompt_tokens_total", &[]),
        n(&u1["prompt_tokens"]) + n(&u2["prompt_tokens"])
    );
    let generated = n(&u1["completion_tokens"]) + n(&u2["completion_tokens"]);
    assert_eq!(generated, 9.0);
    assert_eq!(value(&m, "ember_generated_tokens_total", &[]), generated);
    // Two first tokens; every later token is one latency.
    let h = "ember_time_to_first_token_seconds";
    assert_eq!(value(&m, &format!("{h}_count"), &[]), 2.0);
    assert_eq!(value(&m, &format!("{h}_bucket"), &[("le", "+Inf")]), 2.0);
    let h = "ember_time_per_output_token_seconds";
    assert_eq!(value(&m, &format!("{h}_count"), &[]), generated - 2.0);
    assert!(value(&m, &format!("{h}_sum"), &[]) > 0.0);
    // Buckets are cumulative: they never fall, and the last is the count.
    for h in [
        "ember_time_to_first_token_seconds",
        "ember_time_per_output_token_seconds",
    ] {
        let buckets: Vec<f64> = m
            .iter()
            .filter(|s| s.0 == format!("{h}_bucket"))
            .map(|s| s.2)
            .collect();
        assert!(buckets.len() > 2);
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{h}: {buckets:?}");
        assert_eq!(
            buckets.last().copied(),
            Some(value(&m, &format!("{h}_count"), &[]))
        );
    }
    assert_eq!(value(&m, "ember_queue_depth", &[]), 0.0);
    assert_eq!(value(&m, "ember_slots_busy", &[]), 0.0);
    assert_eq!(value(&m, "ember_slots", &[]), 2.0);
    let (m, _) = scrape(a);
    assert_eq!(
        value(
            &m,
            "ember_requests_total",
            &[("route", "/metrics"), ("code", "200")]
        ),
        1.0
    );
}

#[test]
fn tokenize_and_detokenize_round_trip() {
    let s = Server::start(&["--ctx", "64"]);
    let a = &s.addr;
    let text = "Hello, world! Ça va? 東京 <|im_start|>";
    let (st, r) = post(a, "/tokenize", &json!({ "content": text }));
    assert_eq!(st, 200, "{r}");
    let ids: Vec<u64> = r["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(ids.len() > 5, "{r}");
    // Control tokens written in the text are recognised by default, as
    // llama.cpp's server does; `parse_special: false` spells them out.
    let (_, plain) = post(
        a,
        "/tokenize",
        &json!({"content": text, "parse_special": false}),
    );
    assert!(
        plain["tokens"].as_array().unwrap().len() > ids.len(),
        "{plain}"
    );
    let (st, r) = post(a, "/detokenize", &json!({ "tokens": ids }));
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["content"], text);
    // The same ids as `ember tokenize --special --no-bos`.
    let o = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "tokenize",
            text,
            "--model",
            &model(),
            "--special",
            "--no-bos",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let cli: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(cli["ids"], json!(ids));
    // With pieces: each id with its text, which put together give the text.
    let (st, r) = post(
        a,
        "/tokenize",
        &json!({"content": "Hello, world!", "with_pieces": true}),
    );
    assert_eq!(st, 200, "{r}");
    let joined: String = r["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert!(t["id"].is_u64(), "{t}");
            t["piece"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(joined, "Hello, world!");
    // Empty in, empty out.
    let (st, r) = post(a, "/tokenize", &json!({"content": ""}));
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["tokens"], json!([]));
    let (st, r) = post(a, "/detokenize", &json!({"tokens": []}));
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["content"], "");
}

#[test]
fn a_request_past_the_timeout_ends_and_frees_its_slot() {
    let s = Server::start(&[
        "--parallel",
        "1",
        "--ctx",
        "8192",
        "--max-tokens",
        "8000",
        "--timeout",
        "1",
    ]);
    let a = &s.addr;
    // 8000 tokens take far longer than a second: the answer is a 504.
    let long = json!({"prompt": "Tell me everything.", "max_tokens": 8000, "ignore_eos": true});
    let (st, r) = post(a, "/v1/completions", &long);
    assert_eq!(st, 504, "{r}");
    assert_eq!(r["error"]["code"], "timeout", "{r}");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--timeout"));
    wait_for(a, "slots_busy", 0);
    // Streamed: the stream ends with an error event, then [DONE].
    let mut sl = long.clone();
    sl["stream"] = json!(true);
    let (st, chunks, done) = post_stream(a, "/v1/completions", &sl);
    assert_eq!(st, 200);
    assert!(done);
    let last = chunks.last().unwrap();
    assert_eq!(last["error"]["code"], "timeout", "{last}");
    wait_for(a, "slots_busy", 0);
    wait_for(a, "queued", 0);
    // The only slot serves the next request.
    let (st, r) = post(
        a,
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 1}),
    );
    assert_eq!(st, 200, "{r}");
}

/// Structured output: `response_format` (json_schema, json_object) and
/// `grammar` replies follow them, streamed or not, each equal to `ember run`
/// with the same grammar; bad schemas and grammars are 400s naming the field.
#[test]
fn structured_output_follows_the_grammar_and_equals_ember_run() {
    let s = Server::start(&["--parallel", "2"]);
    let schema = json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 20},
        "legs": {"type": "integer"},
        "kind": {"enum": ["mammal", "bird", "fish"]}},
        "required": ["name", "legs", "kind"], "additionalProperties": false});
    let prompt = "Here is an animal as JSON:";
    for (temperature, seed) in [(0.0, 0), (0.9, 11)] {
        let req = json!({"prompt": prompt, "max_tokens": 120, "temperature": temperature, "seed": seed,
            "response_format": {"type": "json_schema", "json_schema": {"name": "animal", "schema": schema}}});
        let (st, r) = post(&s.addr, "/v1/completions", &req);
        assert_eq!(st, 200, "{r}");
        assert_eq!(r["choices"][0]["finish_reason"], "stop", "{r}");
        let text = r["choices"][0]["text"].as_str().unwrap().to_string();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(v["name"].as_str().unwrap().chars().count() <= 20, "{v}");
        assert!(v["legs"].is_i64(), "{v}");
        assert!(
            ["mammal", "bird", "fish"].contains(&v["kind"].as_str().unwrap()),
            "{v}"
        );
        let mut streamed = req.clone();
        streamed["stream"] = json!(true);
        assert_eq!(answer(&s.addr, "/v1/completions", &streamed).0, text);
        let run = ember_run(&[
            prompt,
            "-n",
            "120",
            "--temp",
            &temperature.to_string(),
            "--seed",
            &seed.to_string(),
            "--json-schema",
            &schema.to_string(),
            "--json",
        ]);
        assert_eq!(run["text"].as_str().unwrap(), text);
    }
    // Any JSON object; then a GBNF grammar.
    let (st, r) = post(
        &s.addr,
        "/v1/chat/completions",
        &json!({
        "messages": [{"role": "user", "content": "Describe a cat in JSON."}], "max_tokens": 200,
        "seed": 5, "response_format": {"type": "json_object"}}),
    );
    assert_eq!(st, 200, "{r}");
    let content = r["choices"][0]["message"]["content"].as_str().unwrap();
    if r["choices"][0]["finish_reason"] == "stop" {
        assert!(
            serde_json::from_str::<Value>(content).unwrap().is_object(),
            "{content}"
        );
    } else {
        assert!(content.starts_with('{'), "{content}");
    }
    let (st, r) = post(
        &s.addr,
        "/v1/completions",
        &json!({
        "prompt": "Is water wet? Answer:", "max_tokens": 8, "temperature": 0,
        "grammar": "root ::= \" \" (\"yes\" | \"no\") \".\""}),
    );
    assert_eq!(st, 200, "{r}");
    let t = r["choices"][0]["text"].as_str().unwrap();
    assert!(t == " yes." || t == " no.", "{t}");
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    for (body, param, needle) in [
        (
            json!({"prompt": "x", "grammar": "root ::= undefined-rule"}),
            "grammar",
            "undefined rule",
        ),
        (
            json!({"prompt": "x", "grammar": "root ::= \"a"}),
            "grammar",
            "line 1, column",
        ),
        (
            json!({"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {
            "schema": {"type": "string", "pattern": "a+"}}}}),
            "response_format",
            "pattern",
        ),
        (
            json!({"prompt": "x", "response_format": {"type": "xml"}}),
            "response_format",
            "type",
        ),
        (
            json!({"prompt": "x", "grammar": "root ::= \"a\"",
                "response_format": {"type": "json_object"}}),
            "grammar",
            "not both",
        ),
        (
            json!({"prompt": "x", "grammar": format!("root ::= \"{}\"", "a".repeat(200_000))}),
            "grammar",
            "over",
        ),
    ] {
        let (st, r) = post(&s.addr, "/v1/completions", &body);
        assert_eq!(st, 400, "{body}: {r}");
        assert_eq!(r["error"]["param"], param, "{r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains(needle),
            "{r}"
        );
    }
}

/// A conversation's turns through one server: the second and third reuse
/// what the slot's cache holds of the earlier ones, and every reply, with
/// its log-probabilities, equals the one computed without the cache. Run
/// over SmolLM2 and Gemma 3, whose windowed layers keep rings of 512 + 17
/// positions here: a system prompt of `repeat` sentences takes the
/// conversation past them.
fn prompt_cache_changes_nothing(m: &str, repeat: usize) {
    let s = Server::start_model(m, &["--parallel", "2", "--ctx", "1024", "--batch", "16"]);
    let a = &s.addr;
    let system = "You are a patient teacher. ".repeat(repeat);
    let mut messages = vec![
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": "Name three rivers."}),
    ];
    let mut cached_sum = 0;
    for turn in 0..3 {
        let req = |cache: bool| {
            json!({"messages": messages, "max_tokens": 12, "temperature": 0.8, "seed": 7 + turn,
                   "logprobs": true, "top_logprobs": 3, "cache_prompt": cache})
        };
        let (st, with) = post(a, "/v1/chat/completions", &req(true));
        assert_eq!(st, 200, "{with}");
        let cached = with["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
        let prompt = with["usage"]["prompt_tokens"].as_u64().unwrap();
        cached_sum += cached;
        let (st, without) = post(a, "/v1/chat/completions", &req(false));
        assert_eq!(st, 200, "{without}");
        assert_eq!(
            without["usage"]["prompt_tokens_details"]["cached_tokens"],
            0
        );
        assert_eq!(
            with["choices"][0], without["choices"][0],
            "turn {turn}: the cache changed the reply"
        );
        eprintln!("turn {turn}: {cached} of {prompt} prompt tokens cached");
        if turn > 0 {
            // All but the new message and the reply's end came from the cache.
            assert!(
                cached + 40 >= prompt && cached < prompt,
                "turn {turn}: {cached} of {prompt} prompt tokens cached"
            );
        }
        let reply = with["choices"][0]["message"]["content"].clone();
        messages.push(json!({"role": "assistant", "content": reply}));
        messages.push(json!({"role": "user", "content": "And one more?"}));
    }
    wait_for(a, "slots_busy", 0);
    let (m, _) = scrape(a);
    assert_eq!(
        value(&m, "ember_prompt_cache_tokens_total", &[]),
        cached_sum as f64
    );
}

#[test]
fn the_prompt_cache_reuses_a_conversation_and_changes_nothing() {
    prompt_cache_changes_nothing(&model(), 12);
}

#[test]
fn the_prompt_cache_changes_nothing_on_gemma3() {
    let m = ember_runner::model_store::stored(&ember_runner::model_store::GEMMA3_270M)
        .unwrap_or_else(|e| panic!("{e:#}"));
    prompt_cache_changes_nothing(m.to_str().unwrap(), 12);
    prompt_cache_changes_nothing(m.to_str().unwrap(), 100);
}

/// `serve --lookup` gives every request the reply, with its
/// log-probabilities, that a server without it gives, with requests
/// drafting and reading prompts in the same steps; on the default model
/// (Q4_1, whose batched arithmetic differs from its decode arithmetic) and
/// on Gemma 3.
fn lookup_changes_nothing(m: &str) {
    let copy = "def area(width, height):\n    if width < 0 or height < 0:\n        raise ValueError(\"negative size\")\n    return width * height\n\n# The same function again:\ndef area(width, height):\n";
    let reqs: Vec<(&str, Value)> = (0..6)
        .map(|i| match i % 3 {
            0 => (
                "/v1/completions",
                json!({"prompt": copy, "max_tokens": 40, "temperature": 0, "logprobs": 2}),
            ),
            1 => (
                "/v1/completions",
                json!({"prompt": copy, "max_tokens": 32, "temperature": 0.8, "seed": i,
                       "logprobs": 2, "stream": i == 4}),
            ),
            _ => (
                "/v1/chat/completions",
                json!({"messages": [{"role": "user", "content": "List three colours, then list them again."}],
                       "max_tokens": 30, "temperature": 0.7, "seed": i, "logprobs": true,
                       "top_logprobs": 2}),
            ),
        })
        .collect();
    let answers = |extra: &[&str]| -> (Vec<Value>, Vec<Sample>) {
        let mut args = vec!["--parallel", "3", "--ctx", "512", "--batch", "8"];
        args.extend_from_slice(extra);
        let s = Server::start_model(m, &args);
        let addr = s.addr.clone();
        let out = std::thread::scope(|sc| {
            let hs: Vec<_> = reqs
                .iter()
                .map(|(path, req)| {
                    let addr = addr.clone();
                    sc.spawn(move || {
                        if req["stream"] == json!(true) {
                            let (st, chunks, done) = post_stream(&addr, path, req);
                            assert!(st == 200 && done);
                            let (text, finish) = streamed_text(path, &chunks);
                            json!({"text": text, "finish": finish})
                        } else {
                            let (st, r) = post(&addr, path, req);
                            assert_eq!(st, 200, "{r}");
                            r["choices"][0].clone()
                        }
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        wait_for(&s.addr, "slots_busy", 0);
        (out, scrape(&s.addr).0)
    };
    let (plain, _) = answers(&[]);
    let (fast, m) = answers(&["--lookup", "4"]);
    for (i, (a, b)) in plain.iter().zip(&fast).enumerate() {
        assert_eq!(a, b, "request {i}: --lookup changed the reply");
    }
    let drafted = value(&m, "ember_lookup_drafted_tokens_total", &[]);
    let accepted = value(&m, "ember_lookup_accepted_tokens_total", &[]);
    assert!(
        accepted >= 10.0 && accepted <= drafted,
        "{accepted} of {drafted} drafts kept"
    );
}

#[test]
fn serve_lookup_changes_nothing_but_speed() {
    let q41 =
        ember_runner::model_store::converted(GgmlType::Q4_1).unwrap_or_else(|e| panic!("{e:#}"));
    lookup_changes_nothing(q41.to_str().unwrap());
    let gemma = ember_runner::model_store::stored(&ember_runner::model_store::GEMMA3_270M)
        .unwrap_or_else(|e| panic!("{e:#}"));
    lookup_changes_nothing(gemma.to_str().unwrap());
}

/// One of the short requests of the paged KV test: at most 256 tokens of
/// prompt and reply, seeded.
fn short_request(i: usize) -> (&'static str, Value) {
    let topics = ["rivers", "bread", "clocks", "the moon", "ships", "owls"];
    let t = topics[i % topics.len()];
    if i.is_multiple_of(2) {
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "system", "content": "You are a patient teacher."},
                                {"role": "user", "content": format!("Tell me about {t}.")}],
                   "max_tokens": 96 + i, "temperature": 0.8, "seed": 300 + i,
                   "ignore_eos": true, "stream": true}),
        )
    } else {
        (
            "/v1/completions",
            json!({"prompt": format!("A short story about {t}:"), "max_tokens": 100 + i,
                   "temperature": 0.9, "seed": 400 + i, "ignore_eos": true, "stream": true}),
        )
    }
}

/// Paged KV: in the KV memory that two slots of `--ctx 2048` take (90 MiB
/// for SmolLM2's f16 cache), sixteen short requests run at once (8x as
/// many), each with the text it gets alone, and every block comes back.
#[test]
fn paged_kv_runs_eight_times_the_requests_in_the_same_memory() {
    let s = Server::start(&[
        "--parallel",
        "16",
        "--ctx",
        "2048",
        "--kv-memory",
        "90",
        "--batch",
        "32",
    ]);
    let addr = s.addr.clone();
    let (m, _) = scrape(&addr);
    let blocks = value(&m, "ember_kv_blocks", &[]);
    assert_eq!(blocks, 128.0, "90 MiB in blocks of 32 positions");
    // All at once, streamed: when each got its first token and its end.
    let t0 = Instant::now();
    let runs: Vec<((String, String), Duration, Duration)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..16)
            .map(|i| {
                let addr = addr.clone();
                sc.spawn(move || {
                    let (path, req) = short_request(i);
                    let mut first = None;
                    let (st, chunks, done) = post_stream_timed(&addr, path, &req, &mut first, t0);
                    assert!(st == 200 && done);
                    (streamed_text(path, &chunks), first.unwrap(), t0.elapsed())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Every request had its first token before any of them ended: all
    // sixteen ran at once (two whole --ctx 2048 caches allow two).
    let first_end = runs.iter().map(|r| r.2).min().unwrap();
    for (i, r) in runs.iter().enumerate() {
        assert!(r.1 < first_end, "request {i} started after another ended");
    }
    wait_for(&addr, "slots_busy", 0);
    for (i, r) in runs.iter().enumerate() {
        let (path, mut req) = short_request(i);
        req["stream"] = json!(false);
        assert_eq!(
            answer(&addr, path, &req),
            r.0,
            "request {i} differs from alone"
        );
    }
    let (m, _) = scrape(&addr);
    // Idle slots keep their blocks as a prompt cache; none is lost.
    assert!(value(&m, "ember_kv_blocks_free", &[]) <= blocks);
    // Two requests with one long system prompt: the second, sent while
    // the first streams, shares its whole blocks (copy on write) instead
    // of reading them, and its reply is the one it gets alone.
    let system = "You are a patient teacher who answers in plain words. ".repeat(8);
    let ask = |q: &str, n: usize, stream: bool, cache: bool| {
        json!({"messages": [{"role": "system", "content": system},
                            {"role": "user", "content": q}],
               "max_tokens": n, "temperature": 0.7, "seed": 5, "ignore_eos": true,
               "stream": stream, "cache_prompt": cache})
    };
    let long = ask("Tell me a long story.", 400, true, false);
    let shared = std::thread::scope(|sc| {
        let a = addr.clone();
        let first = sc.spawn(move || post_stream(&a, "/v1/chat/completions", &long));
        // Once the first is generating, its prompt's blocks are written.
        let t = Instant::now();
        while health(&addr)["slots_busy"] != 1 && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        let (st, r) = post(
            &addr,
            "/v1/chat/completions",
            &ask("Why is the sky blue?", 24, false, true),
        );
        assert_eq!(st, 200, "{r}");
        let (st, _, done) = first.join().unwrap();
        assert!(st == 200 && done);
        r
    });
    let cached = shared["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(cached >= 64, "{cached} prompt tokens shared");
    let (st, alone) = post(
        &addr,
        "/v1/chat/completions",
        &ask("Why is the sky blue?", 24, false, false),
    );
    assert_eq!(st, 200, "{alone}");
    assert_eq!(
        shared["choices"][0], alone["choices"][0],
        "sharing changed the reply"
    );
    // A request of the whole context still fits: the idle caches give
    // their blocks back.
    let ids: Vec<u32> = (0..2000u32).map(|i| 100 + i % 500).collect();
    let (st, r) = post(
        &addr,
        "/v1/completions",
        &json!({"prompt": ids, "max_tokens": 48, "ignore_eos": true}),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["usage"]["completion_tokens"], 48);
}

/// [`post_stream`], noting when the first chunk with a token came.
fn post_stream_timed(
    addr: &str,
    path: &str,
    v: &Value,
    first: &mut Option<Duration>,
    t0: Instant,
) -> (u16, Vec<Value>, bool) {
    let body = serde_json::to_vec(v).unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    // Headers, then the chunked body, read as it comes.
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
    }
    let (mut chunks, mut done, mut buf) = (Vec::new(), false, Vec::new());
    while !done {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let size = usize::from_str_radix(line.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        let mut part = vec![0u8; size + 2];
        r.read_exact(&mut part).unwrap();
        buf.extend_from_slice(&part[..size]);
        while let Some(at) = buf.iter().position(|&b| b == b'\n') {
            let l: Vec<u8> = buf.drain(..=at).collect();
            let l = String::from_utf8(l).unwrap();
            let Some(data) = l.trim().strip_prefix("data: ").map(str::to_string) else {
                continue;
            };
            if data == "[DONE]" {
                done = true;
                break;
            }
            let c: Value = serde_json::from_str(&data).unwrap();
            let ch = &c["choices"][0];
            let has = ch["text"].is_string() || ch["delta"]["content"].is_string();
            if has && first.is_none() {
                *first = Some(t0.elapsed());
            }
            chunks.push(c);
        }
    }
    (status, chunks, done)
}
