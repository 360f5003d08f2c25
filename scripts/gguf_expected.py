"""Expected values hard-coded in the lora-models GGUF and tokenizer unit tests.

    python3 scripts/gguf_expected.py [--model PATH] [--parts synthetic,real,tokenizer]

- `synthetic`: `crates/lora-models/src/gguf/tests.rs` SYNTHETIC. Two pseudo-random blocks per
  quantized type (the same LCG as the Rust test, scale fields pinned to finite halves),
  dequantized by gguf-py's reference `gguf.quants.dequantize`; prints the sum and every 5th
  (32-element types) or 37th (256-element types) value.
- `real`: `gguf/tests_reference.rs`. gguf-py dequantization of a few SmolLM2 tensors, and
  transformers' reverse q/k permutation (`LlamaConverter._reverse_permute_weights` in
  `modeling_gguf_pytorch_utils.py`) applied to `blk.0.attn_k.weight`.
- `tokenizer`: `tokenizer/tests.rs` SMOLLM2_IDS and the chat ids. transformers' own GGUF
  tokenizer (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`).
"""

import argparse
import json
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

DEFAULT_MODEL = os.path.expanduser("~/.cache/burn-lora/models/SmolLM2-135M-Instruct.Q4_1.gguf")


def lcg_bytes(n, seed):
    x, out = seed, bytearray()
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out.append((x >> 33) & 0xFF)
    return out


def synthetic():
    # byte offsets of each type's half-float scale fields within a block
    scales = {
        T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
        T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    }
    halves = [0.0123, -0.0456, 0.5, 0.00071]
    for t, offsets in scales.items():
        _, type_size = GGML_QUANT_SIZES[t]
        data = lcg_bytes(2 * type_size, seed=t.value)
        for b in range(2):
            for k, o in enumerate(offsets):
                at = b * type_size + o
                data[at:at + 2] = np.float16(halves[(b * 2 + k) % 4]).tobytes()
        vals = dequantize(np.frombuffer(bytes(data), dtype=np.uint8), t).astype(np.float32).reshape(-1)
        step = 5 if len(vals) == 64 else 37
        picks = ", ".join(f"({i}, {float(vals[i])!r})" for i in range(0, len(vals), step))
        print(f"({t.value}, {float(vals.astype(np.float64).sum())!r}, &[{picks}]),  // {t.name}")


def real(model):
    reader = GGUFReader(model)
    tensors = {t.name: t for t in reader.tensors}

    def deq(name):
        t = tensors[name]
        return dequantize(t.data, t.tensor_type).astype(np.float32)

    e = deq("token_embd.weight")
    print("token_embd", e.shape, float(e.astype(np.float64).sum()), e[504, :4].tolist())
    q = deq("blk.0.attn_q.weight")
    print("attn_q", q.shape, float(q.astype(np.float64).sum()), q[0, :4].tolist())
    print("attn_norm", deq("blk.0.attn_norm.weight")[:2].tolist())
    k = deq("blk.0.attn_k.weight")
    n_head = 3
    dim = k.shape[0] // n_head // 2
    hf = k.reshape(n_head, dim, 2, *k.shape[1:]).swapaxes(2, 1).reshape(k.shape)
    for row in [1, 31, 32, 100, 191]:
        print("attn_k hf row", row, hf[row, :3].tolist())


def tokenizer(model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.dirname(model), gguf_file=os.path.basename(model))
    cases = [
        "The capital of France is", "Héllo wörld — ça va? 日本語 🤗", "12345 and 2024, 3.14159",
        "line1\nline2\n\n  indented\ttab", "<|im_start|>user\nHi<|im_end|>\n", " leading space", "   ",
        "I don't think it's <|endoftext|> yet!!", "def f(x):\n    return x**2  # sq\n",
    ]
    for s in cases:
        print(json.dumps(s, ensure_ascii=False), tok.encode(s, add_special_tokens=True))
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    print("chat", json.dumps(text), tok.encode(text, add_special_tokens=False))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--parts", default="synthetic,real,tokenizer")
    args = ap.parse_args()
    parts = args.parts.split(",")
    if "synthetic" in parts:
        synthetic()
    if "real" in parts:
        real(args.model)
    if "tokenizer" in parts:
        tokenizer(args.model)
