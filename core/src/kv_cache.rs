//! The KV cache: keys and values for every layer, in caller memory, as a
//! fixed-capacity ring with attention sinks (StreamingLLM).
//!
//! Layout per tensor: (n_layers, capacity, row) where a row is one position's
//! `kv_dim` elements in the cache's element type (f32, f16 or q8_0 blocks).
//!
//! Slots: token `t` (its absolute position in the sequence) lives in slot `t`
//! while `t < sinks`; after that in `sinks + (t - sinks) % window`, where
//! `window = capacity - sinks`. Until `capacity` tokens have been seen, slot =
//! position and the cache is plain dense attention. A *streaming* cache then
//! keeps going: each new token overwrites the oldest non-sink token, and the
//! first `sinks` tokens stay forever. A *dense* cache refuses to overflow
//! (`KvCacheFull`), raised before anything is written.
//!
//! Positions for RoPE are positions inside the cache, as StreamingLLM assigns
//! them. Sinks sit at 0..sinks, the window follows in order of age, and the
//! query is at the last position, so no query-key distance exceeds the
//! capacity. Keys are stored already rotated at their absolute position, and
//! nothing is re-rotated, because:
//! - a window key and the query are both shifted by the same amount when they
//!   are renumbered into the cache, and RoPE scores depend only on the distance
//!   between the two, so rotating both at absolute positions gives exactly the
//!   in-cache distance;
//! - sink keys keep their own positions `0..sinks`, so for them the query is
//!   rotated a second time, at its in-cache position `capacity - 1` (see
//!   [`KvCache::query_cache_pos`]).
//!
//! The alternatives cost more. Storing keys unrotated and rotating on every
//! read touches `capacity × kv_dim` values per layer and token. Re-rotating
//! on eviction touches the whole window each step. This way a step rotates
//! one extra query vector.

use half::f16;

use crate::error::{Error, Result};
use crate::quant::q8_0::QK;
use crate::quant::{self, cast_slice, cast_slice_mut, BlockQ8_0};

/// Element type of cached keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum KvType {
    F32,
    F16,
    /// ggml's Q8_0 blocks (32 int8 values and an f16 scale); each head's
    /// slice must be a whole number of blocks.
    Q8_0,
}

impl KvType {
    pub const fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
        }
    }

    pub fn from_name(s: &str) -> Option<KvType> {
        match s {
            "f32" => Some(KvType::F32),
            "f16" => Some(KvType::F16),
            "q8_0" => Some(KvType::Q8_0),
            _ => None,
        }
    }

    /// Bytes of one position's `kv_dim` elements (`None`: not representable).
    pub fn row_bytes(self, kv_dim: usize) -> Option<usize> {
        match self {
            KvType::F32 => kv_dim.checked_mul(4),
            KvType::F16 => kv_dim.checked_mul(2),
            KvType::Q8_0 if kv_dim.is_multiple_of(QK) => {
                (kv_dim / QK).checked_mul(core::mem::size_of::<BlockQ8_0>())
            }
            KvType::Q8_0 => None,
        }
    }
}

/// The shape of a cache: how many positions, how many of them are sinks,
/// the element type, and whether it streams past its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct KvOptions {
    /// Positions held: `sinks + window`.
    pub capacity: usize,
    /// Leading tokens kept forever once the cache streams.
    pub sinks: usize,
    pub ty: KvType,
    /// Evict the oldest non-sink token when full, instead of refusing.
    pub streaming: bool,
}

impl KvOptions {
    /// A dense f32 cache of `capacity` positions that refuses to overflow.
    pub const fn dense(capacity: usize) -> KvOptions {
        KvOptions {
            capacity,
            sinks: 0,
            ty: KvType::F32,
            streaming: false,
        }
    }

    /// A streaming f32 cache: `sinks` kept forever plus the latest `window`.
    pub const fn streaming(sinks: usize, window: usize) -> KvOptions {
        KvOptions {
            capacity: sinks.saturating_add(window),
            sinks,
            ty: KvType::F32,
            streaming: true,
        }
    }

    /// The same shape with another element type.
    pub const fn with_type(self, ty: KvType) -> KvOptions {
        KvOptions { ty, ..self }
    }

    /// Non-sink positions.
    pub const fn window(&self) -> usize {
        self.capacity.saturating_sub(self.sinks)
    }
}

/// Layers that attend within a sliding window, and how their keys are
/// kept. A windowed layer's query at position `t` sees positions
/// `t + 1 - window ..= t`; its keys live in a ring of [`Windows::ring`]
/// slots (the window, plus room for the other tokens of a chunk, whose keys
/// are stored before any of them attends), so its memory does not grow
/// with the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Windows {
    /// Bit `l`: layer `l` is windowed.
    pub layers: u128,
    /// Positions a windowed layer's query sees, itself included.
    pub window: usize,
    /// Slots of each windowed layer's ring; 0 when a dense cache is no
    /// longer than the ring would be, and the windowed layers keep every
    /// position as the others do (and mask the old ones).
    pub ring: usize,
}

impl Windows {
    /// No windowed layer.
    pub const NONE: Windows = Windows {
        layers: 0,
        window: 0,
        ring: 0,
    };

    /// Windowed `layers` (bit per layer) of `window` positions, for a cache
    /// of shape `opt` taking chunks of up to `max_batch` tokens.
    pub fn new(layers: u128, window: usize, max_batch: usize, opt: &KvOptions) -> Windows {
        if layers == 0 || window == 0 {
            return Windows::NONE;
        }
        let ring = window.saturating_add(max_batch.max(1) - 1);
        let ring = if opt.streaming || ring < opt.capacity {
            ring
        } else {
            0
        };
        Windows {
            layers,
            window,
            ring,
        }
    }

    /// Whether layer `l` attends within the window.
    #[inline(always)]
    pub fn windowed(&self, l: usize) -> bool {
        l < 128 && (self.layers >> l) & 1 == 1
    }

