//! Where the forward pass runs: this machine's cores (the core's
//! [`Session`]), or a GPU (`ember-gpu`, in builds with the `gpu` feature).
//! Everything else (the file, tokenizer, sampler, templates) is the same
//! code for both.

use anyhow::Result;
use clap::ValueEnum;
use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan, Session};

use crate::pool::Pool;

/// `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Device {
    /// This machine's cores (SIMD kernels, --threads).
    #[default]
    Cpu,
    /// The best GPU adapter (Vulkan, Metal or DX12 through wgpu;
    /// EMBER_GPU_ADAPTER picks one by name).
    Gpu,
}

/// One sequence on `device` with the memory of `plan` (its KV options,
/// batch and threads): a CPU session over `arena` splitting each step over
/// `pool`, or a GPU engine of one slot (every token's logits kept when
/// `all_logits`). The GPU's caches are dense (f32, `plan.kv.capacity`
/// positions): a sequence ends when its slot is full, where a streaming
/// CPU cache would evict.
pub fn open_one<'s, 'w>(
    model: &'s Llama<'w>,
    kernels: Kernels,
    device: Device,
    plan: MemoryPlan,
    all_logits: bool,
    arena: &'s mut Vec<f32>,
    pool: &'s Pool,
) -> Result<One<'s, 'w>> {
    match device {
        Device::Cpu => {
            *arena = crate::arena::zeroed(plan.f32_len(), "the session (KV cache and scratch)")?;
            let mut s = Session::new(model, kernels, plan, arena)?;
            s.set_parallel(pool)?;
            Ok(One::Cpu(Box::new(s)))
        }
        #[cfg(feature = "gpu")]
        Device::Gpu => {
            let opt = ember_gpu::EngineOptions {
                slots: 1,
                ctx: plan.kv.capacity,
                max_batch: plan.max_batch.clamp(1, 512),
                all_logits,
            };
            let gpu = ember_gpu::Gpu::new()?;
            Ok(One::Gpu(Box::new(ember_gpu::Engine::new(gpu, model, opt)?)))
        }
        #[cfg(not(feature = "gpu"))]
        Device::Gpu => {
            let _ = all_logits;
            anyhow::bail!(
                "this ember was built without GPU support: build it with \
                 `cargo build --release -p ember-runner --features gpu`"
            )
        }
    }
}

/// One sequence on either engine (the GPU's in its slot 0).
pub enum One<'s, 'w> {
    Cpu(Box<Session<'s, 'w>>),
    #[cfg(feature = "gpu")]
    Gpu(Box<ember_gpu::Engine>),
}

impl One<'_, '_> {
    /// Feeds `tokens`; the logits after the last.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        match self {
            One::Cpu(s) => Ok(s.forward(tokens)?),
            #[cfg(feature = "gpu")]
            One::Gpu(e) => {
                for chunk in tokens.chunks(e.options().max_batch) {
                    e.step(&[(0, chunk)])?;
                }
                Ok(e.logits(0))
            }
        }
    }

    /// Feeds `tokens`, `emit(i, logits)` after each token `i` from `first` on.
    pub fn forward_all_from(
        &mut self,
        tokens: &[u32],
        first: usize,
        emit: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        match self {
            One::Cpu(s) => Ok(s.forward_all_from(tokens, first, emit)?),
            #[cfg(feature = "gpu")]
            One::Gpu(e) => Ok(e.step_all(0, tokens, &mut |i, l| {
                if i >= first {
                    emit(i, l)
                }
            })?),
        }
    }

    /// Feeds `tokens`, `emit(i, logits)` after each token `i`.
    pub fn forward_all(
        &mut self,
        tokens: &[u32],
        emit: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        self.forward_all_from(tokens, 0, emit)
    }

    /// The logits after the last token fed.
    pub fn logits(&self) -> &[f32] {
        match self {
            One::Cpu(s) => s.logits(),
            #[cfg(feature = "gpu")]
            One::Gpu(e) => e.logits(0),
        }
    }

    /// Starts a new sequence.
    pub fn reset(&mut self) {
        match self {
            One::Cpu(s) => s.reset(),
            #[cfg(feature = "gpu")]
            One::Gpu(e) => e.clear(0),
        }
    }

    /// Forgets every position from `n` on.
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        match self {
            One::Cpu(s) => Ok(s.truncate(n)?),
            #[cfg(feature = "gpu")]
            One::Gpu(e) => Ok(e.truncate(0, n)?),
        }
    }

    /// Errors unless `n` more tokens fit.
    pub fn reserve(&self, n: usize) -> Result<()> {
        match self {
            One::Cpu(s) => Ok(s.reserve(n)?),
            #[cfg(feature = "gpu")]
            One::Gpu(e) => Ok(e.reserve(0, n)?),
        }
    }

    /// Whether a streaming cache has evicted any token (never, on the GPU:
    /// its caches are dense).
    pub fn evicted(&self) -> bool {
        match self {
            One::Cpu(s) => s.evicted(),
            #[cfg(feature = "gpu")]
            One::Gpu(_) => false,
        }
    }

    /// Tokens fed so far.
    pub fn pos(&self) -> usize {
        match self {
            One::Cpu(s) => s.pos(),
            #[cfg(feature = "gpu")]
            One::Gpu(e) => e.pos(0),
        }
    }

    /// What runs the arithmetic, for messages: the kernel table or the
    /// GPU adapter.
    pub fn engine_name(&self) -> String {
        match self {
            One::Cpu(s) => s.kernels().name.to_string(),
            #[cfg(feature = "gpu")]
            One::Gpu(e) => e.device_name(),
        }
    }
}
