//! The kernel table: one scalar reference set, faster twins chosen once.
//!
//! The model calls kernels only through [`Kernels`], a table of function
//! pointers. [`Kernels::scalar`] is the portable reference; [`Kernels::detect`]
//! starts from it and overrides what the running CPU supports (with the `simd`
//! feature), so the model itself contains no `cfg`.
//!
//! Activations are never quantized to 8 bits (ggml's choice). Batched
//! prefill keeps them in f32: a tile of weight rows is dequantized once and
//! multiplied with every token ([`Kernels::gemm_f32`]). Decode reads each
//! weight once per token; on the scalar table it widens each block in
//! registers against f32 inputs, and the fast tables multiply quantized rows
//! by the activations in 16-bit blocks ([`Q16Kernels`]: exact integer dots,
//! then both scales), which halves the instructions per weight while staying
//! far closer to the exact function than 8-bit activations. Every table is
//! held to the scalar table of the same arithmetic ([`Kernels::reference`]).

// Unsafe is for the architecture files alone (intrinsics); they opt in.
#![deny(unsafe_code)]

#[cfg(all(feature = "simd", target_arch = "aarch64"))]
mod aarch64_neon;
#[cfg(all(feature = "dsp", target_arch = "arm"))]
pub mod arm_dsp;
pub mod scalar;
mod step;
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
mod x86_avx2;
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
mod x86_avx512;

#[cfg(test)]
mod conformance;

pub use step::{Multiplier, StepRows, StepScratch};

use half::f16;

use crate::error::{Error, Result};
use crate::gguf::TensorInfo;
use crate::parallel::TokenRows;
use crate::quant::{
    self, cast_slice, BlockQ16, BlockQ4K, BlockQ4Kx8, BlockQ4_1, BlockQ4_1x8, BlockQ5_0,
    BlockQ5_0x8, BlockQ6K, BlockQ6Kx8, BlockQ8_0, BlockQ8_0x4, BlockQ8_0x8, GgmlType,
};

/// A matrix's rows as stored in the weights file: whole blocks of one
/// format, borrowed (aligned for the format's elements: [`Matrix`] checks).
#[derive(Debug, Clone, Copy)]
pub struct RowData<'a> {
    pub ty: GgmlType,
    bytes: &'a [u8],
}

impl<'a> RowData<'a> {
    /// No rows.
    pub const EMPTY: RowData<'static> = RowData {
        ty: GgmlType::F32,
        bytes: &[],
    };

    /// `bytes` as rows of `ty`, if they are aligned for its elements (f16
    /// and f32 rows are read as such) and a whole number of blocks.
    pub fn new(ty: GgmlType, bytes: &'a [u8]) -> Result<RowData<'a>> {
        match ty {
            GgmlType::F32 => cast_slice::<f32>(bytes).map(|_| ())?,
            GgmlType::F16 => cast_slice::<f16>(bytes).map(|_| ())?,
            GgmlType::BF16 => cast_slice::<half::bf16>(bytes).map(|_| ())?,
            _ => {}
        }
        let bb = ty.block_bytes();
        if !bytes.len().is_multiple_of(bb) {
            return Err(Error::LengthMismatch {
                expected: (bytes.len() / bb * bb) as u64,
                found: bytes.len() as u64,
            });
        }
        Ok(RowData { ty, bytes })
    }

    /// Rows of f32 (no check can fail: f32 slices are aligned).
    pub fn f32(rows: &'a [f32]) -> RowData<'a> {
        RowData {
            ty: GgmlType::F32,
            bytes: quant::as_bytes(rows),
        }
    }

    /// Rows of f16.
    pub fn f16(rows: &'a [f16]) -> RowData<'a> {
        RowData {
            ty: GgmlType::F16,
            bytes: quant::as_bytes(rows),
        }
    }

    /// Rows of blocks of a block format `B` (of type `ty`).
    pub fn blocks<B: quant::Block>(ty: GgmlType, rows: &'a [B]) -> RowData<'a> {
        RowData {
            ty,
            bytes: quant::as_bytes(rows),
        }
    }

    /// The stored bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The rows as blocks of `B`, if they are of type `ty` (format-specific
    /// kernels: the packed layouts and the int8 path).
    pub fn as_blocks<B: quant::Block>(&self, ty: GgmlType) -> Option<&'a [B]> {
        (self.ty == ty).then(|| quant::blocks(self.bytes))
    }

    /// The rows as f32, if they are F32.
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        match self.ty {
            GgmlType::F32 => cast_slice(self.bytes).ok(),
            _ => None,
        }
    }
}

/// A row-major weight matrix (`rows` outputs, each `cols` inputs long).
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a> {
    pub rows: usize,
    pub cols: usize,
    pub data: RowData<'a>,
    /// A second copy of a Q8_0 matrix's rows, interleaved for a packed
    /// kernel, where one was built ([`Packed`]).
    pub packed: Packed<'a>,
    /// Another copy of the rows, cut into pieces laid out where a host
    /// wants them ([`Pieces`]); the kernels read the pieces when there are
    /// any.
    pub pieces: Pieces<'a>,
}

/// A copy of a matrix's rows cut into pieces of consecutive rows, each
/// anywhere in one buffer: a host with several workers lays each worker's
/// rows of consecutive decode steps next to each other, so that what a
/// worker reads stays one stream from step to step. Every piece holds the
/// same numbers as the rows it copies, so results do not change.
#[derive(Debug, Clone, Copy)]
pub struct Pieces<'a> {
    bytes: &'a [u8],
    list: &'a [Piece],
}

/// Rows `lo..lo + rows` of a matrix at byte `at` of a [`Pieces`] buffer:
/// in the matrix's own format, or (`packed`, Q8_0 and Q4_1 only) as the
/// piece's whole groups of eight rows interleaved ([`BlockQ8_0x8`],
/// [`BlockQ4_1x8`]), the rows past the last whole group then read from the
/// file's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub lo: usize,
    pub rows: usize,
    pub at: usize,
    pub packed: bool,
}

