//! A zero-copy GGUF v2/v3 reader over `&[u8]`.
//!
//! Layout (see ggml's `docs/gguf.md`): magic `GGUF`, `u32` version,
//! `u64` tensor count, `u64` metadata count, the metadata key/value pairs,
//! the tensor infos, padding to `general.alignment` (default 32), then the
//! data section. Everything is little-endian.
//!
//! [`Gguf::parse`] walks the whole header once and checks every length, count,
//! type id, dimension and offset against the slice and against the caps in
//! [`limits`]; after that, lookups re-walk the validated bytes and borrow from
//! them. Nothing here allocates, and no number from the file sizes anything.

#![forbid(unsafe_code)]

use crate::error::{Cap, Error, Result};
use crate::quant::GgmlType;

/// Caps on untrusted counts; each is far above any real model's need.
pub mod limits {
    /// Tensors in one file. Real models have hundreds to a few thousand; the
    /// cap also bounds the name-uniqueness check, which is quadratic.
    pub const MAX_TENSORS: u64 = 1 << 13;
    /// Metadata key/value pairs in one file.
    pub const MAX_METADATA: u64 = 1 << 16;
    /// Bytes in one string (keys, values, tensor names).
    pub const MAX_STRING: u64 = 1 << 24;
    /// Elements in one metadata array.
    pub const MAX_ARRAY: u64 = 1 << 24;
    /// Arrays inside arrays.
    pub const MAX_NESTING: u32 = 4;
    /// Dimensions of one tensor (ggml's `GGML_MAX_DIMS`).
    pub const MAX_DIMS: u32 = 4;
    /// Elements in one tensor.
    pub const MAX_ELEMENTS: u64 = 1 << 40;
    /// Largest `general.alignment`.
    pub const MAX_ALIGNMENT: u64 = 1 << 16;
}

/// `GGUF` read as a little-endian u32.
pub const MAGIC: u32 = 0x4655_4747;
/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Metadata value type ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    pub const fn from_id(id: u32) -> Option<ValueType> {
        Some(match id {
            0 => ValueType::U8,
            1 => ValueType::I8,
            2 => ValueType::U16,
            3 => ValueType::I16,
            4 => ValueType::U32,
            5 => ValueType::I32,
            6 => ValueType::F32,
            7 => ValueType::Bool,
            8 => ValueType::String,
            9 => ValueType::Array,
            10 => ValueType::U64,
            11 => ValueType::I64,
            12 => ValueType::F64,
            _ => return None,
        })
    }

    pub const fn id(self) -> u32 {
        match self {
            ValueType::U8 => 0,
            ValueType::I8 => 1,
            ValueType::U16 => 2,
            ValueType::I16 => 3,
            ValueType::U32 => 4,
            ValueType::I32 => 5,
            ValueType::F32 => 6,
            ValueType::Bool => 7,
            ValueType::String => 8,
            ValueType::Array => 9,
            ValueType::U64 => 10,
            ValueType::I64 => 11,
            ValueType::F64 => 12,
        }
    }

    /// Size of a fixed-size value, `None` for strings and arrays.
    pub const fn fixed_size(self) -> Option<u64> {
        Some(match self {
            ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::U64 | ValueType::I64 | ValueType::F64 => 8,
            ValueType::String | ValueType::Array => return None,
        })
    }
}

/// A metadata value borrowing the file's bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(&'a str),
    Array(Array<'a>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl<'a> Value<'a> {
    /// Any integer type that fits in u64 without loss.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type that fits in u32 without loss.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_u64().and_then(|v| u32::try_from(v).ok())
    }

    /// F32 or F64 (narrowed).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<Array<'a>> {
        match *self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A validated metadata array: element type, count, and the element bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Array<'a> {
    elem: ValueType,
    len: u64,
    /// The encoded elements (for fixed-size types, `len * size` bytes).
    bytes: &'a [u8],
    /// Absolute file offset of `bytes`, for error messages.
    offset: u64,
    depth: u32,
}

