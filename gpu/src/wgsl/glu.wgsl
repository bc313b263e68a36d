// The gated FFN's gate in place: gate[i] = act(gate[i]) · up[i], with
// act SiLU (P.a 0) or GELU's tanh form as a sigmoid (P.a 1), as the core's
// math has them.
//
// P.a activation, P.b elements, P.h the grid's width.

@group(1) @binding(0) var<storage, read_write> gate: array<f32>;
@group(1) @binding(1) var<storage, read> up: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.y * P.h + wid.x) * 256u + lid.x;
    if (i < P.b) {
        let x = gate[i];
        var z = x;
        if (P.a == 1u) {
            z = 1.5957692 * (x + 0.044715 * x * x * x);
        }
        // exp of a large argument is +inf, and x / inf is 0, as on the CPU.
        gate[i] = x / (1.0 + exp(-z)) * up[i];
    }
}
