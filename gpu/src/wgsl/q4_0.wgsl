// Q4_0: 18-byte blocks, an f16 scale then 16 bytes of nibbles (low: element
// j, high: element j + 16), each less 8.
fn unit(rb: u32, u: u32, v: ptr<function, array<f32, 32>>) {
    let o = rb + u * 18u;
    let d = h2f(wh(o));
    for (var k = 0u; k < 4u; k++) {
        let p = ww(o + 2u + 4u * k);
        for (var b = 0u; b < 4u; b++) {
            let q = (p >> (8u * b)) & 0xffu;
            (*v)[4u * k + b] = (f32(q & 15u) - 8.0) * d;
            (*v)[4u * k + b + 16u] = (f32(q >> 4u) - 8.0) * d;
        }
    }
}
