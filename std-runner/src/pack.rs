//! Interleaved copies of a model's Q8_0 and Q4_1 matrices for the packed
//! decode kernels (`Q16Kernels::q8_0x8`, `q4_1x8`): eight rows per group,
//! one SIMD lane per row, so a decode step adds no lane sums and shares each
//! broadcast activation pair between eight rows. The file's bytes stay as
//! they are (the embedding lookup reads them); the packs are a second copy
//! of the matrices that decode reads. Every row's value is bit for bit the
//! reference dot's in decode; Q8_0 prefill through the packs takes that
//! arithmetic too (16-bit activation blocks instead of f32 tiles), Q4_1
//! prefill keeps the f32 tiles over the file's rows.

use anyhow::{bail, Context, Result};
use ember_core::kernels::{Kernels, RowData};
use ember_core::model::Llama;
use ember_core::quant::{cast_slice, cast_slice_mut, q4_1, q8_0, BlockQ4_1x8, BlockQ8_0x8, QK};
use memmap2::MmapMut;

use crate::mmap::HUGE;

/// The packed groups of each packable matrix, in `Weights::visit_matrices` order, in one
/// anonymous map advised to use huge pages (as the model's own copy is:
/// decode streams through all of it every token).
#[derive(Debug, Default)]
pub struct Packs {
    buf: Option<MmapMut>,
    /// Byte offset, block count and kind of each matrix's packs (`None`:
    /// not packed).
    spans: Vec<Option<(usize, usize, Kind)>>,
}

/// Which pack a matrix has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Q8_0 rows in eights ([`BlockQ8_0x8`]).
    Q8_0,
    /// Q4_1 rows in eights ([`BlockQ4_1x8`]), for decode.
    Q4_1,
}

impl Kind {
    fn block(self) -> usize {
        match self {
            Kind::Q8_0 => core::mem::size_of::<BlockQ8_0x8>(),
            Kind::Q4_1 => core::mem::size_of::<BlockQ4_1x8>(),
        }
    }
}

impl Packs {
    /// Packs `model`'s Q8_0 and Q4_1 matrices for which `kernels` has a
    /// packed decode kernel, if `enabled`; otherwise nothing (and
    /// [`Packs::apply`] leaves the model as it is).
    pub fn build(model: &Llama, kernels: &Kernels, enabled: bool) -> Result<Packs> {
        let mut packs = Packs::default();
        let (q8, q41) = match kernels.q16 {
            Some(q) if enabled => (q.q8_0x8.is_some(), q.q4_1x8.is_some()),
            _ => (false, false),
        };
        if !q8 && !q41 {
            return Ok(packs);
        }
        let mut w = model.weights.clone();
        let mut total = 0usize;
        w.visit_matrices(|m| -> Result<()> {
            let kind = match m.data {
                RowData::Q8_0(_) if q8 => Some(Kind::Q8_0),
                RowData::Q4_1(_) if q41 => Some(Kind::Q4_1),
                _ => None,
            };
            let span = match kind {
                Some(kind) => {
                    let blocks = m.rows / 8 * (m.cols / QK);
                    let span = (total, blocks, kind);
                    total = blocks
                        .checked_mul(kind.block())
                        .and_then(|b| b.checked_add(total))
                        .context("packed weights overflow the address space")?;
                    Some(span)
                }
                None => None,
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
            let Some(Some((off, blocks, kind))) = spans.next() else {
                return Ok(());
            };
            let bytes = &mut buf[base + off..base + off + blocks * kind.block()];
            match m.data {
                RowData::Q8_0(d) => {
                    q8_0::pack_rows_x8(d, m.cols / QK, cast_slice_mut::<BlockQ8_0x8>(bytes)?);
                }
                RowData::Q4_1(d) => {
                    q4_1::pack_rows_x8(d, m.cols / QK, cast_slice_mut::<BlockQ4_1x8>(bytes)?);
                }
                _ => {}
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
        self.spans.iter().flatten().map(|s| s.1 * s.2.block()).sum()
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
                Some(Some((off, blocks, kind))) => {
                    let bytes = &buf[*off..*off + blocks * kind.block()];
                    *m = match kind {
                        Kind::Q8_0 => m.with_packed(cast_slice(bytes)?)?,
                        Kind::Q4_1 => m.with_packed_q4_1(cast_slice(bytes)?)?,
                    };
                }
                Some(None) => {}
                None => bail!("packed weights from another model"),
            }
            Ok(())
        })?;
        Ok(model)
    }
}
