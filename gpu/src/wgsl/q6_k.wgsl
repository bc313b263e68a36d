// Q6_K: 210-byte super-blocks of 256: 128 bytes of low nibbles, 64 of high
// bit pairs, sixteen signed scales (one per 16), an f16 d last.
fn unit(rb: u32, u: u32, v: ptr<function, array<f32, 32>>) {
    let o = rb + (u / 8u) * 210u;
    let e0 = 32u * (u % 8u);
    let h = e0 / 128u;
    let k = (e0 % 128u) / 32u;
    let d = h2f(wh(o + 208u));
    let lo0 = o + 64u * h + 32u * (k % 2u);
    let hi0 = o + 128u + 32u * h;
    let sh = select(4u, 0u, k < 2u);
    for (var half = 0u; half < 2u; half++) {
        let dg = d * i8f(wb(o + 192u + e0 / 16u + half));
        for (var i = 0u; i < 16u; i++) {
            let l = 16u * half + i;
            let q = ((wb(lo0 + l) >> sh) & 15u) | (((wb(hi0 + l) >> (2u * k)) & 3u) << 4u);
            (*v)[l] = dg * f32(i32(q) - 32);
        }
    }
}
