//! Whole forward passes: the detected kernels (AVX2 on x86_64, NEON on
//! AArch64, where CI runs this under qemu-aarch64) against the scalar
//! reference of the same arithmetic on small random llamas of every weight type, prefill and decode.
//! With `EMBER_E2E_MODEL` set to a GGUF path, that model is checked too.
//!
//! An end-to-end check of the kernel tables through the model; the tables'
//! own conformance (every kernel against its scalar reference) lives beside
//! them in `kernels::conformance`.

use ember_core::gguf::Gguf;
use ember_core::gguf_writer::GgufWriter;
use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan, Session};
use ember_core::quant::GgmlType;

/// xorshift32: a tiny deterministic generator for test inputs.
struct Rng(u32);

impl Rng {
    fn new(seed: u32) -> Self {
        Rng(seed.max(1))
    }
    fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
    /// Uniform in [-1, 1).
    fn f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }
}

/// Rows of `cols` floats in format `ty` (its reference quantizer).
fn quantize(data: &[f32], cols: usize, ty: GgmlType) -> Vec<u8> {
    let rb = ty.row_bytes(cols as u64).expect("whole blocks") as usize;
    let mut out = vec![0u8; data.len() / cols * rb];
    for (row, o) in data.chunks(cols).zip(out.chunks_exact_mut(rb)) {
        (ty.format().quantize)(row, o);
    }
    out
}

/// A random llama: dim 128 (256 for the 256-element super-block formats),
/// 2 layers, 4 query and 2 KV heads, FFN twice the width, vocabulary 320,
/// weights uniform in ±1/√fan-in.
fn tiny(ty: GgmlType) -> Vec<u8> {
    let dim = if ty.block_len() > 128 { 256usize } else { 128 };
    let (layers, heads, kv_heads, ffn, vocab) = (2, 4, 2, 2 * dim, 320usize);
    let kv_dim = dim / heads * kv_heads;
    let mut rng = Rng::new(0x7e57 + ty.id());
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "llama")
        .add_u32("llama.context_length", 64)
        .add_u32("llama.embedding_length", dim as u32)
        .add_u32("llama.block_count", layers as u32)
        .add_u32("llama.feed_forward_length", ffn as u32)
        .add_u32("llama.attention.head_count", heads as u32)
        .add_u32("llama.attention.head_count_kv", kv_heads as u32)
        .add_u32("llama.rope.dimension_count", (dim / heads) as u32)
        .add_f32("llama.rope.freq_base", 10_000.0)
        .add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .add_u32("llama.vocab_size", vocab as u32);
    let mut matrix = |w: &mut GgufWriter, name: &str, cols: usize, rows: usize| {
        let a = 1.0 / (cols as f32).sqrt();
        let data: Vec<f32> = (0..cols * rows).map(|_| rng.f32() * a).collect();
        w.add_tensor(
            name,
            &[cols as u64, rows as u64],
            ty,
            quantize(&data, cols, ty),
        );
    };
    matrix(&mut w, "token_embd.weight", dim, vocab);
    for l in 0..layers {
        let p = |t: &str| std::format!("blk.{l}.{t}.weight");
        matrix(&mut w, &p("attn_q"), dim, dim);
        matrix(&mut w, &p("attn_k"), dim, kv_dim);
        matrix(&mut w, &p("attn_v"), dim, kv_dim);
        matrix(&mut w, &p("attn_output"), dim, dim);
        matrix(&mut w, &p("ffn_gate"), dim, ffn);
        matrix(&mut w, &p("ffn_up"), dim, ffn);
        matrix(&mut w, &p("ffn_down"), ffn, dim);
    }
    let ones: Vec<u8> = (0..dim).flat_map(|_| 1.0f32.to_le_bytes()).collect();
    for l in 0..layers {
        for n in ["attn_norm", "ffn_norm"] {
            w.add_tensor(
                &std::format!("blk.{l}.{n}.weight"),
                &[dim as u64],
                GgmlType::F32,
                ones.clone(),
            );
        }
    }
    w.add_tensor("output_norm.weight", &[dim as u64], GgmlType::F32, ones);
    w.to_bytes()
}

/// Logits after each of 8 prompt tokens (one batched call) and 4 decode steps.
fn logits(model: &Llama, k: Kernels, ids: &[u32]) -> Vec<Vec<f32>> {
    let plan = MemoryPlan::new(&model.config, 16, 8).unwrap();
    let mut arena = plan.alloc();
    let mut s = Session::new(model, k, plan, &mut arena).unwrap();
    let mut out = Vec::new();
    s.forward_all(&ids[..8], &mut |_, l| out.push(l.to_vec()))
        .unwrap();
    for &id in &ids[8..12] {
        out.push(s.forward(&[id]).unwrap().to_vec());
    }
    out
}

