//! Hyperparameters from a family's GGUF metadata (`{arch}.*`), checked
//! against caps.

#![forbid(unsafe_code)]

use crate::arch::{Arch, Layout};
use crate::error::{Cap, Error, MetaKey, Result};
use crate::gguf::Gguf;

pub use crate::limits;

/// A decoder's shape and its family's graph.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Config {
    /// The family (`general.architecture`).
    pub arch: Arch,
    /// What the family's graph does besides the shared steps.
    pub layout: Layout,
    /// Residual stream width (`{arch}.embedding_length`).
    pub dim: usize,
    /// Decoder blocks (`{arch}.block_count`).
    pub n_layers: usize,
    /// Query heads (`{arch}.attention.head_count`).
    pub n_heads: usize,
    /// Key/value heads (`{arch}.attention.head_count_kv`, default `n_heads`).
    pub n_kv_heads: usize,
    /// Per-head width (`{arch}.attention.key_length`, default `dim / n_heads`).
    pub head_dim: usize,
    /// Gated FFN hidden width (`{arch}.feed_forward_length`).
    pub ffn_dim: usize,
    /// Vocabulary size (rows of `token_embd.weight`; `{arch}.vocab_size` must agree).
    pub vocab_size: usize,
    /// Trained context (`{arch}.context_length`), informational.
    pub context_length: usize,
    /// RoPE base frequency (`{arch}.rope.freq_base`, default 10000).
    pub rope_base: f32,
    /// Dimensions rotated per head (`{arch}.rope.dimension_count`, default `head_dim`).
    pub rope_dim: usize,
    /// RMSNorm epsilon (`{arch}.attention.layer_norm_rms_epsilon`, default 1e-5).
    pub rms_eps: f32,
    /// What the global layers' RoPE angles are multiplied by: 1, or one over
    /// a linear scaling factor (`{arch}.rope.scaling.*`).
    pub rope_scale: f32,
    /// RoPE base of the windowed layers (`{arch}.rope.freq_base_swa`, 10000
    /// by default, as for Gemma 3's local layers).
    pub rope_base_window: f32,
    /// Positions a windowed layer's query sees (`{arch}.attention.sliding_window`;
    /// 0: every layer is global).
    pub window: usize,
    /// Bit `l`: layer `l` is windowed.
    pub window_layers: u128,
    /// What attention scores are multiplied by.
    pub attn_scale: f32,
    /// What embedding rows are multiplied by (√dim for Gemma, else 1).
    pub embed_scale: f32,
    /// Logits become `cap * tanh(logit / cap)` (`{arch}.final_logit_softcapping`; 0: none).
    pub logit_softcap: f32,
}

/// One family's metadata reader: its keys carry the family's prefix.
struct Meta<'g, 'a> {
    g: &'g Gguf<'a>,
    arch: Arch,
}

impl<'a> Meta<'_, 'a> {
    fn bad(&self, key: MetaKey) -> Error {
        Error::BadHyperparameter {
            arch: self.arch,
            key,
        }
    }

    fn value(&self, key: MetaKey) -> Option<crate::gguf::Value<'a>> {
        self.g.get(&key.key(self.arch))
    }

    fn usize(&self, key: MetaKey) -> Result<Option<usize>> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .map(Some)
                .ok_or(self.bad(key)),
        }
    }

    fn require(&self, key: MetaKey) -> Result<usize> {
        self.usize(key)?.ok_or(Error::MissingHyperparameter {
            arch: self.arch,
            key,
        })
    }

    /// A required count in `1..=cap`.
    fn capped(&self, key: MetaKey, what: Cap, cap: usize) -> Result<usize> {
        let v = self.require(key)?;
        check_cap(v, what, cap).map_err(|e| if v == 0 { self.bad(key) } else { e })
    }

    fn f32(&self, key: MetaKey, default: f32) -> Result<f32> {
        match self.value(key) {
            None => Ok(default),
            Some(v) => v.as_f32().ok_or(self.bad(key)),
        }
    }

    /// Which layers are windowed: every `pattern`-th layer is global
    /// (`{arch}.attention.sliding_window_pattern` may give the period, or
    /// one flag per layer, true for windowed).
    fn window_layers(&self, n_layers: usize, pattern: usize) -> Result<u128> {
        let key = MetaKey::SlidingWindowPattern;
        let period = match self.value(key) {
            None => pattern,
            Some(crate::gguf::Value::Array(a)) => {
                if a.len() != n_layers as u64 {
                    return Err(self.bad(key));
                }
                let mut bits = 0u128;
                for (l, v) in a.iter().enumerate() {
                    let on = v.as_bool().or(v.as_u64().map(|x| x != 0));
                    if on.ok_or(self.bad(key))? {
                        bits |= 1 << l;
                    }
                }
                return Ok(bits);
            }
            Some(v) => v
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or(self.bad(key))?,
        };
        let mut bits = 0u128;
        for l in 0..n_layers {
            if period == 0 || l % period < period - 1 {
                bits |= 1 << l;
            }
        }
        Ok(bits)
    }
}