impl Pieces<'_> {
    /// No pieces: the kernels read the matrix's own rows.
    pub const NONE: Pieces<'static> = Pieces {
        bytes: &[],
        list: &[],
    };

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// A Q8_0 matrix's whole groups of rows, interleaved for a kernel table's
/// packed kernel: a second copy that the kernel reads instead of the file's
/// rows, with the same numbers.
#[derive(Debug, Clone, Copy)]
pub enum Packed<'a> {
    None,
    /// Groups of eight ([`BlockQ8_0x8`]), which a host builds for a table
    /// with a packed decode kernel ([`Q16Kernels::q8_0x8`]); prefill takes
    /// the decode arithmetic on them too ([`Kernels::batches_packed`]).
    X8(&'a [BlockQ8_0x8]),
    /// Groups of four ([`BlockQ8_0x4`]), which a device builds for a table
    /// with a four-row int8 kernel ([`Int8Kernels::q8_0x4`]).
    X4(&'a [BlockQ8_0x4]),
    /// A Q4_1 matrix's groups of eight ([`BlockQ4_1x8`]), which a host
    /// builds for a table with a packed Q4_1 decode kernel
    /// ([`Q16Kernels::q4_1x8`]); prefill keeps the f32 tiles.
    Q4_1x8(&'a [BlockQ4_1x8]),
    /// A Q4_K matrix's super-blocks of eight rows ([`BlockQ4Kx8`]), for a
    /// table with a packed Q4_K decode kernel ([`Q16Kernels::q4_kx8`]);
    /// prefill takes the decode arithmetic on them too.
    Q4Kx8(&'a [BlockQ4Kx8]),
    /// A Q6_K matrix's super-blocks of eight rows ([`BlockQ6Kx8`]), for a
    /// table with a packed Q6_K decode kernel ([`Q16Kernels::q6_kx8`]);
    /// prefill takes the decode arithmetic on them too.
    Q6Kx8(&'a [BlockQ6Kx8]),
    /// A Q5_0 matrix's blocks of eight rows ([`BlockQ5_0x8`]), for a table
    /// with a packed Q5_0 decode kernel ([`Q16Kernels::q5_0x8`]); prefill
    /// keeps the f32 tiles.
    Q5_0x8(&'a [BlockQ5_0x8]),
}

impl<'a> Packed<'a> {
    /// The weight type a pack is of, its rows per group and its pack
    /// blocks (`None` for no pack).
    fn shape(&self) -> Option<(GgmlType, usize, usize)> {
        Some(match self {
            Packed::None => return None,
            Packed::X8(p) => (GgmlType::Q8_0, 8, p.len()),
            Packed::X4(p) => (GgmlType::Q8_0, 4, p.len()),
            Packed::Q4_1x8(p) => (GgmlType::Q4_1, 8, p.len()),
            Packed::Q4Kx8(p) => (GgmlType::Q4_K, 8, p.len()),
            Packed::Q6Kx8(p) => (GgmlType::Q6_K, 8, p.len()),
            Packed::Q5_0x8(p) => (GgmlType::Q5_0, 8, p.len()),
        })
    }

    /// Bytes of one block of `ty`'s rows interleaved in eights (eight rows'
    /// blocks), if `ty` has such a pack.
    pub fn eights_block(ty: GgmlType) -> Option<usize> {
        Some(match ty {
            GgmlType::Q8_0 => core::mem::size_of::<BlockQ8_0x8>(),
            GgmlType::Q4_1 => core::mem::size_of::<BlockQ4_1x8>(),
            GgmlType::Q4_K => core::mem::size_of::<BlockQ4Kx8>(),
            GgmlType::Q6_K => core::mem::size_of::<BlockQ6Kx8>(),
            GgmlType::Q5_0 => core::mem::size_of::<BlockQ5_0x8>(),
            _ => return None,
        })
    }

    /// `bytes` as the interleaved-in-eights pack of a `ty` matrix (whole
    /// pack blocks, aligned for them).
    pub fn eights(ty: GgmlType, bytes: &'a [u8]) -> Result<Packed<'a>> {
        Ok(match ty {
            GgmlType::Q8_0 => Packed::X8(cast_slice(bytes)?),
            GgmlType::Q4_1 => Packed::Q4_1x8(cast_slice(bytes)?),
            GgmlType::Q4_K => Packed::Q4Kx8(cast_slice(bytes)?),
            GgmlType::Q6_K => Packed::Q6Kx8(cast_slice(bytes)?),
            GgmlType::Q5_0 => Packed::Q5_0x8(cast_slice(bytes)?),
            _ => {
                return Err(Error::LengthMismatch {
                    expected: 0,
                    found: bytes.len() as u64,
                })
            }
        })
    }
}

impl<'a> Matrix<'a> {
    /// Views a validated 1-D or 2-D GGUF tensor as a matrix without copying.
    /// GGUF's `dims[0]` is the row length.
    pub fn from_tensor(t: &TensorInfo<'a>) -> Result<Matrix<'a>> {
        let cols =
            usize::try_from(t.dims[0]).map_err(|_| Error::DimensionOverflow { tensor: t.index })?;
        let rows = usize::try_from(t.n_rows())
            .map_err(|_| Error::DimensionOverflow { tensor: t.index })?;
        let data = RowData::new(t.ty, t.data)?;
        Ok(Matrix {
            rows,
            cols,
            data,
            packed: Packed::None,
            pieces: Pieces::NONE,
        })
    }

    /// This matrix reading its rows from `list`'s pieces of `bytes`, if the
    /// pieces cover rows `0..rows` in order, each within `bytes` and
    /// aligned for its format, packed pieces (Q8_0 and Q4_1 only) starting
    /// on a group of eight. The matrix keeps its own rows too (the
    /// embedding lookup and the packed pieces' last rows read them).
    pub fn with_pieces(self, bytes: &'a [u8], list: &'a [Piece]) -> Result<Matrix<'a>> {
        let mut next = 0usize;
        let bad = |found: usize| Error::LengthMismatch {
            expected: self.rows as u64,
            found: found as u64,
        };
        for p in list {
            if p.lo != next || p.rows == 0 || (p.packed && p.lo % 8 != 0) {
                return Err(bad(p.lo));
            }
            next = p.lo.checked_add(p.rows).ok_or(bad(usize::MAX))?;
            if next > self.rows {
                return Err(bad(next));
            }
        }
        if next != self.rows || list.is_empty() {
            return Err(bad(next));
        }
        let m = Matrix {
            pieces: Pieces { bytes, list },
            packed: Packed::None,
            ..self
        };
        for p in list {
            m.piece(p)?;
        }
        Ok(m)
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty().block_len() * self.ty().block_bytes()
    }

    /// Blocks in one row.
    pub fn row_blocks(&self) -> usize {
        self.cols / self.ty().block_len()
    }

    /// Rows `lo..hi` as stored (`None` past the last row).
    pub fn rows_data(&self, lo: usize, hi: usize) -> Option<RowData<'a>> {
        let rb = self.row_bytes();
        let bytes = self
            .data
            .bytes
            .get(lo.checked_mul(rb)?..hi.checked_mul(rb)?)?;
        Some(RowData { bytes, ..self.data })
    }

    /// Piece `p`'s rows as a matrix of its own (`p.rows` rows, no pieces).
    pub fn piece(&self, p: &Piece) -> Result<Matrix<'a>> {
        let nb = self.row_blocks();
        let (lo, hi) = (p.lo, p.lo.saturating_add(p.rows));
        let short = Error::LengthMismatch {
            expected: hi as u64,
            found: self.rows as u64,
        };
        let data = self.rows_data(lo, hi).ok_or(short)?;
        let own = Matrix {
            rows: p.rows,
            cols: self.cols,
            data,
            packed: Packed::None,
            pieces: Pieces::NONE,
        };
        let span = |len: usize| -> Result<&'a [u8]> {
            let bytes = self.pieces.bytes;
            p.at.checked_add(len)
                .and_then(|end| bytes.get(p.at..end))
                .ok_or(Error::LengthMismatch {
                    expected: len as u64,
                    found: bytes.len().saturating_sub(p.at) as u64,
                })
        };
        if p.packed {
            // Within the rows' own size (checked above) times a constant.
            let block = Packed::eights_block(data.ty).ok_or(Error::LengthMismatch {
                expected: 0,
                found: p.rows as u64,
            })?;
            let len = (p.rows / 8 * nb).checked_mul(block).ok_or(short)?;
            return own.with_packs(Packed::eights(data.ty, span(len)?)?);
        }
        let len = own.n_bytes();
        let b = span(len)?;
        let data = RowData::new(data.ty, b)?;
        Ok(Matrix { data, ..own })
    }

    /// The matrix in the form the kernels read it: its first piece's, when
    /// it has pieces (all of a matrix's pieces have one form).
    pub fn form(&self) -> Matrix<'a> {
        match self.pieces.list.first() {
            Some(p) => self.piece(p).unwrap_or(*self),
            None => *self,
        }
    }

    /// `f(matrix, part)` for each piece that `part`'s rows fall in, with
    /// the piece as a matrix and the part's rows counted from the piece's
    /// first; once with `self` and `part` when there are no pieces.
    fn by_piece(
        &self,
        part: &mut TokenRows<'_>,
        mut f: impl FnMut(&Matrix<'a>, &mut TokenRows<'_>) -> Result<()>,
    ) -> Result<()> {
        if self.pieces.is_empty() {
            return f(self, part);
        }
        let (r0, r1) = part.range();
        for p in self.pieces.list {
            let (a, b) = (r0.max(p.lo), r1.min(p.lo + p.rows));
            if a >= b {
                continue;
            }
            let m = self.piece(p)?;
            let mut sub = part.rebased(a, b, p.lo).ok_or(Error::LengthMismatch {
                expected: r1 as u64,
                found: b as u64,
            })?;
            f(&m, &mut sub)?;
        }
        Ok(())
    }

    /// This Q8_0 matrix with its rows also interleaved in groups of eight:
    /// `packed` must be what [`quant::q8_0::pack_rows_x8`] wrote from
    /// `data` for every whole group (`rows / 8` groups of `cols / 32`
    /// blocks).
    pub fn with_packed(self, packed: &'a [BlockQ8_0x8]) -> Result<Matrix<'a>> {
        self.with_packs(Packed::X8(packed))
    }

    /// This Q4_1 matrix with its rows also interleaved in groups of eight:
    /// `packed` must be what [`quant::q4_1::pack_rows_x8`] wrote from
    /// `data` for every whole group (`rows / 8` groups of `cols / 32`
    /// blocks).
    pub fn with_packed_q4_1(self, packed: &'a [BlockQ4_1x8]) -> Result<Matrix<'a>> {
        self.with_packs(Packed::Q4_1x8(packed))
    }

    /// This Q8_0 matrix with its rows also interleaved in groups of four:
    /// `packed` must be what [`quant::q8_0::pack_rows_x4`] wrote from `data`
    /// for every whole group (`rows / 4` groups of `cols / 32` blocks).
    pub fn with_packed4(self, packed: &'a [BlockQ8_0x4]) -> Result<Matrix<'a>> {
        self.with_packs(Packed::X4(packed))
    }

    /// This matrix with `packed`, if the pack is of the matrix's type and is
    /// one pack block per whole group of rows and block column: what the
    /// format's `pack_rows_x8` (or `pack_rows_x4`) wrote from `data`.
    pub fn with_packs(self, packed: Packed<'a>) -> Result<Matrix<'a>> {
        let (ty, rows_per_group, len) = packed.shape().unwrap_or((self.ty(), 1, usize::MAX));
        let need = self.rows / rows_per_group * self.row_blocks();
        if ty != self.ty() || len != need {
            return Err(Error::LengthMismatch {
                expected: need as u64,
                found: len as u64,
            });
        }
        Ok(Matrix { packed, ..self })
    }

    /// Blocks of [`BlockQ8_0x4`] that [`Matrix::with_packed4`] takes for
    /// this matrix (0 unless it is Q8_0 with at least four rows).
    pub fn packed4_len(&self) -> usize {
        match self.ty() {
            GgmlType::Q8_0 => self.rows / 4 * self.row_blocks(),
            _ => 0,
        }
    }

    /// The groups of eight, if this matrix has them.
    pub fn packed8(&self) -> Option<&'a [BlockQ8_0x8]> {
        match self.packed {
            Packed::X8(p) => Some(p),
            _ => None,
        }
    }

    /// The Q4_1 groups of eight, if this matrix has them.
    pub fn packed_q4_1(&self) -> Option<&'a [BlockQ4_1x8]> {
        match self.packed {
            Packed::Q4_1x8(p) => Some(p),
            _ => None,
        }
    }

    /// The groups of four, if this matrix has them.
    pub fn packed4(&self) -> Option<&'a [BlockQ8_0x4]> {
        match self.packed {
            Packed::X4(p) => Some(p),
            _ => None,
        }
    }

    pub fn ty(&self) -> GgmlType {
        self.data.ty
    }

    /// Bytes of weights (what one full matmul reads).
    pub fn n_bytes(&self) -> usize {
        self.data.bytes().len()
    }

    /// Writes row `r` as f32 into `out` (`cols` long). Errors on a bad index
    /// or a short buffer.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        self.dequantize_row_with(r, out, &Kernels::scalar())
    }

    /// Hints `k`'s caches that row `r` is read soon (nothing past the last row).
    pub fn prefetch_row(&self, r: usize, k: &Kernels) {
        let rb = self.row_bytes();
        let row = r
            .checked_mul(rb)
            .and_then(|at| self.data.bytes.get(at..at + rb))
            .map(|row| (row.as_ptr(), rb));
        if let Some((p, len)) = row {
            (k.prefetch)(p, len);
        }
    }

    /// [`Matrix::dequantize_row`] through `k`'s widening kernels (the same
    /// values, NaN payloads aside: widening is exact, and a Q8_0 weight is
    /// one product).
    pub fn dequantize_row_with(&self, r: usize, out: &mut [f32], k: &Kernels) -> Result<()> {
        if r >= self.rows {
            return Err(Error::TokenOutOfRange {
                token: r as u32,
                vocab: self.rows as u32,
            });
        }
        let found = out.len() as u64;
        let out = out.get_mut(..self.cols).ok_or(Error::BufferTooSmall {
            needed: self.cols as u64,
            found,
        })?;
        let rb = self.row_bytes();
        (k.format(self.ty()).widen)(&self.data.bytes[r * rb..(r + 1) * rb], out);
        Ok(())
    }
}

/// Dot product of one weight row with an f32 vector of the same length.
pub type DotFn<T> = fn(&[T], &[f32]) -> f32;

/// `out[i] = W[i] · x` for `out.len()` consecutive rows of `w`, each as long
/// as `x` (in elements: `x.len() / 32` blocks for the block formats). `w`
/// holds at least that many rows.
pub type MatvecFn<T> = fn(&[T], &[f32], &mut [f32]);

/// `out[r * n + t] = w[r] · x[t]` for f32 rows, with the tokens'
/// activations transposed: `w` is (rows, cols) with `rows = w.len() /
/// cols`, `xt[k * ld + t]` is token t's element k, `out` is (rows, n). The
/// sums run over `k` in order, one chain per output.
pub type GemmXtFn = fn(&[f32], &[f32], XtShape, &mut [f32]);

/// The shape of transposed activations for [`GemmXtFn`]: `n` tokens of
/// `cols` elements, each element's tokens `ld` floats apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XtShape {
    pub cols: usize,
    pub n: usize,
    pub ld: usize,
}

/// The row stride [`Kernels::transpose`] gives `n` tokens: an odd number
/// of 64-byte lines. A power-of-two stride would put every column's tokens
/// in a few of the L1 cache's sets, which then evict each other.
pub const fn xt_ld(n: usize) -> usize {
    (n.div_ceil(16) | 1).saturating_mul(16)
}

/// `dst[c * ld + r] = src[r * cols + c]`: `src` (rows, cols) transposed,
/// in blocks of 8 x 8 (one element at a time, each write would start a new
/// cache line, and bounds checks would cost more than the moves).
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32], ld: usize) {
    const G: usize = 8;
    if rows == 0 || cols == 0 {
        return;
    }
    let src = &src[..rows * cols];
    let dst = &mut dst[..(cols - 1) * ld + rows];
    let (rg, cg) = (rows / G * G, cols / G * G);
    for r0 in (0..rg).step_by(G) {
        let group: [&[f32]; G] =
            core::array::from_fn(|j| &src[(r0 + j) * cols..(r0 + j + 1) * cols]);
        for c0 in (0..cg).step_by(G) {
            let block: [[f32; G]; G] = core::array::from_fn(|j| {
                let mut row = [0.0; G];
                row.copy_from_slice(&group[j][c0..c0 + G]);
                row
            });
            for i in 0..G {
                let out = &mut dst[(c0 + i) * ld + r0..(c0 + i) * ld + r0 + G];
                for (j, o) in out.iter_mut().enumerate() {
                    *o = block[j][i];
                }
            }
        }
    }
    // The edges past the whole blocks.
    for r in 0..rows {
        let c_from = if r < rg { cg } else { 0 };
        for c in c_from..cols {
            dst[c * ld + r] = src[r * cols + c];
        }
    }
}

