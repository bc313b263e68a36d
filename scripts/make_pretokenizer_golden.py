#!/usr/bin/env python3
"""Makes tests/golden/pretokenizer_cases.json: how the HF `tokenizers` library
(pip install tokenizers) cuts strings into words with each pre-tokenizer's
published expression, for ember's hand-written splitters to match.

Run from the repository root: python3 scripts/make_pretokenizer_golden.py
"""
import json
import random

import tokenizers
from tokenizers import Regex
from tokenizers.pre_tokenizers import Sequence, Split

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

PRE = {
    "gpt2": Split(Regex(GPT2), "isolated"),
    "smollm": Sequence([Split(Regex(r"\p{N}"), "isolated"), Split(Regex(GPT2), "isolated")]),
    "llama3": Split(Regex(LLAMA3), "isolated"),
}

FIXED = [
    "Hello world, it's   me 2024!\n\n",
    "I'M SURE they'LL say we'Ve won, you'RE right",
    "  leading and trailing  ",
    "tabs\t\tand\r\nwindows\r\n\r\nlines",
    "1234567 12 3.14159 ½ ² ٣ Ⅻ",
    "a+b=c; x^2 ~ y|z <tag> $5 #1 @me",
    "café naïve Straße Ærø 中文字符 한국어 😀👨‍👩‍👧 ❤️",
    "'s 's's ''' '",
    "end with space ",
    "\u00a0nbsp\u3000ideographic space",
    "?!\n\n  x",
    "",
]

ALPHABET = list("aZé中한 \t\n\r'0129½.,!?<>|+=$😀\u00a0\u200d\ufe0fsStTmMdDlLrReEvV")


def main():
    rng = random.Random(20261128)
    texts = FIXED + ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 24))) for _ in range(300)]
    out = {
        "meta": {
            "made_by": "scripts/make_pretokenizer_golden.py",
            "engine": f"HF tokenizers {tokenizers.__version__}, Split(Regex(expr), 'isolated')",
            "expressions": {"gpt2": GPT2, "llama3": LLAMA3, "smollm": "\\p{N} then gpt2"},
        },
        "cases": {
            name: [[t, [w for w, _ in pre.pre_tokenize_str(t)]] for t in texts]
            for name, pre in PRE.items()
        },
    }
    with open("tests/golden/pretokenizer_cases.json", "w") as f:
        json.dump(out, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
