"""Part `smollm2-bf16`: SmolLM2 loaded by transformers with `torch_dtype=torch.bfloat16`.

fixtures/smollm2-bf16-reference.json holds, for each prompt of smollm2-reference.json, the
bf16 model's next-token top-5 and, for the 20 ids the bf16 model scores highest, the logits of
the bf16 model and of the f32 model. burn-lora's `--base-dtype bf16` keeps the activations,
norms and softmax in f32 and multiplies in bf16; transformers runs everything in bf16 — the f32
column says how far bf16 rounding alone moves a logit, which is the scale the test's bound is
stated against."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .common import load_causal_lm, log, write_json


def make_smollm2_bf16(model_path: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    ref = json.loads((out / "smollm2-reference.json").read_text(encoding="utf-8"))
    f32 = load_causal_lm(model_path)
    # The GGUF is dequantized to f32 and then cast, as our loader does with --base-dtype bf16.
    bf16 = AutoModelForCausalLM.from_pretrained(str(model_path.parent), gguf_file=model_path.name,
                                                dtype=torch.bfloat16).eval()
    assert next(bf16.parameters()).dtype == torch.bfloat16
    entries = []
    with torch.no_grad():
        for p in ref["prompts"]:
            ids = torch.tensor([p["ids"]], dtype=torch.int64)
            lb = bf16(ids).logits[0, -1].float()
            lf = f32(ids).logits[0, -1].float()
            top = torch.topk(lb, 20).indices
            entries.append({
                "kind": p["kind"], "text": p["text"], "ids": p["ids"],
                "top5": [int(i) for i in top[:5]],
                "top20": [{"id": int(i), "logit_bf16": float(lb[i]), "logit_f32": float(lf[i])} for i in top],
                "max_abs_diff_bf16_vs_f32": float((lb - lf).abs().max()),
            })
            log(f"  bf16 {p['text'][:30]!r}: top-5 {[int(i) for i in top[:5]]}, "
                f"max |bf16 - f32| {entries[-1]['max_abs_diff_bf16_vs_f32']:.3f}")
    write_json(out / "smollm2-bf16-reference.json",
               {"model_file": model_path.name, "torch_dtype": "bfloat16", "prompts": entries})
