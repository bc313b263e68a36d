//! Every core of a bare-metal AArch64 board: the secondary cores started
//! through PSCI, and a [`Parallel`] over all of them for the core's split of
//! each forward step ([`ember_core::parallel`]).
//!
//! - **Start-up.** QEMU `virt` started with `-kernel` at EL1 holds every core
//!   but the first powered off and serves PSCI over HVC (its device tree says
//!   `method = "hvc"`). [`Cores::start`] calls PSCI 0.2 `CPU_ON` (function
//!   0xC400_0003; the target's MPIDR, the entry point's physical address,
//!   a context id) for cores 1, 2, … with the entry `ember_a64_secondary`
//!   (`rt_a64`) and the core's index as context id. That entry sets the
//!   core's own stack from the index, turns FP/NEON on, installs the
//!   vectors, turns its MMU on over the primary's page table, and calls
//!   [`ember_a64_worker`]. A core that does not exist fails `CPU_ON`, and
//!   the cores started before it are the set.
//! - **Hand-off.** No OS and no allocator: a step's task reference (a fat
//!   pointer) sits in a slot on the primary's stack, and [`TASK`] points to
//!   that slot. The primary stores the pointer, bumps [`GENERATION`]
//!   (Release) and signals (SEV); each worker, waiting in WFE, sees the new
//!   generation (Acquire), reads the slot, runs its index, adds one to
//!   [`DONE`] (Release) and signals. The primary runs index 0 itself, then
//!   waits (WFE) until [`DONE`] has grown by the number of workers
//!   (Acquire) before it returns, so the slot outlives every read of it.
//! - **Waiting.** Every core waits in `ember_a64_wait` (`rt_a64`) and
//!   nowhere else, so the instruction-count plugin can tell idle from work.
//!   QEMU's TCG treats WFE as a yield, so a waiting vCPU keeps executing
//!   that loop; a real core would sleep until the SEV.
//!
//! Workers never log: the defmt logger keeps frames whole for one core.
//! A fault or panic on a worker still logs and exits.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use ember_core::parallel::Parallel;

/// Most cores: the primary and the seven secondaries that the linker script
/// has stacks for (`.core_stacks`).
pub const MAX_CORES: usize = 8;

/// PSCI 0.2+ `CPU_ON`, SMC64 calling convention.
const PSCI_CPU_ON: u64 = 0xC400_0003;

type Task = dyn Fn(usize) + Sync;

/// Bumped once per step, after [`TASK`] is set.
static GENERATION: AtomicUsize = AtomicUsize::new(0);
/// Steps finished by workers, counted over all steps.
static DONE: AtomicUsize = AtomicUsize::new(0);
/// Workers that reached their loop.
static READY: AtomicUsize = AtomicUsize::new(0);
/// The current step's slot: a pointer to a `&Task` on the primary's stack,
/// valid from the bump of [`GENERATION`] that publishes it until [`DONE`]
/// counts every worker.
static TASK: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
/// Set while a step runs: steps do not nest.
static BUSY: AtomicBool = AtomicBool::new(false);
/// Set once the secondaries were started.
static STARTED: AtomicBool = AtomicBool::new(false);

extern "C" {
    /// The secondary cores' entry (`rt_a64`).
    fn ember_a64_secondary();
    /// Waits while `*word == seen` (load-acquire and WFE), returns the new
    /// value (`rt_a64`).
    fn ember_a64_wait(word: *const usize, seen: usize) -> usize;
}

/// Returns once `word` holds at least `want` (every counter here only grows
/// and never wraps in practice: 2^64 steps).
fn wait_for(word: &AtomicUsize, want: usize) {
    loop {
        let now = word.load(Ordering::Acquire);
        if now >= want {
            return;
        }
        // SAFETY: `word` is a live, aligned atomic word; the routine only
        // reads it (load-acquire) and executes WFE.
        unsafe { ember_a64_wait(word.as_ptr(), now) };
    }
}

/// Wakes every core waiting in WFE.
fn sev() {
    // SAFETY: SEV sets the event register of every core; no other effect.
    unsafe { core::arch::asm!("sev", options(nomem, nostack, preserves_flags)) };
}

/// Cores to use, from the placed header's word at offset 12 (`qemu-run`
/// writes `EMBER_FIRMWARE_CORES` there; 0 or absent: one).
pub fn configured() -> usize {
    extern "C" {
        static __ember_model_start: u8;
    }
    let base = core::ptr::addr_of!(__ember_model_start) as usize;
    // SAFETY: the header's first 4 KiB at the (4 KiB-aligned) start of the
    // model region are readable RAM that nothing writes while the image runs
    // (see `crate::placed`).
    let n = unsafe { core::ptr::read_volatile((base + 12) as *const u32) } as usize;
    n.max(1)
}

