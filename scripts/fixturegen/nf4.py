"""NF4 (QLoRA) fixtures made with bitsandbytes' own quantizer on the CPU.

Writes fixtures/nf4/:
  reference.safetensors  - inputs and bitsandbytes' outputs for several cases:
      <case>.input        f32   the values quantized (flattened row-major)
      <case>.packed       u8    4-bit codes, two per byte, first element in the high nibble
      <case>.absmax       f32   per-block absmax (single quantization) or
      <case>.qabsmax      u8    8-bit codes of absmax - offset (double quantization)
      <case>.absmax2      f32   per-256-block scale of those codes
      <case>.offset       f32   [1] the mean subtracted before the second quantization
      <case>.dequant      f32   bitsandbytes' dequantize_4bit
    plus dynamic_code (f32 [256], the 8-bit map bitsandbytes quantized the absmax values with)
    and nf4_code (f32 [16]).
  reference.json         - the cases (block size, double quant, length) and, for the Gaussian case,
                           bitsandbytes' mean absolute quantization error.
  tiny-qlora.safetensors - logits of the tiny Llama whose linear layers are NF4-quantized by
                           bitsandbytes (block 64, double quant; lm_head kept in f32), with and
                           without the tiny PEFT adapter (fixtures/tiny-llama/peft-adapter).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .common import TINY_INPUT_IDS, log, save_tensors, set_determinism, write_json

# name -> (length, block size, double quantization)
CASES = {
    "b32_dq": (32 * 300 + 10, 32, True),  # 301 blocks: two nested blocks, a partial last block
    "b64_dq": (64 * 40 + 10, 64, True),
    "b64_plain": (64 * 20 + 37, 64, False),
    "b128_plain": (128 * 9, 128, False),
    "gauss_b64_dq": (64 * 256, 64, True),
}


def quantize_case(x: torch.Tensor, blocksize: int, dq: bool, name: str, out: dict) -> float:
    import bitsandbytes.functional as F

    q, st = F.quantize_4bit(x, blocksize=blocksize, quant_type="nf4", compress_statistics=dq)
    deq = F.dequantize_4bit(q, st)
    out[f"{name}.input"] = x.reshape(-1)
    out[f"{name}.packed"] = q.reshape(-1).to(torch.uint8)
    out[f"{name}.dequant"] = deq.reshape(-1).float()
    if dq:
        out[f"{name}.qabsmax"] = st.absmax.reshape(-1).to(torch.uint8)
        out[f"{name}.absmax2"] = st.state2.absmax.reshape(-1).float()
        out[f"{name}.offset"] = st.offset.reshape(1).float()
        out["dynamic_code"] = st.state2.code.float().clone()
    else:
        out[f"{name}.absmax"] = st.absmax.reshape(-1).float()
    out["nf4_code"] = st.code.float().clone()
    return float((deq.reshape(-1) - x.reshape(-1)).abs().mean())


def make_nf4_fixture(out: Path, tiny_dir: Path, seed: int) -> None:
    import bitsandbytes
    import bitsandbytes.functional as F

    out.mkdir(parents=True, exist_ok=True)
    set_determinism(seed)
    tensors: dict[str, torch.Tensor] = {}
    meta = {"bitsandbytes": bitsandbytes.__version__, "cases": {}}
    for name, (n, bs, dq) in CASES.items():
        if name.startswith("gauss"):
            x = torch.randn(n, dtype=torch.float32)
        else:
            # Mixed scales so some blocks are tiny, one is all zeros, and values hit midpoints.
            x = torch.randn(n, dtype=torch.float32) * torch.exp(torch.randn(n) * 1.5)
            x[bs: 2 * bs] = 0.0
        mae = quantize_case(x, bs, dq, name, tensors)
        meta["cases"][name] = {"len": n, "block_size": bs, "double_quant": dq, "mean_abs_error": mae}
        log(f"  nf4 {name}: n={n} block={bs} dq={dq} mean |error| {mae:.6f}")
    save_tensors(out / "reference.safetensors", tensors)
    write_json(out / "reference.json", meta)

    # The tiny Llama with NF4 linear layers (bitsandbytes' round trip, as Linear4bit computes on
    # the CPU: dequantize, then an f32 matmul), with and without the tiny PEFT adapter.
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    def nf4_base():
        m = LlamaForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()
        with torch.no_grad():
            for mod_name, mod in m.named_modules():
                if isinstance(mod, torch.nn.Linear) and mod_name != "lm_head":
                    q, st = F.quantize_4bit(mod.weight.data, blocksize=64, quant_type="nf4",
                                            compress_statistics=True)
                    mod.weight.data = F.dequantize_4bit(q, st).float()
        return m

    ids = torch.tensor(TINY_INPUT_IDS, dtype=torch.int64)
    with torch.no_grad():
        logits_base = nf4_base()(ids).logits
        pm = PeftModel.from_pretrained(nf4_base(), str(tiny_dir / "peft-adapter")).eval()
        logits_adapter = pm(ids).logits
    save_tensors(out / "tiny-qlora.safetensors", {
        "input_ids": ids, "logits_nf4_base": logits_base, "logits_nf4_adapter": logits_adapter,
    })
    log(f"  tiny NF4 logits written ({tuple(logits_base.shape)})")


def make_smollm2_nf4(model_path: Path, out: Path) -> None:
    """fixtures/smollm2-nf4-reference.json: the real SmolLM2 with every linear layer but lm_head
    NF4-quantized by bitsandbytes (block 64, double quantization) — next-token top-5 for the
    plain prompt of smollm2-reference.json, computed as Linear4bit does on the CPU."""
    import json

    import bitsandbytes.functional as F

    from .common import load_causal_lm

    ref = json.loads((out / "smollm2-reference.json").read_text(encoding="utf-8"))
    prompts = [p for p in ref["prompts"] if p["kind"] != "chat"]
    m = load_causal_lm(model_path)
    with torch.no_grad():
        for name, mod in m.named_modules():
            if isinstance(mod, torch.nn.Linear) and name != "lm_head":
                q, st = F.quantize_4bit(mod.weight.data, blocksize=64, quant_type="nf4",
                                        compress_statistics=True)
                mod.weight.data = F.dequantize_4bit(q, st).float()
        entries = []
        for p in prompts:
            logits = m(torch.tensor([p["ids"]], dtype=torch.int64)).logits[0, -1].float()
            top = torch.topk(logits, 5)
            entries.append({"text": p["text"], "ids": p["ids"],
                            "top5": [{"id": int(i), "logit": float(v)} for v, i in zip(top.values, top.indices)]})
            log(f"  NF4 {p['text']!r}: top-5 {[int(i) for i in top.indices]}")
    write_json(out / "smollm2-nf4-reference.json",
               {"model_file": model_path.name, "quant": {"type": "nf4", "block_size": 64, "double_quant": True,
                                                         "skip": ["lm_head"]},
                "prompts": entries})
