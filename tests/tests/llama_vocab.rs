//! llama.cpp's own vocabulary tests, case for case: every `models/ggml-vocab-*.gguf`
//! of the llama-cpp-python 0.3.36 source distribution with its `.inp`/`.out`
//! pair, read and run as `tests/test-tokenizer-0.cpp` does (cases split on
//! `"\n__ggml_vocab_test__\n"`, one line of ids per case, `add_special` and
//! `parse_special` both false).
//!
//! The source distribution is fetched once with pip into `$EMBER_HOME` (as the
//! default model is) and only the vocabulary files are kept, in
//! `$EMBER_HOME/llama-vocab/`. A failed fetch fails the test. Vocabularies
//! Ember does not read are listed in [`REFUSED`] with the reason and must be
//! refused with that error, never skipped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use ember_core::gguf::Gguf;
use ember_core::tokenizer::{EncodeOptions, Tokenizer};
use ember_core::Error;

const PACKAGE: &str = "llama-cpp-python==0.3.36";
const SDIST: &str = "llama_cpp_python-0.3.36.tar.gz";
const SDIST_SHA256: &str = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e";
/// The folder under `$EMBER_HOME`; `.complete` inside marks a finished extraction.
const DIR: &str = "llama-vocab";
const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

/// Vocabularies Ember reads; each must load and pass every case it has.
const ACCEPTED: &[&str] = &[
    "aquila",
    "baichuan",
    "command-r",
    "deepseek-coder",
    "deepseek-llm",
    "falcon",
    "gpt-2",
    "gpt-neox",
    "llama-bpe",
    "llama-spm",
    "mpt",
    "phi-3",
    "qwen2",
    "qwen35",
    "refact",
    "starcoder",
];

/// Vocabularies Ember refuses: name, the error, and why.
const REFUSED: &[(&str, Error, &str)] = &[
    (
        "bert-bge",
        Error::UnsupportedTokenizer,
        "tokenizer.ggml.model = bert: WordPiece, an encoder-only vocabulary",
    ),
    (
        "nomic-bert-moe",
        Error::UnsupportedTokenizer,
        "tokenizer.ggml.model = t5: Unigram with a precompiled normalizer, an encoder-only vocabulary",
    ),
    (
        "gemma-4",
        Error::UnsupportedTokenizer,
        "tokenizer.ggml.model = gemma4: Gemma 4's BPE over raw UTF-8, not a family Ember runs",
    ),
];

fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format!("{:x}", Sha256::digest(bytes))
}

/// Runs `python3` (else `python`) with `args`; panics with pip's last words on failure.
fn python(args: &[&str]) {
    let mut last = String::new();
    for exe in ["python3", "python"] {
        match Command::new(exe).args(args).output() {
            Ok(o) if o.status.success() => return,
            Ok(o) => {
                last = String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" | ")
            }
            Err(e) => last = e.to_string(),
        }
    }
    panic!("python {args:?} failed ({last}); the test needs Python 3 with pip and network access to PyPI");
}

/// Keeps `*/vendor/llama.cpp/models/ggml-vocab-*` of the tarball, flat, in `dst`.
const EXTRACT: &str = r#"
import os, re, sys, tarfile
src, dst = sys.argv[1], sys.argv[2]
pat = re.compile(r"^[^/]+/vendor/llama\.cpp/models/(ggml-vocab-[A-Za-z0-9._-]+)$")
n = 0
with tarfile.open(src) as t:
    for m in t:
        g = pat.match(m.name)
        if g and m.isfile():
            with t.extractfile(m) as r, open(os.path.join(dst, g.group(1)), "wb") as w:
                w.write(r.read())
            n += 1
if n == 0:
    sys.exit("no ggml-vocab files in " + src)
"#;

