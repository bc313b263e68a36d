//! The forward pass against the exact (float64) reference in `tests/golden/`.
//!
//! Teacher-forced along each golden path: the whole path is fed in one
//! forward call and the logits at each of the 33 scored positions are compared
//! with the exact function of the file's weights, next to llama.cpp's distance
//! from the same reference (see `tests/golden/README.md` for the bar).
//! The model files come from the default-model cache; the F16 and Q8_0 files
//! are made from the shipped Q4_1 file by `ember convert` on first use.

use std::path::PathBuf;

use ember_core::gguf::Gguf;
use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan, Session};
use ember_core::quant::GgmlType;
use ember_runner::mix::{FileType, Mix};
use ember_tests::golden::{all_logits, argmax, golden, ids, Score};

fn model_file(ty: GgmlType) -> PathBuf {
    file_of(FileType::Pure(ty))
}

/// The default model in `ty`: converted from the shipped Q4_1 file, or for
/// llama.cpp's mixes from its F16 conversion (byte for byte what llama.cpp's
/// quantizer writes from that file: docs/CLI.md#convert).
fn file_of(ty: FileType) -> PathBuf {
    match ty {
        FileType::Pure(t) => ember_runner::model_store::converted(t),
        FileType::Mix(_) => ember_runner::model_store::converted_mix(ty),
    }
    .unwrap_or_else(|e| panic!("model for {}: {e:#}", ty.name()))
}

/// Logits after every token of `path`, fed one token per forward call: the
/// decode path (one-token matmuls, 16-bit activations on the fast kernels).
fn decode_logits(model: &Llama, kernels: Kernels, path: &[u32]) -> Vec<Vec<f32>> {
    let plan = MemoryPlan::new(&model.config, path.len(), 1).unwrap();
    let mut arena = plan.alloc();
    let mut s = Session::new(model, kernels, plan, &mut arena).unwrap();
    path.iter()
        .map(|&id| s.forward(&[id]).unwrap().to_vec())
        .collect()
}

/// Scores ember against the exact reference for every case of one file type,
/// through batched prefill or (`decode`) one token per call.
fn score(ty: FileType, file: &str, decode: bool) -> Score {
    score_file(&file_of(ty), ty.name(), file, decode)
}

/// [`score`] for the model at `path` (`label` names it in the report).
fn score_file(path: &std::path::Path, label: &str, file: &str, decode: bool) -> Score {
    let g = golden(file);
    let map = ember_runner::mmap::map(path).unwrap();
    let gguf = Gguf::parse(&map).unwrap();
    let model = Llama::from_gguf(&gguf).unwrap();
    // Decode as `ember` runs it on one thread: Q8_0 and Q4_1 rows
    // interleaved for the packed kernels where the table has them.
    let packs = ember_runner::pack::Packs::build(&model, &Kernels::detect(), true, 1).unwrap();
    let model = packs.apply(model).unwrap();
    let mut total = Score::default();
    for case in g["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let path_ids = ids(&case["path_ids"]);
        let logits = if decode {
            decode_logits(&model, Kernels::detect(), &path_ids)
        } else {
            all_logits(&model, Kernels::detect(), &path_ids, 512)
        };
        let mut sc = Score::default();
        sc.add_case(case, &logits);
        eprintln!(
            "{:>5} {:<6} {:<14} {}",
            label,
            if decode { "decode" } else { "batch" },
            name,
            sc.summary()
        );
        total.merge(&sc);
    }
    total
}

#[test]
fn f16_matches_exact_reference() {
    let s = score(FileType::Pure(GgmlType::F16), "tf_f16.json", false);
    // Top-1 equal wherever exact's margin is over 0.02; every top-10 logit within 0.05.
    assert_eq!(s.top1_agree, s.qualifying, "{s:?}");
    assert!(
        s.max_dlogit <= 0.05,
        "max |dlogit| {} over 0.05",
        s.max_dlogit
    );
}

