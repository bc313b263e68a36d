//! Splitting one forward step across workers that the caller supplies.
//!
//! The core has no threads. A host runner implements [`Parallel`] over its
//! own pool; firmware and tests use [`Serial`]. The model hands whole
//! operations to [`for_rows`] (matmul rows, in whole grains) and
//! [`for_tasks`] or [`for_task_grid`] (attention heads). Each worker owns a
//! run of the output and takes it in pieces, with its own scratch; a worker
//! that runs out takes the back half of the largest run left. A row's or a
//! task's result is the same whichever worker computes it and whatever
//! piece it is in: results do not depend on the number of workers or on who
//! took what.
//!
//! This module holds the only `unsafe` of the split: a worker's part of an
//! output buffer is a `&mut` view made from a shared raw pointer. Each unit
//! is handed out once, pieces never overlap, and the functions here check
//! every bound.

#![allow(unsafe_code)]

use core::marker::PhantomData;
#[cfg(target_has_atomic = "ptr")]
use core::sync::atomic::{AtomicUsize, Ordering};

/// Most workers that get a run of units of their own; more share one
/// counter.
#[cfg(target_has_atomic = "ptr")]
const OWN_RUNS: usize = 16;

/// Bits of each half of a run's word (front high, end low).
#[cfg(target_has_atomic = "ptr")]
const HALF: u32 = usize::BITS / 2;

/// Hands out units `0..n` of work as ranges. Where the target has atomics,
/// worker `i` of `w` owns the run `i * n / w .. (i + 1) * n / w` and takes
/// it from the front: all at once ([`Take::Whole`]) or in pieces that
/// shrink as the run does ([`Take::Pieces`]). A worker whose run is empty
/// takes the back half of the largest run left (which becomes its own run).
/// So a worker reads its rows of a matrix as one stream (its prefetches run
/// on into its next piece), a helper never takes what an owner has already
/// asked the memory for, and a worker that starts late (a helper waking
/// from sleep) or runs slower ends up with less. Without atomics worker `i`
/// takes units `i, i + w, ...`. Each unit goes to exactly one worker either
/// way.
struct Dispenser {
    n: usize,
    #[cfg(target_has_atomic = "ptr")]
    w: usize,
    #[cfg(target_has_atomic = "ptr")]
    take: Take,
    /// Each worker's run still to go, `front << HALF | end` (only the first
    /// word, a plain counter, when there are more than `OWN_RUNS` workers or
    /// `n` does not fit a half).
    #[cfg(target_has_atomic = "ptr")]
    runs: [Line; OWN_RUNS],
}

/// How an owner takes its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    /// In one piece: what decode's memory-bound steps want (one call of the
    /// row kernel per output, no word touched mid-step). On this project's
    /// 2-core host, one token at two threads ran 5-8% faster than in
    /// pieces, in the host's faster memory state, and the same in its
    /// slower one.
    Whole,
    /// A quarter of what is left at a time, so an idle worker can take over
    /// the rest: what prefill's compute-bound steps and attention's few,
    /// uneven tasks want (128-token prefill 1.5% faster than whole runs).
    Pieces,
}

/// One run's word on a cache line (two lines: some cores fetch lines in
/// pairs) of its own, so one worker taking from its run does not take the
/// line from another taking from its own.
#[cfg(target_has_atomic = "ptr")]
#[repr(align(128))]
struct Line(AtomicUsize);

#[cfg(target_has_atomic = "ptr")]
fn pack(lo: usize, hi: usize) -> usize {
    lo << HALF | hi
}

#[cfg(target_has_atomic = "ptr")]
fn unpack(v: usize) -> (usize, usize) {
    (v >> HALF, v & ((1usize << HALF) - 1))
}

