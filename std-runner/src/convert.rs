//! `ember convert`: rewrites a GGUF file with its weight matrices in another
//! type, keeping every metadata pair and the tensor order.
//!
//! - 1-D tensors (norms) and tensors already of the target type are copied.
//! - Everything else is dequantized to f32 and quantized to the target, with
//!   ggml's reference rounding (`quantize_row_*_ref`), so the output matches
//!   what gguf-py or llama-quantize write from the same input.
//! - For 4-bit targets the classifier (`output.weight`, or `token_embd.weight`
//!   when the file ties them) stays 8-bit: it is copied if already Q8_0, else
//!   quantized to Q8_0. llama.cpp keeps that tensor at higher precision too.
//! - llama.cpp's mixes (`q4_k_m`, `q5_0`, `bf16`, …: [`crate::mix`]) pick
//!   each tensor's type as llama.cpp's quantizer does without an importance
//!   matrix; the K-quant rounding is ggml's reference (`quantize_row_*_ref`).
//! - `general.file_type` is set to llama.cpp's code for the target.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use ember_core::gguf::{Gguf, TensorInfo};
use ember_core::gguf_writer::GgufWriter;
use ember_core::kernels::Matrix;
use ember_core::quant::{self, GgmlType};

use crate::mix::{FileType, MixState};

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Input GGUF.
    pub input: PathBuf,
    /// Output GGUF.
    pub output: PathBuf,
    /// Target type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, or a
    /// K-quant mix: q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s,
    /// q5_k_m, q6_k.
    #[arg(long = "type", short = 't')]
    pub ty: String,
}

/// `ember convert IN OUT --type T`.
pub fn cmd_convert(a: ConvertArgs) -> Result<()> {
    let ty = FileType::parse(&a.ty)?;
    convert_file(&a.input, &a.output, ty)
        .with_context(|| format!("converting {}", a.input.display()))?;
    eprintln!("ember: wrote {} ({})", a.output.display(), ty.name());
    Ok(())
}

/// Parses one ggml type by name, any case (`q8_0`, `q4_k`, `bf16`, …): the
/// type of every matrix `ember synth` writes.
pub fn parse_type(s: &str) -> Result<GgmlType> {
    let lower = s.to_ascii_lowercase();
    GgmlType::ALL
        .into_iter()
        .find(|t| t.name().eq_ignore_ascii_case(&lower))
        .with_context(|| {
            let all: Vec<&str> = GgmlType::ALL.iter().map(|t| t.name()).collect();
            format!("unknown type '{s}' (expected one of {})", all.join(", "))
        })
}

/// Converts the file at `src` and writes `dst` (atomically, via a temporary file).
pub fn convert_file(src: &Path, dst: &Path, ty: FileType) -> Result<()> {
    let map = crate::mmap::map(src)?;
    let g = Gguf::parse(&map).with_context(|| format!("{}", src.display()))?;
    let bytes = convert(&g, ty)?;
    let tmp = dst.with_extension(format!(
        "part-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, dst).with_context(|| format!("cannot write {}", dst.display()))?;
    Ok(())
}

/// The converted file's bytes.
pub fn convert(g: &Gguf, ty: FileType) -> Result<Vec<u8>> {
    let mut w = GgufWriter::new();
    w.version(g.version).alignment(g.alignment);
    let mut wrote_ftype = false;
    for (key, _, raw) in g.metadata_raw() {
        if key == "general.file_type" {
            w.add_u32(key, ty.llama_ftype());
            wrote_ftype = true;
        } else {
            w.add_raw(raw);
        }
    }
    if !wrote_ftype {
        w.add_u32("general.file_type", ty.llama_ftype());
    }
    let tied = g.tensor("output.weight").is_none();
    /// How each tensor's type is chosen.
    enum Rule {
        Pure(GgmlType),
        Mix(MixState),
    }
    let rule = match ty {
        FileType::Mix(m) => Rule::Mix(MixState::new(m, g)),
        FileType::Pure(t) => Rule::Pure(t),
    };
    for t in g.tensors() {
        let classifier = t.name == "output.weight" || (tied && t.name == "token_embd.weight");
        let target = match &rule {
            Rule::Mix(mix) => mix.type_of(&t),
            &Rule::Pure(ty) => {
                if t.n_dims < 2 || t.dims[0] % ty.block_len() as u64 != 0 && ty != GgmlType::F16 {
                    t.ty
                } else if classifier && matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1) {
                    GgmlType::Q8_0
                } else {
                    ty
                }
            }
        };
        let dims = &t.dims[..t.n_dims as usize];
        let data = if target == t.ty {
            t.data.to_vec()
        } else {
            requantize(&t, target)?
        };
        w.add_tensor(t.name, dims, target, data);
    }
    Ok(w.to_bytes())
}

/// Dequantizes each row of `t` to f32 and quantizes it to `ty`.
fn requantize(t: &TensorInfo, ty: GgmlType) -> Result<Vec<u8>> {
    let m = Matrix::from_tensor(t)?;
    let mut rows = vec![0f32; m.cols * m.rows];
    for (r, row) in rows.chunks_mut(m.cols).enumerate() {
        m.dequantize_row(r, row)?;
    }
    quantize_rows(&rows, m.cols, ty)
}

/// Quantizes `data` (rows of `cols` floats) to `ty` with ggml's reference rounding.
pub fn quantize_rows(data: &[f32], cols: usize, ty: GgmlType) -> Result<Vec<u8>> {
    quant::quantize_rows(data, cols, ty).context("row is not a whole number of blocks")
}
