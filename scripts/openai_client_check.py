#!/usr/bin/env python3
"""Drives `ember serve` with the official `openai` Python client, as a user would.

Starts the server on a free loopback port (or uses --url), then makes a chat
completion, a streamed chat completion, a completion and a streamed
completion, lists the models, and checks that a bad request raises the
client's BadRequestError. Exits non-zero on any failure.

    python3 -m pip install openai
    python3 scripts/openai_client_check.py --ember target/release/ember [--model FILE.gguf]
"""
import argparse
import re
import subprocess
import sys
import threading

import openai


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ember", default="target/release/ember")
    ap.add_argument("--model", help="GGUF file (default: ember's default model)")
    ap.add_argument("--url", help="an already running server")
    args = ap.parse_args()
    proc = None
    url = args.url
    if not url:
        cmd = [args.ember, "serve", "--port", "0", "--parallel", "2", "--ctx", "512"]
        if args.model:
            cmd += ["--model", args.model]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:
            sys.stderr.write(line)
            m = re.search(r"on (http://[0-9.:]+)", line)
            if m:
                url = m.group(1)
                break
        if not url:
            sys.exit("the server did not start")
        threading.Thread(target=lambda: [sys.stderr.write(l) for l in proc.stderr], daemon=True).start()
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)

        models = client.models.list()
        model = models.data[0].id
        print(f"models: {[m.id for m in models.data]}")

        chat = client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": "You are a helpful assistant."},
                      {"role": "user", "content": "What is the capital of France?"}],
            max_tokens=32, temperature=0)
        text = chat.choices[0].message.content
        print(f"chat: {text!r} ({chat.choices[0].finish_reason}, {chat.usage})")
        assert "Paris" in text, text
        assert chat.choices[0].finish_reason in ("stop", "length")
        assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

        pieces, finish = [], None
        for chunk in client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "What is the capital of France?"}],
                max_tokens=32, temperature=0, stream=True):
            d = chunk.choices[0].delta
            if d.content:
                pieces.append(d.content)
            finish = chunk.choices[0].finish_reason or finish
        streamed = "".join(pieces)
        print(f"streamed chat: {streamed!r} in {len(pieces)} chunks ({finish})")
        assert len(pieces) > 1 and finish in ("stop", "length")

        comp = client.completions.create(model=model, prompt="The three primary colors are",
                                         max_tokens=16, temperature=0.7, seed=42)
        print(f"completion: {comp.choices[0].text!r} ({comp.choices[0].finish_reason})")
        assert comp.choices[0].text and comp.usage.completion_tokens > 0
        again = client.completions.create(model=model, prompt="The three primary colors are",
                                          max_tokens=16, temperature=0.7, seed=42)
        assert again.choices[0].text == comp.choices[0].text, "a seed repeats its completion"

        parts = [c.choices[0].text for c in client.completions.create(
            model=model, prompt="Once upon a time", max_tokens=12, stream=True, seed=1)]
        print(f"streamed completion: {''.join(parts)!r}")
        assert "".join(parts)

        try:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                           temperature=-1)
            raise AssertionError("a negative temperature was accepted")
        except openai.BadRequestError as e:
            print(f"bad request: {e.status_code} {e.body}")
        print("openai client check: ok")
    finally:
        if proc:
            proc.terminate()
            code = proc.wait(timeout=60)
            if code != 0:
                sys.exit(f"the server exited with {code} after SIGTERM")


if __name__ == "__main__":
    main()