/// A hint that the `len` bytes from `p` are read soon, so the caches may
/// start loading them. It never reads through `p`, so any address is
/// harmless (a prefetch does not fault).
pub type PrefetchFn = fn(*const u8, usize);

/// `out[t * rows + r] = w[r] · x[t]` for f32 rows: `w` is (rows, cols), `x`
/// is (n, cols), `out` is (n, rows), with `rows = w.len() / cols` and
/// `n = x.len() / cols`.
pub type GemmFn = fn(&[f32], &[f32], usize, &mut [f32]);

/// `out[r] = W[r] · x` for rows of blocks `T` (Q8_0 unless named) against
/// activations already quantized to Q8_0 blocks of 32: `x.len()` blocks
/// make a row (eight to each 256-element super-block of a K-quant), and
/// `out.len()` rows are read from `w`.
pub type MatvecQ8Fn<T = BlockQ8_0> = fn(&[T], &[BlockQ8_0], &mut [f32]);

/// The int8-activation arithmetic (ggml's, and what a Cortex-M runs): the
/// weight formats whose matrices multiply activations quantized to Q8_0
/// blocks, each through its kernel. Every kernel takes an exact integer
/// dot per group of 32 weights against one activation block, then applies
/// the float scales in the order its scalar reference in
/// [`scalar`] states; formats without a kernel here dot the f32
/// activations.
#[derive(Debug, Clone, Copy)]
pub struct Int8Kernels {
    /// Q8_0 rows ([`scalar::matvec_q8_0_q8_0`]).
    pub q8_0: MatvecQ8Fn,
    /// Q8_0 rows a device packed in fours ([`Packed::X4`]), for their
    /// whole groups; with `None` a device builds no such packs.
    pub q8_0x4: Option<MatvecQ8x4Fn>,
    /// Q5_0 rows ([`scalar::matvec_q5_0_q8_0`]).
    pub q5_0: Option<MatvecQ8Fn<BlockQ5_0>>,
    /// Q4_K rows ([`scalar::matvec_q4_k_q8_0`]).
    pub q4_k: Option<MatvecQ8Fn<BlockQ4K>>,
    /// Q6_K rows ([`scalar::matvec_q6_k_q8_0`]).
    pub q6_k: Option<MatvecQ8Fn<BlockQ6K>>,
}

impl Int8Kernels {
    /// The scalar references, for every format the int8 path covers.
    pub const SCALAR: Int8Kernels = Int8Kernels {
        q8_0: scalar::matvec_q8_0_q8_0,
        q8_0x4: Some(scalar::matvec_q8_0x4_q8_0),
        q5_0: Some(scalar::matvec_q5_0_q8_0),
        q4_k: Some(scalar::matvec_q4_k_q8_0),
        q6_k: Some(scalar::matvec_q6_k_q8_0),
    };

    /// Whether matrices of type `ty` take int8 activations.
    pub fn takes(&self, ty: GgmlType) -> bool {
        match ty {
            GgmlType::Q8_0 => true,
            GgmlType::Q5_0 => self.q5_0.is_some(),
            GgmlType::Q4_K => self.q4_k.is_some(),
            GgmlType::Q6_K => self.q6_k.is_some(),
            _ => false,
        }
    }
}

/// [`MatvecQ8Fn`] over Q8_0 rows interleaved in fours ([`BlockQ8_0x4`]):
/// `w` holds `out.len() / 4` groups of `x.len()` blocks, and every row's
/// value is bit for bit [`quant::q8_0::vec_dot_q8_0_q8_0`] of the row as
/// the file stores it.
pub type MatvecQ8x4Fn = fn(&[BlockQ8_0x4], &[BlockQ8_0], &mut [f32]);

/// `out[t * rows + r] = W[r] · x[t]` for quantized rows against `n` tokens of
/// activations in 16-bit blocks: `x` is (n, blocks), `out` is (n, rows), and
/// `rows = out.len() / n` rows are read from `w`. Each weight block is
/// unpacked once for all the tokens, and every token's result is the one it
/// gets alone (`n = 1`), bit for bit: decode of several sequences at once
/// (continuous batching) gives each exactly what it would get by itself.
pub type MatvecQ16Fn<T> = fn(&[T], &[BlockQ16], usize, &mut [f32]);

/// Quantizes a row of activations into 16-bit blocks, exactly as
/// [`crate::quant::q16::quantize_row`] does.
pub type QuantizeQ16Fn = fn(&[f32], &mut [BlockQ16]);

/// Interleaved Q8_0 groups of eight rows ([`BlockQ8_0x8`]: `w.len() / nb`
/// groups, `nb = x.len() / n` blocks each) times `n` tokens of 16-bit
/// activation blocks, into `out[t * ld + r]`. Every row's value is bit for
/// bit [`crate::quant::q16::dot_q8_0_q16`] of the row as the file stores
/// it: each lane takes its row's blocks in order, scaled and added as the
/// reference does.
pub type MatvecQ16x8Fn = fn(&[BlockQ8_0x8], &[BlockQ16], usize, &mut [f32], usize);

