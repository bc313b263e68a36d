//! The decoder families the core runs, and what sets each apart. One
//! forward pass reads this description; no family has a copy of its own.
//! A leaf module: it imports nothing.

#![forbid(unsafe_code)]

/// A model family, as `general.architecture` names it.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Arch {
    /// Llama 1–3.x, SmolLM, Mistral-style files.
    Llama,
    /// Qwen2 and Qwen2.5: biases on Q, K and V.
    Qwen2,
    /// Qwen3: RMSNorm on each query and key head.
    Qwen3,
    /// Phi-3 and Phi-4-mini: fused QKV and gate-up projections.
    Phi3,
    /// Gemma 3: sliding-window layers between global ones, QK-norm, norms
    /// before and after each block, GeGLU, embeddings scaled by √dim.
    Gemma3,
}

/// How RoPE pairs a head's dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RopeOrder {
    /// Adjacent pairs `(2i, 2i + 1)` (ggml's NORM).
    Normal,
    /// Halves `(i, i + d/2)` (ggml's NEOX).
    Neox,
}

/// The FFN's gate non-linearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Activation {
    /// SwiGLU: `silu(gate) * up`.
    Silu,
    /// GeGLU with the tanh approximation of GELU: `gelu(gate) * up`.
    GeluTanh,
}

/// What a family's graph looks like, beyond the numbers in its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Layout {
    pub rope: RopeOrder,
    pub act: Activation,
    /// RMSNorm over each query and key head before RoPE (`attn_q_norm`,
    /// `attn_k_norm`).
    pub qk_norm: bool,
    /// RMSNorm on the attention and FFN outputs before each residual add
    /// (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    /// Embedding rows are multiplied by √dim.
    pub embed_scale: bool,
    /// Q, K and V may come as one `attn_qkv` matrix, and gate and up as one
    /// `ffn_up` of twice the FFN width (gate rows first).
    pub fused: bool,
    /// Every n-th layer attends globally, the others within the sliding
    /// window, when the file names a window (0: no pattern).
    pub window_pattern: usize,
}

impl Arch {
    /// Every family, for messages and tests.
    pub const ALL: [Arch; 5] = [
        Arch::Llama,
        Arch::Qwen2,
        Arch::Qwen3,
        Arch::Phi3,
        Arch::Gemma3,
    ];

    /// The family `general.architecture` names (`None`: not one the core runs).
    pub fn from_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The `general.architecture` value, which also prefixes the family's
    /// metadata keys.
    pub const fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Phi3 => "phi3",
            Arch::Gemma3 => "gemma3",
        }
    }

    /// The family's graph.
    pub const fn layout(self) -> Layout {
        let base = Layout {
            rope: RopeOrder::Neox,
            act: Activation::Silu,
            qk_norm: false,
            post_norms: false,
            embed_scale: false,
            fused: false,
            window_pattern: 0,
        };
        match self {
            Arch::Llama => Layout {
                rope: RopeOrder::Normal,
                ..base
            },
            Arch::Qwen2 => base,
            Arch::Qwen3 => Layout {
                qk_norm: true,
                ..base
            },
            Arch::Phi3 => Layout {
                fused: true,
                ..base
            },
            Arch::Gemma3 => Layout {
                act: Activation::GeluTanh,
                qk_norm: true,
                post_norms: true,
                embed_scale: true,
                window_pattern: 6,
                ..base
            },
        }
    }
}
