//! On-target kernel tests: each kernel the core's table plugs in on this
//! target is held against its scalar reference on random and edge inputs
//! (odd row counts, block counts across the stack-chunk boundary, -128
//! quants, zero blocks, extreme and special scales; f16 values of every
//! kind around the eight-lane chunk; the Q5_0, Q4_K and Q6_K int8 kernels
//! over random bytes with the same scales). They must agree bit for bit.
//! Then the instruction cost of the int8 matvecs per multiply-accumulate,
//! measured by the QEMU count plugin between marks (the file-layout
//! kernel, the two scalar paths, the packed kernel, then each other
//! format's kernel and its scalar reference); `firmware/measure.py
//! kernels` prints them. Exit 0 when every case agrees, 2 on the first
//! mismatch.

#![no_std]
#![no_main]

use ember_core::kernels::{scalar, Kernels, MatvecQ8Fn, MatvecQ8x4Fn};
use ember_core::quant::q8_0::pack_rows_x4;
use ember_core::quant::q8_0::QK;
use ember_core::quant::{self, BlockQ4K, BlockQ5_0, BlockQ6K, BlockQ8_0, BlockQ8_0x4, GgmlType};
use ember_firmware::arena::Arena;
use ember_firmware::{self as fw, OrExit};
use half::f16;

#[link_section = ".bigram"]
static RAM: Arena<{ 2 << 20 }> = Arena::new();

/// xorshift32, for test inputs.
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}

/// f16 bit patterns for scales: ordinary, extreme, zero, subnormal, special.
const SCALES: [u16; 10] = [
    0x3c00, 0x2e66, 0xb800, 0x7bff, 0xfbff, 0x0000, 0x8000, 0x0001, 0x03ff, 0x7c00,
];

fn fill(rng: &mut Rng, blocks: &mut [BlockQ8_0], case: usize) {
    for (i, b) in blocks.iter_mut().enumerate() {
        let scale = match case % 4 {
            0 => 0x2000 + (rng.next() % 0x1800) as u16, // ordinary magnitudes
            1 => SCALES[(rng.next() as usize) % SCALES.len()],
            _ => 0x3c00,
        };
        b.d = scale.to_le_bytes();
        for q in b.qs.iter_mut() {
            *q = match case % 4 {
                2 if i % 3 == 0 => 0, // zero blocks
                3 => {
                    if rng.next() & 1 == 0 {
                        -128
                    } else {
                        127
                    }
                } // extremes
                _ => rng.next() as u8 as i8,
            };
        }
    }
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// An int8 matvec under test: on the file's rows, or on rows packed in
/// fours (only whole groups of four rows are computed).
#[derive(Clone, Copy)]
enum Matvec {
    Plain(MatvecQ8Fn),
    Packed(MatvecQ8x4Fn),
}

impl Matvec {
    /// Packs `w` into `p` when this kernel reads packs (untimed).
    fn prepare(self, w: &[BlockQ8_0], nb: usize, p: &mut [BlockQ8_0x4]) -> usize {
        match self {
            Matvec::Plain(_) => 0,
            Matvec::Packed(_) => pack_rows_x4(w, nb, p),
        }
    }

    /// `out = w · x` for the rows it computes (from `p`, as [`Matvec::prepare`]
    /// left it, when packed); returns how many rows that is.
    fn run(
        self,
        w: &[BlockQ8_0],
        x: &[BlockQ8_0],
        out: &mut [f32],
        p: &[BlockQ8_0x4],
        groups: usize,
    ) -> usize {
        match self {
            Matvec::Plain(f) => {
                f(w, x, out);
                out.len()
            }
            Matvec::Packed(f) => {
                f(&p[..groups * x.len()], x, &mut out[..4 * groups]);
                4 * groups
            }
        }
    }

    fn label(self) -> &'static str {
        match self {
            Matvec::Plain(_) => "kernel",
            Matvec::Packed(_) => "packed kernel",
        }
    }
}

