//! The adapter and device, buffers, and compute kernels with their bind
//! layouts: binding 0 the dispatch's parameters (a uniform at a dynamic
//! offset), then storage buffers.

use wgpu::util::DeviceExt;

use crate::{bail, Result};

/// An open GPU: the adapter chosen, its device and queue.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    pub(crate) limits: wgpu::Limits,
    /// Bind group 0 of every kernel: the dispatch's parameters, a uniform
    /// at a dynamic offset.
    params_layout: wgpu::BindGroupLayout,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.name())
            .finish()
    }
}

/// How much an adapter is preferred: GPUs over software, native APIs over GL.
fn rank(info: &wgpu::AdapterInfo) -> u32 {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 1,
        wgpu::DeviceType::Other => 0,
    };
    let api = match info.backend {
        wgpu::Backend::Gl | wgpu::Backend::BrowserWebGpu | wgpu::Backend::Noop => 0,
        _ => 1,
    };
    kind * 2 + api
}

impl Gpu {
    /// The best adapter there is (`EMBER_GPU_ADAPTER`, if set, picks the
    /// first whose name contains it), opened with its own limits. The GL
    /// backend is never used: it lacks what the kernels need.
    pub fn new() -> Result<Gpu> {
        let desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        let instance = wgpu::Instance::new(desc);
        let mut adapters: Vec<wgpu::Adapter> =
            pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
                .into_iter()
                .filter(|a| a.get_info().backend != wgpu::Backend::Gl)
                .collect();
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        if let Ok(want) = std::env::var("EMBER_GPU_ADAPTER") {
            adapters.retain(|a| a.get_info().name.contains(&want));
            if adapters.is_empty() {
                bail!(
                    "no GPU adapter's name contains EMBER_GPU_ADAPTER={want:?} (found: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                );
            }
        }
        adapters.sort_by_key(|a| std::cmp::Reverse(rank(&a.get_info())));
        let Some(adapter) = adapters.into_iter().next() else {
            bail!(
                "no GPU adapter found: install a Vulkan (or Metal, DX12) driver, \
                 for example Debian's mesa-vulkan-drivers, or use --device cpu"
            );
        };
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("ember"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            experimental_features: Default::default(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: Default::default(),
        };
        let info = adapter.get_info();
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| crate::Error(format!("cannot open the GPU {}: {e}", info.name)))?;
        let params_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("params"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: wgpu::BufferSize::new(PARAMS_BYTES),
                },
                count: None,
            }],
        });
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            params_layout,
        })
    }

    /// The adapter's name and API, for messages.
    pub fn name(&self) -> String {
        format!("{} ({:?})", self.info.name, self.info.backend)
    }

    /// The largest buffer one binding may see.
    pub fn max_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// A storage buffer holding `bytes` (padded to whole words; at least one).
    pub fn upload(&self, label: &str, bytes: &[u8]) -> Result<wgpu::Buffer> {
        if bytes.len() as u64 > self.max_binding() {
            bail!(
                "{label}: {} bytes is more than one GPU binding holds ({})",
                bytes.len(),
                self.max_binding()
            );
        }
        let padded;
        let contents = if !bytes.len().is_multiple_of(4) || bytes.is_empty() {
            let mut v = bytes.to_vec();
            v.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
            padded = v;
            &padded[..]
        } else {
            bytes
        };
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let b = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            bail!("{label}: the GPU is out of memory ({e})");
        }
        Ok(b)
    }

    /// A zeroed storage buffer of `bytes` (at least one word).
    pub fn scratch(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        if bytes > self.max_binding() {
            bail!(
                "{label}: {bytes} bytes is more than one GPU binding holds ({}); \
                 lower --ctx, --parallel or --batch",
                self.max_binding()
            );
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let b = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.div_ceil(4).max(1) * 4,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            bail!("{label}: the GPU is out of memory ({e}); lower --ctx, --parallel or --batch");
        }
        Ok(b)
    }

    /// A buffer the host reads back (`bytes` rounded up to words).
    pub fn readback(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.div_ceil(4).max(1) * 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Device memory bandwidth in bytes per second, as a buffer-to-buffer
    /// copy of up to 256 MiB moves it (each byte read once and written
    /// once; the best of three timed rounds of four copies, after one
    /// untimed). What a decode step could stream at best.
    pub fn copy_bandwidth(&self) -> Result<f64> {
        let size = (256u64 << 20).min(self.limits.max_buffer_size) / 4 * 4;
        let make = |usage| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bandwidth probe"),
                size,
                usage,
                mapped_at_creation: false,
            })
        };
        let src = make(wgpu::BufferUsages::COPY_SRC);
        let dst = make(wgpu::BufferUsages::COPY_DST);
        let mut best = 0.0f64;
        for round in 0..4 {
            let t = std::time::Instant::now();
            let mut enc = self.device.create_command_encoder(&Default::default());
            for _ in 0..4 {
                enc.copy_buffer_to_buffer(&src, 0, &dst, 0, size);
            }
            self.queue.submit([enc.finish()]);
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| crate::Error(format!("the GPU did not finish: {e}")))?;
            let secs = t.elapsed().as_secs_f64();
            if round > 0 {
                best = best.max(2.0 * 4.0 * size as f64 / secs.max(1e-9));
            }
        }
        Ok(best)
    }

    /// The stride between dispatches' parameters in the uniform buffer.
    pub fn param_stride(&self) -> u64 {
        let a = (self.limits.min_uniform_buffer_offset_alignment as u64).max(1);
        PARAMS_BYTES.div_ceil(a) * a
    }

    /// A compute kernel from WGSL `source` (entry point `main`): group 0
    /// the parameters, group 1 storage buffers, each written where `writes`
    /// says.
    pub fn kernel(&self, label: &str, source: &str, writes: &[bool]) -> Result<Kernel> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let mut entries = Vec::with_capacity(writes.len());
        for (i, &w) in writes.iter().enumerate() {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: !w },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(label),
                entries: &entries,
            });
        let pl = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(label),
                bind_group_layouts: &[Some(&self.params_layout), Some(&layout)],
                immediate_size: 0,
            });
        let pipe = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: Some(&pl),
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            bail!("the {label} kernel does not build on this GPU: {e}");
        }
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Kernel { pipe, layout, id })
    }
}

