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
    """The float64 forward pass of a GGUF file's dequantized weights, for
    every family Ember runs (llama, qwen2, qwen3, phi3, gemma3)."""

    def __init__(self, path):
        import gguf
        from gguf import quants
        r = gguf.GGUFReader(path)
        arch = r.fields["general.architecture"].contents()
        self.arch = arch
        self.n_layer = meta(r, f"{arch}.block_count")
        self.dim = meta(r, f"{arch}.embedding_length")
        self.n_head = meta(r, f"{arch}.attention.head_count")
        self.n_kv = meta(r, f"{arch}.attention.head_count_kv", self.n_head)
        self.eps = meta(r, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
        self.base = meta(r, f"{arch}.rope.freq_base", 10000.0)
        self.hd = meta(r, f"{arch}.attention.key_length", self.dim // self.n_head)
        self.rope_dim = meta(r, f"{arch}.rope.dimension_count", self.hd)
        self.neox = arch != "llama"
        self.window = meta(r, f"{arch}.attention.sliding_window", 0) if arch == "gemma3" else 0
        self.base_swa = meta(r, f"{arch}.rope.freq_base_swa", 10000.0)
        self.softcap = meta(r, f"{arch}.final_logit_softcapping", 0.0)
        self.w = {}
        for t in r.tensors:
            a = quants.dequantize(t.data, t.tensor_type).astype(np.float64)
            shape = [int(d) for d in reversed(t.shape)]
            self.w[t.name] = a.reshape(shape)
        self.out = self.w.get("output.weight", self.w["token_embd.weight"])
        self.factors = self.w.get("rope_freqs.weight", self.w.get("rope_factors_short.weight"))

    def norm(self, x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * g

    def windowed(self, l):
        return self.window > 0 and l % 6 < 5

    def rope(self, v, pos, base, factors):
        # v: (T, heads, hd); rotate pairs of the first rope_dim dimensions:
        # adjacent (2i, 2i+1) for llama (ggml NORM), halves (i, i+d/2) else.
        d = self.rope_dim
        i = np.arange(d // 2)
        freq = base ** (-2.0 * i / d)
        if factors is not None:
            freq = freq / factors
        ang = np.asarray(pos)[:, None] * freq[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        out = v.copy()
        if self.neox:
            a, b = v[..., : d // 2], v[..., d // 2 : d]
            out[..., : d // 2] = a * c - b * s
            out[..., d // 2 : d] = a * s + b * c
        else:
            a, b = v[..., 0:d:2], v[..., 1:d:2]
            out[..., 0:d:2] = a * c - b * s
            out[..., 1:d:2] = a * s + b * c
        return out

    def logits(self, ids):
        """Logits after every token of `ids` (one causal pass)."""
        T = len(ids)
        pos = np.arange(T)
        x = self.w["token_embd.weight"][ids]
        if self.arch == "gemma3":
            x = x * np.sqrt(self.dim)
        group = self.n_head // self.n_kv
        causal = np.triu(np.full((T, T), -np.inf), 1)
        i, j = np.arange(T)[:, None], np.arange(T)[None, :]
        windowed = np.where(j <= i - self.window, -np.inf, 0.0) + causal if self.window else causal
        qd, kvd = self.n_head * self.hd, self.n_kv * self.hd
        for l in range(self.n_layer):
            w = lambda n, kind="weight": self.w.get(f"blk.{l}.{n}.{kind}")
            h = self.norm(x, w("attn_norm"))
            if w("attn_qkv") is not None:
                qkv = h @ w("attn_qkv").T
                q, k, v = qkv[:, :qd], qkv[:, qd:qd + kvd], qkv[:, qd + kvd:]
            else:
                q, k, v = h @ w("attn_q").T, h @ w("attn_k").T, h @ w("attn_v").T
            for t, name in ((q, "attn_q"), (k, "attn_k"), (v, "attn_v")):
                if w(name, "bias") is not None:
                    t += w(name, "bias")
            q = q.reshape(T, self.n_head, self.hd)
            k = k.reshape(T, self.n_kv, self.hd)
            v = v.reshape(T, self.n_kv, self.hd)
            if w("attn_q_norm") is not None:
                q, k = self.norm(q, w("attn_q_norm")), self.norm(k, w("attn_k_norm"))
            swa = self.windowed(l)
            base, factors = (self.base_swa, None) if swa else (self.base, self.factors)
            q, k = self.rope(q, pos, base, factors), self.rope(k, pos, base, factors)
            mask = windowed if swa else causal
            att = np.empty((T, self.n_head, self.hd))
            for hh in range(self.n_head):
                kv = hh // group
                s = q[:, hh, :] @ k[:, kv, :].T / np.sqrt(self.hd) + mask
                s = np.exp(s - s.max(axis=1, keepdims=True))
                s /= s.sum(axis=1, keepdims=True)
                att[:, hh, :] = s @ v[:, kv, :]
            o = att.reshape(T, -1) @ w("attn_output").T
            if w("post_attention_norm") is not None:
                o = self.norm(o, w("post_attention_norm"))
            x = x + o
            h = self.norm(x, w("ffn_norm"))
            if w("ffn_gate") is not None:
                g, u = h @ w("ffn_gate").T, h @ w("ffn_up").T
            else:
                gu = h @ w("ffn_up").T
                g, u = gu[:, : gu.shape[1] // 2], gu[:, gu.shape[1] // 2:]
            if self.arch == "gemma3":
                act = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
            else:
                act = g / (1 + np.exp(-g))
            o = (act * u) @ w("ffn_down").T
            if w("post_ffw_norm") is not None:
                o = self.norm(o, w("post_ffw_norm"))
            x = x + o
        out = self.norm(x, self.w["output_norm.weight"]) @ self.out.T
        if self.softcap:
            out = self.softcap * np.tanh(out / self.softcap)
        return out


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
    ap.add_argument("--prompts", help="a tf_*.json whose cases give the prompts")
    ap.add_argument("--texts", help="a JSON list of prompt texts, tokenized by llama.cpp (BOS added)")
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    exact = Exact(a.model)
    from llama_cpp import Llama
    llm = Llama(model_path=a.model, n_ctx=2048, n_batch=512, n_ubatch=512, n_threads=2,
                n_threads_batch=2, logits_all=True, verbose=False)
    if a.texts:
        texts = json.load(open(a.texts))
        src = [{"name": f"text{i}", "prompt_ids": llm.tokenize(t.encode(), add_bos=True)}
               for i, t in enumerate(texts)][: a.cases]
    else:
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
            "path_source": f"prompt_ids from {os.path.basename(a.prompts or a.texts)}, then the exact "
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