/// Decode kernels over 16-bit activation blocks ([`crate::quant::q16`]) that
/// are not one format's: the quantizer and the packed layouts (each
/// format's own 16-bit kernel is its [`FormatKernels::q16`]).
#[derive(Debug, Clone, Copy)]
pub struct Q16Kernels {
    pub quantize: QuantizeQ16Fn,
    /// Q8_0 rows interleaved in eights ([`Matrix::packed`]); with `None`
    /// the host builds no packs.
    pub q8_0x8: Option<MatvecQ16x8Fn>,
    /// Q4_1 rows interleaved in eights ([`Packed::Q4_1x8`]), in decode;
    /// with `None` the host builds no such packs.
    pub q4_1x8: Option<MatvecQ41x8Fn>,
    /// Q4_K rows interleaved in eights ([`Packed::Q4Kx8`]), in decode;
    /// with `None` the host builds no such packs.
    pub q4_kx8: Option<MatvecQ4Kx8Fn>,
    /// Q6_K rows interleaved in eights ([`Packed::Q6Kx8`]), in decode;
    /// with `None` the host builds no such packs.
    pub q6_kx8: Option<MatvecQ6Kx8Fn>,
    /// Q5_0 rows interleaved in eights ([`Packed::Q5_0x8`]), in decode;
    /// with `None` the host builds no such packs.
    pub q5_0x8: Option<MatvecQ50x8Fn>,
}

/// Interleaved Q4_1 groups of eight rows times `n` tokens, as
/// [`MatvecQ16x8Fn`] for Q8_0: each row's value bit for bit
/// [`quant::q16::dot_q4_1_q16`].
pub type MatvecQ41x8Fn = fn(&[BlockQ4_1x8], &[BlockQ16], usize, &mut [f32], usize);

/// Interleaved Q4_K super-blocks of eight rows times `n` tokens (eight
/// activation blocks to a super-block), as [`MatvecQ16x8Fn`] for Q8_0: each
/// row's value bit for bit [`quant::q16::dot_scale_min_q16`].
pub type MatvecQ4Kx8Fn = fn(&[BlockQ4Kx8], &[BlockQ16], usize, &mut [f32], usize);

/// Interleaved Q6_K super-blocks of eight rows times `n` tokens, as
/// [`MatvecQ4Kx8Fn`]: each row's value bit for bit
/// [`quant::q16::dot_q6_k_q16`].
pub type MatvecQ6Kx8Fn = fn(&[BlockQ6Kx8], &[BlockQ16], usize, &mut [f32], usize);

/// Interleaved Q5_0 blocks of eight rows times `n` tokens, as
/// [`MatvecQ16x8Fn`] for Q8_0: each row's value bit for bit
/// [`quant::q16::dot_q5_0_q16`].
pub type MatvecQ50x8Fn = fn(&[BlockQ5_0x8], &[BlockQ16], usize, &mut [f32], usize);

/// `y += a * x` for f16 `x` (attention's weighted sum of cached values).
pub type AxpyF16Fn = fn(&mut [f32], f32, &[f16]);

/// Rows of stored weights as f32, element for element what
/// `quant::*::dequantize_row` gives, NaN payloads aside (`out` as long as
/// the row).
pub type WidenFn<T> = fn(&[T], &mut [f32]);

/// Attention scores over an f16 cache for the `g` query heads that share one
/// KV head: `key_dots(q, g, k, stride, out, ld)` reads `q` as `g` queries of
/// `hd = q.len() / g` one after another and sets `out[j * ld + p] = q_j ·
/// k[p * stride..][..hd]` for each query `j` and each position `p < n`, where
/// `n` is the fewest of the positions `k` holds, `ld`, and the positions the
/// last row of `out` has room for (`out.len() - (g - 1) * ld`). Each score is
/// exactly the table's `dot_f16` of that row; a grouped kernel widens each
/// cached key once for all `g` queries.
pub type KeyDotsF16Fn = fn(&[f32], usize, &[f16], usize, &mut [f32], usize);

/// Attention's weighted value sums over an f16 cache for `g` query heads:
/// `value_sum(out, g, w, v, stride)` reads `out` as `g` rows of `hd =
/// out.len() / g` and `w` as `g` rows of `n = w.len() / g` weights, and adds
/// `w[j * n + p] * v[p * stride + i]` to `out[j * hd + i]` for each position
/// `p` that `v` holds, in order: exactly the table's `axpy_f16` applied
/// position by position to each row. A grouped kernel widens each cached
/// value once for all `g` rows.
pub type ValueSumF16Fn = fn(&mut [f32], usize, &[f32], &[f16], usize);

/// A grouped attention call's shape: `g` query heads of `hd` elements,
/// `n` positions, score (or weight) rows `ld` apart.
#[derive(Clone, Copy)]
#[allow(dead_code)] // Only the SIMD tables take grouped calls whole.
pub(crate) struct Heads {
    pub g: usize,
    pub hd: usize,
    pub n: usize,
    pub ld: usize,
}

#[allow(dead_code)] // Only the SIMD tables take grouped calls whole.
impl Heads {
    /// A [`KeyDotsF16Fn`] call's shape: `n` is the positions `k` holds and
    /// `out` has room for, so `k` holds `n` rows of `hd` halves every
    /// `stride`, `q` holds `g * hd` floats and `out` `(g - 1) * ld + n`.
    pub(crate) fn keys(
        q: &[f32],
        g: usize,
        k: &[f16],
        stride: usize,
        out: &[f32],
        ld: usize,
    ) -> Heads {
        let g = g.max(1);
        let hd = q.len() / g;
        let n = group_positions(k.len(), hd, stride, g, ld, out.len());
        Heads { g, hd, n, ld }
    }

    /// A [`ValueSumF16Fn`] call's shape: `v` holds `n` rows of `hd` halves
    /// every `stride`, `out` holds `g * hd` floats and `w` `g * ld`.
    pub(crate) fn values(out: &[f32], g: usize, w: &[f32], v: &[f16], stride: usize) -> Heads {
        let g = g.max(1);
        let (hd, ld) = (out.len() / g, w.len() / g);
        let n = strided_rows(v.len(), hd, stride).min(ld);
        Heads { g, hd, n, ld }
    }
}

/// Positions a grouped attention kernel covers: the fewest of the rows of
/// `hd` every `stride` in a cache view of `len` elements, `ld`, and the
/// positions the last of `g` rows `ld` apart finds in `out_len`.
pub(crate) fn group_positions(
    len: usize,
    hd: usize,
    stride: usize,
    g: usize,
    ld: usize,
    out_len: usize,
) -> usize {
    let last = out_len.saturating_sub(g.saturating_sub(1).saturating_mul(ld));
    strided_rows(len, hd, stride).min(ld).min(last)
}

/// Positions of a strided cache view that `len` elements hold: rows of `row`
/// elements starting every `stride` (`stride >= row`).
pub(crate) fn strided_rows(len: usize, row: usize, stride: usize) -> usize {
    if len < row {
        0
    } else {
        (len - row) / stride.max(1) + 1
    }
}

/// Weight rows a batched matmul dequantizes at once (a tile), reused for
/// every token of the batch.
pub const TILE_ROWS: usize = 16;

/// Weight rows that several decode tokens read in turn (small enough to stay
/// in the first-level cache between them).
pub const DECODE_TILE: usize = 32;

/// The arithmetic of a matmul's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Arith {
    /// Each token against the stored rows (16-bit activation blocks on the
    /// fast tables): what one-token steps use.
    Decode,
    /// Rows dequantized in tiles and multiplied with f32 activations: what
    /// prompt chunks use (packed Q8_0 matrices, [`Kernels::batches_packed`],
    /// take the decode arithmetic here too).
    Batch,
}

/// One row's dot with f32 activations, the row given as its stored bytes.
pub type RowDotFn = fn(&[u8], &[f32]) -> f32;

/// `out[i] = W[i] · x` for `out.len()` consecutive rows given as their
/// stored bytes, each as long as `x`.
pub type RowMatvecFn = fn(&[u8], &[f32], &mut [f32]);

/// Stored rows as f32 (`out` as long as the rows).
pub type RowWidenFn = fn(&[u8], &mut [f32]);

/// [`MatvecQ16Fn`] over rows given as their stored bytes.
pub type RowQ16Fn = fn(&[u8], &[BlockQ16], usize, &mut [f32]);

/// One weight format's row of a kernel table: what every matmul of a
/// matrix of that format calls, on rows given as their stored bytes (whole
/// blocks, aligned for the format: [`RowData`]). A table's fast kernels
/// take typed rows; the `erase!` macro in this module makes the entry.
#[derive(Debug, Clone, Copy)]
pub struct FormatKernels {
    /// One row's dot with f32 activations.
    pub dot: RowDotFn,
    /// Several rows against f32 activations (decode without 16-bit
    /// blocks); with `None`, row by row through `dot`.
    pub mv: Option<RowMatvecFn>,
    /// Rows as f32, element for element what the format's `dequantize`
    /// gives (NaN payloads aside): batched tiles and the embedding lookup.
    pub widen: RowWidenFn,
    /// With `Some` (on a table with [`Kernels::q16`]), decode multiplies
    /// these rows by the activations in 16-bit blocks; with `None` by the
    /// f32 activations.
    pub q16: Option<RowQ16Fn>,
}

