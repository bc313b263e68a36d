#!/usr/bin/env python3
"""The HF `tokenizers` library on the text of benches/benches/tokenizer.rs, for
comparison with `cargo bench -p ember-benches --bench tokenizer`.

Rebuilds SmolLM2's tokenizer from the GGUF vocabulary (BPE over the file's
tokens and merges; digits split, then GPT-2 byte-level), times encoding and
decoding the 1 MB text (one thread, median of 10), and checks that
`ember tokenize` gives the same ids for the whole text.

    pip install tokenizers gguf
    python3 scripts/bench_tokenizer_hf.py [MODEL.gguf]
"""
import json
import os
import statistics
import subprocess
import sys
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"

from gguf import GGUFReader  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402


def text():
    try:
        base = open("/usr/share/common-licenses/GPL-3", encoding="utf-8").read()
    except OSError:
        base = "The quick brown fox jumps over the lazy dog, 1234 times.\n" * 600
    s = ""
    while len((s + base).encode()) <= 1 << 20:
        s += base
    return s


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
        "~/.cache/ember/SmolLM2-135M-Instruct.Q8_0.gguf"
    )
    r = GGUFReader(model)
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ", 1)) for m in r.fields["tokenizer.ggml.merges"].contents()]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    t = text()
    nbytes = len(t.encode())
    enc, dec = [], []
    for _ in range(10):
        t0 = time.perf_counter()
        ids = tok.encode(t, add_special_tokens=False).ids
        enc.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        back = tok.decode(ids)
        dec.append(time.perf_counter() - t0)
    assert back == t
    mib = nbytes / (1 << 20)
    print(f"HF tokenizers: encode {mib / statistics.median(enc):.1f} MiB/s, "
          f"decode {mib / statistics.median(dec):.1f} MiB/s ({len(ids)} tokens, {nbytes} bytes)")
    ember = subprocess.run(
        ["cargo", "run", "-q", "--release", "-p", "ember-runner", "--", "tokenize", "-", "--json",
         "--model", model],
        input=t.encode(), capture_output=True, check=True,
    )
    same = json.loads(ember.stdout)["ids"] == ids
    print(f"ember tokenize gives the same {len(ids)} ids: {same}")


if __name__ == "__main__":
    main()
