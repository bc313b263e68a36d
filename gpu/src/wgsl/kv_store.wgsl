// Appends each token's key and value rows to its slot's cache at its
// position (tok[4t + 1] position, tok[4t + 2] slot). One workgroup per
// token.
//
// P.a row width (kv_dim), P.b positions per slot.

@group(1) @binding(0) var<storage, read> k: array<f32>;
@group(1) @binding(1) var<storage, read> v: array<f32>;
@group(1) @binding(2) var<storage, read_write> kc: array<f32>;
@group(1) @binding(3) var<storage, read_write> vc: array<f32>;
@group(1) @binding(4) var<storage, read> tok: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = wid.x;
    let at = (tok[4u * t + 2u] * P.b + tok[4u * t + 1u]) * P.a;
    for (var i = lid.x; i < P.a; i += 64u) {
        kc[at + i] = k[t * P.a + i];
        vc[at + i] = v[t * P.a + i];
    }
}