fn check(name: &str, fast: Matvec, mem: &mut fw::arena::Carver<'static>) -> u32 {
    let max_rows = 67;
    let max_nb = 70;
    let w = take_blocks(mem, max_rows * max_nb);
    let x = take_blocks(mem, max_nb);
    let p = mem
        .take::<BlockQ8_0x4>(max_rows / 4 * max_nb)
        .or_exit("buffers");
    let want = mem.take::<f32>(max_rows).or_exit("buffers");
    let got = mem.take::<f32>(max_rows).or_exit("buffers");
    let mut rng = Rng(0x2545_f491);
    let mut cases = 0u32;
    let rows_list: &[usize] = match fast {
        Matvec::Plain(_) => &[1, 3, 4, 5, 8, 13, 64, 67],
        Matvec::Packed(_) => &[4, 5, 8, 13, 64, 67],
    };
    for &rows in rows_list {
        for &nb in &[1usize, 2, 7, 31, 32, 33, 65, 70] {
            for case in 0..4 {
                let w = &mut w[..rows * nb];
                let x = &mut x[..nb];
                fill(&mut rng, w, case);
                fill(&mut rng, x, case + 1);
                scalar::matvec_q8_0_q8_0(w, x, &mut want[..rows]);
                let groups = fast.prepare(w, nb, p);
                let done = fast.run(w, x, &mut got[..rows], p, groups);
                for r in 0..done {
                    if !same(got[r], want[r]) {
                        defmt::error!(
                            "{=str} {=str}: rows {=usize} blocks {=usize} case {=usize}: row {=usize} got {=f32} want {=f32}",
                            fast.label(), name, rows, nb, case, r, got[r], want[r]
                        );
                        fw::exit(fw::code::CHECK_FAILED);
                    }
                }
                cases += 1;
            }
        }
    }
    defmt::println!(
        "{=str} {=str}: {=u32} cases equal to the scalar reference bit for bit",
        fast.label(),
        name,
        cases
    );
    cases
}

/// A random half: mostly ordinary magnitudes, sometimes any bit pattern
/// (subnormals, infinities, NaNs).
fn half(rng: &mut Rng) -> f16 {
    let r = rng.next();
    if r.is_multiple_of(8) {
        f16::from_bits((r >> 16) as u16)
    } else {
        f16::from_bits((0x2000 + ((r >> 16) as u16 % 0x2800)) | (r as u16 & 0x8000))
    }
}

/// The table's f16 attention kernels (`dot_f16`, `axpy_f16`) against the
/// scalar reference, bit for bit, over lengths around the eight-lane chunk.
fn check_f16(k: &Kernels, mem: &mut fw::arena::Carver<'static>) -> u32 {
    const MAX: usize = 100;
    let h = mem.take::<f16>(MAX).or_exit("buffers");
    let x = mem.take::<f32>(MAX).or_exit("buffers");
    let want = mem.take::<f32>(MAX).or_exit("buffers");
    let got = mem.take::<f32>(MAX).or_exit("buffers");
    let mut rng = Rng(0x1234_5678);
    let mut cases = 0u32;
    for &n in &[0usize, 1, 7, 8, 9, 15, 16, 17, 64, 100] {
        for case in 0..8 {
            for (a, b) in h[..n].iter_mut().zip(x[..n].iter_mut()) {
                *a = half(&mut rng);
                *b = (rng.next() as i32 >> 8) as f32 * if case == 0 { 1e-30 } else { 1e-6 };
            }
            let (d0, d1) = (
                scalar::dot_f16(&h[..n], &x[..n]),
                (k.dot_f16)(&h[..n], &x[..n]),
            );
            let a = (rng.next() as i32 >> 8) as f32 * 1e-5;
            want[..n].copy_from_slice(&x[..n]);
            got[..n].copy_from_slice(&x[..n]);
            scalar::axpy_f16(&mut want[..n], a, &h[..n]);
            (k.axpy_f16)(&mut got[..n], a, &h[..n]);
            let bad = (0..n).find(|&i| !same(got[i], want[i]));
            if !same(d0, d1) || bad.is_some() {
                defmt::error!(
                    "{=str} f16 kernels: length {=usize} case {=usize}: dot got {=f32} want {=f32}, axpy differs at {=?}",
                    k.name, n, case, d1, d0, bad
                );
                fw::exit(fw::code::CHECK_FAILED);
            }
            cases += 1;
        }
    }
    defmt::println!(
        "f16 kernels {=str}: {=u32} cases equal to the scalar reference bit for bit",
        k.name,
        cases
    );
    cases
}

