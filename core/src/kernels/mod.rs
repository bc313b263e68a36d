//! The kernel table: one scalar reference set, faster twins chosen once.
//!
//! The model calls kernels only through [`Kernels`], a table of function
//! pointers. [`Kernels::scalar`] is the portable reference; [`Kernels::detect`]
//! starts from it and overrides what the running CPU supports (with the `simd`
//! feature), so the model itself contains no `cfg`.
//!
//! Matmuls keep activations in f32: each weight block is dequantized in
//! registers and multiplied with f32 inputs. Decode at batch 1 is bound by
//! reading the weights, not by arithmetic, so this costs little and keeps
//! results within f32 rounding of the exact function of the file's weights
//! (ggml instead quantizes activations to 8 bits inside quantized matmuls).

// Unsafe is for the architecture files alone (intrinsics); they opt in.
#![deny(unsafe_code)]

#[cfg(all(feature = "dsp", target_arch = "arm"))]
pub mod arm_dsp;
pub mod scalar;
#[cfg(all(feature = "simd", target_arch = "x86_64"))]
mod x86_avx2;

#[cfg(test)]
mod conformance;

use half::f16;

use crate::error::{Error, Result};
use crate::gguf::TensorInfo;
use crate::quant::{self, cast_slice, BlockQ4_0, BlockQ4_1, BlockQ8_0, GgmlType};

