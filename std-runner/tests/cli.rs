//! The `ember` command as a user runs it: the JSON contract, the free-running
//! greedy check against the exact reference, conversion, and bad input (one
//! line on stderr, non-zero exit, never a panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ember_core::quant::GgmlType;
use serde_json::Value;

fn ember(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .output()
        .expect("run ember")
}

fn golden(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn model(ty: GgmlType) -> PathBuf {
    ember_runner::model_store::converted(ty).unwrap_or_else(|e| panic!("{e:#}"))
}

fn ids_arg(v: &Value) -> String {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn json_out(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "ember failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("one JSON object on stdout")
}

/// Bad input: non-zero exit and exactly one line on stderr, with `needle` in it.
fn assert_one_line_error(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure, stderr: {err}");
    assert_eq!(
        o.status.code(),
        Some(1),
        "exit code (a panic gives 101): {err}"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {err}");
    assert!(lines[0].contains(needle), "'{needle}' not in: {err}");
}

#[test]
fn f16_free_running_greedy_equals_exact() {
    let m = model(GgmlType::F16);
    let g = golden("tf_f16.json");
    for case in g["cases"].as_array().unwrap() {
        let n_prompt = case["n_prompt"].as_u64().unwrap() as usize;
        let path: Vec<u64> = case["path_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let o = ember(&[
            "run",
            "--model",
            m.to_str().unwrap(),
            "--prompt-ids",
            &ids_arg(&case["prompt_ids"]),
            "-n",
            "32",
            "--ignore-eos",
            "--temp",
            "0",
            "--kv-type",
            "f32",
            "--json",
        ]);
        let j = json_out(&o);
        let got: Vec<u64> = j["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(got, path[n_prompt..], "case {}", case["name"]);
        assert_eq!(j["generated_tokens"], 32);
        assert_eq!(j["prompt_tokens"].as_u64().unwrap() as usize, n_prompt);
    }
}

#[test]
fn logits_all_reports_every_prompt_position() {
    let m = model(GgmlType::Q8_0);
    let g = golden("tf_q8_0.json");
    let case = &g["cases"][2];
    let o = ember(&[
        "run",
        "-m",
        m.to_str().unwrap(),
        "--prompt-ids",
        &ids_arg(&case["path_ids"]),
        "-n",
        "1",
        "--top-logits",
        "10",
        "--logits-all",
        "--kv-type",
        "f32",
        "--json",
    ]);
    let j = json_out(&o);
    let all = j["top_logits_all"].as_array().unwrap();
    assert_eq!(all.len(), case["path_ids"].as_array().unwrap().len());
    assert_eq!(j["top_logits"], all[all.len() - 1]);
    for p in case["positions"].as_array().unwrap() {
        let pos = p["pos"].as_u64().unwrap() as usize;
        let ours = &all[pos];
        assert_eq!(ours.as_array().unwrap().len(), 10);
        // Same top-1 id as the exact reference, logit within 0.01.
        assert_eq!(ours[0][0], p["exact_top10"][0][0], "pos {pos}");
        let d = ours[0][1].as_f64().unwrap() - p["exact_top10"][0][1].as_f64().unwrap();
        assert!(d.abs() < 0.01, "pos {pos}: {d}");
    }
}

#[test]
fn default_model_runs_and_streams_text() {
    // No --model: the cached default model (fetched on first use).
    let o = ember(&["run", "--prompt-ids", "6403,1980,253,655,28", "-n", "8"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!String::from_utf8_lossy(&o.stdout).trim().is_empty());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("5 prompt tokens, 8 generated"), "{err}");
}

#[test]
fn convert_round_trips_and_matches_the_reference_bytes() {
    let q41 = model(GgmlType::Q4_1);
    let dir = std::env::temp_dir().join(format!("ember-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("q8.gguf");
    let o = ember(&[
        "convert",
        q41.to_str().unwrap(),
        out.to_str().unwrap(),
        "--type",
        "q8_0",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The tensors are those gguf-py writes (the golden Q8_0 file's sha256).
    let g = golden("tf_q8_0.json");
    assert_eq!(sha256(&out), g["meta"]["model_sha256"].as_str().unwrap());
    // Q4_0 and Q4_1 targets load and run.
    for ty in ["q4_0", "q4_1", "f16"] {
        let p = dir.join(format!("{ty}.gguf"));
        let o = ember(&[
            "convert",
            out.to_str().unwrap(),
            p.to_str().unwrap(),
            "-t",
            ty,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let j = json_out(&ember(&[
            "run",
            "-m",
            p.to_str().unwrap(),
            "--prompt-ids",
            "1,2,3",
            "-n",
            "2",
            "--json",
        ]));
        assert_eq!(j["ids"].as_array().unwrap().len(), 2);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn sha256(p: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(p).unwrap();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn bad_input_is_one_line_and_nonzero() {
    let dir = std::env::temp_dir().join(format!("ember-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let m = model(GgmlType::Q4_1);
    let m = m.to_str().unwrap();

    let missing = dir.join("nope.gguf");
    assert_one_line_error(
        &ember(&["run", "-m", missing.to_str().unwrap(), "--prompt-ids", "1"]),
        "cannot open",
    );

    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"not a model at all").unwrap();
    assert_one_line_error(
        &ember(&["run", "-m", junk.to_str().unwrap(), "--prompt-ids", "1"]),
        "not a GGUF file",
    );

    // A real file cut short in the middle of its tensor data.
    let bytes = std::fs::read(m).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert_one_line_error(
        &ember(&["run", "-m", cut.to_str().unwrap(), "--prompt-ids", "1"]),
        "past the",
    );

    assert_one_line_error(
        &ember(&["run", "-m", m, "--prompt-ids", "1,x"]),
        "not a token id",
    );
    assert_one_line_error(
        &ember(&["run", "-m", m, "--prompt-ids", "99999999"]),
        "out of range",
    );
    assert_one_line_error(&ember(&["run", "-m", m, "--prompt-ids", ""]), "empty");
    // The GPU in a build without it: each command says how to make one.
    if !cfg!(feature = "gpu") {
        for args in [
            &["run", "-m", m, "--prompt-ids", "1", "--device", "gpu"][..],
            &["bench", "-m", m, "-p", "1", "-n", "1", "--device", "gpu"],
            &["serve", "-m", m, "--port", "0", "--device", "gpu"],
        ] {
            assert_one_line_error(&ember(args), "--features gpu");
        }
    }
    assert_one_line_error(
        &ember(&[
            "run",
            "-m",
            m,
            "--prompt-ids",
            "1,2,3,4,5",
            "-n",
            "10",
            "--ctx",
            "4",
        ]),
        "the prompt is 5 tokens but the context holds 4",
    );
    assert_one_line_error(
        &ember(&["run", "-m", m, "--prompt-ids", "1", "--ctx", "0"]),
        "--ctx",
    );
    assert_one_line_error(
        &ember(&[
            "run",
            "-m",
            m,
            "--prompt-ids",
            "1",
            "--sinks",
            "8",
            "--window",
            "0",
        ]),
        "--window",
    );
    assert_one_line_error(
        &ember(&[
            "run",
            "-m",
            m,
            "--prompt-ids",
            "1",
            "--sinks",
            "8",
            "--ctx",
            "8",
        ]),
        "--sinks 8 leaves no room",
    );
    assert_one_line_error(
        &ember(&[
            "run",
            "-m",
            m,
            "--prompt-ids",
            "1",
            "--ctx",
            "100",
            "--window",
            "10",
        ]),
        "disagrees",
    );
    // A value clap rejects: one line too, with the usage exit code 2.
    let o = ember(&["run", "-m", m, "--prompt-ids", "1", "--kv-type", "q4_0"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--kv-type"), "{err}");
    assert_one_line_error(
        &ember(&["run", "-m", m, "--prompt-ids", "1", "--batch", "0"]),
        "batch",
    );
    assert_one_line_error(
        &ember(&["run", "-m", m, "--prompt-ids", "1", "--ctx", "99999999999"]),
        "limit",
    );
    assert_one_line_error(
        &ember(&["run", "-m", m, "--prompt-ids", "1", "--logits-all"]),
        "--top-logits",
    );
    assert_one_line_error(
        &ember(&[
            "convert",
            m,
            dir.join("x.gguf").to_str().unwrap(),
            "-t",
            "q5_k",
        ]),
        "unknown type",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A copy of `src` with metadata keys for which `keep` is false dropped and
/// `extra` string keys added (tokenizer bad-input cases).
fn rewrite(src: &Path, dst: &Path, keep: impl Fn(&str) -> bool, extra: &[(&str, &str)]) {
    use ember_core::gguf::Gguf;
    use ember_core::gguf_writer::GgufWriter;
    let bytes = std::fs::read(src).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let mut w = GgufWriter::new();
    w.version(g.version).alignment(g.alignment);
    for (key, _, raw) in g.metadata_raw() {
        if keep(key) {
            w.add_raw(raw);
        }
    }
    for (k, v) in extra {
        w.add_str(k, v);
    }
    for t in g.tensors() {
        w.add_tensor(t.name, &t.dims[..t.n_dims as usize], t.ty, t.data.to_vec());
    }
    std::fs::write(dst, w.to_bytes()).unwrap();
}

fn ember_stdin(args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ember");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// Gemma 3 270M, fetched by name: the file is the pretrained checkpoint
/// (no chat tuning), so the question is asked as a completion; it gets the
/// Gemma template when asked as a chat (the file ships none).
#[test]
fn gemma3_270m_answers_the_capital_of_france() {
    let o = ember(&[
        "run",
        "--model",
        "gemma3-270m",
        "Question: What is the capital of France?\nAnswer:",
        "-n",
        "4",
        "--temp",
        "0",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.trim_start().starts_with("Paris"), "{out}");
    let o = ember(&[
        "run",
        "--model",
        "gemma3-270m",
        "--chat",
        "Hi",
        "-n",
        "1",
        "--verbose-prompt",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the built-in gemma3")
            && err.contains("<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"),
        "{err}"
    );
}

#[test]
fn chat_answers_the_capital_of_france() {
    let o = ember(&[
        "run",
        "--chat",
        "What is the capital of France?",
        "-n",
        "32",
        "--temp",
        "0",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Paris"), "{out}");
    // It stopped at the end of its turn, not at -n, and printed no control token.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains(" 32 generated"), "{err}");
    assert!(!out.contains("<|im_end|>"), "{out}");
}

#[test]
fn text_prompt_streams_and_json_has_the_same_text() {
    let m = model(GgmlType::Q8_0);
    let m = m.to_str().unwrap();
    let human = ember(&[
        "run",
        "-m",
        m,
        "The capital of France is",
        "-n",
        "12",
        "--temp",
        "0",
    ]);
    assert!(
        human.status.success(),
        "{}",
        String::from_utf8_lossy(&human.stderr)
    );
    let err = String::from_utf8_lossy(&human.stderr);
    assert!(
        err.contains("prompt tokens") && err.contains("decode"),
        "{err}"
    );
    let j = json_out(&ember(&[
        "run",
        "-m",
        m,
        "The capital of France is",
        "-n",
        "12",
        "--temp",
        "0",
        "--json",
    ]));
    // Tokenized as llama.cpp does; the streamed text is the JSON's text.
    let t = json_out(&ember(&[
        "tokenize",
        "-m",
        m,
        "The capital of France is",
        "--json",
    ]));
    assert_eq!(j["prompt_ids"], t["ids"]);
    let streamed = String::from_utf8_lossy(&human.stdout);
    assert_eq!(streamed.trim_end_matches('\n'), j["text"].as_str().unwrap());
    assert!(!j["text"].as_str().unwrap().is_empty());
}

#[test]
fn tokenize_matches_golden_ids() {
    let g = golden("tokenizer_cases.json");
    for c in g["cases"].as_array().unwrap().iter().take(8) {
        let text = c["text"].as_str().unwrap();
        let plain = json_out(&ember(&["tokenize", text, "--json"]));
        assert_eq!(plain["ids"], c["ids_special_false"], "{text:?}");
        let special = json_out(&ember(&["tokenize", text, "--special", "--json"]));
        assert_eq!(special["ids"], c["ids_special_true"], "{text:?}");
    }
    let o = ember(&["tokenize", "Hello world"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("19556 -> 'Hello'") && out.contains("905 -> ' world'"),
        "{out}"
    );
}

#[test]
fn chat_repl_keeps_history_and_resets() {
    let m = model(GgmlType::Q8_0);
    let input = b"What is the capital of France?\nAnd of Italy?\n/reset\n\xff\xfe\nWhat is the capital of Germany?\n";
    let o = ember_stdin(
        &["chat", "-m", m.to_str().unwrap(), "-n", "24", "--temp", "0"],
        input,
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let replies: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(replies.len() >= 3, "{out}");
    assert!(out.contains("Paris"), "{out}");
    // The second question only makes sense with the first in the history.
    assert!(out.contains("Rome"), "{out}");
    assert!(out.contains("Berlin"), "{out}");
    assert!(err.contains("conversation reset"), "{err}");
    assert!(err.contains("not valid UTF-8"), "{err}");
}

#[test]
fn text_bad_input_is_one_line_and_nonzero() {
    let dir = std::env::temp_dir().join(format!("ember-badtext-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = model(GgmlType::Q4_1);
    let m = src.to_str().unwrap();

    assert_one_line_error(&ember(&["run", "-m", m, ""]), "prompt is empty");
    assert_one_line_error(
        &ember(&["run", "-m", m, "a b c d e f", "--ctx", "3"]),
        "context holds 3",
    );
    assert_one_line_error(
        &ember_stdin(&["run", "-m", m, "-"], b"ok \xc3\x28"),
        "not valid UTF-8",
    );
    assert_one_line_error(
        &ember_stdin(&["tokenize", "-m", m, "-"], b"\xff"),
        "not valid UTF-8",
    );
    assert_one_line_error(
        &ember(&["run", "-m", m, "x", "--prompt-ids", "1"]),
        "not both",
    );
    assert_one_line_error(
        &ember(&["run", "-m", m, "--system", "be brief", "x"]),
        "--chat",
    );

    // Invalid UTF-8 in an argument: one line, exit 2 (argument error).
    {
        use std::os::unix::ffi::OsStrExt;
        let o = Command::new(env!("CARGO_BIN_EXE_ember"))
            .arg("run")
            .arg(std::ffi::OsStr::from_bytes(b"\xff\xfe"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("UTF-8"), "{err}");
    }

    let no_tok = dir.join("no-tokenizer.gguf");
    rewrite(&src, &no_tok, |k| !k.starts_with("tokenizer."), &[]);
    let nt = no_tok.to_str().unwrap();
    assert_one_line_error(&ember(&["run", "-m", nt, "hello"]), "no tokenizer");
    assert_one_line_error(&ember(&["tokenize", "-m", nt, "hello"]), "no tokenizer");
    // Ids still run without a tokenizer.
    let o = ember(&["run", "-m", nt, "--prompt-ids", "1,2", "-n", "2", "--json"]);
    assert_eq!(json_out(&o)["ids"].as_array().unwrap().len(), 2);

    let bad_pre = dir.join("bad-pre.gguf");
    rewrite(
        &src,
        &bad_pre,
        |k| k != "tokenizer.ggml.pre",
        &[("tokenizer.ggml.pre", "klingon")],
    );
    assert_one_line_error(
        &ember(&["tokenize", "-m", bad_pre.to_str().unwrap(), "hello"]),
        "unknown pre-tokenizer 'klingon'",
    );

    let bad_tpl = dir.join("bad-template.gguf");
    rewrite(
        &src,
        &bad_tpl,
        |k| k != "tokenizer.chat_template",
        &[(
            "tokenizer.chat_template",
            "{% for m in messages %}{{ m.content ",
        )],
    );
    assert_one_line_error(
        &ember(&["run", "-m", bad_tpl.to_str().unwrap(), "--chat", "hi"]),
        "chat template",
    );
    let raising = dir.join("raising-template.gguf");
    rewrite(
        &src,
        &raising,
        |k| k != "tokenizer.chat_template",
        &[(
            "tokenizer.chat_template",
            "{{ raise_exception('roles must alternate') }}",
        )],
    );
    assert_one_line_error(
        &ember(&["run", "-m", raising.to_str().unwrap(), "--chat", "hi"]),
        "roles must alternate",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn ids_of(o: &Output) -> Vec<u64> {
    json_out(o)["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

#[test]
fn seeds_repeat_runs_and_differ_between_runs() {
    let m = model(GgmlType::Q8_0);
    let m = m.to_str().unwrap();
    let run = |seed: &str| {
        let o = ember(&[
            "run",
            "-m",
            m,
            "Once upon a time",
            "-n",
            "24",
            "--temp",
            "1",
            "--top-k",
            "100000",
            "--top-p",
            "1",
            "--min-p",
            "0",
            "--ignore-eos",
            "--seed",
            seed,
            "--json",
        ]);
        let j = json_out(&o);
        assert_eq!(j["seed"].as_u64(), Some(seed.parse().unwrap()));
        ids_of(&o)
    };
    let a = run("1234");
    assert_eq!(a.len(), 24);
    assert_eq!(a, run("1234"));
    assert_ne!(a, run("1235"));
    // Without --seed a seed is chosen, printed and reported.
    let o = ember(&["run", "-m", m, "Hi", "-n", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("seed "), "{err}");
}

#[test]
fn beams_and_stop_strings() {
    let m = model(GgmlType::Q8_0);
    let m = m.to_str().unwrap();
    let greedy = ids_of(&ember(&[
        "run",
        "-m",
        m,
        "The sky is",
        "-n",
        "12",
        "--temp",
        "0",
        "--json",
    ]));
    let one = json_out(&ember(&[
        "run",
        "-m",
        m,
        "The sky is",
        "-n",
        "12",
        "--beams",
        "1",
        "--json",
    ]));
    assert_eq!(
        one["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect::<Vec<_>>(),
        greedy
    );
    let four = json_out(&ember(&[
        "run",
        "-m",
        m,
        "The sky is",
        "-n",
        "12",
        "--beams",
        "4",
        "--json",
    ]));
    let beams = four["beams"].as_array().unwrap();
    assert!(!beams.is_empty() && beams.len() <= 4);
    let scores: Vec<f64> = beams.iter().map(|b| b["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert_eq!(four["ids"], beams[0]["ids"]);

    // A stop string ends the text before it, and the run.
    let full = json_out(&ember(&[
        "run",
        "-m",
        m,
        "Count: 1, 2, 3,",
        "-n",
        "20",
        "--temp",
        "0",
        "--json",
    ]));
    let text = full["text"].as_str().unwrap().to_string();
    assert!(text.contains(" 6"), "{text}");
    let cut = json_out(&ember(&[
        "run",
        "-m",
        m,
        "Count: 1, 2, 3,",
        "-n",
        "20",
        "--temp",
        "0",
        "--stop",
        " 6",
        "--json",
    ]));
    let cut_text = cut["text"].as_str().unwrap();
    assert_eq!(cut_text, &text[..text.find(" 6").unwrap()]);
    assert!(cut["ids"].as_array().unwrap().len() < full["ids"].as_array().unwrap().len());
}

#[test]
fn bad_sampling_flags_name_the_flag() {
    let m = model(GgmlType::Q4_1);
    let m = m.to_str().unwrap();
    for (flag, value) in [
        ("--temp", "-1"),
        ("--temp", "nan"),
        ("--top-p", "-0.1"),
        ("--top-p", "1.01"),
        ("--top-p", "nan"),
        ("--top-k", "0"),
        ("--top-k", "-3"),
        ("--min-p", "-0.5"),
        ("--min-p", "inf"),
        ("--repeat-penalty", "0"),
        ("--repeat-last-n", "100000"),
        ("--beams", "0"),
        ("--length-penalty", "inf"),
    ] {
        assert_one_line_error(
            &ember(&["run", "-m", m, "hi", "-n", "2", flag, value]),
            flag,
        );
    }
    assert_one_line_error(
        &ember(&["run", "-m", m, "hi", "-n", "2", "--beams", "1000000"]),
        "--beams 1000000 needs",
    );
    assert_one_line_error(&ember(&["chat", "-m", m, "--temp", "-2"]), "--temp");
    // llama.cpp's edges are accepted and greedy: top-p 0 and min-p above 1
    // keep the single most likely token.
    let greedy = ember(&["run", "-m", m, "hi", "-n", "6", "--temp", "0", "--json"]);
    for (flag, value) in [("--top-p", "0"), ("--min-p", "1.5")] {
        let o = ember(&[
            "run", "-m", m, "hi", "-n", "6", "--seed", "3", flag, value, "--json",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let ids = |o: &Output| serde_json::from_slice::<Value>(&o.stdout).unwrap()["ids"].clone();
        assert_eq!(ids(&o), ids(&greedy), "{flag} {value}");
    }
}

/// Threads split each step without changing a single bit of the result; the
/// scalar reference and the mapped file agree with the default path.
#[test]
fn threads_kernels_and_mmap_give_the_same_tokens() {
    let m = model(GgmlType::Q8_0);
    let m = m.to_str().unwrap();
    let run = |extra: &[&str]| -> Value {
        let mut args = vec![
            "run",
            "-m",
            m,
            "--prompt-ids",
            "1,9038,2,1169,5,3510",
            "-n",
            "12",
            "--temp",
            "0",
            "--top-logits",
            "5",
            "--json",
        ];
        args.extend_from_slice(extra);
        json_out(&ember(&args))
    };
    let one = run(&["--threads", "1"]);
    assert_eq!(one["threads"], 1);
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let many = run(&["--threads", &logical.to_string(), "--mmap"]);
    assert_eq!(many["threads"], logical as u64);
    assert_eq!(one["ids"], many["ids"]);
    assert_eq!(
        one["top_logits"], many["top_logits"],
        "logits differ with threads"
    );
    // The scalar table of the same arithmetic gives the same tokens.
    let reference = if one["kernels"] == "avx2" {
        "scalar-q16"
    } else {
        "scalar"
    };
    let scalar = run(&["--kernels", reference, "--threads", "1"]);
    assert_eq!(scalar["kernels"], reference);
    assert_eq!(one["ids"], scalar["ids"]);
}

#[test]
fn bench_reports_the_contract_fields() {
    let m = model(GgmlType::Q4_1);
    let o = ember(&[
        "bench",
        "-m",
        m.to_str().unwrap(),
        "-p",
        "16",
        "-n",
        "4",
        "--reps",
        "1",
        "--threads",
        "1",
        "--json",
    ]);
    let j = json_out(&o);
    for k in ["pp_tok_s", "tg_tok_s", "read_gb_s", "tg_floor_tok_s"] {
        let v = j[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {j}"));
        assert!(v > 0.0 && v.is_finite(), "{k} = {v}");
    }
    assert_eq!(j["threads"], 1);
    assert_eq!(j["type"], "q4_1");
    assert_eq!(j["pp_runs"].as_array().unwrap().len(), 1);
    // Weights read per token: every matrix once, about 97 MB at Q4_1.
    let b = j["bytes_per_token"].as_u64().unwrap();
    assert!((90_000_000..100_000_000).contains(&b), "{b}");
}

#[test]
fn bench_starts_from_a_filled_cache_with_depth() {
    let m = model(GgmlType::Q4_1);
    let m = m.to_str().unwrap();
    let o = ember(&[
        "bench",
        "-m",
        m,
        "-p",
        "8",
        "-n",
        "4",
        "-d",
        "40",
        "--seqs",
        "2",
        "--reps",
        "1",
        "--threads",
        "1",
        "--json",
    ]);
    let j = json_out(&o);
    assert_eq!(j["n_depth"], 40);
    for k in ["pp_tok_s", "tg_tok_s", "tg_batched_tok_s"] {
        let v = j[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {j}"));
        assert!(v > 0.0 && v.is_finite(), "{k} = {v}");
    }
    let o = ember(&[
        "bench", "-m", m, "-p", "8", "-n", "4", "-d", "40", "--reps", "1",
    ]);
    assert!(o.status.success());
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("pp8 @ d40") && table.contains("tg4 @ d40"),
        "{table}"
    );
    assert_one_line_error(
        &ember(&["bench", "-m", m, "-d", "1000000", "--reps", "1"]),
        "-p, -n and -d are at most",
    );
}

#[test]
fn bad_threads_and_kernels_are_one_line_errors() {
    let m = model(GgmlType::Q4_1);
    let m = m.to_str().unwrap();
    assert_one_line_error(
        &ember(&[
            "run",
            "-m",
            m,
            "--prompt-ids",
            "1",
            "-n",
            "1",
            "--threads",
            "0",
        ]),
        "--threads must be at least 1",
    );
    assert_one_line_error(
        &ember(&["bench", "-m", m, "--threads", "100000", "--reps", "1"]),
        "--threads 100000",
    );
    assert_one_line_error(
        &ember(&["bench", "-m", m, "--reps", "0"]),
        "--reps must be at least 1",
    );
    let missing = if cfg!(target_arch = "aarch64") {
        "avx2"
    } else {
        "neon"
    };
    assert_one_line_error(
        &ember(&[
            "run",
            "-m",
            m,
            "--prompt-ids",
            "1",
            "-n",
            "1",
            "--kernels",
            missing,
        ]),
        &format!("--kernels {missing}"),
    );
}

/// The id of a control token in the file's vocabulary.
fn special_id(m: &str, text: &str) -> u64 {
    let ids = json_out(&ember(&["tokenize", "-m", m, text, "--special", "--json"]))["ids"].clone();
    let ids = ids.as_array().unwrap();
    assert_eq!(ids.len(), 1, "{text} is one token");
    ids[0].as_u64().unwrap()
}

#[test]
fn run_goes_on_until_the_end_of_generation_by_default() {
    let m = model(GgmlType::Q8_0);
    let m = m.to_str().unwrap();
    let im_end = special_id(m, "<|im_end|>");
    // No -n: the reply ends with the model's own end of turn, well inside
    // the context, and the text is whole.
    let j = json_out(&ember(&[
        "run",
        "-m",
        m,
        "--chat",
        "What is the capital of France?",
        "--temp",
        "0",
        "--json",
    ]));
    let ids = j["ids"].as_array().unwrap();
    let ctx = j["kv"]["capacity"].as_u64().unwrap() as usize;
    assert!(ids.len() > 1 && ids.len() < ctx, "{j}");
    assert_eq!(ids.last().unwrap().as_u64(), Some(im_end), "{j}");
    let text = j["text"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text}");
    assert!(text.trim_end().ends_with('.'), "{text}");
    assert!(!text.contains("<|im_end|>"), "{text}");

    // -n caps it.
    let j = json_out(&ember(&[
        "run",
        "-m",
        m,
        "--chat",
        "What is the capital of France?",
        "--temp",
        "0",
        "-n",
        "3",
        "--json",
    ]));
    assert_eq!(j["generated_tokens"], 3, "{j}");
    assert_eq!(j["ids"].as_array().unwrap().len(), 3, "{j}");

    // Without an end (--ignore-eos), the context bounds it: prompt + reply
    // fill --ctx.
    for extra in [&[][..], &["--beams", "2"][..]] {
        let mut args = vec![
            "run",
            "-m",
            m,
            "--prompt-ids",
            "1,9038,2,1169,5",
            "--ctx",
            "16",
            "--temp",
            "0",
            "--ignore-eos",
            "--json",
        ];
        args.extend_from_slice(extra);
        let j = json_out(&ember(&args));
        if extra.is_empty() {
            assert_eq!(j["generated_tokens"], 11, "{j}");
        } else {
            // A beam may still end early at an end-of-generation token.
            let n = j["generated_tokens"].as_u64().unwrap();
            assert!((1..=11).contains(&n), "{j}");
        }
    }
}

#[test]
fn chat_template_flag_overrides_the_files() {
    let dir = std::env::temp_dir().join(format!("ember-tpl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let m = model(GgmlType::Q8_0);
    let m = m.to_str().unwrap();
    let prompt_of = |extra: &[&str]| -> (String, Value) {
        let mut args = vec![
            "run", "-m", m, "--chat", "Hi", "-n", "1", "--temp", "0", "--json",
        ];
        args.extend_from_slice(extra);
        let j = json_out(&ember(&args));
        (
            j["prompt"].as_str().unwrap().to_string(),
            j["prompt_ids"].clone(),
        )
    };
    // The file's own template writes SmolLM's default system message.
    let (own, own_ids) = prompt_of(&[]);
    assert!(own.contains("named SmolLM"), "{own}");

    let file = dir.join("plain.jinja");
    std::fs::write(
        &file,
        "{% for m in messages %}[{{ m.role | upper }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[ASSISTANT]{% endif %}",
    )
    .unwrap();
    let (p, ids) = prompt_of(&["--chat-template", file.to_str().unwrap()]);
    assert_eq!(p, "[USER] Hi\n[ASSISTANT]");
    assert_ne!(ids, own_ids);
    // --system goes through it too.
    let (p, _) = prompt_of(&[
        "--system",
        "Be brief.",
        "--chat-template",
        file.to_str().unwrap(),
    ]);
    assert_eq!(p, "[SYSTEM] Be brief.\n[USER] Hi\n[ASSISTANT]");

    // A built-in template by name; variables through --chat-template-kwargs.
    let (p, _) = prompt_of(&["--chat-template", "chatml"]);
    assert_eq!(p, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    let (p, _) = prompt_of(&[
        "--chat-template",
        "qwen3",
        "--chat-template-kwargs",
        r#"{"enable_thinking": false}"#,
    ]);
    assert_eq!(
        p,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    );

    // --verbose-prompt shows the rendering and where the template came from.
    let o = ember(&[
        "run",
        "-m",
        m,
        "--chat",
        "Hi",
        "-n",
        "1",
        "--verbose-prompt",
        "--chat-template",
        file.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("plain.jinja") && err.contains("[USER] Hi\n[ASSISTANT]"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_chat_template_is_one_line_and_nonzero() {
    let dir = std::env::temp_dir().join(format!("ember-badtpl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let m = model(GgmlType::Q8_0);
    let m = m.to_str().unwrap();
    let write = |name: &str, text: &[u8]| -> String {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let unclosed = write("unclosed.jinja", b"{% for m in messages %}{{ m.content }}");
    let raising = write(
        "raising.jinja",
        b"{{ raise_exception('no chatting today') }}",
    );
    let broken = write("broken.jinja", b"{{ messages[0].content + 1 }}");
    let binary = write("binary.jinja", b"\xff\xfe{{ x }}");
    let missing = dir.join("missing.jinja");
    let missing = missing.to_str().unwrap();
    let cases = [
        (unclosed.as_str(), "does not compile"),
        (raising.as_str(), "no chatting today"),
        (broken.as_str(), "chat template failed"),
        (binary.as_str(), "not UTF-8"),
        (missing, "no such file"),
    ];
    for (tpl, needle) in cases {
        assert_one_line_error(
            &ember(&["run", "-m", m, "--chat", "hi", "--chat-template", tpl]),
            needle,
        );
        assert_one_line_error(
            &ember_stdin(&["chat", "-m", m, "--chat-template", tpl], b"hi\n"),
            needle,
        );
    }
    // Serve fails at start on one that does not compile.
    assert_one_line_error(
        &ember(&[
            "serve",
            "-m",
            m,
            "--port",
            "0",
            "--chat-template",
            &unclosed,
        ]),
        "does not compile",
    );
    assert_one_line_error(
        &ember(&["run", "-m", m, "hi", "--chat-template", &raising]),
        "need --chat",
    );
    assert_one_line_error(
        &ember(&[
            "run",
            "-m",
            m,
            "--chat",
            "hi",
            "--chat-template-kwargs",
            "[1]",
        ]),
        "JSON object",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn grammars_and_json_schemas_constrain_run() {
    let m = model(GgmlType::Q8_0);
    let m = m.to_str().unwrap();
    let schema = r#"{"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}, "people": {"type": "integer"}}, "required": ["city", "people"]}"#;
    for seed in ["1", "2"] {
        let o = ember(&[
            "run",
            "--model",
            m,
            "A city as JSON:",
            "-n",
            "100",
            "--seed",
            seed,
            "--json-schema",
            schema,
            "--json",
        ]);
        let v = json_out(&o);
        let text = v["text"].as_str().unwrap();
        let city: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(
            city["city"].is_string() && city["people"].is_i64(),
            "{city}"
        );
    }
    let dir = std::env::temp_dir().join(format!("ember-grammar-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("yn.gbnf");
    std::fs::write(
        &file,
        "# yes or no\nroot ::= \" \" answer \".\"\nanswer ::= \"yes\" | \"no\"\n",
    )
    .unwrap();
    let v = json_out(&ember(&[
        "run",
        "--model",
        m,
        "Is fire hot? Answer:",
        "--temp",
        "0",
        "-n",
        "10",
        "--grammar-file",
        file.to_str().unwrap(),
        "--json",
    ]));
    assert!(
        ["yes.", "no."].contains(&v["text"].as_str().unwrap().trim()),
        "{v}"
    );
    assert_one_line_error(
        &ember(&[
            "run",
            "--model",
            m,
            "x",
            "--grammar",
            "root ::= \"a\"\nroot ::= b",
        ]),
        "rule defined twice at line 2, column 1",
    );
    assert_one_line_error(
        &ember(&[
            "run",
            "--model",
            m,
            "x",
            "--json-schema",
            r#"{"type": "integer", "minimum": 1}"#,
        ]),
        "'minimum'",
    );
    assert_one_line_error(
        &ember(&["run", "--model", m, "x", "--json-schema", "{"]),
        "not JSON",
    );
    let both = ember(&[
        "run",
        "--model",
        m,
        "x",
        "--grammar",
        "root ::= \"a\"",
        "-j",
        "{}",
    ]);
    assert!(!both.status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Speculative decoding by prompt lookup gives the ids plain decoding gives,
/// greedy and sampled, on a copying prompt (where drafts are kept) and a
/// free one, because a batched step's rows have the bits of one-token steps.
#[test]
fn prompt_lookup_changes_nothing_but_speed() {
    // Q8_0, Q4_1 (whose batched and decode arithmetic differ, as F16's and
    // the K-quants' do) and Gemma 3's windowed layers.
    let gemma = ember_runner::model_store::stored(&ember_runner::model_store::GEMMA3_270M)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let files = [
        (model(GgmlType::Q8_0), &["3", "8"][..]),
        (model(GgmlType::Q4_1), &["4"][..]),
        (gemma, &["4"][..]),
    ];
    let copy = "Here is a Python function:\ndef area(width, height):\n    \"\"\"Return the area.\"\"\"\n    if width < 0 or height < 0:\n        raise ValueError(\"negative size\")\n    return width * height\n\nThe same function, copied exactly:\n";
    for (m, lookups) in &files {
        let m = m.to_str().unwrap();
        for (prompt, chat) in [(copy, false), ("Tell me about the sea.", true)] {
            for sampling in [
                &["--temp", "0"][..],
                &["--temp", "0.9", "--seed", "4", "--repeat-penalty", "1.1"],
            ] {
                let run = |lookup: &str| {
                    let mut args = vec![
                        "run",
                        "--model",
                        m,
                        prompt,
                        "-n",
                        "48",
                        "--lookup",
                        lookup,
                        "--json",
                        "--top-logits",
                        "2",
                    ];
                    if chat {
                        args.push("--chat");
                    }
                    args.extend_from_slice(sampling);
                    json_out(&ember(&args))
                };
                let plain = run("0");
                for lookup in lookups.iter().copied() {
                    let fast = run(lookup);
                    let what = format!("{m} {prompt:?} {sampling:?} --lookup {lookup}");
                    assert_eq!(fast["ids"], plain["ids"], "{what}");
                    // Every token's log-probabilities, to the bit.
                    assert_eq!(fast["logprobs"], plain["logprobs"], "{what}");
                    let l = &fast["lookup"];
                    assert!(l["accepted"].as_u64().unwrap() <= l["drafted"].as_u64().unwrap());
                    if !chat && sampling[1] == "0" {
                        assert!(
                            l["accepted"].as_u64().unwrap() >= 10,
                            "copying keeps drafts: {what}: {l}"
                        );
                    }
                }
            }
        }
    }
}
