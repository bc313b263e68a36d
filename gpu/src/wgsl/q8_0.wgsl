// Q8_0: 34-byte blocks, an f16 scale then 32 signed bytes.
fn unit(rb: u32, u: u32, v: ptr<function, array<f32, 32>>) {
    let o = rb + u * 34u;
    let d = h2f(wh(o));
    for (var k = 0u; k < 8u; k++) {
        let p = ww(o + 2u + 4u * k);
        for (var b = 0u; b < 4u; b++) {
            (*v)[4u * k + b] = i8f(p >> (8u * b)) * d;
        }
    }
}
