//! The firmware under QEMU, held to the host: the same model, prompt and seed
//! give the same ids on Cortex-M4F, Cortex-M55 and bare-metal AArch64 as
//! `ember run` here. Also the on-target kernel tests, and bad input on the
//! device (a corrupt GGUF, too little RAM, a prompt longer than the cache,
//! invalid UTF-8), each a defmt error line and exit code 1, never a fault.
//!
//! Needs `qemu-system-arm`/`qemu-system-aarch64`, `defmt-print` and the
//! three rustup targets. The test adds the targets and installs
//! `defmt-print` when they are missing, and QEMU through apt-get when it
//! runs as root; elsewhere it fails naming what to install.

mod common;
use common::{have, need_commands, run_ok};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use ember_core::quant::GgmlType;
use serde_json::Value;

const TARGETS: [&str; 3] = [
    "thumbv7em-none-eabihf",
    "thumbv8m.main-none-eabihf",
    "aarch64-unknown-none",
];

fn firmware_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../firmware")
}

/// Installs what the firmware needs, then builds every image once.
fn built() -> &'static Path {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = firmware_dir();
        let mut add = Command::new("rustup");
        add.current_dir(&dir).args(["target", "add"]).args(TARGETS);
        run_ok(&mut add, "rustup target add");
        if !have("defmt-print") {
            run_ok(
                Command::new("cargo").args(["install", "defmt-print", "--locked"]),
                "cargo install defmt-print",
            );
        }
        need_commands(
            &["qemu-system-arm", "qemu-system-aarch64"],
            "qemu-system-arm",
            "the firmware tests",
        );
        let mut build = Command::new(env!("CARGO"));
        build
            .current_dir(&dir)
            .args(["build", "--release", "--locked", "--bins"])
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR");
        for t in TARGETS {
            build.args(["--target", t]);
        }
        run_ok(&mut build, "building the firmware");
        dir
    })
}

/// Runs `image` for `target` under QEMU through the firmware's runner.
fn qemu(target: &str, image: &str, env: &[(&str, &str)]) -> Output {
    let dir = built();
    let elf = dir.join("target").join(target).join("release").join(image);
    let mut cmd = Command::new(dir.join("qemu-run"));
    cmd.arg(&elf).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run qemu-run")
}

fn log(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_exit(o: &Output, code: i32) -> String {
    let text = log(o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "firmware exit code; log:\n{text}"
    );
    text
}

/// `key=value` from a log line that starts with `prefix`.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in: {line}"))
}

fn ids(s: &str) -> Vec<u32> {
    s.split(',').map(|x| x.parse().unwrap()).collect()
}

/// One `run …` line: kernels, sampling, seed, ctx, batch, ids.
struct RunLine {
    kernels: String,
    sampling: String,
    seed: String,
    ctx: String,
    batch: String,
    ids: Vec<u32>,
}

fn runs(log: &str) -> Vec<RunLine> {
    log.lines()
        .filter(|l| l.starts_with("run "))
        .map(|l| RunLine {
            kernels: field(l, "kernels").into(),
            sampling: field(l, "sampling").into(),
            seed: field(l, "seed").into(),
            ctx: field(l, "ctx").into(),
            batch: field(l, "batch").into(),
            ids: ids(field(l, "ids")),
        })
        .collect()
}

fn prompt_ids(log: &str) -> Vec<u32> {
    let line = log
        .lines()
        .find(|l| l.starts_with("prompt "))
        .expect("a prompt line");
    ids(field(line, "ids"))
}

