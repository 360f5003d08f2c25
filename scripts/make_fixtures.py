#!/usr/bin/env python3
"""Reference fixtures and round-trip checks for burn-lora, computed with the Python reference stack
(PyTorch, Hugging Face transformers, PEFT and llama.cpp's gguf-py).

The Rust test suite compares its own results against the small files this script writes into
`fixtures/`; those files are committed, so the Rust tests never need Python. Run this script again
only to regenerate them (it is deterministic: fixed seeds, CPU only) or to run one of the check modes.

Set-up (a plain virtual environment; the versions that made the committed fixtures are pinned in
scripts/requirements.txt):

    python3 -m venv ~/.cache/burn-lora/venv
    ~/.cache/burn-lora/venv/bin/pip install -r scripts/requirements.txt

  On Linux, PyPI's torch wheel is the CUDA build and pulls about 3 GB of nvidia-* wheels; it still
  runs on a machine without a GPU (it needs those libraries only to import). A CPU-only torch from
  PyTorch's own package index works just as well, if you can reach it: install that torch first, then
  the requirements file. Do NOT install torch with --no-deps from PyPI: the CUDA wheel then fails to
  import ("libcudart.so.13: cannot open shared object file").

Modes:

    # (default) write the default parts (tiny, peft, dequant, smollm2) into <repo>/fixtures/
    python scripts/make_fixtures.py [--out DIR] [--model GGUF] [--parts tiny,peft,dequant,smollm2]

    # the PEFT adapter on the real SmolLM2 (not in the default set: it loads the model again)
    python scripts/make_fixtures.py --parts smollm2-peft

    # load a base model (GGUF file or HF directory) plus a PEFT adapter directory and compare the
    # next-token logits with FILE.json (as printed by `burn-lora logits --json`, plus "prompt")
    python scripts/make_fixtures.py --check-adapter ADAPTER_DIR --model PATH --expect FILE.json

    # load a merged Hugging Face directory with transformers and compare the same way
    python scripts/make_fixtures.py --check-merged HF_DIR --expect FILE.json

    # exercise the two check modes on the tiny fixtures (positive and negative cases)
    python scripts/make_fixtures.py --self-test

Each check mode prints one line starting with PASS or FAIL and exits 0 or 1.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

# Before the libraries are imported: no progress bars, never try the Hub.
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "fixtures"
DEFAULT_MODEL = Path.home() / ".cache" / "burn-lora" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

# Fixed inputs for the tiny models: every id < 300 (the tiny vocabulary).
TINY_INPUT_IDS = [
    [1, 17, 42, 199, 7, 250, 33],
    [5, 123, 88, 64, 299, 2, 150],
]
TINY_GREEDY_NEW_TOKENS = 8
PROMPT_MASK = 3  # labels: the first 3 positions of each row are -100

# Fixed seeds, one per fixture. The two tiny-model seeds were picked (from 1234..1243) so that
# greedy decoding does not just repeat one token and the top-1/top-2 logit gap stays > 0.04 at
# every step: an f32 implementation then cannot flip a greedy choice by rounding.
SEEDS = {"tiny": 1236, "tiny_tied": 1335, "peft": 1434, "dequant": 1534, "smollm2_peft": 1634}
TIED_EMBED_STD = 0.1

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# The chat prompt of the SmolLM2 references (rendered with the model's chat template).
SMOLLM2_CHAT_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]

# Every fixture part, in the order they are written; the default --parts. `smollm2-peft` is not in
# the default set: it loads the real model a second time and is slow on a small machine.
ALL_PARTS = ["tiny", "peft", "dequant", "smollm2", "smollm2-peft"]
DEFAULT_PARTS = ["tiny", "peft", "dequant", "smollm2"]


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(msg, flush=True)


def set_determinism(seed: int) -> None:
    """Fix every RNG we use. Deterministic algorithms cost nothing on CPU."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)


def quiet_libraries() -> None:
    """Silence progress bars and info chatter; warnings still go through (the checks need them)."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover - only cosmetics
        pass


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors with contiguous CPU tensors and the usual {"format": "pt"} metadata."""
    from safetensors.torch import save_file

    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(clean, str(path), metadata={"format": "pt"})


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def describe_safetensors(path: Path) -> list[str]:
    from safetensors import safe_open

    lines = []
    with safe_open(str(path), "pt") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            lines.append(f"    {k}: {str(t.dtype).replace('torch.', '')} {list(t.shape)}")
    return lines


