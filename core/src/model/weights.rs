//! Per-layer weights found by GGUF tensor name, with shapes checked against
//! the [`Config`]. Everything borrows the file's bytes.

#![forbid(unsafe_code)]

use core::fmt::Write;

use crate::error::{Cap, Error, Result, TensorKind};
use crate::gguf::Gguf;
use crate::kernels::{Matrix, Packed};
use crate::model::config::{limits::MAX_LAYERS, Config};
use crate::quant::{cast_slice, GgmlType};

/// One decoder block's tensors (GGUF names). A family's optional vectors
/// are empty where it has none; fused matrices (Phi-3's `attn_qkv` and
/// gate-up `ffn_up`) are seen as the row ranges they stand for.
#[derive(Debug, Clone, Copy)]
pub struct LayerWeights<'a> {
    pub attn_norm: &'a [f32],      // (dim)
    pub attn_q: Matrix<'a>,        // (q_dim, dim)
    pub attn_k: Matrix<'a>,        // (kv_dim, dim)
    pub attn_v: Matrix<'a>,        // (kv_dim, dim)
    pub attn_output: Matrix<'a>,   // (dim, q_dim)
    pub ffn_norm: &'a [f32],       // (dim)
    pub ffn_gate: Matrix<'a>,      // (ffn_dim, dim)
    pub ffn_up: Matrix<'a>,        // (ffn_dim, dim)
    pub ffn_down: Matrix<'a>,      // (dim, ffn_dim)
    pub attn_q_bias: &'a [f32],    // (q_dim) or empty
    pub attn_k_bias: &'a [f32],    // (kv_dim) or empty
    pub attn_v_bias: &'a [f32],    // (kv_dim) or empty
    pub attn_q_norm: &'a [f32],    // (head_dim) or empty
    pub attn_k_norm: &'a [f32],    // (head_dim) or empty
    pub attn_post_norm: &'a [f32], // (dim) or empty
    pub ffn_post_norm: &'a [f32],  // (dim) or empty
}

/// The Q, K and V projections: the first hand-off of a layer's matrices
/// to the workers. Each group is positions in [`LayerWeights::matrices`];
/// the forward step multiplies the groups in [`LAYER_STEPS`] order, and a
/// host that lays out each worker's rows ahead of time follows the same
/// constant.
pub const QKV: [usize; 3] = [0, 1, 2];
/// The attention output projection.
pub const ATTN_OUT: [usize; 1] = [3];
/// The FFN gate and up projections.
pub const GATE_UP: [usize; 2] = [4, 5];
/// The FFN down projection.
pub const DOWN: [usize; 1] = [6];
/// A layer's hand-offs, in the order a forward step makes them.
pub const LAYER_STEPS: [&[usize]; 4] = [&QKV, &ATTN_OUT, &GATE_UP, &DOWN];

impl<'a> LayerWeights<'a> {
    /// The layer's seven matrices, in the order [`Weights::visit_matrices`]
    /// sees them.
    pub fn matrices(&self) -> [&Matrix<'a>; 7] {
        [
            &self.attn_q,
            &self.attn_k,
            &self.attn_v,
            &self.attn_output,
            &self.ffn_gate,
            &self.ffn_up,
            &self.ffn_down,
        ]
    }

    /// The layer's seven matrices, mutable, in the same order.
    pub fn matrices_mut(&mut self) -> [&mut Matrix<'a>; 7] {
        [
            &mut self.attn_q,
            &mut self.attn_k,
            &mut self.attn_v,
            &mut self.attn_output,
            &mut self.ffn_gate,
            &mut self.ffn_up,
            &mut self.ffn_down,
        ]
    }

    /// The matrices of one hand-off ([`QKV`], [`ATTN_OUT`], [`GATE_UP`],
    /// [`DOWN`]).
    pub fn group<const K: usize>(&self, ids: [usize; K]) -> [&Matrix<'a>; K] {
        let all = self.matrices();
        ids.map(|i| all[i])
    }
}

/// All of a model's tensors.
#[derive(Debug, Clone)]
pub struct Weights<'a> {
    pub token_embd: Matrix<'a>, // (vocab, dim)
    pub output_norm: &'a [f32], // (dim)
    /// The classifier; `token_embd` itself when the file ties them.
    pub output: Matrix<'a>, // (vocab, dim)
    /// What each RoPE pair's frequency of the global layers is divided by
    /// (Llama 3's `rope_freqs`, Phi-3's `rope_factors_short`), or empty.
    pub rope_factors: &'a [f32], // (rope_dim / 2)
    pub layers: heapless::Vec<LayerWeights<'a>, MAX_LAYERS>,
}

struct Finder<'g, 'a> {
    g: &'g Gguf<'a>,
}

