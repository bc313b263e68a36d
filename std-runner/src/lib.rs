//! `ember-runner`: the host side of Ember. It composes `ember-core` with what
//! a full machine offers: memory-mapped files, the default-model cache, the
//! `ember` command line.

pub mod arena;
pub mod beam;
pub mod bench;
pub mod chat;
pub mod cli;
pub mod convert;
pub mod mmap;
pub mod model_store;
pub mod pack;
pub mod perplexity;
pub mod pool;
pub mod run;
pub mod serve;
pub mod synth;
pub mod text;