def load_causal_lm(path: Path):
    """A transformers causal LM in f32 from a GGUF file (dequantized) or a HF directory."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model.eval()


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoTokenizer.from_pretrained(str(path))


# --------------------------------------------------------------------------------------------
# 1. Tiny random Llama models (untied and tied) with logits and greedy-decoding references
# --------------------------------------------------------------------------------------------

def tiny_llama_config(tied: bool):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        hidden_act="silu",
        max_position_embeddings=128,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=2,
    )


def randomize_weights(model: torch.nn.Module, seed: int, embed_std: float) -> None:
    """Re-draw every weight so the logits are O(1) and every tensor matters.

    transformers' own init (N(0, 0.02), norms = 1) gives nearly uniform logits and leaves the
    RMSNorm weights at 1, so a loader that dropped a norm or mixed up two projections could still
    match. Here: linear weights ~ N(0, 1/in_features), embeddings ~ N(0, embed_std^2), norm weights
    ~ 1 + N(0, 0.1^2). (With tied embeddings a large embed_std makes every token predict itself, so
    greedy decoding just repeats the last token; the tied model uses a smaller one.)
    Parameters are visited in name order so the draw does not depend on module registration order.
    """
    gen = torch.Generator().manual_seed(seed)
    seen = set()
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if id(p) in seen:  # tied head: same tensor as the embedding
                continue
            seen.add(id(p))
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(embed_std * torch.randn(p.shape, generator=gen))
            else:  # [out, in] linear weight (including an untied lm_head)
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))


@torch.no_grad()
def greedy_decode_with_cache(model, prompt: torch.Tensor, n_new: int):
    """Greedy decoding with the KV cache, one token per step. Returns (ids [len+n], step_logits [n, vocab])."""
    # transformers >= 5.2x calls the KV cache `cache` (in and out); older versions `past_key_values`.
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(prompt.unsqueeze(0), use_cache=True)
    ids = prompt.tolist()
    step_logits = []
    for _ in range(n_new):
        logits = out.logits[0, -1]
        step_logits.append(logits.clone())
        nxt = int(torch.argmax(logits))
        ids.append(nxt)
        out = model(torch.tensor([[nxt]]), use_cache=True, **{cache_kw: out[cache_kw]})
    return torch.tensor(ids, dtype=torch.int64), torch.stack(step_logits)


def legacy_config_json(path: Path) -> None:
    """Rewrite config.json the way transformers 4.x (and most Hub checkpoints) spell it:
    top-level "rope_theta" and "torch_dtype" instead of transformers 5's "rope_parameters" / "dtype".
    Used for the tied fixture so the Rust config reader is tested on both spellings."""
    cfg = json.loads(path.read_text())
    rope = cfg.pop("rope_parameters", None) or {}
    if "rope_theta" in rope:
        cfg["rope_theta"] = rope["rope_theta"]
    if rope.get("rope_type", "default") != "default":
        raise ValueError("legacy_config_json only handles default RoPE")
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    write_json(path, dict(sorted(cfg.items())))


def make_tiny_llama(out_dir: Path, tied: bool, seed: int) -> None:
    from transformers import LlamaForCausalLM

    set_determinism(seed)
    model = LlamaForCausalLM(tiny_llama_config(tied)).float().eval()
    randomize_weights(model, seed, embed_std=TIED_EMBED_STD if tied else 1.0)
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model.save_pretrained(str(out_dir))  # transformers 5 always writes safetensors
    for stray in ("generation_config.json",):  # not needed by anyone; keep the fixture minimal
        (out_dir / stray).unlink(missing_ok=True)
    if tied:
        legacy_config_json(out_dir / "config.json")

    # Reload from disk, so the references are computed from exactly what was written.
    model = LlamaForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32).eval()

    input_ids = torch.tensor(TINY_INPUT_IDS, dtype=torch.int64)
    with torch.no_grad():
        logits = model(input_ids).logits.float()

    greedy_ids, step_logits = greedy_decode_with_cache(model, input_ids[0], TINY_GREEDY_NEW_TOKENS)

    # Cross-checks: the cached decode must agree with a full forward and with generate().
    with torch.no_grad():
        full = model(greedy_ids[:-1].unsqueeze(0)).logits[0, input_ids.shape[1] - 1:]
    assert torch.allclose(full, step_logits, atol=1e-4), "KV-cache decode differs from full forward"
    gen = model.generate(input_ids[:1], max_new_tokens=TINY_GREEDY_NEW_TOKENS, do_sample=False,
                         min_new_tokens=TINY_GREEDY_NEW_TOKENS, eos_token_id=None, pad_token_id=0)
    assert gen[0].tolist() == greedy_ids.tolist(), (gen[0].tolist(), greedy_ids.tolist())
    top2 = torch.topk(step_logits, 2, dim=-1).values
    margin = float((top2[:, 0] - top2[:, 1]).min())
    log(f"  {out_dir.name}: greedy ids {greedy_ids.tolist()} (smallest top-1/top-2 margin {margin:.4f})")

    save_tensors(out_dir / "reference.safetensors", {
        "input_ids": input_ids,
        "logits": logits,
        "greedy_ids": greedy_ids,
        "greedy_step_logits": step_logits.float(),
    })


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


def save_adapter(peft_model, out: Path) -> None:
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
    if out.exists():
        shutil.rmtree(out)
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

    grads = {}
    for name, p in sorted(pm.named_parameters(), key=lambda kv: kv[0]):
        if ".lora_" not in name:
            assert p.grad is None, f"frozen parameter {name} got a gradient"
            continue
        # base_model.model.<module path>.lora_A.default.weight -> grad.<module path>.lora_A
        assert p.grad is not None and p.grad.abs().max() > 0, f"{name} got no gradient"
        module_path, _, rest = name.removeprefix("base_model.model.").partition(".lora_")
        which = "lora_" + rest.split(".")[0]  # lora_A / lora_B
        grads[f"grad.{module_path}.{which}"] = p.grad.detach().clone()
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
    if out_rs.exists():
        shutil.rmtree(out_rs)
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


# --------------------------------------------------------------------------------------------
# 3. A tiny GGUF file with one small tensor per storage type, and gguf-py's dequantization
# --------------------------------------------------------------------------------------------

def dequant_source_data(seed: int) -> np.ndarray:
    """[4, 64] f32 values (numpy shape; GGUF lists it as [64, 4]) covering the cases quantizers care
    about: plain Gaussian, an offset row (Q4_1's min), an all-zero block (scale 0) next to a block with
    one outlier, and a uniform row."""
    rng = np.random.default_rng(seed)
    x = np.empty((4, 64), dtype=np.float32)
    x[0] = rng.standard_normal(64)
    x[1] = 3.0 * rng.standard_normal(64) + 1.5
    x[2, :32] = 0.0
    x[2, 32:] = 0.05 * rng.standard_normal(32)
    x[2, 40] = -4.0
    x[3] = rng.uniform(-2.0, 2.0, 64)
    return x.astype(np.float32)


def random_k_blocks(qtype, n_blocks: int, seed: int) -> np.ndarray:
    """Raw K-quant blocks of random bytes with sane f16 super-block scales. gguf-py cannot *quantize*
    to K types, but any byte pattern is a valid block, so this still pins down dequantization."""
    import gguf

    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    d = np.array(([0.0123, -0.0071] * n_blocks)[:n_blocks], dtype=np.float16).view(np.uint8).reshape(n_blocks, 2)
    dmin = np.full(n_blocks, 0.0045, dtype=np.float16).view(np.uint8).reshape(n_blocks, 2)
    if qtype == gguf.GGMLQuantizationType.Q4_K:  # d, dmin, scales[12], qs[128]
        blocks[:, 0:2] = d
        blocks[:, 2:4] = dmin
    elif qtype == gguf.GGMLQuantizationType.Q6_K:  # ql[128], qh[64], scales[16] (i8), d
        blocks[:, block_bytes - 2:] = d
    else:
        raise ValueError(qtype)
    assert block_elems == 256
    return blocks


def make_dequant_fixture(out: Path, seed: int) -> None:
    import gguf
    from gguf import GGMLQuantizationType as T

    x = dequant_source_data(seed)
    gguf_path = out / "dequant.gguf"

    # name -> (type, numpy data as written: float array, or uint8 raw blocks)
    tensors: list[tuple[str, T, np.ndarray]] = []
    for name, qt in [("f32", T.F32), ("f16", T.F16), ("bf16", T.BF16),
                     ("q8_0", T.Q8_0), ("q4_0", T.Q4_0), ("q4_1", T.Q4_1)]:
        tensors.append((name, qt, gguf.quants.quantize(x, qt)))
    # A 1-D tensor (like a norm weight), and random raw K-quant blocks [2, 256].
    tensors.append(("norm_f32", T.F32, x[3].copy()))
    tensors.append(("q4_k", T.Q4_K, random_k_blocks(T.Q4_K, 2, seed + 1)))
    tensors.append(("q6_k", T.Q6_K, random_k_blocks(T.Q6_K, 2, seed + 2)))

    w = gguf.GGUFWriter(str(gguf_path), arch="llama")
    w.add_uint32("llama.context_length", 128)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_string("general.name", "burn-lora dequant fixture")
    w.add_array("tokenizer.ggml.tokens", ["<unk>", "hello", " world", "café", "東京"])
    w.add_bool("burn_lora.test_flag", True)
    w.add_int32("burn_lora.test_i32", -7)
    for name, qt, data in tensors:
        if qt in (T.F32, T.F16):
            w.add_tensor(name, data)  # dtype tells the writer the type
        else:
            # uint8 raw bytes; the writer derives the element shape from the byte shape
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # Read back and dequantize with gguf-py (the reference), in file element order.
    reader = gguf.GGUFReader(str(gguf_path))
    ref: dict[str, torch.Tensor] = {}
    info = []
    for t in reader.tensors:
        deq = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        numpy_shape = [int(s) for s in reversed(t.shape.tolist())]
        deq = deq.reshape(numpy_shape)
        ref[t.name] = torch.from_numpy(deq.copy())
        info.append({
            "name": t.name,
            "type": t.tensor_type.name,
            "type_id": int(t.tensor_type),
            "gguf_dims": [int(s) for s in t.shape.tolist()],  # fastest dimension first (ne[0], ne[1], ...)
            "numpy_shape": numpy_shape,  # row-major shape of the dequantized values
            "n_elements": int(t.n_elements),
            "n_bytes": int(t.n_bytes),
            "data_offset": int(t.data_offset),  # absolute offset in the file
        })

    # Cross-check gguf-py against the ggml formulas written out by hand (REFERENCE.md section 5).
    def blocks_of(name):
        t = next(t for t in reader.tensors if t.name == name)
        return np.asarray(t.data, dtype=np.uint8).reshape(-1, gguf.GGML_QUANT_SIZES[t.tensor_type][1])

    b = blocks_of("q8_0")
    hand = b[:, :2].copy().view(np.float16).astype(np.float32) * b[:, 2:].view(np.int8).astype(np.float32)
    assert np.array_equal(hand.reshape(-1), ref["q8_0"].numpy().reshape(-1))
    b = blocks_of("q4_0")
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    q = np.concatenate([b[:, 2:] & 0x0F, b[:, 2:] >> 4], axis=1).astype(np.float32)
    assert np.array_equal((d * (q - 8)).reshape(-1), ref["q4_0"].numpy().reshape(-1))
    b = blocks_of("q4_1")
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
    q = np.concatenate([b[:, 4:] & 0x0F, b[:, 4:] >> 4], axis=1).astype(np.float32)
    assert np.allclose((d * q + m).reshape(-1), ref["q4_1"].numpy().reshape(-1), rtol=0, atol=1e-6)
    assert np.array_equal(ref["f32"].numpy(), x)

    save_tensors(out / "dequant-reference.safetensors", ref)
    meta = {}
    for field in reader.fields.values():
        if field.name.startswith("GGUF."):
            continue  # reader's pseudo-fields (version, counts)
        vt = field.types[0].name if field.types else None
        if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
            vt = f"ARRAY[{field.types[-1].name}]"
        meta[field.name] = {"type": vt, "value": field.contents()}
    errors = {name: float(np.abs(ref[name].numpy() - x).max())
              for name, _, _ in tensors if name in ("f16", "bf16", "q8_0", "q4_0", "q4_1")}
    write_json(out / "dequant-reference.json", {
        "file": "dequant.gguf",
        "gguf_version": int(reader.fields["GGUF.version"].contents()),
        "alignment": int(reader.alignment),
        "metadata": meta,
        "tensors": info,
        "notes": [
            "f32, f16, bf16, q8_0, q4_0, q4_1 quantize the same [4, 64] source values with gguf.quants.quantize; "
            "their values in dequant-reference.safetensors are gguf-py's dequantization (not the source).",
            "norm_f32 is a 1-D F32 tensor equal to row 3 of the source.",
            "q4_k and q6_k are random raw blocks (2 super-blocks of 256) with fixed f16 scales: gguf-py "
            "cannot quantize to K types, but it dequantizes them.",
            "max |dequantized - source| per type: " + json.dumps(errors),
        ],
    })
    log(f"  dequant: {len(info)} tensors, max abs error vs source {errors}")


# --------------------------------------------------------------------------------------------
# 4. SmolLM2-135M-Instruct reference values from the real GGUF, via transformers and gguf-py
# --------------------------------------------------------------------------------------------

def top_k_entries(tok, logits: torch.Tensor, k: int = 5) -> list[dict]:
    vals, idx = torch.topk(logits.float(), k)
    return [{"id": int(i), "token": tok.decode([int(i)]), "logit": float(v)} for v, i in zip(vals, idx)]


def llama_cpp_permute_rows(n_rows: int, n_head: int) -> np.ndarray:
    """Index map of convert_hf_to_gguf.py's q/k permutation: file_row = perm[hf_row].

    HF row r = h*hd + half*(hd/2) + j  (rotate-half layout)  is stored at
    file row   h*hd + 2*j + half       (interleaved pairs, llama.cpp's RoPE layout)."""
    hd = n_rows // n_head
    perm = np.empty(n_rows, dtype=np.int64)
    for h in range(n_head):
        for half in range(2):
            for j in range(hd // 2):
                perm[h * hd + half * (hd // 2) + j] = h * hd + 2 * j + half
    return perm


def make_smollm2_reference(model_path: Path, out: Path) -> None:
    import gguf
    import peft
    import transformers

    tok = load_tokenizer(model_path)
    model = load_causal_lm(model_path)
    cfg = model.config

    def next_token(ids: list[int]) -> list[dict]:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        return top_k_entries(tok, logits)

    messages = SMOLLM2_CHAT_MESSAGES
    chat_text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    prompts = []
    for kind, text in [("plain", "The capital of France is"), ("plain", "def fibonacci(n):"), ("chat", chat_text)]:
        ids = tok(text)["input_ids"]  # default add_special_tokens (see "tokenizer" below)
        entry = {"kind": kind, "text": text, "ids": ids, "top5": next_token(ids)}
        if kind == "chat":
            entry["messages"] = messages
            entry["add_generation_prompt"] = True
        prompts.append(entry)

    first = prompts[0]
    assert first["ids"] == [504, 3575, 282, 4649, 314], first["ids"]
    assert [e["id"] for e in first["top5"]] == [7042, 260, 4528, 2250, 1315], first["top5"]
    assert abs(first["top5"][0]["logit"] - 17.37) < 0.01, first["top5"][0]

    # Greedy continuation of the chat prompt.
    chat_ids = prompts[2]["ids"]
    with torch.no_grad():
        gen = model.generate(torch.tensor([chat_ids]), max_new_tokens=20, do_sample=False,
                             temperature=None, top_p=None, top_k=None)
    new_ids = gen[0, len(chat_ids):].tolist()
    greedy = {
        "prompt_ids": chat_ids,
        "max_new_tokens": 20,
        "eos_token_id": tok.eos_token_id,
        # generate() stops early once it produces the EOS token (<|im_end|>), which is then the last id
        "stopped_at_eos": len(new_ids) < 20 and new_ids[-1] == tok.eos_token_id,
        "new_ids": new_ids,
        "text": tok.decode(new_ids),
        "text_skip_special": tok.decode(new_ids, skip_special_tokens=True),
    }

    # Tokenizer round trips (no special tokens added; special-token text is still matched).
    samples = [
        "Hello world",
        "   leading spaces and  double  spaces",
        "Numbers 12345 and 3.14159, year 2024",
        "café naïve 東京 🙂",
        "line one\nline two\n\n\ttabbed\tend",
        "<|im_start|>user\nhi<|im_end|>",
    ]
    round_trips = []
    for s in samples:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        round_trips.append({"text": s, "ids": ids, "tokens": tok.convert_ids_to_tokens(ids),
                            "decoded": tok.decode(ids)})

    # Raw GGUF values vs. transformers' parameters (which undo llama.cpp's q/k row permutation).
    reader = gguf.GGUFReader(str(model_path))
    by_name = {t.name: t for t in reader.tensors}
    params = dict(model.named_parameters())

    def gguf_matrix(name: str) -> np.ndarray:
        t = by_name[name]
        return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(
            [int(s) for s in reversed(t.shape.tolist())])

    tensor_checks = []
    for gname, hname, permuted_heads in [
        ("token_embd.weight", "model.embed_tokens.weight", None),
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", cfg.num_attention_heads),
        ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", cfg.num_key_value_heads),
        ("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight", None),
    ]:
        t = by_name[gname]
        g = gguf_matrix(gname)
        h = params[hname].detach().float().numpy()
        entry = {
            "gguf_name": gname,
            "gguf_type": t.tensor_type.name,
            "gguf_dims": [int(s) for s in t.shape.tolist()],
            "gguf_first16": g.reshape(-1)[:16].tolist(),
            "hf_name": hname,
            "hf_shape": list(h.shape),
            "hf_first16": h.reshape(-1)[:16].tolist() if h.ndim == 1 else h[0, :16].tolist(),
        }
        if permuted_heads is None:
            assert np.array_equal(g, h), gname
        else:
            perm = llama_cpp_permute_rows(h.shape[0], permuted_heads)
            assert np.array_equal(h, g[perm]), f"{gname}: transformers does not match the documented un-permutation"
            assert not np.array_equal(h, g), gname
            # Row 0 maps to row 0, so the first 16 values agree; column 0 of the first head shows the permutation.
            head_dim = h.shape[0] // permuted_heads
            entry["n_head"] = permuted_heads
            entry["head_dim"] = head_dim
            entry["gguf_col0_first_head"] = g[:head_dim, 0].tolist()
            entry["hf_col0_first_head"] = h[:head_dim, 0].tolist()
            entry["hf_row_from_gguf_row"] = "hf[h*hd + half*hd/2 + j] = gguf[h*hd + 2*j + half]"
        tensor_checks.append(entry)

    result = {
        "model_file": model_path.name,
        "versions": {"transformers": transformers.__version__, "peft": peft.__version__,
                     "torch": torch.__version__.split("+")[0],
                     "gguf": __import__("importlib.metadata").metadata.version("gguf")},
        "config": {
            "num_hidden_layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size, "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads, "vocab_size": cfg.vocab_size,
            "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", None)),
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
        },
        "tokenizer": {
            "class": type(tok).__name__,
            # tok(text) defaults to add_special_tokens=True; for SmolLM2 that adds nothing (no BOS/EOS):
            "default_add_special_tokens": True,
            "default_adds_tokens": tok("x")["input_ids"] != tok("x", add_special_tokens=False)["input_ids"],
            "add_bos_token": getattr(tok, "add_bos_token", None),
            "add_eos_token": getattr(tok, "add_eos_token", None),
            "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
            "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
            "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
            "chat_template": tok.chat_template,
        },
        "prompts": prompts,
        "greedy_chat": greedy,
        "tokenizer_round_trips": round_trips,
        "tensors": tensor_checks,
    }
    write_json(out / "smollm2-reference.json", result)
    for p in prompts:
        log(f"  smollm2 {p['text']!r}: ids {p['ids']}")
        log("    top5 " + ", ".join(f"{e['id']} {e['token']!r} {e['logit']:.4f}" for e in p["top5"]))
    log(f"  greedy chat: {new_ids} {greedy['text']!r}")


# --------------------------------------------------------------------------------------------
# 5. A PEFT LoRA adapter on the real SmolLM2, with PEFT's next-token logits
# --------------------------------------------------------------------------------------------

def make_smollm2_peft(model_path: Path, out: Path, seed: int) -> None:
    """PEFT LoRA r=2, alpha=4 on q_proj/v_proj of every SmolLM2 layer (60 modules), B drawn
    N(0, 0.02^2) so it moves the logits; saved into smollm2-peft-adapter/ (~0.5 MB), with the
    top-5 next tokens with and without the adapter in smollm2-peft-reference.json."""
    import peft
    import transformers
    from peft import LoraConfig, get_peft_model

    tok = load_tokenizer(model_path)
    model = load_causal_lm(model_path)
    # Recorded as base_model_name_or_path in adapter_config.json: the file stem, not /root/...
    # (the name the Rust side writes for a GGUF base, too).
    model.config._name_or_path = model_path.stem
    model.name_or_path = model_path.stem

    chat_text = tok.apply_chat_template(SMOLLM2_CHAT_MESSAGES, add_generation_prompt=True, tokenize=False)
    prompts = []
    for kind, text in [("plain", "The capital of France is"), ("chat", chat_text)]:
        prompts.append({"kind": kind, "text": text, "ids": tok(text)["input_ids"]})
    assert prompts[0]["ids"] == [504, 3575, 282, 4649, 314], prompts[0]["ids"]
    # Same ids as the chat prompt of smollm2-reference.json, when that file is there.
    ref_path = out / "smollm2-reference.json"
    if ref_path.exists():
        ref_chat = next(p for p in json.loads(ref_path.read_text())["prompts"] if p["kind"] == "chat")
        assert ref_chat["ids"] == prompts[1]["ids"], "chat ids differ from smollm2-reference.json"

    base_logits = [last_logits(model, p["ids"]) for p in prompts]

    set_determinism(seed)  # lora_A is drawn (kaiming-uniform) inside get_peft_model
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                     task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    randomize_lora_b(pm, "default", seed + 1, std=0.02)
    pm.eval()
    n_modules = sum(1 for n, _ in pm.named_parameters() if ".lora_A.default." in n)
    assert n_modules == 2 * pm.config.num_hidden_layers == 60, n_modules

    adapter_dir = out / "smollm2-peft-adapter"
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    with warnings.catch_warnings():
        # PEFT looks for <base_model_name_or_path>/config.json to see whether the vocabulary grew;
        # a GGUF base has none. Only the embeddings would be affected, and they are not adapted.
        warnings.filterwarnings("ignore", message="Could not find a config file")
        save_adapter(pm, adapter_dir)

    for p, base in zip(prompts, base_logits):
        logits = last_logits(pm, p["ids"])
        moved = float((logits - base).abs().max())
        assert moved > 0.1, f"{p['text']!r}: the adapter moves the logits by only {moved:.4f}"
        p["top5"] = top_k_entries(tok, logits)
        p["base_top5"] = top_k_entries(tok, base)
        p["max_abs_logit_change"] = moved
        log(f"  smollm2-peft {p['text'][:40]!r}...: max |adapter - base| logit {moved:.4f}")
        log("    adapter top5 " + ", ".join(f"{e['id']} {e['token']!r} {e['logit']:.4f}" for e in p["top5"]))
        log("    base    top5 " + ", ".join(f"{e['id']} {e['token']!r} {e['logit']:.4f}" for e in p["base_top5"]))

    # Sanity: PEFT loading the saved directory onto a fresh base gives the same logits.
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(load_causal_lm(model_path), str(adapter_dir)).eval()
    for p in prompts:
        again = top_k_entries(tok, last_logits(reloaded, p["ids"]))
        assert [e["id"] for e in again] == [e["id"] for e in p["top5"]]
        assert max(abs(a["logit"] - b["logit"]) for a, b in zip(again, p["top5"])) < 1e-5

    write_json(out / "smollm2-peft-reference.json", {
        "model_file": model_path.name,
        "adapter_dir": adapter_dir.name,
        "versions": {"transformers": transformers.__version__, "peft": peft.__version__,
                     "torch": torch.__version__.split("+")[0]},
        "lora": {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0,
                 "n_modules": n_modules, "lora_B_std": 0.02, "seed": seed},
        "notes": "top5: next-token logits of the PEFT model (eval mode) for the prompt ids as given; "
                 "base_top5: the same model without the adapter; "
                 "max_abs_logit_change: max over the whole vocabulary of |adapter - base|.",
        "prompts": prompts,
    })


# --------------------------------------------------------------------------------------------
# 6. Check modes (used by Rust-side round-trip tests)
# --------------------------------------------------------------------------------------------

class CheckFailed(Exception):
    pass


@contextlib.contextmanager
def capture_warnings():
    """Collect everything PEFT/transformers warn about, via `warnings` or `logging`."""
    captured: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record):
            captured.append(f"{record.name}: {record.getMessage()}")

    handler = Handler(level=logging.WARNING)
    loggers = [logging.getLogger(n) for n in ("", "peft", "transformers")]
    for lg in loggers:
        lg.addHandler(handler)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        try:
            yield captured
        finally:
            captured.extend(f"{w.category.__name__}: {w.message}" for w in ws)
            for lg in loggers:
                lg.removeHandler(handler)


def read_expect(path: Path) -> dict:
    exp = json.loads(Path(path).read_text(encoding="utf-8"))
    for key in ("ids", "top_k"):
        if key not in exp:
            raise CheckFailed(f"{path}: missing key {key!r}")
    if not exp["top_k"]:
        raise CheckFailed(f"{path}: empty top_k")
    return exp


def compare_logits(logits: torch.Tensor, exp: dict, atol: float) -> str:
    """Same top-k ids in the same order, and each expected logit within atol of the model's logit
    for that id. Returns a summary; raises CheckFailed."""
    k = len(exp["top_k"])
    vals, idx = torch.topk(logits.float(), k)
    got_ids = [int(i) for i in idx]
    exp_ids = [int(e["id"]) for e in exp["top_k"]]
    diffs = [abs(float(logits[i]) - float(e["logit"])) for i, e in zip(exp_ids, exp["top_k"])]
    max_diff = max(diffs)
    got = ", ".join(f"{i}:{float(v):.4f}" for i, v in zip(got_ids, vals))
    want = ", ".join(f"{e['id']}:{float(e['logit']):.4f}" for e in exp["top_k"])
    log(f"  expected top-{k}: {want}")
    log(f"  python   top-{k}: {got}")
    log(f"  max |logit difference| over the expected ids: {max_diff:.3e} (tolerance {atol:g})")
    if got_ids != exp_ids:
        raise CheckFailed(f"top-{k} ids differ: expected {exp_ids}, got {got_ids} (max diff {max_diff:.3e})")
    if max_diff > atol:
        raise CheckFailed(f"logits differ by {max_diff:.3e} > {atol:g}")
    return f"top-{k} ids match, max |diff| {max_diff:.3e}"


def last_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids], dtype=torch.int64)).logits[0, -1].float()