impl<'a> Finder<'_, 'a> {
    fn find(&self, kind: TensorKind, layer: u16) -> Result<Option<crate::gguf::TensorInfo<'a>>> {
        let mut name: heapless::String<64> = heapless::String::new();
        let (k, suffix) = (kind.as_str(), kind.suffix());
        let ok = if kind.per_layer() {
            write!(name, "blk.{layer}.{k}.{suffix}")
        } else {
            write!(name, "{k}.{suffix}")
        };
        // Names are short and layers capped, so the buffer always suffices.
        ok.map_err(|_| Error::MissingTensor { kind, layer })?;
        Ok(self.g.tensor(&name))
    }

    /// A matrix of `rows` x `cols` (GGUF dims `[cols, rows]`).
    fn matrix(&self, kind: TensorKind, layer: u16, rows: usize, cols: usize) -> Result<Matrix<'a>> {
        let t = self
            .find(kind, layer)?
            .ok_or(Error::MissingTensor { kind, layer })?;
        let expected = [cols as u64, rows as u64];
        let found = [t.dims[0], t.dims[1]];
        if t.n_dims != 2 || found != expected {
            return Err(Error::WrongShape {
                kind,
                layer,
                expected,
                found,
            });
        }
        Matrix::from_tensor(&t)
    }

    /// An F32 vector of `len` (norm weights).
    fn vector(&self, kind: TensorKind, layer: u16, len: usize) -> Result<&'a [f32]> {
        let t = self
            .find(kind, layer)?
            .ok_or(Error::MissingTensor { kind, layer })?;
        if t.n_dims != 1 || t.dims[0] != len as u64 {
            return Err(Error::WrongShape {
                kind,
                layer,
                expected: [len as u64, 1],
                found: [t.dims[0], t.dims[1]],
            });
        }
        if t.ty != GgmlType::F32 {
            return Err(Error::UnsupportedTensorType {
                kind,
                layer,
                ty: t.ty,
            });
        }
        cast_slice(t.data)
    }

    /// [`Finder::vector`] if the file has the tensor, else empty.
    fn optional(&self, kind: TensorKind, layer: u16, len: usize) -> Result<&'a [f32]> {
        match self.find(kind, layer)? {
            Some(_) => self.vector(kind, layer, len),
            None => Ok(&[]),
        }
    }

    /// [`Finder::vector`] if `want`, else empty.
    fn vector_if(&self, want: bool, kind: TensorKind, layer: u16, len: usize) -> Result<&'a [f32]> {
        if want {
            self.vector(kind, layer, len)
        } else {
            Ok(&[])
        }
    }
}

/// Rows `lo..hi` of `m` as a matrix of their own.
fn rows_of<'a>(
    m: &Matrix<'a>,
    lo: usize,
    hi: usize,
    kind: TensorKind,
    layer: u16,
) -> Result<Matrix<'a>> {
    let data = m.rows_data(lo, hi).ok_or(Error::WrongShape {
        kind,
        layer,
        expected: [m.cols as u64, hi as u64],
        found: [m.cols as u64, m.rows as u64],
    })?;
    Ok(Matrix {
        rows: hi - lo,
        cols: m.cols,
        data,
        packed: Packed::None,
        pieces: crate::kernels::Pieces::NONE,
    })
}

impl<'a> Weights<'a> {
    /// Finds and checks every tensor the config needs.
    pub fn from_gguf(g: &Gguf<'a>, c: &Config) -> Result<Weights<'a>> {
        let mut w = Weights::empty();
        w.fill(g, c)?;
        Ok(w)
    }

    /// No tensors yet: every matrix empty, no layers.
    pub const fn empty() -> Weights<'a> {
        let none = Matrix {
            rows: 0,
            cols: 0,
            data: crate::kernels::RowData::EMPTY,
            packed: Packed::None,
            pieces: crate::kernels::Pieces::NONE,
        };
        Weights {
            token_embd: none,
            output_norm: &[],
            output: none,
            rope_factors: &[],
            layers: heapless::Vec::new(),
        }
    }

