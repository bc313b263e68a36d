//! Semihosting: calls the debugger (here QEMU) services, trapped by
//! `BKPT 0xAB` on M-profile cores and `HLT 0xF000` on AArch64. Used for the
//! log stream and the exit code; nothing else.

use core::arch::asm;

const SYS_OPEN: usize = 0x01;
const SYS_WRITE: usize = 0x05;
#[cfg(target_arch = "aarch64")]
const SYS_EXIT: usize = 0x18;
#[cfg(target_arch = "arm")]
const SYS_EXIT_EXTENDED: usize = 0x20;
/// ADP_Stopped_ApplicationExit: the exit status is the subcode.
const APPLICATION_EXIT: usize = 0x20026;

/// One semihosting call: `op` with a pointer to its argument block.
///
/// # Safety
/// `arg` must point to the argument block `op` expects, readable (and
/// writable where `op` writes) for the duration of the call.
#[inline(always)]
unsafe fn call(op: usize, arg: usize) -> usize {
    let r: usize;
    // SAFETY: the trap instruction hands r0/x0 (operation) and r1/x1
    // (argument block) to the debugger, which returns a result in r0/x0; the
    // caller guarantees the block. Memory is not marked untouched, so the
    // compiler keeps the block's contents written before the call.
    unsafe {
        #[cfg(target_arch = "arm")]
        asm!("bkpt #0xab", inout("r0") op => r, in("r1") arg, options(nostack));
        #[cfg(target_arch = "aarch64")]
        asm!("hlt #0xf000", inout("x0") op => r, in("x1") arg, options(nostack));
    }
    r
}

/// Opens the debugger's console for writing (`:tt`, mode "w").
pub fn open_stdout() -> usize {
    let name = b":tt\0";
    let args = [name.as_ptr() as usize, 4, 3];
    // SAFETY: SYS_OPEN reads a three-word block: name pointer (NUL-terminated,
    // static), mode, name length without the NUL.
    unsafe { call(SYS_OPEN, args.as_ptr() as usize) }
}

/// Writes `bytes` to `handle`; returns the number of bytes not written.
pub fn write(handle: usize, bytes: &[u8]) -> usize {
    let args = [handle, bytes.as_ptr() as usize, bytes.len()];
    // SAFETY: SYS_WRITE reads a three-word block: handle, buffer pointer and
    // length; the buffer is borrowed for the call.
    unsafe { call(SYS_WRITE, args.as_ptr() as usize) }
}

/// Ends the program with `code` as the emulator's exit status.
pub fn exit(code: u32) -> ! {
    let args = [APPLICATION_EXIT, code as usize];
    // SAFETY: SYS_EXIT (AArch64) and SYS_EXIT_EXTENDED (Arm) read a two-word
    // block: reason and subcode. The debugger does not return.
    unsafe {
        #[cfg(target_arch = "arm")]
        call(SYS_EXIT_EXTENDED, args.as_ptr() as usize);
        #[cfg(target_arch = "aarch64")]
        call(SYS_EXIT, args.as_ptr() as usize);
    }
    loop {
        core::hint::spin_loop();
    }
}
