#!/usr/bin/env python3
"""Decode (tg) and prefill (pp) speed of `ember run` next to llama.cpp on the
same GGUF files, thread count and machine, alternating engines, in one run.

llama.cpp comes from `pip install llama-cpp-python` (it builds from source).
Prints tokens/s per engine (median over --reps) and the ratio ember/llama.cpp.

    python3 scripts/bench_vs_llamacpp.py --ember target/release/ember \
        --model ~/.cache/ember/SmolLM2-135M-Instruct.Q8_0.gguf --threads 1
"""
import argparse
import json
import statistics
import subprocess
import time


def llama_cpp(model, threads, n_prompt, n_gen):
    from llama_cpp import Llama

    llm = Llama(model_path=model, n_ctx=n_prompt + n_gen + 8, n_batch=512, n_ubatch=512,
                n_threads=threads, n_threads_batch=threads, verbose=False)
    prompt = [(i * 7919) % 1000 + 100 for i in range(n_prompt)]
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt)
    pp = n_prompt / (time.perf_counter() - t)
    tok = 198
    t = time.perf_counter()
    for _ in range(n_gen):
        llm.eval([tok])
    tg = n_gen / (time.perf_counter() - t)
    del llm
    return pp, tg


def ember(binary, model, n_prompt, n_gen, kernels):
    prompt = ",".join(str((i * 7919) % 1000 + 100) for i in range(n_prompt))
    out = subprocess.run([binary, "run", "-m", model, "--prompt-ids", prompt, "-n", str(n_gen + 1),
                          "--ignore-eos", "--json", "--kernels", kernels, "--ctx", str(n_prompt + n_gen + 8)],
                         check=True, capture_output=True, text=True)
    j = json.loads(out.stdout)
    return j["prefill_tok_s"], j["decode_tok_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ember", default="target/release/ember")
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kernels", default="auto")
    a = ap.parse_args()
    for model in a.model:
        res = {"llama.cpp": [], "ember": []}
        for _ in range(a.reps):
            res["llama.cpp"].append(llama_cpp(model, a.threads, a.p, a.n))
            res["ember"].append(ember(a.ember, model, a.p, a.n, a.kernels))
        med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in res.items()}
        l, e = med["llama.cpp"], med["ember"]
        print(f"{model} threads={a.threads} (ember with {a.threads} thread, kernels={a.kernels})")
        print(f"  llama.cpp pp{a.p} {l[0]:8.1f} tok/s  tg{a.n} {l[1]:7.1f} tok/s")
        print(f"  ember     pp{a.p} {e[0]:8.1f} tok/s  tg{a.n} {e[1]:7.1f} tok/s")
        print(f"  ratio     pp {e[0] / l[0]:.2f}x  tg {e[1] / l[1]:.2f}x")


if __name__ == "__main__":
    main()
