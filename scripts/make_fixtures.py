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

    # (default) write the default parts (tiny, peft, dora, dequant, families, smollm2, …) into <repo>/fixtures/
    python scripts/make_fixtures.py [--out DIR] [--model GGUF]
        [--parts tiny,peft,adalora,dora,loraplus,combine,dequant,gguf-quants,nf4,families,smollm2,smollm2-nf4]

    # the real Gemma 3 270M's reference (not in the default set: `cargo xtask fetch --model gemma3-270m` first)
    python scripts/make_fixtures.py --parts gemma3-270m

    # the PEFT LoRA / DoRA adapters on the real SmolLM2 (not in the default set: each loads the
    # model again)
    python scripts/make_fixtures.py --parts smollm2-peft,smollm2-dora

    # load a base model (GGUF file or HF directory) plus a PEFT adapter directory and compare the
    # next-token logits with FILE.json (as printed by `burn-lora logits --json`, plus "prompt")
    python scripts/make_fixtures.py --check-adapter ADAPTER_DIR --model PATH --expect FILE.json

    # load a merged Hugging Face directory with transformers and compare the same way
    python scripts/make_fixtures.py --check-merged HF_DIR --expect FILE.json

    # exercise the two check modes on the tiny fixtures (positive and negative cases)
    python scripts/make_fixtures.py --self-test

Each check mode prints one line starting with PASS or FAIL and exits 0 or 1.

This file is the command line only; the code is in scripts/fixturegen/ (common.py: constants and
helpers; tiny.py, peft_parts.py, adalora.py, dora.py (dora, loraplus), combine.py, dequant.py, gguf_quants.py, nf4.py,
smollm2.py: one module per fixture part; checks.py: the check modes; families.py: a tiny model of each family beyond
Llama; gemma3.py: the real Gemma 3 270M).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

# Importing the package first sets the environment (no progress bars, never the Hub) before torch & co.
from fixturegen.common import (
    ALL_PARTS, DEFAULT_MODEL, DEFAULT_OUT, DEFAULT_PARTS, SEEDS, describe_safetensors, log, quiet_libraries,
)
from fixturegen.adalora import make_adalora_fixtures
from fixturegen.bf16 import make_smollm2_bf16
from fixturegen.checks import check_adapter, check_merged, run_check, self_test
from fixturegen.combine import make_combine_fixtures
from fixturegen.dequant import make_dequant_fixture
from fixturegen.dora import make_dora_fixtures, make_loraplus_fixture
from fixturegen.gguf_quants import make_gguf_quants_fixture
from fixturegen.families import make_family_fixtures
from fixturegen.gemma3 import DEFAULT_GEMMA3, make_gemma3_reference
from fixturegen.nf4 import make_nf4_fixture, make_smollm2_nf4
from fixturegen.peft_parts import make_peft_fixtures
from fixturegen.smollm2 import make_smollm2_peft, make_smollm2_reference
from fixturegen.tiny import make_tiny_llama

import torch  # noqa: E402  (after fixturegen: see above)


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
    if "adalora" in parts:
        log("PEFT AdaLoRA training run")
        make_adalora_fixtures(out / "tiny-llama", seed=SEEDS["adalora"])
    if "dora" in parts:
        log("PEFT DoRA adapter")
        make_dora_fixtures(out / "tiny-llama", seed=SEEDS["dora"])
    if "loraplus" in parts:
        log("PEFT LoRA+ optimizer step")
        make_loraplus_fixture(out / "tiny-llama")
    if "combine" in parts:
        log("PEFT add_weighted_adapter combinations")
        make_combine_fixtures(out / "tiny-llama", seed=SEEDS["combine"])
    if "dequant" in parts:
        log("GGUF dequantization fixture")
        make_dequant_fixture(out, seed=SEEDS["dequant"])
    if "gguf-quants" in parts:
        log("GGUF quantizer reference blocks (gguf-py; Q4_K / Q6_K from llama.cpp)")
        make_gguf_quants_fixture(out, seed=SEEDS["gguf_quants"])
    if "nf4" in parts:
        log("NF4 (bitsandbytes) fixture")
        make_nf4_fixture(out / "nf4", out / "tiny-llama", seed=SEEDS["nf4"])
    if "families" in parts:
        log("tiny models of the other families (qwen2, qwen3, mistral, gemma3), HF + GGUF + PEFT")
        make_family_fixtures(out, seed=SEEDS["families"])
    if "gemma3-270m" in parts:
        gemma = args.model if args.model and "gemma" in args.model.name else DEFAULT_GEMMA3
        if not gemma.exists():
            log(f"error: {gemma} not found (cargo xtask fetch --model gemma3-270m)")
            return 1
        log(f"Gemma 3 270M reference from {gemma}")
        make_gemma3_reference(gemma, out)
    model = args.model or DEFAULT_MODEL
    if parts & {"smollm2", "smollm2-peft", "smollm2-nf4", "smollm2-bf16", "smollm2-dora"} and not model.exists():
        log(f"error: {model} not found (pass --model, or leave smollm2 / smollm2-peft out of --parts)")
        return 1
    if "smollm2" in parts:
        log(f"SmolLM2 reference from {model}")
        make_smollm2_reference(model, out)
    if "smollm2-nf4" in parts:
        log(f"SmolLM2 with an NF4 base (bitsandbytes) from {model}")
        make_smollm2_nf4(model, out)
    if "smollm2-bf16" in parts:
        log(f"SmolLM2 in bf16 (transformers torch_dtype=bfloat16) from {model}")
        make_smollm2_bf16(model, out)
    if "smollm2-peft" in parts:
        log(f"PEFT adapter on SmolLM2 from {model}")
        make_smollm2_peft(model, out, seed=SEEDS["smollm2_peft"])
    if "smollm2-dora" in parts:
        log(f"PEFT DoRA adapter on SmolLM2 from {model}")
        make_smollm2_peft(model, out, seed=SEEDS["smollm2_dora"], dora=True)

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
