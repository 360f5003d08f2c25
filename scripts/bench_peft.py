"""PyTorch + PEFT side of `cargo xtask bench`: time LoRA training steps on the same model and shapes.

One configuration per process, so the peak resident memory the OS reports belongs to it alone.
Prints progress on stderr and one JSON object (the result) as the last line on stdout; the Rust
bench (`crates/lora-cli/src/bench/`) parses it.

Fairness with the Rust side: the same GGUF, dequantized to f32 by transformers; the same token ids
(the same 64-bit LCG, `bench_token_ids` below and in `lora_train::bench`); the same loss (causal LM
cross-entropy over every position, labels = inputs shifted by one); AdamW with the same lr,
betas, eps and weight decay; the same number of threads; eager PyTorch (no `torch.compile`).

    python scripts/bench_peft.py --model ~/.cache/burn-lora/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --targets q_proj,v_proj --steps 10 --warmup 3

`--shape 1b|3b|8b` (instead of `--model`) builds a Llama-3.2-1B / 3.2-3B / 3.1-8B-shaped model with
random weights (vocabulary 49,152, SmolLM2's tokenizer), one tensor at a time on the meta device so
that no full-precision copy of the whole model ever exists, in `--base f32|bf16|nf4` (nf4: every
linear layer but lm_head a bitsandbytes `Linear4bit`, quantized as each weight is drawn):

    python scripts/bench_peft.py --shape 1b --base nf4 --targets all-linear --rank 16 --batch 1 \
        --steps 3 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

MASK64 = (1 << 64) - 1


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_token_ids(batch: int, seq_len: int, vocab: int, seed: int) -> list[list[int]]:
    """Deterministic pseudo-random token ids; the Rust bench draws the identical ones."""
    state = seed & MASK64
    rows = []
    for _ in range(batch):
        row = []
        for _ in range(seq_len):
            state = (state * 6364136223846793005 + 1442695040888963407) & MASK64
            row.append((state >> 33) % vocab)
        rows.append(row)
    return rows


def rss_now_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux: the whole process, loading included (as VmHWM on the Rust side).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def base_bits_per_weight(model) -> float:
    """Storage of the frozen linear weights but lm_head, in bits per weight: 32 for f32, and for a
    bitsandbytes Linear4bit the packed codes plus its quantization state (absmax, and with double
    quantization the 8-bit absmax codes, their f32 absmax, code book and offset)."""
    import torch

    bits, weights = 0, 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.endswith("lm_head"):
            continue
        w = module.weight
        qs = getattr(w, "quant_state", None)
        if qs is None:
            bits += 8 * w.numel() * w.element_size()
            weights += w.numel()
            continue
        stored = w.numel() * w.element_size() + qs.absmax.numel() * qs.absmax.element_size()
        if qs.nested:
            s2 = qs.state2
            stored += s2.absmax.numel() * s2.absmax.element_size() + s2.code.numel() * 4 + 4
        bits += 8 * stored
        weights += qs.shape.numel()
    return bits / max(weights, 1)


# The shapes of `cargo xtask bench --scale` (lora_train::bench::scale has the same table).
SHAPES = {
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, tie_word_embeddings=True),
    "3b": dict(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
               intermediate_size=8192, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336, tie_word_embeddings=False),
}
SCALE_VOCAB = 49152


def random_model(shape: str, base: str, seed: int):
    """A random-weight Llama of `shape` (weights ~ N(0, 0.02²), norms 1) in `base`, built one
    parameter at a time from the meta device: no full-precision copy of the model exists, and an
    NF4 weight exists in f32 only while it is being quantized."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = LlamaConfig(vocab_size=SCALE_VOCAB, rms_norm_eps=1e-5, rope_theta=500000.0,
                      max_position_embeddings=4096, **SHAPES[shape])
    dtype = torch.bfloat16 if base == "bf16" else torch.float32
    cfg.torch_dtype = dtype
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(seed)

    def draw(shape_):
        return torch.empty(shape_, dtype=torch.float32).normal_(0.0, 0.02, generator=gen)

    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and base == "nf4" and not name.endswith("lm_head"):
            import bitsandbytes as bnb
            q = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=False,
                                  compute_dtype=torch.float32, compress_statistics=True, quant_type="nf4",
                                  device="meta")
            q.weight = bnb.nn.Params4bit(draw((module.out_features, module.in_features)), requires_grad=False,
                                         quant_type="nf4", compress_statistics=True, blocksize=64,
                                         module=q).to("cpu")
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, q)
            continue
        for pname, p in list(module.named_parameters(recurse=False)):
            if "norm" in name:
                value = torch.ones(p.shape, dtype=dtype)
            elif cfg.tie_word_embeddings and name.endswith("lm_head"):
                continue  # tied below
            else:
                value = draw(p.shape).to(dtype)
            setattr(module, pname, torch.nn.Parameter(value, requires_grad=False))
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary_emb = LlamaRotaryEmbedding(config=cfg)  # its buffers were on meta
    return model.eval()