impl<'a> Array<'a> {
    pub fn elem_type(&self) -> ValueType {
        self.elem
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The raw element bytes (fixed-size elements are packed little-endian).
    pub fn raw(&self) -> &'a [u8] {
        self.bytes
    }

    /// Iterates the elements in order.
    pub fn iter(&self) -> ArrayIter<'a> {
        ArrayIter {
            arr: *self,
            cur: Cursor::at(self.bytes, self.offset),
            left: self.len,
        }
    }

    /// Element `i` of a fixed-size array in O(1); strings and arrays walk.
    pub fn get(&self, i: u64) -> Option<Value<'a>> {
        if i >= self.len {
            return None;
        }
        match self.elem.fixed_size() {
            Some(size) => {
                let start = usize::try_from(i.checked_mul(size)?).ok()?;
                let mut cur = Cursor::at(self.bytes.get(start..)?, self.offset + start as u64);
                read_value(&mut cur, self.elem, self.depth).ok()
            }
            None => self.iter().nth(usize::try_from(i).ok()?),
        }
    }
}

/// Iterator over a validated [`Array`].
#[derive(Debug, Clone)]
pub struct ArrayIter<'a> {
    arr: Array<'a>,
    cur: Cursor<'a>,
    left: u64,
}

impl<'a> Iterator for ArrayIter<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The array was validated when the file was parsed, so this cannot fail;
        // if it somehow did, the iterator ends rather than panicking.
        match read_value(&mut self.cur, self.arr.elem, self.arr.depth) {
            Ok(v) => Some(v),
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }
}

/// One tensor's header plus its data borrowed from the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorInfo<'a> {
    /// Position among the file's tensors (used in error values).
    pub index: u32,
    pub name: &'a str,
    /// ggml order: `dims[0]` is the row length (contiguous), unused dims are 1.
    pub dims: [u64; 4],
    pub n_dims: u32,
    pub ty: GgmlType,
    /// Offset inside the data section.
    pub offset: u64,
    /// The tensor's bytes, exactly `n_elements` worth of its type.
    pub data: &'a [u8],
}

impl TensorInfo<'_> {
    pub fn n_elements(&self) -> u64 {
        // Checked at parse time not to overflow.
        self.dims.iter().product()
    }

    /// Rows of a matrix view: the product of every dim but the first.
    pub fn n_rows(&self) -> u64 {
        self.dims[1] * self.dims[2] * self.dims[3]
    }
}

/// A parsed, validated GGUF file.
#[derive(Debug, Clone, Copy)]
pub struct Gguf<'a> {
    bytes: &'a [u8],
    pub version: u32,
    pub n_tensors: u64,
    pub n_metadata: u64,
    pub alignment: u64,
    /// Offset of the first metadata pair.
    metadata_start: usize,
    /// Offset of the first tensor info.
    tensors_start: usize,
    /// Offset of the data section.
    pub data_start: u64,
}

/// A little-endian reader that remembers absolute offsets for errors.
#[derive(Debug, Clone)]
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Absolute file offset of `buf[0]`.
    base: u64,
}

impl<'a> Cursor<'a> {
    fn at(buf: &'a [u8], base: u64) -> Self {
        Cursor { buf, pos: 0, base }
    }

    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let err = Error::Truncated {
            offset: self.offset(),
            needed: n,
        };
        let n = usize::try_from(n).map_err(|_| err)?;
        let end = self.pos.checked_add(n).ok_or(err)?;
        let s = self.buf.get(self.pos..end).ok_or(err)?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A GGUF string: u64 length then UTF-8 bytes.
    fn string(&mut self) -> Result<&'a str> {
        let len = self.u64()?;
        if len > limits::MAX_STRING {
            return Err(Error::CapExceeded {
                what: Cap::StringLength,
                found: len,
                cap: limits::MAX_STRING,
            });
        }
        let at = self.offset();
        let bytes = self.take(len)?;
        core::str::from_utf8(bytes).map_err(|_| Error::InvalidUtf8 { offset: at })
    }
}