impl FormatKernels {
    /// The format's own scalar reference ([`quant::Format`]): what a table
    /// runs for a format it has no kernels for.
    pub const fn reference(f: &quant::Format) -> FormatKernels {
        FormatKernels {
            dot: f.dot,
            mv: None,
            widen: f.dequantize,
            q16: None,
        }
    }
}

/// A [`FormatKernels`] entry from a kernel over typed rows: `erase!(dot T,
/// f)`, `erase!(mv T, f)`, `erase!(widen T, f)` or `erase!(q16 T, f)`,
/// where `T` is `f32`, `f16` or a block type. The rows' bytes are viewed as
/// `T` without copying ([`quant::view`]).
macro_rules! erase {
    (dot $t:ty, $f:path) => {{
        fn f(w: &[u8], x: &[f32]) -> f32 {
            $f($crate::quant::view::<$t>(w), x)
        }
        f as $crate::kernels::RowDotFn
    }};
    (mv $t:ty, $f:path) => {{
        fn f(w: &[u8], x: &[f32], out: &mut [f32]) {
            $f($crate::quant::view::<$t>(w), x, out)
        }
        f as $crate::kernels::RowMatvecFn
    }};
    (widen $t:ty, $f:path) => {{
        fn f(w: &[u8], out: &mut [f32]) {
            $f($crate::quant::view::<$t>(w), out)
        }
        f as $crate::kernels::RowWidenFn
    }};
    (q16 $t:ty, $f:path) => {{
        fn f(w: &[u8], x: &[$crate::quant::BlockQ16], n: usize, out: &mut [f32]) {
            $f($crate::quant::view::<$t>(w), x, n, out)
        }
        f as $crate::kernels::RowQ16Fn
    }};
}
pub(crate) use erase;

/// The kernel table.
#[derive(Debug, Clone, Copy)]
pub struct Kernels {
    /// Which set this is, for logs and `--kernels`.
    pub name: &'static str,
    /// Each weight format's kernels, keyed by [`GgmlType::index`].
    pub formats: [FormatKernels; GgmlType::COUNT],
    /// Vector dots for attention over f32 and f16 caches.
    pub dot_f32: DotFn<f32>,
    pub dot_f16: DotFn<f16>,
    /// f32 rows times several tokens (batched prefill over dequantized tiles).
    pub gemm_f32: GemmFn,
    /// With `Some`, batched prefill transposes the tokens' activations once
    /// per matmul and multiplies tiles through this kernel (tokens in the
    /// vector lanes: no horizontal sums) instead of [`Kernels::gemm_f32`].
    pub gemm_xt: Option<GemmXtFn>,
    /// `y += a * x` over f16 `x`.
    pub axpy_f16: AxpyF16Fn,
    /// Asks the caches for bytes read soon (the batched loop's next tile
    /// while this one multiplies, attention's cached rows before the
    /// kernels read them); a no-op in the scalar tables.
    pub prefetch: PrefetchFn,
    /// SwiGLU's gate in place, `g = silu(g) * u`: [`crate::math::swiglu`]'s
    /// values (NaN for NaN).
    pub swiglu: fn(&mut [f32], &[f32]),
    /// GeGLU's gate in place, `g = gelu(g) * u`: [`crate::math::geglu`]'s
    /// values (NaN for NaN).
    pub geglu: fn(&mut [f32], &[f32]),
    /// Attention's softmax in place: [`crate::math::softmax`]'s values
    /// bit for bit.
    pub softmax: fn(&mut [f32]),
    /// Attention's scores over an f16 cache, all positions and all query
    /// heads of one KV head in one call.
    pub key_dots_f16: KeyDotsF16Fn,
    /// Attention's value sums over an f16 cache, all positions and all query
    /// heads of one KV head in one call.
    pub value_sum_f16: ValueSumF16Fn,
    /// With `Some`, decode multiplies quantized rows by the activations in
    /// 16-bit blocks (integer dots; see [`crate::quant::q16`]); with `None`
    /// by the f32 activations.
    pub q16: Option<Q16Kernels>,
    /// With `Some`, the formats it lists multiply activations quantized to
    /// Q8_0 blocks ([`Int8Kernels`]: an integer dot per block of 32, then
    /// the scales); with `None` every format dots the f32 activations.
    pub int8: Option<Int8Kernels>,
}

impl Kernels {
    /// The portable reference kernels.
    pub const fn scalar() -> Kernels {
        Kernels {
            name: "scalar",
            formats: scalar::formats(),
            dot_f32: scalar::dot_f32,
            dot_f16: scalar::dot_f16,
            gemm_f32: scalar::gemm_f32,
            gemm_xt: None,
            axpy_f16: scalar::axpy_f16,
            prefetch: scalar::prefetch,
            swiglu: crate::math::swiglu,
            geglu: crate::math::geglu,
            softmax: crate::math::softmax,
            key_dots_f16: scalar::key_dots_f16,
            value_sum_f16: scalar::value_sum_f16,
            q16: None,
            int8: None,
        }
    }

    /// The scalar reference with 16-bit activations in decode: the
    /// arithmetic of the fast decode kernels, written plainly.
    pub const fn scalar_q16() -> Kernels {
        Kernels {
            name: "scalar-q16",
            formats: scalar::formats_q16(),
            q16: Some(Q16Kernels {
                quantize: quant::q16::quantize_row,
                q8_0x8: None,
                q4_1x8: None,
                q4_kx8: None,
                q6_kx8: None,
                q5_0x8: None,
            }),
            ..Self::scalar()
        }
    }

    /// The scalar reference with int8 activations for Q8_0, Q5_0, Q4_K and
    /// Q6_K matrices ([`Int8Kernels::SCALAR`]): what the Cortex-M DSP
    /// kernels compute, bit for bit.
    pub const fn scalar_int8() -> Kernels {
        Kernels {
            name: "scalar-q8",
            int8: Some(Int8Kernels::SCALAR),
            ..Self::scalar()
        }
    }

    /// The kernels for matrices of type `ty`.
    #[inline(always)]
    pub fn format(&self, ty: GgmlType) -> &FormatKernels {
        &self.formats[ty.index()]
    }

    /// This table with `ty`'s kernels replaced (how an architecture's table
    /// plugs its kernels into the scalar one).
    pub const fn with_format(mut self, ty: GgmlType, k: FormatKernels) -> Kernels {
        self.formats[ty.index()] = k;
        self
    }

    /// The scalar table that computes what this one does (the same
    /// activation formats), for holding a fast table to its reference.
    pub const fn reference(&self) -> Kernels {
        if self.int8.is_some() {
            Self::scalar_int8()
        } else if self.q16.is_some() {
            Self::scalar_q16()
        } else {
            Self::scalar()
        }
    }

    /// The best kernels this CPU runs: scalar, with the architecture twins
    /// that the `simd` feature permits and the CPU supports plugged in
    /// (detected at run time with `std`, from target features without).
    pub fn detect() -> Kernels {
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        if let Some(k) = x86_avx512::table().or_else(x86_avx2::table) {
            return k;
        }
        #[cfg(all(feature = "simd", target_arch = "aarch64"))]
        if let Some(k) = aarch64_neon::table() {
            return k;
        }
        #[cfg(all(feature = "dsp", target_arch = "arm"))]
        return arm_dsp::table();
        #[allow(unreachable_code)]
        Self::scalar()
    }

    /// The x86_64 AVX2 + FMA + F16C set, if this build and CPU run it.
    pub fn avx2() -> Option<Kernels> {
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        return x86_avx2::table();
        #[allow(unreachable_code)]
        None
    }

    /// The x86_64 AVX-512 set (the AVX2 set with AVX-512 prefill tiles, and
    /// VNNI 16-bit decode where the CPU has it), if
    /// this build and CPU run it.
    pub fn avx512() -> Option<Kernels> {
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        return x86_avx512::table();
        #[allow(unreachable_code)]
        None
    }

    /// The AArch64 NEON set, if this build and CPU run it.
    pub fn neon() -> Option<Kernels> {
        #[cfg(all(feature = "simd", target_arch = "aarch64"))]
        return aarch64_neon::table();
        #[allow(unreachable_code)]
        None
    }

    /// Floats of per-worker scratch that [`Kernels::matmul_part`] needs for
    /// matrices up to `cols` long and batches up to `n` tokens.
    pub const fn scratch_len(cols: usize, n: usize) -> usize {
        Self::scratch_len_for(cols, n, 1)
    }

    /// Floats of per-worker scratch for [`Kernels::matmul_part_as`] with up
    /// to `batch` tokens in [`Arith::Batch`] and up to `decode` tokens in
    /// [`Arith::Decode`].
    pub const fn scratch_len_for(cols: usize, batch: usize, decode: usize) -> usize {
        // Packed Q8_0 matrices take the decode arithmetic for a batch as well.
        Self::scratch_len_split(cols, batch, if decode > batch { decode } else { batch })
    }

    /// Floats of per-worker scratch with up to `batch` tokens in
    /// [`Arith::Batch`] on plain rows and up to `tokens` tokens in the
    /// decode arithmetic (packed matrices included).
    pub(crate) const fn scratch_len_split(cols: usize, batch: usize, tokens: usize) -> usize {
        // Decode: the tokens' quantized activations (at most 80 bytes per 32
        // floats), and an output tile when there are several tokens.
        let d = if tokens <= 1 {
            cols
        } else {
            tokens * (cols + DECODE_TILE)
        };
        // Batch: a dequantized tile of rows and its output (tables that take
        // the tokens transposed use what is left for as many of them as fit;
        // a plan shares one transposition for all workers).
        let b = if batch <= 1 {
            0
        } else {
            TILE_ROWS * cols + TILE_ROWS * batch
        };
        if d > b {
            d
        } else {
            b
        }
    }