fn take_blocks(mem: &mut fw::arena::Carver<'static>, n: usize) -> &'static mut [BlockQ8_0] {
    mem.take::<BlockQ8_0>(n).or_exit("buffers")
}

/// Marks around `reps` matvecs of a `rows` x `cols` matrix, for the plugin:
/// (count after - count before) / (reps * rows * cols) = instructions per
/// multiply-accumulate.
fn cost(name: &str, f: Matvec, mem: &mut fw::arena::Carver<'static>) {
    const ROWS: usize = 64;
    const NB: usize = 18; // 576 columns, SmolLM2's width
    const REPS: usize = 4;
    let w = take_blocks(mem, ROWS * NB);
    let x = take_blocks(mem, NB);
    let p = mem.take::<BlockQ8_0x4>(ROWS / 4 * NB).or_exit("buffers");
    let out = mem.take::<f32>(ROWS).or_exit("buffers");
    let mut rng = Rng(7);
    fill(&mut rng, w, 0);
    fill(&mut rng, x, 0);
    let groups = f.prepare(w, NB, p);
    fw::mark();
    for _ in 0..REPS {
        f.run(w, x, out, p, groups);
    }
    fw::mark();
    defmt::println!(
        "cost {=str} {=str}: marks around {=usize} multiply-accumulates (rows {=usize}, cols {=usize}, reps {=usize}) checksum {=f32}",
        f.label(),
        name,
        REPS * ROWS * NB * QK,
        ROWS,
        NB * QK,
        REPS,
        out.iter().sum::<f32>()
    );
}

ember_firmware::entry!(main);

fn main() -> ! {
    let mut mem = RAM.take().expect("taken once");
    let k = Kernels::detect();
    defmt::println!("kernel table: {=str}", k.name);
    let Some(int8) = k.int8 else {
        defmt::error!("this target's table has no int8 matvec to test");
        fw::exit(fw::code::CHECK_FAILED)
    };
    let Some(packed) = int8.q8_0x4 else {
        defmt::error!("this target's table has no packed int8 matvec to test");
        fw::exit(fw::code::CHECK_FAILED)
    };
    let (Some(q5_0), Some(q4_k), Some(q6_k)) = (int8.q5_0, int8.q4_k, int8.q6_k) else {
        defmt::error!("this target's table lacks a Q5_0, Q4_K or Q6_K int8 matvec");
        fw::exit(fw::code::CHECK_FAILED)
    };
    let formats = [
        Format::Q5_0(q5_0, scalar::matvec_q5_0_q8_0),
        Format::Q4K(q4_k, scalar::matvec_q4_k_q8_0),
        Format::Q6K(q6_k, scalar::matvec_q6_k_q8_0),
    ];
    let (fast, packed) = (Matvec::Plain(int8.q8_0), Matvec::Packed(packed));
    check(k.name, fast, &mut mem);
    check(k.name, packed, &mut mem);
    check_f16(&k, &mut mem);
    // One buffer set for every format's check and cost (the largest rows).
    let mut fb = FormatBuffers::new(&mut mem);
    for f in formats {
        check_format(k.name, f, &mut fb);
    }
    cost(k.name, fast, &mut mem);
    cost(
        "scalar-q8",
        Matvec::Plain(scalar::matvec_q8_0_q8_0),
        &mut mem,
    );
    cost(
        "scalar-f32-activations",
        Matvec::Plain(f32_activations),
        &mut mem,
    );
    cost(k.name, packed, &mut mem);
    for f in formats {
        cost_format(k.name, f, false, &mut fb);
        cost_format("scalar-q8", f, true, &mut fb);
    }
    fw::exit(fw::code::OK)
}

/// A format's int8 kernel and its scalar reference.
#[derive(Clone, Copy)]
enum Format {
    Q5_0(MatvecQ8Fn<BlockQ5_0>, MatvecQ8Fn<BlockQ5_0>),
    Q4K(MatvecQ8Fn<BlockQ4K>, MatvecQ8Fn<BlockQ4K>),
    Q6K(MatvecQ8Fn<BlockQ6K>, MatvecQ8Fn<BlockQ6K>),
}

impl Format {
    fn ty(self) -> GgmlType {
        match self {
            Format::Q5_0(..) => GgmlType::Q5_0,
            Format::Q4K(..) => GgmlType::Q4_K,
            Format::Q6K(..) => GgmlType::Q6_K,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Format::Q5_0(..) => "q5_0",
            Format::Q4K(..) => "q4_k",
            Format::Q6K(..) => "q6_k",
        }
    }

    /// Byte offsets of the f16 scales in one block.
    fn scales(self) -> &'static [usize] {
        match self {
            Format::Q5_0(..) => &[0],
            Format::Q4K(..) => &[0, 2],
            Format::Q6K(..) => &[208],
        }
    }

    /// `out = w · x` through the kernel, or the reference with `reference`.
    fn run(self, reference: bool, w: &[u8], x: &[BlockQ8_0], out: &mut [f32]) {
        match self {
            Format::Q5_0(k, r) => (if reference { r } else { k })(quant::blocks(w), x, out),
            Format::Q4K(k, r) => (if reference { r } else { k })(quant::blocks(w), x, out),
            Format::Q6K(k, r) => (if reference { r } else { k })(quant::blocks(w), x, out),
        }
    }
}

/// Rows of any format (as bytes), activations and results.
struct FormatBuffers {
    w: &'static mut [u8],
    x: &'static mut [BlockQ8_0],
    want: &'static mut [f32],
    got: &'static mut [f32],
}

/// The checks' largest shape: 67 rows of 72 activation blocks (nine
/// super-blocks, across the kernels' 32-block chunk).
const F_ROWS: usize = 67;
const F_NB: usize = 72;

