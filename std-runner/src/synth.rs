//! `ember synth`: a deterministic random-weights GGUF of any shape and
//! family (`--arch llama|llama3|qwen2|qwen3|phi3|gemma3`).
//!
//! The writer is [`ember_core::synth`] (re-exported here), so the firmware's
//! build script makes the same bytes without this crate; this module is the
//! command: its flags, and errors that name them.

use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use ember_core::error::{Cap, MetaKey};
use ember_core::Error as CoreError;

pub use ember_core::synth::*;

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output GGUF.
    pub output: PathBuf,
    #[arg(long)]
    pub dim: usize,
    #[arg(long)]
    pub layers: usize,
    #[arg(long)]
    pub heads: usize,
    #[arg(long)]
    pub kv_heads: usize,
    #[arg(long)]
    pub ffn: usize,
    #[arg(long)]
    pub vocab: usize,
    /// Context length written to the metadata.
    #[arg(long, default_value_t = 256)]
    pub ctx: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Weight type of every matrix: any ggml type Ember reads (f32, f16,
    /// bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_K, q3_K, q4_K, q5_K, q6_K).
    #[arg(long = "type", short = 't', default_value = "q8_0")]
    pub ty: String,
    /// Family: llama, llama3 (Llama 3's RoPE frequency factors), qwen2
    /// (QKV biases), qwen3 (QK-norm), phi3 (fused QKV and gate-up), gemma3
    /// (sliding-window layers, QK-norm, post-norms, GeGLU).
    #[arg(long, default_value = "llama")]
    pub arch: String,
    /// Per-head width (default --dim / --heads); Qwen3 and Gemma 3 models
    /// have heads wider than that.
    #[arg(long, default_value_t = 0)]
    pub head_dim: usize,
    /// Gemma 3's sliding window, in positions.
    #[arg(long, default_value_t = 512)]
    pub window: usize,
}

/// `ember synth OUT.gguf --dim D ...`.
pub fn cmd_synth(a: SynthArgs) -> Result<()> {
    let cfg = SynthConfig {
        dim: a.dim,
        layers: a.layers,
        heads: a.heads,
        kv_heads: a.kv_heads,
        ffn: a.ffn,
        vocab: a.vocab,
        ctx: a.ctx,
        seed: a.seed,
        ty: crate::convert::parse_type(&a.ty)?,
    };
    let family = Family::from_name(&a.arch).ok_or_else(|| {
        let names: Vec<_> = Family::ALL.iter().map(|f| f.name()).collect();
        anyhow!("unknown --arch {} (one of: {})", a.arch, names.join(", "))
    })?;
    let opts = FamilyOptions {
        family,
        head_dim: a.head_dim,
        window: a.window,
    };
    let bytes = synth_family(&cfg, &opts).map_err(|e| explain(e, &cfg))?;
    std::fs::write(&a.output, &bytes)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    eprintln!(
        "ember: wrote {} ({} bytes)",
        a.output.display(),
        bytes.len()
    );
    Ok(())
}

/// The flag that sets the size written to `key`.
fn flag(key: MetaKey) -> &'static str {
    match key {
        MetaKey::EmbeddingLength => "--dim",
        MetaKey::BlockCount => "--layers",
        MetaKey::HeadCount => "--heads",
        MetaKey::HeadCountKv => "--kv-heads",
        MetaKey::FeedForwardLength => "--ffn",
        MetaKey::VocabSize => "--vocab",
        MetaKey::ContextLength => "--ctx",
        _ => key.as_str(),
    }
}

/// A shape error of [`SynthConfig::check`], told in flags.
fn explain(e: CoreError, c: &SynthConfig) -> anyhow::Error {
    match e {
        CoreError::BadMetadata { key } => {
            let out_of_range = c
                .sizes()
                .into_iter()
                .find(|&(k, v, max)| k == key && (v == 0 || v > max));
            match (out_of_range, key) {
                (Some((_, v, max)), _) => {
                    anyhow!("{} must be between 1 and {max} (got {v})", flag(key))
                }
                (None, MetaKey::HeadCount) => {
                    anyhow!("--dim {} is not a multiple of --heads {}", c.dim, c.heads)
                }
                (None, MetaKey::HeadCountKv) => anyhow!(
                    "--heads {} is not a multiple of --kv-heads {}",
                    c.heads,
                    c.kv_heads
                ),
                (None, MetaKey::RopeDimensionCount) => {
                    anyhow!("the head size --dim/--heads must be even for RoPE")
                }
                _ => e.into(),
            }
        }
        CoreError::CapExceeded {
            what: Cap::TensorElements,
            found,
            ..
        } => anyhow!("{found} parameters is more than synth makes (2^31)"),
        CoreError::BadHyperparameter {
            key: MetaKey::KeyLength,
            arch,
        } => anyhow!(
            "--head-dim must be even (and, for {}, equal --dim / --heads)",
            arch.name()
        ),
        CoreError::BadHyperparameter {
            key: MetaKey::SlidingWindow,
            ..
        } => anyhow!("--window must be between 1 and --ctx {}", c.ctx),
        e => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ember_core::quant::GgmlType;

    fn tiny() -> SynthConfig {
        SynthConfig {
            dim: 64,
            layers: 2,
            heads: 8,
            kv_heads: 4,
            ffn: 172,
            vocab: 8,
            ctx: 128,
            seed: 1,
            ty: GgmlType::F32,
        }
    }

    #[test]
    fn bad_shapes_name_the_flag() {
        let e = |c: SynthConfig| explain(synth(&c).unwrap_err(), &c).to_string();
        assert_eq!(
            e(SynthConfig { dim: 0, ..tiny() }),
            "--dim must be between 1 and 16384 (got 0)"
        );
        assert_eq!(
            e(SynthConfig {
                ctx: 1 << 21,
                ..tiny()
            }),
            "--ctx must be between 1 and 1048576 (got 2097152)"
        );
        assert_eq!(
            e(SynthConfig { heads: 7, ..tiny() }),
            "--dim 64 is not a multiple of --heads 7"
        );
        assert_eq!(
            e(SynthConfig {
                kv_heads: 3,
                ..tiny()
            }),
            "--heads 8 is not a multiple of --kv-heads 3"
        );
        assert_eq!(
            e(SynthConfig {
                heads: 64,
                kv_heads: 64,
                ..tiny()
            }),
            "the head size --dim/--heads must be even for RoPE"
        );
        let huge = SynthConfig {
            dim: 1 << 14,
            layers: 128,
            ..tiny()
        };
        assert_eq!(
            e(huge),
            format!(
                "{} parameters is more than synth makes (2^31)",
                huge.params()
            )
        );
    }
}
