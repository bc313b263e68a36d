//! ggml's tensor type ids: which formats this core reads, by name and id.
//!
//! A leaf module: it imports nothing. Each type's block layout and scalar
//! reference live in its file under [`crate::quant`], registered in
//! [`crate::quant::FORMATS`], which also gives the block sizes
//! ([`GgmlType::block_len`], [`GgmlType::block_bytes`]).

#![forbid(unsafe_code)]

/// A ggml tensor type this core reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl GgmlType {
    /// Every type, in the order of [`GgmlType::index`].
    pub const ALL: [GgmlType; 5] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
    ];

    /// How many types there are (the length of per-type tables).
    pub const COUNT: usize = Self::ALL.len();

    /// This type's row in per-type tables (`0..COUNT`).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// From ggml's `enum ggml_type` id.
    pub const fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            _ => return None,
        })
    }

    /// ggml's `enum ggml_type` id.
    pub const fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
        }
    }

    /// llama.cpp's `llama_ftype` (`general.file_type`) for a file whose
    /// matrices are mostly this type.
    pub const fn file_type(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 7,
        }
    }

    /// ggml's lowercase name.
    pub const fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "f32",
            GgmlType::F16 => "f16",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q4_1 => "q4_1",
            GgmlType::Q8_0 => "q8_0",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::GgmlType;

    #[test]
    fn ids_names_and_indices_round_trip() {
        for (i, t) in GgmlType::ALL.into_iter().enumerate() {
            assert_eq!(t.index(), i);
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        assert_eq!(GgmlType::from_id(6), None);
    }
}
