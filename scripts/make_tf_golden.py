#!/usr/bin/env python3
"""Teacher-forced fidelity reference for one GGUF file: the exact function of
its weights next to llama.cpp, in the format of `tests/golden/tf_*.json`.

- exact: a float64 numpy forward pass of the llama graph (RMSNorm, adjacent-
  pair RoPE as ggml's GGML_ROPE_TYPE_NORM, grouped-query attention, SwiGLU)
  over the file's weights dequantized with gguf-py (PyPI `gguf`); every
  activation, the attention and the softmax in float64.
- llama.cpp: llama-cpp-python (0.3.36), `logits_all`, the whole path in one
  `eval`.

Each case's path is its prompt (taken from an existing golden file) plus the
exact reference's own 32 greedy ids; the 33 scored positions run from the
last prompt token to the end of the path.

    python3 scripts/make_tf_golden.py MODEL.gguf --name q4_k_m \\
        --prompts tests/golden/tf_q4_1.json --out tests/golden/tf_q4_k_m.json
"""

import argparse
import datetime
import hashlib
import json
import os

import numpy as np


def meta(r, key, default=None):
    f = r.fields.get(key)
    if f is None:
        return default
    v = f.parts[f.data[0]]
    return v.tolist()[0] if hasattr(v, "tolist") else v