/// PSCI `CPU_ON` for core `index` (its MPIDR: QEMU `virt` numbers cores in
/// clusters of eight, Aff1 = index / 8, Aff0 = index % 8): PSCI's return
/// code, 0 on success.
fn cpu_on(index: usize) -> i64 {
    let mpidr = (((index / 8) << 8) | (index % 8)) as u64;
    let entry = ember_a64_secondary as *const () as u64;
    let ret: i64;
    // SAFETY: a PSCI call through the hypervisor conduit (QEMU's firmware
    // model answers it); it powers on a core that starts at `entry` (the
    // identity map makes the address physical) with the MMU off and its
    // index in x0, and touches none of this core's memory. The SMC calling
    // convention may clobber x0-x17, which the C ABI clobber covers.
    unsafe {
        core::arch::asm!(
            "hvc #0",
            inlateout("x0") PSCI_CPU_ON => ret,
            inlateout("x1") mpidr => _,
            inlateout("x2") entry => _,
            inlateout("x3") index as u64 => _,
            clobber_abi("C"),
            options(nostack),
        );
    }
    ret
}

/// The cores this image runs on: worker 0 is the primary (the caller of
/// [`Parallel::run`]), worker k is core k.
#[derive(Debug)]
pub struct Cores {
    n: usize,
}

impl Cores {
    /// Starts cores 1..`want` (at most [`MAX_CORES`] in all) and returns
    /// once each waits for work. A core whose `CPU_ON` fails, and every core
    /// after it, is left off; the log says so. Call once (later calls start
    /// nothing and return one core).
    pub fn start(want: usize) -> Cores {
        let want = want.clamp(1, MAX_CORES);
        if want == 1 || STARTED.swap(true, Ordering::Relaxed) {
            return Cores { n: 1 };
        }
        let mut n = 1;
        while n < want {
            let ret = cpu_on(n);
            if ret != 0 {
                defmt::warn!(
                    "PSCI CPU_ON for core {=usize} returned {=i64}: running on {=usize} cores",
                    n,
                    ret,
                    n
                );
                break;
            }
            n += 1;
        }
        wait_for(&READY, n - 1);
        Cores { n }
    }
}

impl Parallel for Cores {
    fn workers(&self) -> usize {
        self.n
    }

    fn run(&self, task: &(dyn Fn(usize) + Sync)) {
        let helpers = self.n - 1;
        if helpers == 0 {
            return task(0);
        }
        assert!(
            !BUSY.swap(true, Ordering::Acquire),
            "Parallel::run nested or called from a worker"
        );
        // The fat pointer, on this frame until every worker is done with it.
        let slot: &(dyn Fn(usize) + Sync) = task;
        TASK.store(
            core::ptr::addr_of!(slot).cast_mut().cast(),
            Ordering::Relaxed,
        );
        // DONE changes only inside a step, so this is every earlier step's.
        let target = DONE.load(Ordering::Relaxed) + helpers;
        GENERATION.fetch_add(1, Ordering::Release);
        sev();
        task(0);
        wait_for(&DONE, target);
        TASK.store(core::ptr::null_mut(), Ordering::Relaxed);
        BUSY.store(false, Ordering::Release);
    }
}

/// A secondary core's loop, entered from `ember_a64_secondary` with its MMU
/// on: wait for a step, run its index, report, forever.
#[no_mangle]
extern "C" fn ember_a64_worker(index: usize) -> ! {
    let mut seen = GENERATION.load(Ordering::Acquire);
    READY.fetch_add(1, Ordering::Release);
    sev();
    loop {
        wait_for(&GENERATION, seen + 1);
        seen = GENERATION.load(Ordering::Acquire);
        let slot = TASK.load(Ordering::Relaxed).cast_const().cast::<&Task>();
        // SAFETY: the generation this core just loaded (Acquire) was
        // published (Release) after the primary stored `slot`, so `slot`
        // points to the primary's `&Task` for this step; the primary does
        // not return from `run` (and the slot and the task stay alive) until
        // DONE counts this core's report below.
        let task = unsafe { *slot };
        task(index);
        DONE.fetch_add(1, Ordering::Release);
        sev();
    }
}
