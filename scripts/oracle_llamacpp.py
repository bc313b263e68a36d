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


def synth(ember, family, path):
    args = [ember, "synth", path, "--arch", family, "--type", "f32", "--window", str(WINDOW),
            "--head-dim", str(HEAD_DIM.get(family, 0))]
    for k, v in SHAPE.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    subprocess.run(args, check=True, capture_output=True)


def run_llama_cpp(path):
    from llama_cpp import Llama
    llm = Llama(model_path=path, n_ctx=SHAPE["ctx"], n_batch=64, n_ubatch=64, logits_all=True,
                n_threads=1, verbose=False)
    rng = np.random.default_rng(SHAPE["seed"])
    prompt = [int(t) for t in rng.integers(1, SHAPE["vocab"], PROMPT_LEN)]
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
    a = ap.parse_args()
    import llama_cpp
    for family in a.families.split(","):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, f"{family}.gguf")
            synth(a.ember, family, path)
            sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
            prompt, ids, prefill, decode = run_llama_cpp(path)
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
