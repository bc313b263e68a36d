//! One kernel at a time, for conformance checks against the core's scalar
//! reference: each call uploads its inputs, runs one dispatch and reads the
//! result back.

use ember_core::kernels::Matrix;

use crate::device::{grid, read_into, words, Gpu, Kernel, Params, Pass};
use crate::{bail, shaders, Result};

/// `y[t] = m · x[t]` for the `n` rows of `x` (each `m.cols` long) with the
/// matrix kernel of `m`'s format; `y` is `n × m.rows`.
pub fn matmul(gpu: &Gpu, m: &Matrix, x: &[f32], n: usize) -> Result<Vec<f32>> {
    if x.len() != n * m.cols || n == 0 {
        bail!("x holds {} floats, not {n} rows of {}", x.len(), m.cols);
    }
    let ty = m.ty();
    let k = gpu.kernel("matmul", &shaders::matmul(ty), shaders::MATMUL_BINDINGS)?;
    let w = gpu.upload("w", &m.data.bytes()[..m.rows * m.row_bytes()])?;
    let xb = gpu.upload("x", &words(x))?;
    let out = (n * m.rows * 4) as u64;
    let y = gpu.scratch("y", out)?;
    let (mut gr, width) = grid(m.rows.div_ceil(4));
    gr[2] = n.div_ceil(8) as u32;
    let p = Params {
        u: [
            m.rows as u32,
            m.cols as u32,
            m.row_bytes() as u32,
            n as u32,
            m.cols as u32,
            m.rows as u32,
            0,
            width,
        ],
        f: [0.0; 4],
    };
    run(gpu, &k, p, &[&w, &xb, &y], gr, out)
}

/// The rows `ids` of `m`, dequantized by the embedding kernel and
/// multiplied by `scale`: `ids.len() × m.cols`.
pub fn embed(gpu: &Gpu, m: &Matrix, ids: &[u32], scale: f32) -> Result<Vec<f32>> {
    if ids.is_empty() || ids.iter().any(|&i| i as usize >= m.rows) {
        bail!("the ids are empty or past the matrix's {} rows", m.rows);
    }
    let ty = m.ty();
    let k = gpu.kernel("embed", &shaders::embed(ty), shaders::MATMUL_BINDINGS)?;
    let w = gpu.upload("w", &m.data.bytes()[..m.rows * m.row_bytes()])?;
    let meta: Vec<u32> = ids.iter().flat_map(|&i| [i, 0, 0, 0]).collect();
    let mb = gpu.upload("meta", &words(&meta))?;
    let out = (ids.len() * m.cols * 4) as u64;
    let y = gpu.scratch("y", out)?;
    let p = Params {
        u: [
            m.cols as u32,
            m.rows as u32,
            m.row_bytes() as u32,
            0,
            0,
            0,
            0,
            0,
        ],
        f: [scale, 0.0, 0.0, 0.0],
    };
    let gr = [ids.len() as u32, 1, 1];
    run(gpu, &k, p, &[&w, &mb, &y], gr, out)
}

/// One dispatch of `k`, then `out` bytes of its last buffer read back.
fn run(
    gpu: &Gpu,
    k: &Kernel,
    p: Params,
    bufs: &[&wgpu::Buffer],
    grid: [u32; 3],
    out: u64,
) -> Result<Vec<f32>> {
    let mut pass = Pass::new(gpu);
    pass.begin();
    pass.push(gpu, k, p, bufs, grid);
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    pass.finish(gpu, &mut enc);
    gpu.queue.submit([enc.finish()]);
    let mut y = Vec::new();
    let rb = gpu.readback("readback", out);
    read_into(gpu, bufs[bufs.len() - 1], &rb, out, &mut y)?;
    Ok(y)
}

/// The GPU the checks run on: [`Gpu::new`], and where it finds no adapter
/// on a machine where this process may install packages (root, apt-get),
/// Mesa's software Vulkan driver lavapipe (`mesa-vulkan-drivers`) is
/// installed first, as CI does. Elsewhere the error names the package.
pub fn gpu_for_checks() -> Result<Gpu> {
    if let Ok(g) = Gpu::new() {
        return Ok(g);
    }
    let sh = |c: &str| {
        std::process::Command::new("sh")
            .args(["-c", c])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    if !(root && sh("command -v apt-get")) {
        bail!(
            "no GPU adapter: install a Vulkan driver (Debian: apt-get install mesa-vulkan-drivers)"
        );
    }
    if !sh("apt-get update -q && apt-get install -y -q mesa-vulkan-drivers") {
        bail!("no GPU adapter, and apt-get install mesa-vulkan-drivers failed");
    }
    Gpu::new()
}
