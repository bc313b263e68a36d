//! Writes GGUF v3 files (with the `alloc` feature): used by `ember convert`,
//! `ember synth` and the tests that build hostile files.
//!
//! Metadata pairs are kept encoded, so pairs read from another file can be
//! copied byte for byte. Tensor data is placed at offsets aligned to the
//! file's alignment, padded with zeros, as gguf-py and ggml do.

#![forbid(unsafe_code)]

extern crate alloc;
use alloc::string::String;
use alloc::vec::Vec;

use crate::gguf::{ValueType, DEFAULT_ALIGNMENT, MAGIC};
use crate::quant::GgmlType;

/// One tensor to be written.
#[derive(Debug, Clone)]
struct Pending {
    name: String,
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
}

/// A GGUF file under construction.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    version: u32,
    alignment: u64,
    kv: Vec<u8>,
    n_kv: u64,
    tensors: Vec<Pending>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter {
            version: 3,
            alignment: DEFAULT_ALIGNMENT,
            kv: Vec::new(),
            n_kv: 0,
            tensors: Vec::new(),
        }
    }

    /// Sets the version field (tests write other versions on purpose).
    pub fn version(&mut self, v: u32) -> &mut Self {
        self.version = v;
        self
    }

    /// Sets the data alignment. The `general.alignment` key is the caller's
    /// to write (or to copy from a source file) when it is not the default.
    pub fn alignment(&mut self, a: u64) -> &mut Self {
        self.alignment = a;
        self
    }

    /// Appends an already-encoded pair (key, type id, value) as read by
    /// [`crate::gguf::Gguf::metadata_raw`].
    pub fn add_raw(&mut self, encoded: &[u8]) -> &mut Self {
        self.kv.extend_from_slice(encoded);
        self.n_kv += 1;
        self
    }

    fn head(&mut self, key: &str, ty: ValueType) {
        put_str(&mut self.kv, key);
        self.kv.extend_from_slice(&ty.id().to_le_bytes());
        self.n_kv += 1;
    }

    pub fn add_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.head(key, ValueType::U32);
        self.kv.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn add_f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.head(key, ValueType::F32);
        self.kv.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn add_bool(&mut self, key: &str, v: bool) -> &mut Self {
        self.head(key, ValueType::Bool);
        self.kv.push(v as u8);
        self
    }

    pub fn add_str(&mut self, key: &str, v: &str) -> &mut Self {
        self.head(key, ValueType::String);
        put_str(&mut self.kv, v);
        self
    }

    pub fn add_str_array(&mut self, key: &str, items: &[&str]) -> &mut Self {
        self.head(key, ValueType::Array);
        self.kv
            .extend_from_slice(&ValueType::String.id().to_le_bytes());
        self.kv
            .extend_from_slice(&(items.len() as u64).to_le_bytes());
        for s in items {
            put_str(&mut self.kv, s);
        }
        self
    }

    pub fn add_i32_array(&mut self, key: &str, items: &[i32]) -> &mut Self {
        self.head(key, ValueType::Array);
        self.kv
            .extend_from_slice(&ValueType::I32.id().to_le_bytes());
        self.kv
            .extend_from_slice(&(items.len() as u64).to_le_bytes());
        for v in items {
            self.kv.extend_from_slice(&v.to_le_bytes());
        }
        self
    }

    pub fn add_f32_array(&mut self, key: &str, items: &[f32]) -> &mut Self {
        self.head(key, ValueType::Array);
        self.kv
            .extend_from_slice(&ValueType::F32.id().to_le_bytes());
        self.kv
            .extend_from_slice(&(items.len() as u64).to_le_bytes());
        for v in items {
            self.kv.extend_from_slice(&v.to_le_bytes());
        }
        self
    }

    /// Adds a tensor; `dims` in ggml order (row length first), `data` its bytes.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> &mut Self {
        self.add_tensor_raw(name, dims, ty.id(), data)
    }

    /// Adds a tensor with any type id (tests use unknown ids on purpose).
    pub fn add_tensor_raw(
        &mut self,
        name: &str,
        dims: &[u64],
        ty: u32,
        data: Vec<u8>,
    ) -> &mut Self {
        self.tensors.push(Pending {
            name: name.into(),
            dims: dims.into(),
            ty,
            data,
        });
        self
    }

    /// The complete file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = self.alignment.max(1) as usize;
        let pad = |n: usize| n.div_ceil(align) * align;
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.n_kv.to_le_bytes());
        out.extend_from_slice(&self.kv);
        let mut offset = 0usize;
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = pad(offset + t.data.len());
        }
        out.resize(pad(out.len()), 0);
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            out.resize(pad(out.len()), 0);
        }
        out
    }
}
