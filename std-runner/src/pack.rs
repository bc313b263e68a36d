//! Interleaved copies of a model's Q8_0, Q4_1, Q4_K, Q6_K and Q5_0
//! matrices for the packed decode kernels (`Q16Kernels::q8_0x8`, `q4_1x8`,
//! `q4_kx8`, `q6_kx8`, `q5_0x8`): eight rows per group,
//! one SIMD lane per row, so a decode step adds no lane sums and shares each
//! broadcast activation pair between eight rows. The file's bytes stay as
//! they are (the embedding lookup reads them); the packs are a second copy
//! of the matrices that decode reads. Every row's value is bit for bit the
//! reference dot's in decode; Q8_0 prefill through the packs takes that
//! arithmetic too (16-bit activation blocks instead of f32 tiles), and so
//! does Q4_K and Q6_K prefill; Q4_1 and Q5_0 prefill keeps the f32 tiles
//! over the file's rows.
//!
//! With more than one worker the layers' matrices are laid out by worker
//! instead ([`ember_core::kernels::Pieces`]): each worker's rows of one
//! step (the rows it owns when the step starts, [`parallel::first_runs`])
//! follow its rows of the step before, packed where a matrix packs and
//! copied as they are otherwise (F16 and F32 too). A worker's reads then
//! stay one stream from step to step. On this project's 2-core host, decode
//! at two threads ran 3% faster laid out than in the file's order, for
//! F16, Q8_0 and Q4_1 alike (`examples/layout_ab`).

use anyhow::{bail, Context, Result};
use ember_core::kernels::{Kernels, Matrix, Packed, Piece};
use ember_core::model::weights::LAYER_STEPS;
use ember_core::model::Llama;
use ember_core::parallel;
use ember_core::quant::{cast_slice_mut, q4_1, q4_k, q5_0, q6_k, q8_0, Block, GgmlType, Pod};
use memmap2::MmapMut;

use crate::mmap::HUGE;

/// Rows a worker takes at a time in decode (`parallel::for_rows_multi`'s
/// grain in the model's steps).
const GRAIN: usize = 16;

/// Where each piece starts: a cache line, so one piece's last line is not
/// the next one's first.
const PIECE_ALIGN: usize = 64;

/// The packed groups of each packable matrix, and the pieces of each laid
/// out one, in `Weights::visit_matrices` order, in one anonymous map
/// advised to use huge pages (as the model's own copy is: decode streams
/// through all of it every token).
#[derive(Debug, Default)]
pub struct Packs {
    buf: Option<MmapMut>,
    /// What each matrix reads from `buf`.
    spans: Vec<Span>,
    /// Every laid-out matrix's pieces, each matrix's in row order (`at`
    /// counts from the start of `buf`).
    pieces: Vec<Piece>,
}

/// What a matrix has in the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Span {
    /// Nothing: the kernels read the file's rows.
    None,
    /// All its rows packed, from byte `at` (`blocks` pack blocks).
    Whole {
        at: usize,
        blocks: usize,
        kind: Kind,
    },
    /// Pieces `Packs::pieces[range]`.
    Pieces(core::ops::Range<usize>),
}

/// Which pack a matrix has: its weight type's rows in eights
/// ([`Packed::eights`]), `block` bytes a pack block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kind {
    ty: GgmlType,
    block: usize,
}

/// Bytes that rows `lo..hi` of `m` take as a piece: packed groups (`kind`)
/// or the rows as stored.
fn piece_bytes(m: &Matrix, kind: Option<Kind>, lo: usize, hi: usize) -> usize {
    match kind {
        Some(k) => (hi - lo) / 8 * m.row_blocks() * k.block,
        None => m.n_bytes() / m.rows.max(1) * (hi - lo),
    }
}

/// `f(worker, output, lo, hi)` for the rows each of `w` workers owns when a
/// step over matrices of `rows` starts ([`parallel::first_runs`]).
fn step_runs(rows: &[usize], w: usize, f: impl FnMut(usize, usize, usize, usize)) -> Result<()> {
    match *rows {
        [a] => parallel::first_runs([a], GRAIN, w, f),
        [a, b] => parallel::first_runs([a, b], GRAIN, w, f),
        [a, b, c] => parallel::first_runs([a, b, c], GRAIN, w, f),
        _ => bail!("a step of {} matrices", rows.len()),
    }
    Ok(())
}

