"""Part `adalora`: a short PEFT AdaLoRA training run on the untied tiny model.

It writes, into fixtures/tiny-llama/:
- `peft-adalora-init/`: the AdaLoRA adapter as PEFT initialises it (P, Q ~ N(0, 0.02), lambda = 0),
  saved before training (full init_r, no rank_pattern). The Rust parity test starts from it.
- `peft-adalora/`: the adapter after training, saved by PEFT with its rank_pattern (only the kept
  ranks are in the file). The Rust loader must rebuild it with the original scaling.
- `adalora-reference.safetensors` + `adalora-reference.json`: the training batch, PEFT's per-step
  losses and budgets, the lambda masks at every allocation step, and the trained adapter's logits.

The loop is PEFT's own AdaLoRA example (examples/conditional_generation/peft_adalora_seq2seq.py):
forward -> loss (PEFT adds the orthogonality penalty) -> backward -> clip -> AdamW step ->
`update_and_allocate(global_step)` with a 0-based global_step -> zero_grad. The Rust trainer runs the
same steps with the same hyper-parameters (constant learning rate, no weight decay, no dropout, the
whole batch every step).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .common import LORA_TARGETS, TINY_INPUT_IDS, log, save_tensors, set_determinism, write_json
from .peft_parts import save_adapter

# The schedule: 2 warm-up steps, budget falling over steps 3..9 with an allocation every 2nd step,
# the final allocation at step 10 = total_step - tfinal, then 1 step with the masks kept fixed.
ADALORA = dict(init_r=4, target_r=2, tinit=2, tfinal=2, deltaT=2, total_step=12, lora_alpha=8,
               beta1=0.85, beta2=0.85, orth_reg_weight=0.5, lora_dropout=0.0)
LR = 1e-2
MAX_GRAD_NORM = 0.5  # some steps are clipped: the importance must use the clipped gradients, as PEFT does
# Four "prompt -> answer" sequences of the same length (no padding), every id < 300.
TRAIN_IDS = [
    [10, 20, 30, 40, 100, 200, 150, 7],
    [11, 21, 31, 41, 107, 203, 151, 8],
    [12, 22, 32, 42, 114, 206, 152, 9],
    [13, 23, 33, 43, 121, 209, 153, 10],
]
PROMPT_LEN = 4


def orth_penalty(model) -> torch.Tensor:
    """The regularizer exactly as AdaLoraModel.forward computes it (without the weight)."""
    total, n = 0.0, 0
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and "default" in name:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            total = total + torch.norm(cov - torch.eye(*cov.shape), p="fro")
            n += 1
    return total / n


def threshold_margin(rankallocator, model, budget: int) -> float:
    """Relative gap between the masking threshold and the nearest score above it: how far the
    allocation is from a tie that f32 rounding could flip."""
    scores = []
    for name, _ in model.named_parameters():
        if "lora_E.default" in name:
            e = rankallocator._element_score(name).view(-1)
            a = torch.mean(rankallocator._element_score(name.replace("lora_E", "lora_A")), dim=1)
            b = torch.mean(rankallocator._element_score(name.replace("lora_E", "lora_B")), dim=0)
            scores.append(e + (a + b))
    s, _ = torch.sort(torch.cat(scores))
    k = rankallocator.init_bgt - budget
    if k <= 0 or k >= len(s):
        return float("inf")
    return float((s[k] - s[k - 1]) / s[k].abs().clamp_min(1e-30))


def make_adalora_fixtures(tiny_dir: Path, seed: int) -> None:
    from peft import AdaLoraConfig, PeftModel, get_peft_model
    from transformers import LlamaForCausalLM

    def fresh_base():
        m = LlamaForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
        m.config._name_or_path = "fixtures/tiny-llama"
        m.name_or_path = "fixtures/tiny-llama"
        return m

    set_determinism(seed)
    cfg = AdaLoraConfig(target_modules=list(LORA_TARGETS), task_type="CAUSAL_LM", **ADALORA)
    pm = get_peft_model(fresh_base(), cfg)
    pm.train()  # dropout is 0 everywhere, so train mode only matters for PEFT's bookkeeping
    modules = sorted({n.split(".lora_E")[0].removeprefix("base_model.model.")
                      for n, _ in pm.named_parameters() if ".lora_E." in n})
    assert len(modules) == 2 * len(LORA_TARGETS), modules

    init_dir = tiny_dir / "peft-adalora-init"
    if init_dir.exists():
        shutil.rmtree(init_dir)
    save_adapter(pm, init_dir)

    ids = torch.tensor(TRAIN_IDS, dtype=torch.int64)
    labels = ids.clone()
    labels[:, :PROMPT_LEN] = -100
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    with torch.no_grad():
        orth0 = float(orth_penalty(pm))

    ra = pm.base_model.rankallocator
    losses_ce, losses_total, budgets, grad_norms = [], [], [], []
    mask_steps, masks, margins = [], [], []
    for step in range(ADALORA["total_step"]):
        out = pm(input_ids=ids, labels=labels)
        logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
        ce = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
        losses_ce.append(float(ce))
        losses_total.append(float(out.loss))
        out.loss.backward()
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)))
        opt.step()
        budget, _ = ra.budget_schedule(step)
        budgets.append(budget)
        before = pm.peft_config["default"].rank_pattern
        final_step = step == ADALORA["total_step"] - ADALORA["tfinal"]
        if final_step:  # this allocation uses the scores as they are now (no update, then a reset)
            margins.append(threshold_margin(ra, pm.base_model.model, budget))
        pm.base_model.update_and_allocate(step)
        after = pm.peft_config["default"].rank_pattern
        if after is not None and (after is not before or final_step):
            mask_steps.append(step)
            masks.append([float(v) for m in modules for v in after[f"{m}.lora_E.default"]])
            if not final_step:  # scores were updated with this step's gradients, then used
                margins.append(threshold_margin(ra, pm.base_model.model, budget))
        opt.zero_grad()

    log(f"  adalora: CE {losses_ce[0]:.4f} -> {losses_ce[-1]:.4f}, budgets {budgets}, "
        f"grad norms {min(grad_norms):.3f}..{max(grad_norms):.3f}, allocations at {mask_steps}, "
        f"smallest threshold margin {min(margins):.2e}")
    assert min(margins) > 1e-3, f"an allocation is within {min(margins):.2e} of a tie; pick another seed"
    final = pm.peft_config["default"].rank_pattern
    kept = sum(sum(v) for v in final.values())
    assert kept == ADALORA["target_r"] * len(modules), (kept, final)

    out_dir = tiny_dir / "peft-adalora"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    save_adapter(pm, out_dir)

    pm.eval()
    test_ids = torch.tensor(TINY_INPUT_IDS, dtype=torch.int64)
    with torch.no_grad():
        logits_trained = pm(input_ids=test_ids).logits
    # What the Rust loader must reproduce: PEFT reloading its own pruned adapter.
    reloaded = PeftModel.from_pretrained(fresh_base(), str(out_dir)).eval()
    with torch.no_grad():
        logits_reloaded = reloaded(input_ids=test_ids).logits
        base_logits = fresh_base().eval()(input_ids=test_ids).logits
    assert torch.allclose(logits_reloaded, logits_trained, atol=1e-5), "PEFT's reload differs"
    assert (logits_reloaded - base_logits).abs().max() > 1e-3, "the trained adapter does not move the logits"
    # A module pruned to rank 0 has no tensors and PEFT leaves its ranknum at 0: it adds nothing.
    scalings = {float(m.scaling["default"] / (m.ranknum["default"] + 1e-5))
                for m in reloaded.modules()
                if hasattr(m, "ranknum") and "default" in m.ranknum and m.r["default"] > 0}
    assert len(scalings) == 1, scalings

    save_tensors(tiny_dir / "adalora-reference.safetensors", {
        "train_ids": ids,
        "losses_ce": torch.tensor(losses_ce, dtype=torch.float32),
        "losses_total": torch.tensor(losses_total, dtype=torch.float32),
        "budgets": torch.tensor(budgets, dtype=torch.int64),
        "mask_steps": torch.tensor(mask_steps, dtype=torch.int64),
        "masks": torch.tensor(masks, dtype=torch.float32),
        "input_ids": test_ids,
        "logits_adalora": logits_reloaded,
        "orth_penalty_init": torch.tensor([orth0], dtype=torch.float32),
    })
    write_json(tiny_dir / "adalora-reference.json", {
        "config": ADALORA, "lr": LR, "max_grad_norm": MAX_GRAD_NORM, "prompt_len": PROMPT_LEN,
        "targets": list(LORA_TARGETS), "modules": modules,
        "scaling": scalings.pop(),
        "masks": "row i: the kept ranks after update_and_allocate(mask_steps[i]), modules in this order, init_r each",
    })