fn agree(bytes: &[u8], what: &str) {
    let g = Gguf::parse(bytes).unwrap();
    let model = Llama::from_gguf(&g).unwrap();
    let v = model.config.vocab_size as u32;
    let ids: Vec<u32> = (0..12u32).map(|i| (i * 7919 + 11) % v).collect();
    let detected = Kernels::detect();
    let a = logits(&model, detected.reference(), &ids);
    let b = logits(&model, detected, &ids);
    for (t, (x, y)) in a.iter().zip(&b).enumerate() {
        let scale = x.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let max = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        // A fast table's f32 prefill sums in another order than the
        // reference's, so the decode steps start from a cache a few ulps
        // away; where its decode then quantizes activations to 16 bits, an
        // input that crosses a rounding boundary moves by one step (1/32767
        // of its block's largest magnitude), which NEON's SmolLM2 Q4_1 run
        // shows as 1.2e-4 of the largest logit. Beyond 2e-4 would be a
        // kernel fault.
        assert!(
            max <= 2e-4 * scale,
            "{what}, {} kernels vs {}, token {t}: max |dlogit| {max} (scale {scale})",
            detected.name,
            detected.reference().name
        );
    }
}

/// Greedy continuation of each prompt, fed through one [`Batch`] that
/// advances all sequences together (joining at different steps, prompts
/// in chunks of up to 4, a streaming cache of 12 that evicts), gives bit
/// for bit the logits of each sequence run alone in a [`Session`].
fn batch_agrees(model: &Llama, k: Kernels, what: &str) {
    use ember_core::kv_cache::KvOptions;
    use ember_core::model::{Batch, Seq};
    let c = &model.config;
    let v = c.vocab_size as u32;
    let kv = KvOptions::streaming(2, 10);
    let prompts: Vec<Vec<u32>> = [9usize, 1, 5, 13, 3]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            (0..n as u32)
                .map(|j| (j * 7919 + 31 * i as u32 + 5) % v)
                .collect()
        })
        .collect();
    let gen = 6;
    let argmax = |l: &[f32]| -> u32 {
        let mut b = 0;
        for (i, &x) in l.iter().enumerate() {
            if x > l[b] {
                b = i;
            }
        }
        b as u32
    };
    // Alone.
    let mut alone: Vec<Vec<Vec<f32>>> = Vec::new();
    for p in &prompts {
        let plan = MemoryPlan::with_kv(c, kv, 4).unwrap();
        let mut arena = plan.alloc();
        let mut s = Session::new(model, k, plan, &mut arena).unwrap();
        let mut got = vec![s.forward(p).unwrap().to_vec()];
        for _ in 0..gen {
            let next = argmax(s.logits());
            got.push(s.forward(&[next]).unwrap().to_vec());
        }
        alone.push(got);
    }
    // Together.
    let n = prompts.len();
    let plan = MemoryPlan::batched(c, kv, 4 * n, 1, n).unwrap();
    let mut scratch = vec![0.0f32; plan.scratch_len];
    let mut b = Batch::new(model, k, plan, &mut scratch).unwrap();
    let mut mem: Vec<(Vec<f32>, Vec<f32>)> = (0..n)
        .map(|_| (vec![0.0; plan.kv_len], vec![0.0; plan.kv_len]))
        .collect();
    let mut caches: Vec<_> = mem
        .iter_mut()
        .map(|(kk, vv)| plan.cache(c, kk, vv).unwrap())
        .collect();
    let mut fed = vec![0usize; n];
    let mut next = vec![0u32; n];
    let mut got: Vec<Vec<Vec<f32>>> = vec![Vec::new(); n];
    let mut step = 0;
    while got.iter().any(|g| g.len() < gen + 1) {
        let mut work: Vec<(usize, Vec<u32>)> = Vec::new();
        for i in 0..n.min(step + 1) {
            if got[i].len() == gen + 1 {
                continue;
            }
            let p = &prompts[i];
            if fed[i] < p.len() {
                let take = 4.min(caches[i].chunk_room()).min(p.len() - fed[i]);
                work.push((i, p[fed[i]..fed[i] + take].to_vec()));
            } else {
                work.push((i, vec![next[i]]));
            }
        }
        // Sequences in reverse order of index, so rows and slots differ.
        work.reverse();
        let mut refs: Vec<&mut ember_core::kv_cache::KvCache> = caches.iter_mut().collect();
        let mut seqs: Vec<Seq> = Vec::new();
        let mut order = Vec::new();
        for (i, r) in refs.drain(..).enumerate().rev() {
            if let Some((_, t)) = work.iter().find(|(j, _)| *j == i) {
                seqs.push(Seq::new(r, t));
                order.push(i);
            }
        }
        b.step(&mut seqs).unwrap();
        for (slot, &i) in order.iter().enumerate() {
            let t = &work.iter().find(|(j, _)| *j == i).unwrap().1;
            if fed[i] < prompts[i].len() {
                fed[i] += t.len();
                if fed[i] < prompts[i].len() {
                    continue;
                }
            }
            let l = b.logits(slot).to_vec();
            next[i] = argmax(&l);
            got[i].push(l);
        }
        step += 1;
    }
    for i in 0..n {
        for (t, (x, y)) in alone[i].iter().zip(&got[i]).enumerate() {
            let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(
                same,
                "{what} {}: sequence {i} output {t} differs batched",
                k.name
            );
        }
    }
}

