#!/usr/bin/env bash
# On a machine with a GPU (Vulkan, Metal or DX12): build with wgpu, check wgpu against flex on
# the tiny model (logits with an f32 and an NF4 base, and one training step, within 1e-4), then
# benchmark training and inference on the GPU (ours, burn's apply_lora and ours on an NF4 base;
# PyTorch + PEFT is CPU-only here) and print the table. Results: runs/gpu-check/bench.json.
#
#   scripts/gpu_check.sh            # the default bench (3 warm-up + 10 timed steps per row)
#   scripts/gpu_check.sh --quick    # extra arguments go to `cargo xtask bench`
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/burn-lora/target}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

echo "== the GPUs wgpu can see"
(command -v vulkaninfo >/dev/null && vulkaninfo --summary 2>/dev/null | grep -E "deviceName|driverName") || true
(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv) || true

echo "== fetch the model and data"
cargo xtask fetch

echo "== wgpu vs flex on the tiny model"
cargo xtask test --backend wgpu --test wgpu_parity -- --include-ignored

echo "== bench on wgpu"
cargo xtask bench --backend wgpu --impls ours,burn,ours-nf4 --out runs/gpu-check "$@"
