//! The Cortex-M4F image: a synthetic llama model (int8 weights, dim 64,
//! 5 layers, vocabulary 512; made by `ember synth` in build.rs) in flash.
//! Four runs from fixed prompt ids: greedy and seeded sampling, each with the
//! DSP kernels and with the scalar f32 reference. One `run … ids=` line each,
//! then a stats line; `firmware/tests` compares the ids with the host's.

#![no_std]
#![no_main]

use ember_core::kernels::Kernels;
use ember_core::sampling::SamplerConfig;
use ember_core::{KvOptions, KvType};
use ember_firmware::arena::Arena;
use ember_firmware::{self as fw, OrExit};

#[repr(C, align(64))]
struct Aligned<B: ?Sized>(B);

const BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tiny.gguf"));

/// The model, 64-byte aligned so tensors are read in place: in flash on the
/// Cortex-M4F board; on the Cortex-M55 board in DDR (`.bigrom`, loaded with
/// the image as a board's external flash would hold it), since the 512 KiB
/// of ITCM that stands in for its flash is the code's.
#[cfg_attr(board = "an547", link_section = ".bigrom")]
static MODEL_BYTES: Aligned<[u8; BYTES.len()]> =
    Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/tiny.gguf")));
static MODEL: &Aligned<[u8]> = &MODEL_BYTES;

/// Run-time memory: the plan, the tokenizer index and the sampler scratch.
static RAM: Arena<{ 128 * 1024 }> = Arena::new();

const PROMPT: [u32; 6] = [1, 300, 42, 7, 255, 64];
const N_PREDICT: usize = 24;
const CTX: usize = 64;
const BATCH: usize = 16;
const SEED: u64 = 1234;

ember_firmware::entry!(main);

fn main() -> ! {
    let mut mem = RAM.take().expect("taken once");
    let total = mem.left();
    let fnv = MODEL.0.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    defmt::println!("model fnv1a64={=u64:016x}", fnv);
    // The model is borrowed for good (main never returns), so never dropped.
    let (mut gguf, mut model) = (None, core::mem::ManuallyDrop::new(None));
    let l = fw::load(&MODEL.0, &mut gguf, &mut model, &mut mem);
    let kv = KvOptions::dense(CTX).with_type(KvType::F16);
    let mut bufs = fw::Buffers::new(l.model, kv, BATCH, &mut mem);
    defmt::println!("prompt ids={=str}", fw::id_list(&PROMPT).as_str());
    for kernels in [Kernels::detect(), Kernels::scalar()] {
        for (mode, sampling) in [
            ("greedy", SamplerConfig::greedy()),
            (
                "seeded",
                SamplerConfig {
                    seed: SEED,
                    ..SamplerConfig::default()
                },
            ),
        ] {
            let spec = fw::Spec {
                kernels,
                prompt: &PROMPT,
                n_predict: N_PREDICT,
                sampling,
            };
            let ids = fw::generate(&l, &spec, &mut bufs).or_exit("generating");
            defmt::println!(
                "run kernels={=str} sampling={=str} seed={=u64} ctx={=usize} batch={=usize} ids={=str}",
                kernels.name,
                mode,
                SEED,
                CTX,
                BATCH,
                fw::id_list(&ids).as_str()
            );
        }
    }
    fw::print_stats(&bufs.plan, total - mem.left());
    fw::exit(fw::code::OK)
}
