//! Text on the host: the core tokenizer over a mapped file, chat templates
//! (`tokenizer.chat_template`, Jinja, rendered with minijinja), and reading
//! prompts from arguments or stdin.

use std::io::Read;

use anyhow::{bail, Context, Result};
use ember_core::gguf::Gguf;
use ember_core::tokenizer::{EncodeOptions, Tokenizer};
use ember_core::Error as CoreError;
use serde::Serialize;

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

/// One chat message.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// ChatML, for files that carry no template.
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A compiled chat template and the special-token texts it may use.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// The file's template (`tokenizer.chat_template`), else ChatML.
    pub fn from_gguf(g: &Gguf, tok: &Tokenizer) -> Result<ChatTemplate> {
        let source = match g.get("tokenizer.chat_template") {
            None => CHATML.to_string(),
            Some(v) => v
                .as_str()
                .context("tokenizer.chat_template is not a string")?
                .to_string(),
        };
        let text = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
        ChatTemplate::new(&source, text(tok.bos()), text(tok.eos()))
    }

    /// Compiles `source` the way Hugging Face renders chat templates
    /// (`trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`).
    pub fn new(source: &str, bos: String, eos: String) -> Result<ChatTemplate> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| anyhow::anyhow!("the chat template does not compile: {}", one_line(&e)))?;
        Ok(ChatTemplate { env, bos, eos })
    }

    /// Renders `messages`, ending with the assistant's header when `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let t = self
            .env
            .get_template("chat")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| anyhow::anyhow!("the chat template failed: {}", one_line(&e)))
    }

    /// Tokens of the rendered conversation. Control tokens in the rendering
    /// are parsed; BOS is added when the vocabulary asks and the template has
    /// not already written it.
    pub fn encode(
        &self,
        tok: &Tokenizer,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self.render(messages, add_generation_prompt)?;
        let has_bos = !self.bos.is_empty() && text.starts_with(&self.bos);
        let ids = tok
            .encode(
                &text,
                EncodeOptions {
                    add_special: !has_bos,
                    parse_special: true,
                },
            )
            .context("tokenizing the chat")?;
        if ids.is_empty() {
            bail!("the chat template rendered nothing");
        }
        Ok(ids)
    }
}

fn one_line(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    if let Some(line) = e.line() {
        s.push_str(&format!(" (template line {line})"));
    }
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_with_generation_prompt() {
        let t = ChatTemplate::new(CHATML, String::new(), String::new()).unwrap();
        let s = t.render(&[Message::new("user", "Hi")], true).unwrap();
        assert_eq!(s, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn python_methods_and_raise_exception() {
        let src = "{% for m in messages %}{{ m.content.strip() | upper }}{% endfor %}{% if messages|length > 1 %}{{ raise_exception('one only') }}{% endif %}";
        let t = ChatTemplate::new(src, String::new(), String::new()).unwrap();
        assert_eq!(
            t.render(&[Message::new("user", "  hi ")], false).unwrap(),
            "HI"
        );
        let two = [Message::new("user", "a"), Message::new("user", "b")];
        let e = t.render(&two, false).unwrap_err().to_string();
        assert!(e.contains("one only"), "{e}");
    }

    #[test]
    fn broken_template_is_an_error() {
        let e = ChatTemplate::new("{% for m in messages %}", String::new(), String::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not compile"), "{e}");
        assert!(!e.contains('\n'));
    }
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