    /// Whether layer `l` keeps its keys in a ring.
    #[inline(always)]
    fn ringed(&self, l: usize) -> bool {
        self.ring > 0 && self.windowed(l)
    }

    /// Ringed layers below `l`.
    fn ringed_below(&self, l: usize) -> usize {
        if self.ring == 0 {
            return 0;
        }
        let below = if l >= 128 {
            u128::MAX
        } else {
            (1u128 << l) - 1
        };
        (self.layers & below).count_ones() as usize
    }
}

/// Which slots of a windowed layer a query sees: those whose position is in
/// `lo..=hi`. A ring's slot `s` holds the latest position `<= newest` that
/// is `s` modulo `ring` (`ring` 0: slot and position are one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotMask {
    pub lo: usize,
    pub hi: usize,
    pub newest: usize,
    pub ring: usize,
}

impl SlotMask {
    /// Whether the query sees slot `s` (`s <= newest`).
    #[inline(always)]
    pub fn keeps(&self, s: usize) -> bool {
        let pos = if self.ring == 0 {
            s
        } else {
            self.newest - (self.newest - s) % self.ring
        };
        pos >= self.lo && pos <= self.hi
    }
}

/// What a query at one position reads of one layer: slots `0..n`, the first
/// `sinks` of them scored with the sink query, those outside `mask` not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerView {
    pub n: usize,
    pub sinks: usize,
    pub mask: Option<SlotMask>,
}

/// One layer's cached rows, typed.
#[derive(Debug, Clone, Copy)]
pub enum KvRows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Q8_0(&'a [BlockQ8_0]),
}

/// Where a cache's rows live.
#[derive(Debug)]
enum Store<'a> {
    /// Its own memory: per layer (capacity or ring, row_bytes).
    Dense { k: &'a mut [u8], v: &'a mut [u8] },
    /// Blocks of a [`KvPool`]: `table[b]` is the pool block holding slots
    /// `b * block..(b + 1) * block` of every layer; the first `held`
    /// entries are taken.
    Paged {
        table: &'a mut [u32],
        held: usize,
        block: usize,
    },
}

#[derive(Debug)]
pub struct KvCache<'a> {
    store: Store<'a>,
    opt: KvOptions,
    win: Windows,
    n_layers: usize,
    kv_dim: usize,
    row_bytes: usize,
    /// Tokens seen: the absolute position of the next token.
    pos: usize,
}

impl<'a> KvCache<'a> {
    /// Bytes of one of K or V.
    pub fn bytes(opt: &KvOptions, n_layers: usize, kv_dim: usize) -> Option<usize> {
        Self::bytes_windowed(opt, n_layers, kv_dim, &Windows::NONE)
    }

    /// Bytes of one of K or V when the layers of `win` keep rings.
    pub fn bytes_windowed(
        opt: &KvOptions,
        n_layers: usize,
        kv_dim: usize,
        win: &Windows,
    ) -> Option<usize> {
        let ringed = win.ringed_below(n_layers).min(n_layers);
        let slots = (n_layers - ringed)
            .checked_mul(opt.capacity)?
            .checked_add(ringed.checked_mul(win.ring)?)?;
        slots.checked_mul(opt.ty.row_bytes(kv_dim)?)
    }

    /// A cache over `k` and `v`, each at least [`KvCache::bytes`] long and
    /// aligned for the element type.
    pub fn new(
        k: &'a mut [u8],
        v: &'a mut [u8],
        opt: KvOptions,
        n_layers: usize,
        kv_dim: usize,
    ) -> Result<Self> {
        Self::windowed(k, v, opt, n_layers, kv_dim, Windows::NONE)
    }

    /// A cache whose layers in `win` attend within a window, each over at
    /// least [`KvCache::bytes_windowed`] bytes.
    pub fn windowed(
        k: &'a mut [u8],
        v: &'a mut [u8],
        opt: KvOptions,
        n_layers: usize,
        kv_dim: usize,
        win: Windows,
    ) -> Result<Self> {
        if opt.capacity == 0 {
            return Err(Error::KvCapacityZero);
        }
        if opt.sinks >= opt.capacity && opt.streaming {
            return Err(Error::KvWindowZero);
        }
        let row_bytes = opt.ty.row_bytes(kv_dim).ok_or(Error::KvTypeUnsupported {
            kv_dim: kv_dim as u32,
        })?;
        let need =
            Self::bytes_windowed(&opt, n_layers, kv_dim, &win).ok_or(Error::BufferTooSmall {
                needed: u64::MAX,
                found: k.len() as u64,
            })?;
        let found = k.len().min(v.len());
        if found < need {
            return Err(Error::BufferTooSmall {
                needed: need as u64,
                found: found as u64,
            });
        }
        Ok(KvCache {
            store: Store::Dense {
                k: &mut k[..need],
                v: &mut v[..need],
            },
            opt,
            win,
            n_layers,
            kv_dim,
            row_bytes,
            pos: 0,
        })
    }

    pub fn options(&self) -> &KvOptions {
        &self.opt
    }

    /// The windowed layers and their rings.
    pub fn windows(&self) -> &Windows {
        &self.win
    }

    pub fn capacity(&self) -> usize {
        self.opt.capacity
    }

