//! Puts the target's linker script on the link path and makes the tiny model
//! that the `tiny` image embeds.
//!
//! - thumbv7em (Cortex-M4F): `memory/an386.x` (QEMU mps2-an386).
//! - thumbv8m.main (Cortex-M55): `memory/an547.x` (QEMU mps3-an547).
//! - aarch64: `memory/aarch64-virt.ld` (QEMU virt), as `aarch64.ld`.
//!
//! A board other than QEMU's: set `EMBER_MEMORY_X` to its memory.x (see
//! `memory/stm32h743.x`).

use std::{env, fs, path::PathBuf};

use ember_core::synth::{synth, SynthConfig};

/// The tiny model's shape: llama2.c's smallest (dim 64, 5 layers, 8 heads,
/// 4 KV heads, vocabulary 512), int8 weights; FFN 192 rather than llama2.c's 172,
/// so every matrix row is whole 32-wide Q8_0 blocks (172 would leave the down
/// projection in F16).
pub const TINY: SynthConfig = SynthConfig {
    dim: 64,
    layers: 5,
    heads: 8,
    kv_heads: 4,
    ffn: 192,
    vocab: 512,
    ctx: 256,
    seed: 7,
    ty: ember_core::quant::GgmlType::Q8_0,
};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let target = env::var("TARGET").unwrap();
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let script = if let Ok(custom) = env::var("EMBER_MEMORY_X") {
        println!("cargo:rerun-if-env-changed=EMBER_MEMORY_X");
        PathBuf::from(custom)
    } else if target.starts_with("thumbv7em") {
        dir.join("memory/an386.x")
    } else if target.starts_with("thumbv8m.main") || target.starts_with("thumbv8.1m.main") {
        dir.join("memory/an547.x")
    } else if target.starts_with("aarch64") {
        dir.join("memory/aarch64-virt.ld")
    } else {
        panic!("ember-firmware builds for thumbv7em, thumbv8m.main and aarch64, not {target}");
    };
    // Which QEMU board's map the image is linked for, for sizing statics.
    println!("cargo::rustc-check-cfg=cfg(board, values(\"an386\", \"an547\", \"virt\"))");
    let board = if target.starts_with("thumbv7em") {
        "an386"
    } else if target.starts_with("aarch64") {
        "virt"
    } else {
        "an547"
    };
    println!("cargo:rustc-cfg=board=\"{board}\"");
    let name = if target.starts_with("aarch64") {
        "aarch64.ld"
    } else {
        "memory.x"
    };
    fs::copy(&script, out.join(name)).expect("copying the linker script");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=memory");

    let model = synth(&TINY).expect("synthesizing the tiny model");
    fs::write(out.join("tiny.gguf"), model).expect("writing tiny.gguf");
    println!("cargo:rerun-if-changed=build.rs");
}
