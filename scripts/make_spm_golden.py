#!/usr/bin/env python3
"""Makes the SentencePiece golden data: tests/golden/spm_vocab.json and spm_cases.json.

1. Trains a small SentencePiece-style BPE vocabulary (300 merges over the
   English text below, `▁` for spaces, 256 `<0xXX>` byte pieces, <unk> <s> </s>,
   and one user-defined piece) and writes it to spm_vocab.json.
2. Has ember write the GGUF of that vocabulary
   (`cargo run -p ember-tests --example spm_gguf -- OUT`), the same bytes the
   test builds (the test checks the sha256 recorded here).
3. Tokenizes the cases with llama.cpp through llama-cpp-python (vocab_only)
   and records the ids and the detokenized text.

Run from the repository root: python3 scripts/make_spm_golden.py
"""
import collections
import hashlib
import json
import subprocess
import sys
import tempfile

TEXT = """
The quick brown fox jumps over the lazy dog. Then the dog sleeps in the sun,
and the fox runs into the forest where the other foxes wait. There is nothing
in the world that the fox likes better than a quiet afternoon in the shade of
the old oak tree, thinking about the things that foxes think about: rabbits,
the weather, and whether the farmer has left the gate of the hen house open.
In the evening the wind turns cold and the animals return to their homes.
"""

N_MERGES = 300


def train():
    words = collections.Counter("\u2581" + w for w in TEXT.split())
    chars = sorted({c for w in words for c in w})
    vocab = {w: list(w) for w in words}
    merges = []
    for _ in range(N_MERGES):
        pairs = collections.Counter()
        for w, n in words.items():
            s = vocab[w]
            for a, b in zip(s, s[1:]):
                pairs[a, b] += n
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append(a + b)
        for w in words:
            s, out, i = vocab[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            vocab[w] = out
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    seen = set()
    for i, m in enumerate(merges):
        if m not in seen:
            seen.add(m)
            pieces.append((m, -float(i), 1))
    for i, c in enumerate(chars):
        if c not in seen:
            seen.add(c)
            pieces.append((c, -1000.0 - i, 1))
    pieces.append(("<tool>", 0.0, 4))
    return pieces


CASES = [
    "The quick brown fox",
    "the lazy dog sleeps",
    " leading space",
    "  two leading spaces and trailing  ",
    "line one\nline two\n",
    "unknown words: zebra xylophone",
    "café 中文 😀",
    "<s>inside</s> text with <unk> and <tool> here",
    "thethethe foxfoxfox",
    "a",
    "",
    "Fox, FOX, fox!",
]


def detokenize(llm, ids, special):
    """llama_detokenize(remove_special=False, unparse_special=special), as for the GPT-2 cases."""
    import ctypes

    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    buf = ctypes.create_string_buffer(4096)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, len(buf), False, special)
    assert n >= 0, n
    return buf.raw[:n].decode("utf-8", "replace")


def main():
    pieces = train()
    vocab = {"pieces": [[p, s, t] for p, s, t in pieces]}
    with open("tests/golden/spm_vocab.json", "w") as f:
        json.dump(vocab, f, ensure_ascii=False, indent=0)
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/spm.gguf"
        subprocess.run(
            ["cargo", "run", "-q", "-p", "ember-tests", "--example", "spm_gguf", "--", path],
            check=True,
        )
        sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
        from llama_cpp import Llama

        llm = Llama(model_path=path, vocab_only=True, verbose=False)
        cases = []
        for text in CASES:
            c = {"text": text}
            for bos in (False, True):
                for special in (False, True):
                    ids = llm.tokenize(text.encode(), add_bos=bos, special=special)
                    c[f"ids_bos_{str(bos).lower()}_special_{str(special).lower()}"] = ids
            ids = c["ids_bos_false_special_true"]
            for special in (False, True):
                c[f"detok_special_{str(special).lower()}"] = detokenize(llm, ids, special)
            cases.append(c)
    import llama_cpp

    out = {
        "meta": {
            "made_by": "scripts/make_spm_golden.py",
            "engine": f"llama.cpp via llama-cpp-python {llama_cpp.__version__} (vocab_only)",
            "gguf_sha256": sha,
            "tokenize": "llm.tokenize(text, add_bos=<bos>, special=<special>)",
            "detokenize": "llama_detokenize(ids_bos_false_special_true, remove_special=False, unparse_special=<flag>)",
        },
        "cases": cases,
    }
    with open("tests/golden/spm_cases.json", "w") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
    print("wrote tests/golden/spm_vocab.json and spm_cases.json", file=sys.stderr)


if __name__ == "__main__":
    main()
