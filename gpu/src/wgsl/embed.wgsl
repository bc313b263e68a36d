// ys[t] = dequant(w[token t]) · scale: the embedding rows of the step's
// tokens (tok[4t] is token t's id). One workgroup per token.
//
// P.a columns, P.b rows of this part of the table, P.c bytes per row,
// P.g its first row, P.x the scale.

@group(1) @binding(0) var<storage, read> w: array<u32>;
@group(1) @binding(1) var<storage, read> tok: array<u32>;
@group(1) @binding(2) var<storage, read_write> ys: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = wid.x;
    let id = tok[4u * t];
    if (id < P.g || id >= P.g + P.b) {
        return;
    }
    let rb = (id - P.g) * P.c;
    let units = (P.a + 31u) / 32u;
    var v: array<f32, 32>;
    for (var u = lid.x; u < units; u += 64u) {
        unit(rb, u, &v);
        let base = u * 32u;
        let lim = min(32u, P.a - base);
        for (var i = 0u; i < 32u; i++) {
            if (i < lim) {
                ys[t * P.a + base + i] = v[i] * P.x;
            }
        }
    }
}
