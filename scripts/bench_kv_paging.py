#!/usr/bin/env python3
"""Requests served at once in a fixed KV memory: whole caches per slot
against paged KV.

Starts two servers one after the other on free loopback ports (the same
model, threads and --ctx):

  * fixed: `--parallel P --ctx C`, a whole C-position cache per slot;
  * paged: `--kv-memory M --parallel N --ctx C`, where M is the MiB the
    fixed server's P caches take (it prints them), so both hold the same
    KV memory;

and sends each the same R short seeded requests at once (prompt and reply
at most --tokens tokens, streamed, ignore_eos). It samples /health while
they run and reports, per server: the most requests generating at once,
the wall time, aggregate generated tokens/s, and whether every reply equals
the fixed server's (the same seeded request gives the same text on both).
Prints a Markdown table and one JSON line. Only the Python standard
library is used.

    python3 scripts/bench_kv_paging.py --ember target/release/ember \\
        --model ~/.cache/ember/SmolLM2-135M-Instruct.Q8_0.gguf
"""
import argparse
import json
import os
import re
import sys
import threading
import time
import urllib.request

import ember_server

TOPICS = ["rivers", "bread", "clocks", "the moon", "ships", "owls", "glass", "maps"]


def body(i, tokens):
    t = TOPICS[i % len(TOPICS)]
    if i % 2 == 0:
        return "/v1/chat/completions", {
            "messages": [{"role": "user", "content": f"Tell me about {t}."}],
            "max_tokens": tokens - 40, "temperature": 0.8, "seed": 300 + i, "ignore_eos": True}
    return "/v1/completions", {
        "prompt": f"A short story about {t}:", "max_tokens": tokens - 40,
        "temperature": 0.9, "seed": 400 + i, "ignore_eos": True}


def request(url, path, b, out, i):
    v = ember_server.post_json(url, path, b, timeout=1200)
    ch = v["choices"][0]
    out[i] = (ch.get("text") or ch.get("message", {}).get("content"), v["usage"]["completion_tokens"])


def run(url, n, tokens):
    out = [None] * n
    busiest = [0]
    done = threading.Event()

    def watch():
        while not done.is_set():
            h = json.loads(urllib.request.urlopen(url + "/health", timeout=30).read())
            busiest[0] = max(busiest[0], h["slots_busy"])
            time.sleep(0.05)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    ths = [threading.Thread(target=request, args=(url, *body(i, tokens), out, i)) for i in range(n)]
    t0 = time.perf_counter()
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    secs = time.perf_counter() - t0
    done.set()
    w.join()
    if any(o is None for o in out):
        raise RuntimeError("a request failed")
    return out, busiest[0], secs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="GGUF file (default: ember's default model)")
    ap.add_argument("--ember", default="target/release/ember")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--fixed", type=int, default=2, help="slots of the fixed server")
    ap.add_argument("--parallel", type=int, default=16, help="slots of the paged server")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=256, help="prompt and reply tokens per request, at most")
    args = ap.parse_args()
    rows = []
    base = None
    for name in ["fixed", "paged"]:
        if name == "fixed":
            extra = ["--parallel", str(args.fixed), "--ctx", str(args.ctx)]
        else:
            extra = ["--parallel", str(args.parallel), "--ctx", str(args.ctx), "--kv-memory", str(mib)]
        cmd = [args.ember, "serve", "--port", "0", "-t", str(args.threads)] + extra
        if args.model:
            cmd += ["--model", args.model]
        proc, url, line = ember_server.start(cmd)
        try:
            if name == "fixed":
                m = re.search(r"([0-9.]+) MiB of KV cache", line)
                mib = int(float(m.group(1)) + 0.5)
            out, busiest, secs = run(url, args.requests, args.tokens)
        finally:
            ember_server.stop(proc)
        gen = sum(o[1] for o in out)
        same = base is None or [o[0] for o in out] == base
        base = base or [o[0] for o in out]
        rows.append({"server": name, "kv_mib": mib, "slots": args.fixed if name == "fixed" else args.parallel,
                     "most_at_once": busiest, "secs": secs, "tok_s": gen / secs, "same_text": same})
    print(f"| KV memory | server | slots | requests at once (most) | wall time | generated tok/s | replies |")
    print(f"| ---: | --- | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['kv_mib']} MiB | {r['server']} | {r['slots']} | {r['most_at_once']} | {r['secs']:.1f} s | "
              f"{r['tok_s']:.1f} | {'same' if r['same_text'] else 'DIFFERENT'} |")
    print(json.dumps(rows))
    if not all(r["same_text"] for r in rows):
        sys.exit("the replies differ")
    os._exit(0)


if __name__ == "__main__":
    main()
