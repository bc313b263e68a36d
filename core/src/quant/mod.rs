//! ggml's tensor types: ids, block layouts, and the one audited byte-to-block cast.
//!
//! Block layouts are exactly ggml's (`ggml-common.h`): a block of 32 weights
//! with an f16 scale (and for Q4_1 an f16 minimum) stored little-endian.
//! The f16 fields are kept as `[u8; 2]` so every block has alignment 1 and
//! a block slice can view any byte offset of a file without copying.
//! Each type's module holds its scalar reference: dequantize, quantize (rounding
//! like ggml's `quantize_row_*_ref`) and dot products.

pub mod bf16;
pub mod f16;
pub mod f32;
pub mod k_quants;
pub mod q16;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;

pub use crate::ggml_type::GgmlType;
pub use q16::BlockQ16;
pub use q2_k::BlockQ2K;
pub use q3_k::BlockQ3K;
pub use q4_0::BlockQ4_0;
pub use q4_1::{BlockQ4_1, BlockQ4_1x8, BlockQ8_1};
pub use q4_k::{BlockQ4K, BlockQ4Kx8};
pub use q5_0::{BlockQ5_0, BlockQ5_0x8};
pub use q5_1::BlockQ5_1;
pub use q5_k::BlockQ5K;
pub use q6_k::{BlockQ6K, BlockQ6Kx8};
pub use q8_0::{BlockQ8_0, BlockQ8_0x4, BlockQ8_0x8};

use crate::error::{Error, Result};

/// One weight format: ggml's block layout and the scalar reference over it,
/// on rows given as their stored bytes (whole blocks). Each format's file
/// defines its row (`FORMAT`); [`FORMATS`] registers them, keyed by
/// [`GgmlType::index`], and the kernel tables take their reference entries
/// from it.
#[derive(Debug, Clone, Copy)]
pub struct Format {
    pub ty: GgmlType,
    /// Elements per block: 1 for the float types, 32 for the legacy blocks
    /// (256 for K-quant super-blocks).
    pub block_len: usize,
    /// Bytes per block.
    pub block_bytes: usize,
    /// `dequantize(row, y)`: whole blocks as f32 (`y` as long as they are).
    pub dequantize: fn(&[u8], &mut [f32]),
    /// `dot(row, x)`: `Σ dequantize(row) · x`, the reference for every
    /// kernel that multiplies this format by f32 activations.
    pub dot: fn(&[u8], &[f32]) -> f32,
    /// `quantize(x, row)`: whole blocks from f32, rounding as ggml's
    /// `quantize_row_*_ref` (a tail shorter than a block is left). With
    /// `alloc` (and in tests) only: inference never quantizes weights, and
    /// leaving the quantizers out keeps them out of firmware images (the
    /// K-quants' scale searches are about 60 KB of Cortex-M code).
    #[cfg(any(feature = "alloc", test))]
    pub quantize: fn(&[f32], &mut [u8]),
}

/// Every format, in [`GgmlType::ALL`]'s order: adding a format is its file
/// plus its row here (and its id in [`GgmlType`]).
pub static FORMATS: [Format; GgmlType::COUNT] = [
    f32::FORMAT,
    f16::FORMAT,
    q4_0::FORMAT,
    q4_1::FORMAT,
    q5_0::FORMAT,
    q5_1::FORMAT,
    q8_0::FORMAT,
    q2_k::FORMAT,
    q3_k::FORMAT,
    q4_k::FORMAT,
    q5_k::FORMAT,
    q6_k::FORMAT,
    bf16::FORMAT,
];

const _: () = {
    let mut i = 0;
    while i < GgmlType::COUNT {
        assert!(
            FORMATS[i].ty as usize == i,
            "FORMATS is keyed by GgmlType::index"
        );
        i += 1;
    }
};

