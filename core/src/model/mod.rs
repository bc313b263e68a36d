//! The decoder model of every family the core runs: config, weights, memory
//! plan and the forward pass.

#![forbid(unsafe_code)]

pub mod config;
pub mod llama;
mod scratch;
pub mod weights;

pub use config::Config;
pub use llama::{Batch, Llama, Seq, Session};
pub use weights::{LayerWeights, Weights};

use crate::error::{Cap, Error, Result};
use crate::kv_cache::{KvCache, KvOptions, Windows};

/// Largest KV capacity a plan accepts (positions).
pub const MAX_KV_CAPACITY: usize = 1 << 24;
/// Largest batch (tokens per forward call) a plan accepts.
pub const MAX_BATCH: usize = 1 << 16;
/// Most workers a plan makes room for.
pub const MAX_THREADS: usize = 1024;
/// Most sequences one batched step takes ([`Batch`]).
pub const MAX_SEQS: usize = 4096;

/// Every run-time buffer a session needs, computed before anything runs.
///
/// One f32 arena of [`MemoryPlan::f32_len`] elements holds the KV cache and all
/// scratch, so firmware can size a `static` and a host can report memory up
/// front. Nothing is allocated per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MemoryPlan {
    /// The cache's shape: sinks, element type, streaming or dense.
    pub kv: KvOptions,
    /// Tokens processed per forward chunk (prefill splits longer inputs).
    pub max_batch: usize,
    /// Workers that may split a forward step (each has its own scratch).
    pub threads: usize,
    /// Sequences one step may advance together (1 for a [`Session`]; a
    /// [`Batch`] serving several sequences at once has more).
    pub seqs: usize,
    /// f32 elements (4-byte words) of K (and of V), whatever the element type.
    pub kv_len: usize,
    /// f32 elements of scratch.
    pub scratch_len: usize,
    /// Whether prompt batches may take the decode arithmetic on packed Q8_0
    /// matrices ([`crate::kernels::Kernels::batches_packed`]), which needs activation blocks
    /// and matmul scratch for a whole batch, and the batch's activations
    /// transposed once for all workers on tables that take them so
    /// ([`crate::kernels::Kernels::takes_transposed`]). True from every constructor;
    /// [`MemoryPlan::without_packed_prefill`] turns it off for targets that
    /// never pack (firmware), whose plan then shrinks, and packed matrices
    /// then prefill through their plain rows.
    pub packed_prefill: bool,
}

impl MemoryPlan {
    /// The memory a session of `config` needs with a dense f32 KV cache of
    /// `kv_capacity` positions and forward chunks of up to `max_batch` tokens.
    pub fn new(config: &Config, kv_capacity: usize, max_batch: usize) -> Result<MemoryPlan> {
        Self::with_kv(config, KvOptions::dense(kv_capacity), max_batch)
    }

    /// The memory a session needs with the KV cache `kv` (streaming or dense,
    /// any element type).
    pub fn with_kv(config: &Config, kv: KvOptions, max_batch: usize) -> Result<MemoryPlan> {
        Self::with_threads(config, kv, max_batch, 1)
    }

    /// The memory a session needs when up to `threads` workers split each
    /// step (see [`crate::parallel`]): each has its own matmul and attention
    /// scratch.
    pub fn with_threads(
        config: &Config,
        kv: KvOptions,
        max_batch: usize,
        threads: usize,
    ) -> Result<MemoryPlan> {
        Self::batched(config, kv, max_batch, threads, 1)
    }

    /// The memory of a [`Batch`] that advances up to `seqs` sequences per
    /// step, `max_batch` tokens in all, each sequence with its own cache of
    /// shape `kv` ([`MemoryPlan::cache`]). [`MemoryPlan::scratch_len`]
    /// floats are the batch's own; each cache takes two [`MemoryPlan::kv_len`].
    pub fn batched(
        config: &Config,
        kv: KvOptions,
        max_batch: usize,
        threads: usize,
        seqs: usize,
    ) -> Result<MemoryPlan> {
        Self::build(config, kv, max_batch, threads, seqs, true)
    }

    /// This plan with [`MemoryPlan::packed_prefill`] off: prompt batches
    /// take the batched arithmetic on every matrix, packed or not, and the
    /// activation blocks and matmul scratch hold decode tokens only.
    pub fn without_packed_prefill(self, config: &Config) -> Result<MemoryPlan> {
        let off = MemoryPlan {
            packed_prefill: false,
            ..self
        };
        Self::rederive(config, &off)
    }

    /// Re-derives `plan` for `config` (sizes are never taken on trust).
    pub(crate) fn rederive(config: &Config, plan: &MemoryPlan) -> Result<MemoryPlan> {
        Self::build(
            config,
            plan.kv,
            plan.max_batch,
            plan.threads,
            plan.seqs,
            plan.packed_prefill,
        )
    }

