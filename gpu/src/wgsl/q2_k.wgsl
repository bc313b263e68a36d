// Q2_K: 84-byte super-blocks of 256: sixteen bytes of 4-bit scale and
// minimum pairs (one per 16), 64 bytes of 2-bit quants, f16 d and dmin.
fn unit(rb: u32, u: u32, v: ptr<function, array<f32, 32>>) {
    let o = rb + (u / 8u) * 84u;
    let e0 = 32u * (u % 8u);
    let h = e0 / 128u;
    let k = (e0 % 128u) / 32u;
    let d = h2f(wh(o + 80u));
    let dmin = h2f(wh(o + 82u));
    for (var half = 0u; half < 2u; half++) {
        let sc = wb(o + e0 / 16u + half);
        let dg = d * f32(sc & 15u);
        let mg = dmin * f32(sc >> 4u);
        for (var i = 0u; i < 16u; i++) {
            let l = 16u * half + i;
            let q = (wb(o + 16u + 32u * h + l) >> (2u * k)) & 3u;
            (*v)[l] = dg * f32(q) - mg;
        }
    }
}