/// Bytes of one dispatch's parameters ([`Params`]).
pub const PARAMS_BYTES: u64 = 48;

/// One dispatch's parameters: eight integers and four floats, whose
/// meaning each kernel's source states.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Params {
    pub u: [u32; 8],
    pub f: [f32; 4],
}

impl Params {
    pub fn bytes(&self) -> [u8; PARAMS_BYTES as usize] {
        let mut b = [0u8; PARAMS_BYTES as usize];
        for (i, v) in self.u.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        for (i, v) in self.f.iter().enumerate() {
            b[32 + 4 * i..36 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

/// A compute pipeline and the layout of its storage bind group.
#[derive(Debug)]
pub struct Kernel {
    pub(crate) pipe: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
    /// Which kernel this is, for the bind groups a [`Pass`] keeps.
    id: usize,
}

/// A grid of `n` workgroups: `(x, y)` with `x <= 65535`, and `x` (which
/// the kernels get as `P.h` to number their workgroups).
pub fn grid(n: usize) -> ([u32; 3], u32) {
    let x = n.clamp(1, 65535);
    let y = n.div_ceil(x).max(1);
    ([x as u32, y as u32, 1], x as u32)
}

/// One dispatch of a pass.
struct Dispatch {
    pipe: wgpu::ComputePipeline,
    /// Its storage bind group (in [`Pass::groups`]).
    group: usize,
    /// Its parameters' offset in the uniform buffer.
    offset: u32,
    grid: [u32; 3],
}

/// The dispatches of one submission, kept from step to step. A step's
/// dispatches bind the same buffers in the same order every time (only
/// their parameters and grids change with the tokens), so the storage bind
/// group of the i-th dispatch is made once and kept while the i-th
/// dispatch's kernel stays the same; the parameters go into one uniform
/// buffer at one offset per dispatch, written before the work runs.
pub struct Pass {
    params: Vec<u8>,
    ops: Vec<Dispatch>,
    /// (kernel id, bind group) of each dispatch so far.
    groups: Vec<(usize, wgpu::BindGroup)>,
    buffer: wgpu::Buffer,
    bind: wgpu::BindGroup,
    stride: u64,
}

impl Pass {
    pub fn new(gpu: &Gpu) -> Pass {
        let stride = gpu.param_stride();
        let (buffer, bind) = Pass::params_buffer(gpu, stride);
        Pass {
            params: Vec::new(),
            ops: Vec::new(),
            groups: Vec::new(),
            buffer,
            bind,
            stride,
        }
    }

    fn params_buffer(gpu: &Gpu, bytes: u64) -> (wgpu::Buffer, wgpu::BindGroup) {
        let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: bytes.max(PARAMS_BYTES),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bind = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("params"),
            layout: &gpu.params_layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &buffer,
                    offset: 0,
                    size: wgpu::BufferSize::new(PARAMS_BYTES),
                }),
            }],
        });
        (buffer, bind)
    }

    /// Starts recording a new submission.
    pub fn begin(&mut self) {
        self.params.clear();
        self.ops.clear();
    }

    /// Dispatches `k` over `grid` workgroups with `p`, binding `bufs` to
    /// its storage bindings (the i-th dispatch of a pass must bind the
    /// same buffers each time its kernel is the same).
    pub fn push(
        &mut self,
        gpu: &Gpu,
        k: &Kernel,
        p: Params,
        bufs: &[&wgpu::Buffer],
        grid: [u32; 3],
    ) {
        let offset = self.params.len() as u64;
        self.params.extend_from_slice(&p.bytes());
        self.params.resize((offset + self.stride) as usize, 0);
        let i = self.ops.len();
        if self.groups.get(i).is_none_or(|g| g.0 != k.id) {
            let entries: Vec<wgpu::BindGroupEntry> = bufs
                .iter()
                .enumerate()
                .map(|(b, buf)| wgpu::BindGroupEntry {
                    binding: b as u32,
                    resource: buf.as_entire_binding(),
                })
                .collect();
            let bg = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &k.layout,
                entries: &entries,
            });
            self.groups.truncate(i);
            self.groups.push((k.id, bg));
        }
        self.ops.push(Dispatch {
            pipe: k.pipe.clone(),
            group: i,
            offset: offset as u32,
            grid,
        });
    }

    /// Writes the parameters (growing their buffer if this pass has more)
    /// and records every dispatch into one compute pass of `enc`.
    pub fn finish(&mut self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder) {
        if self.params.len() as u64 > self.buffer.size() {
            (self.buffer, self.bind) = Pass::params_buffer(gpu, self.params.len() as u64);
        }
        gpu.queue.write_buffer(&self.buffer, 0, &self.params);
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("step"),
            timestamp_writes: None,
        });
        for d in &self.ops {
            pass.set_pipeline(&d.pipe);
            pass.set_bind_group(0, &self.bind, &[d.offset]);
            pass.set_bind_group(1, &self.groups[d.group].1, &[]);
            pass.dispatch_workgroups(d.grid[0], d.grid[1], d.grid[2]);
        }
    }
}