    /// [`Weights::from_gguf`] into `self`, its layer table filled where it
    /// stands (the table has room for `MAX_LAYERS` layers: a microcontroller's
    /// stack should not hold copies of it).
    pub fn fill(&mut self, g: &Gguf<'a>, c: &Config) -> Result<()> {
        let f = Finder { g };
        self.layers.clear();
        self.token_embd = f.matrix(TensorKind::TokenEmbd, 0, c.vocab_size, c.dim)?;
        self.output_norm = f.vector(TensorKind::OutputNorm, 0, c.dim)?;
        self.output = match f.find(TensorKind::Output, 0)? {
            Some(_) => f.matrix(TensorKind::Output, 0, c.vocab_size, c.dim)?,
            None => self.token_embd,
        };
        let half = c.rope_dim / 2;
        self.rope_factors = match f.find(TensorKind::RopeFreqs, 0)? {
            Some(_) => f.vector(TensorKind::RopeFreqs, 0, half)?,
            None => f.optional(TensorKind::RopeFactorsShort, 0, half)?,
        };
        if self
            .rope_factors
            .iter()
            .any(|&x| !(x.is_finite() && x > 0.0))
        {
            return Err(Error::WrongShape {
                kind: TensorKind::RopeFreqs,
                layer: 0,
                expected: [half as u64, 1],
                found: [half as u64, 1],
            });
        }
        let lay = c.layout;
        let (qd, kvd, hd) = (c.q_dim(), c.kv_dim(), c.head_dim);
        for l in 0..c.n_layers {
            let l16 = l as u16;
            let attn_norm = f.vector(TensorKind::AttnNorm, l16, c.dim)?;
            let fused_qkv = lay.fused && f.find(TensorKind::AttnQkv, l16)?.is_some();
            let (attn_q, attn_k, attn_v, qkv_bias) = if fused_qkv {
                let m = f.matrix(TensorKind::AttnQkv, l16, qd + 2 * kvd, c.dim)?;
                let b = f.optional(TensorKind::AttnQkvBias, l16, qd + 2 * kvd)?;
                let at = |lo, hi| rows_of(&m, lo, hi, TensorKind::AttnQkv, l16);
                (
                    at(0, qd)?,
                    at(qd, qd + kvd)?,
                    at(qd + kvd, qd + 2 * kvd)?,
                    b,
                )
            } else {
                (
                    f.matrix(TensorKind::AttnQ, l16, qd, c.dim)?,
                    f.matrix(TensorKind::AttnK, l16, kvd, c.dim)?,
                    f.matrix(TensorKind::AttnV, l16, kvd, c.dim)?,
                    &[][..],
                )
            };
            let (ffn_gate, ffn_up) = if lay.fused {
                let m = f.matrix(TensorKind::FfnUp, l16, 2 * c.ffn_dim, c.dim)?;
                let at = |lo, hi| rows_of(&m, lo, hi, TensorKind::FfnUp, l16);
                (at(0, c.ffn_dim)?, at(c.ffn_dim, 2 * c.ffn_dim)?)
            } else {
                (
                    f.matrix(TensorKind::FfnGate, l16, c.ffn_dim, c.dim)?,
                    f.matrix(TensorKind::FfnUp, l16, c.ffn_dim, c.dim)?,
                )
            };
            let (attn_q_bias, attn_k_bias, attn_v_bias) = if qkv_bias.is_empty() {
                (
                    f.optional(TensorKind::AttnQBias, l16, qd)?,
                    f.optional(TensorKind::AttnKBias, l16, kvd)?,
                    f.optional(TensorKind::AttnVBias, l16, kvd)?,
                )
            } else {
                (
                    &qkv_bias[..qd],
                    &qkv_bias[qd..qd + kvd],
                    &qkv_bias[qd + kvd..],
                )
            };
            let lw = LayerWeights {
                attn_norm,
                attn_q,
                attn_k,
                attn_v,
                attn_output: f.matrix(TensorKind::AttnOutput, l16, c.dim, qd)?,
                ffn_norm: f.vector(TensorKind::FfnNorm, l16, c.dim)?,
                ffn_gate,
                ffn_up,
                ffn_down: f.matrix(TensorKind::FfnDown, l16, c.dim, c.ffn_dim)?,
                attn_q_bias,
                attn_k_bias,
                attn_v_bias,
                attn_q_norm: f.vector_if(lay.qk_norm, TensorKind::AttnQNorm, l16, hd)?,
                attn_k_norm: f.vector_if(lay.qk_norm, TensorKind::AttnKNorm, l16, hd)?,
                attn_post_norm: f.vector_if(
                    lay.post_norms,
                    TensorKind::AttnPostNorm,
                    l16,
                    c.dim,
                )?,
                ffn_post_norm: f.vector_if(lay.post_norms, TensorKind::FfnPostNorm, l16, c.dim)?,
            };
            self.layers.push(lw).map_err(|_| Error::CapExceeded {
                what: Cap::Layers,
                found: c.n_layers as u64,
                cap: MAX_LAYERS as u64,
            })?;
        }
        Ok(())
    }

    /// Calls `f` on every matrix decode multiplies, in a fixed order (the
    /// classifier, then each layer's seven): where packed copies are built
    /// and then attached, both passes see the same sequence. A layer's
    /// matrices are multiplied in the groups of [`LAYER_STEPS`].
    pub fn visit_matrices<E>(
        &mut self,
        mut f: impl FnMut(&mut Matrix<'a>) -> core::result::Result<(), E>,
    ) -> core::result::Result<(), E> {
        f(&mut self.output)?;
        for l in self.layers.iter_mut() {
            for m in l.matrices_mut() {
                f(m)?;
            }
        }
        Ok(())
    }

    /// Bytes of weights one decode step reads (every matrix once, plus norms).
    pub fn bytes_per_token(&self) -> usize {
        let norms = |s: &[f32]| core::mem::size_of_val(s);
        let mut n = self.output.n_bytes() + norms(self.output_norm);
        for l in &self.layers {
            n += l.attn_q.n_bytes()
                + l.attn_k.n_bytes()
                + l.attn_v.n_bytes()
                + l.attn_output.n_bytes();
            n += l.ffn_gate.n_bytes() + l.ffn_up.n_bytes() + l.ffn_down.n_bytes();
            n += norms(l.attn_norm) + norms(l.ffn_norm);
            n += norms(l.attn_q_norm) + norms(l.attn_k_norm);
            n += norms(l.attn_post_norm) + norms(l.ffn_post_norm);
            n += norms(l.attn_q_bias) + norms(l.attn_k_bias) + norms(l.attn_v_bias);
        }
        n
    }
}