/// `$EMBER_HOME/llama-vocab`, fetched and extracted first if it is not there.
fn vocab_dir() -> PathBuf {
    let home = ember_runner::model_store::ember_home().expect("EMBER_HOME");
    let dir = home.join(DIR);
    if dir.join(".complete").is_file() {
        return dir;
    }
    fs::create_dir_all(&home).unwrap_or_else(|e| panic!("{}: {e}", home.display()));
    /// Removed when dropped, whether the fetch worked or panicked.
    struct TmpDir(PathBuf);
    impl Drop for TmpDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let guard = TmpDir(home.join(format!(".llama-vocab-download-{}", std::process::id())));
    let tmp = &guard.0;
    let _ = fs::remove_dir_all(tmp);
    let out = tmp.join(DIR);
    fs::create_dir_all(&out).unwrap();
    eprintln!(
        "fetching {PACKAGE}'s source distribution (77 MB) with pip into {} ...",
        home.display()
    );
    // `--no-binary` for this package only: its build dependencies may come as
    // wheels (pip prepares the metadata, and cmake from source takes an hour).
    let tmp_s = tmp.to_str().expect("UTF-8 path");
    python(&[
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        "--no-binary",
        "llama-cpp-python",
        PACKAGE,
        "-d",
        tmp_s,
    ]);
    let sdist = tmp.join(SDIST);
    assert_eq!(sha256_hex(&sdist), SDIST_SHA256, "{}", sdist.display());
    python(&[
        "-c",
        EXTRACT,
        sdist.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    fs::write(out.join(".complete"), format!("{PACKAGE} {SDIST_SHA256}\n")).unwrap();
    // Another process may have finished first; either copy will do.
    if fs::rename(&out, &dir).is_err() {
        assert!(dir.join(".complete").is_file(), "{}", dir.display());
    }
    drop(guard);
    dir
}

/// The cases of `<vocab>.inp` / `<vocab>.out` as test-tokenizer-0.cpp reads them.
fn read_cases(gguf: &Path) -> Vec<(String, Vec<u32>)> {
    let inp = fs::read_to_string(gguf.with_extension("gguf.inp")).expect(".inp");
    let out = fs::read_to_string(gguf.with_extension("gguf.out")).expect(".out");
    let mut texts = Vec::new();
    let mut pos = 0;
    while pos < inp.len() {
        match inp[pos..].find(SEPARATOR) {
            Some(k) => {
                texts.push(inp[pos..pos + k].to_string());
                pos += k + SEPARATOR.len();
            }
            None => {
                texts.push(inp[pos..].to_string());
                break;
            }
        }
    }
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("id"))
                .collect()
        })
        .collect();
    assert_eq!(texts.len(), ids.len(), "{}: .inp and .out", gguf.display());
    texts.into_iter().zip(ids).collect()
}

fn load(bytes: &[u8]) -> Result<(Gguf<'_>, Vec<u32>), Error> {
    let g = Gguf::parse(bytes)?;
    let index = vec![0u32; Tokenizer::index_words(&g)?];
    Ok((g, index))
}

#[test]
fn llama_cpp_vocabularies_case_for_case() {
    let dir = vocab_dir();
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.ok()?.file_name().into_string().ok()?;
            Some(
                n.strip_prefix("ggml-vocab-")?
                    .strip_suffix(".gguf")?
                    .to_string(),
            )
        })
        .collect();
    names.sort();
    assert!(
        names.len() >= 15,
        "vocabularies in {}: {names:?}",
        dir.display()
    );

    let mut report = Vec::new();
    let mut failures = Vec::new();
    for name in &names {
        let path = dir.join(format!("ggml-vocab-{name}.gguf"));
        let bytes = fs::read(&path).unwrap();
        let has_cases = path.with_extension("gguf.inp").is_file();
        let built = load(&bytes).and_then(|(g, mut index)| {
            let t = Tokenizer::new(&g, &mut index)?;
            if !has_cases {
                return Ok(None);
            }
            let cases = read_cases(&path);
            let mut pass = 0;
            for (text, want) in &cases {
                let opt = EncodeOptions {
                    add_special: false,
                    parse_special: false,
                };
                match t.encode(text, opt) {
                    Ok(got) if &got == want => pass += 1,
                    got => failures.push(format!("{name} {text:?}: want {want:?}, got {got:?}")),
                }
            }
            Ok(Some((pass, cases.len())))
        });
        match (REFUSED.iter().find(|r| r.0 == name), built) {
            (Some(&(_, err, why)), Err(e)) => {
                assert_eq!(e, err, "{name} is refused with the wrong error");
                report.push(format!("{name:>16}: refused ({e}): {why}"));
            }
            (Some(_), Ok(_)) => failures.push(format!("{name} loads now: move it to ACCEPTED")),
            (None, Err(e)) => failures.push(format!("{name} does not load: {e}")),
            (None, Ok(r)) => {
                assert!(
                    ACCEPTED.contains(&name.as_str()),
                    "{name}: list it in ACCEPTED"
                );
                report.push(match r {
                    Some((pass, n)) => format!("{name:>16}: {pass}/{n} cases"),
                    None => format!("{name:>16}: loads (no cases in the distribution)"),
                });
            }
        }
    }
    for n in ACCEPTED.iter().chain(REFUSED.iter().map(|r| &r.0)) {
        assert!(
            names.iter().any(|m| m == n),
            "{n} is missing from {}",
            dir.display()
        );
    }
    eprintln!(
        "llama.cpp vocabulary tests ({PACKAGE}):\n{}",
        report.join("\n")
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