    /// `out[t][r] = W[r] · x[t]` for `n` tokens: `x` is (n, cols), `out` is (n, rows).
    ///
    /// One token (decode) multiplies the stored rows with `x` directly,
    /// several at a time. Several tokens (prefill) dequantize a tile of
    /// [`TILE_ROWS`] rows once into `scratch` and multiply it with every
    /// token, so the unpacking is paid once per weight and the inner loop is
    /// an f32 matrix product. `scratch` holds [`Kernels::scratch_len`] floats.
    pub fn matmul(
        &self,
        w: &Matrix,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<()> {
        self.matmul_rows(w, x, n, out, scratch, 0, w.rows)
    }

    /// [`Kernels::matmul`] restricted to rows `r0..r1`; `out` still has the full
    /// (n, rows) layout.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_rows(
        &self,
        w: &Matrix,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        scratch: &mut [f32],
        r0: usize,
        r1: usize,
    ) -> Result<()> {
        let found = out.len() as u64;
        if r0 > r1 || r1 > w.rows {
            return Err(Error::LengthMismatch {
                expected: w.rows as u64,
                found: r1 as u64,
            });
        }
        let need = n.checked_mul(w.rows).ok_or(Error::BufferTooSmall {
            needed: u64::MAX,
            found,
        })?;
        let mut part = TokenRows::new(out, n, w.rows, r0, r1).ok_or(Error::BufferTooSmall {
            needed: need as u64,
            found,
        })?;
        self.matmul_part(w, x, &mut part, scratch)
    }

    /// The matmul for one worker's rows (`part`: rows `r0..r1` of every
    /// token): decode arithmetic for one token, batched for more.
    pub fn matmul_part(
        &self,
        w: &Matrix,
        x: &[f32],
        part: &mut TokenRows<'_>,
        scratch: &mut [f32],
    ) -> Result<()> {
        let arith = if part.tokens() <= 1 {
            Arith::Decode
        } else {
            Arith::Batch
        };
        self.matmul_part_as(w, x, part, scratch, arith)
    }

    /// The matmul for one worker's rows with the arithmetic chosen by the
    /// caller. Each token's result depends only on its own activations and
    /// `arith`, never on the other tokens: sequences batched together get
    /// what each gets alone.
    pub fn matmul_part_as(
        &self,
        w: &Matrix,
        x: &[f32],
        part: &mut TokenRows<'_>,
        scratch: &mut [f32],
        arith: Arith,
    ) -> Result<()> {
        if !w.pieces.is_empty() {
            return w.by_piece(part, |m, p| self.matmul_part_as(m, x, p, scratch, arith));
        }
        let (rows, cols) = (w.rows, w.cols);
        let n = part.tokens();
        let (r0, r1) = part.range();
        let need_x = n.checked_mul(cols).ok_or(Error::BufferTooSmall {
            needed: u64::MAX,
            found: x.len() as u64,
        })?;
        if x.len() < need_x {
            return Err(Error::BufferTooSmall {
                needed: need_x as u64,
                found: x.len() as u64,
            });
        }
        if r1 > rows || r0 > r1 {
            return Err(Error::LengthMismatch {
                expected: rows as u64,
                found: r1 as u64,
            });
        }
        if r0 == r1 || n == 0 {
            return Ok(());
        }
        let have = scratch.len() as u64;
        let small = |needed: usize| Error::BufferTooSmall {
            needed: needed as u64,
            found: have,
        };
        if self.takes_q8_0(w) {
            // Each token's activations are quantized once into the scratch
            // (blocks of 32, whatever the weights' block length).
            let xq: &mut [BlockQ8_0] = blocks_in(scratch, cols / quant::q8_0::QK)?;
            for t in 0..n {
                quant::q8_0::quantize_row(&x[t * cols..(t + 1) * cols], xq);
                self.q8_token(w, xq, r0, r1, part.token(t));
            }
            return Ok(());
        }
        if arith == Arith::Decode || self.batches_packed(w) {
            return self.decode_part(w, x, part, scratch);
        }
        let x = &x[..need_x];
        if self.gemm_xt.is_some() {
            // The tokens transposed into this worker's scratch, as many at a
            // time as it holds beside a tile (callers that share one
            // transposition use `matmul_part_xt`). Each token's lanes are
            // its own, so the chunks do not change the numbers; one token is
            // its own transposition.
            let tile = TILE_ROWS * cols;
            let fits = |nt: usize| tile + TILE_ROWS * nt + cols * xt_ld(nt) <= scratch.len();
            // At most the padding's 32 tokens below the unpadded bound.
            let mut chunk = (scratch.len().saturating_sub(tile) / (TILE_ROWS + cols)).clamp(1, n);
            while chunk > 1 && !fits(chunk) {
                chunk -= 1;
            }
            let mut t0 = 0;
            while t0 < n {
                let nt = chunk.min(n - t0);
                let xs = &x[t0 * cols..(t0 + nt) * cols];
                if nt == 1 {
                    self.part_xt(w, xs, 1, (t0, 1), part, scratch)?;
                } else {
                    let ld = xt_ld(nt);
                    let (xt, rest) = scratch.split_at_mut(cols * ld);
                    self.transpose(xs, nt, cols, xt);
                    self.part_xt(w, xt, ld, (t0, nt), part, rest)?;
                }
                t0 += nt;
            }
            return Ok(());
        }
        // Batched: tiles of rows, each dequantized once (f32 rows are used in
        // place), times every token; the tile's (n, tile) result is then
        // copied into the tokens' rows.
        let tile_out = TILE_ROWS * n;
        let mut a = r0;
        while a < r1 {
            let b = (a + TILE_ROWS).min(r1);
            let tr = b - a;
            // f32 rows need no room to widen into.
            let (tw, to) = if w.ty() == GgmlType::F32 {
                let to = scratch.get_mut(..tile_out).ok_or(small(tile_out))?;
                (&mut [][..], to)
            } else {
                let need = TILE_ROWS * cols + tile_out;
                scratch
                    .get_mut(..need)
                    .ok_or(small(need))?
                    .split_at_mut(TILE_ROWS * cols)
            };
            let tw = self.tile_rows(w, (a, b, r1), tw)?;
            let to = &mut to[..n * tr];
            (self.gemm_f32)(tw, x, cols, to);
            for t in 0..n {
                part.token(t)[a - r0..b - r0].copy_from_slice(&to[t * tr..(t + 1) * tr]);
            }
            a = b;
        }
        Ok(())
    }