impl Dispenser {
    fn new(n: usize, w: usize, take: Take) -> Self {
        #[cfg(target_has_atomic = "ptr")]
        {
            let w = w.max(1);
            let d = Dispenser {
                n,
                w,
                take,
                runs: [const { Line(AtomicUsize::new(0)) }; OWN_RUNS],
            };
            if d.own_runs() {
                for (i, c) in d.runs.iter().enumerate().take(w) {
                    c.0.store(pack(d.start(i), d.start(i + 1)), Ordering::Relaxed);
                }
            }
            d
        }
        #[cfg(not(target_has_atomic = "ptr"))]
        {
            let _ = (w, take);
            Dispenser { n }
        }
    }

    /// Whether each worker has a run of its own (else one shared counter).
    #[cfg(target_has_atomic = "ptr")]
    fn own_runs(&self) -> bool {
        self.w <= OWN_RUNS && self.n >> HALF == 0
    }

    /// The first unit of worker `i`'s run (`n` for `i == w`).
    #[cfg(target_has_atomic = "ptr")]
    fn start(&self, i: usize) -> usize {
        run_start(self.n, self.w, i)
    }

    /// The next piece of run `i` from its front: all of it ([`Take::Whole`])
    /// or a quarter of what is left (at least one unit).
    #[cfg(target_has_atomic = "ptr")]
    fn take(&self, i: usize) -> Option<(usize, usize)> {
        let mut cur = self.runs[i].0.load(Ordering::Relaxed);
        loop {
            let (lo, hi) = unpack(cur);
            if lo >= hi {
                return None;
            }
            let end = match self.take {
                Take::Whole => hi,
                Take::Pieces => lo + (hi - lo).div_ceil(4),
            };
            match self.runs[i].0.compare_exchange_weak(
                cur,
                pack(end, hi),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some((lo, end)),
                Err(now) => cur = now,
            }
        }
    }

    /// The back half of the largest run left but `i`'s (all of it if one
    /// unit is left), or `None` when every run is empty.
    #[cfg(target_has_atomic = "ptr")]
    fn steal(&self, i: usize) -> Option<(usize, usize)> {
        loop {
            let mut best: Option<(usize, usize)> = None;
            for j in (0..self.w).filter(|&j| j != i) {
                let cur = self.runs[j].0.load(Ordering::Relaxed);
                let (lo, hi) = unpack(cur);
                let left = hi.saturating_sub(lo);
                if left > 0 && best.is_none_or(|(_, c)| left > unpack(c).1 - unpack(c).0) {
                    best = Some((j, cur));
                }
            }
            let (j, cur) = best?;
            let (lo, hi) = unpack(cur);
            let mid = lo + (hi - lo) / 2;
            if self.runs[j]
                .0
                .compare_exchange(cur, pack(lo, mid), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return Some((mid, hi));
            }
        }
    }

    /// Calls `f(lo, hi)` for the ranges of units worker `i` of `w` gets.
    fn run(&self, i: usize, w: usize, mut f: impl FnMut(usize, usize)) {
        #[cfg(target_has_atomic = "ptr")]
        {
            let _ = w;
            if i >= self.w {
                return;
            }
            if !self.own_runs() {
                loop {
                    let u = self.runs[0].0.fetch_add(1, Ordering::Relaxed);
                    if u >= self.n {
                        return;
                    }
                    f(u, u + 1);
                }
            }
            loop {
                while let Some((lo, hi)) = self.take(i) {
                    f(lo, hi);
                }
                // Run `i` is empty, so no other worker changes it: the
                // stolen range becomes its run.
                let (lo, hi) = match self.steal(i) {
                    Some(r) => r,
                    None => return,
                };
                self.runs[i].0.store(pack(lo, hi), Ordering::Relaxed);
            }
        }
        #[cfg(not(target_has_atomic = "ptr"))]
        {
            let mut u = i;
            while u < self.n {
                f(u, u + 1);
                u += w.max(1);
            }
        }
    }
}

/// The first of `n` units in worker `i`'s run of `w` (`n` from `i == w`).
fn run_start(n: usize, w: usize, i: usize) -> usize {
    if i >= w {
        return n;
    }
    // Widened: n * i fits u128 for any n and i.
    (n as u128 * i as u128 / w as u128) as usize
}

