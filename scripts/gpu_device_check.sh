#!/usr/bin/env bash
# The GPU engine on a GPU machine that has no internet and no Rust toolchain
# (an NVIDIA H100 lent through the device tool), in one command.
#
# Here, once (Rust, and Debian's apt for the Vulkan loader):
#     scripts/gpu_device_check.sh --prepare
# builds ember with the gpu feature into .gpu-check/ (ignored by git) beside
# Debian's libvulkan1 package. There, with .gpu-check carried:
#     scripts/gpu_device_check.sh OUT [--quick]
# unpacks the Vulkan loader if the machine has none, finds NVIDIA's Vulkan
# driver file (or writes one for libGLX_nvidia.so.0), makes the models with
# `ember synth` and `ember convert` (SmolLM2-135M's shape and a 1B shape: dim
# 2048, 16 layers, 32/8 heads, FFN 8192, vocabulary 128256; F16 and Q8_0),
# checks 16 greedy ids of each against the CPU engine, and writes
# `ember bench --device gpu --json` of each to OUT (the 135M shape with 32
# sequences at once too), and OUT/summary.txt: tok/s and the share of the
# memory floor (bytes per token over the device's copy bandwidth).
# --quick uses one tiny shape instead (for trying the script on lavapipe).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.gpu-check

if [ "${1:-}" = "--prepare" ]; then
    cargo build --release --locked -p ember-runner --features gpu
    mkdir -p "$dir"
    cp target/release/ember "$dir/ember"
    strip "$dir/ember" 2>/dev/null || true
    rm -f "$dir"/*.deb
    (cd "$dir" && apt-get -q -oAPT::Architecture=amd64 download libvulkan1)
    grep -qx "/$dir/" .git/info/exclude 2>/dev/null || echo "/$dir/" >> .git/info/exclude
    ls -l "$dir"
    exit 0
fi

out="${1:?usage: scripts/gpu_device_check.sh --prepare | OUT [--quick]}"
quick="${2:-}"
mkdir -p "$out"
start=$(date +%s)
say() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$out/summary.txt"; }
: > "$out/summary.txt"
ember="${EMBER:-$dir/ember}"
[ -x "$ember" ] || { echo "no ember at $ember: run --prepare where Rust is" >&2; exit 1; }

# The Vulkan loader, and NVIDIA's driver file.
if ! ldconfig -p | grep -q 'libvulkan\.so\.1'; then
    for f in "$dir"/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
if [ -z "${VK_DRIVER_FILES:-}" ]; then
    for f in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json \
             /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; do
        if [ -f "$f" ]; then export VK_DRIVER_FILES="$f"; break; fi
    done
fi
if [ -z "${VK_DRIVER_FILES:-}" ] && ldconfig -p | grep -q 'libGLX_nvidia\.so\.0'; then
    icd=/tmp/ember_nvidia_icd.json
    printf '{"file_format_version":"1.0.0","ICD":{"library_path":"libGLX_nvidia.so.0","api_version":"1.3"}}\n' > "$icd"
    export VK_DRIVER_FILES="$icd"
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
say "$("$ember" --version 2>&1 | head -1); Vulkan driver file: ${VK_DRIVER_FILES:-found by the loader}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /' | tee -a "$out/summary.txt" || true

models=/tmp/ember-gpu-check
mkdir -p "$models"
if [ "$quick" = "--quick" ]; then
    shapes=("tiny --dim 256 --layers 4 --heads 4 --kv-heads 2 --ffn 512 --vocab 4096")
else
    shapes=("135m --dim 576 --layers 30 --heads 9 --kv-heads 3 --ffn 1536 --vocab 49152"
            "1b --dim 2048 --layers 16 --heads 32 --kv-heads 8 --ffn 8192 --vocab 128256")
fi

# The ids field of a `--json` line.
ids() { sed -n 's/.*"ids":\[\([0-9,]*\)\].*/\1/p'; }
# A number field of a JSON line.
field() { sed -n "s/.*\"$1\":\([0-9.eE+-]*\).*/\1/p"; }

status=0
for s in "${shapes[@]}"; do
    read -r name args <<< "$s"
    f16="$models/$name.f16.gguf"
    q8="$models/$name.q8_0.gguf"
    # shellcheck disable=SC2086
    [ -f "$f16" ] || "$ember" synth $args --ctx 1024 --type f16 "$f16"
    [ -f "$q8" ] || "$ember" convert "$f16" "$q8" --type q8_0 >/dev/null
    say "$name: models made"
    for ty in f16 q8_0; do
        m="$models/$name.$ty.gguf"
        run=(run -m "$m" --prompt-ids 1,2,3,4,5,6,7,8 -n 16 --temp 0 --ctx 256 --json)
        gpu_ids=$("$ember" "${run[@]}" --device gpu 2>>"$out/stderr.txt" | ids)
        cpu_ids=$("$ember" "${run[@]}" --device cpu 2>>"$out/stderr.txt" | ids)
        if [ -n "$gpu_ids" ] && [ "$gpu_ids" = "$cpu_ids" ]; then
            say "$name $ty: 16 greedy ids, GPU = CPU"
        else
            say "$name $ty: GPU ids [$gpu_ids] differ from the CPU's [$cpu_ids]"
            status=1
        fi
        seqs=()
        [ "$name" != 1b ] && seqs=(--seqs 32)
        json="$out/bench_${name}_${ty}.json"
        # PP, TG and REPS shrink the bench (trying the script on lavapipe).
        if timeout 240 "$ember" bench --device gpu -m "$m" -p "${PP:-128}" -n "${TG:-64}" --reps "${REPS:-3}" \
                "${seqs[@]}" --json \
                > "$json" 2>>"$out/stderr.txt"; then
            line=$(cat "$json")
            streams=""
            if [ ${#seqs[@]} -gt 0 ]; then
                streams="; ${SEQS:-32} streams $(field tg_batched_tok_s <<< "$line") tok/s"
            fi
            say "$name $ty: pp $(field pp_tok_s <<< "$line") tok/s, tg $(field tg_tok_s <<< "$line") tok/s," \
                "$(field tg_of_floor <<< "$line") of the floor ($(field read_gb_s <<< "$line") GB/s copy)$streams"
        else
            say "$name $ty: bench failed (see stderr.txt)"
            status=1
        fi
    done
done
say "done"
exit $status
