//! Text on the host: the core tokenizer over a mapped file, reading prompts
//! from arguments or stdin, and stop strings. Chat templates are in
//! [`crate::template`] (re-exported here).

use std::io::Read;

use anyhow::{bail, Context, Result};
use ember_core::gguf::Gguf;
use ember_core::tokenizer::{EncodeOptions, Tokenizer};
use ember_core::Error as CoreError;

pub use crate::template::{ChatTemplate, Message, CHATML};

/// Builds the file's tokenizer, its index in `index`.
pub fn tokenizer<'m>(g: &Gguf<'m>, index: &'m mut Vec<u32>) -> Result<Tokenizer<'m>> {
    let explain = |e: CoreError| -> anyhow::Error {
        match e {
            CoreError::MissingMetadata { .. } if g.get("tokenizer.ggml.model").is_none() => {
                anyhow::anyhow!(
                    "this model file has no tokenizer (no tokenizer.ggml.* metadata); pass --prompt-ids"
                )
            }
            CoreError::UnknownPreTokenizer => anyhow::anyhow!(
                "unknown pre-tokenizer '{}' in tokenizer.ggml.pre (known: smollm, gpt2, llama3 and their aliases)",
                g.get("tokenizer.ggml.pre")
                    .and_then(|v| v.as_str())
                    .unwrap_or("?")
            ),
            CoreError::UnsupportedTokenizer => anyhow::anyhow!(
                "unsupported tokenizer model '{}' (gpt2 and llama vocabularies are read)",
                g.get("tokenizer.ggml.model")
                    .and_then(|v| v.as_str())
                    .unwrap_or("?")
            ),
            e => anyhow::Error::new(e).context("reading the tokenizer"),
        }
    };
    let words = Tokenizer::index_words(g).map_err(explain)?;
    index.clear();
    index.resize(words, 0);
    Tokenizer::new(g, index).map_err(explain)
}

/// Encodes a prompt; an empty result is an error.
pub fn encode_prompt(tok: &Tokenizer, text: &str, parse_special: bool) -> Result<Vec<u32>> {
    let ids = tok
        .encode(
            text,
            EncodeOptions {
                add_special: true,
                parse_special,
            },
        )
        .context("tokenizing the prompt")?;
    if ids.is_empty() {
        bail!("the prompt is empty");
    }
    Ok(ids)
}

/// A prompt argument; `-` reads all of stdin. Either must be UTF-8.
pub fn prompt_text(arg: &str) -> Result<String> {
    if arg != "-" {
        return Ok(arg.to_string());
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .context("reading the prompt from stdin")?;
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "the prompt on stdin is not valid UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Holds back streamed text that might be the start of a stop string, and
/// cuts the text where a stop string first appears (the stop string itself
/// is not output).
#[derive(Debug, Clone, Default)]
pub struct StopText {
    stops: Vec<String>,
    pending: String,
    stopped: bool,
}

impl StopText {
    pub fn new(stops: &[String]) -> StopText {
        StopText {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..Default::default()
        }
    }

    /// Whether a stop string has been seen.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds text; returns what may be output now.
    pub fn push(&mut self, s: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.pending.push_str(s);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|stop| self.pending.find(stop.as_str()))
            .min()
        {
            self.stopped = true;
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return out;
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len())
                    .rev()
                    .filter(|&k| stop.is_char_boundary(k) && self.pending.ends_with(&stop[..k]))
                    .take(1)
            })
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        out
    }

    /// The end of the stream: whatever was held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod stop_tests {
    use super::StopText;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut st = StopText::new(&stops);
        let mut out = String::new();
        for p in pieces {
            out.push_str(&st.push(p));
            if st.stopped() {
                break;
            }
        }
        out.push_str(&st.finish());
        (out, st.stopped())
    }

    #[test]
    fn stops_across_pieces_and_holds_back_prefixes() {
        assert_eq!(
            run(&["\n\n"], &["Hello", " world", "\n", "\nmore"]),
            ("Hello world".into(), true)
        );
        assert_eq!(
            run(&["END"], &["abc E", "N", "x"]),
            ("abc ENx".into(), false)
        );
        assert_eq!(run(&["END", "b"], &["aaEN", "D", "b"]), ("aa".into(), true));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        let stops = vec!["ab".to_string()];
        let mut st = StopText::new(&stops);
        assert_eq!(st.push("xa"), "x");
        assert_eq!(st.push("c"), "ac");
    }
}
