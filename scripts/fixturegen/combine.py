"""Part `combine`: two PEFT LoRA adapters on the untied tiny model combined with PEFT's
`add_weighted_adapter` (`linear`, `cat`, `svd`), with the combined adapters' logits."""

from __future__ import annotations

from pathlib import Path

import torch

from .common import TINY_INPUT_IDS, log, set_determinism, save_tensors, write_json
from .dora import tiny_base
from .peft_parts import randomize_lora_b, save_adapter

# (name, combination_type, weights): each combination of peft-adapter ("a": r=4, alpha=8, every
# linear layer) and peft-adapter-b ("b": r=4, alpha=16, attention projections only).
COMBINATIONS = [
    ("linear", "linear", [0.7, 0.3]),
    ("linear_neg", "linear", [1.0, -0.5]),
    ("cat", "cat", [0.7, 0.3]),
    ("svd", "svd", [0.7, 0.3]),
]


def make_combine_fixtures(tiny_dir: Path, seed: int) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model

    input_ids = torch.tensor(TINY_INPUT_IDS, dtype=torch.int64)
    # Adapter b: same rank as a (linear needs it), another alpha, fewer targets (so the union of
    # targets and layers that only one adapter covers are exercised).
    set_determinism(seed)
    cfg_b = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                       lora_dropout=0.0, task_type="CAUSAL_LM")
    pm_b = get_peft_model(tiny_base(tiny_dir), cfg_b)
    randomize_lora_b(pm_b, "default", seed + 1)
    out_b = tiny_dir / "peft-adapter-b"
    save_adapter(pm_b, out_b)

    pm = PeftModel.from_pretrained(tiny_base(tiny_dir), str(tiny_dir / "peft-adapter"), adapter_name="a")
    pm.load_adapter(str(out_b), adapter_name="b")
    pm.eval()
    tensors = {"input_ids": input_ids}
    with torch.no_grad():
        for name in ["a", "b"]:
            pm.set_adapter(name)
            tensors[f"logits_{name}"] = pm(input_ids).logits
    summary = {}
    for name, kind, weights in COMBINATIONS:
        pm.add_weighted_adapter(["a", "b"], weights, adapter_name=name, combination_type=kind)
        pm.set_adapter(name)
        with torch.no_grad():
            tensors[f"logits_{name}"] = pm(input_ids).logits
        cfg = pm.peft_config[name]
        summary[name] = {"combination_type": kind, "weights": weights, "r": cfg.r, "lora_alpha": cfg.lora_alpha,
                         "target_modules": sorted(cfg.target_modules)}
        log(f"  combine {name}: r={cfg.r}, max |logits - a| "
            f"{(tensors[f'logits_{name}'] - tensors['logits_a']).abs().max():.4f}")
    # The exact weighted sum of the two updates (what cat computes): svd is within its
    # truncation error of it, linear is not (it mixes A and B separately).
    for name in ["linear", "svd"]:
        gap = (tensors[f"logits_{name}"] - tensors["logits_cat"]).abs().max().item()
        summary[name]["max_abs_logit_gap_to_cat"] = gap
        log(f"  combine {name}: max |logits - cat| {gap:.2e}")
    save_tensors(tiny_dir / "combine-reference.safetensors", tensors)
    write_json(tiny_dir / "combine-reference.json", {
        "adapters": {"a": "peft-adapter", "b": "peft-adapter-b"},
        "combinations": summary,
        "notes": "PeftModel.add_weighted_adapter(['a', 'b'], weights, name, combination_type); "
                 "svd with PEFT's defaults (svd_rank = max rank = 4, full_matrices, no clamp)",
    })
