//! The forward pass on the device: the same steps, in the same order, as
//! the core's [`ember_core::model::Batch`] (see `core/src/model/llama.rs`),
//! over weights resident in GPU memory and one KV cache per slot.
//!
//! A step advances several sequences (slots) at once: every token's
//! embedding, per layer RMSNorm, the Q/K/V projections (biases, per-head
//! norms), RoPE from tables the host computes with the core's f64 code,
//! the KV store at each token's position, causal grouped-query attention
//! (within the window for windowed layers), the output projection (post
//! norm), residual; RMSNorm, gate and up, SwiGLU/GeGLU, down (post norm),
//! residual; finally the last token of each sequence through the final
//! norm and the classifier (soft-capped where the file says). All of it is
//! one compute pass in one submission; the logits come back to the host
//! for sampling.

use std::collections::HashMap;

use ember_core::arch::{Activation, RopeOrder};
use ember_core::kernels::Matrix;
use ember_core::model::llama::{rope_freqs, rope_table};
use ember_core::model::{Config, Llama};
use ember_core::quant::GgmlType;

use crate::device::{f32s_into, grid, map_with, words, words_into, Gpu, Kernel, Params, Pass};
use crate::shaders::{self, Op};
use crate::{bail, Result};

/// What an engine holds room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Sequences kept at once, each with its own KV cache.
    pub slots: usize,
    /// Positions per slot.
    pub ctx: usize,
    /// Tokens one step takes, over all its sequences.
    pub max_batch: usize,
    /// Room for the logits of every token of a step ([`Engine::step_all`]:
    /// teacher-forced scoring, perplexity), not only each sequence's last.
    pub all_logits: bool,
}

/// A matrix resident on the device: its rows in parts that each fit one
/// binding.
#[derive(Debug, Clone)]
struct DevMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    /// (buffer, first row, rows).
    parts: Vec<(wgpu::Buffer, usize, usize)>,
}

/// An f32 vector on the device, or none.
type DevVec = Option<wgpu::Buffer>;

#[derive(Debug)]
struct DevLayer {
    attn_norm: wgpu::Buffer,
    q: DevMatrix,
    k: DevMatrix,
    v: DevMatrix,
    o: DevMatrix,
    ffn_norm: wgpu::Buffer,
    gate: DevMatrix,
    up: DevMatrix,
    down: DevMatrix,
    q_bias: DevVec,
    k_bias: DevVec,
    v_bias: DevVec,
    q_norm: DevVec,
    k_norm: DevVec,
    attn_post_norm: DevVec,
    ffn_post_norm: DevVec,
    /// This layer's key and value caches: slots × ctx × kv_dim f32.
    kc: wgpu::Buffer,
    vc: wgpu::Buffer,
}

/// The step's activations.
#[derive(Debug)]
struct Bufs {
    x: wgpu::Buffer,
    xb: wgpu::Buffer,
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    att: wgpu::Buffer,
    gate: wgpu::Buffer,
    up: wgpu::Buffer,
    /// Attention's partial results: per token, head and part of the cache,
    /// (max, sum, weighted values).
    parts: wgpu::Buffer,
    /// Per token: id, position, slot, sequence.
    meta: wgpu::Buffer,
    /// Per token, per table: (cos, sin) of each rotated pair.
    rope: wgpu::Buffer,
    /// The rows whose logits are wanted.
    rows: wgpu::Buffer,
    /// Those rows, normed.
    xn: wgpu::Buffer,
    logits: wgpu::Buffer,
    /// Each row's greedy token ([`Engine::argmax`]).
    ids: wgpu::Buffer,
    /// What comes back: the ids, then (at [`Bufs::logits_at`]) the logits.
    readback: wgpu::Buffer,
    logits_at: u64,
    /// Bound where a kernel's optional vector is absent.
    dummy: wgpu::Buffer,
}

