//! `ember-firmware`: ember-core with no operating system.
//!
//! One crate builds for three targets; each image composes what the core
//! offers and adds only start-up, logging and exit:
//!
//! | target | QEMU machine | image |
//! | --- | --- | --- |
//! | `thumbv7em-none-eabihf` (Cortex-M4F) | `mps2-an386` | `tiny`: a synthetic int8 model in flash; `kernels` |
//! | `thumbv8m.main-none-eabihf` + `target-cpu=cortex-m55` | `mps3-an547` | `smollm`: SmolLM2-135M from DDR; `kernels` |
//! | `aarch64-unknown-none` | `virt`, Cortex-A72 | `smollm` |
//!
//! Logs are defmt, over semihosting under QEMU (feature `qemu`) or RTT on a
//! board (feature `hardware`). The exit code carries pass or fail:
//! 0 success, 1 an error the core reported, 2 a check failed, 101 a panic,
//! 102 a hard fault or unexpected exception.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(not(any(feature = "qemu", feature = "hardware")))]
compile_error!("choose where the image runs: feature `qemu` (default) or `hardware`");
#[cfg(all(feature = "qemu", feature = "hardware"))]
compile_error!("features `qemu` and `hardware` exclude each other");
#[cfg(not(any(target_arch = "arm", target_arch = "aarch64")))]
compile_error!(
    "ember-firmware builds for Cortex-M (thumbv7em, thumbv8m.main) and aarch64-unknown-none"
);

pub mod app;
pub mod arena;
#[cfg(target_arch = "aarch64")]
pub mod rt_a64;
pub mod sh;
#[cfg(target_arch = "aarch64")]
pub mod smp;

#[cfg(feature = "qemu")]
mod log;
#[cfg(feature = "hardware")]
use defmt_rtt as _;

pub use app::*;

/// Exit codes.
pub mod code {
    pub const OK: u32 = 0;
    pub const CORE_ERROR: u32 = 1;
    pub const CHECK_FAILED: u32 = 2;
    pub const PANIC: u32 = 101;
    pub const FAULT: u32 = 102;
}

/// Ends the program: under QEMU the code becomes QEMU's exit status; on a
/// board a breakpoint stops the probe (`probe-rs run` then returns).
pub fn exit(code: u32) -> ! {
    #[cfg(feature = "qemu")]
    sh::exit(code);
    #[cfg(feature = "hardware")]
    {
        let _ = code;
        loop {
            #[cfg(target_arch = "arm")]
            cortex_m::asm::bkpt();
            #[cfg(target_arch = "aarch64")]
            core::hint::spin_loop();
        }
    }
}

/// The entry point of an image: `ember_firmware::entry!(main)` with
/// `fn main() -> !`. Start-up (FPU, caches, MMU on AArch64) has run and the
/// stack is painted before `main`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[cfg(target_arch = "arm")]
        #[cortex_m_rt::entry]
        fn __ember_entry() -> ! {
            $crate::stack::paint();
            $main()
        }

        #[cfg(target_arch = "aarch64")]
        #[no_mangle]
        extern "C" fn ember_a64_main() -> ! {
            $crate::stack::paint();
            $main()
        }
    };
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    defmt::error!("panic: {}", defmt::Display2Format(info));
    exit(code::PANIC)
}

#[cfg(target_arch = "arm")]
mod cortex_m_faults {
    use cortex_m_rt::{exception, ExceptionFrame};

    #[exception]
    unsafe fn HardFault(ef: &ExceptionFrame) -> ! {
        defmt::error!(
            "hard fault: pc={=u32:#x} lr={=u32:#x} xpsr={=u32:#x}",
            ef.pc(),
            ef.lr(),
            ef.xpsr()
        );
        crate::exit(crate::code::FAULT)
    }

    #[exception]
    unsafe fn DefaultHandler(irqn: i16) {
        defmt::error!("unexpected exception {=i16}", irqn);
        crate::exit(crate::code::FAULT)
    }
}

/// Peak stack use, measured by painting: every free stack word is written
/// with a pattern at start, and the lowest overwritten word marks the peak.
pub mod stack {
    const PAINT: u32 = 0x5afe_c0de;
    /// Words just below the stack pointer left unpainted (the painter's own frame).
    const MARGIN: usize = 64;

    fn bounds() -> (usize, usize) {
        #[cfg(target_arch = "arm")]
        {
            extern "C" {
                static __sheap: u32;
                static _stack_start: u32;
            }
            (
                core::ptr::addr_of!(__sheap) as usize,
                core::ptr::addr_of!(_stack_start) as usize,
            )
        }
        #[cfg(target_arch = "aarch64")]
        {
            extern "C" {
                static __stack_bottom: u32;
                static __stack_top: u32;
            }
            (
                core::ptr::addr_of!(__stack_bottom) as usize,
                core::ptr::addr_of!(__stack_top) as usize,
            )
        }
    }