fn check_cap(v: usize, what: Cap, cap: usize) -> Result<usize> {
    if v == 0 || v > cap {
        return Err(Error::CapExceeded {
            what,
            found: v as u64,
            cap: cap as u64,
        });
    }
    Ok(v)
}

impl Config {
    /// Reads and checks the config of a file of any family the core runs.
    pub fn from_gguf(g: &Gguf) -> Result<Config> {
        let name = g
            .get(MetaKey::Architecture.as_str())
            .ok_or(Error::MissingMetadata {
                key: MetaKey::Architecture,
            })?
            .as_str()
            .ok_or(Error::BadMetadata {
                key: MetaKey::Architecture,
            })?;
        let arch = Arch::from_name(name).ok_or(Error::UnsupportedArchitecture)?;
        let layout = arch.layout();
        let m = Meta { g, arch };
        use limits::*;
        let dim = m.capped(MetaKey::EmbeddingLength, Cap::Dimension, MAX_DIM)?;
        let n_layers = m.capped(MetaKey::BlockCount, Cap::Layers, MAX_LAYERS)?;
        let n_heads = m.capped(MetaKey::HeadCount, Cap::Heads, MAX_HEADS)?;
        let n_kv_heads = match m.usize(MetaKey::HeadCountKv)? {
            Some(v) => check_cap(v, Cap::Heads, MAX_HEADS).map_err(|e| {
                if v == 0 {
                    m.bad(MetaKey::HeadCountKv)
                } else {
                    e
                }
            })?,
            None => n_heads,
        };
        if n_heads % n_kv_heads != 0 {
            return Err(m.bad(MetaKey::HeadCountKv));
        }
        let head_dim = match m.usize(MetaKey::KeyLength)? {
            Some(v) => check_cap(v, Cap::Dimension, MAX_DIM).map_err(|e| {
                if v == 0 {
                    m.bad(MetaKey::KeyLength)
                } else {
                    e
                }
            })?,
            None if dim % n_heads == 0 => dim / n_heads,
            None => return Err(m.bad(MetaKey::HeadCount)),
        };
        if head_dim % 2 != 0 || n_heads * head_dim > MAX_DIM {
            return Err(m.bad(MetaKey::KeyLength));
        }
        if m.usize(MetaKey::ValueLength)?
            .is_some_and(|v| v != head_dim)
        {
            return Err(m.bad(MetaKey::ValueLength));
        }
        let ffn_dim = m.capped(MetaKey::FeedForwardLength, Cap::Dimension, MAX_FFN)?;
        let context_length = m.usize(MetaKey::ContextLength)?.unwrap_or(0);
        let rope_dim = match m.usize(MetaKey::RopeDimensionCount)? {
            Some(v) if v > 0 && v <= head_dim && v % 2 == 0 => v,
            Some(_) => return Err(m.bad(MetaKey::RopeDimensionCount)),
            None => head_dim,
        };
        let base = |key, default| {
            let b = m.f32(key, default)?;
            if b.is_finite() && b > 1.0 {
                Ok(b)
            } else {
                Err(m.bad(key))
            }
        };
        let rope_base = base(MetaKey::RopeFreqBase, 10_000.0)?;
        let rope_base_window = base(MetaKey::RopeFreqBaseSwa, 10_000.0)?;
        let rope_scale = match m.value(MetaKey::RopeScalingType) {
            None => 1.0,
            Some(v) => match v.as_str().ok_or(m.bad(MetaKey::RopeScalingType))? {
                "none" => 1.0,
                "linear" => {
                    let f = m.f32(MetaKey::RopeScalingFactor, 1.0)?;
                    if !(f.is_finite() && f >= 1.0) {
                        return Err(m.bad(MetaKey::RopeScalingFactor));
                    }
                    1.0 / f
                }
                // YaRN and LongRoPE change more than the angles.
                _ => return Err(m.bad(MetaKey::RopeScalingType)),
            },
        };
        let rms_eps = m.f32(MetaKey::RmsEpsilon, 1e-5)?;
        if !(rms_eps.is_finite() && rms_eps >= 0.0) {
            return Err(m.bad(MetaKey::RmsEpsilon));
        }
        let logit_softcap = m.f32(MetaKey::FinalLogitSoftcapping, 0.0)?;
        if !(logit_softcap.is_finite() && logit_softcap >= 0.0) {
            return Err(m.bad(MetaKey::FinalLogitSoftcapping));
        }

        // Windows, where the family has them and the file names one.
        let (window, window_layers) = match layout.window_pattern {
            0 => (0, 0),
            p => match m.usize(MetaKey::SlidingWindow)? {
                None | Some(0) => (0, 0),
                Some(w) if context_length > 0 && w > context_length => {
                    return Err(m.bad(MetaKey::SlidingWindow))
                }
                Some(w) => (w, m.window_layers(n_layers, p)?),
            },
        };

        // Gemma 3 27B scales queries by the model width per head, the
        // others by the head width.
        let attn_scale = if arch == Arch::Gemma3 && n_layers == 62 {
            1.0 / libm::sqrtf((dim / n_heads) as f32)
        } else {
            1.0 / libm::sqrtf(head_dim as f32)
        };
        let embed_scale = if layout.embed_scale {
            libm::sqrtf(dim as f32)
        } else {
            1.0
        };

        // The vocabulary is the embedding's row count; metadata, if any, must agree.
        let embd = g.tensor("token_embd.weight").ok_or(Error::MissingTensor {
            kind: crate::error::TensorKind::TokenEmbd,
            layer: 0,
        })?;
        let vocab_size = usize::try_from(embd.n_rows()).unwrap_or(usize::MAX);
        if vocab_size > MAX_VOCAB {
            return Err(Error::CapExceeded {
                what: Cap::Vocabulary,
                found: vocab_size as u64,
                cap: MAX_VOCAB as u64,
            });
        }
        if m.usize(MetaKey::VocabSize)?
            .is_some_and(|v| v != vocab_size)
        {
            return Err(m.bad(MetaKey::VocabSize));
        }

        Ok(Config {
            arch,
            layout,
            dim,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim,
            vocab_size,
            context_length,
            rope_base,
            rope_dim,
            rms_eps,
            rope_scale,
            rope_base_window,
            window,
            window_layers,
            attn_scale,
            embed_scale,
            logit_softcap,
        })
    }

    /// Whether layer `l` attends within the window.
    pub fn windowed(&self, l: usize) -> bool {
        l < 128 && (self.window_layers >> l) & 1 == 1
    }

    /// Whether the windowed layers rotate with a base of their own (two
    /// RoPE tables per token).
    pub fn rope_sets(&self) -> usize {
        if self.window_layers != 0 {
            2
        } else {
            1
        }
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}
