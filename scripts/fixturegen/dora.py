"""Parts `dora` and `loraplus`: a PEFT DoRA adapter on the untied tiny model (logits, loss and
gradients, magnitude vectors included), and one LoRA+ optimizer step (PEFT's
`create_loraplus_optimizer`) on the LoRA and the DoRA adapter with the same gradients."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from .common import TINY_INPUT_IDS, PROMPT_MASK, LORA_TARGETS, log, set_determinism, save_tensors, write_json
from .peft_parts import adapter_gradients, adapter_key, randomize_lora_b, save_adapter, scale_dora_magnitudes

# LoRA+ settings of the fixture: PEFT's example ratio, AdamW as our trainer builds it.
LORAPLUS = {"lr": 1e-3, "loraplus_lr_ratio": 16.0, "loraplus_weight_decay": 0.01, "eps": 1e-8,
            "betas": [0.9, 0.999]}


def tiny_base(tiny_dir: Path):
    from transformers import LlamaForCausalLM

    m = LlamaForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()
    # Recorded as base_model_name_or_path in adapter_config.json: keep it repo-relative.
    m.config._name_or_path = "fixtures/tiny-llama"
    m.name_or_path = "fixtures/tiny-llama"
    return m


def tiny_batch():
    input_ids = torch.tensor(TINY_INPUT_IDS, dtype=torch.int64)
    labels = input_ids.clone()
    labels[:, :PROMPT_MASK] = -100
    return input_ids, labels


def make_dora_fixtures(tiny_dir: Path, seed: int) -> None:
    """DoRA r=4, alpha=8 on every linear layer of both blocks, B drawn N(0, 0.1^2) and the
    magnitude scaled by (1 + 0.1 N(0, 1)) so that neither the direction nor the magnitude is at
    its initial value; saved as peft-dora/, with dora-reference.safetensors holding the initial
    magnitudes (before any change: ‖W‖ per output row), logits, loss and every gradient."""
    from peft import LoraConfig, get_peft_model

    input_ids, labels = tiny_batch()
    set_determinism(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=list(LORA_TARGETS), lora_dropout=0.0,
                     use_dora=True, task_type="CAUSAL_LM")
    pm = get_peft_model(tiny_base(tiny_dir), cfg)
    init = {}
    for name, p in sorted(pm.named_parameters(), key=lambda kv: kv[0]):
        if "lora_magnitude_vector" in name:
            path, which = adapter_key(name)
            init[f"init.{path}.{which}"] = p.detach().clone()
    assert len(init) == 2 * len(LORA_TARGETS), sorted(init)
    randomize_lora_b(pm, "default", seed + 1)
    scale_dora_magnitudes(pm, seed + 2, std=0.1)
    pm.eval()
    save_adapter(pm, tiny_dir / "peft-dora")

    with torch.no_grad():
        logits_base = tiny_base(tiny_dir)(input_ids).logits
        logits = pm(input_ids).logits
    moved = float((logits - logits_base).abs().max())
    assert moved > 1e-2, "DoRA adapter does not move the logits"
    with torch.no_grad():
        merged = copy.deepcopy(pm).merge_and_unload()(input_ids).logits
    assert torch.allclose(merged, logits, atol=1e-4), "PEFT's own DoRA merge differs from its forward"

    pm.zero_grad(set_to_none=True)
    result = pm(input_ids=input_ids, labels=labels)
    result.loss.backward()
    grads = adapter_gradients(pm)
    assert len(grads) == 3 * 2 * len(LORA_TARGETS), sorted(grads)
    log(f"  dora: loss {result.loss.item():.6f}, max |logits - base| {moved:.4f}")

    tensors = {"input_ids": input_ids, "labels": labels, "logits_base": logits_base, "logits_dora": logits,
               "loss": result.loss.detach().reshape(1)}
    tensors.update(init)
    tensors.update(grads)
    save_tensors(tiny_dir / "dora-reference.safetensors", tensors)


def loraplus_step(tiny_dir: Path, adapter: str) -> tuple[dict, dict]:
    """One AdamW step of PEFT's `create_loraplus_optimizer` on the tiny model with the adapter
    in `adapter` (training mode; its dropout is 0). Returns the step of every trainable tensor
    (`new - old`, keyed `step.<path>.<lora_A|lora_B|lora_magnitude_vector>`) and the lr per group."""
    from peft import PeftModel
    from peft.optimizers import create_loraplus_optimizer

    input_ids, labels = tiny_batch()
    pm = PeftModel.from_pretrained(tiny_base(tiny_dir), str(tiny_dir / adapter), is_trainable=True)
    pm.train()
    opt = create_loraplus_optimizer(pm, torch.optim.AdamW, lr=LORAPLUS["lr"],
                                    loraplus_lr_ratio=LORAPLUS["loraplus_lr_ratio"],
                                    loraplus_weight_decay=LORAPLUS["loraplus_weight_decay"],
                                    eps=LORAPLUS["eps"], betas=tuple(LORAPLUS["betas"]))
    names = {id(p): n for n, p in pm.named_parameters()}
    groups = {}
    for g in opt.param_groups:
        for p in g["params"]:
            groups[adapter_key(names[id(p)])[1]] = g["lr"]
    before = {n: p.detach().clone() for n, p in pm.named_parameters() if p.requires_grad}
    pm(input_ids=input_ids, labels=labels).loss.backward()
    opt.step()
    steps = {}
    for n, p in pm.named_parameters():
        if n in before:
            path, which = adapter_key(n)
            steps[f"step.{adapter}.{path}.{which}"] = (p.detach() - before[n]).clone()
    return steps, groups


def make_loraplus_fixture(tiny_dir: Path) -> None:
    """LoRA+ steps for the LoRA adapter (peft-adapter) and the DoRA one (peft-dora)."""
    tensors, groups = {}, {}
    for adapter in ["peft-adapter", "peft-dora"]:
        steps, lrs = loraplus_step(tiny_dir, adapter)
        tensors.update(steps)
        groups[adapter] = lrs
        ratio = max(abs(v).max().item() for k, v in steps.items() if k.endswith("lora_B")) / \
            max(abs(v).max().item() for k, v in steps.items() if k.endswith("lora_A"))
        log(f"  loraplus {adapter}: lr per tensor {lrs}, max |ΔB| / max |ΔA| = {ratio:.2f}")
    save_tensors(tiny_dir / "loraplus-reference.safetensors", tensors)
    write_json(tiny_dir / "loraplus-reference.json", {"settings": LORAPLUS, "lr_by_tensor": groups,
                                                     "notes": "one AdamW step of peft.optimizers."
                                                              "create_loraplus_optimizer on the gradients "
                                                              "of the causal-LM loss of the tiny batch; "
                                                              "step.* = new - old"})
