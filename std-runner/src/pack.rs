//! Interleaved copies of a model's Q8_0 matrices for the packed decode
//! kernels (`Q16Kernels::q8_0x8`): eight rows per group, one SIMD lane per
//! row, so a decode step adds no lane sums and shares each broadcast
//! activation pair between eight rows. The file's bytes stay as they are
//! (the embedding lookup reads them); the packs are a second copy of the
//! Q8_0 matrices that decode and prefill read. Every row's value is bit for
//! bit the reference dot's in decode; prefill through the packs takes that
//! arithmetic too (16-bit activation blocks instead of f32 tiles).

use anyhow::{bail, Context, Result};
use ember_core::kernels::{Kernels, RowData};
use ember_core::model::Llama;
use ember_core::quant::{cast_slice, cast_slice_mut, q8_0, BlockQ8_0x8, QK};
use memmap2::MmapMut;

use crate::mmap::HUGE;

/// The packed groups of each packable matrix, in `Weights::visit_matrices` order, in one
/// anonymous map advised to use huge pages (as the model's own copy is:
/// decode streams through all of it every token).
#[derive(Debug, Default)]
pub struct Packs {
    buf: Option<MmapMut>,
    /// Byte offset and block count of each matrix's packs (`None`: not Q8_0).
    spans: Vec<Option<(usize, usize)>>,
}

const BLOCK: usize = core::mem::size_of::<BlockQ8_0x8>();

impl Packs {
    /// Packs `model`'s Q8_0 matrices if `kernels` has a packed decode
    /// kernel and `enabled`; otherwise nothing (and [`Packs::apply`] leaves
    /// the model as it is).
    pub fn build(model: &Llama, kernels: &Kernels, enabled: bool) -> Result<Packs> {
        let mut packs = Packs::default();
        if !enabled || kernels.q16.and_then(|q| q.q8_0x8).is_none() {
            return Ok(packs);
        }
        let mut w = model.weights.clone();
        let mut total = 0usize;
        w.visit_matrices(|m| -> Result<()> {
            let span = match m.data {
                RowData::Q8_0(_) => {
                    let blocks = m.rows / 8 * (m.cols / QK);
                    let span = (total, blocks);
                    total = blocks
                        .checked_mul(BLOCK)
                        .and_then(|b| b.checked_add(total))
                        .context("packed weights overflow the address space")?;
                    Some(span)
                }
                _ => None,
            };
            packs.spans.push(span);
            Ok(())
        })?;
        if total == 0 {
            return Ok(packs);
        }
        let len = total
            .checked_add(HUGE)
            .context("packed weights too large")?;
        let mut buf = MmapMut::map_anon(len).with_context(|| {
            format!(
                "cannot allocate {:.1} MiB for packed weights (try --no-repack)",
                len as f64 / (1 << 20) as f64
            )
        })?;
        #[cfg(target_os = "linux")]
        {
            // Advice only: without transparent huge pages the packs work the same.
            let _ = buf.advise(memmap2::Advice::HugePage);
        }
        let base = buf.as_ptr().align_offset(HUGE).min(HUGE);
        let mut spans = packs.spans.iter();
        w.visit_matrices(|m| -> Result<()> {
            if let (RowData::Q8_0(d), Some(Some((off, blocks)))) = (m.data, spans.next()) {
                let bytes = &mut buf[base + off..base + off + blocks * BLOCK];
                let out: &mut [BlockQ8_0x8] = cast_slice_mut(bytes)?;
                q8_0::pack_rows_x8(d, m.cols / QK, out);
            }
            Ok(())
        })?;
        for s in packs.spans.iter_mut().flatten() {
            s.0 += base;
        }
        packs.buf = Some(buf);
        Ok(packs)
    }

    /// Bytes the packs take.
    pub fn bytes(&self) -> usize {
        self.spans.iter().flatten().map(|s| s.1 * BLOCK).sum()
    }

    /// `model` reading its packed matrices from `self` (the model built
    /// from the same file [`Packs::build`] saw).
    pub fn apply<'a>(&'a self, mut model: Llama<'a>) -> Result<Llama<'a>> {
        let Some(buf) = &self.buf else {
            return Ok(model);
        };
        let mut it = self.spans.iter();
        model.weights.visit_matrices(|m| -> Result<()> {
            match it.next() {
                Some(Some((off, blocks))) => {
                    let p: &[BlockQ8_0x8] = cast_slice(&buf[*off..*off + blocks * BLOCK])?;
                    *m = m.with_packed(p)?;
                }
                Some(None) => {}
                None => bail!("packed weights from another model"),
            }
            Ok(())
        })?;
        Ok(model)
    }
}