/// A model on the GPU with room for `slots` sequences.
pub struct Engine {
    gpu: Gpu,
    c: Config,
    opt: EngineOptions,
    ops: HashMap<Op, Kernel>,
    matmul: HashMap<GgmlType, Kernel>,
    /// The embedding kernel over `embd`'s format.
    embed: Kernel,
    embd: DevMatrix,
    output: DevMatrix,
    output_norm: wgpu::Buffer,
    layers: Vec<DevLayer>,
    b: Bufs,
    /// The RoPE frequencies of each table (the core's bits of f64s).
    freqs: Vec<Vec<f32>>,
    /// Positions filled in each slot.
    lens: Vec<usize>,
    /// The last step's logits, one row per sequence.
    logits: Vec<f32>,
    /// Rows of `logits` the last step filled.
    n_logits: usize,
    /// The last step's greedy ids, one per row.
    ids: Vec<u32>,
    /// Whether steps bring their logits back (else only the greedy ids).
    read_logits: bool,
    /// The step's dispatches, their bind groups kept from step to step
    /// (taken out while a step records).
    pass: Option<Pass>,
    /// The step's per-token data on the host, reused from step to step.
    host: Host,
}

/// Per-token data a step uploads: (id, position, slot, sequence) per
/// token, the tokens' RoPE tables, the rows whose logits are wanted, and
/// the bytes of whichever is being written.
#[derive(Debug, Default)]
struct Host {
    meta: Vec<u32>,
    rope: Vec<f32>,
    rows: Vec<u32>,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("gpu", &self.gpu)
            .field("config", &self.c)
            .field("options", &self.opt)
            .finish()
    }
}

