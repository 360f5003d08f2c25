"""Part `tiny`: tiny random Llama models (untied and tied) with logits and greedy-decoding references."""

from __future__ import annotations

import inspect
import json
import math
import shutil
from pathlib import Path

import torch

from .common import (
    TINY_INPUT_IDS, TINY_GREEDY_NEW_TOKENS, TIED_EMBED_STD, log, set_determinism, save_tensors, write_json,
)


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


def logits_and_greedy(model):
    """The reference values of a tiny model: logits on TINY_INPUT_IDS, and a KV-cache greedy decode of
    row 0, checked against a full forward. Returns (input_ids, logits, greedy_ids, step_logits, margin),
    margin being the smallest top-1/top-2 logit gap over the decode steps."""
    input_ids = torch.tensor(TINY_INPUT_IDS, dtype=torch.int64)
    with torch.no_grad():
        logits = model(input_ids).logits.float()
    greedy_ids, step_logits = greedy_decode_with_cache(model, input_ids[0], TINY_GREEDY_NEW_TOKENS)
    with torch.no_grad():
        full = model(greedy_ids[:-1].unsqueeze(0)).logits[0, input_ids.shape[1] - 1:]
    assert torch.allclose(full, step_logits, atol=1e-4), "KV-cache decode differs from full forward"
    top2 = torch.topk(step_logits, 2, dim=-1).values
    margin = float((top2[:, 0] - top2[:, 1]).min())
    return input_ids, logits, greedy_ids, step_logits.float(), margin


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

    input_ids, logits, greedy_ids, step_logits, margin = logits_and_greedy(model)
    # Cross-check: the cached decode must agree with generate() too.
    gen = model.generate(input_ids[:1], max_new_tokens=TINY_GREEDY_NEW_TOKENS, do_sample=False,
                         min_new_tokens=TINY_GREEDY_NEW_TOKENS, eos_token_id=None, pad_token_id=0)
    assert gen[0].tolist() == greedy_ids.tolist(), (gen[0].tolist(), greedy_ids.tolist())
    log(f"  {out_dir.name}: greedy ids {greedy_ids.tolist()} (smallest top-1/top-2 margin {margin:.4f})")

    save_tensors(out_dir / "reference.safetensors", {
        "input_ids": input_ids,
        "logits": logits,
        "greedy_ids": greedy_ids,
        "greedy_step_logits": step_logits.float(),
    })
