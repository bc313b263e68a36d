// Q4_K's and Q5_K's group g (of eight): its 6-bit scale and minimum from
// the twelve packed bytes at `o`.
fn scale_min(o: u32, g: u32) -> vec2<u32> {
    if (g < 4u) {
        return vec2<u32>(wb(o + g) & 63u, wb(o + g + 4u) & 63u);
    }
    let s = (wb(o + g + 4u) & 15u) | ((wb(o + g - 4u) >> 6u) << 4u);
    let m = (wb(o + g + 4u) >> 4u) | ((wb(o + g) >> 6u) << 4u);
    return vec2<u32>(s, m);
}
