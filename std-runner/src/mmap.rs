//! Read-only memory maps of model files: weights are used in place, never copied.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};
use memmap2::Mmap;

/// Maps `path` read-only. The map is page-aligned, so every tensor keeps the
/// alignment the GGUF file gives it.
pub fn map(path: &Path) -> Result<Mmap> {
    let file =
        File::open(path).with_context(|| format!("cannot open model file {}", path.display()))?;
    // SAFETY: the map is read-only and private to this process. Another process
    // truncating the file while it is mapped would fault on access, a risk every
    // mmap-based model loader accepts; Ember never writes through the map.
    let map =
        unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
    Ok(map)
}
