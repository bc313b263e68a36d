//! The AArch64 NEON kernels, tested on this (x86_64) machine: `ember-core`'s
//! own tests, cross-compiled for `aarch64-unknown-linux-gnu` and run under
//! `qemu-aarch64` user mode. They hold every NEON kernel to the scalar
//! reference (conformance on random and edge inputs) and whole forward passes
//! to it (random llamas of every weight type, and SmolLM2-135M at Q4_1).
//!
//! Needs the rustup target, `gcc-aarch64-linux-gnu` (the linker) and
//! `qemu-user`: the test adds the target, installs the packages through
//! apt-get when it runs as root, and otherwise fails naming them.
//! On an AArch64 host the same tests run natively in `cargo test`.

mod common;
use common::{need_commands, run_ok};
use std::path::PathBuf;
use std::process::Command;

use ember_core::quant::GgmlType;

const TARGET: &str = "aarch64-unknown-linux-gnu";

#[test]
#[cfg(target_arch = "x86_64")]
fn neon_kernels_under_qemu_aarch64() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    run_ok(
        Command::new("rustup")
            .current_dir(&root)
            .args(["target", "add", TARGET]),
        "rustup target add",
    );
    need_commands(
        &["qemu-aarch64", "aarch64-linux-gnu-gcc"],
        "qemu-user gcc-aarch64-linux-gnu",
        "the NEON tests",
    );
    let smollm =
        ember_runner::model_store::converted(GgmlType::Q4_1).unwrap_or_else(|e| panic!("{e:#}"));
    // Its own target directory: the outer `cargo test` holds the lock on ours.
    let target_dir = root.join("target").join("cross-aarch64");
    let out = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "test",
            "--profile",
            "test",
            "--locked",
            "-p",
            "ember-core",
            "--features",
            "std",
            "--lib",
            "--test",
            "end_to_end",
            "--target",
            TARGET,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("EMBER_E2E_MODEL", &smollm)
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo test for aarch64");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "aarch64 tests failed:\n{text}");
    // The NEON table itself ran, not only the scalar one.
    for t in [
        "kernels::aarch64_neon::tests::conforms_to_scalar ... ok",
        "kernels::conformance::detected_table_matches_reference ... ok",
        "test detected_matches_scalar_end_to_end ... ok",
    ] {
        assert!(text.contains(t), "'{t}' missing from:\n{text}");
    }
}
