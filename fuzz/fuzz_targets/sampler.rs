//! The sampler on arbitrary logits and parameters (see `ember_tests::fuzz::sampler`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ember_tests::fuzz::sampler(data));