/// The rows each of `w` workers owns when a [`for_rows_multi`] dispatch of
/// `K` outputs with this `grain` starts: `f(worker, output, first row, end
/// row)`, in worker order and then row order. A host that lays out each
/// worker's rows of consecutive steps next to each other (see
/// [`crate::kernels::Pieces`]) cuts them here, so a worker's reads stay one
/// stream from step to step. (Rows a worker takes from another's run are
/// still correct, only not in its stream.)
pub fn first_runs<const K: usize>(
    rows: [usize; K],
    grain: usize,
    w: usize,
    mut f: impl FnMut(usize, usize, usize, usize),
) {
    let w = w.max(1);
    let units = RowUnits::new(rows, grain);
    for i in 0..w {
        let (lo, hi) = (
            run_start(units.total, w, i),
            run_start(units.total, w, i + 1),
        );
        units.each(lo, hi, |j, r0, r1| f(i, j, r0, r1));
    }
}

/// The rows of `K` outputs as one line of units of `grain` rows (each
/// output's last unit may be shorter).
struct RowUnits<const K: usize> {
    rows: [usize; K],
    grain: usize,
    /// Units before each output's first.
    first: [usize; K],
    total: usize,
}

impl<const K: usize> RowUnits<K> {
    fn new(rows: [usize; K], grain: usize) -> Self {
        let grain = grain.max(1);
        let mut first = [0; K];
        let mut total = 0usize;
        for j in 0..K {
            first[j] = total;
            total = total.saturating_add(rows[j].div_ceil(grain));
        }
        RowUnits {
            rows,
            grain,
            first,
            total,
        }
    }

    /// Units `lo..hi` as `g(output, first row, end row)` for each output they
    /// cover, in order.
    fn each(&self, lo: usize, hi: usize, mut g: impl FnMut(usize, usize, usize)) {
        for j in 0..K {
            let end = self.first[j] + self.rows[j].div_ceil(self.grain);
            let (a, b) = (lo.max(self.first[j]), hi.min(end));
            if a < b {
                let r0 = (a - self.first[j]) * self.grain;
                let r1 = ((b - self.first[j]) * self.grain).min(self.rows[j]);
                g(j, r0, r1);
            }
        }
    }
}

/// Runs a task on several workers at once.
pub trait Parallel: Sync {
    /// Workers that [`Parallel::run`] uses, the caller included (at least 1).
    fn workers(&self) -> usize;
    /// Calls `task(i)` once for every `i` in `0..workers()`, concurrently,
    /// and returns when every call has returned.
    fn run(&self, task: &(dyn Fn(usize) + Sync));
}

/// One worker: the caller's thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct Serial;

impl Parallel for Serial {
    fn workers(&self) -> usize {
        1
    }
    fn run(&self, task: &(dyn Fn(usize) + Sync)) {
        task(0)
    }
}

/// The part `[lo, hi)` of `0..n` that worker `i` of `w` takes, in whole
/// `grain`s (the last part takes the remainder).
pub fn share(n: usize, w: usize, i: usize, grain: usize) -> (usize, usize) {
    let w = w.max(1);
    let grain = grain.max(1);
    let units = n.div_ceil(grain);
    let lo = (units * i / w * grain).min(n);
    let hi = (units * (i + 1) / w * grain).min(n);
    (lo, hi)
}

/// A mutable buffer shared by workers that write disjoint parts of it.
struct Shared<'a> {
    ptr: *mut f32,
    len: usize,
    _buf: PhantomData<&'a mut [f32]>,
}

// SAFETY: `Shared` is only a pointer to a buffer the creator borrowed mutably
// for 'a; every access goes through `part`, whose contract makes concurrent
// parts disjoint, so sending it or sharing it between threads is sound.
unsafe impl Send for Shared<'_> {}
// SAFETY: as above.
unsafe impl Sync for Shared<'_> {}

impl<'a> Shared<'a> {
    fn new(buf: &'a mut [f32]) -> Self {
        Shared {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _buf: PhantomData,
        }
    }