    /// Positions currently held (at most the capacity).
    pub fn len(&self) -> usize {
        self.pos.min(self.opt.capacity)
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Tokens seen so far (the absolute position of the next token).
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Whether any token has been evicted.
    pub fn evicted(&self) -> bool {
        self.pos > self.opt.capacity
    }

    /// Forgets every position (the memory is reused as is).
    pub fn clear(&mut self) {
        self.pos = 0;
    }

    /// Makes this cache hold what `other` holds (beam search forks sequences).
    /// Both must have the same shape.
    pub fn copy_from(&mut self, other: &KvCache<'_>) -> Result<()> {
        let (
            Store::Dense { k, v },
            Store::Dense {
                k: other_k,
                v: other_v,
            },
        ) = (&mut self.store, &other.store)
        else {
            return Err(Error::KvPaged);
        };
        if other.opt != self.opt
            || other.win != self.win
            || other.n_layers != self.n_layers
            || other.kv_dim != self.kv_dim
        {
            return Err(Error::LengthMismatch {
                expected: k.len() as u64,
                found: other_k.len() as u64,
            });
        }
        for l in 0..self.n_layers {
            let held = if self.win.ringed(l) {
                other.pos.min(self.win.ring)
            } else {
                other.len()
            };
            let r = layer_bytes(&self.opt, &self.win, self.row_bytes, l);
            let r = r.start..r.start + held * self.row_bytes;
            k[r.clone()].copy_from_slice(&other_k[r.clone()]);
            v[r.clone()].copy_from_slice(&other_v[r]);
        }
        self.pos = other.pos;
        Ok(())
    }

    /// Forgets positions from `n` on. Tokens that were evicted cannot come
    /// back, so after an eviction only `n >= pos` (no change) is possible.
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        // A ring keeps the window and a chunk's room: going back further
        // would need keys it has overwritten.
        let ring_lost = self.win.ring > 0
            && self.pos > self.win.ring
            && self.pos - n > self.win.ring - self.win.window;
        if n < self.pos && (self.evicted() || ring_lost) {
            return Err(Error::KvCacheFull {
                capacity: self.opt.capacity as u32,
                needed: self.pos as u64,
            });
        }
        self.pos = self.pos.min(n);
        Ok(())
    }

    /// Errors unless `n` more positions can be written: always possible when
    /// streaming, else they must fit.
    pub fn reserve(&self, n: usize) -> Result<()> {
        let needed = self.pos as u64 + n as u64;
        if !self.opt.streaming && needed > self.opt.capacity as u64 {
            return Err(Error::KvCacheFull {
                capacity: self.opt.capacity as u32,
                needed,
            });
        }
        Ok(())
    }

    /// Tokens a forward chunk starting now may hold without a token of the
    /// chunk evicting one that an earlier token of the same chunk still sees:
    /// the room left before the capacity, or one token at a time after it.
    pub fn chunk_room(&self) -> usize {
        if self.pos < self.opt.capacity {
            self.opt.capacity - self.pos
        } else {
            1
        }
    }

    /// Marks `n` more positions as written.
    pub(crate) fn advance(&mut self, n: usize) {
        self.pos += n;
    }

    /// The slot of the token at absolute position `t`.
    #[inline(always)]
    pub fn slot(&self, t: usize) -> usize {
        let s = self.opt.sinks;
        if t < self.opt.capacity || t < s {
            t
        } else {
            s + (t - s) % self.opt.window()
        }
    }

    /// Slots a query at absolute position `t` attends to (after its own K/V
    /// are stored): `0..visible(t)`.
    #[inline(always)]
    pub fn visible(&self, t: usize) -> usize {
        (t + 1).min(self.opt.capacity)
    }

    /// The query's position inside the cache: where sink keys see it from.
    /// Equal to `t` until the first eviction.
    #[inline(always)]
    pub fn query_cache_pos(&self, t: usize) -> usize {
        t.min(self.opt.capacity - 1)
    }

    /// Sinks whose keys need the query at its in-cache position (0 until
    /// the first eviction, when in-cache and absolute positions agree).
    #[inline(always)]
    pub fn sinks_for(&self, t: usize) -> usize {
        if t >= self.opt.capacity {
            self.opt.sinks
        } else {
            0
        }
    }

    /// The slot of the token at absolute position `t` in `layer`.
    #[inline(always)]
    pub fn slot_in(&self, layer: usize, t: usize) -> usize {
        if self.win.ringed(layer) {
            t % self.win.ring
        } else {
            self.slot(t)
        }
    }

    /// What the query at absolute position `t` reads of `layer`, once the
    /// tokens of its chunk up to `newest` are stored.
    #[inline]
    pub fn view(&self, layer: usize, t: usize, newest: usize) -> LayerView {
        if !self.win.windowed(layer) {
            return LayerView {
                n: self.visible(t),
                sinks: self.sinks_for(t),
                mask: None,
            };
        }
        let (n, ring) = if self.win.ring > 0 {
            ((newest + 1).min(self.win.ring), self.win.ring)
        } else {
            (self.visible(t), 0)
        };
        LayerView {
            n,
            sinks: 0,
            mask: Some(SlotMask {
                lo: (t + 1).saturating_sub(self.win.window),
                hi: t,
                newest,
                ring,
            }),
        }
    }

    /// Writes the key and value of absolute position `t` in `layer` (a
    /// dense cache; a paged one writes through [`KvCache::store_in`]).
    pub fn store(&mut self, layer: usize, t: usize, k: &[f32], v: &[f32]) -> Result<()> {
        self.store_in(None, layer, t, k, v)
    }

