//! `ember-runner`: the host side of Ember. It composes `ember-core` with what
//! a full machine offers: memory-mapped files, the default-model cache, the
//! `ember` command line.
//!
//! | module | what |
//! | --- | --- |
//! | [`cli`] | the top-level parser and the dispatch to each command |
//! | [`args`] | flags several commands share (kernels, threads, KV cache, sampling) and their defaults |
//! | [`load`] | the one model-loading sequence: bytes, parse, weights, packs, tokenizer |
//! | [`run`], [`chat`], [`tokenize`], [`perplexity`], [`bench`](mod@bench), [`serve`], [`convert`], [`synth`] | one command each (`run` also holds the generation loop `chat` shares) |
//! | [`beam`] | beam search (`run --beams`) |
//! | [`constrain`], [`json_schema`] | grammar-constrained sampling: GBNF, JSON schemas, one sequence's matcher |
//! | [`text`] | the tokenizer over a file, prompts from arguments or stdin, stop strings |
//! | [`template`] | chat templates: the file's, `--chat-template`, or the family's built-in one, rendered as Hugging Face does |
//! | [`device`] | where the forward pass runs: the CPU's session or the GPU engine, one sequence |
//! | [`mmap`], [`pack`], [`arena`], [`pool`], [`model_store`] | model bytes, packed weights, session memory, worker threads, the default-model cache |

pub mod arena;
pub mod args;
pub mod beam;
pub mod bench;
pub mod chat;
pub mod cli;
pub mod constrain;
pub mod convert;
pub mod device;
pub mod json_schema;
pub mod load;
pub mod mix;
pub mod mmap;
pub mod model_store;
pub mod pack;
pub mod perplexity;
pub mod pool;
pub mod run;
pub mod serve;
pub mod synth;
pub mod template;
pub mod text;
pub mod tokenize;
