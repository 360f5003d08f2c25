#!/usr/bin/env bash
# Checks burn-lora's GGUF exports with llama.cpp itself (slow: the first run builds llama.cpp).
#
#   scripts/check_gguf_export.sh --install      # once: build llama-cpp-python into its own venv
#   scripts/check_gguf_export.sh [ADAPTER_DIR]  # default: fixtures/smollm2-peft-adapter
#   scripts/check_gguf_export.sh --trec RUN_DIR # after `cargo xtask train`: q8_0 export, TREC answers
#
# --install builds llama.cpp from source through the PyPI package llama-cpp-python (cmake and
# ninja from PyPI; gcc/g++ from the system; no other downloads): about 30 minutes on 2 cores.
# Then: exports SmolLM2 with the adapter (merged f32/f16/q8_0/q4_0/q4_k, the base as f32, and the
# adapter alone), writes our own logits and greedy continuations, and runs
# scripts/check_gguf_export.py, which compares llama.cpp's with ours and prints PASS or FAIL.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LLAMACPP_VENV:-$HOME/.cache/burn-lora/llamacpp-venv}

if [[ "${1:-}" == "--install" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q cmake ninja scikit-build-core numpy
    # Only the library: no examples, tests, tools or server; native CPU code; no OpenMP.
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_OPENMP=OFF" \
        CMAKE_BUILD_PARALLEL_LEVEL=2 PATH="$VENV/bin:$PATH" \
        "$VENV/bin/pip" install --no-cache-dir llama-cpp-python==0.3.36
    exit 0
fi

OUT=${GGUF_CHECK_DIR:-$HOME/.cache/burn-lora/gguf-check}
if [[ "${1:-}" == "--trec" ]]; then
    mkdir -p "$OUT/trec-q8_0"
    cargo xtask merge --adapter "$2/adapter" --format gguf --type q8_0 --out "$OUT/trec-q8_0/model.gguf" 2>&1 | grep -E "mean survival|wrote"
    exec "$VENV/bin/python" scripts/check_gguf_export.py --trec "$OUT/trec-q8_0/model.gguf"
fi
ADAPTER=${1:-fixtures/smollm2-peft-adapter}
MAX_NEW=16
mkdir -p "$OUT/ours"
cargo build -q -p lora-cli --target-dir "${CARGO_TARGET_DIR:-$HOME/.cache/burn-lora/target}"

echo "== exports"
mkdir -p "$OUT"/{base-f32,merged-f32,merged-f16,merged-q8_0,merged-q4_0,merged-q4_k}
cargo xtask merge --format gguf --type f32 --out "$OUT/base-f32/model.gguf" 2>&1 | tail -1
for t in f32 f16 q8_0 q4_0 q4_k; do
    cargo xtask merge --adapter "$ADAPTER" --format gguf --type $t --out "$OUT/merged-$t/model.gguf" 2>&1 | grep -E "mean survival|wrote"
done
cargo xtask export-adapter --adapter "$ADAPTER" --out "$OUT/adapter.gguf" 2>&1 | tail -1

echo "== our logits and greedy continuations (base + adapter, unmerged)"
python3 - "$OUT/ours/prompts.json" <<'EOF'
import json, sys
q = "Which category does this question belong to: abbreviation, description, entity, human, location, number?\nQuestion: Who wrote Hamlet ?\nAnswer with one word."
prompts = [
    {"prompt": "The capital of France is", "chat": False},
    {"prompt": "def fibonacci(n):", "chat": False},
    {"prompt": "Once upon a time, in a small village by the sea,", "chat": False},
    {"prompt": "What is the capital of France?", "chat": True},
    {"prompt": q, "chat": True},
]
json.dump(prompts, open(sys.argv[1], "w"), indent=1)
EOF
n=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))))" "$OUT/ours/prompts.json")
for ((i = 0; i < n; i++)); do
    prompt=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[int(sys.argv[2])]['prompt'])" "$OUT/ours/prompts.json" $i)
    chat=$(python3 -c "import json,sys; print('--chat' if json.load(open(sys.argv[1]))[int(sys.argv[2])]['chat'] else '')" "$OUT/ours/prompts.json" $i)
    cargo xtask logits --adapter "$ADAPTER" --prompt "$prompt" $chat --json --top-k 20 2>/dev/null > "$OUT/ours/$i.json"
    cargo xtask generate --adapter "$ADAPTER" --prompt "$prompt" $chat --max-new-tokens $MAX_NEW 2>/dev/null > "$OUT/ours/$i.greedy.txt"
    # Our loader on each quantized export: the same weights llama.cpp gets.
    for t in q8_0 q4_0 q4_k; do
        mkdir -p "$OUT/ours/$t"
        cargo xtask logits --model "$OUT/merged-$t/model.gguf" --prompt "$prompt" $chat --json --top-k 20 2>/dev/null > "$OUT/ours/$t/$i.json"
    done
done

echo "== llama.cpp"
"$VENV/bin/python" scripts/check_gguf_export.py "$OUT" --max-new-tokens $MAX_NEW