    fn raw(&self) -> *mut f32 {
        self.ptr
    }

    /// `buf[lo..hi]`.
    ///
    /// # Safety
    /// No other live slice from this `Shared` may overlap `lo..hi`.
    #[allow(clippy::mut_from_ref)]
    unsafe fn part(&self, lo: usize, hi: usize) -> &'a mut [f32] {
        assert!(
            lo <= hi && hi <= self.len,
            "part {lo}..{hi} of {}",
            self.len
        );
        // SAFETY: in bounds (checked above) of a buffer borrowed mutably for
        // 'a; the caller guarantees no overlapping slice is alive.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(lo), hi - lo) }
    }
}

/// Rows `r0..r1` of an output laid out as (tokens, rows): the part of a
/// matmul's output that one worker writes.
#[derive(Debug)]
pub struct TokenRows<'a> {
    ptr: *mut f32,
    len: usize,
    rows: usize,
    r0: usize,
    r1: usize,
    n: usize,
    _buf: PhantomData<&'a mut [f32]>,
}

impl<'a> TokenRows<'a> {
    /// Rows `r0..r1` of every token of `out`, which holds `n` tokens of
    /// `rows` values. `None` if they do not fit.
    pub fn new(
        out: &'a mut [f32],
        n: usize,
        rows: usize,
        r0: usize,
        r1: usize,
    ) -> Option<TokenRows<'a>> {
        if r0 > r1 || r1 > rows || n.checked_mul(rows)? > out.len() {
            return None;
        }
        Some(TokenRows {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            rows,
            r0,
            r1,
            n,
            _buf: PhantomData,
        })
    }

    /// The first row and the end of the range.
    pub fn range(&self) -> (usize, usize) {
        (self.r0, self.r1)
    }

    /// Tokens.
    pub fn tokens(&self) -> usize {
        self.n
    }

    /// Rows `a..b` of this view (within its range), counted from `base`:
    /// the returned view's range is `a - base..b - base` and its token `t`
    /// is this view's rows `a..b` of token `t`. `None` if `a..b` is not
    /// within the range or `base > a`.
    pub fn rebased(&mut self, a: usize, b: usize, base: usize) -> Option<TokenRows<'_>> {
        if a > b || a < self.r0 || b > self.r1 || base > a {
            return None;
        }
        Some(TokenRows {
            // SAFETY: base <= a <= r1 <= rows, and `new` checked n * rows
            // <= len (n >= 1 wherever a row is written; with n == 0 no
            // token is ever made), so `ptr + base` stays within the buffer
            // or one past it.
            ptr: unsafe { self.ptr.add(base.min(self.len)) },
            len: self.len - base.min(self.len),
            rows: self.rows,
            r0: a - base,
            r1: b - base,
            n: self.n,
            _buf: PhantomData,
        })
    }

    /// Token `t`'s rows `r0..r1`.
    pub fn token(&mut self, t: usize) -> &mut [f32] {
        assert!(t < self.n, "token {t} of {}", self.n);
        let lo = t * self.rows + self.r0;
        let hi = t * self.rows + self.r1;
        debug_assert!(hi <= self.len);
        // SAFETY: `new` checked n * rows <= len, so lo..hi is in bounds; the
        // slice is borrowed from `&mut self`, so no two from this view are
        // alive at once, and views made by `for_rows` cover disjoint rows.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(lo), hi - lo) }
    }
}

/// A task over one worker's rows: `(part, scratch)`.
pub type RowsTask<'f> = dyn Fn(&mut TokenRows<'_>, &mut [f32]) + Sync + 'f;
/// A task over one unit of work: `(task, out_part, scratch)`.
pub type UnitTask<'f> = dyn Fn(usize, &mut [f32], &mut [f32]) + Sync + 'f;

