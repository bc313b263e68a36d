//! Static memory: one `static` byte array per image, handed out once and cut
//! into the typed buffers the core's plans ask for.

use core::cell::UnsafeCell;
use core::mem::{align_of, size_of, MaybeUninit};
use core::sync::atomic::{AtomicBool, Ordering};

use ember_core::sampling::Candidate;

/// `N` bytes, 64-byte aligned, taken at most once.
#[repr(C, align(64))]
pub struct Arena<const N: usize> {
    bytes: UnsafeCell<MaybeUninit<[u8; N]>>,
    taken: AtomicBool,
}

// SAFETY: the bytes are reached only through `take`, which hands them out
// once (the flag is swapped atomically).
unsafe impl<const N: usize> Sync for Arena<N> {}

impl<const N: usize> Arena<N> {
    pub const fn new() -> Self {
        Arena {
            bytes: UnsafeCell::new(MaybeUninit::uninit()),
            taken: AtomicBool::new(false),
        }
    }

    /// The whole array, the first time; `None` after.
    pub fn take(&'static self) -> Option<Carver<'static>> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: first and only hand-out (the flag), so the borrow is
        // unique; the bytes may be uninitialized, which `Carver` keeps in
        // mind: it zeroes what it hands out before typing it.
        let rest = unsafe {
            core::slice::from_raw_parts_mut(self.bytes.get().cast::<MaybeUninit<u8>>(), N)
        };
        Some(Carver { rest })
    }
}

impl<const N: usize> Default for Arena<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Types whose all-zero bytes are a valid value.
///
/// # Safety
/// Implement only for types with no padding-dependent invariants for which
/// zero bytes are a valid value.
pub unsafe trait Zeroable: Sized {}
// SAFETY: zero bits are 0.0 / 0.
unsafe impl Zeroable for f32 {}
// SAFETY: as above.
unsafe impl Zeroable for u32 {}
// SAFETY: as above.
unsafe impl Zeroable for u8 {}
// SAFETY: a (u32, f32) pair; zero is id 0, logit 0.0.
unsafe impl Zeroable for Candidate {}
// SAFETY: bytes only (an f16 scale and i8 quants); zero is a zero block.
unsafe impl Zeroable for ember_core::quant::BlockQ8_0 {}
// SAFETY: bytes only (four f16 scales and i8 quants); zero is a zero block.
unsafe impl Zeroable for ember_core::quant::BlockQ8_0x4 {}
// SAFETY: a u16 inside; zero bits are +0.0.
unsafe impl Zeroable for half::f16 {}

/// Cuts typed, zeroed buffers off the front of the remaining bytes.
pub struct Carver<'a> {
    rest: &'a mut [MaybeUninit<u8>],
}

/// A buffer did not fit: what was asked and what was left (bytes).
#[derive(Debug, Clone, Copy, defmt::Format)]
pub struct NoRoom {
    pub needed: usize,
    pub left: usize,
}

impl<'a> Carver<'a> {
    /// Bytes still free.
    pub fn left(&self) -> usize {
        self.rest.len()
    }

    /// Keeps at most `bytes` of what is left (to try a smaller board).
    pub fn limit(&mut self, bytes: usize) {
        let rest = core::mem::take(&mut self.rest);
        let keep = bytes.min(rest.len());
        self.rest = &mut rest[..keep];
    }

    /// `n` zeroed elements of `T`.
    pub fn take<T: Zeroable>(&mut self, n: usize) -> Result<&'a mut [T], NoRoom> {
        let left = self.rest.len();
        let pad = self.rest.as_ptr().align_offset(align_of::<T>());
        let bytes = n
            .checked_mul(size_of::<T>())
            .and_then(|b| b.checked_add(pad));
        let Some(bytes) = bytes.filter(|&b| b <= left) else {
            return Err(NoRoom {
                needed: n.saturating_mul(size_of::<T>()),
                left,
            });
        };
        let rest = core::mem::take(&mut self.rest);
        let (head, tail) = rest.split_at_mut(bytes);
        self.rest = tail;
        let head = &mut head[pad..];
        // SAFETY: `head` is exclusively ours, n * size_of::<T>() bytes long
        // and aligned for T (pad); writing zeros initializes every byte, and
        // T: Zeroable makes all-zero a valid T.
        unsafe {
            core::ptr::write_bytes(head.as_mut_ptr(), 0, head.len());
            Ok(core::slice::from_raw_parts_mut(
                head.as_mut_ptr().cast::<T>(),
                n,
            ))
        }
    }
}
