//! How fast the F16 row kernel streams weights when a token's reads are cut
//! into steps, as decode cuts them (one hand-off to the workers per matrix
//! group, each worker taking its share of the rows through
//! `parallel::for_rows`), against one long step:
//!
//! ```sh
//! cargo run --release -p ember-runner --example step_stream -- MODEL.gguf THREADS
//! ```
//!
//! The model's bytes serve as F16 rows of 576 columns (SmolLM2-135M's width;
//! the sums are discarded). SmolLM2-135M's steps are 1.1 MiB (Q, K, V),
//! 648 KiB (the output projection), 3.4 MiB (gate and up) and 1.7 MiB (down).
//!
//! Then the same steps over a layout where each worker's shares of
//! consecutive steps follow each other in memory (the rows cut into one
//! region per worker, worker `i` reading step `k`'s share of region `i`), so
//! each worker's reads stay one stream from step to step.

use std::time::Instant;

use anyhow::{Context, Result};
use ember_core::kernels::Kernels;
use ember_core::parallel::{self, Parallel};
use ember_core::quant::{as_bytes, GgmlType};
use half::f16;

const COLS: usize = 576;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(threads)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: step_stream MODEL.gguf THREADS");
    };
    let threads: usize = threads.parse().context("THREADS")?;
    let bytes = ember_runner::mmap::load(std::path::Path::new(path), false)?;
    let body = &bytes[..bytes.len() / (2 * COLS) * (2 * COLS)];
    let w: &[f16] = ember_core::quant::cast_slice(body).context("model bytes as f16")?;
    let rows = w.len() / COLS;
    let kern = Kernels::detect();
    let mv_f16 = kern
        .format(GgmlType::F16)
        .mv
        .context("the table has an f16 matvec")?;
    let pool = ember_runner::pool::Pool::new(threads)?;
    let x = vec![1.0f32; COLS];
    let mut out = vec![0.0f32; rows];
    let mut scratch = vec![0.0f32; threads];
    println!(
        "{} MiB of rows, {threads} thread(s), kernels {}",
        (rows * COLS * 2) >> 20,
        kern.name
    );
    for kib in [usize::MAX, 4096, 1728, 648, 216] {
        let step = (kib.saturating_mul(1024) / (2 * COLS)).clamp(16, rows);
        let best = best_gb_s(rows * COLS * 2, || {
            let mut r = 0;
            while r < rows {
                let n = step.min(rows - r);
                let ws = &w[r * COLS..(r + n) * COLS];
                parallel::for_rows(
                    &pool,
                    &mut out[..n],
                    1,
                    n,
                    16,
                    &mut scratch,
                    1,
                    &|part, _| {
                        let (r0, r1) = part.range();
                        mv_f16(as_bytes(&ws[r0 * COLS..r1 * COLS]), &x, part.token(0));
                    },
                );
                r += n;
            }
        });
        let label = if kib == usize::MAX {
            "one step".to_string()
        } else {
            format!("{kib} KiB steps")
        };
        println!("{label}: {best:.1} GB/s");
    }
    // One region of `per` rows for each worker.
    let per = rows / threads;
    let outs: Vec<std::sync::Mutex<Vec<f32>>> = (0..threads)
        .map(|_| std::sync::Mutex::new(vec![0.0f32; per]))
        .collect();
    for kib in [1728, 648, 216] {
        // Each worker's share of a step.
        let share = (kib * 1024 / (2 * COLS) / threads).max(1);
        let best = best_gb_s(per * threads * COLS * 2, || {
            let mut r = 0;
            while r < per {
                let n = share.min(per - r);
                pool.run(&|i| {
                    let at = i * per + r;
                    let mut o = outs[i].lock().unwrap_or_else(|e| e.into_inner());
                    mv_f16(as_bytes(&w[at * COLS..(at + n) * COLS]), &x, &mut o[..n]);
                });
                r += n;
            }
        });
        println!("{kib} KiB steps, each worker's shares contiguous: {best:.1} GB/s");
    }
    Ok(())
}

/// The best of three timed passes of `pass`, each reading `bytes`, in GB/s.
fn best_gb_s(bytes: usize, mut pass: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            pass();
            bytes as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}