impl FormatBuffers {
    fn new(mem: &mut fw::arena::Carver<'static>) -> FormatBuffers {
        FormatBuffers {
            w: mem.take::<u8>(F_ROWS * F_NB / 8 * 210).or_exit("buffers"),
            x: take_blocks(mem, F_NB),
            want: mem.take::<f32>(F_ROWS).or_exit("buffers"),
            got: mem.take::<f32>(F_ROWS).or_exit("buffers"),
        }
    }
}

/// Random bytes for `rows` rows of `nb` activation blocks of format `f`,
/// with scales as [`fill`] chooses them (ordinary, extreme, zero,
/// subnormal, special) and, in case 3, every quant and packed scale at its
/// largest.
fn fill_format(rng: &mut Rng, f: Format, w: &mut [u8], case: usize) {
    let bb = f.ty().block_bytes();
    for (i, blk) in w.chunks_exact_mut(bb).enumerate() {
        for v in blk.iter_mut() {
            *v = match case % 4 {
                2 if i % 3 == 0 => 0,
                3 => 0xff,
                _ => rng.next() as u8,
            };
        }
        for &at in f.scales() {
            let scale = match case % 4 {
                0 => 0x2000 + (rng.next() % 0x1800) as u16,
                1 => SCALES[(rng.next() as usize) % SCALES.len()],
                _ => 0x3c00,
            };
            blk[at..at + 2].copy_from_slice(&scale.to_le_bytes());
        }
    }
}

/// Format `f`'s int8 kernel against its scalar reference, bit for bit.
fn check_format(name: &str, f: Format, b: &mut FormatBuffers) -> u32 {
    let mut rng = Rng(0x0bad_5eed);
    let per = f.ty().block_len() / QK;
    let mut cases = 0u32;
    let nbs: &[usize] = match f {
        Format::Q5_0(..) => &[1, 2, 7, 31, 32, 33, 65, 70],
        _ => &[8, 16, 32, 40, 72],
    };
    for &rows in &[1usize, 3, 4, 5, 13, 67] {
        for &nb in nbs {
            for case in 0..4 {
                let w = &mut b.w[..rows * nb / per * f.ty().block_bytes()];
                let x = &mut b.x[..nb];
                fill_format(&mut rng, f, w, case);
                fill(&mut rng, x, case + 1);
                f.run(true, w, x, &mut b.want[..rows]);
                f.run(false, w, x, &mut b.got[..rows]);
                for r in 0..rows {
                    if !same(b.got[r], b.want[r]) {
                        defmt::error!(
                            "{=str} {=str}: rows {=usize} blocks {=usize} case {=usize}: row {=usize} got {=f32} want {=f32}",
                            f.label(), name, rows, nb, case, r, b.got[r], b.want[r]
                        );
                        fw::exit(fw::code::CHECK_FAILED);
                    }
                }
                cases += 1;
            }
        }
    }
    defmt::println!(
        "{=str} kernel {=str}: {=u32} cases equal to the scalar reference bit for bit",
        f.label(),
        name,
        cases
    );
    cases
}

/// Marks around `reps` matvecs of a 64 x 512 matrix of format `f` (through
/// its kernel, or its reference with `reference`), as [`cost`] does.
fn cost_format(name: &str, f: Format, reference: bool, b: &mut FormatBuffers) {
    const ROWS: usize = 64;
    const NB: usize = 16; // 512 columns: whole super-blocks
    const REPS: usize = 4;
    let per = f.ty().block_len() / QK;
    let w = &mut b.w[..ROWS * NB / per * f.ty().block_bytes()];
    let x = &mut b.x[..NB];
    let out = &mut b.got[..ROWS];
    let mut rng = Rng(7);
    fill_format(&mut rng, f, w, 0);
    fill(&mut rng, x, 0);
    fw::mark();
    for _ in 0..REPS {
        f.run(reference, w, x, out);
    }
    fw::mark();
    defmt::println!(
        "cost {=str} {=str}: marks around {=usize} multiply-accumulates (rows {=usize}, cols {=usize}, reps {=usize}) checksum {=f32}",
        f.label(),
        name,
        REPS * ROWS * NB * QK,
        ROWS,
        NB * QK,
        REPS,
        out.iter().sum::<f32>()
    );
}

/// The f32-activation path for the same product (what `Kernels::scalar`
/// does with Q8_0 rows), for its cost.
fn f32_activations(w: &[BlockQ8_0], x: &[BlockQ8_0], out: &mut [f32]) {
    let mut xf = [0.0f32; 18 * QK];
    let xf = &mut xf[..x.len() * QK];
    ember_core::quant::q8_0::dequantize_row(x, xf);
    for (r, o) in out.iter_mut().enumerate() {
        *o = scalar::dot_q8_0(&w[r * x.len()..(r + 1) * x.len()], xf);
    }
}
