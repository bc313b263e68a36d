// Each logits row's greedy token: the largest logit, ties to the lowest
// id, NaN skipped, as the core's sampler picks at temperature 0; 2^32 − 1
// where no logit is above −infinity (the sampler has no candidate then).
// One workgroup per row.
//
// P.a row length (vocabulary).

@group(1) @binding(0) var<storage, read> logits: array<f32>;
@group(1) @binding(1) var<storage, read_write> ids: array<u32>;

var<workgroup> bv: array<f32, 256>;
var<workgroup> bi: array<u32, 256>;

// Whether (v, i) comes before (w, j).
fn before(v: f32, i: u32, w: f32, j: u32) -> bool {
    return v > w || (v == w && i < j);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.x;
    let base = row * P.a;
    var v = -3.4028235e38;
    var i = 0xffffffffu;
    for (var j = lid.x; j < P.a; j += 256u) {
        let x = logits[base + j];
        // NaN and −infinity are never candidates.
        if (x == x && x >= -3.4028235e38 && before(x, j, v, i)) {
            v = x;
            i = j;
        }
    }
    bv[lid.x] = v;
    bi[lid.x] = i;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid.x < s && before(bv[lid.x + s], bi[lid.x + s], bv[lid.x], bi[lid.x])) {
            bv[lid.x] = bv[lid.x + s];
            bi[lid.x] = bi[lid.x + s];
        }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        ids[row] = bi[0];
    }
}