    /// Rows `a..b` of `w` as f32 for a batched tile: f32 rows in place,
    /// others dequantized once into `tw`. Meanwhile the next tile's rows (up
    /// to `end`, the part's last) are asked for, to arrive while this tile
    /// multiplies.
    fn tile_rows<'r>(
        &self,
        w: &Matrix<'r>,
        (a, b, end): (usize, usize, usize),
        tw: &'r mut [f32],
    ) -> Result<&'r [f32]> {
        let cols = w.cols;
        let next = |r: usize| {
            if r + TILE_ROWS < end {
                w.prefetch_row(r + TILE_ROWS, self);
            }
        };
        if let Some(d) = w.data.as_f32() {
            (a..b).for_each(next);
            return Ok(&d[a * cols..b * cols]);
        }
        let found = tw.len() as u64;
        let tw = tw.get_mut(..(b - a) * cols).ok_or(Error::BufferTooSmall {
            needed: ((b - a) * cols) as u64,
            found,
        })?;
        // One row asked for per row widened (all of them first measured 3%
        // slower in F16 prefill).
        for (r, row) in (a..b).zip(tw.chunks_exact_mut(cols.max(1))) {
            next(r);
            w.dequantize_row_with(r, row, self)?;
        }
        Ok(tw)
    }

    /// Whether batched matmuls on this table take the tokens' activations
    /// transposed ([`Kernels::gemm_xt`], through
    /// [`Kernels::matmul_part_xt`]).
    pub fn takes_transposed(&self) -> bool {
        self.gemm_xt.is_some()
    }

    /// Floats of [`Kernels::transpose`]'s output for `n` tokens of `cols`.
    pub const fn xt_len(n: usize, cols: usize) -> usize {
        cols * xt_ld(n)
    }

    /// `xt[k * xt_ld(n) + t] = x[t * cols + k]`: `n` tokens' activations
    /// transposed for [`Kernels::matmul_part_xt`]; `xt` holds
    /// [`Kernels::xt_len`] floats (fewer: nothing is written).
    pub fn transpose(&self, x: &[f32], n: usize, cols: usize, xt: &mut [f32]) {
        if x.len() >= n * cols && xt.len() >= Self::xt_len(n, cols) {
            transpose(x, n, cols, xt, xt_ld(n))
        }
    }

    /// The batched matmul for one worker's rows on a table that
    /// [`Kernels::takes_transposed`], from the tokens' activations already
    /// transposed (`xt`: as [`Kernels::transpose`] makes them,
    /// so that workers share one): tiles of rows (dequantized once, the
    /// next tile's rows asked for meanwhile; f32 rows in place) times all
    /// the tokens, each tile's `(tile, n)` result copied into the tokens'
    /// rows. The same numbers as [`Kernels::matmul_part_as`] in
    /// [`Arith::Batch`], for matrices that take the batched arithmetic
    /// (not those [`Kernels::batches_packed`] sends to the decode one: this
    /// multiplies their plain rows).
    pub fn matmul_part_xt(
        &self,
        w: &Matrix,
        xt: &[f32],
        part: &mut TokenRows<'_>,
        scratch: &mut [f32],
    ) -> Result<()> {
        let n = part.tokens();
        if !w.pieces.is_empty() {
            return w.by_piece(part, |m, p| self.matmul_part_xt(m, xt, p, scratch));
        }
        self.part_xt(w, xt, xt_ld(n), (0, n), part, scratch)
    }

    /// [`Kernels::matmul_part_xt`] for the part's tokens `t0..t0 + n`, whose
    /// activations `xt` holds transposed, element k's tokens at `k * ld`.
    fn part_xt(
        &self,
        w: &Matrix,
        xt: &[f32],
        ld: usize,
        (t0, n): (usize, usize),
        part: &mut TokenRows<'_>,
        scratch: &mut [f32],
    ) -> Result<()> {
        let cols = w.cols;
        let (r0, r1) = part.range();
        let Some(gemm_xt) = self.gemm_xt else {
            return Err(Error::LengthMismatch {
                expected: 0,
                found: xt.len() as u64,
            });
        };
        let need_xt = (cols.max(1) - 1) * ld + n;
        if r1 > w.rows || r0 > r1 || ld < n || xt.len() < need_xt || t0 + n > part.tokens() {
            return Err(Error::LengthMismatch {
                expected: need_xt as u64,
                found: xt.len() as u64,
            });
        }
        if r0 == r1 || n == 0 || cols == 0 {
            return Ok(());
        }
        let xt = &xt[..need_xt];
        let shape = XtShape { cols, n, ld };
        let need = TILE_ROWS * cols + TILE_ROWS * n;
        let found = scratch.len() as u64;
        let scratch = scratch.get_mut(..need).ok_or(Error::BufferTooSmall {
            needed: need as u64,
            found,
        })?;
        let (tw, to) = scratch.split_at_mut(TILE_ROWS * cols);
        let mut a = r0;
        while a < r1 {
            let b = (a + TILE_ROWS).min(r1);
            let tr = b - a;
            let tile = self.tile_rows(w, (a, b, r1), tw)?;
            let to = &mut to[..tr * n];
            gemm_xt(tile, xt, shape, to);
            for t in 0..n {
                let dst = &mut part.token(t0 + t)[a - r0..b - r0];
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = to[i * n + t];
                }
            }
            a = b;
        }
        Ok(())
    }

    /// Whether `w` multiplies activations quantized to Q8_0 blocks on this
    /// table (then the caller may quantize once for several matrices:
    /// [`Kernels::matmul_part_q8`]).
    pub fn takes_q8_0(&self, w: &Matrix) -> bool {
        self.int8.is_some_and(|k| k.takes(w.ty()))
    }

    /// [`Kernels::matmul_part_as`] for a matrix this table multiplies by
    /// Q8_0 activations ([`Kernels::takes_q8_0`]), from activations already
    /// quantized (`xq`: the part's tokens, `cols / 32` blocks each, as
    /// [`quant::q8_0::quantize_row`] makes them, whatever the weights'
    /// block length): the same numbers.
    pub fn matmul_part_q8(
        &self,
        w: &Matrix,
        xq: &[BlockQ8_0],
        part: &mut TokenRows<'_>,
    ) -> Result<()> {
        if !w.pieces.is_empty() {
            return w.by_piece(part, |m, p| self.matmul_part_q8(m, xq, p));
        }
        let nb = w.cols / quant::q8_0::QK;
        let n = part.tokens();
        let (r0, r1) = part.range();
        if !self.takes_q8_0(w) || xq.len() < n * nb || r1 > w.rows || r0 > r1 {
            return Err(Error::LengthMismatch {
                expected: (n * nb) as u64,
                found: xq.len() as u64,
            });
        }
        for t in 0..n {
            self.q8_token(w, &xq[t * nb..(t + 1) * nb], r0, r1, part.token(t));
        }
        Ok(())
    }

    /// Rows `r0..r1` of a matrix that takes int8 activations
    /// ([`Kernels::takes_q8_0`]) against one token's Q8_0 blocks.
    fn q8_token(&self, w: &Matrix, xq: &[BlockQ8_0], r0: usize, r1: usize, out: &mut [f32]) {
        let Some(k) = self.int8 else {
            return;
        };
        /// Rows `r0..r1` of `w` as blocks of `B` through `f`.
        fn run<B: quant::Block>(
            w: &Matrix,
            ty: GgmlType,
            f: Option<MatvecQ8Fn<B>>,
            (xq, r0, r1, out): (&[BlockQ8_0], usize, usize, &mut [f32]),
        ) {
            if let (Some(f), Some(d)) = (f, w.data.as_blocks::<B>(ty)) {
                let nb = w.row_blocks();
                f(&d[r0 * nb..r1 * nb], xq, out)
            }
        }
        let args = (xq, r0, r1, out);
        match (
            w.ty(),
            k.q8_0x4,
            w.packed4(),
            w.data.as_blocks(GgmlType::Q8_0),
        ) {
            (GgmlType::Q8_0, Some(p4), Some(p), Some(d)) => {
                packed4_q8_0(d, p, p4, k.q8_0, xq, r0, r1, args.3)
            }
            (GgmlType::Q8_0, ..) => run(w, GgmlType::Q8_0, Some(k.q8_0), args),
            (GgmlType::Q5_0, ..) => run(w, GgmlType::Q5_0, k.q5_0, args),
            (GgmlType::Q4_K, ..) => run(w, GgmlType::Q4_K, k.q4_k, args),
            (GgmlType::Q6_K, ..) => run(w, GgmlType::Q6_K, k.q6_k, args),
            _ => {}
        }
    }

    /// Decode arithmetic for `part`'s tokens: quantized rows against 16-bit
    /// activation blocks where the table has them, else each row against the
    /// f32 activations. Several tokens share each weight block: the 16-bit
    /// kernels unpack it once for all of them, the f32 path takes the rows
    /// in tiles small enough to stay in cache while every token reads them.
    fn decode_part(
        &self,
        w: &Matrix,
        x: &[f32],
        part: &mut TokenRows<'_>,
        scratch: &mut [f32],
    ) -> Result<()> {
        let n = part.tokens();
        if self.decodes_q16(w) {
            // The activations are quantized once into the scratch; several
            // tokens' results go to a tile after them, then to their rows.
            // Activation blocks of 32, whatever the weights' block length.
            let blocks = n * (w.cols / quant::q16::QK);
            let block_floats = (blocks * core::mem::size_of::<BlockQ16>()).div_ceil(4);
            if scratch.len() < block_floats {
                return Err(Error::BufferTooSmall {
                    needed: block_floats as u64,
                    found: scratch.len() as u64,
                });
            }
            let (xs, tile) = scratch.split_at_mut(block_floats);
            let xq: &mut [BlockQ16] = blocks_in(xs, blocks)?;
            if self.quantize_q16(x, n, w.cols, xq) {
                return self.q16_part(w, xq, part, tile);
            }
        }
        self.f32_decode_part(w, x, part)
    }

    /// Whether `w` is a packed matrix (Q8_0, Q4_K or Q6_K in eights) this
    /// table multiplies with its packed kernel: then batches take the decode
    /// arithmetic too, and every token of a prompt gets the bits it would
    /// get decoded alone. On Q8_0 rows it runs about twice as fast as f32
    /// tiles (an integer dot of sixteen products per instruction against
    /// eight); on Q4_K and Q6_K it also saves widening every row to f32.
    /// Q4_1 packs keep the f32 tiles, which measured faster for them.
    pub fn batches_packed(&self, w: &Matrix) -> bool {
        let w = &w.form();
        let Some(q) = self.q16.filter(|_| self.decodes_q16(w)) else {
            return false;
        };
        match w.packed {
            Packed::X8(_) => w.ty() == GgmlType::Q8_0 && q.q8_0x8.is_some(),
            Packed::Q4Kx8(_) => w.ty() == GgmlType::Q4_K && q.q4_kx8.is_some(),
            Packed::Q6Kx8(_) => w.ty() == GgmlType::Q6_K && q.q6_kx8.is_some(),
            _ => false,
        }
    }

    /// Whether decode multiplies `w` by 16-bit activation blocks (then the
    /// caller may quantize once for all workers: [`Kernels::quantize_q16`]
    /// and [`Kernels::matmul_part_q16`]).
    pub fn decodes_q16(&self, w: &Matrix) -> bool {
        self.q16.is_some() && self.int8.is_none() && self.format(w.ty()).q16.is_some()
    }

    /// Quantizes `n` tokens of `cols` activations into `out` (`n * cols / 32`
    /// blocks); false if this table has no 16-bit decode or `out` is short.
    pub fn quantize_q16(&self, x: &[f32], n: usize, cols: usize, out: &mut [BlockQ16]) -> bool {
        let nb = cols / quant::q16::QK;
        let (Some(q16), true, true) = (self.q16, out.len() >= n * nb, x.len() >= n * cols) else {
            return false;
        };
        for (t, xb) in out.chunks_exact_mut(nb.max(1)).enumerate().take(n) {
            (q16.quantize)(&x[t * cols..(t + 1) * cols], xb);
        }
        true
    }

    /// The decode matmul for one worker's rows from activations already in
    /// 16-bit blocks (`xq`: the part's tokens, [`Kernels::quantize_q16`]);
    /// the same numbers as [`Kernels::matmul_part_as`] with
    /// [`Arith::Decode`]. `scratch` holds the output tile of several tokens.
    pub fn matmul_part_q16(
        &self,
        w: &Matrix,
        xq: &[BlockQ16],
        part: &mut TokenRows<'_>,
        scratch: &mut [f32],
    ) -> Result<()> {
        if !w.pieces.is_empty() {
            return w.by_piece(part, |m, p| self.matmul_part_q16(m, xq, p, scratch));
        }
        if !self.decodes_q16(w) {
            return Err(Error::LengthMismatch {
                expected: 0,
                found: w.cols as u64,
            });
        }
        self.q16_part(w, xq, part, scratch)
    }

    fn q16_part(
        &self,
        w: &Matrix,
        xq: &[BlockQ16],
        part: &mut TokenRows<'_>,
        tile: &mut [f32],
    ) -> Result<()> {
        let n = part.tokens();
        let (r0, r1) = part.range();
        // Activation blocks per token (a 256-element weight block takes eight).
        let nb = w.cols / quant::q16::QK;
        let Some(q16) = self.q16 else {
            return Ok(());
        };
        if xq.len() < n * nb || r1 > w.rows || r0 > r1 {
            return Err(Error::BufferTooSmall {
                needed: (n * nb) as u64,
                found: xq.len() as u64,
            });
        }
        if r0 == r1 || n == 0 {
            return Ok(());
        }
        let xq = &xq[..n * nb];
        {
            let rb = w.row_bytes();
            let own = self.format(w.ty()).q16;
            // A packed matrix's rows through its kernel (blocks of `$b`, each
            // `$per` activation blocks long), checked by its reference `$dot`.
            macro_rules! packed {
                ($p:expr, $k:expr, $b:ty, $per:expr, $dot:expr, $a:expr, $bb:expr, $o:expr) => {{
                    let d = quant::blocks::<$b>(w.data.bytes());
                    packed_rows($per, d, $p, $k, $dot, xq, n, ($a, $bb), $o)
                }};
            }
            let run = |a: usize, b: usize, o: &mut [f32]| match (w.packed, q16) {
                (
                    Packed::X8(p),
                    Q16Kernels {
                        q8_0x8: Some(k), ..
                    },
                ) => {
                    packed!(p, k, BlockQ8_0, 1, quant::q16::dot_q8_0_q16, a, b, o)
                }
                (
                    Packed::Q4_1x8(p),
                    Q16Kernels {
                        q4_1x8: Some(k), ..
                    },
                ) => {
                    packed!(p, k, BlockQ4_1, 1, quant::q16::dot_q4_1_q16, a, b, o)
                }
                // Only the x86 tables have kernels for these packs; elsewhere
                // the arm would only add code (microcontroller flash).
                #[cfg(target_arch = "x86_64")]
                (
                    Packed::Q4Kx8(p),
                    Q16Kernels {
                        q4_kx8: Some(k), ..
                    },
                ) => {
                    let dot = quant::q16::dot_scale_min_q16::<BlockQ4K>;
                    packed!(p, k, BlockQ4K, 8, dot, a, b, o)
                }
                #[cfg(target_arch = "x86_64")]
                (
                    Packed::Q6Kx8(p),
                    Q16Kernels {
                        q6_kx8: Some(k), ..
                    },
                ) => {
                    packed!(p, k, BlockQ6K, 8, quant::q16::dot_q6_k_q16, a, b, o)
                }
                #[cfg(target_arch = "x86_64")]
                (
                    Packed::Q5_0x8(p),
                    Q16Kernels {
                        q5_0x8: Some(k), ..
                    },
                ) => {
                    packed!(p, k, BlockQ5_0, 1, quant::q16::dot_q5_0_q16, a, b, o)
                }
                _ => {
                    if let Some(k) = own {
                        k(&w.data.bytes()[a * rb..b * rb], xq, n, o)
                    }
                }
            };
            if n == 1 {
                run(r0, r1, part.token(0));
                return Ok(());
            }
            let need = n * DECODE_TILE;
            let found = tile.len() as u64;
            let tile = tile.get_mut(..need).ok_or(Error::BufferTooSmall {
                needed: need as u64,
                found,
            })?;
            let mut a = r0;
            while a < r1 {
                let b = (a + DECODE_TILE).min(r1);
                let tr = b - a;
                run(a, b, &mut tile[..n * tr]);
                for t in 0..n {
                    part.token(t)[a - r0..b - r0].copy_from_slice(&tile[t * tr..(t + 1) * tr]);
                }
                a = b;
            }
        }
        Ok(())
    }

    /// Decode of `part`'s tokens against the f32 activations, row by row.
    fn f32_decode_part(&self, w: &Matrix, x: &[f32], part: &mut TokenRows<'_>) -> Result<()> {
        let cols = w.cols;
        let rb = w.row_bytes();
        let fk = self.format(w.ty());
        let n = part.tokens();
        let (r0, r1) = part.range();
        let mut a = r0;
        while a < r1 {
            let b = if n == 1 {
                r1
            } else {
                (a + DECODE_TILE).min(r1)
            };
            for t in 0..n {
                let xt = &x[t * cols..(t + 1) * cols];
                let o = &mut part.token(t)[a - r0..b - r0];
                let rows = &w.data.bytes()[a * rb..b * rb];
                match fk.mv {
                    Some(mv) => mv(rows, xt, o),
                    None => {
                        for (o, row) in o.iter_mut().zip(rows.chunks_exact(rb.max(1))) {
                            *o = (fk.dot)(row, xt);
                        }
                    }
                }
            }
            a = b;
        }
        Ok(())
    }
}