    /// Writes the key and value of absolute position `t` in `layer`, in
    /// `pool`'s blocks for a paged cache. The block must be this cache's
    /// alone ([`KvPool::grow`] makes it so before a step).
    pub fn store_in(
        &mut self,
        pool: Option<&mut KvPool<'_>>,
        layer: usize,
        t: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<()> {
        if layer >= self.n_layers {
            return Err(Error::LengthMismatch {
                expected: self.n_layers as u64,
                found: layer as u64,
            });
        }
        let slot = self.slot_in(layer, t);
        let (rb, kd, ty) = (self.row_bytes, self.kv_dim, self.opt.ty);
        let (dk, dv, off) = match (&mut self.store, pool) {
            (Store::Dense { k, v }, _) => {
                let off = layer_bytes(&self.opt, &self.win, rb, layer).start + slot * rb;
                (&mut **k, &mut **v, off)
            }
            (Store::Paged { table, held, block }, Some(pool)) => {
                let b = slot / *block;
                let id = match table.get(b) {
                    Some(&id) if b < *held && pool.refs(id) == 1 => id as usize,
                    _ => return Err(Error::KvPoolFull { needed: 1, free: 0 }),
                };
                let off = pool.row_at(id, layer, slot % *block);
                (&mut *pool.k, &mut *pool.v, off)
            }
            (Store::Paged { .. }, None) => return Err(Error::KvPaged),
        };
        for (dst, src) in [(dk, k), (dv, v)] {
            let row = dst.get_mut(off..off + rb).ok_or(Error::BufferTooSmall {
                needed: (off + rb) as u64,
                found: 0,
            })?;
            let src = src.get(..kd).ok_or(Error::LengthMismatch {
                expected: kd as u64,
                found: src.len() as u64,
            })?;
            match ty {
                KvType::F32 => cast_slice_mut::<f32>(row)?.copy_from_slice(src),
                KvType::F16 => quant::f16::quantize_row(src, cast_slice_mut::<f16>(row)?),
                KvType::Q8_0 => quant::q8_0::quantize_row(src, cast_slice_mut::<BlockQ8_0>(row)?),
            }
        }
        Ok(())
    }

    /// Keys and values of `layer`, every slot, typed (a dense cache).
    pub fn layer(&self, layer: usize) -> Result<(KvRows<'_>, KvRows<'_>)> {
        self.rows(None, layer)?.run(0)
    }

    /// Keys and values of `layer` in runs of slots: the whole layer for a
    /// dense cache, a block at a time from `pool` for a paged one.
    pub fn rows<'p>(&'p self, pool: Option<&'p KvPool<'_>>, layer: usize) -> Result<LayerRows<'p>> {
        if layer >= self.n_layers {
            return Err(Error::LengthMismatch {
                expected: self.n_layers as u64,
                found: layer as u64,
            });
        }
        let ty = self.opt.ty;
        match (&self.store, pool) {
            (Store::Dense { k, v }, _) => {
                let r = layer_bytes(&self.opt, &self.win, self.row_bytes, layer);
                Ok(LayerRows {
                    k: &k[r.clone()],
                    v: &v[r.clone()],
                    table: &[],
                    run: usize::MAX,
                    stride: 0,
                    at: 0,
                    run_bytes: r.len(),
                    ty,
                })
            }
            (Store::Paged { table, held, block }, Some(pool)) => Ok(LayerRows {
                k: pool.k,
                v: pool.v,
                table: &table[..*held],
                run: *block,
                stride: pool.block_bytes,
                at: pool.row_at(0, layer, 0),
                run_bytes: *block * self.row_bytes,
                ty,
            }),
            (Store::Paged { .. }, None) => Err(Error::KvPaged),
        }
    }

    pub fn n_layers(&self) -> usize {
        self.n_layers
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// Bytes of one position's row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// A paged cache over `table` (block ids, one per `block` slots of
    /// the cache: at least [`KvCache::table_len`] entries), holding no
    /// position and no block; [`KvPool::grow`] gives it blocks.
    pub fn paged(
        table: &'a mut [u32],
        block: usize,
        opt: KvOptions,
        n_layers: usize,
        kv_dim: usize,
        win: Windows,
    ) -> Result<Self> {
        if opt.capacity == 0 || block == 0 {
            return Err(Error::KvCapacityZero);
        }
        if opt.sinks >= opt.capacity && opt.streaming {
            return Err(Error::KvWindowZero);
        }
        let row_bytes = opt.ty.row_bytes(kv_dim).ok_or(Error::KvTypeUnsupported {
            kv_dim: kv_dim as u32,
        })?;
        let need = Self::table_len(&opt, &win, block);
        if table.len() < need {
            return Err(Error::BufferTooSmall {
                needed: need as u64,
                found: table.len() as u64,
            });
        }
        Ok(KvCache {
            store: Store::Paged {
                table: &mut table[..need],
                held: 0,
                block,
            },
            opt,
            win,
            n_layers,
            kv_dim,
            row_bytes,
            pos: 0,
        })
    }

    /// Block-table entries a paged cache of shape `opt` needs: one per
    /// `block` slots of the longest layer.
    pub fn table_len(opt: &KvOptions, win: &Windows, block: usize) -> usize {
        Self::blocks_held(opt, win, usize::MAX, block)
    }

    /// Whether the cache's rows live in a [`KvPool`].
    pub fn is_paged(&self) -> bool {
        matches!(self.store, Store::Paged { .. })
    }

    /// The pool blocks a paged cache holds, in slot order (empty for a
    /// dense one).
    pub fn blocks(&self) -> &[u32] {
        match &self.store {
            Store::Paged { table, held, .. } => &table[..*held],
            Store::Dense { .. } => &[],
        }
    }

    /// The slots position `t` is written to: its plain layers' slot, and
    /// its ringed layers' (the same twice where there is no ring).
    fn written_slots(&self, t: usize) -> [usize; 2] {
        let plain = self.slot(t);
        let ringed = if self.win.ring > 0 {
            t % self.win.ring
        } else {
            plain
        };
        [plain, ringed]
    }

    /// Table entries that positions `0..n` use: the slots of every layer's
    /// tokens among them, in blocks of `block`.
    fn blocks_for(&self, n: usize, block: usize) -> usize {
        Self::blocks_held(&self.opt, &self.win, n, block)
    }

    /// Blocks of `block` slots that a paged cache of shape `opt` (and
    /// windowed layers `win`) holds once it has seen `n` positions: its
    /// plain layers' slots (at most the capacity) or its rings' (at most
    /// the ring), whichever reach further.
    pub fn blocks_held(opt: &KvOptions, win: &Windows, n: usize, block: usize) -> usize {
        let ring = if win.ring > 0 { n.min(win.ring) } else { 0 };
        n.min(opt.capacity).max(ring).div_ceil(block.max(1))
    }
}

/// Byte range of `layer` in a dense cache's memory.
fn layer_bytes(
    opt: &KvOptions,
    win: &Windows,
    row_bytes: usize,
    layer: usize,
) -> core::ops::Range<usize> {
    let ringed = win.ringed_below(layer);
    let start = (layer - ringed) * opt.capacity + ringed * win.ring;
    let len = if win.ringed(layer) {
        win.ring
    } else {
        opt.capacity
    };
    start * row_bytes..(start + len) * row_bytes
}