fn quantized_bar(ty: impl Into<FileType>, file: &str, decode: bool) {
    let ty = ty.into();
    let s = score(ty, file, decode);
    let kl = s.kl_sum / s.positions as f64;
    let llama_kl = s.llama_kl_sum / s.positions as f64;
    eprintln!(
        "{} {} total: top-1 {}/{} (llama.cpp {}), mean KL {kl:.3e} (llama.cpp {llama_kl:.3e})",
        ty.name(),
        if decode { "decode" } else { "batch" },
        s.top1_agree,
        s.qualifying,
        s.llama_top1_agree
    );
    assert!(s.top1_agree >= s.llama_top1_agree, "{s:?}");
    assert!(
        kl <= 1.25 * llama_kl,
        "mean KL {kl} vs llama.cpp {llama_kl}"
    );
}

#[test]
fn q8_0_at_least_as_close_as_llama_cpp() {
    quantized_bar(GgmlType::Q8_0, "tf_q8_0.json", false);
}

#[test]
fn q4_1_at_least_as_close_as_llama_cpp() {
    quantized_bar(GgmlType::Q4_1, "tf_q4_1.json", false);
}

/// The decode path (16-bit activations on the fast kernels) meets the same bar.
#[test]
fn q8_0_decode_at_least_as_close_as_llama_cpp() {
    quantized_bar(GgmlType::Q8_0, "tf_q8_0.json", true);
}

#[test]
fn q4_1_decode_at_least_as_close_as_llama_cpp() {
    quantized_bar(GgmlType::Q4_1, "tf_q4_1.json", true);
}

/// llama.cpp's mixes of the file llama.cpp's quantizer makes from the F16
/// file: top-1 at least llama.cpp's and mean KL from the exact function at
/// most a tenth of llama.cpp's, through batched prefill and through decode.
fn mix_bar(m: Mix, file: &str) {
    let ty = FileType::from(m);
    closer_bar(&file_of(ty), ty.name(), file, 0.1);
}

/// Top-1 at least llama.cpp's and mean KL from the exact function at most
/// `ratio` times llama.cpp's, through batched prefill and through decode.
fn closer_bar(path: &std::path::Path, label: &str, file: &str, ratio: f64) {
    for decode in [false, true] {
        let s = score_file(path, label, file, decode);
        let kl = s.kl_sum / s.positions as f64;
        let llama_kl = s.llama_kl_sum / s.positions as f64;
        eprintln!(
            "{label} {} total: top-1 {}/{} (llama.cpp {}), mean KL {kl:.3e} (llama.cpp {llama_kl:.3e})",
            if decode { "decode" } else { "batch" },
            s.top1_agree,
            s.qualifying,
            s.llama_top1_agree
        );
        assert!(s.top1_agree >= s.llama_top1_agree, "{s:?}");
        assert!(
            kl <= ratio * llama_kl,
            "mean KL {kl} vs llama.cpp {llama_kl}"
        );
    }
}

#[test]
fn gemma3_270m_five_times_closer_than_llama_cpp() {
    let path = ember_runner::model_store::stored(&ember_runner::model_store::GEMMA3_270M)
        .unwrap_or_else(|e| panic!("{e:#}"));
    closer_bar(&path, "gemma3 Q4_K_M", "tf_gemma3_q4_k_m.json", 0.2);
}

#[test]
fn q4_k_m_ten_times_closer_than_llama_cpp() {
    mix_bar(Mix::Q4_K_M, "tf_q4_k_m.json");
}

#[test]
fn q5_k_m_ten_times_closer_than_llama_cpp() {
    mix_bar(Mix::Q5_K_M, "tf_q5_k_m.json");
}

#[test]
fn q6_k_ten_times_closer_than_llama_cpp() {
    mix_bar(Mix::Q6_K, "tf_q6_k.json");
}

#[test]
fn q3_k_m_ten_times_closer_than_llama_cpp() {
    mix_bar(Mix::Q3_K_M, "tf_q3_k_m.json");
}

#[test]
fn q2_k_ten_times_closer_than_llama_cpp() {
    mix_bar(Mix::Q2_K, "tf_q2_k.json");
}

#[test]
fn q5_0_ten_times_closer_than_llama_cpp() {
    mix_bar(Mix::Q5_0, "tf_q5_0.json");
}