    fn build(
        config: &Config,
        kv: KvOptions,
        max_batch: usize,
        threads: usize,
        seqs: usize,
        packed_prefill: bool,
    ) -> Result<MemoryPlan> {
        if seqs == 0 || seqs > MAX_SEQS {
            return Err(Error::CapExceeded {
                what: Cap::Sequences,
                found: seqs as u64,
                cap: MAX_SEQS as u64,
            });
        }
        if threads == 0 || threads > MAX_THREADS {
            return Err(Error::CapExceeded {
                what: Cap::Threads,
                found: threads as u64,
                cap: MAX_THREADS as u64,
            });
        }
        let kv_capacity = kv.capacity;
        if kv_capacity == 0 {
            return Err(Error::KvCapacityZero);
        }
        if kv.streaming && kv.sinks >= kv_capacity {
            return Err(Error::KvWindowZero);
        }
        if max_batch == 0 {
            return Err(Error::BatchZero);
        }
        if kv_capacity > MAX_KV_CAPACITY {
            return Err(Error::CapExceeded {
                what: Cap::KvCapacity,
                found: kv_capacity as u64,
                cap: MAX_KV_CAPACITY as u64,
            });
        }
        if max_batch > MAX_BATCH {
            return Err(Error::CapExceeded {
                what: Cap::Batch,
                found: max_batch as u64,
                cap: MAX_BATCH as u64,
            });
        }
        if kv.ty.row_bytes(config.kv_dim()).is_none() || kv.ty.row_bytes(config.head_dim).is_none()
        {
            return Err(Error::KvTypeUnsupported {
                kv_dim: config.kv_dim() as u32,
            });
        }
        let overflow = Error::CapExceeded {
            what: Cap::KvCapacity,
            found: kv_capacity as u64,
            cap: MAX_KV_CAPACITY as u64,
        };
        let win = Windows::new(config.window_layers, config.window, max_batch, &kv);
        let kv_bytes =
            KvCache::bytes_windowed(&kv, config.n_layers, config.kv_dim(), &win).ok_or(overflow)?;
        let kv_len = kv_bytes.div_ceil(4);
        let scratch_len = scratch::Dims::new(
            config,
            kv_capacity.max(win.ring),
            max_batch,
            threads,
            seqs,
            packed_prefill,
        )
        .and_then(|d| scratch::ScratchSizes::new(&d))
        .and_then(|s| s.total())
        .ok_or(overflow)?;
        // The arena must be addressable in bytes too.
        kv_len
            .checked_mul(2)
            .and_then(|n| n.checked_add(scratch_len))
            .and_then(|n| n.checked_mul(4))
            .ok_or(overflow)?;
        Ok(MemoryPlan {
            kv,
            max_batch,
            threads,
            seqs,
            kv_len,
            scratch_len,
            packed_prefill,
        })
    }

    /// A KV cache of this plan's shape for `config` over `k` and `v` (each
    /// at least [`MemoryPlan::kv_len`] floats): one sequence of a [`Batch`].
    pub fn cache<'a>(
        &self,
        config: &Config,
        k: &'a mut [f32],
        v: &'a mut [f32],
    ) -> Result<KvCache<'a>> {
        KvCache::windowed(
            crate::quant::as_bytes_mut(k),
            crate::quant::as_bytes_mut(v),
            self.kv,
            config.n_layers,
            config.kv_dim(),
            self.windows(config),
        )
    }

    /// The windowed layers of `config` and their rings under this plan.
    pub fn windows(&self, config: &Config) -> Windows {
        Windows::new(
            config.window_layers,
            config.window,
            self.max_batch,
            &self.kv,
        )
    }

    /// Most cache slots one query of `config` scores.
    pub(crate) fn score_slots(&self, config: &Config) -> usize {
        self.kv.capacity.max(self.windows(config).ring)
    }

    /// Bytes the KV cache would take if every layer kept every position
    /// (what the windowed layers' rings save is this minus
    /// [`MemoryPlan::kv_bytes`]).
    pub fn kv_bytes_unwindowed(&self, config: &Config) -> usize {
        KvCache::bytes(&self.kv, config.n_layers, config.kv_dim())
            .map_or(usize::MAX, |b| 2 * b.div_ceil(4) * 4)
    }

    /// Positions the KV cache holds.
    pub fn kv_capacity(&self) -> usize {
        self.kv.capacity
    }

    /// f32 elements of the whole arena (K, V, scratch).
    pub fn f32_len(&self) -> usize {
        2 * self.kv_len + self.scratch_len
    }

    /// Bytes of the whole arena.
    pub fn bytes(&self) -> usize {
        self.f32_len() * 4
    }

    /// Bytes of the KV cache alone.
    pub fn kv_bytes(&self) -> usize {
        2 * self.kv_len * 4
    }

    /// Allocates a zeroed arena for this plan.
    #[cfg(feature = "alloc")]
    pub fn alloc(&self) -> alloc::vec::Vec<f32> {
        alloc::vec![0.0; self.f32_len()]
    }
}

#[cfg(feature = "alloc")]
extern crate alloc;
