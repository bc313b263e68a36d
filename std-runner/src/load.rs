//! Loading a model: the one sequence every command runs.
//!
//! `--model` (or the default model) → its bytes (a huge-page copy, or a map
//! with `--mmap`) → [`Gguf::parse`] → [`Llama::from_gguf`] → the packed
//! copies the kernels read ([`Packs`]) → the tokenizer.
//!
//! The parsed model borrows the bytes, the packs and the tokenizer's index,
//! so [`ModelFile`] owns all three and [`ModelFile::parse`] lends them out
//! for as long as the file is borrowed:
//!
//! ```text
//! let mut file = load_model(&a.model, &a.exec)?;
//! let m = file.parse(&a.exec)?;
//! ```
//!
//! `serve` leaks the `ModelFile` to get a `Loaded<'static>` that every thread
//! may borrow.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ember_core::gguf::Gguf;
use ember_core::kernels::Kernels;
use ember_core::model::Llama;
use ember_core::tokenizer::Tokenizer;

use crate::args::{model_path, ExecArgs};
use crate::mmap::ModelBytes;
use crate::pack::Packs;

/// A model file in memory, and what its parsed model borrows besides the bytes.
#[derive(Debug)]
pub struct ModelFile {
    path: PathBuf,
    bytes: ModelBytes,
    /// Filled by [`ModelFile::parse`].
    packs: Option<Packs>,
    /// The tokenizer's index, filled by [`ModelFile::parse`] or [`ModelFile::vocab`].
    index: Vec<u32>,
}

/// A parsed model, borrowing its [`ModelFile`].
#[derive(Debug)]
pub struct Loaded<'m> {
    pub path: &'m Path,
    pub bytes: &'m [u8],
    pub gguf: Gguf<'m>,
    /// The weights, reading their packed matrices from `packs`.
    pub model: Llama<'m>,
    pub packs: &'m Packs,
    /// The kernel table `--kernels` chose (the packs are laid out for it).
    pub kernels: Kernels,
    /// The file's tokenizer, or why it has none: commands that need it use
    /// `?`, `run --prompt-ids` goes on without it.
    pub tokenizer: Result<Tokenizer<'m>>,
}

/// Reads `--model` (else the default model) as `exec` says: a copy in huge
/// pages, or a map of the file with `--mmap`.
pub fn load_model(model: &Option<PathBuf>, exec: &ExecArgs) -> Result<ModelFile> {
    let path = model_path(model)?;
    let bytes = exec.load(&path)?;
    Ok(ModelFile::new(path, bytes))
}

/// Maps `--model` (else the default model) read-only, for a command that
/// reads only the metadata and the vocabulary (`tokenize`).
pub fn map_model(model: &Option<PathBuf>) -> Result<ModelFile> {
    let path = model_path(model)?;
    let bytes = ModelBytes::Mapped(crate::mmap::map(&path)?);
    Ok(ModelFile::new(path, bytes))
}

impl ModelFile {
    fn new(path: PathBuf, bytes: ModelBytes) -> ModelFile {
        ModelFile {
            path,
            bytes,
            packs: None,
            index: Vec::new(),
        }
    }

    /// The model: parsed, its weights packed for `--kernels` (unless
    /// `--no-repack`), and its tokenizer.
    pub fn parse(&mut self, exec: &ExecArgs) -> Result<Loaded<'_>> {
        let ModelFile {
            path,
            bytes,
            packs,
            index,
        } = self;
        let (path, bytes): (&Path, &[u8]) = (path, bytes);
        let gguf = Gguf::parse(bytes).with_context(|| format!("{}", path.display()))?;
        let model = Llama::from_gguf(&gguf).with_context(|| format!("{}", path.display()))?;
        let kernels = exec.kernels()?;
        let packs = &*packs.insert(exec.packs(&model, &kernels)?);
        let model = packs.apply(model)?;
        let tokenizer = crate::text::tokenizer(&gguf, index);
        Ok(Loaded {
            path,
            bytes,
            gguf,
            model,
            packs,
            kernels,
            tokenizer,
        })
    }

    /// The metadata and the tokenizer only, with no weights (a vocabulary-only
    /// file reads too).
    pub fn vocab(&mut self) -> Result<(Gguf<'_>, Tokenizer<'_>)> {
        let ModelFile {
            path, bytes, index, ..
        } = self;
        let bytes: &[u8] = bytes;
        let gguf = Gguf::parse(bytes).with_context(|| format!("{}", path.display()))?;
        let tok = crate::text::tokenizer(&gguf, index)?;
        Ok((gguf, tok))
    }
}
