"""Part `peft`: PEFT LoRA adapters on the untied tiny model, with logits, loss and gradient references."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch

from .common import TINY_INPUT_IDS, PROMPT_MASK, LORA_TARGETS, log, set_determinism, save_tensors, write_json


# --------------------------------------------------------------------------------------------
# 2. PEFT LoRA adapters on the untied tiny model, with logits, loss and gradient references
# --------------------------------------------------------------------------------------------

def randomize_lora_b(peft_model, adapter: str, seed: int, std: float = 0.1) -> None:
    """PEFT initialises B = 0 (the adapter starts as a no-op); draw it so the adapter moves the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(peft_model.named_parameters(), key=lambda kv: kv[0]):
            if f".lora_B.{adapter}." in name:
                p.copy_(std * torch.randn(p.shape, generator=gen))


def adapter_key(name: str) -> tuple[str, str]:
    """`base_model.model.<path>.lora_A.default.weight` -> (path, "lora_A"); DoRA's
    `...lora_magnitude_vector.default.weight` -> (path, "lora_magnitude_vector")."""
    module_path, _, rest = name.removeprefix("base_model.model.").partition(".lora_")
    return module_path, "lora_" + rest.split(".")[0]


def adapter_gradients(peft_model) -> dict[str, torch.Tensor]:
    """`grad.<module path>.<lora_A|lora_B|lora_magnitude_vector>` after a backward pass; checks
    that no frozen parameter got a gradient and every adapter tensor a non-zero one."""
    grads = {}
    for name, p in sorted(peft_model.named_parameters(), key=lambda kv: kv[0]):
        if ".lora_" not in name:
            assert p.grad is None, f"frozen parameter {name} got a gradient"
            continue
        assert p.grad is not None and p.grad.abs().max() > 0, f"{name} got no gradient"
        path, which = adapter_key(name)
        grads[f"grad.{path}.{which}"] = p.grad.detach().clone()
    return grads


def scale_dora_magnitudes(peft_model, seed: int, std: float) -> None:
    """DoRA's magnitude starts at ‖W‖; scale it by (1 + std·N(0, 1)) so a fixture checks that the
    loaded magnitudes are used, not recomputed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(peft_model.named_parameters(), key=lambda kv: kv[0]):
            if "lora_magnitude_vector" in name:
                p.mul_(1.0 + std * torch.randn(p.shape, generator=gen))


def save_adapter(peft_model, out: Path) -> None:
    """save_pretrained into a fresh `out` (an older copy is removed first)."""
    if out.exists():
        shutil.rmtree(out)
    peft_model.save_pretrained(str(out))
    (out / "README.md").unlink(missing_ok=True)  # PEFT writes a model-card stub; not needed
    # PEFT writes target_modules from a set, so its order changes from run to run (hash seed).
    # Sort it so regenerating the fixtures gives identical files; readers must treat it as a set.
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    write_json(cfg_path, cfg)


def make_peft_fixtures(tiny_dir: Path, seed: int) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    def fresh_base():
        m = LlamaForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()
        # Recorded as base_model_name_or_path in adapter_config.json: keep it repo-relative, not /work/...
        m.config._name_or_path = "fixtures/tiny-llama"
        m.name_or_path = "fixtures/tiny-llama"
        return m

    input_ids = torch.tensor(TINY_INPUT_IDS, dtype=torch.int64)
    labels = input_ids.clone()
    labels[:, :PROMPT_MASK] = -100

    base = fresh_base()
    with torch.no_grad():
        logits_base = base(input_ids).logits

    # --- default adapter: r=4, alpha=8 on every linear layer of both blocks -------------------
    set_determinism(seed)  # lora_A is drawn (kaiming-uniform) inside get_peft_model
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=list(LORA_TARGETS), lora_dropout=0.0,
                     task_type="CAUSAL_LM")
    pm = get_peft_model(fresh_base(), cfg)
    randomize_lora_b(pm, "default", seed + 1)
    pm.eval()

    out = tiny_dir / "peft-adapter"
    save_adapter(pm, out)

    with torch.no_grad():
        logits_adapter = pm(input_ids).logits
    assert (logits_adapter - logits_base).abs().max() > 1e-2, "default adapter does not move the logits"

    # Loss and gradients (eval mode: no dropout anywhere; lora_dropout is 0 anyway).
    pm.zero_grad(set_to_none=True)
    result = pm(input_ids=input_ids, labels=labels)
    loss = result.loss
    # HF's causal-LM loss: mean cross entropy over shifted labels that are not -100.
    shift_logits = result.logits[:, :-1].reshape(-1, result.logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    manual = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
    assert torch.allclose(loss, manual, atol=1e-6), (loss, manual)
    loss.backward()

    grads = adapter_gradients(pm)
    assert len(grads) == 2 * 2 * len(LORA_TARGETS), sorted(grads)

    # --- rsLoRA adapter: r=8, alpha=16, scaling 16/sqrt(8), q/v of layer 1 only ----------------
    set_determinism(seed + 2)
    cfg_rs = LoraConfig(r=8, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "v_proj"],
                        layers_to_transform=[1], lora_dropout=0.0, task_type="CAUSAL_LM")
    pm_rs = get_peft_model(fresh_base(), cfg_rs)
    randomize_lora_b(pm_rs, "default", seed + 3)
    pm_rs.eval()
    lora_names = sorted(n for n, _ in pm_rs.named_parameters() if ".lora_" in n)
    assert all(".layers.1." in n for n in lora_names) and len(lora_names) == 4, lora_names

    out_rs = tiny_dir / "peft-adapter-rslora"
    save_adapter(pm_rs, out_rs)
    with torch.no_grad():
        logits_rs = pm_rs(input_ids).logits
    assert (logits_rs - logits_base).abs().max() > 1e-2, "rslora adapter does not move the logits"

    # Sanity: merging reproduces the adapter logits (what a Rust merge must match too).
    with torch.no_grad():
        merged = copy.deepcopy(pm).merge_and_unload()(input_ids).logits
    assert torch.allclose(merged, logits_adapter, atol=1e-4)

    log(f"  peft: loss {loss.item():.6f}, max |logits_adapter - logits_base| "
        f"{(logits_adapter - logits_base).abs().max():.4f}, rslora {(logits_rs - logits_base).abs().max():.4f}")

    tensors = {
        "input_ids": input_ids,
        "labels": labels,
        "logits_base": logits_base,
        "logits_adapter": logits_adapter,
        "logits_adapter_rslora": logits_rs,
        "loss": loss.detach().reshape(1),
    }
    tensors.update(grads)
    save_tensors(tiny_dir / "peft-reference.safetensors", tensors)
