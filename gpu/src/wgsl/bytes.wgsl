// Byte access to a weight buffer `w` of little-endian words (declared by
// the kernel), and the scalar types of ggml's blocks.

// The word at byte `o` of the weights, at any alignment.
fn ww(o: u32) -> u32 {
    let i = o >> 2u;
    let s = (o & 3u) << 3u;
    if (s == 0u) {
        return w[i];
    }
    return (w[i] >> s) | (w[i + 1u] << (32u - s));
}

// The byte at `o`.
fn wb(o: u32) -> u32 {
    return (w[o >> 2u] >> ((o & 3u) << 3u)) & 0xffu;
}

// The 16-bit half word at `o`.
fn wh(o: u32) -> u32 {
    return ww(o) & 0xffffu;
}

// An IEEE half's bits as f32, exactly (subnormals included).
fn h2f(h: u32) -> f32 {
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    var v: f32;
    if (e == 0u) {
        v = f32(m) * 5.9604644775390625e-8;
    } else if (e == 31u) {
        v = bitcast<f32>(0x7f800000u | (m << 13u));
    } else {
        v = bitcast<f32>(((e + 112u) << 23u) | (m << 13u));
    }
    return select(v, -v, (h & 0x8000u) != 0u);
}

// The low byte of `b` as a signed value.
fn i8f(b: u32) -> f32 {
    return f32(bitcast<i32>(b << 24u) >> 24u);
}
