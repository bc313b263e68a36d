#!/usr/bin/env python3
"""Drives `ember serve` with the official `openai` Python client, as a user would.

Starts the server on a free loopback port (or uses --url), then makes a chat
completion, a streamed chat completion, a completion and a streamed
completion, lists the models, asks for log-probabilities (chat, streamed chat
and completions) and checks that they are consistent, asks for structured
output (`response_format` with JSON schemas: nested objects, arrays, enums,
numbers, strings with escapes, `anyOf`, `$ref`; and
`json_object`) and validates each reply against its schema with the
`jsonschema` package, and checks that a bad request (an unsupported schema
keyword among them) raises the client's BadRequestError. Then it starts a second server
with an API key and checks that a wrong key raises AuthenticationError and
the right one is served; and, where `prometheus_client` is installed, parses
/metrics with its parser. Exits non-zero on any failure.

    python3 -m pip install openai prometheus_client jsonschema
    python3 scripts/openai_client_check.py --ember target/release/ember [--model FILE.gguf]
"""
import argparse
import json
import math
import threading
import urllib.request

import ember_server
import jsonschema
import openai

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    text_string_to_metric_families = None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ember", default="target/release/ember")
    ap.add_argument("--model", help="GGUF file (default: ember's default model)")
    ap.add_argument("--url", help="an already running server")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--streams", type=int, default=8, help="concurrent streamed completions")
    args = ap.parse_args()
    proc = None
    url = args.url
    if not url:
        proc, url = start(args, [])
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

        check_logprobs(client, model)
        if args.device == "cpu":
            # The grammar masks the logits on the host whatever computes
            # them: checked once, where replies are fast.
            check_structured(client, model)
        check_concurrent(client, model, args.streams)

        try:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                           temperature=-1)
            raise AssertionError("a negative temperature was accepted")
        except openai.BadRequestError as e:
            print(f"bad request: {e.status_code} {e.body}")
        try:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                           logprobs=True, top_logprobs=21)
            raise AssertionError("top_logprobs=21 was accepted")
        except openai.BadRequestError as e:
            assert e.body["param"] == "top_logprobs", e.body
        check_metrics(url, None, "/v1/chat/completions")
    finally:
        ember_server.stop(proc)
    if not args.url:
        check_api_key(args)
    print("openai client check: ok")


def start(args, extra):
    """Starts `ember serve` on a free port; returns the process and its URL."""
    cmd = [args.ember, "serve", "--port", "0", "--parallel", str(max(2, args.streams)), "--ctx", "512",
           "--device", args.device] + extra
    if args.model:
        cmd += ["--model", args.model]
    proc, url, _ = ember_server.start(cmd, echo=True)
    return proc, url


def check_concurrent(client, model, n):
    """n streamed greedy completions of two prompts at once, on n slots: each
    text is the one its prompt gets alone (a sequence's numbers do not depend
    on what else is in the batch)."""
    prompts = ["The capital of France is", "Once upon a time"]
    alone = {p: client.completions.create(model=model, prompt=p, max_tokens=8, temperature=0).choices[0].text
             for p in prompts}
    out = [None] * n

    def one(i):
        p = prompts[i % len(prompts)]
        out[i] = (p, "".join(c.choices[0].text for c in client.completions.create(
            model=model, prompt=p, max_tokens=8, temperature=0, stream=True)))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, r in enumerate(out):
        assert r is not None, f"stream {i} failed"
        assert r[1] == alone[r[0]], (i, r, alone[r[0]])
    print(f"{n} concurrent streams: each the text of its prompt alone")


def check_logprobs(client, model):
    """Log-probabilities through the client's own types: chat (whole and
    streamed) and completions, each consistent with itself and the other."""
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    chat = client.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0,
                                          logprobs=True, top_logprobs=3)
    content = chat.choices[0].logprobs.content
    text = chat.choices[0].message.content
    assert content, "chat logprobs are present"
    for e in content:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3, e
        tops = [t.logprob for t in e.top_logprobs]
        assert tops == sorted(tops, reverse=True), tops
        # Greedy: the chosen token is the most likely one.
        assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == e.logprob, e
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token, e
        assert sum(math.exp(t) for t in tops) <= 1 + 1e-5, tops
    assert b"".join(bytes(e.bytes) for e in content).decode() == text, (content, text)
    print(f"chat logprobs: {[(e.token, round(e.logprob, 3)) for e in content]}")

    streamed = []
    for chunk in client.chat.completions.create(model=model, messages=msgs, max_tokens=12, temperature=0,
                                                logprobs=True, top_logprobs=3, stream=True):
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
            streamed.extend(chunk.choices[0].logprobs.content)
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content], streamed

    comp = client.completions.create(model=model, prompt="The capital of France is", max_tokens=6,
                                     temperature=0, logprobs=2)
    lp = comp.choices[0].logprobs
    n = comp.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n, lp
    for tok, p, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert p <= 0 and top[tok] == p and len(top) <= 3, (tok, p, top)
        assert max(top.values()) == p, (tok, p, top)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset), lp.text_offset
    print(f"completion logprobs: {list(zip(lp.tokens, [round(p, 3) for p in lp.token_logprobs]))}")