/// One layer's cached rows in runs of slots: run `i` holds slots
/// `i * run_len()..` (fewer in the last). A dense cache is one run; a
/// paged one a run per block.
#[derive(Debug, Clone, Copy)]
pub struct LayerRows<'a> {
    k: &'a [u8],
    v: &'a [u8],
    /// Paged: the pool blocks, in slot order.
    table: &'a [u32],
    run: usize,
    /// Paged: bytes of one pool block, and the layer's offset in it.
    stride: usize,
    at: usize,
    run_bytes: usize,
    ty: KvType,
}

impl<'a> LayerRows<'a> {
    /// One run over `k` and `v` (rows of the same type).
    pub fn one(k: KvRows<'a>, v: KvRows<'a>) -> Result<LayerRows<'a>> {
        let (k, v, ty) = match (k, v) {
            (KvRows::F32(k), KvRows::F32(v)) => {
                (quant::as_bytes(k), quant::as_bytes(v), KvType::F32)
            }
            (KvRows::F16(k), KvRows::F16(v)) => {
                (quant::as_bytes(k), quant::as_bytes(v), KvType::F16)
            }
            (KvRows::Q8_0(k), KvRows::Q8_0(v)) => {
                (quant::as_bytes(k), quant::as_bytes(v), KvType::Q8_0)
            }
            _ => return Err(Error::KvPaged),
        };
        Ok(LayerRows {
            k,
            v,
            table: &[],
            run: usize::MAX,
            stride: 0,
            at: 0,
            run_bytes: k.len().min(v.len()),
            ty,
        })
    }

    /// Slots per run (`usize::MAX`: one run holds them all).
    pub fn run_len(&self) -> usize {
        self.run
    }

    /// Keys and values of run `i`, typed.
    pub fn run(&self, i: usize) -> Result<(KvRows<'a>, KvRows<'a>)> {
        let r = if self.table.is_empty() && self.run == usize::MAX {
            0..self.run_bytes
        } else {
            let id = *self.table.get(i).ok_or(Error::KvPaged)? as usize;
            let start = id * self.stride + self.at;
            start..start + self.run_bytes
        };
        let bad = Error::BufferTooSmall {
            needed: r.end as u64,
            found: self.k.len().min(self.v.len()) as u64,
        };
        let (k, v) = (self.k.get(r.clone()).ok_or(bad)?, self.v.get(r).ok_or(bad)?);
        Ok(match self.ty {
            KvType::F32 => (KvRows::F32(cast_slice(k)?), KvRows::F32(cast_slice(v)?)),
            KvType::F16 => (KvRows::F16(cast_slice(k)?), KvRows::F16(cast_slice(v)?)),
            KvType::Q8_0 => (KvRows::Q8_0(cast_slice(k)?), KvRows::Q8_0(cast_slice(v)?)),
        })
    }
}

/// Keys and values in fixed-size blocks shared by many caches (paged
/// attention): one pool in caller memory, a block table per sequence
/// ([`KvCache::paged`]). A block holds `block` slots of every layer. A
/// sequence takes blocks as it grows ([`KvPool::grow`]) and gives them
/// back when it ends or shrinks; sequences that share a prefix share its
/// whole blocks ([`KvPool::share`]), copied before either writes into one
/// (copy on write). Nothing here allocates.
#[derive(Debug)]
pub struct KvPool<'a> {
    k: &'a mut [u8],
    v: &'a mut [u8],
    /// Caches holding each block (0: free).
    refs: &'a mut [u16],
    /// Free blocks, a stack: `free[..n_free]`.
    free: &'a mut [u32],
    n_free: usize,
    block: usize,
    n_layers: usize,
    row_bytes: usize,
    block_bytes: usize,
}

impl<'a> KvPool<'a> {
    /// Bytes of one of K or V for one block of `block` slots.
    pub fn block_bytes(block: usize, n_layers: usize, row_bytes: usize) -> Option<usize> {
        block.checked_mul(n_layers)?.checked_mul(row_bytes)
    }

