//! Ember's GPU engine: the core's models, whole forward passes on the
//! device, through [wgpu](https://wgpu.rs) (Vulkan, Metal, DX12 from one
//! WGSL source; Mesa's lavapipe runs it with no GPU at all).
//!
//! Everything but the arithmetic is the core's: the file is parsed by
//! [`ember_core::gguf`], the shapes and the family's graph come from its
//! [`ember_core::model::Config`], the weights are the file's own bytes,
//! uploaded once and kept resident in ggml's block layouts, and the RoPE
//! tables are the core's (computed in f64 on the host, a few hundred bytes
//! per token). Every format the CPU reads has a WGSL `unit` function that
//! dequantizes 32 elements exactly as the core's scalar reference does
//! ([`shaders`]); the matrix kernel multiplies them with f32 activations
//! (no 8-bit activations: Ember's fidelity is kept). One step of any
//! number of sequences ([`Engine::step`]) is one command submission.

pub mod check;
mod device;
mod engine;
pub mod shaders;

pub use device::Gpu;
pub use engine::{Engine, EngineOptions};

use std::fmt;

/// What went wrong, in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<ember_core::Error> for Error {
    fn from(e: ember_core::Error) -> Error {
        Error(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// `Err(Error(format!(...)))`.
macro_rules! bail {
    ($($t:tt)*) => {
        return Err($crate::Error(format!($($t)*)))
    };
}
pub(crate) use bail;