/// A [`Format`] row for a block type from its typed scalar references.
macro_rules! block_format {
    ($ty:expr, $block:ty, $len:expr, $dequantize:path, $dot:path, $quantize:path) => {
        $crate::quant::Format {
            ty: $ty,
            block_len: $len,
            block_bytes: core::mem::size_of::<$block>(),
            dequantize: {
                fn f(w: &[u8], y: &mut [f32]) {
                    $dequantize($crate::quant::blocks::<$block>(w), y)
                }
                f
            },
            dot: {
                fn f(w: &[u8], x: &[f32]) -> f32 {
                    $dot($crate::quant::blocks::<$block>(w), x)
                }
                f
            },
            #[cfg(any(feature = "alloc", test))]
            quantize: {
                fn f(x: &[f32], y: &mut [u8]) {
                    $quantize(x, $crate::quant::blocks_mut::<$block>(y))
                }
                f
            },
        }
    };
}
pub(crate) use block_format;

impl GgmlType {
    /// This type's row of [`FORMATS`].
    pub const fn format(self) -> &'static Format {
        &FORMATS[self.index()]
    }

    /// Elements per block (1 for the float types).
    pub const fn block_len(self) -> usize {
        self.format().block_len
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        self.format().block_bytes
    }

    /// Bytes of a row of `n` elements, or `None` if `n` is not a whole number
    /// of blocks or the size overflows.
    pub const fn row_bytes(self, n: u64) -> Option<u64> {
        let bl = self.block_len() as u64;
        if !n.is_multiple_of(bl) {
            return None;
        }
        (n / bl).checked_mul(self.block_bytes() as u64)
    }
}

/// Rows of `cols` floats quantized to `ty` with its reference rounding
/// (ggml's `quantize_row_*_ref`), or `None` if `cols` is not a whole number
/// of `ty`'s blocks.
#[cfg(feature = "alloc")]
pub fn quantize_rows(data: &[f32], cols: usize, ty: GgmlType) -> Option<alloc::vec::Vec<u8>> {
    let rb = usize::try_from(ty.row_bytes(cols as u64)?).ok()?;
    let rows = data.len() / cols.max(1);
    let mut out = alloc::vec![0u8; rows.checked_mul(rb)?];
    for (row, o) in data
        .chunks(cols.max(1))
        .zip(out.chunks_exact_mut(rb.max(1)))
    {
        (ty.format().quantize)(row, o);
    }
    Some(out)
}

/// The whole elements of `bytes` as `T` (a partial last one left out), or
/// nothing if `bytes` is not aligned for `T`. [`crate::kernels::RowData`]
/// checks stored rows' alignment once, so views of them never come up empty.
#[inline(always)]
pub fn view<T: Pod>(bytes: &[u8]) -> &[T] {
    let whole = bytes.len() / core::mem::size_of::<T>() * core::mem::size_of::<T>();
    cast_slice(&bytes[..whole]).unwrap_or(&[])
}

/// The whole blocks of `bytes` (a partial last block left out). Blocks have
/// alignment 1, so any bytes view as blocks.
pub fn blocks<B: Block>(bytes: &[u8]) -> &[B] {
    let () = B::ALIGN_ONE;
    view(bytes)
}

/// [`blocks`] for writing.
pub fn blocks_mut<B: Block>(bytes: &mut [u8]) -> &mut [B] {
    let () = B::ALIGN_ONE;
    let whole = bytes.len() / core::mem::size_of::<B>() * core::mem::size_of::<B>();
    cast_slice_mut(&mut bytes[..whole]).unwrap_or(&mut [])
}

/// Block types: [`Pod`] with alignment 1, so a block slice views any byte
/// offset of a file (checked at compile time for each implementor).
pub trait Block: Pod {
    /// Fails to compile where the alignment is not 1.
    const ALIGN_ONE: () = assert!(core::mem::align_of::<Self>() == 1);
}

impl Block for BlockQ8_0 {}
impl Block for BlockQ4_0 {}
impl Block for BlockQ4_1 {}