/// F16 decode (f32 activations on every table) matches the exact reference
/// as batched prefill does.
#[test]
fn f16_decode_matches_exact_reference() {
    let s = score(FileType::Pure(GgmlType::F16), "tf_f16.json", true);
    assert_eq!(s.top1_agree, s.qualifying, "{s:?}");
    assert!(
        s.max_dlogit <= 0.05,
        "max |dlogit| {} over 0.05",
        s.max_dlogit
    );
}

/// Decoding one token at a time gives the logits of one batched prefill (with
/// the f32 reference kernels both ways, so only rounding differs), and a small
/// batch size (several chunks) gives exactly those of one chunk.
#[test]
fn decode_and_chunked_prefill_equal_batched_prefill() {
    let path = model_file(GgmlType::Q4_1);
    let map = ember_runner::mmap::map(&path).unwrap();
    let gguf = Gguf::parse(&map).unwrap();
    let model = Llama::from_gguf(&gguf).unwrap();
    let g = golden("tf_q4_1.json");
    let ids = ids(&g["cases"][0]["path_ids"]);
    let ids = &ids[..24];
    let batched = all_logits(&model, Kernels::scalar(), ids, 512);
    let chunked = all_logits(&model, Kernels::scalar(), ids, 5);
    let plan = MemoryPlan::new(&model.config, ids.len(), 1).unwrap();
    let mut arena = plan.alloc();
    let mut s = Session::new(&model, Kernels::scalar(), plan, &mut arena).unwrap();
    for (t, &id) in ids.iter().enumerate() {
        let l = s.forward(&[id]).unwrap();
        assert_eq!(argmax(l), argmax(&batched[t]), "top-1 differs at token {t}");
        let max = l
            .iter()
            .zip(&batched[t])
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(
            max < 1e-3,
            "decode differs from prefill at token {t} by {max}"
        );
        assert_eq!(
            &chunked[t], &batched[t],
            "chunked prefill differs at token {t}"
        );
    }
    assert_eq!(s.pos(), ids.len());
}

/// The detected kernels agree end to end with the scalar reference of the
/// same arithmetic (f32 activations, 16-bit ones in decode where the table
/// has them).
#[test]
fn detected_kernels_agree_with_scalar() {
    let path = model_file(GgmlType::Q4_1);
    let map = ember_runner::mmap::map(&path).unwrap();
    let gguf = Gguf::parse(&map).unwrap();
    let model = Llama::from_gguf(&gguf).unwrap();
    let ids = [6403, 1980, 253, 655, 28, 281, 253, 1165];
    let a = all_logits(&model, Kernels::detect().reference(), &ids, 512);
    let b = all_logits(&model, Kernels::detect(), &ids, 512);
    for (t, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(argmax(x), argmax(y), "top-1 differs at {t}");
        let max = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(max < 1e-3, "token {t}: max |dlogit| {max}");
    }
}

/// Splitting a step over several workers changes nothing, bit for bit:
/// each worker computes whole rows and whole heads in the same order. With
/// several workers `ember` lays the layers' matrices out by worker; those
/// pieces hold the same numbers, and a model laid out for one number of
/// workers runs right on another.
#[test]
fn workers_give_bitwise_the_same_logits() {
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F16] {
        workers_agree(FileType::Pure(ty));
    }
    // Q4_K and Q6_K rows packed in eights (ffn_down; the rest Q5_0/Q8_0).
    workers_agree(FileType::Mix(Mix::Q4_K_M));
}

