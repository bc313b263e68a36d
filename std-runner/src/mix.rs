//! The file types of `ember convert` and, for llama.cpp's mixes, each
//! tensor's type as llama.cpp's quantizer picks it without an importance
//! matrix (`llama_tensor_get_type` in llama-quant.cpp): the classifier at
//! six bits, the `_M` mixes' extra bits for attn_v and ffn_down in the
//! first and last eighths and every third layer between, and the fall-back
//! to a 32-element format for rows that are not a multiple of 256 (Q4_K to
//! Q5_0, Q5_K to Q5_1, Q6_K to Q8_0, Q2_K and Q3_K to Q4_0, then F16).
//! Mixture-of-experts and Falcon special cases are left out: Ember runs
//! neither.

use anyhow::{bail, Result};
use ember_core::gguf::{Gguf, TensorInfo};
use ember_core::quant::GgmlType;

/// A target file type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    /// Every matrix in one type (Ember's own rule for the classifier of
    /// the 4-bit legacy types: Q8_0).
    Pure(GgmlType),
    /// One of llama.cpp's mixes.
    Mix(Mix),
}

/// llama.cpp's `llama_ftype` mixes that Ember writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum Mix {
    Q2_K,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
    Q5_0,
    Q5_1,
    BF16,
}

/// The names `--type` takes, with what each means.
pub const NAMES: &[(&str, FileType)] = &[
    ("f32", FileType::Pure(GgmlType::F32)),
    ("f16", FileType::Pure(GgmlType::F16)),
    ("q8_0", FileType::Pure(GgmlType::Q8_0)),
    ("q4_0", FileType::Pure(GgmlType::Q4_0)),
    ("q4_1", FileType::Pure(GgmlType::Q4_1)),
    ("bf16", FileType::Mix(Mix::BF16)),
    ("q5_0", FileType::Mix(Mix::Q5_0)),
    ("q5_1", FileType::Mix(Mix::Q5_1)),
    ("q2_k", FileType::Mix(Mix::Q2_K)),
    ("q3_k_s", FileType::Mix(Mix::Q3_K_S)),
    ("q3_k_m", FileType::Mix(Mix::Q3_K_M)),
    ("q3_k_l", FileType::Mix(Mix::Q3_K_L)),
    ("q4_k_s", FileType::Mix(Mix::Q4_K_S)),
    ("q4_k_m", FileType::Mix(Mix::Q4_K_M)),
    ("q5_k_s", FileType::Mix(Mix::Q5_K_S)),
    ("q5_k_m", FileType::Mix(Mix::Q5_K_M)),
    ("q6_k", FileType::Mix(Mix::Q6_K)),
];

impl From<GgmlType> for FileType {
    fn from(t: GgmlType) -> FileType {
        FileType::Pure(t)
    }
}

impl From<Mix> for FileType {
    fn from(m: Mix) -> FileType {
        FileType::Mix(m)
    }
}

impl FileType {
    /// Parses a `--type` name (any case).
    pub fn parse(s: &str) -> Result<FileType> {
        let lower = s.to_ascii_lowercase();
        match NAMES.iter().find(|(n, _)| *n == lower) {
            Some(&(_, t)) => Ok(t),
            None => {
                let all: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
                bail!("unknown type '{s}' (expected one of {})", all.join(", "))
            }
        }
    }

    /// The `--type` name.
    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("?", |(n, _)| n)
    }

    /// llama.cpp's `llama_ftype` (`general.file_type`).
    pub fn llama_ftype(self) -> u32 {
        match self {
            FileType::Pure(t) => t.file_type(),
            FileType::Mix(m) => match m {
                Mix::Q5_0 => 8,
                Mix::Q5_1 => 9,
                Mix::Q2_K => 10,
                Mix::Q3_K_S => 11,
                Mix::Q3_K_M => 12,
                Mix::Q3_K_L => 13,
                Mix::Q4_K_S => 14,
                Mix::Q4_K_M => 15,
                Mix::Q5_K_S => 16,
                Mix::Q5_K_M => 17,
                Mix::Q6_K => 18,
                Mix::BF16 => 32,
            },
        }
    }
}

impl Mix {
    /// The type of most matrices (`llama_ftype_get_default_type`).
    fn default_type(self) -> GgmlType {
        match self {
            Mix::Q2_K => GgmlType::Q2_K,
            Mix::Q3_K_S | Mix::Q3_K_M | Mix::Q3_K_L => GgmlType::Q3_K,
            Mix::Q4_K_S | Mix::Q4_K_M => GgmlType::Q4_K,
            Mix::Q5_K_S | Mix::Q5_K_M => GgmlType::Q5_K,
            Mix::Q6_K => GgmlType::Q6_K,
            Mix::Q5_0 => GgmlType::Q5_0,
            Mix::Q5_1 => GgmlType::Q5_1,
            Mix::BF16 => GgmlType::BF16,
        }
    }
}

/// What the choice of a tensor's type depends on beyond the tensor: the
/// model's shape. (llama.cpp counts attn_v and ffn_down tensors as it
/// meets them, in layer order; a tensor's layer number is that count.)
#[derive(Debug)]
pub struct MixState {
    mix: Mix,
    tied: bool,
    /// Query heads per KV head.
    n_gqa: u32,
    n_layers: i32,
    n_attn_v: i32,
}

