//! `ember serve` as clients use it, on an ephemeral loopback port: the
//! OpenAI endpoints, concurrent seeded requests equal to the same requests
//! served alone, the queue limit, cancellation, bad input, and SIGTERM.

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
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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
    assert_eq!(chunks.last().unwrap()["usage"], r["usage"]);

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
