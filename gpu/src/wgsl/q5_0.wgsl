// Q5_0: 22-byte blocks, an f16 scale, 32 fifth bits, then 16 bytes of
// nibbles; each 5-bit value less 16.
fn unit(rb: u32, u: u32, v: ptr<function, array<f32, 32>>) {
    let o = rb + u * 22u;
    let d = h2f(wh(o));
    let qh = ww(o + 2u);
    for (var k = 0u; k < 4u; k++) {
        let p = ww(o + 6u + 4u * k);
        for (var b = 0u; b < 4u; b++) {
            let j = 4u * k + b;
            let q = (p >> (8u * b)) & 0xffu;
            let lo = (q & 15u) | (((qh >> j) & 1u) << 4u);
            let hi = (q >> 4u) | (((qh >> (j + 16u)) & 1u) << 4u);
            (*v)[j] = (f32(lo) - 16.0) * d;
            (*v)[j + 16u] = (f32(hi) - 16.0) * d;
        }
    }
}
