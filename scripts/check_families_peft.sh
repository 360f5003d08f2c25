#!/usr/bin/env bash
# Ours loads in PEFT, for every family beyond Llama: on each tiny model of fixtures/tiny-<family>/,
# burn-lora trains a LoRA adapter on all linear layers for a few steps (so lora_B is no longer
# zero), prints its next-token logits (`burn-lora logits --json`), and PEFT loads the adapter onto
# transformers' model of the same directory and must give the same top-5 ids with logits within
# 1e-4 (`make_fixtures.py --check-adapter`, which also fails on any key PEFT would ignore). Then
# burn-lora merges the adapter into a Hugging Face directory (`burn-lora merge`), and transformers
# must load it as that family and give the same logits (`make_fixtures.py --check-merged`).
#
# Usage: scripts/check_families_peft.sh [PYTHON]   (default: ~/.cache/burn-lora/venv/bin/python)
# Prints one PASS/FAIL line per family; exits non-zero if any fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-$HOME/.cache/burn-lora/venv/bin/python}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
printf '%s\n' '{"text": "the cat sat on the hat"}' '{"text": "The capital of France is a city"}' \
  '{"text": "a cat is at the cafe"}' '{"text": "the hat is on the cat"}' > "$TMP/data.jsonl"
PROMPT="The capital of France is"
status=0
for family in qwen2 qwen3 mistral gemma3; do
  model="fixtures/tiny-$family"
  out="$TMP/$family"
  cargo xtask train --model "$model" --data "$TMP/data.jsonl" --steps 4 --batch-size 2 --lr 0.05 \
    --targets all-linear --eval-limit 1 --seq-len 32 --out "$out" > "$out.train.log" 2>&1 \
    || { echo "FAIL $family: training failed (see below)"; tail -5 "$out.train.log"; status=1; continue; }
  cargo xtask logits --model "$model" --adapter "$out/adapter" --prompt "$PROMPT" --top-k 5 --json \
    2> "$out.logits.log" > "$out.logits.json" \
    || { echo "FAIL $family: logits failed"; tail -5 "$out.logits.log"; status=1; continue; }
  "$PY" - "$out.logits.json" "$PROMPT" <<'PYEOF'
import json, sys
path, prompt = sys.argv[1], sys.argv[2]
exp = json.loads(open(path).read())
exp["prompt"] = prompt
open(path, "w").write(json.dumps(exp))
PYEOF
  if "$PY" scripts/make_fixtures.py --check-adapter "$out/adapter" --model "$model" \
       --expect "$out.logits.json" --atol 1e-4 > "$out.check.log" 2>&1; then
    echo "PASS $family adapter in PEFT: $(grep -E '^  max \|logit' "$out.check.log")"
  else
    echo "FAIL $family adapter in PEFT:"; cat "$out.check.log"; status=1
  fi
  cargo xtask merge --model "$model" --adapter "$out/adapter" --out "$out/merged" > "$out.merge.log" 2>&1 \
    || { echo "FAIL $family: merge failed"; tail -5 "$out.merge.log"; status=1; continue; }
  if "$PY" scripts/make_fixtures.py --check-merged "$out/merged" --expect "$out.logits.json" \
       --atol 1e-4 > "$out.merged.log" 2>&1; then
    echo "PASS $family merged in transformers: $(grep -E '^  max \|logit' "$out.merged.log")"
  else
    echo "FAIL $family merged in transformers:"; cat "$out.merged.log"; status=1
  fi
done
exit $status
