//! Arbitrary bytes as a GGUF file (see `ember_tests::fuzz::gguf_load`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ember_tests::fuzz::gguf_load(data));
