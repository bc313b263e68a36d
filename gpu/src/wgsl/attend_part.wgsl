// Causal grouped-query attention split over the cache: one workgroup per
// (query head, token, part of CHUNK positions) takes its part of the
// positions lo..=pos the token sees (lo = pos + 1 - window for windowed
// layers): the scaled scores, their largest m, l = Σ exp(score − m) and
// o = Σ exp(score − m) · value, written to `parts` as (m, l, o) for
// attend_merge. A part past the token's positions writes l = −1.
//
// P.a query heads, P.b head width, P.c kv_dim, P.d query heads per KV
// head, P.e positions per slot, P.f window (0: none), P.g parts per
// (head, token), P.x score scale.

@group(1) @binding(0) var<storage, read> q: array<f32>;
@group(1) @binding(1) var<storage, read> kc: array<f32>;
@group(1) @binding(2) var<storage, read> vc: array<f32>;
@group(1) @binding(3) var<storage, read_write> parts: array<f32>;
@group(1) @binding(4) var<storage, read> tok: array<u32>;

const CHUNK: u32 = 256u;
var<workgroup> sc: array<f32, 256>;
var<workgroup> red: array<f32, 64>;

fn reduce_max(x: f32, i: u32) -> f32 {
    red[i] = x;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (i < s) {
            red[i] = max(red[i], red[i + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(x: f32, i: u32) -> f32 {
    red[i] = x;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (i < s) {
            red[i] += red[i + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.x;
    let t = wid.y;
    let part = wid.z;
    let i = lid.x;
    let pos = tok[4u * t + 1u];
    let slot = tok[4u * t + 2u];
    var lo = 0u;
    if (P.f > 0u && pos + 1u > P.f) {
        lo = pos + 1u - P.f;
    }
    let n = pos + 1u - lo;
    let p0 = part * CHUNK;
    let cnt = min(CHUNK, n - min(p0, n));
    let qb = (t * P.a + h) * P.b;
    let cb = slot * P.e * P.c + (h / P.d) * P.b;
    let pb = ((t * P.a + h) * P.g + part) * (P.b + 2u);
    var mx = -3.4028235e38;
    for (var j = i; j < cnt; j += 64u) {
        let kb = cb + (lo + p0 + j) * P.c;
        var s = 0.0;
        for (var d = 0u; d < P.b; d++) {
            s += q[qb + d] * kc[kb + d];
        }
        s *= P.x;
        sc[j] = s;
        mx = max(mx, s);
    }
    mx = reduce_max(mx, i);
    var sum = 0.0;
    for (var j = i; j < cnt; j += 64u) {
        let e = exp(sc[j] - mx);
        sc[j] = e;
        sum += e;
    }
    sum = reduce_sum(sum, i);
    for (var d = i; d < P.b; d += 64u) {
        var acc = 0.0;
        for (var j = 0u; j < cnt; j++) {
            acc += sc[j] * vc[cb + (lo + p0 + j) * P.c + d];
        }
        parts[pb + 2u + d] = acc;
    }
    if (i == 0u) {
        parts[pb] = mx;
        parts[pb + 1u] = select(sum, -1.0, cnt == 0u);
    }
}
