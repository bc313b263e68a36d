#!/usr/bin/env python3
"""Semantics oracle: llama.cpp's greedy ids and logits on a synthetic file of
each family, in the format of `tests/golden/oracle_*.json`.

For each family, `ember synth --arch FAMILY` writes a small random-weights
file (F32 weights, so both engines compute the same function up to rounding);
llama-cpp-python (0.3.36) evaluates a prompt longer than Gemma 3's sliding
window in one `eval` (its batched path, `logits_all`), then decodes greedily
one token at a time. The golden file keeps the synth arguments (the Rust test
rewrites the same bytes with `ember_core::synth`), the prompt, llama.cpp's
greedy ids, the logits of every prompt position and of every decode step.

    python3 scripts/oracle_llamacpp.py --ember target/release/ember \\
        --out tests/golden

`--realistic` uses each family's real widths instead (Qwen3-0.6B's, Gemma 3
270M's with its window of 512, ...; fewer layers, real vocabularies) and a
600-token prompt, and keeps only the top 64 logits at every 25th prompt
position and every decode step (`tests/golden/oracle_real_*.json`; the full
rows would be gigabytes of JSON).
"""

import argparse
import datetime
import hashlib
import json
import os
import subprocess
import tempfile

import numpy as np

# One shape for every family: six layers, so Gemma 3's pattern (five
# windowed layers, then a global one) is whole; a window of 16 positions, so
# the 40-token prompt and the decode run past it.
SHAPE = dict(dim=64, layers=6, heads=4, kv_heads=2, ffn=128, vocab=300, ctx=256, seed=7)
HEAD_DIM = {"qwen3": 32, "gemma3": 32}
WINDOW = 16
PROMPT_LEN = 40
DECODE = 24


# Real widths (layers cut to keep the files a few GB of f32): Llama 3.2 1B,
# Qwen2.5-0.5B, Qwen3-0.6B, Phi-3-mini's head width, Gemma 3 270M.
REAL = {
    "llama3": dict(dim=2048, layers=2, heads=32, kv_heads=8, ffn=8192, vocab=128256, head_dim=0),
    "qwen2": dict(dim=896, layers=3, heads=14, kv_heads=2, ffn=4864, vocab=151936, head_dim=0),
    "qwen3": dict(dim=1024, layers=3, heads=16, kv_heads=8, ffn=3072, vocab=151936, head_dim=128),
    "phi3": dict(dim=3072, layers=1, heads=32, kv_heads=32, ffn=8192, vocab=32064, head_dim=0),
    "gemma3": dict(dim=640, layers=6, heads=4, kv_heads=1, ffn=2048, vocab=262144, head_dim=256),
}


def synth(ember, family, path, shape, head_dim, window):
    args = [ember, "synth", path, "--arch", family, "--type", "f32", "--window", str(window),
            "--head-dim", str(head_dim)]
    for k, v in shape.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    subprocess.run(args, check=True, capture_output=True)


def run_llama_cpp(path, shape, prompt_len):
    from llama_cpp import Llama
    llm = Llama(model_path=path, n_ctx=shape["ctx"], n_batch=64, n_ubatch=64, logits_all=True,
                n_threads=2, verbose=False)
    rng = np.random.default_rng(shape["seed"])
    prompt = [int(t) for t in rng.integers(1, shape["vocab"], prompt_len)]
    llm.eval(prompt)
    prefill = np.array(llm.scores[: llm.n_tokens], dtype=np.float64)
    ids, decode = [], []
    nxt = int(np.argmax(prefill[-1]))
    for _ in range(DECODE):
        ids.append(nxt)
        llm.eval([nxt])
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        decode.append(row)
        nxt = int(np.argmax(row))
    return prompt, ids, prefill, np.array(decode)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ember", required=True)
    ap.add_argument("--out", default="tests/golden")
    ap.add_argument("--families", default="llama,llama3,qwen2,qwen3,phi3,gemma3")
    ap.add_argument("--realistic", action="store_true")
    a = ap.parse_args()
    import llama_cpp
    for family in a.families.split(","):
        if a.realistic:
            real = dict(REAL[family])
            head_dim = real.pop("head_dim")
            shape = dict(real, ctx=1024, seed=7)
            window, prompt_len = 512, 600
        else:
            shape, head_dim, window, prompt_len = SHAPE, HEAD_DIM.get(family, 0), WINDOW, PROMPT_LEN
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, f"{family}.gguf")
            synth(a.ember, family, path, shape, head_dim, window)
            sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
            prompt, ids, prefill, decode = run_llama_cpp(path, shape, prompt_len)
        if a.realistic:
            rows = [("prefill", p, prefill[p]) for p in range(0, prompt_len, 25)]
            rows += [("decode", i, r) for i, r in enumerate(decode)]
            top = []
            for phase, at, row in rows:
                order = np.argsort(-row, kind="stable")[:64]
                top.append({"phase": phase, "at": at, "spread": float(row.max() - row.min()),
                            "ids": [int(i) for i in order],
                            "logits": [float(f"{row[i]:.6g}") for i in order]})
            out = {
                "made": f"{datetime.date.today()} by scripts/oracle_llamacpp.py --realistic with "
                        f"llama-cpp-python {llama_cpp.__version__}",
                "family": family,
                "synth": dict(shape, head_dim=head_dim, window=window, type="f32"),
                "sha256": sha, "prompt": prompt, "greedy": ids, "top": top,
            }
            dst = os.path.join(a.out, f"oracle_real_{family}.json")
            with open(dst, "w") as f:
                json.dump(out, f, separators=(",", ":"))
            print(f"{family}: greedy {ids[:8]}... -> {dst}")
            continue
        r = lambda m: [[float(f"{x:.6g}") for x in row] for row in m]
        out = {
            "made": f"{datetime.date.today()} by scripts/oracle_llamacpp.py with "
                    f"llama-cpp-python {llama_cpp.__version__}",
            "family": family,
            "synth": dict(SHAPE, head_dim=HEAD_DIM.get(family, 0), window=WINDOW, type="f32"),
            "sha256": sha,
            "prompt": prompt,
            "greedy": ids,
            "prefill_logits": r(prefill),
            "decode_logits": r(decode),
        }
        dst = os.path.join(a.out, f"oracle_{family}.json")
        with open(dst, "w") as f:
            json.dump(out, f, separators=(",", ":"))
        print(f"{family}: greedy {ids[:8]}... -> {dst}")


if __name__ == "__main__":
    main()
