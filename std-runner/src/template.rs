//! Chat templates: Jinja sources rendered with minijinja the way Hugging
//! Face transformers' `apply_chat_template` renders them with jinja2
//! (`trim_blocks`, `lstrip_blocks`, loop controls, Python string methods,
//! `raise_exception`, `strftime_now`, and a `tojson` that is `json.dumps`).
//!
//! Which template: `--chat-template` (a file, or a built-in name), else the
//! file's `tokenizer.chat_template`, else the built-in template of the
//! file's family ([`Builtin::for_model`]). llama.cpp falls back to ChatML
//! for a file with no template (`common_chat_templates_init` in its
//! common/chat.cpp); Ember picks by `general.architecture` first, so a
//! Gemma 3 file without a template (the 270M one) still gets Gemma's turns.
//!
//! The built-in sources in `templates/` are the models' own Hugging Face
//! templates as llama.cpp keeps copies of them (models/templates/, fetched by
//! its scripts/get_chat_template.py), and Gemma 3's from google/gemma-3-*-it's
//! tokenizer_config.json. `tests/golden/chat_templates.json` holds what jinja2
//! renders from them in transformers' environment
//! (`scripts/make_chat_template_golden.py`), and tests/chat_template.rs holds
//! minijinja to it byte for byte.

#![forbid(unsafe_code)]

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Args;
use ember_core::gguf::Gguf;
use ember_core::tokenizer::{EncodeOptions, Tokenizer};
use minijinja::value::{Kwargs, Rest, Value, ValueKind};
use minijinja::{Error as JinjaError, ErrorKind};
use serde::Serialize;

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

/// ChatML, the generic template (`<|im_start|>role\n...<|im_end|>\n`).
pub const CHATML: &str = include_str!("templates/chatml.jinja");

/// A template Ember carries, for files that ship none (or by name with
/// `--chat-template`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// ChatML: any family without one of its own.
    ChatMl,
    /// Gemma 3 (google/gemma-3-*-it): `<start_of_turn>user`/`model`, the
    /// system message folded into the first user turn.
    Gemma3,
    /// Qwen2.5 (Qwen/Qwen2.5-7B-Instruct): ChatML with Qwen's default system message.
    Qwen2,
    /// Qwen3 (Qwen/Qwen3-0.6B): ChatML, past reasoning dropped, `enable_thinking`.
    Qwen3,
    /// Llama 3.2 (meta-llama/Llama-3.2-3B-Instruct): header tokens, the date
    /// from `strftime_now`.
    Llama3,
    /// Phi-3.5 (microsoft/Phi-3.5-mini-instruct): `<|user|>` ... `<|end|>`.
    Phi3,
}

impl Builtin {
    pub const ALL: [Builtin; 6] = [
        Builtin::ChatMl,
        Builtin::Gemma3,
        Builtin::Qwen2,
        Builtin::Qwen3,
        Builtin::Llama3,
        Builtin::Phi3,
    ];

    /// The name `--chat-template` takes.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::ChatMl => "chatml",
            Builtin::Gemma3 => "gemma3",
            Builtin::Qwen2 => "qwen2",
            Builtin::Qwen3 => "qwen3",
            Builtin::Llama3 => "llama3",
            Builtin::Phi3 => "phi3",
        }
    }

    pub fn from_name(name: &str) -> Option<Builtin> {
        Builtin::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The Jinja source.
    pub fn source(self) -> &'static str {
        match self {
            Builtin::ChatMl => CHATML,
            Builtin::Gemma3 => include_str!("templates/gemma3.jinja"),
            Builtin::Qwen2 => include_str!("templates/qwen2.jinja"),
            Builtin::Qwen3 => include_str!("templates/qwen3.jinja"),
            Builtin::Llama3 => include_str!("templates/llama3.jinja"),
            Builtin::Phi3 => include_str!("templates/phi3.jinja"),
        }
    }

    /// The family's template from `general.architecture`: gemma3 → Gemma 3;
    /// qwen2, qwen3 → Qwen's; llama with a Llama 3 vocabulary (it has
    /// `<|start_header_id|>`) → Llama 3; phi3 → Phi-3; anything else ChatML.
    pub fn for_arch(arch: &str, llama3_vocab: bool) -> Builtin {
        match arch {
            "gemma3" => Builtin::Gemma3,
            "qwen2" => Builtin::Qwen2,
            "qwen3" => Builtin::Qwen3,
            "llama" if llama3_vocab => Builtin::Llama3,
            "phi3" => Builtin::Phi3,
            _ => Builtin::ChatMl,
        }
    }

    /// [`Builtin::for_arch`] for a file.
    pub fn for_model(g: &Gguf, tok: &Tokenizer) -> Builtin {
        let arch = g
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        Builtin::for_arch(arch, tok.find("<|start_header_id|>").is_some())
    }
}

