"""Part `gemma3-270m`: reference values from the real Gemma 3 270M GGUF (`cargo xtask fetch --model
gemma3-270m`), computed by transformers' GGUF loader (dequantized to f32) and its GGUF tokenizer.

The file carries no chat template; the chat prompt is rendered with Gemma 3's documented template,
read from the same file the Rust crate uses (crates/lora-models/src/tokenizer/templates/gemma3.jinja).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .common import (
    REPO_ROOT, ROUND_TRIP_SAMPLES, log, write_json, load_causal_lm, load_tokenizer, tokenizer_round_trips,
)
from .smollm2 import next_token_fn

DEFAULT_GEMMA3 = Path.home() / ".cache" / "burn-lora" / "models" / "gemma-3-270m-q4_k_m.gguf"
TEMPLATE = REPO_ROOT / "crates" / "lora-models" / "src" / "tokenizer" / "templates" / "gemma3.jinja"
CHAT_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY_NEW_TOKENS = 12


def make_gemma3_reference(model_path: Path, out: Path) -> None:
    import transformers

    tok = load_tokenizer(model_path)
    assert tok.chat_template is None, "the Gemma 3 270M GGUF was expected to carry no chat template"
    template = TEMPLATE.read_text(encoding="utf-8")
    model = load_causal_lm(model_path)
    cfg = model.config
    next_token = next_token_fn(model, tok)

    chat_text = tok.apply_chat_template(CHAT_MESSAGES, chat_template=template, add_generation_prompt=True,
                                        tokenize=False)
    prompts = []
    for kind, text in [("plain", "The capital of France is"), ("plain", "def fibonacci(n):"),
                       ("plain", "Question: Who wrote Hamlet?\nAnswer:"), ("chat", chat_text)]:
        # A rendered template writes its own <bos>; plain text gets it from the tokenizer.
        ids = tok(text, add_special_tokens=(kind == "plain"))["input_ids"]
        entry = {"kind": kind, "text": text, "ids": ids, "top5": next_token(ids)}
        if kind == "chat":
            entry["messages"] = CHAT_MESSAGES
        prompts.append(entry)
    log(f"  'The capital of France is' -> {[(e['token'], round(e['logit'], 3)) for e in prompts[0]['top5']]}")

    first = prompts[0]["ids"]
    with torch.no_grad():
        gen = model.generate(torch.tensor([first]), max_new_tokens=GREEDY_NEW_TOKENS, do_sample=False,
                             temperature=None, top_p=None, top_k=None)
    new_ids = gen[0, len(first):].tolist()

    round_trips = tokenizer_round_trips(tok, ROUND_TRIP_SAMPLES + ["<start_of_turn>user\nhi<end_of_turn>"])

    result = {
        "model_file": model_path.name,
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
        "config": {k: getattr(cfg, k) for k in ["vocab_size", "hidden_size", "num_hidden_layers",
                                                  "num_attention_heads", "num_key_value_heads", "head_dim",
                                                  "intermediate_size", "sliding_window", "layer_types",
                                                  "query_pre_attn_scalar", "rms_norm_eps", "rope_parameters",
                                                  "max_position_embeddings", "tie_word_embeddings"]},
        "tokenizer": {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                      "vocab_size": len(tok)},
        "prompts": prompts,
        "greedy": {"prompt_ids": first, "max_new_tokens": GREEDY_NEW_TOKENS, "new_ids": new_ids,
                   "text": tok.decode(new_ids)},
        "tokenizer_round_trips": round_trips,
    }
    write_json(out / "gemma3-270m-reference.json", result)
    log(f"  greedy continuation: {tok.decode(new_ids)!r}")
