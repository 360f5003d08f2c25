"""Part `families`: a tiny random model of each family beyond Llama (Qwen2, Qwen3, Mistral, Gemma 3).

For each family, in `fixtures/tiny-<family>/`:
- an HF directory (`config.json`, `model.safetensors`, and the tokenizer below as `tokenizer.json`)
  written by transformers, and `reference.safetensors`
  with its logits on TINY_INPUT_IDS, a KV-cache greedy decode (8 steps, past the sliding window), and
  the logits with a PEFT LoRA adapter (`peft-adapter/`, r=4, alpha=8 on all 7 linear layers, B random);
- a GGUF (`model.gguf`) written with gguf-py the way llama.cpp's `convert_hf_to_gguf.py` writes that
  architecture (tensor names from gguf-py's own TensorNameMap; q/k rows permuted only for `llama`;
  Gemma's norm gains stored as 1 + w; 2-D weights in F16), with a 300-token tokenizer in its
  metadata; `gguf-reference.safetensors` holds transformers' GGUF loader's logits on TINY_INPUT_IDS
  and `gguf-reference.json` its top-5 and its tokenizer's ids for TOKENIZER_SAMPLES.

The sizes are tiny on purpose (hidden 32, 2 layers, vocab 300): the whole part is a few hundred KB.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch

from .common import TINY_INPUT_IDS, LORA_TARGETS, log, set_determinism, save_tensors, write_json
from .peft_parts import randomize_lora_b, save_adapter
from .tiny import logits_and_greedy

FAMILIES = ["qwen2", "qwen3", "mistral", "gemma3"]
VOCAB = 300
# A window shorter than the 7-token inputs, so the sliding-window mask matters.
WINDOW = 4

# Strings the tokenizer references are recorded for (special tokens of each vocabulary included).
TOKENIZER_SAMPLES = [
    "The capital of France is",
    "the cat  sat\n\non the hat",
    " leading space, café ☃",
    "<start_of_turn>user\nhi<end_of_turn>",
    "<|im_start|>user\nhi<|im_end|>",
    "<s>[INST] the [/INST]",
]


def tiny_config(family: str):
    """The tiny config of `family`: each one exercises what differs from Llama."""
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6,
                  bos_token_id=2, eos_token_id=1)
    if family == "qwen2":
        from transformers import Qwen2Config
        # Qwen2: q/k/v biases (always), tied embeddings (as the small Qwen2.5 sizes), large RoPE base.
        return Qwen2Config(**common, num_key_value_heads=1, tie_word_embeddings=True,
                           rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
                           use_sliding_window=False)
    if family == "qwen3":
        from transformers import Qwen3Config
        # Qwen3: q/k norms, head_dim 24 given explicitly (not hidden / heads = 16), no biases.
        return Qwen3Config(**common, num_key_value_heads=1, head_dim=24, attention_bias=False,
                           tie_word_embeddings=False,
                           rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
    if family == "mistral":
        from transformers import MistralConfig
        return MistralConfig(**common, num_key_value_heads=1, head_dim=16, sliding_window=WINDOW,
                             tie_word_embeddings=False,
                             rope_parameters={"rope_type": "default", "rope_theta": 10_000.0})
    if family == "gemma3":
        from transformers import Gemma3TextConfig
        # Gemma 3: one sliding layer (local RoPE base) and one global, head_dim 24, scores scaled by
        # query_pre_attn_scalar = 20 (not head_dim), 2 query heads sharing 1 key/value head, tied.
        return Gemma3TextConfig(**common, num_key_value_heads=1, head_dim=24, query_pre_attn_scalar=20,
                                sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"],
                                rope_parameters={
                                    "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                                },
                                hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
                                pad_token_id=0)
    raise ValueError(family)


def causal_lm_class(family: str):
    import transformers
    return {"qwen2": transformers.Qwen2ForCausalLM, "qwen3": transformers.Qwen3ForCausalLM,
            "mistral": transformers.MistralForCausalLM, "gemma3": transformers.Gemma3ForCausalLM}[family]


def randomize(model: torch.nn.Module, seed: int, family: str) -> None:
    """Every weight re-drawn so each one matters (see tiny.randomize_weights): linear weights
    ~ N(0, 1/in), biases ~ N(0, 0.1²), embeddings ~ N(0, 0.1²) when tied else N(0, 1), norm gains
    ~ 1 + N(0, 0.1²) — for Gemma, whose gain is `1 + w`, that is w ~ N(0, 0.1²) instead."""
    gen = torch.Generator().manual_seed(seed)
    tied = model.config.tie_word_embeddings
    seen = set()
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if id(p) in seen:
                continue
            seen.add(id(p))
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                p.copy_(0.1 * noise + (0.0 if family == "gemma3" else 1.0))
            elif "embed_tokens" in name:
                p.copy_((0.1 if tied else 1.0) * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[1]))


# --------------------------------------------------------------------------------------------
# Tiny tokenizers for the GGUF metadata (300 tokens, the model's vocabulary)
# --------------------------------------------------------------------------------------------

SPM_PIECES = ["\u2581", "t", "h", "e", "a", "c", "p", "i", "l", "o", "f", "F", "r", "n", "s", "T",
              "\u2581t", "he", "\u2581the", "\u2581a", "\u2581c", "ap", "\u2581ca", "\u2581cap", "it", "al",
              "\u2581F", "ra", "an", "ce", "\u2581is", "\u2581of", "at", "\u2581Th", "\u2581The", "\u2581\u2581"]


def spm_vocab(gemma: bool):
    """(tokens, scores, types) of a SentencePiece vocabulary of exactly VOCAB tokens: specials, the 256
    byte-fallback tokens, then pieces. Gemma's layout (pad, eos, bos, unk, ... ) and a token of two
    spaces stored as real spaces, as llama.cpp writes Gemma's; Llama's (unk, s, /s) otherwise."""
    if gemma:
        specials = [("<pad>", 3), ("<eos>", 3), ("<bos>", 3), ("<unk>", 3), ("<mask>", 3),
                    ("<start_of_turn>", 3), ("<end_of_turn>", 3), ("\n", 4), ("  ", 1)]
    else:
        specials = [("<unk>", 2), ("<s>", 3), ("</s>", 3)]
    tokens = [t for t, _ in specials] + [f"<0x{b:02X}>" for b in range(256)]
    types = [ty for _, ty in specials] + [6] * 256
    pieces = [p for p in SPM_PIECES if not (gemma and p == "\u2581\u2581")]
    need = VOCAB - len(tokens)
    # Fill up with two-letter pieces of the letters above (reachable by the derived merges).
    letters = "thecaplionfrs"
    pieces += [a + b for a in letters for b in letters if a + b not in pieces]
    pieces = pieces[:need]
    assert len(pieces) == need, (len(pieces), need)
    tokens += pieces
    types += [1] * len(pieces)
    # Scores: specials -1000, bytes 0, pieces descending from -1 (longer pieces later = lower).
    scores = [-1000.0] * len(specials) + [0.0] * 256 + [-1.0 - i for i in range(len(pieces))]
    if not gemma:
        scores[0] = 0.0
    return tokens, scores, types


def gpt2_vocab():
    """(tokens, types, merges) of a byte-level BPE vocabulary of VOCAB tokens (Qwen's kind)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_chars = list(bytes_to_unicode().values())
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a"), ("Ġ", "c"), ("a", "p"), ("Ġc", "ap"),
              ("i", "t"), ("a", "l"), ("Ġcap", "it"), ("Ġcapit", "al"), ("Ġ", "o"), ("Ġo", "f"), ("Ġ", "F"),
              ("r", "a"), ("n", "c"), ("nc", "e"), ("Ġ", "i"), ("Ġi", "s"), ("T", "he"), ("a", "t"), ("Ġc", "at"),
              ("Ġ", "s"), ("Ġs", "at"), ("Ġ", "h"), ("Ġh", "at"), ("Ċ", "Ċ"), ("o", "n"), ("Ġ", "on"), ("Ġ", "l"),
              ("e", "a"), ("Ġl", "ea"), ("d", "i"), ("n", "g"), ("Ġle", "a"), ("c", "a"), ("f", "Ã"), ("Ġ", "Ġ"),
              ("Ġ", "hi"), ("h", "i"), ("u", "s")]
    tokens = list(byte_chars)
    for a, b in merges:
        tokens.append(a + b)
    # de-duplicate, keep order
    seen, uniq = set(), []
    for t in tokens:
        if t not in seen:
            seen.add(t)
            uniq.append(t)
    # Fill up with merges of two letters.
    for a in "thecaplionfrs":
        for b in "thecaplionfrs":
            if len(uniq) < VOCAB - len(specials) and a + b not in seen:
                seen.add(a + b)
                uniq.append(a + b)
                merges.append((a, b))
    tokens = uniq[: VOCAB - len(specials)]
    kept = set(tokens)
    merges = [m for m in merges if m[0] + m[1] in kept and m[0] in kept and m[1] in kept]
    tokens = tokens + specials
    assert len(tokens) == VOCAB, len(tokens)
    types = [1] * (VOCAB - len(specials)) + [3] * len(specials)
    return tokens, types, [f"{a} {b}" for a, b in merges]