#[test]
fn batched_sequences_match_sessions() {
    for ty in [GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_1] {
        let bytes = tiny(ty);
        let g = Gguf::parse(&bytes).unwrap();
        let model = Llama::from_gguf(&g).unwrap();
        for k in [Kernels::scalar(), Kernels::scalar_q16(), Kernels::detect()] {
            batch_agrees(&model, k, ty.name());
        }
    }
}

#[test]
fn detected_matches_scalar_end_to_end() {
    for ty in GgmlType::ALL {
        agree(&tiny(ty), ty.name());
    }
    if let Some(path) = std::env::var_os("EMBER_E2E_MODEL") {
        let bytes = std::fs::read(&path).expect("EMBER_E2E_MODEL");
        agree(&bytes, &path.to_string_lossy());
    }
}

/// Bad K-quant input is one clear error or a finite run, never a panic or
/// a read out of bounds: rows that are not a multiple of 256, a tensor cut
/// short, and NaN and infinite super-block scales.
#[test]
fn bad_k_quant_input_is_an_error_never_a_panic() {
    use ember_core::error::Error;
    for ty in [
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        // Rows of 576: not a whole number of super-blocks.
        let mut w = GgufWriter::new();
        w.add_tensor_raw("t.weight", &[576, 2], ty.id(), vec![0u8; 4096]);
        assert!(
            matches!(
                Gguf::parse(&w.to_bytes()),
                Err(Error::BadTensorShape { tensor: 0 })
            ),
            "{}",
            ty.name()
        );

        // A model whose last tensor is cut short.
        let good = tiny(ty);
        assert!(
            Gguf::parse(&good[..good.len() - 1]).is_err(),
            "{}",
            ty.name()
        );

        // Every super-block scale NaN, then infinite: the forward pass runs
        // and returns (its logits are what such weights give).
        let g = Gguf::parse(&good).unwrap();
        for bits in [0x7e00u16, 0x7c00] {
            let mut bad = good.clone();
            let base = g.data().as_ptr() as usize - good.as_ptr() as usize;
            let bb = ty.block_bytes();
            // Where each block type keeps its f16 `d` (ggml's layouts).
            let d_at = match ty {
                GgmlType::Q2_K => 80,
                GgmlType::Q3_K => 108,
                GgmlType::Q6_K => 208,
                _ => 0,
            };
            for t in g.tensors().filter(|t| t.ty == ty) {
                let start = base + (t.data.as_ptr() as usize - g.data().as_ptr() as usize);
                for b in (start..start + t.data.len()).step_by(bb) {
                    bad[b + d_at..b + d_at + 2].copy_from_slice(&bits.to_le_bytes());
                }
            }
            let g = Gguf::parse(&bad).unwrap();
            let model = Llama::from_gguf(&g).unwrap();
            let plan = MemoryPlan::new(&model.config, 8, 4).unwrap();
            let mut arena = plan.alloc();
            let mut s = Session::new(&model, Kernels::detect(), plan, &mut arena).unwrap();
            let l = s.forward(&[1, 2, 3]).unwrap();
            assert_eq!(l.len(), model.config.vocab_size);
        }
    }
}

