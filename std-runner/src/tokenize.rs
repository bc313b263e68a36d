//! `ember tokenize`: the token ids of a text, as `{"ids":[..]}` or one
//! `id -> 'piece'` line per token.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use crate::load::map_model;
use crate::text::prompt_text;

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// Text to tokenize ('-' reads stdin).
    pub text: String,
    /// GGUF model file, or a model fetched once into $EMBER_HOME by name (smollm2-135m, gemma3-270m) [default: smollm2-135m]
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Recognise control tokens written in the text (e.g. <|im_start|>).
    #[arg(long)]
    pub special: bool,
    /// Do not add BOS/EOS even if the vocabulary asks for them.
    #[arg(long)]
    pub no_bos: bool,
    /// Print {"ids":[..]} on stdout instead of one "id -> 'piece'" line per token.
    #[arg(long)]
    pub json: bool,
}

pub fn cmd_tokenize(a: TokenizeArgs) -> Result<()> {
    let text = prompt_text(&a.text)?;
    let mut file = map_model(&a.model)?;
    let (_, tok) = file.vocab()?;
    let ids = tok
        .encode(
            &text,
            ember_core::tokenizer::EncodeOptions {
                add_special: !a.no_bos,
                parse_special: a.special,
            },
        )
        .context("tokenizing")?;
    let mut so = std::io::stdout().lock();
    if a.json {
        writeln!(so, "{}", json!({ "ids": ids }))?;
    } else {
        for &id in &ids {
            let mut piece = Vec::new();
            tok.piece(id, true, &mut |b| piece.extend_from_slice(b))?;
            writeln!(
                so,
                "{id:>7} -> '{}'",
                String::from_utf8_lossy(&piece).escape_debug()
            )?;
        }
    }
    Ok(())
}