def export_hf(gguf: Path, out: Path) -> int:
    """Writes the GGUF model as an f32 Hugging Face directory (config.json + safetensors),
    atomically: to a temporary directory first, then renamed."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from safetensors.torch import save_file

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # transformers refuses save_pretrained for a GGUF-loaded model: write config and tensors
    # directly (the tied lm_head is left out, as transformers itself does).
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # the GGUF marker: these tensors are plain f32
    model.config.save_pretrained(str(tmp))
    tmp.rename(out)
    return 0


def load_model(args):
    """The model at `--model` (a GGUF file or a Hugging Face directory), in f32 or, with
    `--quant nf4`, on a bitsandbytes NF4 base."""
    import torch
    from transformers import AutoModelForCausalLM

    path = args.model
    kwargs = {"dtype": torch.bfloat16 if args.base == "bf16" else torch.float32}
    if args.quant == "nf4":
        # QLoRA as transformers does it: every linear layer but lm_head in NF4, the same settings
        # as `burn-lora train --quant nf4` (block size 64 is bitsandbytes' fixed default).
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32)
        kwargs["device_map"] = "cpu"
    if path.is_file() and path.suffix == ".gguf" and args.quant == "nf4":
        # transformers will not quantize a model loaded from GGUF: write the f32 model once as
        # a Hugging Face directory next to the GGUF, in a child process so that the f32 copy does
        # not count in this process's peak memory, then load that directory quantized.
        hf_dir = path.with_name(path.stem + ".f32-hf")
        if not (hf_dir / "config.json").exists():
            import subprocess
            log(f"peft: writing {hf_dir.name} (the GGUF as f32 safetensors) for bitsandbytes")
            subprocess.run([sys.executable, __file__, "--model", str(path), "--export-hf", str(hf_dir)],
                           check=True)
        model = AutoModelForCausalLM.from_pretrained(str(hf_dir), **kwargs)
    elif path.is_file() and path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    return model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="GGUF file or Hugging Face directory")
    p.add_argument("--shape", choices=sorted(SHAPES), help="instead of --model: a random-weight Llama of this size")
    p.add_argument("--base", choices=["f32", "bf16", "nf4"], default="f32",
                   help="the frozen base's storage: torch_dtype f32 or bf16; with --shape also nf4 "
                        "(bitsandbytes Linear4bit; with --model use --quant nf4)")
    p.add_argument("--checkpointing", action="store_true",
                   help="gradient checkpointing (transformers' gradient_checkpointing_enable)")
    p.add_argument("--targets", default="q_proj,v_proj", help="comma-separated module names or all-linear")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=20240607)
    p.add_argument("--quant", choices=["none", "nf4"], default="none",
                   help="nf4: QLoRA, a bitsandbytes NF4 base (block 64, double quantization, f32 compute)")
    p.add_argument("--export-hf", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()

    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if args.export_hf:
        return export_hf(args.model, args.export_hf)
    import torch

    torch.set_num_threads(args.threads)
    import peft
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    if args.shape:
        model = random_model(args.shape, args.base, args.seed)
        path = Path(f"llama-{args.shape}-random-{args.base}")
    elif args.model is None:
        p.error("give --model or --shape")
    else:
        model = load_model(args)
        path = args.model
    base_bits = base_bits_per_weight(model)
    load_s = time.perf_counter() - t0
    log(f"peft: loaded {path.name} in {load_s:.1f}s; base linear weights {base_bits:.2f} bits/weight")

    targets = "all-linear" if args.targets == "all-linear" else args.targets.split(",")
    cfg = peft.LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=targets,
                          task_type="CAUSAL_LM")
    if args.checkpointing:
        # Recompute each decoder layer in backward (use_reentrant=False: the frozen base's
        # inputs need no grad).
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = peft.get_peft_model(model, cfg)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                              betas=(0.9, 0.999), eps=1e-8, weight_decay=args.weight_decay)

    vocab = model.config.vocab_size
    ids = torch.tensor(bench_token_ids(args.batch, args.seq_len, vocab, args.seed), dtype=torch.int64)
    rss_after_load = rss_now_bytes()

    fwd, bwd, opt, total, cpu, losses = [], [], [], [], [], []
    n = args.warmup + args.steps
    for i in range(n):
        c_start = time.process_time()  # CPU seconds, all threads: steadier than wall time under load
        t_start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        t_fwd = time.perf_counter()
        loss.backward()
        t_bwd = time.perf_counter()
        optim.step()
        optim.zero_grad(set_to_none=True)
        t_end = time.perf_counter()
        c_end = time.process_time()
        value = float(loss.detach())
        phase = "warm-up" if i < args.warmup else "timed"
        label = "peft-nf4" if "nf4" in (args.quant, args.base) else "peft"
        log(f"{label} {args.targets}: {phase} step {i + 1}/{n}: {t_end - t_start:.2f}s loss {value:.4f}")
        if i >= args.warmup:
            fwd.append(t_fwd - t_start)
            bwd.append(t_bwd - t_fwd)
            opt.append(t_end - t_bwd)
            total.append(t_end - t_start)
            cpu.append(c_end - c_start)
            losses.append(value)

    print(json.dumps({
        "implementation": "peft",
        "targets": args.targets,
        "rank": args.rank,
        "tokens_per_step": args.batch * args.seq_len,
        "step_s": total,
        "forward_s": fwd,
        "backward_s": bwd,
        "optimizer_s": opt,
        "cpu_s": cpu,
        "losses": losses,
        "trainable_params": trainable,
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_after_load_bytes": rss_after_load,
        "load_s": load_s,
        "base_bits_per_weight": base_bits,
        "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