# --------------------------------------------------------------------------------------------
# GGUF, written as llama.cpp's converter writes each architecture
# --------------------------------------------------------------------------------------------

GGUF_ARCH = {"qwen2": "qwen2", "qwen3": "qwen3", "mistral": "llama", "gemma3": "gemma3"}


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py `LlamaModel.permute` (rows of q/k, for llama.cpp's interleaved RoPE)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, family: str, path: Path) -> None:
    import gguf

    cfg = model.config
    arch = GGUF_ARCH[family]
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.TensorNameMap(arch_enum, cfg.num_hidden_layers)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{family}")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if family == "gemma3":
        w.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_sliding_window(cfg.sliding_window)
    else:
        w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
        if family == "qwen3":
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        if arch == "llama":
            w.add_vocab_size(cfg.vocab_size)
            w.add_rope_dimension_count(head_dim)
    # Tokenizer.
    if family == "qwen2" or family == "qwen3":
        tokens, types, merges = gpt2_vocab()
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(tokens.index("<|endoftext|>"))
        w.add_eos_token_id(tokens.index("<|im_end|>"))
        w.add_add_bos_token(False)
    else:
        gemma = family == "gemma3"
        tokens, scores, types = spm_vocab(gemma)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        if gemma:
            w.add_bos_token_id(2)
            w.add_eos_token_id(1)
            w.add_unk_token_id(3)
            w.add_pad_token_id(0)
            w.add_add_space_prefix(False)
        else:
            w.add_bos_token_id(1)
            w.add_eos_token_id(2)
            w.add_unk_token_id(0)
        w.add_add_bos_token(True)
    # Tensors.
    for name, p in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        data = p.detach().float().numpy().copy()
        if arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            data = llama_permute(data, cfg.num_attention_heads)
        if arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            data = llama_permute(data, cfg.num_key_value_heads)
        if family == "gemma3" and name.endswith("norm.weight"):
            data = data + 1.0  # Gemma3Model.norm_shift
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gname is not None, name
        # 2-D weights in F16 (half the size; the reference is computed from this file), 1-D in F32.
        w.add_tensor(gname, data.astype(np.float16 if data.ndim == 2 else np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def top5(logits: torch.Tensor) -> list[dict]:
    vals, idx = torch.topk(logits.float(), 5)
    return [{"id": int(i), "logit": float(v)} for v, i in zip(vals, idx)]


def gguf_reference(family: str, out_dir: Path, cfg) -> dict:
    """transformers' GGUF loader on model.gguf: logits and tokenizer ids."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Settings transformers' GGUF config mapping (`integrations/ggml.py`) does not read, passed
    # as overrides so its model is the one llama.cpp builds from the same file:
    kwargs = {}
    if family == "gemma3":
        # llama.cpp derives the attention scale from the head width (`f_attention_scale`, all sizes
        # but 27B); transformers would use Gemma3TextConfig's default 256.
        kwargs["query_pre_attn_scalar"] = cfg.head_dim
    if family == "qwen3":
        # `qwen3.attention.key_length` is not mapped; transformers would use Qwen3Config's 128.
        kwargs["head_dim"] = cfg.head_dim
    model = AutoModelForCausalLM.from_pretrained(str(out_dir), gguf_file="model.gguf", dtype=torch.float32,
                                                 **kwargs).eval()
    tok = AutoTokenizer.from_pretrained(str(out_dir), gguf_file="model.gguf")
    # The same tokenizer next to the HF weights, so the directory is a complete model for both
    # transformers/PEFT and burn-lora (scripts/check_families_peft.sh uses that).
    tok.save_pretrained(str(out_dir))
    ids = torch.tensor(TINY_INPUT_IDS, dtype=torch.int64)
    with torch.no_grad():
        logits = model(ids).logits.float()
    samples = []
    for s in TOKENIZER_SAMPLES:
        enc = tok(s)["input_ids"]
        samples.append({"text": s, "ids": enc, "decoded": tok.decode(enc, skip_special_tokens=False)})
    save_tensors(out_dir / "gguf-reference.safetensors", {"input_ids": ids, "logits": logits})
    return {
        "model_class": type(model).__name__,
        "overrides": kwargs,
        "top5_last": [top5(logits[b, -1]) for b in range(logits.shape[0])],
        "tokenizer": samples,
    }


def make_family(out_root: Path, family: str, seed: int) -> None:
    from peft import LoraConfig, get_peft_model

    out_dir = out_root / f"tiny-{family}"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    set_determinism(seed)
    cls = causal_lm_class(family)
    model = cls(tiny_config(family)).float().eval()
    randomize(model, seed, family)
    model.save_pretrained(str(out_dir))
    (out_dir / "generation_config.json").unlink(missing_ok=True)
    model = cls.from_pretrained(str(out_dir), dtype=torch.float32).eval()

    input_ids, logits, greedy_ids, step_logits, margin = logits_and_greedy(model)
    # An f32 implementation must not be able to flip a greedy choice by rounding.
    assert margin > 0.01, f"{family}: greedy top-1/top-2 margin {margin} too small; pick another seed"

    # PEFT adapter on every linear layer, B random so it moves the logits.
    set_determinism(seed + 1)
    base = cls.from_pretrained(str(out_dir), dtype=torch.float32).eval()
    base.config._name_or_path = f"fixtures/tiny-{family}"
    base.name_or_path = f"fixtures/tiny-{family}"
    pm = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=list(LORA_TARGETS),
                                         lora_dropout=0.0, task_type="CAUSAL_LM"))
    randomize_lora_b(pm, "default", seed + 2)
    pm.eval()
    save_adapter(pm, out_dir / "peft-adapter")
    with torch.no_grad():
        logits_adapter = pm(input_ids).logits.float()
    moved = float((logits_adapter - logits).abs().max())
    assert moved > 1e-2, f"{family}: the adapter does not move the logits"

    save_tensors(out_dir / "reference.safetensors", {
        "input_ids": input_ids,
        "logits": logits,
        "greedy_ids": greedy_ids,
        "greedy_step_logits": step_logits.float(),
        "logits_adapter": logits_adapter,
    })

    write_gguf(model, family, out_dir / "model.gguf")
    ref = gguf_reference(family, out_dir, model.config)
    write_json(out_dir / "gguf-reference.json", ref)
    log(f"  tiny-{family}: greedy {greedy_ids.tolist()} (margin {margin:.3f}), adapter moves logits by {moved:.3f}, "
        f"GGUF loads as {ref['model_class']}")


def make_family_fixtures(out_root: Path, seed: int) -> None:
    for i, family in enumerate(FAMILIES):
        make_family(out_root, family, seed + 10 * i)