/// `--chat-template` and `--chat-template-kwargs`, shared by `run`, `chat`
/// and `serve`.
#[derive(Debug, Clone, Default, Args)]
pub struct TemplateArgs {
    /// Chat template: a Jinja file, or a built-in one by name (chatml, gemma3,
    /// qwen2, qwen3, llama3, phi3) [default: the file's tokenizer.chat_template,
    /// else its family's built-in template]
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<String>,
    /// Extra variables for the chat template, as a JSON object, e.g.
    /// '{"enable_thinking": false}' (Qwen3 without reasoning).
    #[arg(long, value_name = "JSON")]
    pub chat_template_kwargs: Option<String>,
}

impl TemplateArgs {
    /// The template these flags choose for the file.
    pub fn load(&self, g: &Gguf, tok: &Tokenizer) -> Result<ChatTemplate> {
        let t = match &self.chat_template {
            None => ChatTemplate::from_gguf(g, tok)?,
            Some(arg) => {
                let path = Path::new(arg);
                let (source, origin) = if path.exists() {
                    let bytes = std::fs::read(path)
                        .with_context(|| format!("--chat-template: cannot read {arg}"))?;
                    let source = String::from_utf8(bytes).map_err(|e| {
                        anyhow::anyhow!(
                            "--chat-template {arg} is not UTF-8 (invalid byte at offset {})",
                            e.utf8_error().valid_up_to()
                        )
                    })?;
                    (source, format!("the file {arg}"))
                } else if let Some(b) = Builtin::from_name(arg) {
                    (b.source().to_string(), format!("the built-in {}", b.name()))
                } else {
                    bail!(
                        "--chat-template {arg}: no such file, nor a built-in template ({})",
                        Builtin::ALL.map(Builtin::name).join(", ")
                    );
                };
                let (bos, eos) = special_texts(tok);
                ChatTemplate::new(&source, bos, eos)
                    .map_err(|e| anyhow::anyhow!("--chat-template {arg}: {e:#}"))?
                    .with_origin(origin)
            }
        };
        match &self.chat_template_kwargs {
            None => Ok(t),
            Some(json) => t.with_kwargs(parse_kwargs(json)?),
        }
    }
}

/// `--chat-template-kwargs`: a JSON object, its keys in the order written.
pub fn parse_kwargs(json: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(json)
        .map_err(|e| anyhow::anyhow!("--chat-template-kwargs is not JSON: {e}"))?;
    if v.kind() != ValueKind::Map {
        bail!(
            "--chat-template-kwargs must be a JSON object, e.g. '{{\"enable_thinking\": false}}'"
        );
    }
    Ok(v)
}

/// The BOS and EOS token texts a template may write.
fn special_texts(tok: &Tokenizer) -> (String, String) {
    let text = |id: Option<u32>| id.and_then(|i| tok.token_text(i)).unwrap_or("").to_string();
    (text(tok.bos()), text(tok.eos()))
}

/// A compiled chat template and the special-token texts it may use.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos: String,
    eos: String,
    /// Extra variables (`--chat-template-kwargs`), a map.
    kwargs: Value,
    /// Where the source came from, for messages.
    origin: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// The error `raise_exception` raises: the template's own verdict on the
/// conversation (a bad request), as opposed to a template that is broken.
#[derive(Debug)]
struct Raised;

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("raised by the template")
    }
}

impl std::error::Error for Raised {}

/// A chat template failed to render.
#[derive(Debug)]
pub struct RenderError {
    /// The template called `raise_exception`: it refuses this conversation.
    pub raised: bool,
    pub message: String,
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RenderError {}

impl ChatTemplate {
    /// The file's template (`tokenizer.chat_template`), else its family's
    /// built-in one ([`Builtin::for_model`]).
    pub fn from_gguf(g: &Gguf, tok: &Tokenizer) -> Result<ChatTemplate> {
        let (bos, eos) = special_texts(tok);
        match g.get("tokenizer.chat_template") {
            None => {
                let b = Builtin::for_model(g, tok);
                Ok(
                    ChatTemplate::new(b.source(), bos, eos)?.with_origin(format!(
                        "the built-in {} (the file has no tokenizer.chat_template)",
                        b.name()
                    )),
                )
            }
            Some(v) => {
                let source = v
                    .as_str()
                    .context("tokenizer.chat_template is not a string")?;
                Ok(ChatTemplate::new(source, bos, eos)?
                    .with_origin("the file's tokenizer.chat_template".into()))
            }
        }
    }