class Exact:
    """The float64 llama forward pass of a GGUF file's dequantized weights."""

    def __init__(self, path):
        import gguf
        from gguf import quants
        r = gguf.GGUFReader(path)
        arch = "llama"
        self.n_layer = meta(r, f"{arch}.block_count")
        self.dim = meta(r, f"{arch}.embedding_length")
        self.n_head = meta(r, f"{arch}.attention.head_count")
        self.n_kv = meta(r, f"{arch}.attention.head_count_kv", self.n_head)
        self.eps = meta(r, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
        self.base = meta(r, f"{arch}.rope.freq_base", 10000.0)
        self.hd = self.dim // self.n_head
        self.rope_dim = meta(r, f"{arch}.rope.dimension_count", self.hd)
        self.w = {}
        for t in r.tensors:
            a = quants.dequantize(t.data, t.tensor_type).astype(np.float64)
            shape = [int(d) for d in reversed(t.shape)]
            self.w[t.name] = a.reshape(shape)
        self.out = self.w.get("output.weight", self.w["token_embd.weight"])

    def norm(self, x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * g

    def rope(self, v, pos):
        # v: (T, heads, hd); rotate adjacent pairs (2i, 2i+1) of the first rope_dim.
        i = np.arange(self.rope_dim // 2)
        freq = self.base ** (-2.0 * i / self.rope_dim)
        ang = np.asarray(pos)[:, None] * freq[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        out = v.copy()
        a, b = v[..., 0:self.rope_dim:2], v[..., 1:self.rope_dim:2]
        out[..., 0:self.rope_dim:2] = a * c - b * s
        out[..., 1:self.rope_dim:2] = a * s + b * c
        return out

    def logits(self, ids):
        """Logits after every token of `ids` (one causal pass)."""
        T = len(ids)
        pos = np.arange(T)
        x = self.w["token_embd.weight"][ids]
        group = self.n_head // self.n_kv
        mask = np.triu(np.full((T, T), -np.inf), 1)
        for l in range(self.n_layer):
            p = lambda n: self.w[f"blk.{l}.{n}.weight"]
            h = self.norm(x, p("attn_norm"))
            q = (h @ p("attn_q").T).reshape(T, self.n_head, self.hd)
            k = (h @ p("attn_k").T).reshape(T, self.n_kv, self.hd)
            v = (h @ p("attn_v").T).reshape(T, self.n_kv, self.hd)
            q, k = self.rope(q, pos), self.rope(k, pos)
            att = np.empty((T, self.n_head, self.hd))
            for hh in range(self.n_head):
                kv = hh // group
                s = q[:, hh, :] @ k[:, kv, :].T / np.sqrt(self.hd) + mask
                s = np.exp(s - s.max(axis=1, keepdims=True))
                s /= s.sum(axis=1, keepdims=True)
                att[:, hh, :] = s @ v[:, kv, :]
            x = x + att.reshape(T, -1) @ p("attn_output").T
            h = self.norm(x, p("ffn_norm"))
            g, u = h @ p("ffn_gate").T, h @ p("ffn_up").T
            x = x + (g / (1 + np.exp(-g)) * u) @ p("ffn_down").T
        return self.norm(x, self.w["output_norm.weight"]) @ self.out.T


def log_softmax(l):
    l = np.asarray(l, dtype=np.float64)
    m = l.max()
    return l - (m + np.log(np.exp(l - m).sum()))


def kl_top(lp_exact, lp_other):
    p = np.exp(lp_exact - np.logaddexp.reduce(lp_exact))
    lq = lp_other - np.logaddexp.reduce(lp_other)
    return float(np.sum(p * (np.log(p) - lq)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--name", required=True, help="weights label, e.g. q4_k_m")
    ap.add_argument("--prompts", required=True, help="a tf_*.json whose cases give the prompts")
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    exact = Exact(a.model)
    from llama_cpp import Llama
    llm = Llama(model_path=a.model, n_ctx=2048, n_batch=512, n_ubatch=512, n_threads=2,
                n_threads_batch=2, logits_all=True, verbose=False)
    src = json.load(open(a.prompts))["cases"][: a.cases]
    cases = []
    for c in src:
        prompt = list(c["prompt_ids"])
        path = list(prompt)
        for _ in range(a.gen):
            path.append(int(np.argmax(exact.logits(path)[-1])))
        el = exact.logits(path)
        llm.reset()
        llm.eval(path)
        ll = np.array(llm.scores[: len(path)], dtype=np.float64)
        positions = []
        for pos in range(len(prompt) - 1, len(path)):
            e, q = el[pos], ll[pos]
            order = np.argsort(-e, kind="stable")
            top10, top50 = order[:10], order[:50]
            elp, qlp = log_softmax(e), log_softmax(q)
            qord = np.argsort(-q, kind="stable")
            positions.append({
                "pos": pos,
                "next_path_id": path[pos + 1] if pos + 1 < len(path) else None,
                "exact_top10": [[int(i), float(e[i])] for i in top10],
                "exact_margin": float(e[order[0]] - e[order[1]]),
                "exact_top50_logprobs": [[int(i), float(elp[i])] for i in top50],
                "llama_top10": [[int(i), float(q[i])] for i in qord[:10]],
                "llama_margin": float(q[qord[0]] - q[qord[1]]),
                "llama_logits_at_exact_top10": [float(q[i]) for i in top10],
                "llama_logprobs_at_exact_top50": [float(qlp[i]) for i in top50],
                "kl_exact_llama_top50": kl_top(elp[top50], qlp[top50]),
            })
        qual = [p for p in positions if p["exact_margin"] > 0.02]
        agree = lambda ps: sum(1 for p in ps if p["llama_top10"][0][0] == p["exact_top10"][0][0])
        d = [abs(p["llama_logits_at_exact_top10"][j] - p["exact_top10"][j][1])
             for p in positions for j in range(10)]
        kls = [p["kl_exact_llama_top50"] for p in positions]
        cases.append({
            "name": c["name"], "prompt_ids": prompt, "path_ids": path, "n_prompt": len(prompt),
            "positions": positions,
            "llama_summary": {
                "n_positions": len(positions), "n_qualifying": len(qual),
                "top1_agree_qualifying": agree(qual), "top1_agree_all_positions": agree(positions),
                "max_abs_dlogit_exact_top10": max(d), "mean_abs_dlogit_exact_top10": sum(d) / len(d),
                "mean_kl_exact_top50": sum(kls) / len(kls), "max_kl_exact_top50": max(kls),
            },
        })
        s = cases[-1]["llama_summary"]
        print(f"{c['name']}: llama.cpp top-1 {s['top1_agree_qualifying']}/{s['n_qualifying']}, "
              f"mean KL {s['mean_kl_exact_top50']:.2e}")
    sha = hashlib.sha256(open(a.model, "rb").read()).hexdigest()
    out = {
        "meta": {
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "script": "scripts/make_tf_golden.py", "weights": a.name,
            "model_file": os.path.basename(a.model), "model_sha256": sha,
            "path_source": f"prompt_ids from {os.path.basename(a.prompts)}, then the exact "
                           f"reference's {a.gen} greedy ids",
            "exact": "numpy float64 forward over the weights dequantized with gguf-py",
            "llama": "llama.cpp via llama-cpp-python 0.3.36, logits_all, whole path in one eval",
        },
        "cases": cases,
    }
    with open(a.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