/// Interleaves whole groups of `per` rows of `nb` blocks each: for group
/// `g`'s block column `b`, `put(out[g * nb + b], j, row j's block)` for each
/// row `j` of the group. Returns the groups written (rows beyond the last
/// whole group, and groups `out` has no room for, are left).
pub(crate) fn pack_groups<B, P>(
    rows: &[B],
    nb: usize,
    per: usize,
    out: &mut [P],
    put: impl Fn(&mut P, usize, &B),
) -> usize {
    if nb == 0 || per == 0 {
        return 0;
    }
    let groups = (rows.len() / nb / per).min(out.len() / nb);
    for g in 0..groups {
        for b in 0..nb {
            let o = &mut out[g * nb + b];
            for j in 0..per {
                put(o, j, &rows[(per * g + j) * nb + b]);
            }
        }
    }
    groups
}

/// Where each row's bytes sit in a 32-byte vector of the quad-interleaved
/// packs ([`BlockQ6Kx8`], [`BlockQ5_0x8`]): slot `s` (bytes `4s..4s + 4`)
/// holds row `ROW_OF_SLOT[s]`. Widening each 16-byte half and adding
/// neighbouring lanes pairwise (`vphaddd`) across them then leaves the rows
/// in order.
pub const ROW_OF_SLOT: [usize; 8] = [0, 1, 4, 5, 2, 3, 6, 7];

/// The inverse of [`ROW_OF_SLOT`] (the permutation is its own inverse):
/// row `j` sits in slot `SLOT_OF_ROW[j]`.
pub const SLOT_OF_ROW: [usize; 8] = [0, 1, 4, 5, 2, 3, 6, 7];

const _: () = {
    let mut j = 0;
    while j < 8 {
        assert!(ROW_OF_SLOT[SLOT_OF_ROW[j]] == j);
        j += 1;
    }
};

/// Row `j`'s share of an interleaved pack: its byte pairs `k` of `src` go
/// to `dst[16 * k + 2 * j..][..2]` (eight rows, one lane each).
pub(crate) fn interleave_pairs<T: Copy>(dst: &mut [T], j: usize, src: &[T]) {
    for (k, pair) in src.chunks_exact(2).enumerate() {
        dst[16 * k + 2 * j..16 * k + 2 * j + 2].copy_from_slice(pair);
    }
}

/// Plain-old-data element types: no padding, every bit pattern valid.
///
/// # Safety
/// Implementors must be `repr(C)` or primitive, contain no padding and no
/// pointers, and accept any bit pattern.
pub unsafe trait Pod: Copy + 'static {}

// SAFETY: primitive float, any bit pattern is a valid f32.
unsafe impl Pod for f32 {}
// SAFETY: `half::f16` is `repr(transparent)` over u16.
unsafe impl Pod for half::f16 {}
// SAFETY: `half::bf16` is `repr(transparent)` over u16.
unsafe impl Pod for half::bf16 {}
// SAFETY: repr(C), fields [u8; 2] and [i8; 32], no padding (size asserted).
unsafe impl Pod for BlockQ8_0 {}
// SAFETY: repr(C), fields [[u8; 2]; 8] and [i8; 256], no padding (size asserted).
unsafe impl Pod for BlockQ8_0x8 {}
// SAFETY: repr(C, align(4)), fields [[u8; 2]; 4] and [i8; 128]: 136 bytes,
// a multiple of the alignment, so no padding (size asserted).
unsafe impl Pod for BlockQ8_0x4 {}
// SAFETY: repr(C), fields [u8; 2] and [u8; 16], no padding (size asserted).
unsafe impl Pod for BlockQ4_0 {}
// SAFETY: repr(C), fields [u8; 2] x2 and [u8; 16], no padding (size asserted).
unsafe impl Pod for BlockQ4_1 {}
// SAFETY: repr(C), fields [[u8; 2]; 8] x2 and [u8; 128], no padding (size asserted).
unsafe impl Pod for BlockQ4_1x8 {}
// SAFETY: repr(C), fields [u8; 2] x2 and [i8; 32], no padding (size asserted).
unsafe impl Pod for BlockQ8_1 {}
// SAFETY: repr(C), byte arrays only: no padding (size asserted).
unsafe impl Pod for BlockQ5_0x8 {}