/// `ember run` on the host with the firmware run's settings.
fn host_run(model: &Path, prompt: &[u32], n: usize, r: &RunLine) -> Value {
    // The DSP table computes the scalar int8-activation reference bit for bit.
    let kernels = match r.kernels.as_str() {
        "cortex-m-dsp" | "scalar-q8" => "scalar-q8",
        "scalar" => "scalar",
        // The NEON table decodes as the 16-bit reference does, bit for
        // bit; its f32 prefill is held to the scalar reference (its sums
        // run in another order, so not bit for bit): the ids must agree.
        "neon" => "scalar-q16",
        k => panic!("no host kernels for {k}"),
    };
    let prompt: Vec<String> = prompt.iter().map(|i| i.to_string()).collect();
    let mut args = vec![
        "run".to_string(),
        "--model".into(),
        model.display().to_string(),
        "--prompt-ids".into(),
        prompt.join(","),
        "-n".into(),
        n.to_string(),
        "--ctx".into(),
        r.ctx.clone(),
        "--batch".into(),
        r.batch.clone(),
        "--kv-type".into(),
        "f16".into(),
        "--kernels".into(),
        kernels.into(),
        "--json".into(),
    ];
    match r.sampling.as_str() {
        "greedy" => args.extend(["--temp".into(), "0".into()]),
        "seeded" => args.extend(["--seed".into(), r.seed.clone()]),
        s => panic!("unknown sampling {s}"),
    }
    let o = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(&args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn json_ids(v: &Value) -> Vec<u32> {
    v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[test]
fn cortex_m4_tiny_model_matches_host_greedy_and_seeded() {
    let o = qemu("thumbv7em-none-eabihf", "tiny", &[]);
    let text = assert_exit(&o, 0);
    // The image's model is `ember synth` with these arguments (firmware/build.rs).
    let dir = tempdir();
    let model = dir.join("tiny.gguf");
    let st = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["synth", model.to_str().unwrap()])
        .args([
            "--dim",
            "64",
            "--layers",
            "5",
            "--heads",
            "8",
            "--kv-heads",
            "4",
        ])
        .args([
            "--ffn", "192", "--vocab", "512", "--ctx", "256", "--seed", "7",
        ])
        .args(["--type", "q8_0"])
        .output()
        .unwrap();
    assert!(st.status.success());
    let line = text
        .lines()
        .find(|l| l.starts_with("model fnv1a64="))
        .unwrap();
    assert_eq!(
        field(line, "fnv1a64"),
        format!("{:016x}", fnv1a64(&std::fs::read(&model).unwrap())),
        "the image carries the same model bytes as `ember synth` makes"
    );
    let prompt = prompt_ids(&text);
    let rs = runs(&text);
    assert_eq!(rs.len(), 4, "four runs:\n{text}");
    assert!(rs.iter().any(|r| r.kernels == "cortex-m-dsp"), "{text}");
    for r in &rs {
        let host = host_run(&model, &prompt, 24, r);
        assert_eq!(
            r.ids,
            json_ids(&host),
            "kernels {} sampling {}: firmware vs host",
            r.kernels,
            r.sampling
        );
    }
    assert!(text.contains("stats: stack_peak="), "{text}");
}

#[test]
fn cortex_m4_and_m55_int8_dsp_kernels_match_scalar_on_target() {
    for target in ["thumbv7em-none-eabihf", "thumbv8m.main-none-eabihf"] {
        let o = qemu(target, "kernels", &[]);
        let text = assert_exit(&o, 0);
        for line in [
            "kernel cortex-m-dsp: 256 cases equal to the scalar reference bit for bit",
            "packed kernel cortex-m-dsp: 192 cases equal to the scalar reference bit for bit",
            "f16 kernels cortex-m-dsp: 80 cases equal to the scalar reference bit for bit",
            "q5_0 kernel cortex-m-dsp: 192 cases equal to the scalar reference bit for bit",
            "q4_k kernel cortex-m-dsp: 120 cases equal to the scalar reference bit for bit",
            "q6_k kernel cortex-m-dsp: 120 cases equal to the scalar reference bit for bit",
        ] {
            assert!(text.contains(line), "{target}:\n{text}");
        }
    }
}

/// SmolLM2 on a device: prompt ids from the device's tokenizer, 8 greedy ids
/// and the text, all equal to the host's.
fn smollm_matches_host(target: &str, ty: GgmlType) -> String {
    let model = ember_runner::model_store::converted(ty).unwrap_or_else(|e| panic!("{e:#}"));
    placed_model_matches_host(target, &model, &[])
}

/// The `smollm` image over `model` (placed by QEMU's loader): prompt ids
/// from the device's tokenizer, 8 greedy ids and the text, all equal to the
/// host's. Returns the device's log.
fn placed_model_matches_host(target: &str, model: &Path, env: &[(&str, &str)]) -> String {
    let mut env = env.to_vec();
    env.push(("EMBER_FIRMWARE_MODEL", model.to_str().unwrap()));
    let o = qemu(target, "smollm", &env);
    let text = assert_exit(&o, 0);
    let prompt_text = env
        .iter()
        .find(|(k, _)| *k == "EMBER_FIRMWARE_PROMPT")
        .map_or("The capital of France is", |(_, v)| v);
    let tok = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["tokenize", prompt_text, "--json"])
        .args(["--model", model.to_str().unwrap()])
        .output()
        .unwrap();
    let tok: Value = serde_json::from_slice(&tok.stdout).unwrap();
    let prompt = prompt_ids(&text);
    assert_eq!(prompt, json_ids(&tok), "device tokenizer vs host");
    let rs = runs(&text);
    assert_eq!(rs.len(), 1, "{text}");
    assert_eq!(rs[0].ids.len(), 8, "{text}");
    let host = host_run(model, &prompt, 8, &rs[0]);
    assert_eq!(rs[0].ids, json_ids(&host), "{target}: firmware vs host");
    let line = text.lines().find(|l| l.starts_with("text=")).unwrap();
    let mut device_text = line["text=".len()..].to_string();
    // defmt prints one line per call; the text may span several.
    let after: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("text="))
        .skip(1)
        .take_while(|l| !l.starts_with("stats:"))
        .collect();
    for l in after {
        device_text.push('\n');
        device_text.push_str(l);
    }
    assert_eq!(
        device_text,
        host["text"].as_str().unwrap(),
        "{target}: text"
    );
    text
}

