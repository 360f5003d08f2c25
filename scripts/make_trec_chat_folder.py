#!/usr/bin/env python3
"""Writes fixtures/trec-chat/: a small classification task in a user's own chat format, the way
`--data DIR` expects it (train.jsonl, valid.jsonl, test.jsonl; one {"messages": [...]} per line).

The questions are TREC's (Li & Roth 2002), from the same file `cargo xtask fetch` puts into
~/.cache/burn-lora/data/trec/question_labels.txt: de-duplicated (first label kept), ordered by
the SHA-256 of the question so the choice is the same on every machine, then cut into
240 / 60 / 60. The prompt differs from the built-in TREC task on purpose (a system message and
the bare question), as a user's own data would. Standard library only.

    python3 scripts/make_trec_chat_folder.py [--trec PATH] [--out fixtures/trec-chat]
"""

import argparse
import hashlib
import json
import os
from pathlib import Path

WORDS = {
    "ABBR": "abbreviation",
    "DESC": "description",
    "ENTY": "entity",
    "HUM": "human",
    "LOC": "location",
    "NUM": "number",
}
SYSTEM = (
    "Classify the user's question by what it asks for: abbreviation, description, entity, "
    "human, location or number. Reply with that one word."
)
SIZES = {"train": 240, "valid": 60, "test": 60}


def main():
    default = Path(os.path.expanduser("~/.cache/burn-lora/data/trec/question_labels.txt"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trec", type=Path, default=default)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "fixtures/trec-chat")
    args = ap.parse_args()

    seen = {}
    for line in args.trec.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        label, question = line.split(" ", 1)
        question = question.strip()
        seen.setdefault(question, WORDS[label.split(":", 1)[0]])
    ordered = sorted(seen.items(), key=lambda qa: hashlib.sha256(qa[0].encode()).hexdigest())

    args.out.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, n in SIZES.items():
        with open(args.out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for question, answer in ordered[start : start + n]:
                messages = [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
                f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
        start += n
        print(f"{split}.jsonl: {n} questions")


if __name__ == "__main__":
    main()
