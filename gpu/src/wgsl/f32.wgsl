// F32 rows: 32 consecutive floats per unit.
fn unit(rb: u32, u: u32, v: ptr<function, array<f32, 32>>) {
    let o = (rb >> 2u) + u * 32u;
    for (var i = 0u; i < 32u; i++) {
        (*v)[i] = bitcast<f32>(w[o + i]);
    }
}