#[test]
fn aarch64_bare_metal_smollm2_matches_host() {
    let log = smollm_matches_host("aarch64-unknown-none", GgmlType::Q4_1);
    assert!(log.contains("\ncores=1\n"), "{log}");
}

/// SmolLM2 split over `cores` cores of QEMU `virt` (secondaries started
/// through PSCI, each step's rows and heads shared among them): the same
/// prompt ids, ids and text as the host's.
fn aarch64_smollm2_on_cores(cores: usize) {
    let model =
        ember_runner::model_store::converted(GgmlType::Q4_1).unwrap_or_else(|e| panic!("{e:#}"));
    let n = cores.to_string();
    let log = placed_model_matches_host(
        "aarch64-unknown-none",
        &model,
        &[("EMBER_FIRMWARE_CORES", &n)],
    );
    assert!(log.contains(&format!("\ncores={cores}\n")), "{log}");
}

#[test]
fn aarch64_bare_metal_smollm2_on_2_cores_matches_host() {
    aarch64_smollm2_on_cores(2);
}

#[test]
fn aarch64_bare_metal_smollm2_on_4_cores_matches_host() {
    aarch64_smollm2_on_cores(4);
}

/// The Gemma 3 270M Q4_K_M file, fetched once into the model store.
fn gemma3() -> std::path::PathBuf {
    ember_runner::model_store::stored(&ember_runner::model_store::GEMMA3_270M)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Gemma 3 270M (the real Q4_K_M file: Q8_0, Q5_0, Q4_K and Q6_K matrices,
/// sliding-window layers, a 262,144-token vocabulary) with no OS: tokenized
/// on the device, decoded through the NEON 16-bit kernels, the same ids and
/// text as the host's.
#[test]
fn aarch64_bare_metal_gemma3_matches_host() {
    let model = gemma3();
    let log = placed_model_matches_host("aarch64-unknown-none", &model, &[]);
    assert!(log.contains("run kernels=neon"), "{log}");
}

/// Gemma 3 270M on the Cortex-M55 board's image: its 262,144 × 640 Q8_0
/// embedding and classifier packed in fours in DDR (180 MB), the Q5_0, Q4_K
/// and Q6_K matrices through the DSP int8 kernels, the same ids and text as
/// the host's `--kernels scalar-q8`.
#[test]
fn cortex_m55_gemma3_matches_host() {
    let model = gemma3();
    let log = placed_model_matches_host("thumbv8m.main-none-eabihf", &model, &[]);
    assert!(log.contains("weights packed in fours: "), "{log}");
}

#[test]
fn cortex_m55_smollm2_matches_host() {
    // Q8_0, so the 135M model runs through the DSP int8 kernel, on weights
    // the device packed in fours.
    let log = smollm_matches_host("thumbv8m.main-none-eabihf", GgmlType::Q8_0);
    assert!(log.contains("weights packed in fours: "), "{log}");
}

/// The Cortex-M4F with a model in its PSRAM (the `smollm` image, placed by
/// the loader like a model in external flash): a synthetic int8 model with
/// layers wide enough that the weight multiplies dominate a token (dim 512,
/// 2 layers, FFN 1536, 7 MB; firmware/measure.py measures the same file),
/// packed in fours on the device, its ids and text equal to the host's.
#[test]
fn cortex_m4_packed_psram_model_matches_host() {
    let dir = tempdir();
    let model = dir.join("m4-psram.gguf");
    let st = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["synth", model.to_str().unwrap()])
        .args(M4_PSRAM_MODEL)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let log = placed_model_matches_host("thumbv7em-none-eabihf", &model, &[]);
    assert!(log.contains("weights packed in fours: "), "{log}");
    assert!(log.contains("kernels=cortex-m-dsp"), "{log}");
    // A board with RAM for the session but not for the packs runs the
    // file's layout, with the same ids.
    let log = placed_model_matches_host(
        "thumbv7em-none-eabihf",
        &model,
        &[("EMBER_FIRMWARE_RAM_LIMIT", "2000000")],
    );
    assert!(log.contains("weights not packed in fours: "), "{log}");
}

/// The Cortex-M4F with the same synthetic PSRAM model converted to Q4_K_M
/// (Q4_K and Q6_K matrices) and to Q5_0 by `ember convert`: the DSP int8
/// kernels of those formats on the device, its ids and text equal to the
/// host's int8 reference (`--kernels scalar-q8`).
#[test]
fn cortex_m4_k_quant_and_q5_0_psram_models_match_host() {
    let dir = tempdir();
    let model = dir.join("m4-psram.gguf");
    let st = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["synth", model.to_str().unwrap()])
        .args(M4_PSRAM_MODEL)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    for ty in ["q4_k_m", "q5_0"] {
        let out = dir.join(format!("m4-psram-{ty}.gguf"));
        let st = Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["convert", model.to_str().unwrap(), out.to_str().unwrap()])
            .args(["--type", ty])
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let log = placed_model_matches_host("thumbv7em-none-eabihf", &out, &[]);
        assert!(log.contains("kernels=cortex-m-dsp"), "{ty}: {log}");
    }
}