impl Packs {
    /// Packs `model`'s Q8_0, Q4_1, Q4_K, Q6_K and Q5_0 matrices for which `kernels` has a
    /// packed decode kernel, and with more than one of `threads` lays out
    /// each layer's matrices by worker (module docs), if `enabled`;
    /// otherwise nothing (and [`Packs::apply`] leaves the model as it is).
    pub fn build(model: &Llama, kernels: &Kernels, enabled: bool, threads: usize) -> Result<Packs> {
        let mut packs = Packs::default();
        if !enabled {
            return Ok(packs);
        }
        // A matrix packs where the table has a kernel for its pack.
        let kind_of = |m: &Matrix| {
            let q = kernels.q16?;
            let kernel = match m.ty() {
                GgmlType::Q8_0 => q.q8_0x8.is_some(),
                GgmlType::Q4_1 => q.q4_1x8.is_some(),
                GgmlType::Q4_K => q.q4_kx8.is_some(),
                GgmlType::Q6_K => q.q6_kx8.is_some(),
                GgmlType::Q5_0 => q.q5_0x8.is_some(),
                _ => false,
            };
            let block = Packed::eights_block(m.ty()).filter(|_| kernel)?;
            Some(Kind { ty: m.ty(), block })
        };
        let mut w = model.weights.clone();
        let mut ms: Vec<Matrix> = Vec::new();
        w.visit_matrices(|m| -> Result<()> {
            ms.push(*m);
            Ok(())
        })?;
        packs.spans = vec![Span::None; ms.len()];
        let layout = threads > 1;
        let mut total = 0usize;
        let grow = |total: &mut usize, len: usize| -> Result<usize> {
            let at = total.next_multiple_of(PIECE_ALIGN);
            *total = at
                .checked_add(len)
                .context("packed weights overflow the address space")?;
            Ok(at)
        };
        // Whole packs: the classifier, and every matrix with one worker.
        for (i, m) in ms.iter().enumerate() {
            if layout && i > 0 {
                continue;
            }
            if let Some(kind) = kind_of(m) {
                let blocks = m.rows / 8 * m.row_blocks();
                let len = blocks
                    .checked_mul(kind.block)
                    .context("packed weights overflow")?;
                let at = grow(&mut total, len)?;
                packs.spans[i] = Span::Whole { at, blocks, kind };
            }
        }
        if layout {
            // Each worker's pieces of every step, in step order.
            let mut regions: Vec<Vec<(usize, usize, usize)>> = vec![Vec::new(); threads];
            let layers = (ms.len() - 1) / 7;
            for l in 0..layers {
                for step in LAYER_STEPS {
                    let ids: Vec<usize> = step.iter().map(|&k| 1 + 7 * l + k).collect();
                    let rows: Vec<usize> = ids.iter().map(|&i| ms[i].rows).collect();
                    step_runs(&rows, threads, |wk, j, lo, hi| {
                        regions[wk].push((ids[j], lo, hi))
                    })?;
                }
            }
            let mut per: Vec<Vec<Piece>> = vec![Vec::new(); ms.len()];
            for region in &regions {
                for &(i, lo, hi) in region {
                    let kind = kind_of(&ms[i]);
                    let at = grow(&mut total, piece_bytes(&ms[i], kind, lo, hi))?;
                    per[i].push(Piece {
                        lo,
                        rows: hi - lo,
                        at,
                        packed: kind.is_some(),
                    });
                }
            }
            for (i, mut list) in per.into_iter().enumerate() {
                if list.is_empty() {
                    continue;
                }
                list.sort_by_key(|p| p.lo);
                let first = packs.pieces.len();
                packs.pieces.extend(list);
                packs.spans[i] = Span::Pieces(first..packs.pieces.len());
            }
        }
        if total == 0 {
            packs.spans.clear();
            packs.pieces.clear();
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
        for (m, span) in ms.iter().zip(&packs.spans) {
            let nb = m.row_blocks();
            let (d, pieces) = match span {
                Span::None => continue,
                Span::Whole { at, blocks, kind } => {
                    let p = Piece {
                        lo: 0,
                        rows: m.rows,
                        at: *at,
                        packed: true,
                    };
                    let bytes = &mut buf[base + at..base + at + blocks * kind.block];
                    fill(m, &p, bytes, nb)?;
                    continue;
                }
                Span::Pieces(r) => (m, &packs.pieces[r.clone()]),
            };
            for p in pieces {
                let kind = kind_of(d);
                let len = piece_bytes(d, kind, p.lo, p.lo + p.rows);
                fill(d, p, &mut buf[base + p.at..base + p.at + len], nb)?;
            }
        }
        for s in packs.spans.iter_mut() {
            if let Span::Whole { at, .. } = s {
                *at += base;
            }
        }
        for p in packs.pieces.iter_mut() {
            p.at += base;
        }
        packs.buf = Some(buf);
        Ok(packs)
    }

    /// Bytes the packs and pieces take.
    pub fn bytes(&self) -> usize {
        self.buf
            .as_ref()
            .map_or(0, |b| b.len().saturating_sub(HUGE))
    }

    /// `model` reading its packed and laid-out matrices from `self` (the
    /// model built from the same file [`Packs::build`] saw).
    pub fn apply<'a>(&'a self, mut model: Llama<'a>) -> Result<Llama<'a>> {
        let Some(buf) = &self.buf else {
            return Ok(model);
        };
        let mut it = self.spans.iter();
        model.weights.visit_matrices(|m| -> Result<()> {
            match it.next() {
                Some(Span::Whole { at, blocks, kind }) => {
                    let bytes = &buf[*at..*at + blocks * kind.block];
                    *m = m.with_packs(Packed::eights(kind.ty, bytes)?)?;
                }
                Some(Span::Pieces(r)) => {
                    *m = m.with_pieces(buf, &self.pieces[r.clone()])?;
                }
                Some(Span::None) => {}
                None => bail!("packed weights from another model"),
            }
            Ok(())
        })?;
        Ok(model)
    }
}

/// Writes piece `p` of `m` (`nb` blocks a row) into `out`: its whole groups
/// of eight packed, or its rows as stored.
fn fill(m: &Matrix, p: &Piece, out: &mut [u8], nb: usize) -> Result<()> {
    let (lo, hi) = (p.lo, p.lo + p.rows);
    if !p.packed {
        let src = m
            .rows_data(lo, hi)
            .context("a piece past the matrix's rows")?;
        out.copy_from_slice(src.bytes());
        return Ok(());
    }
    let groups = match m.ty() {
        GgmlType::Q8_0 => pack(m, lo, hi, nb, out, q8_0::pack_rows_x8)?,
        GgmlType::Q4_1 => pack(m, lo, hi, nb, out, q4_1::pack_rows_x8)?,
        GgmlType::Q4_K => pack(m, lo, hi, nb, out, q4_k::pack_rows_x8)?,
        GgmlType::Q6_K => pack(m, lo, hi, nb, out, q6_k::pack_rows_x8)?,
        GgmlType::Q5_0 => pack(m, lo, hi, nb, out, q5_0::pack_rows_x8)?,
        _ => bail!("packing a matrix that has no packed form"),
    };
    if groups != p.rows / 8 {
        bail!("packed {groups} groups of {} rows", p.rows);
    }
    Ok(())
}

/// Rows `lo..hi` of `m` (`nb` blocks of `B` a row) packed by `pack` into
/// `out`; the groups written.
fn pack<B: Block, P: Pod>(
    m: &Matrix,
    lo: usize,
    hi: usize,
    nb: usize,
    out: &mut [u8],
    pack: fn(&[B], usize, &mut [P]) -> usize,
) -> Result<usize> {
    let past = || anyhow::anyhow!("a piece past the matrix's rows");
    let d = m.data.as_blocks::<B>(m.ty()).ok_or_else(past)?;
    let rows = d.get(lo * nb..hi * nb).ok_or_else(past)?;
    Ok(pack(rows, nb, cast_slice_mut::<P>(out)?))
}
