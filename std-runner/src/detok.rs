//! Token ids to text for the host runner's output: GPT-2 byte-level BPE
//! vocabularies (each character stands for one byte) and SentencePiece ones
//! (`▁` for a space, `<0xXX>` for a raw byte). Control tokens print nothing.

use ember_core::gguf::Gguf;

/// The vocabulary's byte strings.
#[derive(Debug, Clone)]
pub struct Detokenizer {
    pieces: Vec<Vec<u8>>,
}

/// GPT-2's `bytes_to_unicode`, inverted: the byte that each code point stands for.
fn gpt2_unicode_to_byte() -> std::collections::HashMap<char, u8> {
    let mut map = std::collections::HashMap::new();
    let mut n = 0u32;
    for b in 0u32..=255 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            n += 1;
            255 + n
        };
        if let Some(c) = char::from_u32(c) {
            map.insert(c, b as u8);
        }
    }
    map
}

impl Detokenizer {
    /// Reads `tokenizer.ggml.*`; `None` when the file has no vocabulary.
    pub fn from_gguf(g: &Gguf) -> Option<Detokenizer> {
        let tokens = g.get("tokenizer.ggml.tokens")?.as_array()?;
        let types = g
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array());
        let model = g
            .get("tokenizer.ggml.model")
            .and_then(|v| v.as_str())
            .unwrap_or("gpt2");
        let byte_level = model != "llama";
        let inv = gpt2_unicode_to_byte();
        let mut pieces = Vec::with_capacity(tokens.len() as usize);
        for (i, t) in tokens.iter().enumerate() {
            let s = t.as_str().unwrap_or("");
            let ty = types
                .and_then(|a| a.get(i as u64))
                .and_then(|v| v.as_u64())
                .unwrap_or(1);
            // 3 = control: not printed (llama.cpp's default without unparse_special).
            let piece = if ty == 3 {
                Vec::new()
            } else if byte_level {
                s.chars()
                    .map(|c| inv.get(&c).copied().unwrap_or(b'?'))
                    .collect()
            } else if let Some(hex) = s.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')) {
                u8::from_str_radix(hex, 16)
                    .map(|b| vec![b])
                    .unwrap_or_else(|_| s.as_bytes().to_vec())
            } else {
                s.replace('\u{2581}', " ").into_bytes()
            };
            pieces.push(piece);
        }
        Some(Detokenizer { pieces })
    }

    /// The bytes of `id` (empty for unknown ids).
    pub fn piece(&self, id: u32) -> &[u8] {
        self.pieces
            .get(id as usize)
            .map(|p| p.as_slice())
            .unwrap_or(&[])
    }

    /// All ids' bytes, decoded as UTF-8 with U+FFFD for invalid sequences.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&i| self.piece(i).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
