// Q4_K: 144-byte super-blocks of 256: f16 d and dmin, twelve bytes of
// 6-bit scales and minimums, 128 bytes of nibbles. A unit is one group of
// 32: `d·sc·q − dmin·m`.
fn unit(rb: u32, u: u32, v: ptr<function, array<f32, 32>>) {
    let o = rb + (u / 8u) * 144u;
    let g = u % 8u;
    let sm = scale_min(o + 4u, g);
    let d = h2f(wh(o)) * f32(sm.x);
    let m = h2f(wh(o + 2u)) * f32(sm.y);
    let q0 = o + 16u + 32u * (g / 2u);
    let sh = 4u * (g % 2u);
    for (var l = 0u; l < 32u; l++) {
        (*v)[l] = d * f32((wb(q0 + l) >> sh) & 15u) - m;
    }
}
