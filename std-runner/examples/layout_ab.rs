//! Decode speed with the layers' matrices in the file's order against laid
//! out by worker (`pack::Packs` for one worker and for `THREADS`), on the
//! same pool, alternating bursts of 16 tokens in one process so the host's
//! changes of memory speed fall on both alike:
//!
//! ```sh
//! cargo run --release -p ember-runner --example layout_ab -- MODEL.gguf THREADS [ROUNDS]
//! ```
//!
//! Each session restarts from an empty cache every eight bursts. The
//! result is each layout's tokens per second over all its bursts but the
//! first, and their ratio.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use ember_core::gguf::Gguf;
use ember_core::kernels::Kernels;
use ember_core::model::{Llama, MemoryPlan, Session};
use ember_core::KvOptions;
use ember_runner::pack::Packs;

/// Tokens per burst.
const BURST: usize = 16;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(threads)) = (args.get(1), args.get(2)) else {
        bail!("usage: layout_ab MODEL.gguf THREADS [ROUNDS]");
    };
    let threads: usize = threads.parse().context("THREADS")?;
    let rounds: usize = match args.get(3) {
        Some(r) => r.parse().context("ROUNDS")?,
        None => 41,
    };
    let bytes = ember_runner::mmap::load(std::path::Path::new(path), false)?;
    let g = Gguf::parse(&bytes)?;
    let model = Llama::from_gguf(&g)?;
    let kern = Kernels::detect();
    let pool = ember_runner::pool::Pool::new(threads)?;
    let packs = [
        Packs::build(&model, &kern, true, 1)?,
        Packs::build(&model, &kern, true, threads)?,
    ];
    let models = [
        packs[0].apply(model.clone())?,
        packs[1].apply(model.clone())?,
    ];
    let cap = 8 * BURST + 1;
    let plan = MemoryPlan::with_threads(&model.config, KvOptions::dense(cap), 1, threads)?;
    let mut arenas = [plan.alloc(), plan.alloc()];
    let [a0, a1] = &mut arenas;
    let mut sessions = [
        Session::new(&models[0], kern, plan, a0)?,
        Session::new(&models[1], kern, plan, a1)?,
    ];
    for s in sessions.iter_mut() {
        s.set_parallel(&pool)?;
    }
    let mut secs = [0.0f64; 2];
    let mut tokens = [0usize; 2];
    for r in 0..rounds {
        // Alternate which goes first.
        for k in 0..2 {
            let v = (k + r) % 2;
            let s = &mut sessions[v];
            if r % 8 == 0 {
                s.reset();
            }
            let t = Instant::now();
            for i in 0..BURST {
                s.forward(&[(100 + 7 * i + r) as u32])?;
            }
            if r > 0 {
                secs[v] += t.elapsed().as_secs_f64();
                tokens[v] += BURST;
            }
        }
    }
    let speed = |v: usize| tokens[v] as f64 / secs[v].max(1e-9);
    println!(
        "{threads} threads: file order {:.1} tok/s, laid out by worker {:.1} tok/s, ratio {:.3}",
        speed(0),
        speed(1),
        speed(1) / speed(0)
    );
    Ok(())
}
