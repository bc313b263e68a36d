// RMSNorm of P.b segments of P.a floats: dst = src / rms(src) · g (g of
// P.a floats; none when P.c is 0). One workgroup per segment; src and dst
// may be the same buffer.
//
// P.a segment length, P.b segments, P.c has weight, P.x epsilon.

@group(1) @binding(0) var<storage, read_write> src: array<f32>;
@group(1) @binding(1) var<storage, read_write> dst: array<f32>;
@group(1) @binding(2) var<storage, read> g: array<f32>;

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let base = (wid.y * P.h + wid.x) * P.a;
    var acc = 0.0;
    for (var i = lid.x; i < P.a; i += 64u) {
        let v = src[base + i];
        acc += v * v;
    }
    red[lid.x] = acc;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid.x < s) {
            red[lid.x] += red[lid.x + s];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(red[0] / f32(P.a) + P.x);
    for (var i = lid.x; i < P.a; i += 64u) {
        var gi = 1.0;
        if (P.c != 0u) {
            gi = g[i];
        }
        dst[base + i] = src[base + i] * scale * gi;
    }
}