impl Engine {
    /// Uploads `model`'s weights to `gpu` and makes room for `opt`.
    /// A step takes fewer tokens than `opt.max_batch` where one binding
    /// cannot hold the attention parts of that many ([`Engine::options`]
    /// says how many).
    pub fn new(gpu: Gpu, model: &Llama, opt: EngineOptions) -> Result<Engine> {
        let c = model.config;
        if opt.slots == 0 || opt.ctx == 0 || opt.max_batch == 0 {
            bail!("the GPU engine needs at least one slot, position and token per step");
        }
        let parts = opt.ctx.div_ceil(shaders::ATTEND_CHUNK) as u64;
        let per_token = (c.n_heads as u64 * parts * (c.head_dim as u64 + 2) * 4).max(1);
        let fits = (gpu.max_binding() / per_token) as usize;
        if fits == 0 {
            bail!(
                "one token's attention parts over {} positions do not fit one GPU binding; lower --ctx",
                opt.ctx
            );
        }
        let opt = EngineOptions {
            max_batch: opt.max_batch.min(fits),
            ..opt
        };
        let w = &model.weights;
        let mut types: Vec<GgmlType> = vec![w.token_embd.ty(), w.output.ty()];
        for l in &w.layers {
            types.extend(l.matrices().iter().map(|m| m.ty()));
        }
        let mut matmul = HashMap::new();
        for &ty in &types {
            if let std::collections::hash_map::Entry::Vacant(e) = matmul.entry(ty) {
                e.insert(gpu.kernel(
                    &format!("matmul {}", ty.name()),
                    &shaders::matmul(ty),
                    shaders::MATMUL_BINDINGS,
                )?);
            }
        }
        let ety = w.token_embd.ty();
        let embed = gpu.kernel(
            &format!("embed {}", ety.name()),
            &shaders::embed(ety),
            shaders::MATMUL_BINDINGS,
        )?;
        let mut ops = HashMap::new();
        for op in Op::ALL {
            ops.insert(
                op,
                gpu.kernel(&format!("{op:?}"), &op.source(), op.bindings())?,
            );
        }

        let embd = upload_matrix(&gpu, "token_embd", &w.token_embd)?;
        let output = if w.output.data.bytes().as_ptr() == w.token_embd.data.bytes().as_ptr() {
            embd.clone()
        } else {
            upload_matrix(&gpu, "output", &w.output)?
        };
        let vecf = |name: &str, v: &[f32]| -> Result<DevVec> {
            if v.is_empty() {
                Ok(None)
            } else {
                gpu.upload(name, &words(v)).map(Some)
            }
        };
        let kv_bytes = (opt.slots as u64)
            .saturating_mul(opt.ctx as u64)
            .saturating_mul(c.kv_dim() as u64 * 4);
        let mut layers = Vec::with_capacity(w.layers.len());
        for (i, l) in w.layers.iter().enumerate() {
            let name = |s: &str| format!("blk.{i}.{s}");
            layers.push(DevLayer {
                attn_norm: gpu.upload(&name("attn_norm"), &words(l.attn_norm))?,
                q: upload_matrix(&gpu, &name("attn_q"), &l.attn_q)?,
                k: upload_matrix(&gpu, &name("attn_k"), &l.attn_k)?,
                v: upload_matrix(&gpu, &name("attn_v"), &l.attn_v)?,
                o: upload_matrix(&gpu, &name("attn_output"), &l.attn_output)?,
                ffn_norm: gpu.upload(&name("ffn_norm"), &words(l.ffn_norm))?,
                gate: upload_matrix(&gpu, &name("ffn_gate"), &l.ffn_gate)?,
                up: upload_matrix(&gpu, &name("ffn_up"), &l.ffn_up)?,
                down: upload_matrix(&gpu, &name("ffn_down"), &l.ffn_down)?,
                q_bias: vecf(&name("attn_q.bias"), l.attn_q_bias)?,
                k_bias: vecf(&name("attn_k.bias"), l.attn_k_bias)?,
                v_bias: vecf(&name("attn_v.bias"), l.attn_v_bias)?,
                q_norm: vecf(&name("attn_q_norm"), l.attn_q_norm)?,
                k_norm: vecf(&name("attn_k_norm"), l.attn_k_norm)?,
                attn_post_norm: vecf(&name("post_attention_norm"), l.attn_post_norm)?,
                ffn_post_norm: vecf(&name("post_ffw_norm"), l.ffn_post_norm)?,
                kc: gpu.scratch(&name("key cache"), kv_bytes)?,
                vc: gpu.scratch(&name("value cache"), kv_bytes)?,
            });
        }
        let output_norm = gpu.upload("output_norm", &words(w.output_norm))?;

        let n = opt.max_batch as u64;
        let f = |k: usize| n * k as u64 * 4;
        let hidden = c.dim.max(c.q_dim()).max(c.ffn_dim);
        let seqs = if opt.all_logits {
            opt.max_batch
        } else {
            opt.slots.min(opt.max_batch)
        } as u64;
        let sets = c.rope_sets();
        let b = Bufs {
            x: gpu.scratch("x", f(c.dim))?,
            xb: gpu.scratch("xb", f(hidden))?,
            q: gpu.scratch("q", f(c.q_dim()))?,
            k: gpu.scratch("k", f(c.kv_dim()))?,
            v: gpu.scratch("v", f(c.kv_dim()))?,
            att: gpu.scratch("att", f(c.q_dim()))?,
            gate: gpu.scratch("gate", f(c.ffn_dim))?,
            up: gpu.scratch("up", f(c.ffn_dim))?,
            parts: gpu.scratch("attention parts", n.saturating_mul(per_token))?,
            meta: gpu.scratch("meta", f(4))?,
            rope: gpu.scratch("rope", f(sets * c.rope_dim))?,
            rows: gpu.scratch("rows", seqs * 4)?,
            xn: gpu.scratch("xn", seqs * c.dim as u64 * 4)?,
            logits: gpu.scratch("logits", seqs * c.vocab_size as u64 * 4)?,
            ids: gpu.scratch("greedy ids", seqs * 4)?,
            readback: gpu.readback("readback", ids_bytes(seqs) + seqs * c.vocab_size as u64 * 4),
            logits_at: ids_bytes(seqs),
            dummy: gpu.scratch("dummy", 16)?,
        };
        let mut freqs = vec![vec![0.0f32; c.rope_dim]; sets];
        rope_freqs(
            &mut freqs[0],
            c.rope_base,
            c.rope_scale,
            w.rope_factors,
            c.rope_dim,
        );
        if sets == 2 {
            rope_freqs(&mut freqs[1], c.rope_base_window, 1.0, &[], c.rope_dim);
        }
        let pass = Some(Pass::new(&gpu));
        Ok(Engine {
            gpu,
            c,
            opt,
            ops,
            matmul,
            embed,
            embd,
            output,
            output_norm,
            layers,
            b,
            freqs,
            lens: vec![0; opt.slots],
            logits: Vec::new(),
            n_logits: 0,
            ids: Vec::new(),
            read_logits: true,
            pass,
            host: Host::default(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.c
    }

    pub fn options(&self) -> &EngineOptions {
        &self.opt
    }

    /// Gives the device back, for another engine.
    pub fn into_gpu(self) -> Gpu {
        self.gpu
    }

    /// The device's memory bandwidth ([`Gpu::copy_bandwidth`]).
    pub fn copy_bandwidth(&self) -> Result<f64> {
        self.gpu.copy_bandwidth()
    }

    /// The adapter, for messages.
    pub fn device_name(&self) -> String {
        self.gpu.name()
    }

    /// Positions filled in `slot`.
    pub fn pos(&self, slot: usize) -> usize {
        self.lens.get(slot).copied().unwrap_or(0)
    }

    /// Empties `slot` (its next token is at position 0).
    pub fn clear(&mut self, slot: usize) {
        if let Some(l) = self.lens.get_mut(slot) {
            *l = 0;
        }
    }

    /// Whether each step brings its logits back to the host (the default);
    /// without them a step brings back only each sequence's greedy token
    /// ([`Engine::argmax`]), four bytes instead of the vocabulary's logits.
    pub fn read_logits(&mut self, on: bool) {
        self.read_logits = on;
    }

    /// The greedy token after the last token of sequence `i` of the last
    /// step, as the core's sampler picks at temperature 0 with no
    /// penalties (the largest logit, ties to the lowest id, NaN skipped),
    /// computed on the device; `None` where no logit is above −infinity.
    pub fn argmax(&self, i: usize) -> Option<u32> {
        self.ids.get(i).copied().filter(|&id| id != u32::MAX)
    }

    /// The logits after the last token of sequence `i` of the last step
    /// (empty when [`Engine::read_logits`] is off).
    pub fn logits(&self, i: usize) -> &[f32] {
        let v = self.c.vocab_size;
        if i >= self.n_logits {
            return &[];
        }
        &self.logits[i * v..(i + 1) * v]
    }

    /// Advances each `(slot, tokens)` of `work` by its tokens in one step;
    /// then [`Engine::logits`]`(i)` holds the logits after the last token of
    /// `work[i]`. Everything is checked first: an error changes nothing.
    pub fn step(&mut self, work: &[(usize, &[u32])]) -> Result<()> {
        self.run(work, &[])
    }

    /// [`Engine::step`], with the logits of every token of `work[i]` where
    /// `every[i]` (a generated token and its prompt-lookup drafts; the
    /// engine must have been made with `all_logits`), of the last token of
    /// the others: [`Engine::logits`]`(r)` holds row `r` of them, in order.
    pub fn step_drafts(&mut self, work: &[(usize, &[u32])], every: &[bool]) -> Result<()> {
        if every.iter().any(|&e| e) && !self.opt.all_logits {
            bail!("this engine keeps only each sequence's last logits");
        }
        if every.len() != work.len() {
            bail!("one flag per sequence of the step");
        }
        self.run(work, every)
    }

    /// Feeds `tokens` to `slot`, then `emit(i, logits)` sees the logits
    /// after each token `i` (chunks of up to `max_batch` tokens; the engine
    /// must have been made with `all_logits`).
    pub fn step_all(
        &mut self,
        slot: usize,
        tokens: &[u32],
        emit: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        if !self.opt.all_logits {
            bail!("this engine keeps only each sequence's last logits");
        }
        let v = self.c.vocab_size;
        for (k, chunk) in tokens.chunks(self.opt.max_batch).enumerate() {
            self.run(&[(slot, chunk)], &[true])?;
            for j in 0..chunk.len() {
                emit(k * self.opt.max_batch + j, &self.logits[j * v..(j + 1) * v]);
            }
        }
        Ok(())
    }

    /// Errors unless `n` more positions fit in `slot`.
    pub fn reserve(&self, slot: usize, n: usize) -> Result<()> {
        let pos = self.pos(slot);
        if pos + n > self.opt.ctx {
            bail!(
                "the KV cache is full: {pos} + {n} positions, {} in all; raise --ctx",
                self.opt.ctx
            );
        }
        Ok(())
    }

    /// Forgets `slot`'s positions from `n` on (a chat's next turn shares
    /// its first `n` tokens).
    pub fn truncate(&mut self, slot: usize, n: usize) -> Result<()> {
        match self.lens.get_mut(slot) {
            Some(l) if n <= *l => {
                *l = n;
                Ok(())
            }
            _ => bail!("slot {slot} holds fewer than {n} positions"),
        }
    }

    /// A step: logits for each sequence's last token, or for every token of
    /// `work[i]` where `every[i]` (empty: none).
    fn run(&mut self, work: &[(usize, &[u32])], every: &[bool]) -> Result<()> {
        let all = every.iter().any(|&e| e);
        let c = self.c;
        if work.is_empty() {
            bail!("a step needs at least one sequence");
        }
        if work.len() > self.opt.slots.min(self.opt.max_batch) {
            bail!(
                "{} sequences in one step; the engine takes {}",
                work.len(),
                self.opt.slots.min(self.opt.max_batch)
            );
        }
        let mut total = 0usize;
        for (i, &(slot, toks)) in work.iter().enumerate() {
            if slot >= self.opt.slots || work[..i].iter().any(|w| w.0 == slot) {
                bail!("slot {slot} is out of range or twice in one step");
            }
            if toks.is_empty() {
                bail!("a sequence in the step has no tokens");
            }
            if let Some(&t) = toks.iter().find(|&&t| t as usize >= c.vocab_size) {
                bail!("token {t} is out of the vocabulary ({})", c.vocab_size);
            }
            if self.lens[slot] + toks.len() > self.opt.ctx {
                bail!(
                    "the context is full: {} + {} positions, {} in all",
                    self.lens[slot],
                    toks.len(),
                    self.opt.ctx
                );
            }
            total += toks.len();
        }
        if total > self.opt.max_batch {
            bail!(
                "{total} tokens in one step; the engine takes {}",
                self.opt.max_batch
            );
        }

        // Per token: id, position, slot, sequence; its RoPE tables; the
        // rows whose logits are wanted.
        let rows: usize = work
            .iter()
            .enumerate()
            .map(|(i, w)| match every.get(i) {
                Some(true) => w.1.len(),
                _ => 1,
            })
            .sum();
        let room = if self.opt.all_logits {
            self.opt.max_batch
        } else {
            self.opt.slots.min(self.opt.max_batch)
        };
        if rows > room {
            bail!("{rows} rows of logits in one step; the engine keeps {room}");
        }
        let (rd, sets) = (c.rope_dim, c.rope_sets());
        let h = &mut self.host;
        h.meta.clear();
        h.rows.clear();
        h.rope.clear();
        h.rope.resize(total * sets * rd, 0.0);
        for (i, &(slot, toks)) in work.iter().enumerate() {
            for (j, &id) in toks.iter().enumerate() {
                let t = h.meta.len() / 4;
                let pos = self.lens[slot] + j;
                h.meta
                    .extend_from_slice(&[id, pos as u32, slot as u32, i as u32]);
                for (s, fr) in self.freqs.iter().enumerate() {
                    let at = (t * sets + s) * rd;
                    rope_table(&mut h.rope[at..at + rd], pos, fr);
                }
                if every.get(i) == Some(&true) {
                    h.rows.push(t as u32);
                }
            }
            if every.get(i) != Some(&true) {
                h.rows.push((h.meta.len() / 4 - 1) as u32);
            }
        }
        let q = &self.gpu.queue;
        words_into(&h.meta, &mut h.bytes);
        q.write_buffer(&self.b.meta, 0, &h.bytes);
        words_into(&h.rope, &mut h.bytes);
        q.write_buffer(&self.b.rope, 0, &h.bytes);
        words_into(&h.rows, &mut h.bytes);
        q.write_buffer(&self.b.rows, 0, &h.bytes);
        let seqs = h.rows.len();

        let mut pass = self.pass.take().unwrap_or_else(|| Pass::new(&self.gpu));
        pass.begin();
        // Attention's parts: enough for the step's furthest position.
        let furthest = h
            .meta
            .chunks_exact(4)
            .map(|m| m[1] as usize + 1)
            .max()
            .unwrap_or(1);
        self.record(
            &mut pass,
            total,
            seqs,
            furthest.div_ceil(shaders::ATTEND_CHUNK),
        );
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        pass.finish(&self.gpu, &mut enc);
        self.pass = Some(pass);
        let id_bytes = seqs as u64 * 4;
        enc.copy_buffer_to_buffer(&self.b.ids, 0, &self.b.readback, 0, id_bytes);
        let read_logits = self.read_logits || all;
        let bytes = if read_logits {
            let bytes = (seqs * c.vocab_size * 4) as u64;
            enc.copy_buffer_to_buffer(&self.b.logits, 0, &self.b.readback, self.b.logits_at, bytes);
            self.b.logits_at + bytes
        } else {
            id_bytes
        };
        self.gpu.queue.submit([enc.finish()]);
        let (ids, logits, at) = (&mut self.ids, &mut self.logits, self.b.logits_at as usize);
        map_with(&self.gpu, &self.b.readback, bytes, |b| {
            ids.clear();
            ids.extend(
                b[..seqs * 4]
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
            if read_logits {
                f32s_into(&b[at..], logits);
            } else {
                logits.clear();
            }
        })?;
        self.n_logits = if read_logits { seqs } else { 0 };
        for &(slot, toks) in work {
            self.lens[slot] += toks.len();
        }
        Ok(())
    }

    /// Records the step's dispatches for `n` tokens and `seqs` sequences,
    /// attention in `parts` parts of the cache.
    fn record(&self, r: &mut Pass, n: usize, seqs: usize, parts: usize) {
        let (c, g, b) = (&self.c, &self.gpu, &self.b);
        let op = |o: Op| &self.ops[&o];
        let dim = c.dim;
        let (hd, qd, kvd) = (c.head_dim, c.q_dim(), c.kv_dim());

        // x = the tokens' embedding rows (each part of the table takes the
        // tokens whose rows it holds).
        let e = &self.embd;
        for (buf, row0, rows) in &e.parts {
            let p = Params {
                u: [
                    dim as u32,
                    *rows as u32,
                    e.row_bytes as u32,
                    0,
                    0,
                    0,
                    *row0 as u32,
                    0,
                ],
                f: [c.embed_scale, 0.0, 0.0, 0.0],
            };
            r.push(g, &self.embed, p, &[buf, &b.meta, &b.x], [n as u32, 1, 1]);
        }
        let norm = |r: &mut Pass,
                    src: &wgpu::Buffer,
                    dst: &wgpu::Buffer,
                    w: Option<&wgpu::Buffer>,
                    len: usize,
                    segs: usize| {
            let (gr, width) = grid(segs);
            let p = Params {
                u: [
                    len as u32,
                    segs as u32,
                    w.is_some() as u32,
                    0,
                    0,
                    0,
                    0,
                    width,
                ],
                f: [c.rms_eps, 0.0, 0.0, 0.0],
            };
            r.push(g, op(Op::Norm), p, &[src, dst, w.unwrap_or(&b.dummy)], gr);
        };
        let elementwise =
            |r: &mut Pass, o: Op, a: u32, len: usize, bufs: &[&wgpu::Buffer], x: f32| {
                let (gr, width) = grid(len.div_ceil(256));
                let p = Params {
                    u: [a, len as u32, 0, 0, 0, 0, 0, width],
                    f: [x, 0.0, 0.0, 0.0],
                };
                r.push(g, op(o), p, bufs, gr);
            };
        let mm = |r: &mut Pass, m: &DevMatrix, x: &wgpu::Buffer, y: &wgpu::Buffer, n: usize| {
            for (buf, row0, rows) in &m.parts {
                let (mut gr, width) = grid(rows.div_ceil(4));
                gr[2] = n.div_ceil(8) as u32;
                let p = Params {
                    u: [
                        *rows as u32,
                        m.cols as u32,
                        m.row_bytes as u32,
                        n as u32,
                        m.cols as u32,
                        m.rows as u32,
                        *row0 as u32,
                        width,
                    ],
                    f: [0.0; 4],
                };
                r.push(g, &self.matmul[&m.ty], p, &[buf, x, y], gr);
            }
        };
        let rope = |r: &mut Pass, buf: &wgpu::Buffer, heads: usize, set: usize| {
            let order = match c.layout.rope {
                RopeOrder::Normal => 0,
                RopeOrder::Neox => 1,
            };
            let p = Params {
                u: [
                    heads as u32,
                    hd as u32,
                    c.rope_dim as u32,
                    set as u32,
                    c.rope_sets() as u32,
                    order,
                    n as u32,
                    0,
                ],
                f: [0.0; 4],
            };
            r.push(
                g,
                op(Op::Rope),
                p,
                &[buf, &b.rope],
                [heads as u32, n as u32, 1],
            );
        };

        for (l, lw) in self.layers.iter().enumerate() {
            // x += post(Wo · attention(rope(q), rope(k), v)), h = norm(x),
            // q = qnorm(Wq h + bq), k = knorm(Wk h + bk), v = Wv h + bv.
            norm(r, &b.x, &b.xb, Some(&lw.attn_norm), dim, n);
            mm(r, &lw.q, &b.xb, &b.q, n);
            mm(r, &lw.k, &b.xb, &b.k, n);
            mm(r, &lw.v, &b.xb, &b.v, n);
            for (bias, buf, width) in [
                (&lw.q_bias, &b.q, qd),
                (&lw.k_bias, &b.k, kvd),
                (&lw.v_bias, &b.v, kvd),
            ] {
                if let Some(bias) = bias {
                    elementwise(r, Op::Bias, width as u32, n * width, &[buf, bias], 0.0);
                }
            }
            if let Some(qn) = &lw.q_norm {
                norm(r, &b.q, &b.q, Some(qn), hd, n * c.n_heads);
            }
            if let Some(kn) = &lw.k_norm {
                norm(r, &b.k, &b.k, Some(kn), hd, n * c.n_kv_heads);
            }
            let set = if c.rope_sets() == 2 && c.windowed(l) {
                1
            } else {
                0
            };
            rope(r, &b.q, c.n_heads, set);
            rope(r, &b.k, c.n_kv_heads, set);
            let p = Params {
                u: [kvd as u32, self.opt.ctx as u32, 0, 0, 0, 0, 0, 0],
                f: [0.0; 4],
            };
            r.push(
                g,
                op(Op::KvStore),
                p,
                &[&b.k, &b.v, &lw.kc, &lw.vc, &b.meta],
                [n as u32, 1, 1],
            );
            let window = if c.windowed(l) { c.window } else { 0 };
            let p = Params {
                u: [
                    c.n_heads as u32,
                    hd as u32,
                    kvd as u32,
                    (c.n_heads / c.n_kv_heads) as u32,
                    self.opt.ctx as u32,
                    window as u32,
                    parts as u32,
                    0,
                ],
                f: [c.attn_scale, 0.0, 0.0, 0.0],
            };
            r.push(
                g,
                op(Op::AttendPart),
                p,
                &[&b.q, &lw.kc, &lw.vc, &b.parts, &b.meta],
                [c.n_heads as u32, n as u32, parts as u32],
            );
            r.push(
                g,
                op(Op::AttendMerge),
                p,
                &[&b.parts, &b.att],
                [c.n_heads as u32, n as u32, 1],
            );
            mm(r, &lw.o, &b.att, &b.xb, n);
            if let Some(pn) = &lw.attn_post_norm {
                norm(r, &b.xb, &b.xb, Some(pn), dim, n);
            }
            elementwise(r, Op::Add, 0, n * dim, &[&b.x, &b.xb], 0.0);

            // x += post(Wdown · (act(Wgate h) ⊙ Wup h)), h = norm(x).
            norm(r, &b.x, &b.xb, Some(&lw.ffn_norm), dim, n);
            mm(r, &lw.gate, &b.xb, &b.gate, n);
            mm(r, &lw.up, &b.xb, &b.up, n);
            let act = match c.layout.act {
                Activation::Silu => 0,
                Activation::GeluTanh => 1,
            };
            elementwise(r, Op::Glu, act, n * c.ffn_dim, &[&b.gate, &b.up], 0.0);
            mm(r, &lw.down, &b.gate, &b.xb, n);
            if let Some(pn) = &lw.ffn_post_norm {
                norm(r, &b.xb, &b.xb, Some(pn), dim, n);
            }
            elementwise(r, Op::Add, 0, n * dim, &[&b.x, &b.xb], 0.0);
        }

        // logits = Wout · norm(x) for each sequence's last token.
        let p = Params {
            u: [dim as u32, 0, 0, 0, 0, 0, 0, 0],
            f: [0.0; 4],
        };
        r.push(
            g,
            op(Op::Gather),
            p,
            &[&b.x, &b.xn, &b.rows],
            [seqs as u32, 1, 1],
        );
        norm(r, &b.xn, &b.xn, Some(&self.output_norm), dim, seqs);
        mm(r, &self.output, &b.xn, &b.logits, seqs);
        if c.logit_softcap > 0.0 {
            elementwise(
                r,
                Op::Softcap,
                0,
                seqs * c.vocab_size,
                &[&b.logits],
                c.logit_softcap,
            );
        }
        let p = Params {
            u: [c.vocab_size as u32, 0, 0, 0, 0, 0, 0, 0],
            f: [0.0; 4],
        };
        r.push(
            g,
            op(Op::Argmax),
            p,
            &[&b.logits, &b.ids],
            [seqs as u32, 1, 1],
        );
    }
}

/// Uploads `m`'s rows in parts of whole rows that each fit one binding.
fn upload_matrix(gpu: &Gpu, name: &str, m: &Matrix) -> Result<DevMatrix> {
    let rb = m.row_bytes();
    let bytes = m.data.bytes();
    if rb == 0 || bytes.len() < m.rows * rb {
        bail!(
            "{name}: {} bytes hold fewer than {} rows",
            bytes.len(),
            m.rows
        );
    }
    let per = (gpu.max_binding() as usize / rb).max(1);
    let mut parts = Vec::new();
    let mut row0 = 0;
    while row0 < m.rows {
        let rows = per.min(m.rows - row0);
        let buf = gpu.upload(name, &bytes[row0 * rb..(row0 + rows) * rb])?;
        parts.push((buf, row0, rows));
        row0 += rows;
    }
    Ok(DevMatrix {
        ty: m.ty(),
        rows: m.rows,
        cols: m.cols,
        row_bytes: rb,
        parts,
    })
}

/// Bytes the greedy ids of `seqs` rows take at the start of the readback,
/// rounded up so that the logits after them start where a copy may.
fn ids_bytes(seqs: u64) -> u64 {
    (seqs * 4).div_ceil(256) * 256
}
