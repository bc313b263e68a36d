#!/usr/bin/env bash
# Perplexity of SmolLM2 (Q8_0) on English text: dense chunks of 2048 (every
# token scored, and llama.cpp's second halves) against the streaming ring
# (4 sinks + 252 window, and 0 sinks + 256), two runs at a time. Text: these licence texts from
# /usr/share/common-licenses (Debian base-files), concatenated, about 26k tokens:
#   GPL-3 GFDL-1.3 LGPL-2.1 MPL-2.0 Apache-2.0 Artistic
# Usage: scripts/streaming_eval.sh [MODEL]  (prints one JSON line per run)
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-${EMBER_HOME:-$HOME/.cache/ember}/SmolLM2-135M-Instruct.Q8_0.gguf}"
text="$(mktemp)"
d=/usr/share/common-licenses
cat "$d/GPL-3" "$d/GFDL-1.3" "$d/LGPL-2.1" "$d/MPL-2.0" "$d/Apache-2.0" "$d/Artistic" > "$text"
cargo build -q --release -p ember-runner
E=./target/release/ember
ppl() { "$E" perplexity -m "$model" --file "$text" --json "$@" 2>/dev/null; }
ppl --ctx 2048 --kv-type f32 & ppl --window 252 --sinks 4 --kv-type f32 & wait
ppl --window 256 --sinks 0 --kv-type f32 & ppl --ctx 2048 --second-half --kv-type f32 & wait
rm -f "$text"