/// Rows `a..b` of a packed matrix for `n` tokens into `out` ((n, b - a)):
/// whole groups of eight through the packed kernel `k`, rows outside them
/// through the reference dot `dot` on the file's rows, which gives the same
/// bits. A weight block spans `per` activation blocks (8 for a K-quant
/// super-block, otherwise 1).
#[allow(clippy::too_many_arguments)]
fn packed_rows<B, P>(
    per: usize,
    d: &[B],
    p: &[P],
    k: fn(&[P], &[BlockQ16], usize, &mut [f32], usize),
    dot: fn(&[B], &[BlockQ16]) -> f32,
    xq: &[BlockQ16],
    n: usize,
    (a, b): (usize, usize),
    out: &mut [f32],
) {
    // Activation blocks per token, and weight blocks per row.
    let nb = xq.len() / n.max(1);
    let wb = nb / per;
    let ld = b - a;
    if wb == 0 {
        out.fill(0.0);
        return;
    }
    let g0 = a.div_ceil(8);
    let g1 = (b / 8).min(p.len() / wb).max(g0);
    let reference = |r: usize, out: &mut [f32]| {
        for t in 0..n {
            out[t * ld + r - a] = dot(&d[r * wb..(r + 1) * wb], &xq[t * nb..(t + 1) * nb]);
        }
    };
    let (m0, m1) = ((8 * g0).min(b), 8 * g1);
    for r in (a..m0).chain(m1.max(m0)..b) {
        reference(r, out);
    }
    if g1 > g0 {
        k(&p[g0 * wb..g1 * wb], xq, n, &mut out[m0 - a..], ld);
    }
}

/// Rows `r0..r1` of a Q8_0 matrix against Q8_0 activations `xq` into
/// `out`: whole groups of four through the packed kernel `k`, rows outside
/// them through `matvec` on the file's rows, which gives the same bits.
#[allow(clippy::too_many_arguments)]
fn packed4_q8_0(
    d: &[BlockQ8_0],
    p: &[BlockQ8_0x4],
    k: MatvecQ8x4Fn,
    matvec: MatvecQ8Fn,
    xq: &[BlockQ8_0],
    r0: usize,
    r1: usize,
    out: &mut [f32],
) {
    let nb = xq.len();
    if nb == 0 {
        out.fill(0.0);
        return;
    }
    let g0 = r0.div_ceil(4);
    let g1 = (r1 / 4).min(p.len() / nb);
    if g1 <= g0 {
        matvec(&d[r0 * nb..r1 * nb], xq, out);
        return;
    }
    let (m0, m1) = (4 * g0, 4 * g1);
    if r0 < m0 {
        matvec(&d[r0 * nb..m0 * nb], xq, &mut out[..m0 - r0]);
    }
    k(&p[g0 * nb..g1 * nb], xq, &mut out[m0 - r0..m1 - r0]);
    if m1 < r1 {
        matvec(&d[m1 * nb..r1 * nb], xq, &mut out[m1 - r0..r1 - r0]);
    }
}

/// The first `n` activation blocks of type `T` laid over the f32 scratch
/// (each block takes at most 4 bytes per value it quantizes, so the `cols`
/// floats a token needs hold its blocks).
pub(crate) fn blocks_in<T: quant::Pod>(scratch: &mut [f32], n: usize) -> Result<&mut [T]> {
    let need = n * core::mem::size_of::<T>();
    let bytes = quant::as_bytes_mut(scratch);
    let found = bytes.len() as u64;
    let bytes = bytes.get_mut(..need).ok_or(Error::BufferTooSmall {
        needed: need as u64,
        found,
    })?;
    quant::cast_slice_mut(bytes)
}
