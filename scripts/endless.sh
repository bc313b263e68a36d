#!/usr/bin/env bash
# Endless generation in bounded memory: `ember run -n 20000 --window 252 --sinks 4`
# against the same run with -n 1000. Prints peak RSS of both (GNU time) and the
# decode speed over the 500 tokens that end at token 500 and at token 20,000.
# Usage: scripts/endless.sh [MODEL] [N]
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-${EMBER_HOME:-$HOME/.cache/ember}/SmolLM2-135M-Instruct.Q8_0.gguf}"
n="${2:-20000}"
cargo build -q --release -p ember-runner
run() {
    /usr/bin/time -f '%M' -o "$tmp/rss.$1" ./target/release/ember run -m "$model" \
        "Once upon a time" -n "$1" --window 252 --sinks 4 --ignore-eos --temp 0.8 \
        --seed 1 --json > "$tmp/out.$1" 2>/dev/null
}
tmp="$(mktemp -d)"
run 1000
run "$n"
python3 - "$tmp" "$n" <<'PY'
import json, sys
tmp, n = sys.argv[1], int(sys.argv[2])
rss = {k: int(open(f"{tmp}/rss.{k}").read().split()[-1]) for k in (1000, n)}
out = json.load(open(f"{tmp}/out.{n}"))
w = out["decode_tok_s_per_500"]
print(json.dumps({
    "generated": out["generated_tokens"],
    "peak_rss_kib_1000": rss[1000], "peak_rss_kib_n": rss[n],
    "rss_ratio": rss[n] / rss[1000],
    "tok_s_at_500": w[0], "tok_s_at_n": w[-1], "speed_ratio": w[-1] / w[0],
    "tok_s_mean": out["decode_tok_s"], "kv": out["kv"],
    "tok_s_per_500": [round(x, 1) for x in w],
}))
PY
rm -rf "$tmp"