def check_prompt_tokenization(exp: dict, tok_source: Path | None) -> None:
    """Informational: does transformers' tokenizer give the same ids for "prompt"? (ids are used as given)."""
    if not exp.get("prompt") or tok_source is None:
        return
    try:
        tok = load_tokenizer(tok_source)
    except Exception as e:  # a merged dir may have no tokenizer
        log(f"  note: no tokenizer at {tok_source} ({type(e).__name__}); using ids as given")
        return
    ids = tok(exp["prompt"])["input_ids"]
    if ids == exp["ids"]:
        log("  note: transformers tokenizes the prompt to the same ids")
    else:
        log(f"  note: transformers tokenizes the prompt to {ids}, the file has {exp['ids']} (ids used as given)")


def check_adapter(adapter_dir: Path, model_path: Path, expect: Path, atol: float) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file

    exp = read_expect(expect)
    base = load_causal_lm(model_path)
    check_prompt_tokenization(exp, model_path)
    base_logits = last_logits(base, exp["ids"])

    with capture_warnings() as msgs:
        pm = PeftModel.from_pretrained(base, str(adapter_dir), adapter_name="default").eval()
    bad = [m for m in msgs if any(w in m.lower() for w in ("missing", "unexpected", "not found", "mismatch"))]
    for m in msgs:
        if not m.startswith(("FutureWarning", "DeprecationWarning")):
            log(f"  warning while loading: {m[:300]}")
    if bad:
        raise CheckFailed(f"PEFT reported key problems: {bad[0][:300]}")

    # PEFT only warns about missing keys and ignores unexpected ones silently: check both ourselves.
    wfile = adapter_dir / "adapter_model.safetensors"
    file_sd = load_file(str(wfile))
    model_sd = pm.state_dict()
    model_lora = {k for k in model_sd if ".lora_" in k and ".default." in k}
    expected_model_keys = set()
    for k, v in file_sd.items():
        if not k.startswith("base_model.model."):
            raise CheckFailed(f"adapter key without the base_model.model. prefix: {k}")
        stem, dot, last = k.rpartition(".")  # ...lora_A . weight
        mk = f"{stem}.default.{last}"
        if mk not in model_sd:
            raise CheckFailed(f"adapter tensor {k} matches no module of the model")
        if tuple(model_sd[mk].shape) != tuple(v.shape):
            raise CheckFailed(f"{k}: shape {list(v.shape)} in the file, {list(model_sd[mk].shape)} in the model")
        if not torch.equal(model_sd[mk].float(), v.float()):
            raise CheckFailed(f"{k}: loaded values differ from the file")
        expected_model_keys.add(mk)
    missing = sorted(model_lora - expected_model_keys)
    if missing:
        raise CheckFailed(f"{len(missing)} adapter weights of the model are not in the file, e.g. {missing[0]}")
    cfg = pm.peft_config["default"]
    log(f"  adapter: {len(file_sd)} tensors, r={cfg.r}, lora_alpha={cfg.lora_alpha}, "
        f"use_rslora={cfg.use_rslora}, targets={sorted(cfg.target_modules) if not isinstance(cfg.target_modules, str) else cfg.target_modules}")

    logits = last_logits(pm, exp["ids"])
    moved = float((logits - base_logits).abs().max())
    log(f"  max |adapter - base| logit change: {moved:.3e}")
    if moved < 1e-6:
        raise CheckFailed("the adapter does not change the logits (all-zero lora_B, or not applied)")
    summary = compare_logits(logits, exp, atol)
    log(f"PASS check-adapter {adapter_dir}: {summary}")


