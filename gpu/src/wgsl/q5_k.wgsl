// Q5_K: 176-byte super-blocks of 256: as Q4_K, with 32 bytes of fifth
// bits (element 32g + l's at bit g of byte l) before the nibbles.
fn unit(rb: u32, u: u32, v: ptr<function, array<f32, 32>>) {
    let o = rb + (u / 8u) * 176u;
    let g = u % 8u;
    let sm = scale_min(o + 4u, g);
    let d = h2f(wh(o)) * f32(sm.x);
    let m = h2f(wh(o + 2u)) * f32(sm.y);
    let q0 = o + 48u + 32u * (g / 2u);
    let sh = 4u * (g % 2u);
    for (var l = 0u; l < 32u; l++) {
        let q = ((wb(q0 + l) >> sh) & 15u) | (((wb(o + 16u + l) >> g) & 1u) << 4u);
        (*v)[l] = d * f32(q) - m;
    }
}
