//! AArch64 bare-metal start-up for QEMU `virt` (entered at EL1 with the MMU
//! off, as QEMU starts an ELF image without firmware):
//!
//! 1. stack pointer, then FP/NEON access (CPACR_EL1.FPEN = 0b11: without it the
//!    first floating-point instruction traps);
//! 2. `.bss` zeroed;
//! 3. exception vectors that log and exit with code 102;
//! 4. an identity page table of 1 GiB blocks (device memory below 1 GiB,
//!    normal write-back memory above) and the MMU and caches on. With the MMU
//!    off every access is Device-nGnRnE: alignment is enforced and NEON loads
//!    of i8 data degrade to byte loads.

use core::arch::{asm, global_asm};

global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    ldr x0, =__stack_top
    mov sp, x0
    mov x0, #(3 << 20)
    msr cpacr_el1, x0
    isb
    ldr x0, =__bss_start
    ldr x1, =__bss_end
1:  cmp x0, x1
    b.hs 2f
    str xzr, [x0], #8
    b 1b
2:  ldr x0, =ember_vectors
    msr vbar_el1, x0
    isb
    bl ember_a64_mmu_on
    bl ember_a64_main
3:  wfe
    b 3b

    .section .text.vectors, "ax"
    .balign 2048
    .global ember_vectors
ember_vectors:
    .irp i, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
    .balign 128
    mov x0, #\i
    b ember_a64_exception
    .endr
"#
);

/// One level-1 table: 512 entries of 1 GiB each (a 39-bit address space).
#[repr(C, align(4096))]
struct Table([u64; 512]);

static mut TABLE: Table = Table([0; 512]);

const VALID_BLOCK: u64 = 0b01; // a level-1 block descriptor
const AF: u64 = 1 << 10; // access flag (else the first access faults)
const INNER_SHAREABLE: u64 = 0b11 << 8;
const ATTR_DEVICE: u64 = 0 << 2; // MAIR index 0
const ATTR_NORMAL: u64 = 1 << 2; // MAIR index 1

#[no_mangle]
extern "C" fn ember_a64_mmu_on() {
    // SAFETY: runs once, before main and with nothing else running; TABLE is
    // written before the MMU reads it, and the system-register writes follow
    // the architecture's sequence (table, MAIR, TCR, barriers, TLB
    // invalidate, then SCTLR). The identity map leaves every address the
    // image uses where it was.
    unsafe {
        let table = &raw mut TABLE;
        for (i, e) in (*table).0.iter_mut().enumerate().take(4) {
            let base = (i as u64) << 30;
            let attr = if i == 0 {
                ATTR_DEVICE
            } else {
                ATTR_NORMAL | INNER_SHAREABLE
            };
            *e = base | attr | AF | VALID_BLOCK;
        }
        // MAIR: attr0 Device-nGnRnE (0x00), attr1 Normal WB RW-allocate (0xff).
        let mair: u64 = 0xff << 8;
        // TCR: T0SZ=25 (39-bit VA, walks start at level 1), IRGN0/ORGN0 =
        // write-back, SH0 inner shareable, TG0 4 KiB, EPD1 (no TTBR1 walks),
        // IPS 40 bits.
        let tcr: u64 = 25 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (2 << 32);
        asm!(
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "msr ttbr0_el1, {ttbr}",
            "dsb ish",
            "isb",
            "tlbi vmalle1",
            "dsb ish",
            "isb",
            "mrs {t}, sctlr_el1",
            // M (MMU), C (data cache), I (instruction cache) on; A (alignment
            // check) off.
            "orr {t}, {t}, #(1 << 0)",
            "orr {t}, {t}, #(1 << 2)",
            "orr {t}, {t}, #(1 << 12)",
            "bic {t}, {t}, #(1 << 1)",
            "msr sctlr_el1, {t}",
            "isb",
            mair = in(reg) mair,
            tcr = in(reg) tcr,
            ttbr = in(reg) table as u64,
            t = out(reg) _,
            options(nostack),
        );
    }
}

#[no_mangle]
extern "C" fn ember_a64_exception(kind: u64) -> ! {
    let (esr, elr, far): (u64, u64, u64);
    // SAFETY: reads three EL1 system registers.
    unsafe {
        asm!(
            "mrs {0}, esr_el1",
            "mrs {1}, elr_el1",
            "mrs {2}, far_el1",
            out(reg) esr,
            out(reg) elr,
            out(reg) far,
            options(nomem, nostack, preserves_flags)
        );
    }
    defmt::error!(
        "exception {=u64} (vector slot): esr={=u64:#x} elr={=u64:#x} far={=u64:#x}",
        kind,
        esr,
        elr,
        far
    );
    crate::exit(crate::code::FAULT)
}
