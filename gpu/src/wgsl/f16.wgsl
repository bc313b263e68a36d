// F16 rows: 32 consecutive halves per unit.
fn unit(rb: u32, u: u32, v: ptr<function, array<f32, 32>>) {
    let o = rb + u * 64u;
    for (var k = 0u; k < 16u; k++) {
        let p = ww(o + 4u * k);
        (*v)[2u * k] = h2f(p & 0xffffu);
        (*v)[2u * k + 1u] = h2f(p >> 16u);
    }
}
