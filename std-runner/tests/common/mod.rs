//! Helpers shared by the tests that drive outside tools (QEMU, cross builds).

// Each test crate compiles its own copy; not every one uses every helper on every host.
#![allow(dead_code)]

use std::process::Command;

/// Whether `cmd` is on the PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `cmd`, failing the test with `what` unless it succeeds.
pub fn run_ok(cmd: &mut Command, what: &str) {
    let st = cmd.status().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(st.success(), "{what} failed ({st})");
}

/// Whether this process runs as root (and may install with apt-get).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
}