/// A generated token and drafts after it, fed in one step in the decode
/// arithmetic ([`Session::forward_drafts`], [`Batch::step_drafts`] beside
/// another sequence's prompt chunk), give bit for bit the logits of
/// feeding them one at a time: prompt lookup changes nothing but speed,
/// in every weight format and kernel table.
#[test]
fn drafts_take_the_bits_of_single_tokens() {
    use ember_core::model::{Batch, Seq};
    for ty in GgmlType::ALL {
        let bytes = tiny(ty);
        let g = Gguf::parse(&bytes).unwrap();
        let model = Llama::from_gguf(&g).unwrap();
        let v = model.config.vocab_size as u32;
        let ids: Vec<u32> = (0..15u32).map(|i| (i * 7919 + 11) % v).collect();
        let (prompt, drafts) = ids.split_at(9);
        for k in [Kernels::scalar(), Kernels::scalar_q16(), Kernels::detect()] {
            // Chunks of up to 16: the prompt is read in one, as the batch reads it.
            let plan = MemoryPlan::new(&model.config, 32, 16).unwrap();
            let mut arena = plan.alloc();
            let mut one = Session::new(&model, k, plan, &mut arena).unwrap();
            one.forward(prompt).unwrap();
            let alone: Vec<Vec<f32>> = drafts
                .iter()
                .map(|&t| one.forward(&[t]).unwrap().to_vec())
                .collect();
            let bits = |l: &[f32]| l.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let what = format!("{} on {}", ty.name(), k.name);

            let mut arena = plan.alloc();
            let mut s = Session::new(&model, k, plan, &mut arena).unwrap();
            s.forward(prompt).unwrap();
            let mut got = Vec::new();
            s.forward_drafts(drafts, &mut |i, l| got.push((i, bits(l))))
                .unwrap();
            assert_eq!(got.len(), drafts.len(), "{what}");
            for (i, (j, l)) in got.iter().enumerate() {
                assert_eq!(*j, i, "{what}");
                assert!(*l == bits(&alone[i]), "{what}: draft {i} differs");
            }

            // In a batch, beside another sequence's prompt chunk.
            let bplan = MemoryPlan::batched(&model.config, plan.kv, 16, 1, 2).unwrap();
            let mut scratch = vec![0f32; bplan.scratch_len];
            let mut b = Batch::new(&model, k, bplan, &mut scratch).unwrap();
            let mut mem: Vec<(Vec<f32>, Vec<f32>)> = (0..2)
                .map(|_| (vec![0f32; bplan.kv_len], vec![0f32; bplan.kv_len]))
                .collect();
            let mut caches: Vec<_> = mem
                .iter_mut()
                .map(|(k, v)| bplan.cache(&model.config, k, v).unwrap())
                .collect();
            let (c0, c1) = caches.split_at_mut(1);
            b.step(&mut [Seq::new(&mut c1[0], prompt)]).unwrap();
            let mut got = Vec::new();
            let other = [3u32, 5, 7, 11];
            b.step_drafts(
                &mut [
                    Seq::new(&mut c0[0], &other),
                    Seq::drafts(&mut c1[0], drafts),
                ],
                &mut |q, j, l| got.push((q, j, bits(l))),
            )
            .unwrap();
            let mine: Vec<_> = got.iter().filter(|g| g.0 == 1).collect();
            assert_eq!(mine.len(), drafts.len(), "{what}");
            assert_eq!(got.iter().filter(|g| g.0 == 0).count(), 1, "{what}");
            for (i, (_, j, l)) in mine.iter().enumerate() {
                assert_eq!(*j, i, "{what}");
                assert!(*l == bits(&alone[i]), "{what}: batched draft {i} differs");
            }
        }
    }
}

