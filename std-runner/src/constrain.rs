//! Grammar-constrained sampling on the host: where a grammar comes from
//! (`--grammar`, `--grammar-file`, `--json-schema`, the server's
//! `response_format` and `grammar`), and one sequence's [`Constraint`]: the
//! core's matcher and mask cache in front of the sampler.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use ember_core::grammar::{GrammarBuf, MaskCache, Matcher, VocabBuf};
use ember_core::sampling::{Candidate, Sampler};
use ember_core::tokenizer::Tokenizer;
use ember_core::Error as CoreError;

/// Masks kept per sequence: the places a JSON text keeps coming back to
/// (inside a string, after a value, inside a number).
const CACHED_MASKS: usize = 8;

/// A parsed grammar; a parse error names the line and column.
pub fn parse_gbnf(src: &str) -> Result<GrammarBuf> {
    GrammarBuf::parse(src).map_err(|e| match e {
        CoreError::Grammar { fault, at } => {
            let before = &src.as_bytes()[..(at as usize).min(src.len())];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let col = before.len()
                - before
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |p| p + 1)
                + 1;
            anyhow!("grammar: {} at line {line}, column {col}", fault.describe())
        }
        e => anyhow::Error::new(e).context("grammar"),
    })
}

/// The grammar of a JSON schema given as text.
pub fn schema_grammar(schema: &str) -> Result<GrammarBuf> {
    let v: serde_json::Value =
        serde_json::from_str(schema).context("the JSON schema is not JSON")?;
    let gbnf = crate::json_schema::to_gbnf(&v)?;
    parse_gbnf(&gbnf)
}

/// The vocabulary as the matcher reads it.
pub fn vocab(tok: &Tokenizer) -> Result<VocabBuf> {
    VocabBuf::from_tokenizer(tok)
        .map_err(|e| anyhow::Error::new(e).context("indexing the vocabulary for the grammar"))
}

/// One sequence's grammar state.
#[derive(Debug, Clone)]
pub struct Constraint {
    vocab: Arc<VocabBuf>,
    matcher: Matcher<Vec<u32>>,
    cache: MaskCache<Vec<u32>>,
    allowed: Vec<u32>,
}

impl Constraint {
    pub fn new(grammar: &GrammarBuf, vocab: Arc<VocabBuf>) -> Result<Self> {
        let n = vocab.vocab().len();
        Ok(Constraint {
            matcher: Matcher::alloc(&grammar.grammar())?,
            cache: MaskCache::alloc(CACHED_MASKS, n)?,
            allowed: vec![0; n.div_ceil(32)],
            vocab,
        })
    }

    /// Back to the grammar's start (a new reply).
    pub fn reset(&mut self) -> Result<()> {
        Ok(self.matcher.reset()?)
    }

    /// The next token: the sampler's pick among the tokens the grammar
    /// takes here. Greedy decoding tries the largest logit first, which the
    /// grammar usually takes, and masks only when it does not.
    pub fn pick(
        &mut self,
        sampler: &mut Sampler,
        logits: &[f32],
        scratch: &mut [Candidate],
    ) -> Result<u32> {
        let vocab = self.vocab.vocab();
        if sampler.config().is_greedy() {
            let best = crate::run::argmax(logits);
            if self.matcher.allows(&vocab, best)? {
                return Ok(best);
            }
        }
        self.matcher
            .mask_cached(&vocab, &mut self.allowed, &mut self.cache)?;
        match sampler.sample_masked(logits, &self.allowed, scratch) {
            Err(CoreError::NoCandidate) => {
                bail!("the grammar allows no token here (the text so far cannot be continued within the vocabulary)")
            }
            r => Ok(r?),
        }
    }

    /// Moves past token `id` (what [`Constraint::pick`] chose).
    pub fn accept(&mut self, id: u32) -> Result<()> {
        Ok(self.matcher.accept(&self.vocab.vocab(), id)?)
    }

    /// Whether the grammar is complete and nothing may follow: generation
    /// stops even where the model has no end-of-generation token.
    pub fn finished(&mut self) -> bool {
        self.matcher.must_end()
    }
}