def check_merged(hf_dir: Path, expect: Path, atol: float) -> None:
    from transformers import AutoModelForCausalLM

    exp = read_expect(expect)
    with capture_warnings() as msgs:
        model, info = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32,
                                                           output_loading_info=True)
    model.eval()
    for m in msgs:
        if not m.startswith(("FutureWarning", "DeprecationWarning")):
            log(f"  warning while loading: {m[:300]}")
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise CheckFailed(f"transformers loading problems: {json.dumps({k: list(map(str, v))[:5] for k, v in problems.items()})}")
    check_prompt_tokenization(exp, hf_dir)
    summary = compare_logits(last_logits(model, exp["ids"]), exp, atol)
    log(f"PASS check-merged {hf_dir}: {summary}")


def run_check(fn, *args) -> int:
    try:
        fn(*args)
        return 0
    except CheckFailed as e:
        log(f"FAIL {fn.__name__.replace('_', '-')}: {e}")
        return 1
    except Exception as e:
        log(f"FAIL {fn.__name__.replace('_', '-')}: {type(e).__name__}: {e}")
        return 1


def self_test(fixtures: Path, atol: float) -> int:
    """Run both check modes against the tiny fixtures: cases that must pass and cases that must fail."""
    from peft import PeftModel
    from safetensors.torch import load_file, save_file

    tiny = fixtures / "tiny-llama"
    ids = TINY_INPUT_IDS[0]
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def expect_from(model, name):
            logits = last_logits(model, ids)
            vals, idx = torch.topk(logits, 5)
            p = tmp / f"{name}.json"
            write_json(p, {"prompt": None, "ids": ids,
                           "top_k": [{"id": int(i), "token": "", "logit": float(v)} for v, i in zip(vals, idx)]})
            return p

        pm = PeftModel.from_pretrained(load_causal_lm(tiny), str(tiny / "peft-adapter")).eval()
        good = expect_from(pm, "adapter")
        merged_dir = tmp / "merged"
        pm.merge_and_unload().save_pretrained(str(merged_dir))
        base_exp = expect_from(load_causal_lm(tiny), "base")

        # Broken adapters: unknown module key, all-zero B.
        bad_key = tmp / "bad-key"
        shutil.copytree(tiny / "peft-adapter", bad_key)
        sd = load_file(str(bad_key / "adapter_model.safetensors"))
        k = next(k for k in sd if "q_proj.lora_A" in k)
        sd[k.replace("q_proj", "qq_proj")] = sd.pop(k)
        save_file(sd, str(bad_key / "adapter_model.safetensors"), metadata={"format": "pt"})
        # An extra tensor for a module the model does not have: PEFT ignores it without a word.
        extra_key = tmp / "extra-key"
        shutil.copytree(tiny / "peft-adapter", extra_key)
        sd = load_file(str(extra_key / "adapter_model.safetensors"))
        k = next(k for k in sd if "q_proj.lora_A" in k)
        sd[k.replace("layers.0", "layers.7")] = sd[k].clone()
        save_file(sd, str(extra_key / "adapter_model.safetensors"), metadata={"format": "pt"})
        # A merged directory that lost its lm_head (transformers would initialise it randomly).
        no_head = tmp / "merged-no-head"
        shutil.copytree(merged_dir, no_head)
        sd = load_file(str(no_head / "model.safetensors"))
        del sd["lm_head.weight"]
        save_file(sd, str(no_head / "model.safetensors"), metadata={"format": "pt"})
        zero_b = tmp / "zero-b"
        shutil.copytree(tiny / "peft-adapter", zero_b)
        sd = load_file(str(zero_b / "adapter_model.safetensors"))
        sd = {k: (torch.zeros_like(v) if "lora_B" in k else v) for k, v in sd.items()}
        save_file(sd, str(zero_b / "adapter_model.safetensors"), metadata={"format": "pt"})

        cases = [
            ("adapter matches", 0, check_adapter, tiny / "peft-adapter", tiny, good, atol),
            ("adapter vs base expectations", 1, check_adapter, tiny / "peft-adapter", tiny, base_exp, atol),
            ("adapter with an unknown module key", 1, check_adapter, bad_key, tiny, good, atol),
            ("adapter with an extra unknown key", 1, check_adapter, extra_key, tiny, good, atol),
            ("adapter with zero B", 1, check_adapter, zero_b, tiny, base_exp, atol),
            ("merged dir matches adapter", 0, check_merged, merged_dir, good, atol),
            ("merged dir vs base expectations", 1, check_merged, merged_dir, base_exp, atol),
            ("merged dir without lm_head", 1, check_merged, no_head, good, atol),
        ]
        for label, want, fn, *args in cases:
            log(f"--- self-test: {label} (expect {'PASS' if want == 0 else 'FAIL'})")
            rc = run_check(fn, *args)
            if rc != want:
                failures.append(label)
    if failures:
        log(f"FAIL self-test: {failures}")
        return 1
    log(f"PASS self-test: {len(cases)} cases")
    return 0


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See the module docstring / scripts/README.md for set-up.")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixtures directory (default: <repo>/fixtures)")
    ap.add_argument("--model", type=Path, default=None,
                    help=f"real model: GGUF file or HF directory (default for fixtures: {DEFAULT_MODEL})")
    ap.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                    help=f"comma-separated fixture parts to (re)write, of {', '.join(ALL_PARTS)} "
                         f"(default: {','.join(DEFAULT_PARTS)})")
    ap.add_argument("--check-adapter", type=Path, metavar="ADAPTER_DIR",
                    help="check a PEFT adapter dir on --model against --expect")
    ap.add_argument("--check-merged", type=Path, metavar="HF_DIR",
                    help="check a merged HF directory against --expect")
    ap.add_argument("--expect", type=Path, metavar="FILE.json",
                    help='{"prompt": ..., "ids": [...], "top_k": [{"id", "token", "logit"}, ...]}')
    ap.add_argument("--atol", type=float, default=1e-3, help="logit tolerance for the check modes (default 1e-3)")
    ap.add_argument("--self-test", action="store_true", help="exercise the check modes on the tiny fixtures")
    args = ap.parse_args(argv)

    quiet_libraries()
    torch.set_num_threads(min(4, os.cpu_count() or 1))

    if args.check_adapter or args.check_merged:
        if not args.expect:
            ap.error("--expect is required with --check-adapter / --check-merged")
        if args.check_adapter:
            if not args.model:
                ap.error("--check-adapter needs --model (GGUF file or HF directory)")
            return run_check(check_adapter, args.check_adapter, args.model, args.expect, args.atol)
        return run_check(check_merged, args.check_merged, args.expect, args.atol)
    if args.self_test:
        return self_test(args.out, args.atol)

    # Deprecation notices from the libraries are noise when writing fixtures (the check modes
    # above still see every warning).
    warnings.filterwarnings("ignore", category=FutureWarning)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - set(ALL_PARTS)
    if unknown:
        ap.error(f"unknown parts: {sorted(unknown)}")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if "tiny" in parts:
        log("tiny llama models")
        make_tiny_llama(out / "tiny-llama", tied=False, seed=SEEDS["tiny"])
        make_tiny_llama(out / "tiny-llama-tied", tied=True, seed=SEEDS["tiny_tied"])
    if "peft" in parts:
        log("PEFT adapters")
        make_peft_fixtures(out / "tiny-llama", seed=SEEDS["peft"])
    if "dequant" in parts:
        log("GGUF dequantization fixture")
        make_dequant_fixture(out, seed=SEEDS["dequant"])
    model = args.model or DEFAULT_MODEL
    if parts & {"smollm2", "smollm2-peft"} and not model.exists():
        log(f"error: {model} not found (pass --model, or leave smollm2 / smollm2-peft out of --parts)")
        return 1
    if "smollm2" in parts:
        log(f"SmolLM2 reference from {model}")
        make_smollm2_reference(model, out)
    if "smollm2-peft" in parts:
        log(f"PEFT adapter on SmolLM2 from {model}")
        make_smollm2_peft(model, out, seed=SEEDS["smollm2_peft"])

    total = 0
    log("written:")
    for p in sorted(out.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            log(f"  {p.relative_to(out.parent)}  {p.stat().st_size} bytes")
            if p.suffix == ".safetensors" and p.name != "model.safetensors":
                for line in describe_safetensors(p):
                    log(line)
    log(f"total {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
