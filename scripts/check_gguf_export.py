#!/usr/bin/env python3
"""Checks burn-lora's GGUF exports with llama.cpp itself (through the PyPI package llama-cpp-python).

Run by scripts/check_gguf_export.sh, which writes the files and our own reference numbers first:

    DIR/base-f32/model.gguf, DIR/merged-{f32,f16,q8_0,q4_0}/model.gguf, DIR/adapter.gguf
    DIR/ours/<n>.json       `burn-lora logits --json --top-k K` of prompt n (base + adapter, unmerged)
    DIR/ours/<n>.greedy.txt `burn-lora generate` greedy continuation of prompt n (base + adapter)

For every prompt it feeds our token ids to llama.cpp and compares the next-token logits on our top-k
ids: the relative difference is max |ours - llama.cpp| / max |ours| over those ids. It also compares
llama.cpp's own tokenization of the prompt with ours, and llama.cpp's greedy continuation with ours.

    cases                               bound
    merged-f32, merged-f16               1e-3 relative, same top-1, same greedy text
    base-f32 + adapter.gguf (--lora)     1e-3 relative, same top-1, same greedy text
    merged-q8_0, merged-q4_0             reported: the quantization error, stated in the README

Prints one line per case and a final PASS/FAIL line; exits 0 or 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from llama_cpp import Llama

TOL = 1e-3


def load(path: Path, lora: Path | None = None) -> Llama:
    kwargs = dict(model_path=str(path), n_ctx=512, logits_all=True, n_threads=2, verbose=False, seed=0)
    if lora is not None:
        kwargs["lora_path"] = str(lora)
    return Llama(**kwargs)


def next_logits(llm: Llama, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[len(ids) - 1], dtype=np.float64)


def greedy(llm: Llama, ids: list[int], n: int) -> str:
    llm.reset()
    llm.eval(ids)
    out: list[int] = []
    for _ in range(n):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if tok == llm.token_eos():
            break
        out.append(tok)
        llm.eval([tok])
    return llm.detokenize(out).decode("utf-8", errors="replace")


def compare(llm: Llama, cases: list[dict], max_new: int, check_greedy: bool) -> dict:
    worst_rel, worst_abs, top1, greedy_same, tok_same = 0.0, 0.0, True, True, True
    for c in cases:
        ours = c["ours"]
        ids = ours["ids"]
        logits = next_logits(llm, ids)
        top = [t["id"] for t in ours["top_k"]]
        ref = np.array([t["logit"] for t in ours["top_k"]], dtype=np.float64)
        got = logits[top]
        diff = np.abs(got - ref).max()
        worst_abs = max(worst_abs, float(diff))
        worst_rel = max(worst_rel, float(diff / np.abs(ref).max()))
        top1 &= int(np.argmax(logits)) == top[0]
        if not c["chat"]:
            tok_same &= llm.tokenize(c["prompt"].encode(), add_bos=True, special=False) == ids
        if check_greedy:
            text = greedy(llm, ids, max_new)
            same = text == c["greedy"]
            greedy_same &= same
            if not same:
                print(f"    greedy differs for {c['prompt'][:40]!r}: ours {c['greedy']!r} llama.cpp {text!r}")
    return dict(rel=worst_rel, abs=worst_abs, top1=top1, greedy=greedy_same, tokens=tok_same)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    args = ap.parse_args()
    d = args.dir
    prompts = json.loads((d / "ours" / "prompts.json").read_text())
    cases = []
    for i, p in enumerate(prompts):
        cases.append(dict(prompt=p["prompt"], chat=p["chat"],
                          ours=json.loads((d / "ours" / f"{i}.json").read_text()),
                          greedy=(d / "ours" / f"{i}.greedy.txt").read_text().removesuffix("\n")))
    results = {}
    runs = [("merged-f32", d / "merged-f32/model.gguf", None, True),
            ("merged-f16", d / "merged-f16/model.gguf", None, True),
            ("base-f32 + adapter.gguf", d / "base-f32/model.gguf", d / "adapter.gguf", True),
            ("merged-q8_0", d / "merged-q8_0/model.gguf", None, True),
            ("merged-q4_0", d / "merged-q4_0/model.gguf", None, True),
            ("merged-q4_k", d / "merged-q4_k/model.gguf", None, True)]
    ok = True
    for name, path, lora, check_greedy in runs:
        if not path.exists():
            print(f"{name:26} (not written, skipped)")
            continue
        r = compare(load(path, lora), cases, args.max_new_tokens, check_greedy)
        results[name] = r
        strict = name.startswith(("merged-f32", "merged-f16", "base-f32"))
        passed = r["rel"] <= TOL and r["top1"] and r["greedy"] and r["tokens"] if strict else r["tokens"]
        ok &= passed
        print(f"{name:26} max rel {r['rel']:.2e}  max abs {r['abs']:.4f}  top-1 same: {r['top1']}  "
              f"greedy same: {r['greedy']}  tokenizer same: {r['tokens']}  {'ok' if passed else 'FAIL'}"
              + ("" if strict else "  (bound: its quantization error)"))
    (d / "llamacpp-results.json").write_text(json.dumps(results, indent=2))
    print(("PASS" if ok else "FAIL") + f": {len(cases)} prompts, llama.cpp via llama-cpp-python")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
