//! Where the forward pass runs: this machine's cores (the core's
//! [`Session`]), or a GPU (`ember-gpu`, in builds with the `gpu` feature).
//! Everything else (the file, tokenizer, sampler, templates) is the same
//! code for both.

use anyhow::{bail, Result};
use clap::ValueEnum;

use crate::pool::Pool;
use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan, Session};

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

/// What a GPU engine is made with.
#[derive(Debug, Clone, Copy)]
pub struct GpuShape {
    pub slots: usize,
    pub ctx: usize,
    pub max_batch: usize,
    pub all_logits: bool,
}

#[cfg(feature = "gpu")]
pub type GpuEngine = ember_gpu::Engine;

/// Stands in for the GPU engine in builds without it (never made).
#[cfg(not(feature = "gpu"))]
pub enum GpuEngine {}

/// The GPU engine for `model`, or why there is none. Its caches are dense
/// (f32, `shape.ctx` positions): a sequence ends when its slot is full,
/// where a streaming CPU cache would evict.
pub fn open_gpu(model: &Llama, shape: GpuShape) -> Result<GpuEngine> {
    open_engine(model, shape)
}

#[cfg(feature = "gpu")]
fn open_engine(model: &Llama, shape: GpuShape) -> Result<GpuEngine> {
    let gpu = ember_gpu::Gpu::new()?;
    let opt = ember_gpu::EngineOptions {
        slots: shape.slots,
        ctx: shape.ctx,
        max_batch: shape.max_batch,
        all_logits: shape.all_logits,
    };
    Ok(ember_gpu::Engine::new(gpu, model, opt)?)
}

#[cfg(not(feature = "gpu"))]
fn open_engine(_: &Llama, _: GpuShape) -> Result<GpuEngine> {
    bail!(
        "this ember was built without GPU support: build it with \
         `cargo build --release -p ember-runner --features gpu`"
    )
}

/// One sequence on `device` with the memory of `plan` (its KV options,
/// batch and threads): a CPU session over `arena` splitting each step over
/// `pool`, or a GPU engine of one slot (every token's logits kept when
/// `all_logits`).
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
        Device::Gpu => {
            let shape = GpuShape {
                slots: 1,
                ctx: plan.kv.capacity,
                max_batch: plan.max_batch.clamp(1, 512),
                all_logits,
            };
            Ok(One::Gpu(Box::new(open_gpu(model, shape)?)))
        }
    }
}

/// One sequence on either engine.
pub enum One<'s, 'w> {
    Cpu(Box<Session<'s, 'w>>),
    Gpu(Box<GpuEngine>),
}

impl One<'_, '_> {
    /// Feeds `tokens`; the logits after the last.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        match self {
            One::Cpu(s) => Ok(s.forward(tokens)?),
            One::Gpu(e) => {
                gpu_forward(e, tokens)?;
                Ok(self.logits())
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
            One::Gpu(e) => gpu_all(e, tokens, first, emit),
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
            One::Gpu(e) => gpu_logits(e),
        }
    }

    /// Starts a new sequence.
    pub fn reset(&mut self) {
        match self {
            One::Cpu(s) => s.reset(),
            One::Gpu(e) => gpu_clear(e),
        }
    }

    /// Forgets every position from `n` on.
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        match self {
            One::Cpu(s) => Ok(s.truncate(n)?),
            One::Gpu(e) => gpu_truncate(e, n),
        }
    }

    /// Errors unless `n` more tokens fit.
    pub fn reserve(&self, n: usize) -> Result<()> {
        match self {
            One::Cpu(s) => Ok(s.reserve(n)?),
            One::Gpu(e) => gpu_reserve(e, n),
        }
    }

    /// Whether a streaming cache has evicted any token (never, on the GPU:
    /// its caches are dense).
    pub fn evicted(&self) -> bool {
        match self {
            One::Cpu(s) => s.evicted(),
            One::Gpu(_) => false,
        }
    }

    /// Tokens fed so far.
    pub fn pos(&self) -> usize {
        match self {
            One::Cpu(s) => s.pos(),
            One::Gpu(e) => gpu_pos(e),
        }
    }

    /// What runs the arithmetic, for messages: the kernel table or the
    /// GPU adapter.
    pub fn engine_name(&self) -> String {
        match self {
            One::Cpu(s) => s.kernels().name.to_string(),
            One::Gpu(e) => gpu_name(e),
        }
    }
}

#[cfg(feature = "gpu")]
mod on_gpu {
    use super::*;

    pub fn gpu_forward(e: &mut GpuEngine, tokens: &[u32]) -> Result<()> {
        for chunk in tokens.chunks(e.options().max_batch) {
            e.step(&[(0, chunk)])?;
        }
        Ok(())
    }

    pub fn gpu_all(
        e: &mut GpuEngine,
        tokens: &[u32],
        first: usize,
        emit: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        Ok(e.step_all(0, tokens, &mut |i, l| {
            if i >= first {
                emit(i, l)
            }
        })?)
    }

    pub fn gpu_logits(e: &GpuEngine) -> &[f32] {
        e.logits(0)
    }

    pub fn gpu_clear(e: &mut GpuEngine) {
        e.clear(0)
    }

    pub fn gpu_truncate(e: &mut GpuEngine, n: usize) -> Result<()> {
        Ok(e.truncate(0, n)?)
    }

    pub fn gpu_reserve(e: &GpuEngine, n: usize) -> Result<()> {
        let (pos, ctx) = (e.pos(0), e.options().ctx);
        if pos + n > ctx {
            bail!("the KV cache is full: {pos} + {n} positions, {ctx} in all; raise --ctx");
        }
        Ok(())
    }

    pub fn gpu_pos(e: &GpuEngine) -> usize {
        e.pos(0)
    }

    pub fn gpu_name(e: &GpuEngine) -> String {
        e.device_name()
    }
}

#[cfg(not(feature = "gpu"))]
mod on_gpu {
    use super::*;

    pub fn gpu_forward(e: &mut GpuEngine, _: &[u32]) -> Result<()> {
        match *e {}
    }

    pub fn gpu_all(
        e: &mut GpuEngine,
        _: &[u32],
        _: usize,
        _: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        match *e {}
    }

    pub fn gpu_logits(e: &GpuEngine) -> &[f32] {
        match *e {}
    }

    pub fn gpu_clear(e: &mut GpuEngine) {
        match *e {}
    }

    pub fn gpu_truncate(e: &mut GpuEngine, _: usize) -> Result<()> {
        match *e {}
    }

    pub fn gpu_reserve(e: &GpuEngine, _: usize) -> Result<()> {
        match *e {}
    }

    pub fn gpu_pos(e: &GpuEngine) -> usize {
        match *e {}
    }

    pub fn gpu_name(e: &GpuEngine) -> String {
        match *e {}
    }
}

use on_gpu::*;
