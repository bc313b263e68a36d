#!/usr/bin/env python3
"""Compare `ember convert` with llama.cpp's quantizer, tensor by tensor.

For each file type, quantizes the same source GGUF (for example the F16
SmolLM2) with llama.cpp (`llama_cpp.llama_model_quantize` from
llama-cpp-python, no importance matrix) and with `ember convert`, then
reports per file: how many tensors have the same type, how many are byte
for byte identical, and for the others the RMS error of each side's
dequantized weights against the source (dequantized with gguf-py, PyPI
`gguf`).

    python3 scripts/compare_quantizer.py SRC.gguf --ember target/release/ember \\
        --types q4_k_m q5_k_m q6_k q3_k_m q2_k q5_0 q5_1 bf16 --out /tmp/cmp
"""

import argparse
import ctypes
import os
import subprocess
import sys

import numpy as np

FTYPES = {
    "q5_0": 8, "q5_1": 9, "q2_k": 10, "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13,
    "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18, "bf16": 32,
}


def gguf_module():
    """gguf-py (PyPI `gguf`): reads both files and dequantizes every format."""
    import gguf
    return gguf


def llama_quantize(src, dst, ftype):
    import llama_cpp
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype
    p.nthread = os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize({src}, {ftype}) failed: {rc}")


def tensors(gguf, path):
    r = gguf.GGUFReader(path)
    return {t.name: t for t in r.tensors}


def dequant(gguf, t):
    from gguf import quants
    return quants.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("--ember", default="target/release/ember")
    ap.add_argument("--types", nargs="+", default=list(FTYPES))
    ap.add_argument("--out", default="/tmp/ember-quant-compare")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    gguf = gguf_module()
    src = tensors(gguf, a.src)
    ref = {n: dequant(gguf, t) for n, t in src.items()}
    print("| type | tensors | same type | byte-identical | differing: RMS ember / llama.cpp (worst tensor) |")
    print("| --- | ---: | ---: | ---: | --- |")
    for ty in a.types:
        lp = os.path.join(a.out, f"llama.{ty}.gguf")
        ep = os.path.join(a.out, f"ember.{ty}.gguf")
        if not os.path.exists(lp):
            llama_quantize(a.src, lp, FTYPES[ty])
        subprocess.run([a.ember, "convert", a.src, ep, "--type", ty], check=True,
                       stderr=subprocess.DEVNULL)
        lt, et = tensors(gguf, lp), tensors(gguf, ep)
        same_type = identical = 0
        worst = None
        for name, l in lt.items():
            e = et[name]
            if l.tensor_type != e.tensor_type:
                print(f"  {ty}: {name}: llama.cpp {l.tensor_type.name}, ember {e.tensor_type.name}",
                      file=sys.stderr)
                continue
            same_type += 1
            if bytes(l.data.tobytes()) == bytes(e.data.tobytes()):
                identical += 1
                continue
            x = ref[name]
            re = float(np.sqrt(np.mean((dequant(gguf, e) - x) ** 2)))
            rl = float(np.sqrt(np.mean((dequant(gguf, l) - x) ** 2)))
            if worst is None or re / max(rl, 1e-30) > worst[1] / max(worst[2], 1e-30):
                worst = (name, re, rl)
        diff = "-" if worst is None else f"{worst[1]:.4g} / {worst[2]:.4g} ({worst[0]})"
        print(f"| {ty} | {len(lt)} | {same_type} | {identical} | {diff} |")


if __name__ == "__main__":
    main()