    /// A pool of `n_blocks` blocks over `k` and `v` (each at least
    /// `n_blocks` × [`KvPool::block_bytes`], aligned for the element type)
    /// with `refs` and `free` (at least `n_blocks` entries each) for its
    /// bookkeeping. Every block starts free.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        k: &'a mut [u8],
        v: &'a mut [u8],
        refs: &'a mut [u16],
        free: &'a mut [u32],
        n_blocks: usize,
        block: usize,
        n_layers: usize,
        row_bytes: usize,
    ) -> Result<Self> {
        if n_blocks == 0 || block == 0 || n_blocks > u32::MAX as usize {
            return Err(Error::KvCapacityZero);
        }
        let block_bytes =
            Self::block_bytes(block, n_layers, row_bytes).ok_or(Error::BufferTooSmall {
                needed: u64::MAX,
                found: k.len() as u64,
            })?;
        let need = block_bytes
            .checked_mul(n_blocks)
            .ok_or(Error::BufferTooSmall {
                needed: u64::MAX,
                found: k.len() as u64,
            })?;
        let found = k.len().min(v.len());
        if found < need || refs.len() < n_blocks || free.len() < n_blocks {
            return Err(Error::BufferTooSmall {
                needed: need as u64,
                found: found as u64,
            });
        }
        let refs = &mut refs[..n_blocks];
        refs.fill(0);
        let free = &mut free[..n_blocks];
        // Lowest ids on top, so blocks are taken in order.
        for (i, f) in free.iter_mut().enumerate() {
            *f = (n_blocks - 1 - i) as u32;
        }
        Ok(KvPool {
            k: &mut k[..need],
            v: &mut v[..need],
            refs,
            free,
            n_free: n_blocks,
            block,
            n_layers,
            row_bytes,
            block_bytes,
        })
    }

    /// Slots per block.
    pub fn block(&self) -> usize {
        self.block
    }

    /// Blocks in all.
    pub fn len(&self) -> usize {
        self.refs.len()
    }

    /// Whether the pool has no block (never: [`KvPool::new`] refuses).
    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// Blocks no cache holds.
    pub fn free(&self) -> usize {
        self.n_free
    }

    /// Caches holding block `id`.
    pub fn refs(&self, id: u32) -> u16 {
        self.refs.get(id as usize).copied().unwrap_or(0)
    }

    /// Byte offset of slot `s` of `layer` in block `id`.
    fn row_at(&self, id: usize, layer: usize, s: usize) -> usize {
        id * self.block_bytes + (layer * self.block + s) * self.row_bytes
    }

    fn fits(&self, c: &KvCache<'_>) -> Result<()> {
        match &c.store {
            Store::Paged { block, .. }
                if *block == self.block
                    && c.n_layers == self.n_layers
                    && c.row_bytes == self.row_bytes =>
            {
                Ok(())
            }
            _ => Err(Error::KvPaged),
        }
    }

    /// New blocks [`KvPool::grow`]`(c, n)` would take: table entries the
    /// next `n` positions reach beyond those held, and held blocks they
    /// write into that other caches share (copied first).
    pub fn needs(&self, c: &KvCache<'_>, n: usize) -> Result<usize> {
        self.fits(c)?;
        let Store::Paged { table, held, block } = &c.store else {
            return Err(Error::KvPaged);
        };
        let (block, held) = (*block, *held);
        let want = c.blocks_for(c.pos + n, block).max(held);
        if want > table.len() {
            return Err(Error::KvCacheFull {
                capacity: c.opt.capacity as u32,
                needed: (c.pos + n) as u64,
            });
        }
        // The shared blocks the next `n` positions write into, each once:
        // the same slots `grow` visits. Past `SEEN` distinct ones, every
        // further hit counts (more than grow takes, never fewer).
        const SEEN: usize = 16;
        let (mut seen, mut n_seen, mut copies) = ([0usize; SEEN], 0, 0);
        for t in c.pos..c.pos + n {
            for s in c.written_slots(t) {
                let b = s / block;
                if b >= held || self.refs(table[b]) <= 1 || seen[..n_seen].contains(&b) {
                    continue;
                }
                copies += 1;
                if n_seen < SEEN {
                    seen[n_seen] = b;
                    n_seen += 1;
                }
            }
        }
        Ok(want - held + copies)
    }

    /// Makes room in `c` for its next `n` positions: blocks for the table
    /// entries they reach, and a copy of every shared block they write
    /// into. An error (`KvPoolFull`) changes nothing.
    pub fn grow(&mut self, c: &mut KvCache<'_>, n: usize) -> Result<()> {
        let need = self.needs(c, n)?;
        if need > self.n_free {
            return Err(Error::KvPoolFull {
                needed: need as u32,
                free: self.n_free as u32,
            });
        }
        let pos = c.pos;
        let want = c.blocks_for(pos + n, self.block);
        for t in pos..pos + n {
            let slots = c.written_slots(t);
            let Store::Paged { table, held, .. } = &mut c.store else {
                return Err(Error::KvPaged);
            };
            for s in slots {
                let b = s / self.block;
                if b < *held && self.refs[table[b] as usize] > 1 {
                    if self.n_free == 0 {
                        // `needs` counts at least what this takes.
                        return Err(Error::KvPoolFull { needed: 1, free: 0 });
                    }
                    let copy = self.take();
                    self.copy_block(table[b] as usize, copy as usize);
                    self.refs[table[b] as usize] -= 1;
                    table[b] = copy;
                }
            }
        }
        let Store::Paged { table, held, .. } = &mut c.store else {
            return Err(Error::KvPaged);
        };
        while *held < want {
            table[*held] = self.take();
            *held += 1;
        }
        Ok(())
    }

    /// Gives back every block of `c` and empties it.
    pub fn release(&mut self, c: &mut KvCache<'_>) {
        self.shrink(c, 0);
        c.pos = 0;
    }

    /// Forgets `c`'s positions from `n` on ([`KvCache::truncate`]) and
    /// gives back the blocks no position left uses.
    pub fn truncate(&mut self, c: &mut KvCache<'_>, n: usize) -> Result<()> {
        self.fits(c)?;
        c.truncate(n)?;
        let keep = c.blocks_for(c.pos, self.block);
        self.shrink(c, keep);
        Ok(())
    }

    /// Makes the empty cache `dst` hold `src`'s first positions, in whole
    /// blocks shared with it: at most `n` positions, rounded down to a
    /// whole block (and none where `src` no longer holds them all: it
    /// evicted, or a windowed layer's ring moved past them). Returns the
    /// positions `dst` now holds.
    pub fn share(&mut self, dst: &mut KvCache<'_>, src: &KvCache<'_>, n: usize) -> Result<usize> {
        self.fits(dst)?;
        self.fits(src)?;
        if dst.opt != src.opt || dst.win != src.win || dst.pos != 0 || !dst.blocks().is_empty() {
            return Err(Error::KvPaged);
        }
        let ring_moved = src.win.ring > 0 && src.pos > src.win.ring;
        if src.evicted() || ring_moved {
            return Ok(0);
        }
        let whole = (n.min(src.pos) / self.block).min(src.blocks().len());
        let Store::Paged { table, held, .. } = &mut dst.store else {
            return Err(Error::KvPaged);
        };
        for (d, &id) in table.iter_mut().zip(&src.blocks()[..whole]) {
            *d = id;
            self.refs[id as usize] += 1;
        }
        *held = whole;
        dst.pos = whole * self.block;
        Ok(dst.pos)
    }

    /// Keeps `c`'s first `keep` blocks, gives back the rest.
    fn shrink(&mut self, c: &mut KvCache<'_>, keep: usize) {
        if let Store::Paged { table, held, .. } = &mut c.store {
            for &id in &table[keep.min(*held)..*held] {
                self.put(id);
            }
            *held = (*held).min(keep);
        }
    }

    /// A free block, held once. Callers check `n_free` first.
    fn take(&mut self) -> u32 {
        self.n_free -= 1;
        let id = self.free[self.n_free];
        self.refs[id as usize] = 1;
        id
    }

    /// One holder fewer for block `id`; free when none is left.
    fn put(&mut self, id: u32) {
        let r = &mut self.refs[id as usize];
        *r = r.saturating_sub(1);
        if *r == 0 {
            self.free[self.n_free] = id;
            self.n_free += 1;
        }
    }

    fn copy_block(&mut self, from: usize, to: usize) {
        let bb = self.block_bytes;
        for m in [&mut *self.k, &mut *self.v] {
            m.copy_within(from * bb..(from + 1) * bb, to * bb);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::boxed::Box;
    use std::vec;

    /// A one-layer cache of 32-value rows over leaked f32-aligned buffers.
    fn cache(bytes: usize, opt: KvOptions) -> KvCache<'static> {
        let k: &'static mut [f32] = Box::leak(vec![0f32; bytes / 4].into_boxed_slice());
        let v: &'static mut [f32] = Box::leak(vec![0f32; bytes / 4].into_boxed_slice());
        KvCache::new(quant::as_bytes_mut(k), quant::as_bytes_mut(v), opt, 1, 32).unwrap()
    }

    #[test]
    fn slots_keep_sinks_and_ring_the_window() {
        let opt = KvOptions::streaming(2, 4);
        let c = cache(6 * 32 * 4, opt);
        let slots: [usize; 12] = core::array::from_fn(|t| c.slot(t));
        assert_eq!(slots, [0, 1, 2, 3, 4, 5, 2, 3, 4, 5, 2, 3]);
        assert_eq!(c.visible(3), 4);
        assert_eq!(c.visible(9), 6);
        assert_eq!(c.query_cache_pos(3), 3);
        assert_eq!(c.query_cache_pos(100), 5);
        assert_eq!(c.sinks_for(5), 0);
        assert_eq!(c.sinks_for(6), 2);
    }

    /// Layers 0 and 2 of three attend within 4 positions, in rings of
    /// 4 + 3 slots (chunks of up to 4 tokens); layer 1 keeps 16.
    #[test]
    fn windowed_layers_ring_their_window() {
        let opt = KvOptions::dense(16);
        let win = Windows::new(0b101, 4, 4, &opt);
        assert_eq!(win.ring, 7);
        let bytes = KvCache::bytes_windowed(&opt, 3, 32, &win).unwrap();
        assert_eq!(bytes, (7 + 16 + 7) * 32 * 4);
        let k: &'static mut [f32] = Box::leak(vec![0f32; bytes / 4].into_boxed_slice());
        let v: &'static mut [f32] = Box::leak(vec![0f32; bytes / 4].into_boxed_slice());
        let mut c = KvCache::windowed(
            quant::as_bytes_mut(k),
            quant::as_bytes_mut(v),
            opt,
            3,
            32,
            win,
        )
        .unwrap();
        // Each position's key holds its position, in every layer.
        for t in 0..12 {
            for l in 0..3 {
                c.store(l, t, &[t as f32; 32], &[0.0; 32]).unwrap();
            }
        }
        c.advance(12);
        let key = |c: &KvCache, l: usize, slot: usize| match c.layer(l).unwrap().0 {
            KvRows::F32(r) => r[slot * 32],
            _ => unreachable!(),
        };
        // The global layer sees every position; a windowed one the ring's
        // slots whose positions are in its window.
        let g = c.view(1, 11, 11);
        assert_eq!((g.n, g.sinks, g.mask), (12, 0, None));
        let w = c.view(2, 9, 11);
        assert_eq!(w.n, 7);
        let m = w.mask.unwrap();
        let seen: std::vec::Vec<usize> = (0..w.n)
            .filter(|&s| m.keeps(s))
            .map(|s| key(&c, 2, s) as usize)
            .collect();
        assert_eq!(seen, [7, 8, 9, 6]);
        assert_eq!(c.slot_in(0, 11), 4);
        assert_eq!(key(&c, 0, 4), 11.0);
        // Going back past what the ring still holds is refused; within it,
        // allowed.
        assert!(c.truncate(8).is_err());
        assert!(c.truncate(9).is_ok() && c.pos() == 9);
        // A copy holds the same keys in every layer.
        let k2: &'static mut [f32] = Box::leak(vec![0f32; bytes / 4].into_boxed_slice());
        let v2: &'static mut [f32] = Box::leak(vec![0f32; bytes / 4].into_boxed_slice());
        let mut d = KvCache::windowed(
            quant::as_bytes_mut(k2),
            quant::as_bytes_mut(v2),
            opt,
            3,
            32,
            win,
        )
        .unwrap();
        d.copy_from(&c).unwrap();
        for (l, slots) in [(0, 7), (1, 9), (2, 7)] {
            for s in 0..slots {
                assert_eq!(key(&d, l, s), key(&c, l, s), "layer {l} slot {s}");
            }
        }
        // A dense cache no longer than the ring keeps every position.
        assert_eq!(Windows::new(0b101, 4, 4, &KvOptions::dense(7)).ring, 0);
        assert_eq!(
            Windows::new(0b101, 4, 4, &KvOptions::streaming(1, 3)).ring,
            7
        );
    }

    #[test]
    fn dense_refuses_and_streaming_goes_on() {
        let mut d = cache(4 * 32 * 4, KvOptions::dense(4));
        assert!(d.reserve(4).is_ok());
        assert!(matches!(d.reserve(5), Err(Error::KvCacheFull { .. })));
        let mut s = cache(4 * 32 * 4, KvOptions::streaming(1, 3));
        assert!(s.reserve(1000).is_ok());
        assert_eq!(s.chunk_room(), 4);
        s.advance(4);
        assert_eq!(s.chunk_room(), 1);
        assert!(s.truncate(2).is_ok() && s.pos() == 2);
        s.advance(5);
        assert!(s.evicted());
        assert!(s.truncate(3).is_err());
        assert!(s.truncate(10).is_ok() && s.pos() == 7);
        d.advance(2);
        assert_eq!(d.len(), 2);
    }

    /// Two paged caches over one pool: the second shares the first's
    /// whole prefix blocks; a windowed layer's ring then wraps into a
    /// shared block, which is copied first, so each cache reads its own
    /// keys; `needs` counts every block `grow` takes; every block comes back.
    #[test]
    fn paged_caches_share_blocks_and_copy_before_writing() {
        let opt = KvOptions::dense(16);
        // Layer 1 of two attends within 3 positions, in a ring of 3 + 3.
        let win = Windows::new(0b10, 3, 4, &opt);
        assert_eq!(win.ring, 6);
        let row = 32 * 4;
        let bb = KvPool::block_bytes(2, 2, row).unwrap();
        let n = 12;
        let k: &'static mut [f32] = Box::leak(vec![0f32; n * bb / 4].into_boxed_slice());
        let v: &'static mut [f32] = Box::leak(vec![0f32; n * bb / 4].into_boxed_slice());
        let (refs, free) = (
            Box::leak(vec![0u16; n].into_boxed_slice()),
            Box::leak(vec![0u32; n].into_boxed_slice()),
        );
        let mut pool = KvPool::new(
            quant::as_bytes_mut(k),
            quant::as_bytes_mut(v),
            refs,
            free,
            n,
            2,
            2,
            row,
        )
        .unwrap();
        let len = KvCache::table_len(&opt, &win, 2);
        let (ta, tb) = (
            Box::leak(vec![0u32; len].into_boxed_slice()),
            Box::leak(vec![0u32; len].into_boxed_slice()),
        );
        let mut a = KvCache::paged(ta, 2, opt, 2, 32, win).unwrap();
        let mut b = KvCache::paged(tb, 2, opt, 2, 32, win).unwrap();
        // Each position's key holds its position (+100 in the second cache).
        let feed = |pool: &mut KvPool, c: &mut KvCache, from: usize, to: usize, tag: f32| {
            for t in from..to {
                let taken = pool.free();
                let need = pool.needs(c, 1).unwrap();
                pool.grow(c, 1).unwrap();
                assert!(taken - pool.free() <= need);
                for l in 0..2 {
                    c.store_in(Some(pool), l, t, &[t as f32 + tag; 32], &[0.0; 32])
                        .unwrap();
                }
                c.advance(1);
            }
        };
        let key = |pool: &KvPool, c: &KvCache, l: usize, s: usize| {
            let rows = c.rows(Some(pool), l).unwrap();
            match rows.run(s / 2).unwrap().0 {
                KvRows::F32(r) => r[(s % 2) * 32],
                _ => unreachable!(),
            }
        };
        feed(&mut pool, &mut a, 0, 5, 0.0);
        assert_eq!(pool.share(&mut b, &a, 5).unwrap(), 4);
        assert_eq!(pool.free(), n - 3);
        feed(&mut pool, &mut b, 4, 9, 100.0);
        // b's ring wrapped into slots 0..3, blocks it shared with a: copied.
        assert_eq!(key(&pool, &a, 1, 0), 0.0);
        assert_eq!(key(&pool, &a, 1, 1), 1.0);
        assert_eq!(key(&pool, &b, 1, 0), 106.0);
        assert_eq!(key(&pool, &b, 1, 2), 108.0);
        // Its plain layer keeps the shared positions.
        assert_eq!(key(&pool, &b, 0, 1), 1.0);
        assert_eq!(key(&pool, &b, 0, 8), 108.0);
        pool.release(&mut a);
        pool.release(&mut b);
        assert_eq!(pool.free(), n);
        // A pool too small refuses before taking anything.
        let mut c = KvCache::paged(
            Box::leak(vec![0u32; len].into_boxed_slice()),
            2,
            opt,
            2,
            32,
            win,
        )
        .unwrap();
        let mut d = KvCache::paged(
            Box::leak(vec![0u32; len].into_boxed_slice()),
            2,
            opt,
            2,
            32,
            win,
        )
        .unwrap();
        pool.grow(&mut c, 16).unwrap();
        assert_eq!(pool.free(), n - 8);
        assert!(matches!(
            pool.grow(&mut d, 16),
            Err(Error::KvPoolFull { needed: 8, free: 4 })
        ));
        assert_eq!(pool.free(), n - 8);
        pool.release(&mut c);
        assert_eq!(pool.free(), n);
    }

    #[test]
    fn rows_round_trip_in_every_type() {
        let x: [f32; 32] = core::array::from_fn(|i| i as f32 / 8.0 - 2.0);
        for (ty, tol) in [
            (KvType::F32, 0.0),
            (KvType::F16, 1e-3),
            (KvType::Q8_0, 0.02),
        ] {
            let opt = KvOptions::dense(2).with_type(ty);
            let mut c = cache(2 * 32 * 4, opt);
            c.store(0, 1, &x, &x).unwrap();
            let (k, _) = c.layer(0).unwrap();
            let row: [f32; 32] = match k {
                KvRows::F32(r) => core::array::from_fn(|i| r[32 + i]),
                KvRows::F16(r) => core::array::from_fn(|i| r[32 + i].to_f32()),
                KvRows::Q8_0(r) => {
                    let mut out = [0f32; 32];
                    quant::q8_0::dequantize_row(&r[1..2], &mut out);
                    out
                }
            };
            for (a, b) in row.iter().zip(&x) {
                assert!((a - b).abs() <= tol, "{ty:?}: {a} vs {b}");
            }
        }
        assert_eq!(KvType::Q8_0.row_bytes(48), None);
        assert_eq!(KvType::F16.row_bytes(48), Some(96));
    }
}
