// Q5_1: 24-byte blocks, f16 scale and minimum, 32 fifth bits, then 16
// bytes of nibbles.
fn unit(rb: u32, u: u32, v: ptr<function, array<f32, 32>>) {
    let o = rb + u * 24u;
    let d = h2f(wh(o));
    let m = h2f(wh(o + 2u));
    let qh = ww(o + 4u);
    for (var k = 0u; k < 4u; k++) {
        let p = ww(o + 8u + 4u * k);
        for (var b = 0u; b < 4u; b++) {
            let j = 4u * k + b;
            let q = (p >> (8u * b)) & 0xffu;
            let lo = (q & 15u) | (((qh >> j) & 1u) << 4u);
            let hi = (q >> 4u) | (((qh >> (j + 16u)) & 1u) << 4u);
            (*v)[j] = f32(lo) * d + m;
            (*v)[j + 16u] = f32(hi) * d + m;
        }
    }
}
