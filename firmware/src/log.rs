//! The defmt logger over semihosting: frames are buffered and written to the
//! debugger's console, which `qemu-run` pipes through `defmt-print`.
//!
//! The firmware runs one thread and no interrupt logs, so a flag is enough
//! to keep frames whole; a fault handler that logs while a frame is open
//! (a fault inside logging) drops its message rather than interleave. On
//! several AArch64 cores (`crate::smp`) only the primary logs; a worker that
//! faults or panics while the primary has a frame open finds the flag taken
//! (an atomic swap) and its message is dropped the same way.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::sh;

struct Sink {
    handle: usize,
    buf: [u8; 256],
    len: usize,
}

/// A cell the logger alone touches, inside a frame.
struct Cell<T>(UnsafeCell<T>);

// SAFETY: the contents are reached only between `acquire` and `release`,
// which TAKEN makes exclusive on this single-threaded firmware.
unsafe impl<T> Sync for Cell<T> {}

static TAKEN: AtomicBool = AtomicBool::new(false);
/// Set while a nested frame (a fault inside logging) is being dropped.
static NESTED: AtomicBool = AtomicBool::new(false);
static ENCODER: Cell<defmt::Encoder> = Cell(UnsafeCell::new(defmt::Encoder::new()));
static SINK: Cell<Sink> = Cell(UnsafeCell::new(Sink {
    handle: usize::MAX,
    buf: [0; 256],
    len: 0,
}));

impl Sink {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    fn flush(&mut self) {
        if self.handle == usize::MAX {
            self.handle = sh::open_stdout();
        }
        sh::write(self.handle, &self.buf[..self.len]);
        self.len = 0;
    }
}

/// Appends encoded bytes to the frame buffer.
fn push(bytes: &[u8]) {
    // SAFETY: only called by the encoder inside a frame (TAKEN held); the
    // sink is a separate cell from the encoder that calls this.
    unsafe { (*SINK.0.get()).push(bytes) }
}

#[defmt::global_logger]
struct Logger;

// SAFETY: acquire/release bracket every frame, and TAKEN keeps a second
// frame from starting while one is open.
unsafe impl defmt::Logger for Logger {
    fn acquire() {
        if TAKEN.swap(true, Ordering::Acquire) {
            // A fault inside logging: its frame is dropped, not interleaved.
            NESTED.store(true, Ordering::Relaxed);
            return;
        }
        // SAFETY: exclusive after taking the flag.
        unsafe { (*ENCODER.0.get()).start_frame(push) }
    }

    unsafe fn flush() {
        if NESTED.load(Ordering::Relaxed) {
            return;
        }
        // SAFETY: called between acquire and release (defmt's contract).
        unsafe { (*SINK.0.get()).flush() }
    }

    unsafe fn release() {
        if NESTED.swap(false, Ordering::Relaxed) {
            return;
        }
        // SAFETY: called after acquire (defmt's contract).
        unsafe {
            (*ENCODER.0.get()).end_frame(push);
            (*SINK.0.get()).flush();
        }
        TAKEN.store(false, Ordering::Release);
    }

    unsafe fn write(bytes: &[u8]) {
        if NESTED.load(Ordering::Relaxed) {
            return;
        }
        // SAFETY: called between acquire and release (defmt's contract).
        unsafe { (*ENCODER.0.get()).write(bytes, push) }
    }
}
