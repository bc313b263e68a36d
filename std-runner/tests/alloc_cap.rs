//! Allocation bounds: with `ulimit -v` capping the process's address space,
//! hostile model files and absurd sizes get a one-line error and exit code
//! 1, never an abort from a failed allocation or a crash. The cap (1 GiB)
//! is far below what the files claim and what the flags ask for, and well
//! above what ember itself needs (the files are a few kilobytes).

#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Address-space cap for every run here, in KiB.
const CAP_KIB: u64 = 1 << 20;

fn capped(args: &[&str]) -> Output {
    let mut cmd = format!(
        "ulimit -v {CAP_KIB} && exec '{}'",
        env!("CARGO_BIN_EXE_ember")
    );
    for a in args {
        cmd.push_str(&format!(" '{a}'"));
    }
    Command::new("sh")
        .args(["-c", &cmd])
        .output()
        .expect("run sh")
}

fn assert_clean_error(o: &Output, what: &str, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{what}: exit status {:?} (an abort or a signal is a bug): {err}",
        o.status
    );
    assert_eq!(
        err.lines().count(),
        1,
        "{what}: one line on stderr, got: {err}"
    );
    assert!(err.contains(needle), "{what}: '{needle}' not in: {err}");
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("ember-alloc-cap-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A GGUF v3 header and `rest` (metadata and tensor infos, hand-encoded).
fn gguf(n_tensors: u64, n_kv: u64, rest: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b.extend_from_slice(rest);
    b.resize(b.len() + 256, 0);
    b
}

fn key(k: &str, ty: u32) -> Vec<u8> {
    let mut b = (k.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(k.as_bytes());
    b.extend_from_slice(&ty.to_le_bytes());
    b
}

fn write(d: &Path, name: &str, bytes: &[u8]) -> String {
    let p = d.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn hostile_files_and_sizes_are_errors_under_an_address_space_cap() {
    let d = dir();
    // Counts the file cannot hold.
    let many_tensors = write(&d, "tensors.gguf", &gguf(1 << 40, 0, &[]));
    let mut s = key("general.name", 8);
    s.extend_from_slice(&(1u64 << 62).to_le_bytes());
    let long_string = write(&d, "string.gguf", &gguf(0, 1, &s));
    let mut a = key("tokenizer.ggml.tokens", 9);
    a.extend_from_slice(&8u32.to_le_bytes()); // array of strings
    a.extend_from_slice(&(1u64 << 50).to_le_bytes());
    let long_array = write(&d, "array.gguf", &gguf(0, 1, &a));
    // A tensor whose dimensions multiply past any file.
    let mut t = key("general.architecture", 8);
    t.extend_from_slice(&5u64.to_le_bytes());
    t.extend_from_slice(b"llama");
    let mut info = (17u64).to_le_bytes().to_vec();
    info.extend_from_slice(b"token_embd.weight");
    info.extend_from_slice(&2u32.to_le_bytes());
    info.extend_from_slice(&(1u64 << 32).to_le_bytes());
    info.extend_from_slice(&(1u64 << 32).to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes()); // f32
    info.extend_from_slice(&0u64.to_le_bytes());
    t.extend_from_slice(&info);
    let huge_tensor = write(&d, "tensor.gguf", &gguf(1, 1, &t));
    for (file, needle) in [
        (&many_tensors, "tensor count"),
        (&long_string, "string length"),
        (&long_array, "array length"),
        (&huge_tensor, "tensor"),
    ] {
        for cmd in [
            vec!["run", "--model", file, "--prompt-ids", "1", "-n", "1"],
            vec!["tokenize", "hello", "--model", file],
            vec!["bench", "--model", file, "-p", "1", "-n", "1"],
            vec!["serve", "--model", file, "--port", "0"],
        ] {
            assert_clean_error(&capped(&cmd), &format!("{cmd:?}"), needle);
        }
    }

    // A valid tiny model asked for caches far past the cap.
    let tiny = d.join("tiny.gguf");
    let o = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args([
            "synth",
            tiny.to_str().unwrap(),
            "--dim",
            "64",
            "--layers",
            "2",
            "--heads",
            "4",
        ])
        .args([
            "--kv-heads",
            "2",
            "--ffn",
            "128",
            "--vocab",
            "256",
            "--type",
            "q8_0",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tiny = tiny.to_str().unwrap();
    let text = write(
        &d,
        "text.txt",
        "one two three four five six seven eight nine ten "
            .repeat(20)
            .as_bytes(),
    );
    // SmolLM2 for the commands that need a tokenizer (93 MB, under the cap).
    let smol = ember_runner::model_store::default_model().unwrap_or_else(|e| panic!("{e:#}"));
    let smol = smol.to_str().unwrap();
    let big_ctx = (1usize << 24).to_string();
    for cmd in [
        vec![
            "run",
            "--model",
            tiny,
            "--prompt-ids",
            "1,2",
            "-n",
            "2",
            "--ctx",
            &big_ctx,
            "--kv-type",
            "f32",
        ],
        vec![
            "serve",
            "--model",
            smol,
            "--port",
            "0",
            "--ctx",
            &big_ctx,
            "--parallel",
            "64",
        ],
        vec![
            "perplexity",
            "--model",
            smol,
            "--file",
            &text,
            "--window",
            "16777000",
        ],
    ] {
        assert_clean_error(&capped(&cmd), &format!("{cmd:?}"), "MiB");
    }
    std::fs::remove_dir_all(&d).unwrap();
}
