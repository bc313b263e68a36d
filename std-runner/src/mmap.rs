//! Model bytes: a read-only map of the file (zero-copy), or a copy in
//! anonymous memory backed by huge pages (the default for inference).
//!
//! Decode reads every weight once per token, so it runs at the speed memory
//! streams to the core. A file map is built of 4 KiB page-cache pages: one TLB
//! entry per 4 KiB and page walks all along the stream. The same bytes copied
//! into 2 MiB pages stream about 1.7 times faster on the machines measured
//! (docs/PERFORMANCE.md); the copy costs one read of the file at start.

use std::fs::File;
use std::io::Read;
use std::ops::Deref;
use std::path::Path;

use anyhow::{bail, Context, Result};
use memmap2::{Mmap, MmapMut};

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

/// Huge-page size the copy is aligned to.
pub(crate) const HUGE: usize = 2 << 20;

/// A model file's bytes, mapped or copied.
#[derive(Debug)]
pub enum ModelBytes {
    Mapped(Mmap),
    Copied {
        buf: MmapMut,
        off: usize,
        len: usize,
    },
}

impl Deref for ModelBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ModelBytes::Mapped(m) => m,
            ModelBytes::Copied { buf, off, len } => &buf[*off..*off + *len],
        }
    }
}

/// The model's bytes: a map of the file with `mmap`, else a copy in
/// anonymous memory aligned to 2 MiB and advised to use huge pages (where
/// the OS has none, the copy is still correct, only not faster).
pub fn load(path: &Path, mmap: bool) -> Result<ModelBytes> {
    if mmap {
        return map(path).map(ModelBytes::Mapped);
    }
    let mut file =
        File::open(path).with_context(|| format!("cannot open model file {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let len = usize::try_from(len).context("model file larger than the address space")?;
    let total = len.checked_add(HUGE).context("model file too large")?;
    let mut buf = MmapMut::map_anon(total)
        .with_context(|| format!("cannot reserve {} MiB for the model", total >> 20))?;
    let off = buf.as_ptr().align_offset(HUGE).min(HUGE);
    #[cfg(target_os = "linux")]
    {
        // Advice only: without transparent huge pages the copy works the same.
        let _ = buf.advise(memmap2::Advice::HugePage);
    }
    file.read_exact(&mut buf[off..off + len])
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut extra = [0u8; 1];
    if file.read(&mut extra).unwrap_or(0) != 0 {
        bail!("{} grew while it was read", path.display());
    }
    Ok(ModelBytes::Copied { buf, off, len })
}
