// Q4_1: 20-byte blocks, f16 scale and minimum, then 16 bytes of nibbles.
fn unit(rb: u32, u: u32, v: ptr<function, array<f32, 32>>) {
    let o = rb + u * 20u;
    let d = h2f(wh(o));
    let m = h2f(wh(o + 2u));
    for (var k = 0u; k < 4u; k++) {
        let p = ww(o + 4u + 4u * k);
        for (var b = 0u; b < 4u; b++) {
            let q = (p >> (8u * b)) & 0xffu;
            (*v)[4u * k + b] = f32(q & 15u) * d + m;
            (*v)[4u * k + b + 16u] = f32(q >> 4u) * d + m;
        }
    }
}
