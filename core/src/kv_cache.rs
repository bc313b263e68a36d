//! The KV cache: keys and values for every layer, in caller memory.
//!
//! Layout per tensor: (n_layers, capacity, kv_dim) f32. Positions are written
//! in order and addressed by slot; slot = position for now. The streaming
//! work turns this into a ring (`capacity = sinks + window`, slots reused
//! after the sinks), which is why callers go through [`KvCache::slot`] rather
//! than computing offsets themselves. Until then a full cache is an error,
//! raised before anything is written.

#![forbid(unsafe_code)]

use crate::error::{Error, Result};

#[derive(Debug)]
pub struct KvCache<'a> {
    k: &'a mut [f32], // (n_layers, capacity, kv_dim)
    v: &'a mut [f32], // (n_layers, capacity, kv_dim)
    n_layers: usize,
    capacity: usize,
    kv_dim: usize,
    /// Positions held (the next position to write).
    len: usize,
}

impl<'a> KvCache<'a> {
    /// f32 elements of one of K or V.
    pub fn elements(n_layers: usize, capacity: usize, kv_dim: usize) -> Option<usize> {
        n_layers.checked_mul(capacity)?.checked_mul(kv_dim)
    }

    /// A cache over `k` and `v`, each at least [`KvCache::elements`] long.
    pub fn new(
        k: &'a mut [f32],
        v: &'a mut [f32],
        n_layers: usize,
        capacity: usize,
        kv_dim: usize,
    ) -> Result<Self> {
        if capacity == 0 {
            return Err(Error::KvCapacityZero);
        }
        let need = Self::elements(n_layers, capacity, kv_dim).ok_or(Error::BufferTooSmall {
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
            k,
            v,
            n_layers,
            capacity,
            kv_dim,
            len: 0,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Positions currently held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position (the memory is reused as is).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Makes this cache hold what `other` holds (beam search forks sequences).
    /// The shapes must match; only the positions `other` holds are copied.
    pub fn copy_from(&mut self, other: &KvCache<'_>) -> Result<()> {
        if other.n_layers != self.n_layers || other.kv_dim != self.kv_dim {
            return Err(Error::LengthMismatch {
                expected: (self.n_layers * self.kv_dim) as u64,
                found: (other.n_layers * other.kv_dim) as u64,
            });
        }
        if other.len > self.capacity {
            return Err(Error::KvCacheFull {
                capacity: self.capacity as u32,
                needed: other.len as u64,
            });
        }
        let n = other.len * self.kv_dim;
        for l in 0..self.n_layers {
            let (dst, src) = (
                l * self.capacity * self.kv_dim,
                l * other.capacity * other.kv_dim,
            );
            self.k[dst..dst + n].copy_from_slice(&other.k[src..src + n]);
            self.v[dst..dst + n].copy_from_slice(&other.v[src..src + n]);
        }
        self.len = other.len;
        Ok(())
    }

    /// Forgets positions from `n` on (keeps the first `n`).
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }

    /// Errors unless `n` more positions fit.
    pub fn reserve(&self, n: usize) -> Result<()> {
        let needed = self.len as u64 + n as u64;
        if needed > self.capacity as u64 {
            return Err(Error::KvCacheFull {
                capacity: self.capacity as u32,
                needed,
            });
        }
        Ok(())
    }

    /// Marks `n` more positions as held (after their K/V were written).
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// The slot that position `pos` occupies.
    #[inline(always)]
    pub fn slot(&self, pos: usize) -> usize {
        pos
    }

    #[inline(always)]
    fn range(&self, layer: usize, slot: usize) -> core::ops::Range<usize> {
        let start = (layer * self.capacity + slot) * self.kv_dim;
        start..start + self.kv_dim
    }

    /// Writes the key and value of `pos` in `layer`.
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let r = self.range(layer, self.slot(pos));
        self.k[r.clone()].copy_from_slice(&k[..self.kv_dim]);
        self.v[r].copy_from_slice(&v[..self.kv_dim]);
    }

    /// Keys of `layer` for slots `0..n`: (n, kv_dim).
    pub fn keys(&self, layer: usize, n: usize) -> &[f32] {
        let start = layer * self.capacity * self.kv_dim;
        &self.k[start..start + n * self.kv_dim]
    }

    /// Values of `layer` for slots `0..n`: (n, kv_dim).
    pub fn values(&self, layer: usize, n: usize) -> &[f32] {
        let start = layer * self.capacity * self.kv_dim;
        &self.v[start..start + n * self.kv_dim]
    }

    pub fn n_layers(&self) -> usize {
        self.n_layers
    }
}