    fn sp() -> usize {
        let sp: usize;
        // SAFETY: reads the stack pointer into a register (the same
        // instruction on Arm and AArch64); nothing else.
        unsafe {
            core::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags));
        }
        sp
    }

    /// Paints from the stack's lowest address to just below the current frame.
    #[inline(never)]
    pub fn paint() {
        let (bottom, _) = bounds();
        let top = (sp() - MARGIN * 4) & !3;
        let mut p = (bottom + 3) & !3;
        while p < top {
            // SAFETY: [bottom, sp - margin) is stack memory below every live
            // frame (the linker script reserves it for the stack), word
            // aligned; nothing else uses it.
            unsafe { core::ptr::write_volatile(p as *mut u32, PAINT) };
            p += 4;
        }
    }

    /// Bytes of stack used so far at the deepest point, and the stack's size.
    pub fn peak() -> (usize, usize) {
        let (bottom, top) = bounds();
        let mut p = (bottom + 3) & !3;
        // SAFETY: reads painted words of the stack region below the current
        // frame (the scan stops at the first overwritten word).
        while p < top && unsafe { core::ptr::read_volatile(p as *const u32) } == PAINT {
            p += 4;
        }
        (top - p, top - bottom)
    }
}

/// What QEMU's loader (or a board's external flash) placed in memory at the
/// linker script's `__ember_model_start`: a 4 KiB header of little-endian
/// u32 words, then the model.
///
/// | offset | what |
/// | --- | --- |
/// | 0 | model length in bytes (0: nothing loaded) |
/// | 4 | RAM limit in bytes for run-time buffers (0: the whole static arena), to try a smaller board |
/// | 8 | prompt length in bytes (0: the image's own prompt) |
/// | 12 | cores to run on (AArch64 only, read by [`smp::configured`]; 0: one) |
/// | 16 | prompt bytes (at most 4080) |
/// | 4096 | the model |
pub struct Placed {
    pub model: &'static [u8],
    pub ram_limit: Option<usize>,
    pub prompt: Option<&'static [u8]>,
}

/// Offset of the model after the header.
pub const MODEL_OFFSET: usize = 0x1000;
const PROMPT_OFFSET: usize = 16;

/// Reads the header and checks every length against the region it lives in.
pub fn placed() -> Result<Placed, LoadError> {
    extern "C" {
        static __ember_model_start: u8;
        static __ember_model_end: u8;
    }
    let base = core::ptr::addr_of!(__ember_model_start) as usize;
    let end = core::ptr::addr_of!(__ember_model_end) as usize;
    // SAFETY: the linker script puts this region in RAM that the image does
    // not otherwise use; the header's words at its (4 KiB-aligned) start are
    // readable.
    let word =
        |i: usize| unsafe { core::ptr::read_volatile((base + 4 * i) as *const u32) } as usize;
    let (len, limit, prompt_len) = (word(0), word(1), word(2));
    let room = end - base - MODEL_OFFSET;
    if len == 0 {
        return Err(LoadError::Missing);
    }
    if len > room {
        return Err(LoadError::TooLong { len, room });
    }
    if prompt_len > MODEL_OFFSET - PROMPT_OFFSET {
        return Err(LoadError::PromptTooLong {
            len: prompt_len,
            room: MODEL_OFFSET - PROMPT_OFFSET,
        });
    }
    // SAFETY: `len` bytes from base + 4 KiB, and `prompt_len` bytes from
    // base + 16, lie inside the region (checked above), which nothing
    // writes while the image runs.
    let (model, prompt) = unsafe {
        (
            core::slice::from_raw_parts((base + MODEL_OFFSET) as *const u8, len),
            core::slice::from_raw_parts((base + PROMPT_OFFSET) as *const u8, prompt_len),
        )
    };
    Ok(Placed {
        model,
        ram_limit: (limit != 0).then_some(limit),
        prompt: (prompt_len != 0).then_some(prompt),
    })
}

/// Why the placed data can't be used.
#[derive(Debug, Clone, Copy, defmt::Format)]
pub enum LoadError {
    /// The length word is 0: nothing was loaded.
    Missing,
    /// The length word claims more than the region holds.
    TooLong { len: usize, room: usize },
    /// The prompt length claims more than the header holds.
    PromptTooLong { len: usize, room: usize },
}

/// Marks a point for the instruction-count plugin (`tools/qemu-icount.c`):
/// it prints the running count whenever a `YIELD` executes, and this
/// firmware executes one nowhere else. A hint, so a no-op on hardware.
#[inline(always)]
pub fn mark() {
    // SAFETY: YIELD is a hint instruction with no effect on state.
    unsafe { core::arch::asm!("yield", options(nomem, nostack, preserves_flags)) };
}