    /// Compiles `source` the way Hugging Face renders chat templates.
    pub fn new(source: &str, bos: String, eos: String) -> Result<ChatTemplate> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg).with_source(Raised))
            },
        );
        env.add_filter("tojson", tojson);
        env.add_function("strftime_now", |fmt: String| strftime(&fmt, now_unix()));
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| anyhow::anyhow!("the chat template does not compile: {}", one_line(&e)))?;
        Ok(ChatTemplate {
            env,
            bos,
            eos,
            kwargs: minijinja::context! {},
            origin: "a template given in code".into(),
        })
    }

    fn with_origin(mut self, origin: String) -> ChatTemplate {
        self.origin = origin;
        self
    }

    /// Where the template came from ("the file's tokenizer.chat_template",
    /// "the built-in gemma3 (...)", "the file T.jinja").
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Adds variables every rendering sees (a map; e.g. `enable_thinking`).
    pub fn with_kwargs(mut self, kwargs: Value) -> Result<ChatTemplate> {
        if kwargs.kind() != ValueKind::Map {
            bail!("chat template variables must be a map");
        }
        self.kwargs = kwargs;
        Ok(self)
    }

    /// `strftime_now` reads this clock (seconds since 1970, UTC) instead of
    /// the system's: for repeatable renderings.
    pub fn with_clock(mut self, unix_secs: i64) -> ChatTemplate {
        self.env
            .add_function("strftime_now", move |fmt: String| strftime(&fmt, unix_secs));
        self
    }

    /// Renders `messages`, ending with the assistant's header when
    /// `add_generation_prompt`. A failure is a [`RenderError`] (one line).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let t = self
            .env
            .get_template("chat")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // As transformers: the tokenizer's special tokens, tools and
        // documents (none), then the extra variables, which may override
        // those but not the conversation.
        let base = minijinja::context! {
            bos_token => self.bos,
            eos_token => self.eos,
            tools => Value::from(()),
            documents => Value::from(()),
        };
        let fixed = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
        };
        let ctx = minijinja::value::merge_maps([fixed, self.kwargs.clone(), base]);
        t.render(ctx).map_err(|e| {
            let raised = std::error::Error::source(&e).is_some_and(|s| s.is::<Raised>());
            let message = if raised {
                format!(
                    "the chat template refused the conversation: {}",
                    e.detail().unwrap_or("")
                )
            } else {
                format!("the chat template failed: {}", one_line(&e))
            };
            anyhow::Error::new(RenderError { raised, message })
        })
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
        self.encode_text(tok, &text)
    }

    /// Tokens of a rendering made by [`ChatTemplate::render`].
    pub fn encode_text(&self, tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
        let has_bos = !self.bos.is_empty() && text.starts_with(&self.bos);
        let ids = tok
            .encode(
                text,
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

fn one_line(e: &JinjaError) -> String {
    let mut s = e.to_string();
    if let Some(line) = e.line() {
        s.push_str(&format!(" (template line {line})"));
    }
    s.replace('\n', " ")
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// transformers' `tojson`: Python's `json.dumps(x, ensure_ascii=False,
/// indent=None, separators=None, sort_keys=False)`, so `", "` and `": "`
/// between items and no HTML escaping (minijinja's own `tojson` writes
/// compact JSON with `<`, `>`, `&`, `'` escaped).
fn tojson(v: Value, args: Rest<Value>, kw: Kwargs) -> std::result::Result<String, JinjaError> {
    let arg = |i: usize, name: &str| -> std::result::Result<Option<Value>, JinjaError> {
        match (args.get(i), kw.get::<Option<Value>>(name)?) {
            (Some(_), Some(_)) => Err(JinjaError::new(
                ErrorKind::TooManyArguments,
                format!("tojson: {name} given twice"),
            )),
            (a, k) => Ok(a.cloned().or(k)),
        }
    };
    if args.len() > 4 {
        return Err(JinjaError::from(ErrorKind::TooManyArguments));
    }
    let ensure_ascii = arg(0, "ensure_ascii")?.is_some_and(|v| v.is_true());
    let indent = match arg(1, "indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or("").to_string()),
        Some(v) => Some(" ".repeat(i64::try_from(v)?.max(0) as usize)),
    };
    let (item_sep, key_sep) = match arg(2, "separators")? {
        Some(v) if !v.is_none() => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] => (a.to_string(), b.to_string()),
                _ => {
                    return Err(JinjaError::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    ))
                }
            }
        }
        // Python: (', ', ': '), or (',', ': ') with an indent.
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let sort_keys = arg(3, "sort_keys")?.is_some_and(|v| v.is_true());
    kw.assert_all_used()?;
    let opt = Dump {
        ensure_ascii,
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    let mut out = String::new();
    opt.value(&v, 0, &mut out)?;
    Ok(out)
}

/// `json.dumps` options.
struct Dump {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl Dump {
    fn value(
        &self,
        v: &Value,
        depth: usize,
        out: &mut String,
    ) -> std::result::Result<(), JinjaError> {
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => {
                // 2.0 stays 2.0, as in Python.
                if v.is_integer() {
                    out.push_str(&v.to_string());
                } else {
                    let f = f64::try_from(v.clone())?;
                    if f.is_nan() {
                        out.push_str("NaN");
                    } else if f.is_infinite() {
                        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                    } else {
                        out.push_str(&serde_json::to_string(&f).unwrap_or_default());
                    }
                }
            }
            ValueKind::String => self.string(v.as_str().unwrap_or(""), out),
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                let items = keys
                    .into_iter()
                    .map(|k| {
                        let val = v.get_item(&k)?;
                        Ok((k, val))
                    })
                    .collect::<std::result::Result<Vec<_>, JinjaError>>()?;
                self.container(out, depth, '{', '}', &items, |(k, val), out| {
                    match k.as_str() {
                        Some(s) => self.string(s, out),
                        None => self.string(&k.to_string(), out),
                    }
                    out.push_str(&self.key_sep);
                    self.value(val, depth + 1, out)
                })?;
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.container(out, depth, '[', ']', &items, |x, out| {
                    self.value(x, depth + 1, out)
                })?;
            }
            _ => self.string(&v.to_string(), out),
        }
        Ok(())
    }

    fn container<T>(
        &self,
        out: &mut String,
        depth: usize,
        open: char,
        close: char,
        items: &[T],
        mut each: impl FnMut(&T, &mut String) -> std::result::Result<(), JinjaError>,
    ) -> std::result::Result<(), JinjaError> {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return Ok(());
        }
        let newline = |out: &mut String, d: usize| {
            if let Some(ind) = &self.indent {
                out.push('\n');
                for _ in 0..d {
                    out.push_str(ind);
                }
            }
        };
        for (i, x) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            newline(out, depth + 1);
            each(x, out)?;
        }
        newline(out, depth);
        out.push(close);
        Ok(())
    }

    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Python's `strftime` for the common fields (UTC): %Y %y %m %d %e %B %b %A
