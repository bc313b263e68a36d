#!/usr/bin/env python3
"""Makes tests/golden/pretokenizer_cases.json: how the HF `tokenizers` library
(pip install tokenizers) cuts strings into words with each pre-tokenizer's
published expression, for ember's hand-written splitters to match. Keys are
`tokenizer.ggml.pre` names; each is a sequence of expressions (copied from
llama.cpp's src/llama-vocab.cpp, llama-cpp-python 0.3.36), each expression
applied to every word the previous one made, as an isolated split.

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
QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN35 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
DEEPSEEK_LLM = [
    r"[\r\n]",
    r"\s?[" + (
        "A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-"
        "\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-"
        "\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5"
        "\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00"
        "-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-"
        "\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-"
        "\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-"
        "\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149"
        "\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d"
        "\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13"
        "-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
        "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
        "\U0001e900-\U0001e943"
    ) + "]+",
    r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
    r"\s+$",
    r"[一-龥ࠀ-一가-퟿]+",
    r"\p{N}+",
]
DEEPSEEK_CODER = [r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"]
DEEPSEEK_V3 = [
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
]
FALCON = [r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"]

EXPRESSIONS = {
    "gpt2": [GPT2],
    "smollm": [r"\p{N}", GPT2],
    "llama3": [LLAMA3],
    "qwen2": [QWEN2],
    "qwen35": [QWEN35],
    "deepseek-llm": DEEPSEEK_LLM,
    "deepseek-coder": DEEPSEEK_CODER,
    "deepseek-v3": DEEPSEEK_V3,
    "falcon": FALCON,
}
PRE = {name: Sequence([Split(Regex(e), "isolated") for e in exprs]) for name, exprs in EXPRESSIONS.items()}

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
    "x\u0301y \u0301\u0302ab \u0915\u094d\u0937 e\u0301\u0301 \u20dd!",
    "日本語のテキスト、カタカナ！ 中文，标点。 한국어 ٣٤٥ 12345678",
    "$100 +5% €20 ©2024 a^b `code` 'Hello' (x) .NET 'tis",
    "\u3000\u3000全角　スペース ＡＢＣ１２３！？ “quoted” ‘single’",
    "trailing whitespace \t \n",
    "αβγ Ωmega Жук Ünïcödé ǅ ẞ 𐐀𐐁",
]

ALPHABET = list(
    "aZé中한 \t\n\r'0129½.,!?<>|+=$😀\u00a0\u200d\ufe0fsStTmMdDlLrReEvV"
    "\u0301\u094dあカ€^`＠！\u3000“”αЖ٣。-\\"
)


def main():
    rng = random.Random(20261128)
    texts = FIXED + ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 24))) for _ in range(300)]
    out = {
        "meta": {
            "made_by": "scripts/make_pretokenizer_golden.py",
            "engine": f"HF tokenizers {tokenizers.__version__}, Sequence of Split(Regex(expr), 'isolated')",
            "expressions": EXPRESSIONS,
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
