//! The `ember` command line (see docs/DESIGN.md for the contract): the
//! top-level parser and the dispatch to each command's module.

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::bench::BenchArgs;
use crate::chat::ChatArgs;
use crate::convert::ConvertArgs;
use crate::perplexity::PerplexityArgs;
use crate::run::RunArgs;
use crate::serve::ServeArgs;
use crate::synth::SynthArgs;
use crate::tokenize::TokenizeArgs;

#[derive(Debug, Parser)]
#[command(
    name = "ember",
    version,
    about = "Run llama-family GGUF models, from microcontrollers to servers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate from a prompt with llama.cpp's sampler chain and defaults (`--temp 0` is
    /// greedy), streaming text to stdout until the model ends its turn (an end-of-generation
    /// token) or the prompt and reply fill the context (--ctx); -n caps the reply.
    Run(RunArgs),
    /// Talk to the model: an interactive multi-turn chat in the file's chat template (else
    /// its family's built-in one; --chat-template overrides).
    Chat(ChatArgs),
    /// Print the token ids of a text.
    Tokenize(TokenizeArgs),
    /// Score a text file: dense chunks of --ctx, or streaming through --sinks + --window.
    Perplexity(PerplexityArgs),
    /// Rewrite a GGUF file with its weight matrices in another type.
    Convert(ConvertArgs),
    /// Write a deterministic random-weights llama GGUF of any shape.
    Synth(SynthArgs),
    /// Measure prefill (pp) and decode (tg) speed, as llama-bench does.
    Bench(BenchArgs),
    /// Serve the model over HTTP with OpenAI's API, batching requests together.
    Serve(ServeArgs),
}

pub fn main_with(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) => crate::run::cmd_run(a),
        Command::Chat(a) => crate::chat::cmd_chat(a),
        Command::Tokenize(a) => crate::tokenize::cmd_tokenize(a),
        Command::Perplexity(a) => crate::perplexity::cmd_perplexity(a),
        Command::Bench(a) => crate::bench::cmd_bench(a),
        Command::Serve(a) => crate::serve::cmd_serve(a),
        Command::Synth(a) => crate::synth::cmd_synth(a),
        Command::Convert(a) => crate::convert::cmd_convert(a),
    }
}
