// Causal grouped-query attention of one query head of one token over its
// slot's cache: positions lo..=pos (lo = pos + 1 - window for windowed
// layers), scores scaled, softmax, the weighted sum of the values. One
// workgroup per (head, token); the scores go through `scores`.
//
// P.a query heads, P.b head width, P.c kv_dim, P.d query heads per KV
// head, P.e positions per slot, P.f window (0: none), P.x score scale.

@group(1) @binding(0) var<storage, read> q: array<f32>;
@group(1) @binding(1) var<storage, read> kc: array<f32>;
@group(1) @binding(2) var<storage, read> vc: array<f32>;
@group(1) @binding(3) var<storage, read_write> out: array<f32>;
@group(1) @binding(4) var<storage, read_write> scores: array<f32>;
@group(1) @binding(5) var<storage, read> tok: array<u32>;

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
    let i = lid.x;
    let pos = tok[4u * t + 1u];
    let slot = tok[4u * t + 2u];
    var lo = 0u;
    if (P.f > 0u && pos + 1u > P.f) {
        lo = pos + 1u - P.f;
    }
    let n = pos + 1u - lo;
    let qb = (t * P.a + h) * P.b;
    let sb = (t * P.a + h) * P.e;
    let cb = slot * P.e * P.c + (h / P.d) * P.b;
    var mx = -3.4028235e38;
    for (var j = i; j < n; j += 64u) {
        let kb = cb + (lo + j) * P.c;
        var s = 0.0;
        for (var d = 0u; d < P.b; d++) {
            s += q[qb + d] * kc[kb + d];
        }
        s *= P.x;
        scores[sb + j] = s;
        mx = max(mx, s);
    }
    mx = reduce_max(mx, i);
    var sum = 0.0;
    for (var j = i; j < n; j += 64u) {
        let e = exp(scores[sb + j] - mx);
        scores[sb + j] = e;
        sum += e;
    }
    sum = reduce_sum(sum, i);
    storageBarrier();
    let inv = 1.0 / sum;
    for (var d = i; d < P.b; d += 64u) {
        var acc = 0.0;
        for (var j = 0u; j < n; j++) {
            acc += scores[sb + j] * inv * vc[cb + (lo + j) * P.c + d];
        }
        out[qb + d] = acc;
    }
}
