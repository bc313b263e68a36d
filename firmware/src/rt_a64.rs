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
    bl ember_a64_table_fill
    bl ember_a64_mmu_enable
    bl ember_a64_main
3:  wfe
    b 3b

    // A secondary core, started by PSCI CPU_ON (`crate::smp`) with the MMU
    // off and x0 = the context id: the core's index k (1 to 7). Its stack
    // ends at __core_stacks_bottom + k * __core_stack_size (the linker
    // script). Nothing touches memory before the MMU and caches are on.
    .global ember_a64_secondary
ember_a64_secondary:
    mov x19, x0
    ldr x1, =__core_stacks_bottom
    ldr x2, =__core_stack_size
    madd x1, x0, x2, x1
    mov sp, x1
    mov x0, #(3 << 20)
    msr cpacr_el1, x0
    isb
    ldr x0, =ember_vectors
    msr vbar_el1, x0
    isb
    bl ember_a64_mmu_enable
    mov x0, x19
    bl ember_a64_worker
4:  wfe
    b 4b

    // The per-core half of the MMU's set-up (every core writes its own
    // registers; the table is shared): MAIR, TCR and TTBR0, barriers, TLB
    // invalidate, then SCTLR with M (MMU), C (data cache) and I
    // (instruction cache) on and A (alignment check) off. A leaf that uses
    // no stack and no memory but the table walk, so a secondary core can run
    // it before its first store. Clobbers x0.
    .global ember_a64_mmu_enable
ember_a64_mmu_enable:
    ldr x0, ={mair}
    msr mair_el1, x0
    ldr x0, ={tcr}
    msr tcr_el1, x0
    ldr x0, ={table}
    msr ttbr0_el1, x0
    dsb ish
    isb
    tlbi vmalle1
    dsb ish
    isb
    mrs x0, sctlr_el1
    orr x0, x0, #(1 << 0)
    orr x0, x0, #(1 << 2)
    orr x0, x0, #(1 << 12)
    bic x0, x0, #(1 << 1)
    msr sctlr_el1, x0
    isb
    ret

    // Waits while the word at x0 still holds x1 (a load-acquire, then WFE
    // until another core's SEV) and returns the new value. Every core waits
    // here and nowhere else, so the instruction-count plugin can count the
    // instructions between `ember_a64_wait` and `ember_a64_wait_end` as idle
    // (`tools/qemu-icount.c idle=…`).
    .global ember_a64_wait
    .global ember_a64_wait_end
    .balign 16
ember_a64_wait:
    ldar x2, [x0]
    cmp x2, x1
    b.ne 5f
    wfe
    b ember_a64_wait
5:  mov x0, x2
    ret
ember_a64_wait_end:

    .section .text.vectors, "ax"
    .balign 2048
    .global ember_vectors
ember_vectors:
    .irp i, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
    .balign 128
    mov x0, #\i
    b ember_a64_exception
    .endr
"#,
    mair = const MAIR,
    tcr = const TCR,
    table = sym TABLE,
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

/// MAIR: attr0 Device-nGnRnE (0x00), attr1 Normal WB RW-allocate (0xff).
const MAIR: u64 = 0xff << 8;
/// TCR: T0SZ=25 (39-bit VA, walks start at level 1), IRGN0/ORGN0 =
/// write-back, SH0 inner shareable, TG0 4 KiB, EPD1 (no TTBR1 walks), IPS
/// 40 bits.
const TCR: u64 = 25 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (2 << 32);

/// Fills the page table, once, on the primary core before any core turns its
/// MMU on (`ember_a64_mmu_enable`, in the start-up assembly, then sets each
/// core's registers).
#[no_mangle]
extern "C" fn ember_a64_table_fill() {
    // SAFETY: runs once, before main and before any secondary core starts,
    // with the MMU off on every core: nothing reads TABLE yet. The identity
    // map leaves every address the image uses where it was.
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