/// Sequences in a [`KvPool`]'s blocks (paged caches) give bit for bit the
/// logits of the same sequences in dense caches, with blocks of 4 slots
/// (attention reads each block as a run), a second sequence sharing the
/// first one's prefix blocks, and a streaming cache whose wrapped writes
/// land in a shared block (copied first). The pool ends with every block
/// back.
#[test]
fn paged_caches_give_the_bits_of_dense_ones() {
    use ember_core::kv_cache::{KvCache, KvOptions, KvPool, KvType};
    use ember_core::model::{Batch, Seq};
    let bits = |l: &[f32]| l.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (ty, kv_ty) in [
        (GgmlType::Q8_0, KvType::F16),
        (GgmlType::F16, KvType::F32),
        (GgmlType::Q4_1, KvType::Q8_0),
    ] {
        let bytes = tiny(ty);
        let g = Gguf::parse(&bytes).unwrap();
        let model = Llama::from_gguf(&g).unwrap();
        let c = &model.config;
        let v = c.vocab_size as u32;
        let toks = |seed: u32, n: usize| -> Vec<u32> {
            (0..n as u32)
                .map(|i| (i * 7919 + seed * 31 + 11) % v)
                .collect()
        };
        for opt in [
            KvOptions::dense(48).with_type(kv_ty),
            KvOptions::streaming(2, 14).with_type(kv_ty),
        ] {
            let what = format!("{} weights, {:?}", ty.name(), opt);
            let a = toks(1, 40);
            let mut b = a[..8].to_vec();
            b.extend(toks(2, 30));
            let plan = MemoryPlan::batched(c, opt, 16, 1, 2).unwrap();
            let mut scratch = vec![0f32; plan.scratch_len];
            let mut batch = Batch::new(&model, Kernels::detect(), plan, &mut scratch).unwrap();
            // Feeds `t[from..]` in chunks of up to 4 (one at a time once a
            // streaming cache is full), the logits after each chunk.
            let feed = |batch: &mut Batch,
                        cache: &mut KvCache,
                        mut pool: Option<&mut KvPool>,
                        t: &[u32],
                        from: usize,
                        to: usize|
             -> Vec<Vec<u32>> {
                let mut out = Vec::new();
                let mut i = from;
                while i < to {
                    let take = 4.min(cache.chunk_room()).min(to - i);
                    let chunk = &t[i..i + take];
                    let mut got = Vec::new();
                    match pool.as_deref_mut() {
                        Some(p) => batch
                            .step_pool(&mut [Seq::new(cache, chunk)], p, &mut |_, _, l| {
                                got = bits(l)
                            })
                            .unwrap(),
                        None => {
                            batch.step(&mut [Seq::new(cache, chunk)]).unwrap();
                            got = bits(batch.logits(0));
                        }
                    }
                    out.push(got);
                    i += take;
                }
                out
            };
            // Dense references, each alone.
            let dense = |t: &[u32], batch: &mut Batch| {
                let (mut k, mut vv) = (vec![0f32; plan.kv_len], vec![0f32; plan.kv_len]);
                let mut cache = plan.cache(c, &mut k, &mut vv).unwrap();
                feed(batch, &mut cache, None, t, 0, t.len())
            };
            let ref_a = dense(&a, &mut batch);
            let ref_b = dense(&b, &mut batch);

            let row = opt.ty.row_bytes(c.kv_dim()).unwrap();
            let n_blocks = 40;
            let bb = KvPool::block_bytes(4, c.n_layers, row).unwrap();
            let (mut k, mut vv) = (vec![0f32; n_blocks * bb / 4], vec![0f32; n_blocks * bb / 4]);
            let (mut refs, mut free) = (vec![0u16; n_blocks], vec![0u32; n_blocks]);
            let mut pool = KvPool::new(
                ember_core::quant::as_bytes_mut(&mut k),
                ember_core::quant::as_bytes_mut(&mut vv),
                &mut refs,
                &mut free,
                n_blocks,
                4,
                c.n_layers,
                row,
            )
            .unwrap();
            let win = plan.windows(c);
            let len = KvCache::table_len(&opt, &win, 4);
            let (mut ta, mut tb) = (vec![0u32; len], vec![0u32; len]);
            let mut ca = KvCache::paged(&mut ta, 4, opt, c.n_layers, c.kv_dim(), win).unwrap();
            let mut cb = KvCache::paged(&mut tb, 4, opt, c.n_layers, c.kv_dim(), win).unwrap();
            let mut got_a = feed(&mut batch, &mut ca, Some(&mut pool), &a, 0, 8);
            assert_eq!(pool.share(&mut cb, &ca, 9).unwrap(), 8, "{what}");
            assert_eq!(pool.free(), n_blocks - 2, "{what}: the prefix is shared");
            // Interleaved: B reads its own tokens while A goes on.
            let mut got_b = Vec::new();
            for at in [8, 20] {
                got_a.extend(feed(&mut batch, &mut ca, Some(&mut pool), &a, at, at + 12));
                got_b.extend(feed(&mut batch, &mut cb, Some(&mut pool), &b, at, at + 12));
            }
            got_a.extend(feed(&mut batch, &mut ca, Some(&mut pool), &a, 32, 40));
            got_b.extend(feed(&mut batch, &mut cb, Some(&mut pool), &b, 32, 38));
            assert!(got_a == ref_a, "{what}: the first sequence differs");
            assert!(got_b == ref_b[2..], "{what}: the sharing sequence differs");
            // Truncating gives blocks back; releasing gives back the rest.
            if !opt.streaming {
                let before = pool.free();
                pool.truncate(&mut ca, 13).unwrap();
                assert_eq!(pool.free(), before + 10 - 4, "{what}");
            }
            pool.release(&mut ca);
            pool.release(&mut cb);
            assert_eq!(pool.free(), n_blocks, "{what}");
        }
    }
}
