"""Parts `smollm2` and `smollm2-peft`: reference values from the real SmolLM2-135M-Instruct GGUF."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from .common import (
    ROUND_TRIP_SAMPLES, SMOLLM2_CHAT_MESSAGES, log, set_determinism, write_json, load_causal_lm, load_tokenizer,
    last_logits, tokenizer_round_trips,
)
from .peft_parts import randomize_lora_b, save_adapter, scale_dora_magnitudes


# --------------------------------------------------------------------------------------------
# 4. SmolLM2-135M-Instruct reference values from the real GGUF, via transformers and gguf-py
# --------------------------------------------------------------------------------------------

def top_k_entries(tok, logits: torch.Tensor, k: int = 5) -> list[dict]:
    vals, idx = torch.topk(logits.float(), k)
    return [{"id": int(i), "token": tok.decode([int(i)]), "logit": float(v)} for v, i in zip(vals, idx)]


def next_token_fn(model, tok):
    """ids -> the model's top-5 next tokens after them."""
    def next_token(ids: list[int]) -> list[dict]:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
        return top_k_entries(tok, logits)
    return next_token


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
    next_token = next_token_fn(model, tok)

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

    round_trips = tokenizer_round_trips(tok, ROUND_TRIP_SAMPLES + ["<|im_start|>user\nhi<|im_end|>"])

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

def make_smollm2_peft(model_path: Path, out: Path, seed: int, dora: bool = False) -> None:
    """PEFT LoRA r=2, alpha=4 on q_proj/v_proj of every SmolLM2 layer (60 modules), B drawn
    N(0, 0.02^2) so it moves the logits; saved into smollm2-peft-adapter/ (~0.5 MB), with the
    top-5 next tokens with and without the adapter in smollm2-peft-reference.json.

    With `dora`: the same as a DoRA adapter (`use_dora=True`), its magnitude vectors scaled by
    (1 + 0.02 N(0, 1)) after B is drawn; saved into smollm2-dora-adapter/ and
    smollm2-dora-reference.json, which also holds the top-20 logits."""
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
                     use_dora=dora, task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    randomize_lora_b(pm, "default", seed + 1, std=0.02)
    if dora:
        scale_dora_magnitudes(pm, seed + 2, std=0.02)
    pm.eval()
    n_modules = sum(1 for n, _ in pm.named_parameters() if ".lora_A.default." in n)
    assert n_modules == 2 * pm.config.num_hidden_layers == 60, n_modules

    stem = "smollm2-dora" if dora else "smollm2-peft"
    adapter_dir = out / f"{stem}-adapter"
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
        if dora:
            p["top20"] = top_k_entries(tok, logits, k=20)
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

    write_json(out / f"{stem}-reference.json", {
        "model_file": model_path.name,
        "adapter_dir": adapter_dir.name,
        "versions": {"transformers": transformers.__version__, "peft": peft.__version__,
                     "torch": torch.__version__.split("+")[0]},
        "lora": {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0,
                 "use_dora": dora, "n_modules": n_modules, "lora_B_std": 0.02, "seed": seed},
        "notes": "top5: next-token logits of the PEFT model (eval mode) for the prompt ids as given; "
                 "base_top5: the same model without the adapter; "
                 "max_abs_logit_change: max over the whole vocabulary of |adapter - base|.",
        "prompts": prompts,
    })