// SAFETY: repr(C), fields f32, f32, i32, i32 and [i16; 32]: no padding
// (size asserted), and every bit pattern of them is a valid value.
unsafe impl Pod for BlockQ16 {}

/// Views `bytes` as a slice of `T` without copying.
///
/// Errors when the length is not a whole number of `T` or the address is not
/// aligned for `T` (blocks have alignment 1; `f16` needs 2 and `f32` 4).
pub fn cast_slice<T: Pod>(bytes: &[u8]) -> Result<&[T]> {
    let size = core::mem::size_of::<T>();
    let align = core::mem::align_of::<T>();
    if !bytes.len().is_multiple_of(size) {
        return Err(Error::LengthMismatch {
            expected: (bytes.len() / size * size) as u64,
            found: bytes.len() as u64,
        });
    }
    if !(bytes.as_ptr() as usize).is_multiple_of(align) {
        return Err(Error::MisalignedData {
            align: align as u32,
        });
    }
    // SAFETY: the pointer is aligned for T (checked above), the region holds
    // exactly len/size whole T values inside `bytes` (length checked), T is Pod
    // so any bytes form a valid T, and the result borrows `bytes` immutably.
    Ok(unsafe { core::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
}

/// Views `bytes` as a mutable slice of `T`, with the checks of [`cast_slice`].
pub fn cast_slice_mut<T: Pod>(bytes: &mut [u8]) -> Result<&mut [T]> {
    let size = core::mem::size_of::<T>();
    let align = core::mem::align_of::<T>();
    if !bytes.len().is_multiple_of(size) {
        return Err(Error::LengthMismatch {
            expected: (bytes.len() / size * size) as u64,
            found: bytes.len() as u64,
        });
    }
    if !(bytes.as_ptr() as usize).is_multiple_of(align) {
        return Err(Error::MisalignedData {
            align: align as u32,
        });
    }
    // SAFETY: as in `cast_slice` (aligned, whole values, in bounds); the
    // result takes over the unique borrow of `bytes`, and since T is Pod every
    // value written through it leaves valid bytes behind.
    Ok(unsafe {
        core::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<T>(), bytes.len() / size)
    })
}

/// Views a mutable slice of `T` as its bytes (caller memory carved for byte-typed storage).
pub fn as_bytes_mut<T: Pod>(items: &mut [T]) -> &mut [u8] {
    // SAFETY: T is Pod, so every byte is initialized and any bytes written
    // form a valid T; u8 has alignment 1; the length is exactly the size of
    // the slice, whose unique borrow the result takes over.
    unsafe {
        core::slice::from_raw_parts_mut(
            items.as_mut_ptr().cast::<u8>(),
            core::mem::size_of_val(items),
        )
    }
}

/// Views a slice of `T` as its bytes (little-endian on every supported target).
pub fn as_bytes<T: Pod>(items: &[T]) -> &[u8] {
    // SAFETY: T is Pod (no padding, so every byte is initialized); u8 has
    // alignment 1; the byte length is exactly the size of the borrowed slice.
    unsafe {
        core::slice::from_raw_parts(items.as_ptr().cast::<u8>(), core::mem::size_of_val(items))
    }
}

/// Reads an f16 stored as two little-endian bytes.
#[inline(always)]
pub fn f16_bits_to_f32(b: [u8; 2]) -> f32 {
    f16::f16_bits_to_f32_fast(u16::from_le_bytes(b))
}

/// Rounds an f32 to f16 (round to nearest even, as ggml and numpy do).
#[inline(always)]
pub fn f32_to_f16_bits(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

/// `roundf(x) as i8`: C's `roundf` (half away from zero; Rust's
/// `f32::round` is std-only), then Rust's saturating cast, equal to
/// `libm::roundf(x) as i8` for every input (tested over all 2^32 of them in
/// `round_half_away_i8_equals_roundf_everywhere`).
///
/// It truncates through an integer (one VCVT, which saturates and takes NaN
/// to 0 as `as` does) and steps away from zero when the dropped part, exact
/// as `x - t` wherever the step matters, is at least a half. On the
/// Cortex-M4F, whose FPU has no round-to-integral instruction, Q8_0
/// quantization took about 38 instructions per activation with libm's
/// bitwise `roundf` and the float-to-i8 saturation, and takes about 19 with
/// this (the block's maximum and scale included), without a branch.
#[inline(always)]
pub fn round_half_away_i8(x: f32) -> i8 {
    let t = x as i32;
    let f = x - t as f32;
    // The step away from zero: with |f| < 1, `2f` truncates to 1 exactly
    // when f >= 0.5 and to -1 when f <= -0.5 (where `t` saturated, f is
    // large and so is the step, and the result saturates either way).
    let step = (f + f) as i32;
    // SSAT #9, QADD and SSAT #8 on the Cortex-M4F.
    t.clamp(-256, 255).saturating_add(step).clamp(-128, 127) as i8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 2^32 bit pattern in release builds (about ten seconds); a
    /// stride through them, plus every value near the halves within i8 and
    /// past it, otherwise (a long stride under Miri).
    #[test]
    fn round_half_away_i8_equals_roundf_everywhere() {
        let step = if cfg!(miri) {
            1_000_003
        } else if cfg!(debug_assertions) {
            9973
        } else {
            1
        };
        let same = |x: f32| {
            let (a, b) = (round_half_away_i8(x), libm::roundf(x) as i8);
            assert_eq!(a, b, "{x:e} ({:#010x})", x.to_bits());
        };
        let mut bits = 0u64;
        while bits <= u32::MAX as u64 {
            same(f32::from_bits(bits as u32));
            bits += step;
        }
        for k in -300i32..300 {
            let h = k as f32 + 0.5;
            for x in [
                h,
                f32::from_bits(h.to_bits() - 1),
                f32::from_bits(h.to_bits() + 1),
            ] {
                same(x);
            }
        }
        for x in [
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN,
            2.2e9,
            -2.2e9,
        ] {
            same(x);
        }
    }

    #[test]
    fn cast_checks_length_and_alignment() {
        let buf = [0u8; 70];
        assert_eq!(cast_slice::<BlockQ8_0>(&buf[..68]).map(|s| s.len()), Ok(2));
        assert!(matches!(
            cast_slice::<BlockQ8_0>(&buf[..69]),
            Err(Error::LengthMismatch { .. })
        ));
        // A static f32 array is 4-aligned: offset 1 is misaligned, offset 4 is not.
        let bytes = as_bytes(STATIC_F32.as_slice());
        assert_eq!(
            cast_slice::<f32>(&bytes[1..9]),
            Err(Error::MisalignedData { align: 4 })
        );
        assert_eq!(cast_slice::<f32>(&bytes[4..12]).map(|s| s.len()), Ok(2));
    }

    static STATIC_F32: [f32; 4] = [0.0; 4];

    #[test]
    fn rounds_half_away_from_zero_and_saturates() {
        assert_eq!(round_half_away_i8(2.5), 3);
        assert_eq!(round_half_away_i8(-2.5), -3);
        assert_eq!(round_half_away_i8(1.49), 1);
        assert_eq!(round_half_away_i8(0.49999997), 0);
        assert_eq!(round_half_away_i8(126.5), 127);
        assert_eq!(round_half_away_i8(127.5), 127);
        assert_eq!(round_half_away_i8(-128.49), -128);
        assert_eq!(round_half_away_i8(f32::INFINITY), 127);
        assert_eq!(round_half_away_i8(f32::NAN), 0);
    }

    #[test]
    fn row_bytes() {
        assert_eq!(GgmlType::Q8_0.row_bytes(64), Some(68));
        assert_eq!(GgmlType::Q4_1.row_bytes(64), Some(40));
        assert_eq!(GgmlType::Q4_0.row_bytes(33), None);
        assert_eq!(GgmlType::F16.row_bytes(3), Some(6));
        assert_eq!(GgmlType::F32.row_bytes(u64::MAX), None);
    }
}
