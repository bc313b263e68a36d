//! The forward step's buffers, each named once with its shape: the list
//! below makes both their sizes (for the memory plan, before anything runs)
//! and the slices carved from the caller's arena, in the list's order.

use crate::kernels::StepScratch;
use crate::model::Config;

/// The dimensions the buffers' shapes are written in.
pub(crate) struct Dims {
    /// Tokens of one step.
    batch: usize,
    /// Sequences of one step.
    seqs: usize,
    /// Workers that split a step.
    threads: usize,
    dim: usize,
    q_dim: usize,
    kv_dim: usize,
    ffn: usize,
    rope_dim: usize,
    /// RoPE tables per token: 2 when windowed layers rotate with a base of
    /// their own.
    rope_sets: usize,
    vocab: usize,
    /// Query heads per KV head.
    group: usize,
    /// Most cache slots one query scores (the capacity, or a windowed
    /// layer's ring where that is longer).
    kv_capacity: usize,
    /// The multiplications' scratch ([`StepScratch`]).
    mm: StepScratch,
}

impl Dims {
    pub(crate) fn new(
        c: &Config,
        kv_capacity: usize,
        batch: usize,
        threads: usize,
        seqs: usize,
        packed_prefill: bool,
    ) -> Option<Dims> {
        let cols = c.dim.max(c.q_dim()).max(c.ffn_dim);
        Some(Dims {
            batch,
            seqs,
            threads,
            dim: c.dim,
            q_dim: c.q_dim(),
            kv_dim: c.kv_dim(),
            ffn: c.ffn_dim,
            rope_dim: c.rope_dim,
            rope_sets: c.rope_sets(),
            vocab: c.vocab_size,
            group: c.n_heads / c.n_kv_heads.max(1),
            kv_capacity,
            mm: StepScratch::new(cols, batch, seqs, packed_prefill)?,
        })
    }
}

/// Declares the buffers: `name: [dims..]` (f32 elements, the product of
/// the dims). Makes [`ScratchSizes`] and [`Scratch`].
macro_rules! buffers {
    (|$d:ident| { $( $(#[$doc:meta])* $name:ident: [$($e:expr),+], )* }) => {
        /// Each buffer's length in f32 elements.
        pub(crate) struct ScratchSizes {
            $( $(#[$doc])* pub $name: usize, )*
        }

        /// The buffers, carved from the arena.
        pub(crate) struct Scratch<'a> {
            $( $(#[$doc])* pub $name: &'a mut [f32], )*
        }

        impl ScratchSizes {
            /// The lengths for `dims`; `None` on overflow.
            pub(crate) fn new($d: &Dims) -> Option<ScratchSizes> {
                Some(ScratchSizes {
                    $( $name: 1usize $( .checked_mul($e)? )+, )*
                })
            }

            /// All of them: the arena's scratch part.
            pub(crate) fn total(&self) -> Option<usize> {
                Some(0usize) $( .and_then(|a| a.checked_add(self.$name)) )*
            }

            /// The buffers, in order, from the front of `rest` (shorter
            /// only if `rest` is, which the plan rules out).
            pub(crate) fn carve<'a>(&self, mut rest: &'a mut [f32]) -> Scratch<'a> {
                Scratch {
                    $( $name: take(&mut rest, self.$name), )*
                }
            }
        }
    };
}

buffers!(|d| {
    /// The residual stream.
    x: [d.batch, d.dim],
    /// A block's normed input, then a projection's output.
    xb: [d.batch, d.dim],
    /// Queries.
    q: [d.batch, d.q_dim],
    /// Keys of this step, rotated, before the cache takes them.
    k: [d.batch, d.kv_dim],
    /// Values of this step.
    v: [d.batch, d.kv_dim],
    /// Attention output.
    att: [d.batch, d.q_dim],
    /// FFN gate, then the gated hidden activation.
    gate: [d.batch, d.ffn],
    /// FFN up projection.
    up: [d.batch, d.ffn],
    /// Attention scores, one row of positions per query head of a group,
    /// per worker.
    scores: [d.threads, d.group, d.kv_capacity],
    /// Each token's RoPE cos/sin pairs (per set of frequencies).
    rope: [d.batch, d.rope_sets, d.rope_dim],
    /// Per sequence: the query rotated at its in-cache position, for the
    /// attention sinks (see kv_cache).
    q_sink: [d.seqs, d.q_dim],
    /// Per sequence: the cos/sin pairs of that position.
    rope_sink: [d.seqs, d.rope_dim],
    /// Each rotated pair's frequency as f64 bits in two words, computed
    /// once ([`crate::model::llama::rope_freqs`]).
    rope_freq: [d.rope_sets, d.rope_dim],
    /// Per sequence: the logits after its last token.
    logits: [d.seqs, d.vocab],
    /// Per worker: the multiplications' own scratch.
    work: [d.threads, d.mm.per_worker],
    /// The step's activations prepared once for every worker.
    shared: [d.mm.shared],
});

/// Takes the next `n` floats of the arena (fewer only if it is short).
pub(crate) fn take<'a>(buf: &mut &'a mut [f32], n: usize) -> &'a mut [f32] {
    let rest = core::mem::take(buf);
    let (head, tail) = rest.split_at_mut(n.min(rest.len()));
    *buf = tail;
    head
}