/// Runs `f(part, scratch)` on every worker: `part` is the worker's share of
/// the rows `0..rows` (in whole `grain`s) of `out` = (n, rows), and `scratch`
/// is the worker's `per_worker` floats of `scratch`.
///
/// Returns `false` (and runs nothing) if `out` or `scratch` is too short.
#[allow(clippy::too_many_arguments)]
pub fn for_rows(
    par: &dyn Parallel,
    out: &mut [f32],
    n: usize,
    rows: usize,
    grain: usize,
    scratch: &mut [f32],
    per_worker: usize,
    f: &RowsTask<'_>,
) -> bool {
    for_rows_multi(
        par,
        [out],
        [rows],
        n,
        grain,
        scratch,
        per_worker,
        &|_, part, s| f(part, s),
    )
}

/// [`for_rows`] over `K` outputs in one dispatch: `f(j, part, scratch)`
/// runs for each output `j` with the worker's share of its `rows[j]` rows
/// (several matrices that read the same input, such as Q, K and V, cost one
/// hand-off to the workers instead of `K`).
///
/// Returns `false` (and runs nothing) if an output or `scratch` is too short.
#[allow(clippy::too_many_arguments)]
pub fn for_rows_multi<const K: usize>(
    par: &dyn Parallel,
    outs: [&mut [f32]; K],
    rows: [usize; K],
    n: usize,
    grain: usize,
    scratch: &mut [f32],
    per_worker: usize,
    f: &(dyn Fn(usize, &mut TokenRows<'_>, &mut [f32]) + Sync),
) -> bool {
    let w = par.workers().max(1);
    let fits = outs
        .iter()
        .zip(rows)
        .all(|(o, r)| n.checked_mul(r).is_some_and(|need| need <= o.len()))
        && w.checked_mul(per_worker)
            .is_some_and(|need| need <= scratch.len());
    if !fits {
        return false;
    }
    if w == 1 {
        // One worker: every output whole, in order.
        let s = &mut scratch[..per_worker];
        for (j, out) in outs.into_iter().enumerate() {
            if let Some(mut part) = TokenRows::new(out, n, rows[j], 0, rows[j]) {
                f(j, &mut part, s);
            }
        }
        return true;
    }
    let lens: [usize; K] = core::array::from_fn(|j| outs[j].len());
    let outs = outs.map(Shared::new);
    let scratch = Shared::new(scratch);
    let units = RowUnits::new(rows, grain);
    // One token's rows are a stream of weights: each owner takes its run
    // whole. More tokens make a step compute-bound: pieces.
    let take = if n == 1 { Take::Whole } else { Take::Pieces };
    let runs = Dispenser::new(units.total, w, take);
    par.run(&|i: usize| {
        if i >= w {
            return;
        }
        // SAFETY: worker i's scratch is i*per_worker..(i+1)*per_worker, in
        // bounds (checked above) and disjoint from every other worker's.
        let s = unsafe { scratch.part(i * per_worker, (i + 1) * per_worker) };
        runs.run(i, w, |lo, hi| {
            units.each(lo, hi, |j, r0, r1| {
                // Rows r0..r1 of output j: units lo..hi go to this worker
                // alone, and units cover disjoint row ranges, within the
                // n x rows checked above.
                let mut part = TokenRows {
                    ptr: outs[j].raw(),
                    len: lens[j],
                    rows: rows[j],
                    r0,
                    r1,
                    n,
                    _buf: PhantomData,
                };
                f(j, &mut part, s);
            });
        });
    });
    true
}

/// Runs `f(task, out_part, scratch)` for every task in `0..tasks`, spread
/// over the workers: `out_part` is `out[task * per_task..][..per_task]` and
/// `scratch` the worker's `per_worker` floats.
///
/// Returns `false` (and runs nothing) if `out` or `scratch` is too short.
pub fn for_tasks(
    par: &dyn Parallel,
    tasks: usize,
    out: &mut [f32],
    per_task: usize,
    scratch: &mut [f32],
    per_worker: usize,
    f: &UnitTask<'_>,
) -> bool {
    for_task_grid(par, (tasks, 1), out, per_task, scratch, per_worker, f)
}

/// [`for_tasks`] over a grid of `rows × cols` tasks, task `r * cols + c`
/// for row `r` and column `c`, walked column by column: a worker's run of
/// neighbouring tasks shares a column (attention: one KV head, whose cached
/// rows then stay in the worker's caches from one token to the next).
pub fn for_task_grid(
    par: &dyn Parallel,
    (rows, cols): (usize, usize),
    out: &mut [f32],
    per_task: usize,
    scratch: &mut [f32],
    per_worker: usize,
    f: &UnitTask<'_>,
) -> bool {
    let w = par.workers().max(1);
    let cols = cols.max(1);
    let Some(tasks) = rows.checked_mul(cols) else {
        return false;
    };
    let fits = tasks
        .checked_mul(per_task)
        .is_some_and(|need| need <= out.len())
        && w.checked_mul(per_worker)
            .is_some_and(|need| need <= scratch.len());
    if !fits {
        return false;
    }
    // Unit u, in walking order, is task (u % rows, u / rows): a bijection
    // of 0..tasks.
    let task = |u: usize| (u % rows) * cols + u / rows;
    if w == 1 {
        let s = &mut scratch[..per_worker];
        for u in 0..tasks {
            let t = task(u);
            f(t, &mut out[t * per_task..(t + 1) * per_task], s);
        }
        return true;
    }
    let out = Shared::new(out);
    let scratch = Shared::new(scratch);
    let units = Dispenser::new(tasks, w, Take::Pieces);
    par.run(&|i| {
        if i >= w {
            return;
        }
        // SAFETY: worker i's scratch is disjoint from every other worker's.
        let s = unsafe { scratch.part(i * per_worker, (i + 1) * per_worker) };
        units.run(i, w, |lo, hi| {
            for u in lo..hi {
                let t = task(u);
                // SAFETY: unit u goes to this worker alone (the dispenser
                // hands out each unit once), units map one to one onto
                // tasks, and task t's part is its own.
                let o = unsafe { out.part(t * per_task, (t + 1) * per_task) };
                f(t, o, s);
            }
        });
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_once() {
        for n in [0, 1, 5, 16, 17, 100, 576, 49152] {
            for w in 1..6 {
                for g in [1, 4, 16] {
                    let mut next = 0;
                    for i in 0..w {
                        let (lo, hi) = share(n, w, i, g);
                        assert_eq!(lo, next, "n {n} w {w} g {g}");
                        assert!(hi >= lo && (hi == n || hi % g == 0));
                        next = hi;
                    }
                    assert_eq!(next, n);
                }
            }
        }
    }

    /// `first_runs` gives each worker's run as a dispatch starts: every
    /// row of every output once, whole grains, in worker then row order,
    /// and what the dispenser hands worker `i` first is the start of its
    /// run.
    #[test]
    fn first_runs_cover_each_row_once() {
        for rows in [[576, 192, 192], [1, 0, 17], [1536, 1536, 16]] {
            for w in 1..6 {
                let mut seen = [[0u8; 1536]; 3];
                let mut last = (0, 0, 0);
                first_runs(rows, 16, w, |i, j, r0, r1| {
                    assert!(r0 < r1 && r1 <= rows[j] && r0 % 16 == 0);
                    assert!((i, j, r0) >= last, "order");
                    last = (i, j, r1);
                    for c in &mut seen[j][r0..r1] {
                        *c += 1;
                    }
                });
                for j in 0..3 {
                    assert!(seen[j][..rows[j]].iter().all(|&c| c == 1), "{rows:?} w {w}");
                }
                #[cfg(target_has_atomic = "ptr")]
                {
                    let units = RowUnits::new(rows, 16);
                    let d = Dispenser::new(units.total, w, Take::Pieces);
                    for i in 0..w {
                        let mut first = None;
                        first_runs(rows, 16, w, |k, j, r0, _| {
                            if k == i && first.is_none() {
                                first = Some((j, r0));
                            }
                        });
                        if let Some((lo, _)) = d.take(i) {
                            let mut got = None;
                            units.each(lo, lo + 1, |j, r0, _| got = got.or(Some((j, r0))));
                            assert_eq!(got, first, "{rows:?} w {w} worker {i}");
                        }
                    }
                }
            }
        }
    }

    /// A rebased view writes the same memory as the rows it was made from,
    /// and refuses rows outside its range.
    #[test]
    fn rebased_views_write_the_same_rows() {
        let mut out = [0.0f32; 3 * 10];
        let mut v = TokenRows::new(&mut out, 3, 10, 2, 9).unwrap();
        assert!(v.rebased(1, 5, 0).is_none());
        assert!(v.rebased(3, 10, 0).is_none());
        assert!(v.rebased(4, 6, 5).is_none());
        assert!(v.rebased(6, 5, 0).is_none());
        let mut r = v.rebased(4, 7, 3).unwrap();
        assert_eq!(r.range(), (1, 4));
        for t in 0..3 {
            for (k, o) in r.token(t).iter_mut().enumerate() {
                *o = (t * 10 + 4 + k) as f32;
            }
        }
        for (i, &o) in out.iter().enumerate() {
            let want = if (4..7).contains(&(i % 10)) {
                i as f32
            } else {
                0.0
            };
            assert_eq!(o, want, "at {i}");
        }
    }

    /// Real threads, one per worker, started together.
    #[cfg(feature = "std")]
    struct Threads(usize);
    #[cfg(feature = "std")]
    impl Parallel for Threads {
        fn workers(&self) -> usize {
            self.0
        }
        fn run(&self, task: &(dyn Fn(usize) + Sync)) {
            std::thread::scope(|s| {
                for i in 1..self.0 {
                    s.spawn(move || task(i));
                }
                task(0);
            });
        }
    }

    /// Workers at different speeds, taking and stealing at once: every row
    /// is written exactly once, and every task run once.
    #[cfg(feature = "std")]
    #[test]
    fn concurrent_workers_take_each_unit_once() {
        let rows = [300usize, 7, 129];
        let reps = if cfg!(miri) { 2 } else { 50 };
        for w in [2usize, 3, 4] {
            for rep in 0..reps {
                // One token (runs taken whole) and two (in pieces).
                for n in [1usize, 2] {
                    let mut a = [0.0f32; 600];
                    let mut b = [0.0f32; 14];
                    let mut c = [0.0f32; 258];
                    let mut scratch = [0.0f32; 4];
                    assert!(for_rows_multi(
                        &Threads(w),
                        [&mut a, &mut b, &mut c],
                        rows,
                        n,
                        2,
                        &mut scratch,
                        1,
                        &|_, p, s| {
                            // Slower workers, a different one each repetition.
                            if (s.as_ptr() as usize / 4 + rep).is_multiple_of(3) {
                                std::thread::yield_now();
                            }
                            for t in 0..p.tokens() {
                                for v in p.token(t).iter_mut() {
                                    *v += 1.0;
                                }
                            }
                        }
                    ));
                    let all = a[..n * 300].iter().chain(&b[..n * 7]).chain(&c[..n * 129]);
                    assert!(all.clone().all(|&v| v == 1.0), "w {w} n {n}");
                    let rest = a[n * 300..].iter().chain(&b[n * 7..]).chain(&c[n * 129..]);
                    assert!(rest.clone().all(|&v| v == 0.0), "w {w} n {n}");
                }
                let mut scratch = [0.0f32; 4];
                let mut out = [0.0f32; 45];
                assert!(for_tasks(
                    &Threads(w),
                    45,
                    &mut out,
                    1,
                    &mut scratch,
                    1,
                    &|t, o, _| {
                        o[0] += t as f32 + 1.0;
                    }
                ));
                assert!(out.iter().enumerate().all(|(t, &v)| v == t as f32 + 1.0));
            }
        }
    }

    /// Pretends to be several workers, calling them one after another.
    struct Fake(usize);
    impl Parallel for Fake {
        fn workers(&self) -> usize {
            self.0
        }
        fn run(&self, task: &(dyn Fn(usize) + Sync)) {
            for i in (0..self.0).rev() {
                task(i)
            }
        }
    }

    #[test]
    fn rows_and_tasks_land_where_they_belong() {
        let (n, rows) = (3usize, 37usize);
        for w in 1..5 {
            let mut out = [0.0f32; 3 * 37];
            let mut scratch = [0.0f32; 4 * 2];
            assert!(for_rows(
                &Fake(w),
                &mut out,
                n,
                rows,
                4,
                &mut scratch,
                2,
                &|p, s| {
                    s[0] += 1.0;
                    let (r0, r1) = p.range();
                    for t in 0..p.tokens() {
                        for (k, v) in p.token(t).iter_mut().enumerate() {
                            *v += (t * rows + r0 + k) as f32;
                        }
                        assert_eq!(p.token(t).len(), r1 - r0);
                    }
                }
            ));
            for (i, v) in out.iter().enumerate() {
                assert_eq!(*v, i as f32);
            }
            let mut out = [0.0f32; 10 * 3];
            assert!(for_tasks(
                &Fake(w),
                10,
                &mut out,
                3,
                &mut scratch,
                2,
                &|t, o, _| {
                    for v in o.iter_mut() {
                        *v += t as f32;
                    }
                }
            ));
            for (i, v) in out.iter().enumerate() {
                assert_eq!(*v, (i / 3) as f32);
            }
        }
        // A grid: every task once, in its own part, for any worker count;
        // one worker walks it column by column.
        for w in 1..5 {
            let (rows, cols) = (5usize, 3usize);
            let mut out = [0.0f32; 15 * 2];
            let mut scratch = [0.0f32; 4];
            let seq = AtomicUsize::new(0);
            assert!(for_task_grid(
                &Fake(w),
                (rows, cols),
                &mut out,
                2,
                &mut scratch,
                1,
                &|t, o, _| {
                    o[0] += t as f32 + 1.0;
                    o[1] = seq.fetch_add(1, Ordering::Relaxed) as f32;
                }
            ));
            for t in 0..rows * cols {
                assert_eq!(out[2 * t], t as f32 + 1.0, "w {w} task {t}");
                if w == 1 {
                    let (r, c) = (t / cols, t % cols);
                    assert_eq!(out[2 * t + 1], (c * rows + r) as f32, "task {t}");
                }
            }
        }
        // Fake runs its workers one after another, so the first to run has
        // to take every other run too: its scratch counts every piece.
        let (n, rows) = (1usize, [37usize, 5, 64]);
        for w in 2..5 {
            let mut a = [0.0f32; 37];
            let mut b = [0.0f32; 5];
            let mut c = [0.0f32; 64];
            let mut scratch = [0.0f32; 4];
            assert!(for_rows_multi(
                &Fake(w),
                [&mut a, &mut b, &mut c],
                rows,
                n,
                4,
                &mut scratch,
                1,
                &|j, p, s| {
                    s[0] += 1.0;
                    let (r0, _) = p.range();
                    assert_eq!(r0 % 4, 0);
                    for (k, v) in p.token(0).iter_mut().enumerate() {
                        *v += (100 * j + r0 + k) as f32 + 1.0;
                    }
                }
            ));
            for (j, out) in [&a[..], &b[..], &c[..]].into_iter().enumerate() {
                for (r, v) in out.iter().enumerate() {
                    assert_eq!(*v, (100 * j + r) as f32 + 1.0, "w {w} output {j} row {r}");
                }
            }
            let first = w - 1;
            assert!(
                scratch[first] > 0.0
                    && scratch
                        .iter()
                        .enumerate()
                        .all(|(i, &v)| i == first || v == 0.0)
            );
        }
        let mut small = [0.0f32; 5];
        let mut scratch = [0.0f32; 2];
        assert!(!for_rows(
            &Fake(2),
            &mut small,
            2,
            3,
            1,
            &mut scratch,
            2,
            &|_, _| {}
        ));
        assert!(!for_tasks(
            &Fake(1),
            2,
            &mut small,
            3,
            &mut scratch,
            2,
            &|_, _, _| {}
        ));
    }
}
