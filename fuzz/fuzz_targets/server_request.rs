//! `ember serve`'s request parsing (see `ember_tests::fuzz::server_request`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ember_tests::fuzz::server_request(data));