/// Walks the names of tensor infos that `Gguf::parse` has already validated;
/// out-of-range reads yield empty names instead of panicking.
struct NameWalk<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> NameWalk<'a> {
    fn u64_at(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        if let Some(s) = self.buf.get(at..at + 8) {
            b.copy_from_slice(s);
        }
        u64::from_le_bytes(b)
    }

    fn next_name(&mut self) -> &'a [u8] {
        let len = self.u64_at(self.pos) as usize;
        let start = self.pos + 8;
        let name = self
            .buf
            .get(start..start.saturating_add(len))
            .unwrap_or(&[]);
        let n_dims_at = start.saturating_add(len);
        let n_dims = (self.u64_at(n_dims_at) & 0xffff_ffff) as usize;
        // name, n_dims (u32), dims (u64 each), type (u32), offset (u64)
        self.pos = n_dims_at.saturating_add(4 + 8 * n_dims + 4 + 8);
        name
    }
}

/// Reads one value of type `ty` (arrays recursively, at most [`limits::MAX_NESTING`] deep).
fn read_value<'a>(cur: &mut Cursor<'a>, ty: ValueType, depth: u32) -> Result<Value<'a>> {
    Ok(match ty {
        ValueType::U8 => Value::U8(cur.u8()?),
        ValueType::I8 => Value::I8(cur.u8()? as i8),
        ValueType::U16 => Value::U16(cur.u16()?),
        ValueType::I16 => Value::I16(cur.u16()? as i16),
        ValueType::U32 => Value::U32(cur.u32()?),
        ValueType::I32 => Value::I32(cur.u32()? as i32),
        ValueType::F32 => Value::F32(f32::from_bits(cur.u32()?)),
        ValueType::Bool => Value::Bool(cur.u8()? != 0),
        ValueType::String => Value::Str(cur.string()?),
        ValueType::U64 => Value::U64(cur.u64()?),
        ValueType::I64 => Value::I64(cur.u64()? as i64),
        ValueType::F64 => Value::F64(f64::from_bits(cur.u64()?)),
        ValueType::Array => {
            if depth >= limits::MAX_NESTING {
                return Err(Error::CapExceeded {
                    what: Cap::ArrayNesting,
                    found: depth as u64 + 1,
                    cap: limits::MAX_NESTING as u64,
                });
            }
            let at = cur.offset();
            let id = cur.u32()?;
            let elem = ValueType::from_id(id).ok_or(Error::UnknownValueType {
                offset: at,
                found: id,
            })?;
            let len = cur.u64()?;
            if len > limits::MAX_ARRAY {
                return Err(Error::CapExceeded {
                    what: Cap::ArrayLength,
                    found: len,
                    cap: limits::MAX_ARRAY,
                });
            }
            let start = cur.pos;
            let offset = cur.offset();
            match elem.fixed_size() {
                // Fixed-size elements: one bounds check for the whole run
                // (len * size cannot overflow: both are capped far below 2^64).
                Some(size) => {
                    cur.take(len * size)?;
                }
                None => {
                    for _ in 0..len {
                        read_value(cur, elem, depth + 1)?;
                    }
                }
            }
            Value::Array(Array {
                elem,
                len,
                bytes: &cur.buf[start..cur.pos],
                offset,
                depth: depth + 1,
            })
        }
    })
}

/// Reads one key/value pair.
fn read_kv<'a>(cur: &mut Cursor<'a>) -> Result<(&'a str, Value<'a>)> {
    let key = cur.string()?;
    let at = cur.offset();
    let id = cur.u32()?;
    let ty = ValueType::from_id(id).ok_or(Error::UnknownValueType {
        offset: at,
        found: id,
    })?;
    let value = read_value(cur, ty, 0)?;
    Ok((key, value))
}

/// The raw header of one tensor info, before checks against the data section.
struct RawTensor<'a> {
    name: &'a str,
    dims: [u64; 4],
    n_dims: u32,
    ty: GgmlType,
    offset: u64,
    size: u64,
}

