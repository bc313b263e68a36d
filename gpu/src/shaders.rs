//! The WGSL sources: a prelude, one `unit` function per weight format
//! (32 elements of a row dequantized as the core's reference does), the
//! matrix and embedding kernels built over each format, and the step's
//! other operations.

use ember_core::quant::GgmlType;

const PRELUDE: &str = include_str!("wgsl/prelude.wgsl");
const BYTES: &str = include_str!("wgsl/bytes.wgsl");
const MATMUL: &str = include_str!("wgsl/matmul.wgsl");
const EMBED: &str = include_str!("wgsl/embed.wgsl");

/// A format's `unit(row_byte, unit, out)` function.
pub fn format_unit(ty: GgmlType) -> &'static str {
    match ty {
        GgmlType::F32 => include_str!("wgsl/f32.wgsl"),
        GgmlType::F16 => include_str!("wgsl/f16.wgsl"),
        GgmlType::BF16 => include_str!("wgsl/bf16.wgsl"),
        GgmlType::Q8_0 => include_str!("wgsl/q8_0.wgsl"),
        GgmlType::Q4_0 => include_str!("wgsl/q4_0.wgsl"),
        GgmlType::Q4_1 => include_str!("wgsl/q4_1.wgsl"),
        GgmlType::Q5_0 => include_str!("wgsl/q5_0.wgsl"),
        GgmlType::Q5_1 => include_str!("wgsl/q5_1.wgsl"),
        GgmlType::Q2_K => include_str!("wgsl/q2_k.wgsl"),
        GgmlType::Q3_K => include_str!("wgsl/q3_k.wgsl"),
        GgmlType::Q4_K => include_str!("wgsl/q4_k.wgsl"),
        GgmlType::Q5_K => include_str!("wgsl/q5_k.wgsl"),
        GgmlType::Q6_K => include_str!("wgsl/q6_k.wgsl"),
    }
}

/// What a format's `unit` calls besides the byte readers.
fn format_helpers(ty: GgmlType) -> &'static str {
    match ty {
        GgmlType::Q4_K | GgmlType::Q5_K => include_str!("wgsl/scale_min_k4.wgsl"),
        _ => "",
    }
}

/// The matrix kernel over rows of `ty`.
pub fn matmul(ty: GgmlType) -> String {
    [PRELUDE, BYTES, format_helpers(ty), format_unit(ty), MATMUL].concat()
}

/// The embedding kernel over rows of `ty`.
pub fn embed(ty: GgmlType) -> String {
    [PRELUDE, BYTES, format_helpers(ty), format_unit(ty), EMBED].concat()
}

/// The step's other operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Norm,
    Bias,
    Add,
    Glu,
    Softcap,
    Gather,
    Rope,
    KvStore,
    AttendPart,
    AttendMerge,
    Argmax,
}

impl Op {
    pub const ALL: [Op; 11] = [
        Op::Norm,
        Op::Bias,
        Op::Add,
        Op::Glu,
        Op::Softcap,
        Op::Gather,
        Op::Rope,
        Op::KvStore,
        Op::AttendPart,
        Op::AttendMerge,
        Op::Argmax,
    ];

    /// The op's source.
    pub fn source(self) -> String {
        let body = match self {
            Op::Norm => include_str!("wgsl/norm.wgsl"),
            Op::Bias => include_str!("wgsl/bias.wgsl"),
            Op::Add => include_str!("wgsl/add.wgsl"),
            Op::Glu => include_str!("wgsl/glu.wgsl"),
            Op::Softcap => include_str!("wgsl/softcap.wgsl"),
            Op::Gather => include_str!("wgsl/gather.wgsl"),
            Op::Rope => include_str!("wgsl/rope.wgsl"),
            Op::KvStore => include_str!("wgsl/kv_store.wgsl"),
            Op::AttendPart => include_str!("wgsl/attend_part.wgsl"),
            Op::AttendMerge => include_str!("wgsl/attend_merge.wgsl"),
            Op::Argmax => include_str!("wgsl/argmax.wgsl"),
        };
        [PRELUDE, body].concat()
    }

    /// Whether each storage binding (group 1: 0, 1, ...) is written.
    pub fn bindings(self) -> &'static [bool] {
        match self {
            Op::Norm => &[true, true, false],
            Op::Bias | Op::Add | Op::Glu => &[true, false],
            Op::Softcap => &[true],
            Op::Gather => &[false, true, false],
            Op::Rope => &[true, false],
            Op::KvStore => &[false, false, true, true, false],
            Op::AttendPart => &[false, false, false, true, false],
            Op::AttendMerge => &[false, true],
            Op::Argmax => &[false, true],
        }
    }
}

/// Positions one attention part takes (`CHUNK` in attend_part.wgsl).
pub const ATTEND_CHUNK: usize = 256;

/// The matrix and embedding kernels' bindings: weights, input, output.
pub const MATMUL_BINDINGS: &[bool] = &[false, false, true];