/// Little-endian bytes of `v` (f32 or u32 words) into `out`, which is
/// cleared first.
pub fn words_into<T: Copy + Into<Word>>(v: &[T], out: &mut Vec<u8>) {
    out.clear();
    out.extend(v.iter().flat_map(|&x| x.into().0));
}

/// Little-endian bytes of `v`.
pub fn words<T: Copy + Into<Word>>(v: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * v.len());
    words_into(v, &mut out);
    out
}

/// One 32-bit word's little-endian bytes.
pub struct Word([u8; 4]);

impl From<f32> for Word {
    fn from(x: f32) -> Word {
        Word(x.to_le_bytes())
    }
}

impl From<u32> for Word {
    fn from(x: u32) -> Word {
        Word(x.to_le_bytes())
    }
}

/// Copies `bytes` of `src` back to the host into `out` (one submission).
pub fn read_into(
    gpu: &Gpu,
    src: &wgpu::Buffer,
    rb: &wgpu::Buffer,
    bytes: u64,
    out: &mut Vec<f32>,
) -> Result<()> {
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(src, 0, rb, 0, bytes.div_ceil(4) * 4);
    gpu.queue.submit([enc.finish()]);
    map_with(gpu, rb, bytes, |b| f32s_into(b, out))
}

/// `bytes` as little-endian f32s into `out` (cleared first; its memory is
/// reused).
pub fn f32s_into(bytes: &[u8], out: &mut Vec<f32>) {
    out.clear();
    out.extend(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
}

/// Waits for the GPU, then lets `read` see the first `bytes` of the mapped
/// `rb`.
pub fn map_with(gpu: &Gpu, rb: &wgpu::Buffer, bytes: u64, read: impl FnOnce(&[u8])) -> Result<()> {
    // Whole words (what a mapping's size must be), within the buffer.
    let len = (bytes.div_ceil(4).max(1) * 4).min(rb.size());
    let (tx, rx) = std::sync::mpsc::channel();
    rb.map_async(wgpu::MapMode::Read, 0..len, move |r| {
        let _ = tx.send(r);
    });
    gpu.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| crate::Error(format!("the GPU did not finish: {e}")))?;
    match rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("cannot read the GPU's results: {e}"),
        Err(_) => bail!("cannot read the GPU's results"),
    }
    {
        let view = rb
            .get_mapped_range(0..len)
            .map_err(|e| crate::Error(format!("cannot read the GPU's results: {e}")))?;
        read(&view[..bytes as usize]);
    }
    rb.unmap();
    Ok(())
}
