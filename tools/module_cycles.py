#!/usr/bin/env python3
"""Lists ember-core's top-level module imports and any import cycle among them.

A module is a file or folder directly under core/src; an import is any
`crate::name` (or a name inside `crate::{...}`) outside comments, tests
included. Exits non-zero when a cycle exists.
"""
import re, sys, pathlib

root = pathlib.Path(__file__).resolve().parent.parent / "core" / "src"
edges = {}
for f in root.rglob("*.rs"):
    rel = f.relative_to(root)
    mod = rel.parts[0].removesuffix(".rs")
    if mod in ("lib",):
        continue
    text = "\n".join(l for l in f.read_text().splitlines() if not l.lstrip().startswith("//"))
    deps = set(re.findall(r"crate::([a-z_0-9]+)", text))
    for group in re.findall(r"crate::\{([^}]*)\}", text, re.S):
        deps |= {g.strip().split("::")[0] for g in group.split(",") if g.strip()}
    deps.discard(mod)
    deps = {d for d in deps if (root / d).exists() or (root / f"{d}.rs").exists()}
    edges.setdefault(mod, set()).update(deps)

for m in sorted(edges):
    print(f"{m:12} -> {', '.join(sorted(edges[m]))}")

# Cycles: strongly connected components with more than one module.
index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]
def visit(v):
    index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(sorted(comp))
for v in list(edges):
    if v not in index: visit(v)
for c in sccs:
    print("cycle:", " <-> ".join(c))
sys.exit(1 if sccs else 0)
