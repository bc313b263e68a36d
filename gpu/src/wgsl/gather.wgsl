// dst[i] = src[rows[i]]: the rows of the tokens whose logits are wanted.
// One workgroup per row.
//
// P.a row length.

@group(1) @binding(0) var<storage, read> src: array<f32>;
@group(1) @binding(1) var<storage, read_write> dst: array<f32>;
@group(1) @binding(2) var<storage, read> rows: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = wid.x;
    let at = rows[i] * P.a;
    for (var j = lid.x; j < P.a; j += 64u) {
        dst[i * P.a + j] = src[at + j];
    }
}