# Strings and arrays are bounded so that every reply ends within max_tokens.
NAME = {"type": "string", "maxLength": 24}
SCHEMAS = [
    ("person", "Describe a person who lives in Paris as JSON.", {
        "type": "object",
        "properties": {
            "name": NAME,
            "age": {"type": "integer"},
            "address": {"type": "object", "properties": {"street": NAME, "city": NAME,
                                                         "zip": {"type": "string", "maxLength": 8}},
                        "required": ["city", "zip"], "additionalProperties": False},
        },
        "required": ["name", "age", "address"], "additionalProperties": False}),
    ("tags", "Give three tags for a blog post about cooking, as a JSON array.", {
        "type": "array", "items": NAME, "minItems": 1, "maxItems": 4}),
    ("product", "A red shirt costs 19.99 dollars; 3 are left. Answer in JSON.", {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "price": {"type": "number"},
                       "count": {"type": "integer"}, "on_sale": {"type": "boolean"}},
        "required": ["color", "price", "count", "on_sale"], "additionalProperties": False}),
    ("quote", 'Quote a line of Windows path like C:\\temp and a "quoted" word, as JSON.', {
        "type": "object", "properties": {"line": {"type": "string", "maxLength": 40}},
        "required": ["line"], "additionalProperties": False}),
    ("maybe", "Is the sky green? Answer in JSON.", {
        "type": "object",
        "properties": {"answer": {"anyOf": [{"type": "string", "maxLength": 12}, {"type": "null"}]},
                       "sure": {"type": "boolean", "nullable": True}},
        "required": ["answer", "sure"], "additionalProperties": False}),
    ("trip", "A trip from Paris to Rome, in JSON.", {
        "$defs": {"place": {"type": "object", "properties": {"city": NAME, "country": NAME},
                            "required": ["city", "country"], "additionalProperties": False}},
        "type": "object",
        "properties": {"from": {"$ref": "#/$defs/place"}, "to": {"$ref": "#/$defs/place"}},
        "required": ["from", "to"], "additionalProperties": False}),
]


def check_structured(client, model):
    """response_format through the client: each reply parses and validates
    against its schema (greedy and seeded); json_object gives an object; an
    unsupported keyword is a 400 that names it."""
    for name, prompt, schema in SCHEMAS:
        for temperature, seed in [(0, 0), (0.8, 7)]:
            r = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}], max_tokens=300,
                temperature=temperature, seed=seed,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": name, "schema": schema, "strict": True}})
            text = r.choices[0].message.content
            assert r.choices[0].finish_reason == "stop", (name, r.choices[0].finish_reason, text)
            jsonschema.validate(json.loads(text), schema)
        print(f"json_schema {name}: {text!r}")
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Describe a cat in JSON."}],
        max_tokens=300, temperature=0.8, seed=3, response_format={"type": "json_object"})
    obj = json.loads(r.choices[0].message.content)
    assert isinstance(obj, dict), obj
    print(f"json_object: {r.choices[0].message.content!r}")
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "string", "pattern": "^a+$"}}})
        raise AssertionError("an unsupported schema keyword was accepted")
    except openai.BadRequestError as e:
        assert e.body["param"] == "response_format" and "pattern" in e.body["message"], e.body
        print(f"unsupported schema keyword: {e.status_code} {e.body['message']}")


def check_metrics(url, key, route):
    """/metrics parses with prometheus_client's own parser (when installed),
    and counts at least one answer (200) on `route`."""
    if text_string_to_metric_families is None:
        print("metrics: prometheus_client is not installed; skipped its parser")
        return
    req = urllib.request.Request(url + "/metrics")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=60) as r:
        text = r.read().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name, ty in [("ember_requests", "counter"), ("ember_prompt_tokens", "counter"),
                     ("ember_generated_tokens", "counter"), ("ember_time_to_first_token_seconds", "histogram"),
                     ("ember_time_per_output_token_seconds", "histogram"), ("ember_queue_depth", "gauge"),
                     ("ember_slots_busy", "gauge")]:
        assert name in fams and fams[name].type == ty, (name, fams.get(name))
    served = sum(s.value for s in fams["ember_requests"].samples
                 if s.labels.get("route") == route and s.labels.get("code") == "200")
    generated = [s.value for s in fams["ember_generated_tokens"].samples if s.name == "ember_generated_tokens_total"]
    assert served >= 1 and generated and generated[0] > 0, (route, served, generated)
    print(f"metrics: {len(fams)} families parse with prometheus_client; {int(generated[0])} tokens generated")


def check_api_key(args):
    """A server with a key: the client with a wrong key gets AuthenticationError."""
    key = "sk-ember-check"
    proc, url = start(args, ["--api-key", key])
    try:
        bad = openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0, timeout=60)
        try:
            bad.models.list()
            raise AssertionError("a wrong key was accepted")
        except openai.AuthenticationError as e:
            print(f"wrong key: {e.status_code} {e.body}")
        good = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=300)
        model = good.models.list().data[0].id
        r = good.completions.create(model=model, prompt="Hello", max_tokens=2)
        assert r.choices[0].text is not None
        with urllib.request.urlopen(url + "/health", timeout=60) as h:
            assert h.status == 200
        check_metrics(url, key, "/v1/completions")
        print("api key: a wrong key gets AuthenticationError, the right one is served, /health is open")
    finally:
        ember_server.stop(proc)


if __name__ == "__main__":
    main()
