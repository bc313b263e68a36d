//! How a forward step multiplies its matrices: the one place that decides,
//! for a group of matrices and a step's tokens, which arithmetic runs and
//! how the activations are prepared for it, then hands the rows to the
//! workers. The model names the matrices, the input and the outputs; it
//! does not know about 16-bit blocks, packed rows or transposition.
//!
//! Rows `0..batched` of a step take the batched arithmetic (prompt chunks),
//! rows `batched..` the decode arithmetic (one token per sequence). Each
//! token's result depends only on its own activations and its arithmetic,
//! so sequences batched together get what each gets alone.

use core::sync::atomic::{AtomicBool, Ordering};

use super::{xt_ld, Arith, Kernels, Matrix, Packed, Pieces, DECODE_TILE};
use crate::error::{Error, Result};
use crate::parallel::{self, Parallel, TokenRows};
use crate::quant::{self, BlockQ16, BlockQ8_0};

/// Which rows of a step's activations take which arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepRows {
    /// Rows `0..batched` take [`Arith::Batch`].
    pub batched: usize,
    /// Rows `batched..all` take [`Arith::Decode`].
    pub all: usize,
}

impl StepRows {
    /// `n` rows, all in the decode arithmetic (the classifier's).
    pub const fn decode(n: usize) -> StepRows {
        StepRows { batched: 0, all: n }
    }
}

/// The scratch a step's multiplications need, in f32 elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepScratch {
    /// Each worker's own (tiles, output tiles, int8 activations).
    pub per_worker: usize,
    /// Shared by the workers: the step's activations prepared once
    /// (16-bit blocks, or the batch transposed).
    pub shared: usize,
}

impl StepScratch {
    /// For matrices of at most `cols` columns and steps of up to `batch`
    /// tokens, of which up to `seqs` take the decode arithmetic. With
    /// `packed_prefill` a whole batch may take the decode arithmetic on
    /// packed matrices and be transposed once for all workers
    /// ([`crate::model::MemoryPlan::packed_prefill`]). `None` on overflow.
    pub fn new(
        cols: usize,
        batch: usize,
        seqs: usize,
        packed_prefill: bool,
    ) -> Option<StepScratch> {
        let decode = if packed_prefill {
            seqs.max(batch)
        } else {
            seqs
        };
        decode.checked_mul(cols.checked_add(DECODE_TILE)?)?;
        let per_worker = Kernels::scratch_len_split(cols, batch, decode);
        let blocks = decode
            .checked_mul(cols.div_ceil(quant::q16::QK))?
            .checked_mul(core::mem::size_of::<BlockQ16>() / 4)?;
        let transposed = if packed_prefill && batch > 1 {
            cols.checked_mul(xt_ld(batch))?
        } else {
            0
        };
        Some(StepScratch {
            per_worker,
            shared: blocks.max(transposed),
        })
    }
}

/// What every multiplication of a step shares: the workers, the kernel
/// table, and whether prompt batches may take packed rows.
#[derive(Clone, Copy)]
pub struct Multiplier<'a> {
    par: &'a dyn Parallel,
    kern: &'a Kernels,
    per_worker: usize,
    packed_prefill: bool,
}

/// A step's activations as the kernels take them, prepared once for every
/// worker and matrix of a group.
#[derive(Clone, Copy)]
enum Prepared<'x> {
    /// As they are (each worker prepares its own, if anything).
    Plain,
    /// In 16-bit blocks ([`Kernels::quantize_q16`]).
    Q16(&'x [BlockQ16]),
    /// In Q8_0 blocks (tables with int8 activations).
    Q8(&'x [BlockQ8_0]),
    /// Transposed ([`Kernels::transpose`]).
    Transposed(&'x [f32]),
}

impl core::fmt::Debug for Multiplier<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Multiplier")
            .field("kernels", &self.kern.name)
            .field("workers", &self.par.workers())
            .field("per_worker", &self.per_worker)
            .field("packed_prefill", &self.packed_prefill)
            .finish()
    }
}

