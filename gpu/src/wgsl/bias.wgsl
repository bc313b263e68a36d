// dst[i] += b[i mod P.a] for i < P.b.
//
// P.a the bias's length, P.b elements, P.h the grid's width.

@group(1) @binding(0) var<storage, read_write> dst: array<f32>;
@group(1) @binding(1) var<storage, read> b: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * P.h + wid.x) * 256u + lid.x;
    if (i < P.b) {
        dst[i] += b[i % P.a];
    }
}
