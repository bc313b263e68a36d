// BF16 rows: the high halves of f32s, 32 per unit.
fn unit(rb: u32, u: u32, v: ptr<function, array<f32, 32>>) {
    let o = rb + u * 64u;
    for (var k = 0u; k < 16u; k++) {
        let p = ww(o + 4u * k);
        (*v)[2u * k] = bitcast<f32>(p << 16u);
        (*v)[2u * k + 1u] = bitcast<f32>(p & 0xffff0000u);
    }
}
