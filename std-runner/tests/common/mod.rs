//! Helpers shared by the tests that drive outside tools (QEMU, cross builds)
//! and by the streaming tests and the slow suite (the English text).

// Each test crate compiles its own copy; not every one uses every helper on every host.
#![allow(dead_code)]

use std::process::Command;

use ember_core::tokenizer::{EncodeOptions, Tokenizer};

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

/// Makes sure every command in `cmds` is on the PATH: installs `packages`
/// with apt-get when some is missing and this process runs as root, and
/// otherwise fails the test naming the packages (`what` needs them).
pub fn need_commands(cmds: &[&str], packages: &str, what: &str) {
    if cmds.iter().all(|c| have(c)) {
        return;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    assert!(
        have("apt-get") && root,
        "{what} need {}: install them (Debian: apt-get install {packages})",
        cmds.join(", ")
    );
    run_ok(
        Command::new("sh").args([
            "-c",
            &format!("apt-get update -q && apt-get install -y -q {packages}"),
        ]),
        &format!("apt-get install {packages}"),
    );
}

/// The text: licence texts of Debian's base-files, concatenated (no two of
/// them near-duplicates): GPL-3, GFDL-1.3, LGPL-2.1, MPL-2.0, Apache-2.0, Artistic.
pub fn english_tokens(tok: &Tokenizer) -> Vec<u32> {
    let dir = std::path::Path::new("/usr/share/common-licenses");
    let mut text = String::new();
    for name in [
        "GPL-3",
        "GFDL-1.3",
        "LGPL-2.1",
        "MPL-2.0",
        "Apache-2.0",
        "Artistic",
    ] {
        let p = dir.join(name);
        text.push_str(
            &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        );
    }
    tok.encode(&text, EncodeOptions::default()).unwrap()
}

/// The default model converted to Q8_0 (fetched and converted on first use).
pub fn smollm_q8_0() -> Vec<u8> {
    let path = ember_runner::model_store::converted(ember_core::quant::GgmlType::Q8_0).unwrap();
    std::fs::read(path).unwrap()
}