/// %a %H %M %S %j %%. Another field is an error.
fn strftime(fmt: &str, unix_secs: i64) -> std::result::Result<String, JinjaError> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('B') => out.push_str(MONTHS[m as usize - 1]),
            Some('b') => out.push_str(&MONTHS[m as usize - 1][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            other => {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: unsupported field %{}",
                        other.map(String::from).unwrap_or_default()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of a date (the inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
        let e = t.render(&two, false).unwrap_err();
        let r = e.downcast_ref::<RenderError>().unwrap();
        assert!(r.raised && r.message.contains("one only"), "{e}");
        // A template that breaks (not one that refuses) says so.
        let t = ChatTemplate::new("{{ 1 + messages }}", String::new(), String::new()).unwrap();
        let e = t.render(&two, false).unwrap_err();
        assert!(!e.downcast_ref::<RenderError>().unwrap().raised, "{e}");
    }

    #[test]
    fn broken_template_is_an_error() {
        let e = ChatTemplate::new("{% for m in messages %}", String::new(), String::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not compile"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn family_templates_follow_the_architecture() {
        assert_eq!(Builtin::for_arch("gemma3", false), Builtin::Gemma3);
        assert_eq!(Builtin::for_arch("qwen2", false), Builtin::Qwen2);
        assert_eq!(Builtin::for_arch("qwen3", false), Builtin::Qwen3);
        assert_eq!(Builtin::for_arch("phi3", false), Builtin::Phi3);
        assert_eq!(Builtin::for_arch("llama", true), Builtin::Llama3);
        assert_eq!(Builtin::for_arch("llama", false), Builtin::ChatMl);
        assert_eq!(Builtin::for_arch("mamba", true), Builtin::ChatMl);
        for b in Builtin::ALL {
            assert_eq!(Builtin::from_name(b.name()), Some(b));
            ChatTemplate::new(b.source(), String::new(), String::new()).unwrap();
        }
    }

    #[test]
    fn strftime_matches_python() {
        // datetime.fromtimestamp(t, timezone.utc).strftime(...) in Python 3.
        let t = 1_738_929_600 + 3 * 3600 + 4 * 60 + 5; // 2025-02-07 15:04:05 UTC
        assert_eq!(
            strftime("%d %b %Y|%A %a %B %m %y %j %H:%M:%S %e %%", t).unwrap(),
            "07 Feb 2025|Friday Fri February 02 25 038 15:04:05  7 %"
        );
        assert_eq!(strftime("%Y-%m-%d", 0).unwrap(), "1970-01-01");
        assert_eq!(
            strftime("%Y-%m-%d %j", 951_782_400).unwrap(),
            "2000-02-29 060"
        );
        assert_eq!(strftime("%Y-%m-%d", -86_400).unwrap(), "1969-12-31");
        assert!(strftime("%Q", 0).is_err());
    }
}
