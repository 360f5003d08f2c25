"""Check modes (--check-adapter, --check-merged, --self-test), used by Rust-side round-trip tests."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from .common import TINY_INPUT_IDS, log, write_json, load_causal_lm, load_tokenizer, last_logits


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
        # LoRA keys end in .lora_A.weight (module), AdaLoRA's in .lora_A / .lora_B / .lora_E
        # (bare parameters): the adapter name goes before .weight, or at the very end. DoRA's
        # .lora_magnitude_vector is saved without the .weight its module has in the model.
        if last == "lora_magnitude_vector":
            mk = f"{k}.default.weight"
        elif last in ("lora_A", "lora_B", "lora_E"):
            mk = f"{k}.default"
        else:
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
    if getattr(cfg, "init_r", None) is not None:  # AdaLoRA: ranks after resizing by rank_pattern
        ranks = {k.rsplit(".lora_E", 1)[0]: sum(v) for k, v in (cfg.rank_pattern or {}).items()}
        log(f"  AdaLoRA: init_r={cfg.init_r}, target_r={cfg.target_r}, total_step={cfg.total_step}, "
            f"kept ranks {sum(ranks.values()) if ranks else 'all'} over {len(ranks) or 'every'} modules")
    log(f"  adapter: {len(file_sd)} tensors, r={cfg.r}, lora_alpha={cfg.lora_alpha}, "
        f"use_rslora={cfg.use_rslora}, use_dora={getattr(cfg, 'use_dora', False)}, targets={sorted(cfg.target_modules) if not isinstance(cfg.target_modules, str) else cfg.target_modules}")

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
        ada = PeftModel.from_pretrained(load_causal_lm(tiny), str(tiny / "peft-adalora")).eval()
        ada_good = expect_from(ada, "adalora")
        dora = PeftModel.from_pretrained(load_causal_lm(tiny), str(tiny / "peft-dora")).eval()
        dora_good = expect_from(dora, "dora")
        # A DoRA adapter whose magnitude vectors were dropped: PEFT would keep its initial ‖W‖.
        no_mag = tmp / "dora-no-magnitude"
        shutil.copytree(tiny / "peft-dora", no_mag)
        sd = load_file(str(no_mag / "adapter_model.safetensors"))
        sd = {k: v for k, v in sd.items() if "lora_magnitude_vector" not in k}
        save_file(sd, str(no_mag / "adapter_model.safetensors"), metadata={"format": "pt"})
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
            ("pruned AdaLoRA adapter matches", 0, check_adapter, tiny / "peft-adalora", tiny, ada_good, atol),
            ("AdaLoRA adapter vs base expectations", 1, check_adapter, tiny / "peft-adalora", tiny, base_exp,
             atol),
            ("DoRA adapter matches", 0, check_adapter, tiny / "peft-dora", tiny, dora_good, atol),
            ("DoRA adapter without its magnitudes", 1, check_adapter, no_mag, tiny, dora_good, atol),
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
