//! Splitting one forward step across workers that the caller supplies.
//!
//! The core has no threads. A host runner implements [`Parallel`] over its
//! own pool; firmware and tests use [`Serial`]. The model hands whole
//! operations to [`for_rows`] (matmul rows) and [`for_tasks`] or
//! [`for_task_grid`] (attention heads), which cut the output into chunks that workers take as they free
//! up, each chunk to one worker, with the worker's own scratch. A chunk's
//! results are the same whichever worker computes it: results do not depend
//! on the number of workers or on who took what.
//!
//! This module holds the only `unsafe` of the split: a worker's part of an
//! output buffer is a `&mut` view made from a shared raw pointer. Each
//! chunk is handed out once, chunks never overlap, and the functions here
//! check every bound.

#![allow(unsafe_code)]

use core::marker::PhantomData;
#[cfg(target_has_atomic = "ptr")]
use core::sync::atomic::{AtomicUsize, Ordering};

/// Most workers that get a run of units of their own; more share one
/// counter.
#[cfg(target_has_atomic = "ptr")]
const OWN_RUNS: usize = 16;

/// Hands out units `0..n` of work. Where the target has atomics, worker `i`
/// of `w` first takes its own run of neighbouring units, `i * n / w` up to
/// `(i + 1) * n / w`, in order, then helps the others with what they have
/// not started: a worker reads its rows of a matrix as one stream (its
/// prefetches run on into its next unit, not into another worker's), and a
/// slower core or a busy one still takes fewer. Without atomics worker `i`
/// takes units `i, i + w, ...`. Each unit goes to exactly one worker either
/// way.
struct Dispenser {
    n: usize,
    #[cfg(target_has_atomic = "ptr")]
    w: usize,
    /// The next unit of each worker's run (only the first counter when
    /// there are more than `OWN_RUNS` workers).
    #[cfg(target_has_atomic = "ptr")]
    next: [AtomicUsize; OWN_RUNS],
}

impl Dispenser {
    fn new(n: usize, w: usize) -> Self {
        #[cfg(target_has_atomic = "ptr")]
        {
            let w = w.max(1);
            let d = Dispenser {
                n,
                w,
                next: [const { AtomicUsize::new(0) }; OWN_RUNS],
            };
            if w <= OWN_RUNS {
                for (i, c) in d.next.iter().enumerate().take(w) {
                    c.store(d.start(i), Ordering::Relaxed);
                }
            }
            d
        }
        #[cfg(not(target_has_atomic = "ptr"))]
        {
            let _ = w;
            Dispenser { n }
        }
    }

    /// The first unit of worker `i`'s run (`n` for `i == w`).
    #[cfg(target_has_atomic = "ptr")]
    fn start(&self, i: usize) -> usize {
        if i >= self.w {
            return self.n;
        }
        // Widened: n * i fits u128 for any n and i.
        (self.n as u128 * i as u128 / self.w as u128) as usize
    }

    /// Calls `f(unit)` for the units worker `i` of `w` gets.
    fn run(&self, i: usize, w: usize, mut f: impl FnMut(usize)) {
        #[cfg(target_has_atomic = "ptr")]
        {
            let _ = w;
            if self.w > OWN_RUNS {
                loop {
                    let u = self.next[0].fetch_add(1, Ordering::Relaxed);
                    if u >= self.n {
                        return;
                    }
                    f(u);
                }
            }
            // Own run first, then the others' in turn.
            for k in 0..self.w {
                let j = (i + k) % self.w;
                let end = self.start(j + 1);
                loop {
                    let u = self.next[j].fetch_add(1, Ordering::Relaxed);
                    if u >= end {
                        break;
                    }
                    f(u);
                }
            }
        }
        #[cfg(not(target_has_atomic = "ptr"))]
        {
            let mut u = i;
            while u < self.n {
                f(u);
                u += w.max(1);
            }
        }
    }
}

/// Row chunks of `rows` outputs for `w` workers: about four per worker and
/// output (whole `grain`s), so a worker that finishes early takes more.
struct RowChunks<const K: usize> {
    rows: [usize; K],
    chunk: [usize; K],
    count: [usize; K],
}

impl<const K: usize> RowChunks<K> {
    fn new(rows: [usize; K], w: usize, grain: usize) -> Self {
        let grain = grain.max(1);
        let chunk: [usize; K] = core::array::from_fn(|j| {
            let c = rows[j].div_ceil(4 * w.max(1));
            c.div_ceil(grain).max(1) * grain
        });
        let count = core::array::from_fn(|j| rows[j].div_ceil(chunk[j]));
        RowChunks { rows, chunk, count }
    }

    fn total(&self) -> usize {
        self.count.iter().sum()
    }

    /// Unit `u` as (output, first row, end row).
    fn get(&self, mut u: usize) -> Option<(usize, usize, usize)> {
        for j in 0..K {
            if u < self.count[j] {
                let r0 = u * self.chunk[j];
                return Some((j, r0, (r0 + self.chunk[j]).min(self.rows[j])));
            }
            u -= self.count[j];
        }
        None
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
    let chunks = RowChunks::new(rows, w, grain);
    let units = Dispenser::new(chunks.total(), w);
    par.run(&|i: usize| {
        if i >= w {
            return;
        }
        // SAFETY: worker i's scratch is i*per_worker..(i+1)*per_worker, in
        // bounds (checked above) and disjoint from every other worker's.
        let s = unsafe { scratch.part(i * per_worker, (i + 1) * per_worker) };
        units.run(i, w, |u| {
            let Some((j, r0, r1)) = chunks.get(u) else {
                return;
            };
            // Rows r0..r1 of output j: unit u goes to this worker alone, and
            // units cover disjoint row ranges, within the n x rows checked
            // above.
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
    let units = Dispenser::new(tasks, w);
    par.run(&|i| {
        if i >= w {
            return;
        }
        // SAFETY: worker i's scratch is disjoint from every other worker's.
        let s = unsafe { scratch.part(i * per_worker, (i + 1) * per_worker) };
        units.run(i, w, |u| {
            let t = task(u);
            // SAFETY: unit u goes to this worker alone (the dispenser hands
            // out each unit once), units map one to one onto tasks, and
            // task t's part is its own.
            let o = unsafe { out.part(t * per_task, (t + 1) * per_task) };
            f(t, o, s);
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
