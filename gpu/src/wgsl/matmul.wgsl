// y[t][row0 + r] = Σ dequant(w[r]) · x[t] for rows r of this part of a
// matrix, tokens t in tiles of TT. A workgroup takes RPW rows, LANES
// threads per row; a row's threads take its 32-element units in turn,
// each unit dequantized once for every token of the tile. Loops have
// constant bounds (masked) so the unit stays in registers. f32 throughout.
//
// P.a rows of the part, P.b columns, P.c bytes per row, P.d tokens,
// P.e x's row stride, P.f y's row stride, P.g row0, P.h the grid's width.

@group(1) @binding(0) var<storage, read> w: array<u32>;
@group(1) @binding(1) var<storage, read> xs: array<f32>;
@group(1) @binding(2) var<storage, read_write> ys: array<f32>;

const LANES: u32 = 16u;
const RPW: u32 = 4u;
const TT: u32 = 8u;
var<workgroup> red: array<f32, 512>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let lane = lid.x % LANES;
    let r = (wid.y * P.h + wid.x) * RPW + lid.x / LANES;
    let t0 = wid.z * TT;
    let nt = min(TT, P.d - min(t0, P.d));
    var acc: array<f32, 8>;
    if (r < P.a) {
        let rb = r * P.c;
        let units = (P.b + 31u) / 32u;
        var v: array<f32, 32>;
        for (var u = lane; u < units; u += LANES) {
            unit(rb, u, &v);
            let base = u * 32u;
            let lim = P.b - base;
            for (var t = 0u; t < TT; t++) {
                if (t < nt) {
                    let xo = (t0 + t) * P.e + base;
                    var s = 0.0;
                    for (var i = 0u; i < 32u; i++) {
                        s += select(0.0, v[i] * xs[xo + i], i < lim);
                    }
                    acc[t] += s;
                }
            }
        }
    }
    for (var t = 0u; t < TT; t++) {
        red[t * 64u + lid.x] = acc[t];
    }
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            for (var t = 0u; t < TT; t++) {
                red[t * 64u + lid.x] += red[t * 64u + lid.x + s];
            }
        }
        workgroupBarrier();
    }
    if (r < P.a && lane < nt) {
        ys[(t0 + lane) * P.f + P.g + r] = red[lane * 64u + lid.x - lane];
    }
}
