// Rotates each head of each token by the token's table (cos, sin per pair,
// computed by the host in f64 as the CPU's are): adjacent pairs (P.f 0) or
// halves of the rotated dimensions (P.f 1). One workgroup per (head, token).
//
// P.a heads, P.b head width, P.c rotated dimensions, P.d which table,
// P.e tables per token.

@group(1) @binding(0) var<storage, read_write> xs: array<f32>;
@group(1) @binding(1) var<storage, read> table: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.x;
    let t = wid.y;
    let tb = (t * P.e + P.d) * P.c;
    let base = (t * P.a + h) * P.b;
    let half = P.c / 2u;
    for (var i = lid.x; i < half; i += 64u) {
        let c = table[tb + 2u * i];
        let s = table[tb + 2u * i + 1u];
        var a = base + 2u * i;
        var b = a + 1u;
        if (P.f == 1u) {
            a = base + i;
            b = base + i + half;
        }
        let x0 = xs[a];
        let x1 = xs[b];
        xs[a] = x0 * c - x1 * s;
        xs[b] = x0 * s + x1 * c;
    }
}
