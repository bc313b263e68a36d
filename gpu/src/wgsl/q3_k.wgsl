// Q3_K: 110-byte super-blocks of 256: 32 bytes of third bits (a clear bit
// subtracts 4), 64 bytes of 2-bit quants, twelve bytes of 6-bit scales
// (less 32), an f16 d.
fn unit(rb: u32, u: u32, v: ptr<function, array<f32, 32>>) {
    let o = rb + (u / 8u) * 110u;
    let e0 = 32u * (u % 8u);
    let h = e0 / 128u;
    let k = (e0 % 128u) / 32u;
    let d = h2f(wh(o + 108u));
    for (var half = 0u; half < 2u; half++) {
        let g = e0 / 16u + half;
        var lo: u32;
        if (g < 8u) {
            lo = wb(o + 96u + g) & 15u;
        } else {
            lo = wb(o + 96u + g - 8u) >> 4u;
        }
        let hi = (wb(o + 104u + g % 4u) >> (2u * (g / 4u))) & 3u;
        let dg = d * f32(i32(lo | (hi << 4u)) - 32);
        for (var i = 0u; i < 16u; i++) {
            let l = 16u * half + i;
            let q = i32((wb(o + 32u + 32u * h + l) >> (2u * k)) & 3u);
            let m = select(4, 0, ((wb(o + l) >> (4u * h + k)) & 1u) != 0u);
            (*v)[l] = dg * f32(q - m);
        }
    }
}