fn workers_agree(ty: FileType) {
    use ember_core::KvOptions;
    let path = file_of(ty);
    let map = ember_runner::mmap::map(&path).unwrap();
    let gguf = Gguf::parse(&map).unwrap();
    let model = Llama::from_gguf(&gguf).unwrap();
    let ids = [6403u32, 1980, 253, 655, 28, 281, 253, 1165, 30, 198];
    // Laid out for `layout` workers (packed as `ember` packs), run on `threads`.
    let run = |layout: usize, threads: usize| -> Vec<Vec<f32>> {
        let packs =
            ember_runner::pack::Packs::build(&model, &Kernels::detect(), true, layout).unwrap();
        let model = packs.apply(model.clone()).unwrap();
        let pool = ember_runner::pool::Pool::new(threads).unwrap();
        let plan =
            MemoryPlan::with_threads(&model.config, KvOptions::dense(32), 8, threads).unwrap();
        let mut arena = plan.alloc();
        let mut s = Session::new(&model, Kernels::detect(), plan, &mut arena).unwrap();
        s.set_parallel(&pool).unwrap();
        let mut out = Vec::new();
        s.forward_all(&ids[..8], &mut |_, l| out.push(l.to_vec()))
            .unwrap();
        for &id in &ids[8..] {
            out.push(s.forward(&[id]).unwrap().to_vec());
        }
        out
    };
    let one = run(1, 1);
    for (layout, threads) in [(2, 2), (3, 3), (2, 3), (3, 2), (2, 1)] {
        let many = run(layout, threads);
        for (t, (a, b)) in one.iter().zip(&many).enumerate() {
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{} laid out for {layout}, {threads} workers: differs at token {t}",
                ty.name()
            );
        }
    }
    // A pool larger than the plan is refused.
    let plan = MemoryPlan::with_threads(&model.config, KvOptions::dense(8), 1, 1).unwrap();
    let mut arena = plan.alloc();
    let mut s = Session::new(&model, Kernels::detect(), plan, &mut arena).unwrap();
    let pool = ember_runner::pool::Pool::new(2).unwrap();
    assert!(s.set_parallel(&pool).is_err());
}

/// A plan without packed prefill (as firmware sizes its arena) is smaller,
/// and a model with packed Q8_0 rows still prefills over it, through the
/// plain rows: its logits match the unpacked model's.
#[test]
fn plan_without_packed_prefill_is_smaller_and_prefills_plain() {
    use ember_core::KvOptions;
    let path = model_file(GgmlType::Q8_0);
    let map = ember_runner::mmap::map(&path).unwrap();
    let gguf = Gguf::parse(&map).unwrap();
    let plain = Llama::from_gguf(&gguf).unwrap();
    let packs = ember_runner::pack::Packs::build(&plain, &Kernels::detect(), true, 2).unwrap();
    let packed = packs.apply(plain.clone()).unwrap();
    let c = &plain.config;
    let full = MemoryPlan::with_threads(c, KvOptions::dense(32), 8, 2).unwrap();
    let lean = full.without_packed_prefill(c).unwrap();
    assert!(full.packed_prefill && !lean.packed_prefill);
    assert!(lean.scratch_len < full.scratch_len, "{lean:?} vs {full:?}");
    assert_eq!(lean.kv_len, full.kv_len);
    // One token per step needs no batch: the two plans are the same size.
    let one = MemoryPlan::with_threads(c, KvOptions::dense(32), 1, 2).unwrap();
    assert_eq!(
        one.without_packed_prefill(c).unwrap().scratch_len,
        one.scratch_len
    );

    let ids = [6403u32, 1980, 253, 655, 28, 281, 253, 1165];
    let pool = ember_runner::pool::Pool::new(2).unwrap();
    let logits = |model: &Llama, plan: MemoryPlan| -> Vec<Vec<f32>> {
        let mut arena = plan.alloc();
        let mut s = Session::new(model, Kernels::detect(), plan, &mut arena).unwrap();
        s.set_parallel(&pool).unwrap();
        let mut out = Vec::new();
        s.forward_all(&ids, &mut |_, l| out.push(l.to_vec()))
            .unwrap();
        out
    };
    let a = logits(&packed, lean);
    let b = logits(&plain, full);
    assert_eq!(a.len(), ids.len());
    for (t, (x, y)) in a.iter().zip(&b).enumerate() {
        let scale = y.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = x
            .iter()
            .zip(y)
            .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(worst <= 1e-4 * scale, "token {t}: {worst} against {scale}");
    }
    // The lean arena is really enough: one float less is refused.
    let mut short = vec![0.0f32; lean.f32_len() - 1];
    assert!(Session::new(&packed, Kernels::detect(), lean, &mut short).is_err());
}
