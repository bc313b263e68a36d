//! Where the forward pass runs: this machine's cores (the core's
//! [`Session`]), or a GPU (`ember-gpu`, in builds with the `gpu` feature).
//! Everything else (the file, tokenizer, sampler, templates) is the same
//! code for both.

use anyhow::Result;
use clap::ValueEnum;
use ember_core::kernels::Kernels;
use ember_core::kv_cache::{KvCache, KvPool};
use ember_core::model::{Batch, Llama, MemoryPlan, Seq, Session};

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
            Ok(One::Gpu(Box::new(gpu_engine(model, opt)?)))
        }
        #[cfg(not(feature = "gpu"))]
        Device::Gpu => {
            let _ = all_logits;
            anyhow::bail!(NO_GPU)
        }
    }
}

/// What `--device gpu` says in a build without the feature.
#[cfg(not(feature = "gpu"))]
const NO_GPU: &str = "this ember was built without GPU support: build it with \
                      `cargo build --release -p ember-runner --features gpu`";

/// The GPU engine for `model` on the best adapter.
#[cfg(feature = "gpu")]
fn gpu_engine(model: &Llama, opt: ember_gpu::EngineOptions) -> Result<ember_gpu::Engine> {
    let gpu = ember_gpu::Gpu::new()?;
    Ok(ember_gpu::Engine::new(gpu, model, opt)?)
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

    /// Feeds a generated token and drafts after it, `emit(i, logits)`
    /// after each: on the CPU in the decode arithmetic, the logits each
    /// gets fed alone; on the GPU one step, as for any tokens.
    pub fn forward_drafts(
        &mut self,
        tokens: &[u32],
        emit: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        match self {
            One::Cpu(s) => Ok(s.forward_drafts(tokens, emit)?),
            #[cfg(feature = "gpu")]
            One::Gpu(e) => Ok(e.step_all(0, tokens, emit)?),
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

    /// Whether each step brings its logits back (the default). Off, a GPU
    /// step brings back only its greedy token ([`One::greedy_id`]) and
    /// [`One::logits`] is empty; the CPU has its logits either way.
    pub fn read_logits(&mut self, on: bool) {
        match self {
            One::Cpu(_) => {
                let _ = on;
            }
            #[cfg(feature = "gpu")]
            One::Gpu(e) => e.read_logits(on),
        }
    }

    /// The greedy token after the last token fed, computed where the
    /// logits are, when the logits were not brought back (see
    /// [`One::read_logits`]); `None` otherwise, or where no logit is a
    /// candidate.
    pub fn greedy_id(&self) -> Option<u32> {
        match self {
            One::Cpu(_) => None,
            #[cfg(feature = "gpu")]
            One::Gpu(e) => e.logits(0).is_empty().then(|| e.argmax(0)).flatten(),
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

    /// The GPU's memory bandwidth in bytes per second (a device copy);
    /// the CPU's is probed by `bench` itself.
    pub fn copy_bandwidth(&self) -> Result<f64> {
        match self {
            One::Cpu(_) => anyhow::bail!("the CPU's bandwidth is probed by reading the model"),
            #[cfg(feature = "gpu")]
            One::Gpu(e) => Ok(e.copy_bandwidth()?),
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

/// The server's sequences (its slots) on either engine: the CPU's batch
/// engine over one KV cache per slot, or the GPU engine's slots.
pub enum Slots<'s, 'w> {
    Cpu {
        batch: Box<Batch<'s, 'w>>,
        caches: Vec<KvCache<'s>>,
    },
    /// The CPU's batch engine over paged caches: one pool of blocks that
    /// the slots take from as they grow ([`Slots::cpu_paged`]).
    Paged {
        batch: Box<Batch<'s, 'w>>,
        pool: KvPool<'s>,
        caches: Vec<KvCache<'s>>,
        /// The last step's logits, a row per work item.
        last: Vec<f32>,
    },
    #[cfg(feature = "gpu")]
    Gpu(Box<ember_gpu::Engine>),
}

impl<'s, 'w> Slots<'s, 'w> {
    /// `plan.seqs` slots on the CPU: a batch engine over `scratch` splitting
    /// each step over `pool`, one cache per pair of `mem` (each buffer
    /// `plan.kv_len` floats).
    pub fn cpu(
        model: &'s Llama<'w>,
        kernels: Kernels,
        plan: MemoryPlan,
        scratch: &'s mut [f32],
        mem: &'s mut [(Vec<f32>, Vec<f32>)],
        pool: &'s Pool,
    ) -> Result<Slots<'s, 'w>> {
        let mut batch = Batch::new(model, kernels, plan, scratch)?;
        batch.set_parallel(pool)?;
        let caches = mem
            .iter_mut()
            .map(|(k, v)| plan.cache(&model.config, k, v))
            .collect::<ember_core::Result<_>>()?;
        Ok(Slots::Cpu {
            batch: Box::new(batch),
            caches,
        })
    }

    /// `plan.seqs` slots on the CPU whose caches take blocks of `block`
    /// positions from one pool of `blocks.len()` blocks over `k` and `v`
    /// (each `blocks.len()` × [`KvPool::block_bytes`]); `tables` holds each
    /// slot's block table ([`KvCache::table_len`] entries per slot).
    #[allow(clippy::too_many_arguments)]
    pub fn cpu_paged(
        model: &'s Llama<'w>,
        kernels: Kernels,
        plan: MemoryPlan,
        scratch: &'s mut [f32],
        pool_mem: PoolMem<'s>,
        block: usize,
        pool: &'s Pool,
    ) -> Result<Slots<'s, 'w>> {
        let c = &model.config;
        let mut batch = Batch::new(model, kernels, plan, scratch)?;
        batch.set_parallel(pool)?;
        let row = plan
            .kv
            .ty
            .row_bytes(c.kv_dim())
            .ok_or_else(|| anyhow::anyhow!("the KV type cannot hold this model's rows"))?;
        let PoolMem {
            k,
            v,
            refs,
            free,
            tables,
        } = pool_mem;
        let n_blocks = refs.len();
        let kv_pool = KvPool::new(
            ember_core::quant::as_bytes_mut(k),
            ember_core::quant::as_bytes_mut(v),
            refs,
            free,
            n_blocks,
            block,
            c.n_layers,
            row,
        )?;
        let win = plan.windows(c);
        let len = KvCache::table_len(&plan.kv, &win, block);
        let caches = tables
            .chunks_exact_mut(len.max(1))
            .take(plan.seqs)
            .map(|t| KvCache::paged(t, block, plan.kv, c.n_layers, c.kv_dim(), win))
            .collect::<ember_core::Result<Vec<_>>>()?;
        anyhow::ensure!(
            caches.len() == plan.seqs,
            "the block tables hold too few slots"
        );
        Ok(Slots::Paged {
            batch: Box::new(batch),
            pool: kv_pool,
            caches,
            last: Vec::new(),
        })
    }

    /// `plan.seqs` slots of `plan.kv.capacity` positions on the GPU, steps
    /// of up to `plan.max_batch` tokens (fewer where one binding cannot
    /// hold that many tokens' attention scores: [`Slots::max_batch`]), with
    /// room for every token's logits where `drafts` ([`Slots::step_drafts`]).
    pub fn gpu(model: &Llama, plan: MemoryPlan, drafts: bool) -> Result<Slots<'s, 'w>> {
        #[cfg(feature = "gpu")]
        {
            let opt = ember_gpu::EngineOptions {
                slots: plan.seqs,
                ctx: plan.kv.capacity,
                max_batch: plan.max_batch,
                all_logits: drafts,
            };
            Ok(Slots::Gpu(Box::new(gpu_engine(model, opt)?)))
        }
        #[cfg(not(feature = "gpu"))]
        {
            let _ = (model, plan, drafts);
            anyhow::bail!(NO_GPU)
        }
    }

    /// Tokens one step takes, over all slots.
    pub fn max_batch(&self) -> usize {
        match self {
            Slots::Cpu { batch, .. } | Slots::Paged { batch, .. } => batch.plan().max_batch,
            #[cfg(feature = "gpu")]
            Slots::Gpu(e) => e.options().max_batch,
        }
    }

    /// Empties slot `i`.
    pub fn clear(&mut self, i: usize) {
        match self {
            Slots::Cpu { caches, .. } => caches[i].clear(),
            Slots::Paged { pool, caches, .. } => pool.release(&mut caches[i]),
            #[cfg(feature = "gpu")]
            Slots::Gpu(e) => e.clear(i),
        }
    }

    /// Forgets slot `i`'s positions from `n` on (an error where its cache
    /// no longer holds them: a windowed layer's ring moved past them).
    pub fn truncate(&mut self, i: usize, n: usize) -> Result<()> {
        match self {
            Slots::Cpu { caches, .. } => Ok(caches[i].truncate(n)?),
            Slots::Paged { pool, caches, .. } => Ok(pool.truncate(&mut caches[i], n)?),
            #[cfg(feature = "gpu")]
            Slots::Gpu(e) => Ok(e.truncate(i, n)?),
        }
    }

    /// Tokens slot `i` holds.
    pub fn pos(&self, i: usize) -> usize {
        match self {
            Slots::Cpu { caches, .. } | Slots::Paged { caches, .. } => caches[i].pos(),
            #[cfg(feature = "gpu")]
            Slots::Gpu(e) => e.pos(i),
        }
    }

    /// Tokens slot `i` takes in its next chunk.
    pub fn chunk_room(&self, i: usize) -> usize {
        match self {
            Slots::Cpu { caches, .. } | Slots::Paged { caches, .. } => caches[i].chunk_room(),
            #[cfg(feature = "gpu")]
            Slots::Gpu(e) => e.options().ctx - e.pos(i),
        }
    }

    /// Whether slot `i` has no room for another token.
    pub fn full(&self, i: usize) -> bool {
        match self {
            Slots::Cpu { caches, .. } | Slots::Paged { caches, .. } => {
                caches[i].pos() + 1 > caches[i].capacity()
            }
            #[cfg(feature = "gpu")]
            Slots::Gpu(e) => e.pos(i) + 1 > e.options().ctx,
        }
    }

    /// Advances each `(slot, tokens)` of `work` in one step; then
    /// [`Slots::logits`]`(k)` holds the logits after `work[k]`'s last token.
    /// An error changes nothing.
    pub fn step(&mut self, work: &[(usize, &[u32])]) -> Result<()> {
        match self {
            Slots::Cpu { batch, caches } => {
                let mut seqs = seqs_of(caches, work, None)?;
                Ok(batch.step(&mut seqs)?)
            }
            Slots::Paged { .. } => {
                let flags = vec![false; work.len()];
                self.step_drafts(work, &flags, &mut |_, _, _| {})
            }
            #[cfg(feature = "gpu")]
            Slots::Gpu(e) => Ok(e.step(work)?),
        }
    }

    /// [`Slots::step`] where `work[k]` is a generated token and its
    /// prompt-lookup drafts when `drafts[k]`, each in the arithmetic of a
    /// token fed alone: `emit(k, j, logits)` sees the logits after each
    /// token `j` of those, after the last token of the others.
    /// [`Slots::logits`] is not meaningful after it.
    pub fn step_drafts(
        &mut self,
        work: &[(usize, &[u32])],
        drafts: &[bool],
        emit: &mut dyn FnMut(usize, usize, &[f32]),
    ) -> Result<()> {
        anyhow::ensure!(
            drafts.len() == work.len(),
            "one flag per sequence of the step"
        );
        match self {
            Slots::Cpu { batch, caches } => {
                let mut seqs = seqs_of(caches, work, Some(drafts))?;
                Ok(batch.step_drafts(&mut seqs, emit)?)
            }
            Slots::Paged {
                batch,
                pool,
                caches,
                last,
            } => {
                let mut seqs = seqs_of(caches, work, Some(drafts))?;
                // Each work item's last logits stay for `Slots::logits`.
                let v = batch.config().vocab_size;
                last.resize(work.len() * v, 0.0);
                batch.step_pool(&mut seqs, pool, &mut |k, j, l| {
                    if j + 1 == work[k].1.len() {
                        last[k * v..(k + 1) * v].copy_from_slice(l);
                    }
                    emit(k, j, l)
                })?;
                Ok(())
            }
            #[cfg(feature = "gpu")]
            Slots::Gpu(e) => {
                e.step_drafts(work, drafts)?;
                let mut r = 0;
                for (k, (&(_, tokens), &d)) in work.iter().zip(drafts).enumerate() {
                    let first = if d { 0 } else { tokens.len() - 1 };
                    for j in first..tokens.len() {
                        emit(k, j, e.logits(r));
                        r += 1;
                    }
                }
                Ok(())
            }
        }
    }

    /// Positions slot `i` holds at most.
    pub fn capacity(&self, i: usize) -> usize {
        match self {
            Slots::Cpu { caches, .. } | Slots::Paged { caches, .. } => caches[i].capacity(),
            #[cfg(feature = "gpu")]
            Slots::Gpu(e) => {
                let _ = i;
                e.options().ctx
            }
        }
    }

    /// The logits after the last token of `work[k]` of the last step.
    pub fn logits(&self, k: usize) -> &[f32] {
        match self {
            Slots::Cpu { batch, .. } => batch.logits(k),
            Slots::Paged { batch, last, .. } => {
                let v = batch.config().vocab_size;
                last.get(k * v..(k + 1) * v).unwrap_or(&[])
            }
            #[cfg(feature = "gpu")]
            Slots::Gpu(e) => e.logits(k),
        }
    }

    /// What runs the arithmetic, for messages.
    pub fn engine_name(&self) -> String {
        match self {
            Slots::Cpu { batch, .. } | Slots::Paged { batch, .. } => {
                format!("{} kernels", batch.kernels().name)
            }
            #[cfg(feature = "gpu")]
            Slots::Gpu(e) => format!("GPU {}", e.device_name()),
        }
    }
}

/// The step's sequences: slot `i`'s cache and tokens for each `(i, tokens)`
/// of `work`, drafts ([`Seq::drafts`]) where `drafts` says so.
fn seqs_of<'a, 'c>(
    caches: &'a mut [KvCache<'c>],
    work: &[(usize, &'a [u32])],
    drafts: Option<&[bool]>,
) -> Result<Vec<Seq<'a, 'c>>> {
    let mut by_cache: Vec<Option<&mut KvCache<'c>>> = caches.iter_mut().map(Some).collect();
    let mut seqs = Vec::with_capacity(work.len());
    for (k, &(i, tokens)) in work.iter().enumerate() {
        let cache = by_cache
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| anyhow::anyhow!("slot {i} is out of range or twice in one step"))?;
        seqs.push(match drafts.and_then(|d| d.get(k)) {
            Some(true) => Seq::drafts(cache, tokens),
            _ => Seq::new(cache, tokens),
        });
    }
    Ok(seqs)
}

/// The memory of a pool of KV blocks ([`Slots::cpu_paged`]): keys and
/// values, each block's holders, the free list, and the slots' block
/// tables.
pub struct PoolMem<'a> {
    pub k: &'a mut [f32],
    pub v: &'a mut [f32],
    pub refs: &'a mut [u16],
    pub free: &'a mut [u32],
    pub tables: &'a mut [u32],
}

impl Slots<'_, '_> {
    /// The pool of a paged engine: blocks free, blocks in all, positions
    /// per block (`None`: the caches are not paged).
    pub fn blocks(&self) -> Option<(usize, usize, usize)> {
        match self {
            Slots::Paged { pool, .. } => Some((pool.free(), pool.len(), pool.block())),
            _ => None,
        }
    }

    /// Blocks slot `i` holds, and of those, blocks other slots share.
    pub fn held_blocks(&self, i: usize) -> (usize, usize) {
        match self {
            Slots::Paged { pool, caches, .. } => {
                let b = caches[i].blocks();
                (b.len(), b.iter().filter(|&&id| pool.refs(id) > 1).count())
            }
            _ => (0, 0),
        }
    }

    /// Makes the empty slot `dst` share slot `src`'s first positions (at
    /// most `n`, in whole blocks); the positions it now holds (0 where the
    /// caches are not paged).
    pub fn share(&mut self, dst: usize, src: usize, n: usize) -> Result<usize> {
        match self {
            Slots::Paged { pool, caches, .. } if dst != src => {
                let (a, b) = caches.split_at_mut(dst.max(src));
                let (d, s) = if dst < src {
                    (&mut a[dst], &b[0])
                } else {
                    (&mut b[0], &a[src])
                };
                Ok(pool.share(d, s, n)?)
            }
            _ => Ok(0),
        }
    }
}