/// Every family on the Cortex-M4F (a synthetic Q8_0 file of each, in its
/// PSRAM): the prompt tokenized on the device, the DSP int8 kernels, and
/// 8 greedy ids and their text equal to the host's. Gemma 3's windowed
/// layers see 8 positions and keep rings of 8 + 15 slots, which the
/// 30-token prompt and the decode wrap.
#[test]
fn cortex_m4_runs_every_family_as_the_host_does() {
    let dir = tempdir();
    let prompt = "Once upon a time there was a little robot who lived in a small house at the edge of the forest, and every morning";
    for family in ["llama3", "qwen2", "qwen3", "phi3", "gemma3"] {
        let model = dir.join(format!("{family}.gguf"));
        let head_dim = if matches!(family, "qwen3" | "gemma3") {
            "48"
        } else {
            "0"
        };
        let st = Command::new(env!("CARGO_BIN_EXE_ember"))
            .args(["synth", model.to_str().unwrap(), "--arch", family])
            .args([
                "--dim",
                "128",
                "--layers",
                "6",
                "--heads",
                "4",
                "--kv-heads",
                "2",
            ])
            .args([
                "--ffn", "384", "--vocab", "512", "--seed", "3", "--window", "8",
            ])
            .args(["--head-dim", head_dim])
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let log = placed_model_matches_host(
            "thumbv7em-none-eabihf",
            &model,
            &[("EMBER_FIRMWARE_PROMPT", prompt)],
        );
        assert!(log.contains("kernels=cortex-m-dsp"), "{family}: {log}");
        let n_prompt = prompt_ids(&log).len();
        assert!(
            n_prompt > 23,
            "{family}: the prompt should wrap the rings ({n_prompt} ids)"
        );
    }
    // A board too small for the family's plan is told so up front, with
    // the plan's numbers, before any token.
    let model = dir.join("gemma3.gguf");
    let o = qemu(
        "thumbv7em-none-eabihf",
        "smollm",
        &[
            ("EMBER_FIRMWARE_MODEL", model.to_str().unwrap()),
            ("EMBER_FIRMWARE_RAM_LIMIT", "150000"),
        ],
    );
    assert_device_error(&o, "the session arena: the static buffer is too small");
    let text = log(&o);
    assert!(
        text.contains("memory plan: ") && !text.contains("run kernels="),
        "{text}"
    );
}

