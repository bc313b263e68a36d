// Shared by every shader: the dispatch's parameters, group 0 (each op
// names what its fields mean); a kernel's buffers are group 1.

struct Params {
    a: u32, b: u32, c: u32, d: u32, e: u32, f: u32, g: u32, h: u32,
    x: f32, y: f32, z: f32, q: f32,
}
@group(0) @binding(0) var<uniform> P: Params;
