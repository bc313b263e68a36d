#!/usr/bin/env python3
"""Throughput of `ember serve` under concurrent streams (continuous batching).

Starts `ember serve --parallel 8` on a free loopback port (or uses --url), then
measures, with streamed completions of a fixed length (ignore_eos):

  * generated tokens/s of one request alone;
  * aggregate generated tokens/s of 8 concurrent requests (all generated
    tokens over the wall time from the first request sent to the last
    answer; prompts are 7 tokens, so this is decode);
  * time to first token of a request alone, and of one that arrives while
    7 others stream;
  * generated tokens/s of one greedy request that copies a code block
    from its prompt (where `--lookup` drafts pay off).

`--lookup N` passes the flag to the server: run the script with and
without it to compare.

Prints a Markdown table. Only the Python standard library is used.

    python3 scripts/bench_serve.py --model ~/.cache/ember/SmolLM2-135M-Instruct.Q8_0.gguf
"""
import argparse
import json
import os
import subprocess
import threading
import time

import ember_server

PROMPT = "The history of the city begins"
COPY = ("def area(width, height):\n    if width < 0 or height < 0:\n        raise ValueError(\"negative size\")\n"
        "    return width * height\n\n\ndef perimeter(width, height):\n    if width < 0 or height < 0:\n"
        "        raise ValueError(\"negative size\")\n    return 2 * (width + height)\n\n"
        "# The same two functions, copied exactly:\n")


def copy_rate(url, max_tokens):
    """Generated tokens/s of one greedy completion that copies COPY."""
    t0 = time.perf_counter()
    v = ember_server.post_json(url, "/v1/completions", {"prompt": COPY, "max_tokens": max_tokens,
                                                        "temperature": 0, "ignore_eos": True})
    return v["usage"]["completion_tokens"] / (time.perf_counter() - t0)


def stream(url, max_tokens, seed, events):
    """One streamed completion; appends (time, n_tokens_so_far) per chunk."""
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "stream": True,
            "seed": seed, "temperature": 0.8, "ignore_eos": True}
    t0 = time.perf_counter()
    n = 0
    for ev in ember_server.stream_events(url, "/v1/completions", body):
        if ev["choices"][0].get("finish_reason") is None:
            n += 1
            events.append((time.perf_counter(), n))
    return t0


def whole(url, max_tokens, seed, out):
    """One non-streamed completion; appends its generated token count."""
    v = ember_server.post_json(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": max_tokens,
                                                        "seed": seed, "temperature": 0.8, "ignore_eos": True})
    out.append(v["usage"]["completion_tokens"])


def aggregate(url, k, max_tokens):
    """Generated tokens per second of k concurrent requests (client-light:
    one answer each, no per-token events)."""
    counts = []
    ths = [threading.Thread(target=whole, args=(url, max_tokens, 100 + i, counts)) for i in range(k)]
    t0 = time.perf_counter()
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    secs = time.perf_counter() - t0
    if len(counts) != k:
        raise RuntimeError("a request failed")
    return sum(counts) / secs


def run_streams(url, k, max_tokens):
    evs = [[] for _ in range(k)]
    ths = [threading.Thread(target=stream, args=(url, max_tokens, 100 + i, evs[i])) for i in range(k)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    # The window where every stream is generating.
    start = max(e[0][0] for e in evs)
    end = min(e[-1][0] for e in evs)
    toks = sum(sum(1 for (t, _) in e if start < t <= end) for e in evs)
    return toks / max(end - start, 1e-9)


def ttft(url, others, max_tokens):
    bg = [[] for _ in range(others)]
    ths = [threading.Thread(target=stream, args=(url, 900, 200 + i, bg[i]), daemon=True)
           for i in range(others)]
    for t in ths:
        t.start()
    # Wait until the others are all generating.
    deadline = time.time() + 120
    while others and any(len(e) < 4 for e in bg):
        if time.time() > deadline:
            raise RuntimeError("the background streams did not start")
        time.sleep(0.01)
    ev = []
    t0 = time.perf_counter()
    stream(url, 8, 7, ev)
    first = ev[0][0] - t0
    return first, bg, ths


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="GGUF file for the server (default: ember's default model)")
    ap.add_argument("--ember", default="target/release/ember")
    ap.add_argument("--url", help="an already running server")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128, help="tokens per request")
    ap.add_argument("--lookup", type=int, default=0, help="the server's --lookup")
    args = ap.parse_args()
    proc = None
    url = args.url
    if not url:
        cmd = [args.ember, "serve", "--port", "0", "--parallel", "8", "-t", str(args.threads), "--ctx", "1024",
               "--lookup", str(args.lookup)]
        if args.model:
            cmd += ["--model", args.model]
        proc, url, _ = ember_server.start(cmd)
    try:
        aggregate(url, 1, 16)  # warm up
        one = max(aggregate(url, 1, args.tokens) for _ in range(2))
        eight = max(aggregate(url, 8, args.tokens) for _ in range(2))
        copy = max(copy_rate(url, args.tokens) for _ in range(2))
        alone, _, _ = ttft(url, 0, 0)
        # TTFT while 7 others stream: they run until the server is stopped.
        busy, bg, ths = ttft(url, 7, 1)
        print(f"| concurrent requests | generated tok/s (aggregate) | ratio to one |")
        print(f"| ---: | ---: | ---: |")
        print(f"| 1 | {one:.1f} | 1.00x |")
        print(f"| 8 | {eight:.1f} | {eight / one:.2f}x |")
        print()
        print(f"time to first token: alone {alone * 1000:.0f} ms; while 7 others stream {busy * 1000:.0f} ms")
        print(f"copying a code block (one greedy request): {copy:.1f} tok/s")
        print(json.dumps({"one_tok_s": one, "eight_tok_s": eight, "ratio": eight / one,
                          "ttft_alone_ms": alone * 1000, "ttft_busy_ms": busy * 1000,
                          "copy_tok_s": copy, "lookup": args.lookup}))
    finally:
        if proc:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        os._exit(0)


if __name__ == "__main__":
    main()