/// `ember synth` arguments of the Cortex-M4F PSRAM model (as in
/// firmware/measure.py).
const M4_PSRAM_MODEL: [&str; 14] = [
    "--dim",
    "512",
    "--layers",
    "2",
    "--heads",
    "8",
    "--kv-heads",
    "4",
    "--ffn",
    "1536",
    "--vocab",
    "512",
    "--seed",
    "1",
];

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ember-firmware-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One defmt error line containing `needle`, exit code 1.
fn assert_device_error(o: &Output, needle: &str) {
    let text = assert_exit(o, 1);
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one error line:\n{text}");
    assert!(errors[0].contains(needle), "'{needle}' not in:\n{text}");
}

#[test]
fn device_bad_input_is_an_error_line_never_a_fault() {
    let dir = tempdir();
    let model = ember_runner::model_store::converted(GgmlType::Q4_1).unwrap();
    let model = model.to_str().unwrap();
    let a64 = "aarch64-unknown-none";

    let junk = dir.join("junk.gguf");
    std::fs::write(
        &junk,
        (0..100_000u32)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let o = qemu(
        a64,
        "smollm",
        &[("EMBER_FIRMWARE_MODEL", junk.to_str().unwrap())],
    );
    assert_device_error(&o, "reading the GGUF: BadMagic");

    // A real header cut short: tensor data missing.
    let cut = dir.join("cut.gguf");
    let bytes = std::fs::read(model).unwrap();
    std::fs::write(&cut, &bytes[..2_000_000]).unwrap();
    let o = qemu(
        a64,
        "smollm",
        &[("EMBER_FIRMWARE_MODEL", cut.to_str().unwrap())],
    );
    assert_device_error(&o, "reading the GGUF");

    let o = qemu(
        a64,
        "smollm",
        &[
            ("EMBER_FIRMWARE_MODEL", model),
            ("EMBER_FIRMWARE_RAM_LIMIT", "1000000"),
        ],
    );
    assert_device_error(&o, "the static buffer is too small");

    let long = "word ".repeat(300);
    let o = qemu(
        a64,
        "smollm",
        &[
            ("EMBER_FIRMWARE_MODEL", model),
            ("EMBER_FIRMWARE_PROMPT", &long),
        ],
    );
    assert_device_error(&o, "KvCacheFull");

    // Invalid UTF-8 cannot travel in an environment string; the runner takes
    // the prompt's bytes from a file written here.
    let o = {
        let dir = built();
        let elf = dir.join("target").join(a64).join("release/smollm");
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "EMBER_FIRMWARE_PROMPT=\"$(printf 'caf\\351')\" {} {}",
                dir.join("qemu-run").display(),
                elf.display()
            ))
            .env("EMBER_FIRMWARE_MODEL", model)
            .current_dir(dir)
            .output()
            .unwrap()
    };
    assert_device_error(&o, "not valid UTF-8");
}