impl<'a> Multiplier<'a> {
    /// Multiplications on `kern` split over `par`'s workers, each with
    /// `per_worker` floats of the work scratch ([`StepScratch::per_worker`]).
    pub fn new(
        kern: &'a Kernels,
        par: &'a dyn Parallel,
        per_worker: usize,
        packed_prefill: bool,
    ) -> Multiplier<'a> {
        Multiplier {
            par,
            kern,
            per_worker,
            packed_prefill,
        }
    }

    /// `outs[j] = ws[j] · x` for the step's rows: `x` is (rows.all, cols),
    /// each output `(rows.all, ws[j].rows)`. Every matrix of the group has
    /// its rows split over the workers in one hand-off. `work` holds the
    /// workers' scratch, `shared` the prepared activations
    /// ([`StepScratch`]).
    pub fn matmul<const K: usize>(
        &self,
        ws: [&Matrix; K],
        x: &[f32],
        outs: [&mut [f32]; K],
        work: &mut [f32],
        shared: &mut [f32],
        rows: StepRows,
    ) -> Result<()> {
        let StepRows { batched: g, all: n } = rows;
        let mut heads: [&mut [f32]; K] = core::array::from_fn(|_| &mut [][..]);
        let mut tails: [&mut [f32]; K] = core::array::from_fn(|_| &mut [][..]);
        for (j, o) in outs.into_iter().enumerate() {
            let at = (g * ws[j].rows).min(o.len());
            let (h, t) = o.split_at_mut(at);
            heads[j] = h;
            tails[j] = t;
        }
        if g > 0 {
            if self.packed_prefill {
                self.group(ws, x, g, heads, work, shared, Arith::Batch)?;
            } else {
                // The plan holds no batch of activation blocks: packed
                // matrices prefill through their plain rows.
                let plain: [Matrix; K] = ws.map(|w| Matrix {
                    packed: Packed::None,
                    pieces: Pieces::NONE,
                    ..*w
                });
                let plain: [&Matrix; K] = core::array::from_fn(|j| &plain[j]);
                self.group(plain, x, g, heads, work, shared, Arith::Batch)?;
            }
        }
        if n > g {
            let x = x.get(g * ws[0].cols..).unwrap_or(&[]);
            self.group(ws, x, n - g, tails, work, shared, Arith::Decode)?;
        }
        Ok(())
    }

    /// One arithmetic for `n` tokens: prepare the activations, then
    /// multiply every matrix's rows on the workers.
    #[allow(clippy::too_many_arguments)]
    fn group<const K: usize>(
        &self,
        ws: [&Matrix; K],
        x: &[f32],
        n: usize,
        outs: [&mut [f32]; K],
        work: &mut [f32],
        shared: &mut [f32],
        arith: Arith,
    ) -> Result<()> {
        let kern = self.kern;
        let prepared = self.prepare(&ws, x, n, shared, arith);
        let failed = AtomicBool::new(false);
        let rows: [usize; K] = core::array::from_fn(|j| ws[j].rows);
        let mut outs = outs;
        let ran = {
            let views: [&mut [f32]; K] = outs.each_mut().map(|o| &mut **o);
            parallel::for_rows_multi(
                self.par,
                views,
                rows,
                n,
                16,
                work,
                self.per_worker,
                &|j, part, s| {
                    if multiply(kern, ws[j], prepared, x, part, s, arith).is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                },
            )
        };
        if !ran || failed.load(Ordering::Relaxed) {
            // Said again one matrix at a time on one thread, which reports
            // what is wrong.
            let s = work.get_mut(..self.per_worker).unwrap_or(&mut []);
            for (w, out) in ws.into_iter().zip(outs) {
                let found = out.len() as u64;
                let mut part =
                    TokenRows::new(out, n, w.rows, 0, w.rows).ok_or(Error::BufferTooSmall {
                        needed: n.saturating_mul(w.rows) as u64,
                        found,
                    })?;
                let plain = match prepared {
                    Prepared::Transposed(_) => prepared,
                    _ => Prepared::Plain,
                };
                multiply(kern, w, plain, x, &mut part, s, arith)?;
            }
        }
        Ok(())
    }

    /// The activations of `n` tokens prepared once for the group `ws` in
    /// `shared`: 16-bit blocks where decode (or a packed Q8_0 batch) takes
    /// them, int8 blocks where the table multiplies int8, the batch
    /// transposed where the table's tiles take it so; or as they are.
    fn prepare<'x, const K: usize>(
        &self,
        ws: &[&Matrix; K],
        x: &[f32],
        n: usize,
        shared: &'x mut [f32],
        arith: Arith,
    ) -> Prepared<'x> {
        let kern = self.kern;
        let cols = ws[0].cols;
        let same_cols = ws.iter().all(|w| w.cols == cols);
        let nb = cols / quant::q16::QK;
        let q16 = same_cols
            && match arith {
                Arith::Decode => ws.iter().all(|w| kern.decodes_q16(w)),
                Arith::Batch => ws.iter().all(|w| kern.batches_packed(w)),
            };
        if q16 {
            return match super::blocks_in::<BlockQ16>(shared, n * nb) {
                Ok(b) => match kern.quantize_q16(x, n, cols, b) {
                    true => Prepared::Q16(b),
                    false => Prepared::Plain,
                },
                Err(_) => Prepared::Plain,
            };
        }
        if same_cols && ws.iter().all(|w| kern.takes_q8_0(w)) {
            return match super::blocks_in::<BlockQ8_0>(shared, n * nb) {
                Ok(b) => {
                    for (t, bt) in b.chunks_exact_mut(nb.max(1)).enumerate().take(n) {
                        quant::q8_0::quantize_row(&x[t * cols..(t + 1) * cols], bt);
                    }
                    Prepared::Q8(b)
                }
                Err(_) => Prepared::Plain,
            };
        }
        let transposed = arith == Arith::Batch
            && kern.takes_transposed()
            && same_cols
            && ws.iter().all(|w| !kern.batches_packed(w));
        if transposed {
            if let (Some(xt), Some(x)) = (
                shared.get_mut(..Kernels::xt_len(n, cols)),
                x.get(..n * cols),
            ) {
                kern.transpose(x, n, cols, xt);
                return Prepared::Transposed(xt);
            }
        }
        Prepared::Plain
    }
}

/// One worker's rows of one matrix from activations prepared as `p`.
fn multiply(
    kern: &Kernels,
    w: &Matrix,
    p: Prepared<'_>,
    x: &[f32],
    part: &mut TokenRows<'_>,
    s: &mut [f32],
    arith: Arith,
) -> Result<()> {
    match p {
        Prepared::Q16(b) => kern.matmul_part_q16(w, b, part, s),
        Prepared::Q8(b) => kern.matmul_part_q8(w, b, part),
        Prepared::Transposed(xt) => kern.matmul_part_xt(w, xt, part, s),
        Prepared::Plain => kern.matmul_part_as(w, x, part, s, arith),
    }
}
