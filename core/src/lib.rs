//! `ember-core`: llama-family inference with no operating system and no allocator.
//!
//! Data flows one way:
//!
//! ```text
//! bytes (flash | include_bytes! | mmap)
//!   -> gguf      metadata + tensor views, validated, zero-copy
//!   -> quant     ggml block layouts, scalar (de)quantize and reference dots
//!   -> kernels   the Kernels table: scalar reference + faster twins, matmul
//!   -> model     config, weights by GGUF name, Llama::forward over a Session
//!                (kv_cache + attention), memory from a MemoryPlan
//!   -> logits
//! ```
//!
//! | module | what |
//! | --- | --- |
//! | [`gguf`] | zero-copy GGUF v2/v3 reader, every count checked against caps |
//! | [`gguf_writer`] | GGUF writer (`alloc`) |
//! | [`ggml_type`] | ggml's tensor type ids (a leaf) |
//! | [`quant`] | one file per format (F32, F16, Q8_0, Q4_0, Q4_1) registered in [`quant::FORMATS`] |
//! | [`kernels`] | the kernel table (a [`kernels::FormatKernels`] row per format) and matmul |
//! | [`model`] | `Config`, `Weights`, `Llama`, `Session`, `MemoryPlan` |
//! | [`parallel`] | splitting a forward step over caller-supplied workers |
//! | [`kv_cache`] | fixed-capacity KV cache in caller memory |
//! | [`attention`] | causal attention for one head |
//! | [`math`] | exp, SwiGLU, softmax, sums for the per-token path |
//! | [`limits`] | caps on model shape (a leaf) |
//! | [`synth`] | deterministic random-weights llama GGUF of any shape (`alloc`) |
//! | [`error`] | the one `Copy` error enum |
//!
//! A minimal run, with no allocator:
//!
//! ```no_run
//! use ember_core::{gguf::Gguf, kernels::Kernels, model::{Llama, MemoryPlan, Session}};
//! # fn run(bytes: &[u8], arena: &mut [f32]) -> ember_core::Result<u32> {
//! let gguf = Gguf::parse(bytes)?;
//! let model = Llama::from_gguf(&gguf)?;
//! let plan = MemoryPlan::new(&model.config, 256, 16)?; // plan.f32_len() floats
//! let mut session = Session::new(&model, Kernels::detect(), plan, arena)?;
//! let logits = session.forward(&[1, 2, 3])?;
//! let next = logits.iter().enumerate().fold(0, |b, (i, &v)| if v > logits[b] { i } else { b });
//! # Ok(next as u32) }
//! ```

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_debug_implementations)]

#[cfg(target_endian = "big")]
compile_error!(
    "ember-core reads little-endian GGUF data in place and needs a little-endian target"
);

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod arch;
pub mod attention;
pub mod error;
pub mod ggml_type;
pub mod gguf;
#[cfg(feature = "alloc")]
pub mod gguf_writer;
pub mod grammar;
pub mod kernels;
pub mod kv_cache;
pub mod limits;
pub mod math;
pub mod model;
pub mod parallel;
pub mod quant;
pub mod sampling;
#[cfg(feature = "alloc")]
pub mod synth;
pub mod tokenizer;

pub use error::{Error, GrammarFault, Result};
pub use kv_cache::{KvOptions, KvType};
