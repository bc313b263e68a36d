//! Integration tests live in `tests/`; golden data in `golden/`.
