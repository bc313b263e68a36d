//! SmolLM2-135M with no operating system: the model is wherever QEMU's loader
//! (or a board's external flash) put it (see [`ember_firmware::placed`]), the
//! prompt (the image's own, or one placed beside the model) is tokenized on
//! the device, and 8 greedy tokens are printed as ids and as text.

#![no_std]
#![no_main]

use ember_core::kernels::Kernels;
use ember_core::sampling::SamplerConfig;
use ember_core::{KvOptions, KvType};
use ember_firmware::arena::Arena;
use ember_firmware::{self as fw, OrExit};

/// Run-time memory: on the Cortex-M55 board, 192 MiB of its DDR (the
/// session, and SmolLM2's Q8_0 matrices packed in fours for the DSP kernel:
/// 143 MB); on AArch64, 32 MiB of RAM; on the Cortex-M4F board, the lower
/// half of its 16 MiB PSRAM (enough for a small model and its packs, not
/// for SmolLM2).
#[link_section = ".bigram"]
static RAM: Arena<ARENA> = Arena::new();
// The arena and its header end below 0x2180_0000, where QEMU's loader
// puts the model's header (memory/an386.x).
#[cfg(board = "an386")]
const ARENA: usize = (8 << 20) - 4096;
#[cfg(board = "an547")]
const ARENA: usize = 192 << 20;
#[cfg(board = "virt")]
const ARENA: usize = 32 << 20;

const PROMPT: &str = "The capital of France is";
const N_PREDICT: usize = 8;
const CTX: usize = 64;
const BATCH: usize = 16;

ember_firmware::entry!(main);

fn main() -> ! {
    let placed = match fw::placed() {
        Ok(p) => p,
        Err(e) => {
            defmt::error!("no usable model in memory: {}", e);
            fw::exit(fw::code::CORE_ERROR)
        }
    };
    let mut mem = RAM.take().expect("taken once");
    if let Some(limit) = placed.ram_limit {
        defmt::info!("run-time memory limited to {=usize} bytes", limit);
        mem.limit(limit);
    }
    let total = mem.left();
    let text = match placed.prompt.map(core::str::from_utf8) {
        None => PROMPT,
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            defmt::error!(
                "the prompt is not valid UTF-8 (invalid byte at offset {=usize})",
                e.valid_up_to()
            );
            fw::exit(fw::code::CORE_ERROR)
        }
    };
    // The model is borrowed for good (main never returns), so never dropped.
    let (mut gguf, mut model) = (None, core::mem::ManuallyDrop::new(None));
    let mut l = fw::load(placed.model, &mut gguf, &mut model, &mut mem);
    let mut prompt = [0u32; 1024];
    let prompt = fw::tokenize(&l, text, &mut mem, &mut prompt);
    defmt::println!("prompt ids={=str}", fw::id_list(prompt).as_str());
    let kv = KvOptions::dense(CTX).with_type(KvType::F16);
    // Bare-metal AArch64: every configured core (PSCI), each step split over
    // them, with scratch for each.
    #[cfg(target_arch = "aarch64")]
    let cores = fw::smp::Cores::start(fw::smp::configured());
    #[cfg(target_arch = "aarch64")]
    let (par, mut bufs) = {
        use ember_core::parallel::Parallel;
        let n = cores.workers();
        defmt::println!("cores={=usize}", n);
        let bufs = fw::Buffers::with_threads(l.model, kv, BATCH, n, &mut mem);
        ((n > 1).then_some(&cores as &dyn Parallel), bufs)
    };
    #[cfg(not(target_arch = "aarch64"))]
    let mut bufs = fw::Buffers::new(l.model, kv, BATCH, &mut mem);
    let kernels = Kernels::detect();
    fw::pack(&mut l, &kernels, &mut mem);
    let spec = fw::Spec {
        kernels,
        prompt,
        n_predict: N_PREDICT,
        sampling: SamplerConfig::greedy(),
    };
    #[cfg(target_arch = "aarch64")]
    let ids = fw::generate_on(&l, &spec, &mut bufs, par).or_exit("generating");
    #[cfg(not(target_arch = "aarch64"))]
    let ids = fw::generate(&l, &spec, &mut bufs).or_exit("generating");
    defmt::println!(
        "run kernels={=str} sampling=greedy seed=0 ctx={=usize} batch={=usize} ids={=str}",
        kernels.name,
        CTX,
        BATCH,
        fw::id_list(&ids).as_str()
    );
    fw::print_text(&l, &ids);
    fw::print_stats(&bufs.plan, total - mem.left());
    fw::exit(fw::code::OK)
}