fn read_tensor_info<'a>(cur: &mut Cursor<'a>, index: u32) -> Result<RawTensor<'a>> {
    let name = cur.string()?;
    let n_dims = cur.u32()?;
    if n_dims == 0 || n_dims > limits::MAX_DIMS {
        return Err(Error::CapExceeded {
            what: Cap::TensorDims,
            found: n_dims as u64,
            cap: limits::MAX_DIMS as u64,
        });
    }
    let mut dims = [1u64; 4];
    let mut n: u64 = 1;
    for d in dims.iter_mut().take(n_dims as usize) {
        *d = cur.u64()?;
        if *d == 0 {
            return Err(Error::BadTensorShape { tensor: index });
        }
        n = n
            .checked_mul(*d)
            .ok_or(Error::DimensionOverflow { tensor: index })?;
    }
    if n > limits::MAX_ELEMENTS {
        return Err(Error::CapExceeded {
            what: Cap::TensorElements,
            found: n,
            cap: limits::MAX_ELEMENTS,
        });
    }
    let id = cur.u32()?;
    let ty = GgmlType::from_id(id).ok_or(Error::UnknownTensorType {
        tensor: index,
        found: id,
    })?;
    let row = ty
        .row_bytes(dims[0])
        .ok_or(Error::BadTensorShape { tensor: index })?;
    let size = row
        .checked_mul(n / dims[0])
        .ok_or(Error::DimensionOverflow { tensor: index })?;
    let offset = cur.u64()?;
    Ok(RawTensor {
        name,
        dims,
        n_dims,
        ty,
        offset,
        size,
    })
}

impl<'a> Gguf<'a> {
    /// Parses and validates a whole GGUF file held in `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Gguf<'a>> {
        let mut cur = Cursor::at(bytes, 0);
        let magic = cur.u32()?;
        if magic != MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        let version = cur.u32()?;
        if version != 2 && version != 3 {
            return Err(Error::UnsupportedVersion { found: version });
        }
        let n_tensors = cur.u64()?;
        if n_tensors > limits::MAX_TENSORS {
            return Err(Error::CapExceeded {
                what: Cap::Tensors,
                found: n_tensors,
                cap: limits::MAX_TENSORS,
            });
        }
        let n_metadata = cur.u64()?;
        if n_metadata > limits::MAX_METADATA {
            return Err(Error::CapExceeded {
                what: Cap::MetadataKeys,
                found: n_metadata,
                cap: limits::MAX_METADATA,
            });
        }

        // Metadata: validate every pair, note the alignment.
        let metadata_start = cur.pos;
        let mut alignment = DEFAULT_ALIGNMENT;
        for _ in 0..n_metadata {
            let (key, value) = read_kv(&mut cur)?;
            if key == "general.alignment" {
                let a = value.as_u64().ok_or(Error::BadAlignment { found: 0 })?;
                if a == 0 || !a.is_power_of_two() || a > limits::MAX_ALIGNMENT {
                    return Err(Error::BadAlignment { found: a });
                }
                alignment = a;
            }
        }

        // Tensor infos: validate headers, then place each in the data section.
        let tensors_start = cur.pos;
        for i in 0..n_tensors {
            read_tensor_info(&mut cur, i as u32)?;
        }
        let header_end = cur.offset();
        // header_end <= bytes.len() and alignment <= 2^16, so no overflow.
        let data_start = header_end.div_ceil(alignment) * alignment;
        let data_len = (bytes.len() as u64).saturating_sub(data_start);
        if data_start > bytes.len() as u64 && n_tensors > 0 {
            return Err(Error::Truncated {
                offset: header_end,
                needed: data_start - header_end,
            });
        }

        let gguf = Gguf {
            bytes,
            version,
            n_tensors,
            n_metadata,
            alignment,
            metadata_start,
            tensors_start,
            data_start,
        };

