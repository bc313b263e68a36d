#!/usr/bin/env bash
# Fuzzes ember with cargo-fuzz (libFuzzer + AddressSanitizer, nightly).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Defaults: 600 seconds for each of gguf_load, tokenizer, sampler and
# server_request, on as many jobs as there are CPUs (JOBS=N says otherwise;
# two targets at once with JOBS=1 also keep both cores busy). Each target starts from
# fuzz/seeds/<target> (small committed files) plus its own growing corpus in
# fuzz/corpus/<target> (not committed). Crashes land in fuzz/artifacts/<target>;
# copy each into fuzz/regressions/<target>/ once fixed, where
# `cargo test -p ember-tests --test fuzz_regressions` replays them for ever.
# The tokenizer target reads the default model (run `ember run` once first).
# Prints executions, coverage and corpus size per target at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-600}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf_load tokenizer sampler server_request)
jobs="${JOBS:-$(nproc)}"

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

# Large seeds are generated, not committed: the head of the real model file
# (header, hyper-parameters and the start of the vocabulary).
model="${EMBER_HOME:-$HOME/.cache/ember}/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -f "$model" ]; then
    mkdir -p fuzz/corpus/gguf_load
    head -c 262144 "$model" > fuzz/corpus/gguf_load/smollm2-head.gguf
fi

summary=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t" fuzz/logs
    log="fuzz/logs/$t.log"
    echo "== $t: ${secs}s on $jobs jobs"
    max_len=4096
    [ "$t" = gguf_load ] && max_len=262144
    # -fork keeps going after a crash, so one finding does not end the run.
    (cd fuzz && cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -fork="$jobs" -ignore_crashes=1 -max_len="$max_len" \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1) >"$log" 2>&1 || true
    execs=$(grep -Eo 'exec/s: [0-9]+' "$log" | tail -1 || true)
    runs=$(grep -Eo '#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 || true)
    crashes=$(find "fuzz/artifacts/$t" -type f | wc -l)
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    summary+=("| $t | ${secs} | ${runs:-?} | ${execs#exec/s: } | ${cov#cov: } | $corpus | $crashes |")
done
echo
echo "| target | seconds | executions | exec/s (last) | coverage (edges) | corpus | crash files |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
printf '%s\n' "${summary[@]}"