/// The layer number of a `blk.N.` tensor.
fn layer_of(name: &str) -> i32 {
    name.strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// llama.cpp's `use_more_bits`: the first and last eighths of the layers
/// and every third layer between.
fn use_more_bits(i: i32, n: i32) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

impl MixState {
    pub fn new(mix: Mix, g: &Gguf) -> MixState {
        let arch = g
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("llama");
        let key = |k: &str| g.get(&format!("{arch}.{k}")).and_then(|v| v.as_u32());
        let heads = key("attention.head_count").unwrap_or(1);
        let kv = key("attention.head_count_kv").unwrap_or(heads).max(1);
        MixState {
            mix,
            tied: g.tensor("output.weight").is_none(),
            n_gqa: heads / kv,
            n_layers: key("block_count").unwrap_or(0) as i32,
            n_attn_v: g
                .tensors()
                .filter(|t| t.name.contains("attn_v.weight") || t.name.contains("attn_qkv.weight"))
                .count() as i32,
        }
    }

    /// The type of `t` in the output.
    pub fn type_of(&self, t: &TensorInfo) -> GgmlType {
        let name = t.name;
        let quantizable =
            t.n_dims >= 2 && name.ends_with("weight") && !name.contains("_norm.weight");
        if !quantizable {
            return t.ty;
        }
        let def = self.mix.default_type();
        if !def.is_quantized() {
            return def;
        }
        let ty = self.choose(t, def);
        fallback(t.dims[0], ty)
    }

    fn choose(&self, t: &TensorInfo, def: GgmlType) -> GgmlType {
        use GgmlType as T;
        let (m, name) = (self.mix, t.name);
        let classifier = name == "output.weight" || (self.tied && name == "token_embd.weight");
        if classifier {
            let nx = t.dims[0];
            return if !nx.is_multiple_of(def.block_len() as u64) {
                T::Q8_0
            } else if def != T::Q8_0 {
                T::Q6_K
            } else {
                def
            };
        }
        if name.contains("attn_v.weight") || name.contains("attn_qkv.weight") {
            let i = layer_of(name);
            let gqa4 = self.n_gqa >= 4;
            return match m {
                Mix::Q2_K if gqa4 => T::Q4_K,
                Mix::Q2_K => T::Q3_K,
                Mix::Q3_K_M if i < 2 => T::Q5_K,
                Mix::Q3_K_M => T::Q4_K,
                Mix::Q3_K_L => T::Q5_K,
                Mix::Q4_K_M | Mix::Q5_K_M if use_more_bits(i, self.n_attn_v) => T::Q6_K,
                Mix::Q4_K_S if i < 4 => T::Q5_K,
                _ => def,
            };
        }
        if name.contains("ffn_down") {
            let (i, n) = (layer_of(name), self.n_layers);
            return match m {
                Mix::Q2_K => T::Q3_K,
                Mix::Q3_K_M if i < n / 16 => T::Q5_K,
                Mix::Q3_K_M => T::Q4_K,
                Mix::Q3_K_L => T::Q5_K,
                Mix::Q4_K_M | Mix::Q5_K_M if use_more_bits(i, n) => T::Q6_K,
                Mix::Q4_K_S if i < n / 8 => T::Q5_K,
                _ => def,
            };
        }
        if name.contains("attn_output.weight") {
            return match m {
                Mix::Q2_K => T::Q3_K,
                Mix::Q3_K_M => T::Q4_K,
                Mix::Q3_K_L => T::Q5_K,
                _ => def,
            };
        }
        def
    }
}

/// `tensor_type_fallback`: a 256-element format on rows of `ncols` that it
/// does not divide becomes its 32-element stand-in, or F16 if even that
/// does not divide.
pub fn fallback(ncols: u64, ty: GgmlType) -> GgmlType {
    use GgmlType as T;
    if ncols.is_multiple_of(ty.block_len() as u64) {
        return ty;
    }
    let to = match ty {
        T::Q2_K | T::Q3_K => T::Q4_0,
        T::Q4_K => T::Q5_0,
        T::Q5_K => T::Q5_1,
        T::Q6_K => T::Q8_0,
        other => other,
    };
    if !ncols.is_multiple_of(to.block_len() as u64) {
        T::F16
    } else {
        to
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_an_error() {
        for &(n, t) in NAMES {
            assert_eq!(FileType::parse(n).unwrap(), t);
            assert_eq!(FileType::parse(&n.to_uppercase()).unwrap(), t);
            assert_eq!(t.name(), n);
        }
        let e = FileType::parse("q9_k").unwrap_err().to_string();
        assert!(e.contains("q4_k_m") && e.contains("q9_k"), "{e}");
    }

    #[test]
    fn more_bits_layers_match_llama_cpp() {
        // 30 layers (SmolLM2-135M): the first 3, the last 4, every third between.
        let picked: Vec<i32> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(picked, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
    }

    #[test]
    fn fallbacks() {
        assert_eq!(fallback(576, GgmlType::Q4_K), GgmlType::Q5_0);
        assert_eq!(fallback(576, GgmlType::Q5_K), GgmlType::Q5_1);
        assert_eq!(fallback(576, GgmlType::Q6_K), GgmlType::Q8_0);
        assert_eq!(fallback(576, GgmlType::Q3_K), GgmlType::Q4_0);
        assert_eq!(fallback(1024, GgmlType::Q4_K), GgmlType::Q4_K);
        assert_eq!(fallback(100, GgmlType::Q6_K), GgmlType::F16);
    }
}
