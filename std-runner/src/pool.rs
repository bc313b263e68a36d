//! A persistent worker pool for the core's [`Parallel`] split.
//!
//! `threads - 1` helpers are spawned once; the calling thread is worker 0.
//! A step hands every worker the same task and waits for all of them: a
//! forward pass makes a few hundred such steps per token, so helpers spin
//! briefly between steps (a step costs about a microsecond), and sleep on a
//! condition variable once idle for longer, so an idle pool costs no CPU.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ember_core::parallel::Parallel;

/// How long an idle helper spins before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

type Task = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped once per step (and at shutdown).
    epoch: AtomicUsize,
    /// Helpers still running the current step.
    remaining: AtomicUsize,
    /// Helpers asleep or about to sleep on `wake`.
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
    panicked: AtomicBool,
    /// The current step's task; written by the owner only while no helper runs.
    task: UnsafeCell<Option<&'static Task>>,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `task` is written only by the pool's owner between steps (when
// `remaining` is 0 and no helper reads it) and read by helpers only during a
// step, after the epoch bump that publishes it (SeqCst); everything else is
// atomics and std's sync types.
unsafe impl Sync for Shared {}

/// The worker pool: `threads` workers, the caller included.
pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// Steps are not reentrant: one `run` at a time.
    busy: Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads)
            .finish()
    }
}

impl Pool {
    /// A pool of `threads` workers (1 spawns nothing).
    pub fn new(threads: usize) -> Result<Pool> {
        if threads == 0 {
            bail!("--threads must be at least 1");
        }
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            remaining: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            task: UnsafeCell::new(None),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut helpers = Vec::with_capacity(threads - 1);
        for i in 1..threads {
            let sh = Arc::clone(&shared);
            let h = std::thread::Builder::new()
                .name(format!("ember-worker-{i}"))
                .spawn(move || helper(&sh, i))?;
            helpers.push(h);
        }
        Ok(Pool {
            threads,
            shared,
            helpers,
            busy: Mutex::new(()),
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

fn helper(sh: &Shared, index: usize) {
    let mut seen = 0usize;
    loop {
        // Wait for the next step: spin, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        while sh.epoch.load(SeqCst) == seen {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) && start.elapsed() > SPIN {
                sh.sleepers.fetch_add(1, SeqCst);
                let mut g = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
                while sh.epoch.load(SeqCst) == seen {
                    g = sh.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                drop(g);
                sh.sleepers.fetch_sub(1, SeqCst);
            }
        }
        seen = sh.epoch.load(SeqCst);
        if sh.shutdown.load(SeqCst) {
            return;
        }
        // SAFETY: the epoch bump we just observed published `task` for this
        // step, and the owner does not touch it until `remaining` reaches 0.
        let task = unsafe { *sh.task.get() };
        if let Some(task) = task {
            if catch_unwind(AssertUnwindSafe(|| task(index))).is_err() {
                sh.panicked.store(true, SeqCst);
            }
        }
        sh.remaining.fetch_sub(1, SeqCst);
    }
}

impl Parallel for Pool {
    fn workers(&self) -> usize {
        self.threads
    }

    fn run(&self, task: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 {
            return task(0);
        }
        let _one = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let sh = &*self.shared;
        // SAFETY: the reference is stored only for this call: every helper
        // has finished with it (`remaining` back to 0) before we return or
        // unwind, and the slot is cleared then. The lifetime is erased only to
        // fit the slot's type.
        let erased: &'static Task =
            unsafe { std::mem::transmute::<&'_ (dyn Fn(usize) + Sync + '_), &'static Task>(task) };
        // SAFETY: no helper reads `task` between steps (remaining is 0).
        unsafe { *sh.task.get() = Some(erased) };
        sh.remaining.store(self.threads - 1, SeqCst);
        sh.epoch.fetch_add(1, SeqCst);
        if sh.sleepers.load(SeqCst) > 0 {
            let _g = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| task(0)));
        let mut spins = 0u32;
        while sh.remaining.load(SeqCst) != 0 {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(4096) {
                std::thread::yield_now();
            }
        }
        // SAFETY: every helper is done with this step.
        unsafe { *sh.task.get() = None };
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if sh.panicked.swap(false, SeqCst) {
            panic!("an ember worker thread panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let sh = &*self.shared;
        sh.shutdown.store(true, SeqCst);
        sh.epoch.fetch_add(1, SeqCst);
        {
            let _g = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.wake.notify_all();
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}

/// Physical cores this process may use: distinct (package, core) pairs among
/// the CPUs it is allowed to run on, else the logical CPU count.
pub fn physical_cores() -> usize {
    let logical = logical_cpus();
    #[cfg(target_os = "linux")]
    {
        let mut cores = std::collections::BTreeSet::new();
        let mut seen = 0usize;
        for cpu in 0..logical.max(1) * 8 {
            let base = format!("/sys/devices/system/cpu/cpu{cpu}/topology");
            let read = |f: &str| std::fs::read_to_string(format!("{base}/{f}")).ok();
            if let (Some(p), Some(c)) = (read("physical_package_id"), read("core_id")) {
                cores.insert((p.trim().to_string(), c.trim().to_string()));
                seen += 1;
            }
        }
        // Only trust the topology when it describes exactly the CPUs we have.
        if seen == logical && !cores.is_empty() {
            return cores.len().min(logical);
        }
    }
    logical
}

/// Logical CPUs this process may use.
pub fn logical_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The worker count for `--threads`: the given one after checks, else the
/// physical core count.
pub fn thread_count(arg: Option<usize>) -> Result<usize> {
    let logical = logical_cpus();
    match arg {
        None => Ok(physical_cores().max(1)),
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) if n > logical => bail!(
            "--threads {n}: this machine lets ember use {logical} CPU{}",
            if logical == 1 { "" } else { "s" }
        ),
        Some(n) => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_worker_runs_each_step_once() {
        for threads in 1..=4 {
            let pool = Pool::new(threads).unwrap();
            let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
            for step in 1..=500 {
                pool.run(&|i| {
                    hits[i].fetch_add(1, SeqCst);
                });
                assert!(hits.iter().all(|h| h.load(SeqCst) == step));
            }
            // After a sleep the helpers wake for the next step.
            std::thread::sleep(SPIN * 3);
            pool.run(&|i| {
                hits[i].fetch_add(1, SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 501));
        }
    }

    #[test]
    fn a_panicking_worker_is_reported_and_the_pool_goes_on() {
        let pool = Pool::new(3).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|i| {
                if i == 2 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, SeqCst);
        });
        assert_eq!(n.load(SeqCst), 3);
    }

    #[test]
    fn thread_counts_are_checked() {
        assert!(thread_count(Some(0)).is_err());
        assert!(thread_count(Some(logical_cpus() + 1)).is_err());
        assert_eq!(thread_count(Some(1)).unwrap(), 1);
        let d = thread_count(None).unwrap();
        assert!(d >= 1 && d <= logical_cpus());
    }
}