        let mut cur = Cursor::at(&bytes[tensors_start..], tensors_start as u64);
        for i in 0..n_tensors {
            let index = i as u32;
            let t = read_tensor_info(&mut cur, index)?;
            if t.offset % alignment != 0 {
                return Err(Error::MisalignedTensor {
                    tensor: index,
                    offset: t.offset,
                });
            }
            let end = t
                .offset
                .checked_add(t.size)
                .ok_or(Error::DimensionOverflow { tensor: index })?;
            if end > data_len {
                return Err(Error::TensorOutOfBounds {
                    tensor: index,
                    end,
                    data_len,
                });
            }
        }
        // Names must be unique so lookups by name are unambiguous. This compares
        // every pair without allocating: quadratic, but over a light walk of
        // already-validated names and a capped count (8192 tensors: ~0.1 s).
        let infos = &bytes[tensors_start..];
        let mut a = NameWalk { buf: infos, pos: 0 };
        for i in 0..n_tensors {
            let name = a.next_name();
            let mut b = NameWalk { buf: infos, pos: 0 };
            for _ in 0..i {
                if b.next_name() == name {
                    return Err(Error::DuplicateTensor { tensor: i as u32 });
                }
            }
        }
        Ok(gguf)
    }

    /// The bytes the file was parsed from.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Iterates the metadata pairs in file order.
    pub fn metadata(&self) -> MetadataIter<'a> {
        MetadataIter {
            cur: Cursor::at(
                &self.bytes[self.metadata_start..],
                self.metadata_start as u64,
            ),
            left: self.n_metadata,
        }
    }

    /// Iterates the metadata pairs with each pair's raw encoded bytes (key,
    /// type and value), for writers that copy metadata verbatim.
    pub fn metadata_raw(&self) -> impl Iterator<Item = (&'a str, Value<'a>, &'a [u8])> + 'a {
        let bytes = self.bytes;
        let mut it = self.metadata();
        core::iter::from_fn(move || {
            let start = it.cur.offset() as usize;
            let (k, v) = it.next()?;
            let end = it.cur.offset() as usize;
            Some((k, v, &bytes[start..end]))
        })
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<Value<'a>> {
        self.metadata().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Iterates the tensors in file order.
    pub fn tensors(&self) -> TensorIter<'a> {
        TensorIter {
            cur: Cursor::at(&self.bytes[self.tensors_start..], self.tensors_start as u64),
            index: 0,
            n: self.n_tensors,
            data: self.bytes.get(self.data_start as usize..).unwrap_or(&[]),
        }
    }

    /// The tensor called `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<TensorInfo<'a>> {
        self.tensors().find(|t| t.name == name)
    }

    /// The data section (after the header and its padding).
    pub fn data(&self) -> &'a [u8] {
        self.bytes.get(self.data_start as usize..).unwrap_or(&[])
    }
}

/// Iterator over validated metadata pairs.
#[derive(Debug, Clone)]
pub struct MetadataIter<'a> {
    cur: Cursor<'a>,
    left: u64,
}

impl<'a> Iterator for MetadataIter<'a> {
    type Item = (&'a str, Value<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Validated by `Gguf::parse`; an error here ends the iteration.
        match read_kv(&mut self.cur) {
            Ok(kv) => Some(kv),
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }
}

/// Iterator over validated tensor infos.
#[derive(Debug, Clone)]
pub struct TensorIter<'a> {
    cur: Cursor<'a>,
    index: u64,
    n: u64,
    data: &'a [u8],
}

impl<'a> Iterator for TensorIter<'a> {
    type Item = TensorInfo<'a>;

    fn next(&mut self) -> Option<TensorInfo<'a>> {
        if self.index >= self.n {
            return None;
        }
        let index = self.index as u32;
        self.index += 1;
        let t = read_tensor_info(&mut self.cur, index).ok()?;
        // Bounds were checked by `Gguf::parse`; `get` keeps this panic-free anyway.
        let start = usize::try_from(t.offset).ok()?;
        let end = start.checked_add(usize::try_from(t.size).ok()?)?;
        let data = self.data.get(start..end)?;
        Some(TensorInfo {
            index,
            name: t.name,
            dims: t.dims,
            n_dims: t.n_dims,
            ty: t.ty,
            offset: t.offset,
            data,
        })
    }
}
