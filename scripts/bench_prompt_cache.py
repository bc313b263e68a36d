#!/usr/bin/env python3
"""Time to first token of a conversation's second turn, with and without the
prompt cache of `ember serve`.

Starts `ember serve --parallel 2 --ctx 2048` on a free loopback port (or uses
--url). For each repetition it builds a conversation of about --tokens prompt
tokens (a system prompt and earlier turns of seeded filler text, different
for every repetition so that no repetition finds another's tokens cached),
then streams:

  1. the first turn: the conversation, with an empty cache;
  2. the second turn: the conversation, the first turn's reply and a new
     question, with the cache (`cache_prompt` left on);
  3. the same second turn with `"cache_prompt": false`.

Time to first token is from sending the request to the first streamed chunk
carrying a token. Requests 2 and 3 must give the same reply (seeded
sampling, log-probabilities compared too); the script fails otherwise.
Prints a Markdown table of medians and one JSON line. Only the Python
standard library is used.

    python3 scripts/bench_prompt_cache.py --ember target/release/ember \
        --model ~/.cache/ember/SmolLM2-135M-Instruct.Q8_0.gguf
"""
import argparse
import json
import os
import random
import statistics
import sys
import time

import ember_server

WORDS = ("river stone market winter lantern garden engine harbor letter signal "
         "copper meadow bridge orchard compass ledger village furnace canvas "
         "timber beacon quarry valley anchor thread window mirror candle").split()


def filler(rng, sentences):
    out = []
    for _ in range(sentences):
        n = rng.randint(8, 16)
        s = " ".join(rng.choice(WORDS) for _ in range(n))
        out.append(s.capitalize() + ".")
    return " ".join(out)


def conversation(rep, target_tokens, count):
    """Messages of about `target_tokens` prompt tokens (`count(messages)`
    estimates how many the server's template and tokenizer make of them)."""
    rng = random.Random(1000 + rep)
    msgs = [{"role": "system",
             "content": f"Session {rep}. You answer questions about the notes below.\n" + filler(rng, 6)}]
    while True:
        msgs.append({"role": "user", "content": "Here are more notes: " + filler(rng, 5)})
        msgs.append({"role": "assistant", "content": "Noted. " + filler(rng, 2)})
        if count(msgs) >= target_tokens:
            break
    msgs.append({"role": "user", "content": "Which of the notes mention a bridge? Answer briefly."})
    return msgs




def stream_chat(url, messages, cache, max_tokens, seed):
    """(seconds to the first token, reply, log-probabilities, usage)."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0.7, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}, "logprobs": True,
            "cache_prompt": cache}
    t0 = time.perf_counter()
    first, text, lps, usage = None, [], [], None
    for ev in ember_server.stream_events(url, "/v1/chat/completions", body):
        if ev.get("usage"):
            usage = ev["usage"]
        for ch in ev.get("choices", []):
            lp = (ch.get("logprobs") or {}).get("content") or []
            if lp and first is None:
                first = time.perf_counter() - t0
            lps.extend(lp)
            text.append(ch.get("delta", {}).get("content") or "")
    if first is None or usage is None:
        raise RuntimeError("the stream carried no token or no usage")
    return first, "".join(text), lps, usage


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="GGUF file for the server (default: ember's default model)")
    ap.add_argument("--ember", default="target/release/ember")
    ap.add_argument("--url", help="an already running server")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--tokens", type=int, default=1500, help="prompt tokens of the first turn")
    ap.add_argument("--reply", type=int, default=48, help="tokens of the first turn's reply")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    proc = None
    url = args.url
    if not url:
        cmd = [args.ember, "serve", "--port", "0", "--parallel", "2", "-t", str(args.threads), "--ctx", "2048",
               "--device", args.device]
        if args.model:
            cmd += ["--model", args.model]
        proc, url, _ = ember_server.start(cmd)
    try:
        def count(msgs):
            # The contents' tokens and a few per message for the template.
            text = "\n".join(m["content"] for m in msgs)
            return len(ember_server.post_json(url, "/tokenize", {"content": text})["tokens"]) + 5 * len(msgs)
        rows = []
        stream_chat(url, [{"role": "user", "content": "Hello."}], False, 4, 1)  # warm up
        for rep in range(args.reps):
            msgs = conversation(rep, args.tokens, count)
            t1, reply, _, u1 = stream_chat(url, msgs, True, args.reply, 10 + rep)
            msgs2 = msgs + [{"role": "assistant", "content": reply},
                            {"role": "user", "content": "And which mention a lantern?"}]
            t2, r2, lp2, u2 = stream_chat(url, msgs2, True, 16, 20 + rep)
            t3, r3, lp3, u3 = stream_chat(url, msgs2, False, 16, 20 + rep)
            if (r2, lp2) != (r3, lp3):
                raise RuntimeError(f"rep {rep}: the cache changed the reply:\n{r2!r}\n{r3!r}")
            cached = u2["prompt_tokens_details"]["cached_tokens"]
            rows.append((u1["prompt_tokens"], t1, u2["prompt_tokens"], cached, t2, t3))
            print(f"rep {rep}: first turn {u1['prompt_tokens']} tokens {t1 * 1000:.0f} ms; second turn "
                  f"{u2['prompt_tokens']} tokens ({cached} cached) {t2 * 1000:.0f} ms, "
                  f"without the cache {t3 * 1000:.0f} ms", file=sys.stderr)
        med = lambda k: statistics.median(r[k] for r in rows)
        p1, t1, p2, cached, t2, t3 = (med(k) for k in range(6))
        print("| turn | prompt tokens | cached | time to first token | vs first turn |")
        print("| --- | ---: | ---: | ---: | ---: |")
        print(f"| first | {p1:.0f} | 0 | {t1 * 1000:.0f} ms | 1.00x |")
        print(f"| second, cache off | {p2:.0f} | 0 | {t3 * 1000:.0f} ms | {t3 / t1:.2f}x |")
        print(f"| second, cache on | {p2:.0f} | {cached:.0f} | {t2 * 1000:.0f} ms | {t2 / t1:.2f}x |")
        print(json.dumps({"first_prompt_tokens": p1, "second_prompt_tokens": p2, "cached_tokens": cached,
                          "ttft_first_ms": t1 * 1000, "ttft_second_ms": t2 * 1000,
                          "ttft_second_uncached_ms": t3 * 1000, "ratio": t2 / t1,
                          "same_output": True}))
    finally:
        ember_server.stop(proc)
        os._exit(0)


if __name__ == "__main__":
    main()
