#!/usr/bin/env python3
"""Prefill (pp) and decode (tg) speed of `ember bench` next to llama.cpp on the
same GGUF files, thread counts and machine, in one run, alternating engines
repetition by repetition so drift on a shared machine hits both alike.

llama.cpp comes from `pip install llama-cpp-python` (it builds from source,
about 20 minutes on a 2-core machine). Its pp is one `eval` of the prompt
(n_batch 512), its tg is single-token `eval`s from an empty cache, as
llama-bench measures them; ember's are `ember bench` (same definitions).
With `-d D` both start each test from a cache already holding D tokens
(llama-bench's `-d`), filled untimed: speed at a long context.

Prints a Markdown table: tok/s per engine (median over --reps), the ratio
ember / llama.cpp (the median of each repetition's paired ratio, which drift
between repetitions does not move), and decode as a share of the memory-bandwidth floor that
`ember bench` measures (bytes of weights per token / read bandwidth). ember's share is the
median of its runs' own shares (each decode run against the bandwidth probed beside it);
llama.cpp's is its tg over the floor of the ember run that follows it.

    cargo build --release -p ember-runner
    python3 scripts/bench_vs_llamacpp.py --threads 1 --threads 2 \\
        --model ~/.cache/ember/SmolLM2-135M-Instruct.Q8_0.gguf \\
        --model ~/.cache/ember/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import argparse
import json
import os
import statistics
import subprocess
import time


def llama_cpp(model, threads, n_prompt, n_gen, depth):
    from llama_cpp import Llama

    llm = Llama(model_path=model, n_ctx=depth + max(n_prompt, n_gen) + 8, n_batch=512,
                n_ubatch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    ids = lambda n: [(i * 7919 + 100) % 49152 for i in range(n)]
    prompt, gen, context = ids(max(n_prompt, 8)), ids(n_gen), ids(depth)

    def start():
        llm.reset()
        if context:
            llm.eval(context)

    llm.eval(prompt[:8])  # warm-up
    pp = 0.0
    if n_prompt > 0:
        start()
        t = time.perf_counter()
        llm.eval(prompt)
        pp = n_prompt / (time.perf_counter() - t)
    start()
    t = time.perf_counter()
    for i in range(n_gen):
        llm.eval([gen[i]])
    tg = n_gen / (time.perf_counter() - t) if n_gen > 0 else 0.0
    del llm
    return pp, tg


def ember(binary, model, threads, n_prompt, n_gen, depth, kernels):
    out = subprocess.run([binary, "bench", "-m", model, "-p", str(n_prompt), "-n", str(n_gen),
                          "-d", str(depth), "--reps", "1", "--threads", str(threads), "--kernels", kernels, "--json"],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ember", default="target/release/ember")
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--threads", type=int, action="append")
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-d", "--depth", type=int, default=0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kernels", default="auto")
    a = ap.parse_args()
    threads = a.threads or [1]
    at = f" @ d{a.depth}" if a.depth else ""
    print(f"| file | threads | llama.cpp pp{a.p}{at} | ember pp{a.p}{at} | pp ratio "
          f"| llama.cpp tg{a.n}{at} | ember tg{a.n}{at} | tg ratio | floor tok/s | llama.cpp tg of floor | ember tg of floor |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model in a.model:
        for t in threads:
            lpp, ltg, epp, etg, floor, eshare, lshare = [], [], [], [], [], [], []
            for _ in range(a.reps):
                p, g = llama_cpp(model, t, a.p, a.n, a.depth)
                lpp.append(p)
                ltg.append(g)
                j = ember(a.ember, model, t, a.p, a.n, a.depth, a.kernels)
                epp.append(j.get("pp_tok_s") or 0.0)
                etg.append(j.get("tg_tok_s") or 0.0)
                f = j.get("tg_floor_tok_s") or 0.0
                floor.append(f)
                # ember's share pairs each of its decode runs with the bandwidth
                # probes taken beside it; llama.cpp's, with the floor measured
                # in the ember run right after it.
                eshare.append(j.get("tg_of_floor") or 0.0)
                lshare.append(g / f if f > 0 else 0.0)
            m = statistics.median

            def ratio(e, l):
                pairs = [x / y for x, y in zip(e, l) if y > 0]
                return f"{m(pairs):.2f}x" if pairs else "-"

            def fig(v):
                return f"{m(v):.1f}" if m(v) > 0 else "-"

            f = m(floor)
            share = (lambda v: f"{100 * m(v):.0f}%") if f > 0 and a.n > 0 else (lambda v: "-")
            print(f"| {os.path.basename(model)} | {t} | {fig(lpp)} | {fig(epp)} | {ratio(epp, lpp)} | "
                  f"{fig(ltg)} | {fig(etg)} | {ratio(etg, ltg)} | "
                  f"{f:.0f} | {share(lshare)} | {share(eshare)} |", flush=True)

if __name__ == "__main__":
    main()
