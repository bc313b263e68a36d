// The parts of attend_part merged: with M the largest part maximum and
// L = Σ l · exp(m − M), out = Σ o · exp(m − M) / L. One workgroup per
// (query head, token); parts with l < 0 hold no positions.
//
// P.a query heads, P.b head width, P.g parts per (head, token).

@group(1) @binding(0) var<storage, read> parts: array<f32>;
@group(1) @binding(1) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.x;
    let t = wid.y;
    let w = P.b + 2u;
    let pb = (t * P.a + h) * P.g * w;
    var m = -3.4028235e38;
    for (var s = 0u; s < P.g; s++) {
        if (!(parts[pb + s * w + 1u] < 0.0)) {
            m = max(m, parts[pb + s * w]);
        }
    }
    var l = 0.0;
    for (var s = 0u; s < P.g; s++) {
        let ls = parts[pb + s * w + 1u];
        if (!(ls < 0.0)) {
            l += ls * exp(parts[pb + s * w] - m);
        }
    }
    let inv = 1.0 / l;
    for (var d = lid.x; d < P.b; d += 64u) {
        var acc = 0.0;
        for (var s = 0u; s < P.g; s++) {
            if (!(parts[pb + s * w + 1u] < 0.0)) {
                acc += parts[pb + s * w + 2u + d] * exp(parts[pb + s * w] - m);
            }
        }
        out[(t * P.a + h) * P.b + d] = acc * inv;
    }
}