/// A matrix's rows, typed by storage format, borrowed from the weights file.
#[derive(Debug, Clone, Copy)]
pub enum RowData<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Q8_0(&'a [BlockQ8_0]),
    Q4_0(&'a [BlockQ4_0]),
    Q4_1(&'a [BlockQ4_1]),
}

/// A row-major weight matrix (`rows` outputs, each `cols` inputs long).
#[derive(Debug, Clone, Copy)]
pub struct Matrix<'a> {
    pub rows: usize,
    pub cols: usize,
    pub data: RowData<'a>,
}

impl<'a> Matrix<'a> {
    /// Views a validated 1-D or 2-D GGUF tensor as a matrix without copying.
    /// GGUF's `dims[0]` is the row length.
    pub fn from_tensor(t: &TensorInfo<'a>) -> Result<Matrix<'a>> {
        let cols =
            usize::try_from(t.dims[0]).map_err(|_| Error::DimensionOverflow { tensor: t.index })?;
        let rows = usize::try_from(t.n_rows())
            .map_err(|_| Error::DimensionOverflow { tensor: t.index })?;
        let data = match t.ty {
            GgmlType::F32 => RowData::F32(cast_slice(t.data)?),
            GgmlType::F16 => RowData::F16(cast_slice(t.data)?),
            GgmlType::Q8_0 => RowData::Q8_0(cast_slice(t.data)?),
            GgmlType::Q4_0 => RowData::Q4_0(cast_slice(t.data)?),
            GgmlType::Q4_1 => RowData::Q4_1(cast_slice(t.data)?),
        };
        Ok(Matrix { rows, cols, data })
    }

    pub fn ty(&self) -> GgmlType {
        match self.data {
            RowData::F32(_) => GgmlType::F32,
            RowData::F16(_) => GgmlType::F16,
            RowData::Q8_0(_) => GgmlType::Q8_0,
            RowData::Q4_0(_) => GgmlType::Q4_0,
            RowData::Q4_1(_) => GgmlType::Q4_1,
        }
    }

    /// Bytes of weights (what one full matmul reads).
    pub fn n_bytes(&self) -> usize {
        match self.data {
            RowData::F32(d) => core::mem::size_of_val(d),
            RowData::F16(d) => core::mem::size_of_val(d),
            RowData::Q8_0(d) => core::mem::size_of_val(d),
            RowData::Q4_0(d) => core::mem::size_of_val(d),
            RowData::Q4_1(d) => core::mem::size_of_val(d),
        }
    }

    /// Writes row `r` as f32 into `out` (`cols` long). Errors on a bad index
    /// or a short buffer.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
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
        let b = self.cols / quant::QK;
        match self.data {
            RowData::F32(d) => out.copy_from_slice(&d[r * self.cols..(r + 1) * self.cols]),
            RowData::F16(d) => {
                quant::f16::dequantize_row(&d[r * self.cols..(r + 1) * self.cols], out)
            }
            RowData::Q8_0(d) => quant::q8_0::dequantize_row(&d[r * b..(r + 1) * b], out),
            RowData::Q4_0(d) => quant::q4_0::dequantize_row(&d[r * b..(r + 1) * b], out),
            RowData::Q4_1(d) => quant::q4_1::dequantize_row(&d[r * b..(r + 1) * b], out),
        }
        Ok(())
    }
}

/// Dot product of one weight row with an f32 vector of the same length.
pub type DotFn<T> = fn(&[T], &[f32]) -> f32;

/// `out[r] = W[r] · x` for Q8_0 rows against activations already quantized to
/// Q8_0: `x.len()` blocks make a row, `out.len()` rows are read from `w`.
pub type MatvecQ8Fn = fn(&[BlockQ8_0], &[BlockQ8_0], &mut [f32]);

/// The kernel table.
#[derive(Debug, Clone, Copy)]
pub struct Kernels {
    /// Which set this is, for logs and `--kernels`.
    pub name: &'static str,
    pub dot_f32: DotFn<f32>,
    pub dot_f16: DotFn<f16>,
    pub dot_q8_0: DotFn<BlockQ8_0>,
    pub dot_q4_0: DotFn<BlockQ4_0>,
    pub dot_q4_1: DotFn<BlockQ4_1>,
    /// With `Some`, Q8_0 matrices multiply activations quantized to Q8_0
    /// blocks (ggml's arithmetic: an integer dot per block, then both scales)
    /// through this kernel; with `None` they dot the f32 activations.
    pub q8_0_q8_0: Option<MatvecQ8Fn>,
}

impl Kernels {
    /// The portable reference kernels.
    pub const fn scalar() -> Kernels {
        Kernels {
            name: "scalar",
            dot_f32: scalar::dot_f32,
            dot_f16: scalar::dot_f16,
            dot_q8_0: scalar::dot_q8_0,
            dot_q4_0: scalar::dot_q4_0,
            dot_q4_1: scalar::dot_q4_1,
            q8_0_q8_0: None,
        }
    }

    /// The scalar reference with int8 activations for Q8_0 matrices: what the
    /// Cortex-M DSP kernels compute, bit for bit.
    pub const fn scalar_int8() -> Kernels {
        Kernels {
            name: "scalar-q8",
            q8_0_q8_0: Some(scalar::matvec_q8_0_q8_0),
            ..Self::scalar()
        }
    }

    /// The best kernels this CPU runs: scalar, with the architecture twins
    /// that the `simd` feature permits and the CPU supports plugged in
    /// (detected at run time with `std`, from target features without).
    pub fn detect() -> Kernels {
        #[cfg(all(feature = "simd", target_arch = "x86_64"))]
        if let Some(k) = x86_avx2::table() {
            return k;
        }
        #[cfg(all(feature = "dsp", target_arch = "arm"))]
        return arm_dsp::table();
        #[allow(unreachable_code)]
        Self::scalar()
    }

    /// `out[t][r] = W[r] · x[t]` for `n` tokens: `x` is (n, cols), `out` is (n, rows).
    ///
    /// One token (decode) dots each stored row with `x` directly. Several
    /// tokens (prefill) dequantize each row once into `row` (at least `cols`
    /// floats) and reuse it for every token, so the unpacking is paid once per
    /// weight and the inner loop is the f32 dot.
    pub fn matmul(
        &self,
        w: &Matrix,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        row: &mut [f32],
    ) -> Result<()> {
        self.matmul_rows(w, x, n, out, row, 0, w.rows)
    }

    /// [`Kernels::matmul`] restricted to rows `r0..r1`; `out` still has the full
    /// (n, rows) layout. Lets a runner split rows across threads.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_rows(
        &self,
        w: &Matrix,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        row: &mut [f32],
        r0: usize,
        r1: usize,
    ) -> Result<()> {
        let (rows, cols) = (w.rows, w.cols);
        let too_big = |found: usize| Error::BufferTooSmall {
            needed: u64::MAX,
            found: found as u64,
        };
        let need_x = n.checked_mul(cols).ok_or(too_big(x.len()))?;
        let need_o = n.checked_mul(rows).ok_or(too_big(out.len()))?;
        if x.len() < need_x {
            return Err(Error::BufferTooSmall {
                needed: need_x as u64,
                found: x.len() as u64,
            });
        }
        if out.len() < need_o {
            return Err(Error::BufferTooSmall {
                needed: need_o as u64,
                found: out.len() as u64,
            });
        }
        if r0 > r1 || r1 > rows {
            return Err(Error::LengthMismatch {
                expected: rows as u64,
                found: r1 as u64,
            });
        }
        if let (Some(matvec), RowData::Q8_0(d)) = (self.q8_0_q8_0, w.data) {
            // Each token's activations are quantized once into the row scratch
            // (34 bytes per 32 floats, so `cols` floats hold them).
            let nb = cols / quant::QK;
            let need = nb * core::mem::size_of::<BlockQ8_0>();
            let bytes = quant::as_bytes_mut(row);
            let found = bytes.len() as u64;
            let xq: &mut [BlockQ8_0] =
                quant::cast_slice_mut(bytes.get_mut(..need).ok_or(Error::BufferTooSmall {
                    needed: need as u64,
                    found,
                })?)?;
            for t in 0..n {
                quant::q8_0::quantize_row(&x[t * cols..(t + 1) * cols], xq);
                matvec(
                    &d[r0 * nb..r1 * nb],
                    xq,
                    &mut out[t * rows + r0..t * rows + r1],
                );
            }
            return Ok(());
        }
        if n > 1 && !matches!(w.data, RowData::F32(_)) {
            if row.len() < cols {
                return Err(Error::BufferTooSmall {
                    needed: cols as u64,
                    found: row.len() as u64,
                });
            }
            let row = &mut row[..cols];
            for r in r0..r1 {
                w.dequantize_row(r, row)?;
                for t in 0..n {
                    out[t * rows + r] = (self.dot_f32)(row, &x[t * cols..(t + 1) * cols]);
                }
            }
            return Ok(());
        }
        match w.data {
            RowData::F32(d) => mm(d, cols, self.dot_f32, x, n, rows, cols, out, r0, r1),
            RowData::F16(d) => mm(d, cols, self.dot_f16, x, n, rows, cols, out, r0, r1),
            RowData::Q8_0(d) => mm(
                d,
                cols / quant::QK,
                self.dot_q8_0,
                x,
                n,
                rows,
                cols,
                out,
                r0,
                r1,
            ),
            RowData::Q4_0(d) => mm(
                d,
                cols / quant::QK,
                self.dot_q4_0,
                x,
                n,
                rows,
                cols,
                out,
                r0,
                r1,
            ),
            RowData::Q4_1(d) => mm(
                d,
                cols / quant::QK,
                self.dot_q4_1,
                x,
                n,
                rows,
                cols,
                out,
                r0,
                r1,
            ),
        }
        Ok(())
    }
}

/// The matmul loop for one storage type; `per_row` elements of `T` make a row.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn mm<T>(
    w: &[T],
    per_row: usize,
    dot: DotFn<T>,
    x: &[f32],
    n: usize,
    rows: usize,
    cols: usize,
    out: &mut [f32],
    r0: usize,
    r1: usize,
) {
    for (r, row) in w.chunks_exact(per_row).enumerate().take(r1).skip(r0) {
        for t in 0..n {
            out[t * rows + r] = dot(row, &x[t * cols..(t + 1) * cols]);
        }
    }
}
