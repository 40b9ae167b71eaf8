#!/usr/bin/env python3
"""Derive the demo corpus's unseen-target split (M-BEIR style) from its existing files.

Usage (from the repository root)::

    python scripts/build_unseen_split.py --corpus src/unimir/demo_corpus

Every candidate belongs to one *base* picture: a clip-art drawing or photo, its caption (text), its image+description
entry and its modified copies. Bases are numbered by the four digits that start every image file name of the corpus
(``clipart/0001_...``, ``variants/0007_gray_of_0001...``, ``queries/train/0001_crop...``); a caption is tied to its
base by the I->T training query that points at it. Bases are split at random (fixed seed) into a training half and a
test half, so no test positive shares a picture with any training target. Written (nothing else is touched except
the split section of the corpus README)::

    cand_pool/mbeir_demo_unseen_{train,test}_cand_pool.jsonl    the two disjoint pools (their union is the full pool)
    query/train/mbeir_demo_unseen_train.jsonl (+ qrels)          training queries whose positives are all in train
    query/test/mbeir_demo_unseen_task{0,3,4,7}_test.jsonl (+ qrels)  test queries with positives in the test pool
    query/test/mbeir_demo_seen_task{0,3,4,7}_test.jsonl (+ qrels)    the other test queries: seen targets

Deterministic: the same corpus files and seed give byte-identical output.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

SEED = 20261201
TEST_SHARE = 0.5
TASKS = (0, 3, 4, 7)
BASE_RE = re.compile(r"(?:clipart|photos|queries/(?:test|train))/(\d{4})_|variants/\d{4}_[a-z0-9_]+_of_(\d{4})")
README_BEGIN = "<!-- unseen-split:begin (written by scripts/build_unseen_split.py) -->"
README_END = "<!-- unseen-split:end -->"


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_qrels(path: Path, queries: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{q['qid']} 0 {did} 1 {q['task_id']}\n" for q in queries for did in q["pos_cand_list"]))


def base_of_path(path: str | None) -> str | None:
    match = BASE_RE.search(path or "")
    return (match.group(1) or match.group(2)) if match else None


def candidate_bases(pool: list[dict], train: list[dict]) -> dict[str, str]:
    """did -> base number, for every candidate; fails loudly when one cannot be placed."""
    bases = {c["did"]: base_of_path(c["img_path"]) for c in pool if c["img_path"]}
    for q in train:  # captions: the I->T training query of a base points at its caption
        if q["task_id"] == 3:
            for did in q["pos_cand_list"]:
                bases.setdefault(did, base_of_path(q["query_img_path"]))
    missing = [c["did"] for c in pool if bases.get(c["did"]) is None]
    if missing:
        sys.exit(f"cannot tell the base picture of {len(missing)} candidates, e.g. {missing[:5]}")
    return bases


def build(corpus: Path, seed: int = SEED) -> dict:
    pool = read_jsonl(corpus / "cand_pool" / "mbeir_demo_cand_pool.jsonl")
    train = read_jsonl(corpus / "query" / "train" / "mbeir_demo_train.jsonl")
    tests = {t: read_jsonl(corpus / "query" / "test" / f"mbeir_demo_task{t}_test.jsonl") for t in TASKS}
    base_of = candidate_bases(pool, train)
    numbers = sorted(set(base_of.values()))
    random.Random(seed).shuffle(numbers)
    test_bases = set(numbers[:round(TEST_SHARE * len(numbers))])
    in_test = {did: base in test_bases for did, base in base_of.items()}

    def side(q: dict) -> str:
        sides = {in_test[d] for d in q["pos_cand_list"]}
        return "mixed" if len(sides) > 1 else ("test" if sides.pop() else "train")

    stats: dict = {"bases": len(numbers), "test_bases": len(test_bases)}
    for name, wanted in (("train", False), ("test", True)):
        write_jsonl(corpus / "cand_pool" / f"mbeir_demo_unseen_{name}_cand_pool.jsonl",
                    [c for c in pool if in_test[c["did"]] == wanted])
    stats["pool"] = Counter("test" if in_test[c["did"]] else "train" for c in pool)
    kept_train = [q for q in train if side(q) == "train"]
    write_jsonl(corpus / "query" / "train" / "mbeir_demo_unseen_train.jsonl", kept_train)
    write_qrels(corpus / "qrels" / "train" / "mbeir_demo_unseen_train_qrels.txt", kept_train)
    stats["train_queries"] = len(kept_train)
    stats["test_queries"] = {}
    for task, queries in tests.items():
        for name, wanted in (("unseen", "test"), ("seen", "train")):
            chosen = [q for q in queries if side(q) == wanted]
            write_jsonl(corpus / "query" / "test" / f"mbeir_demo_{name}_task{task}_test.jsonl", chosen)
            write_qrels(corpus / "qrels" / "test" / f"mbeir_demo_{name}_task{task}_test_qrels.txt", chosen)
            stats["test_queries"][f"{name} task {task}"] = len(chosen)
    _write_readme_section(corpus, stats, seed)
    return stats


def _write_readme_section(corpus: Path, s: dict, seed: int) -> None:
    tq = s["test_queries"]
    per_task = lambda name: ", ".join(f"task {t}: {tq[f'{name} task {t}']}" for t in TASKS)  # noqa: E731
    section = f"""{README_BEGIN}
## Unseen-target split (M-BEIR style)

Made from the files above by `python scripts/build_unseen_split.py --corpus src/unimir/demo_corpus` (seed {seed}).
Every candidate belongs to one base picture (a drawing or photo, its caption, its image+description entry, its
modified copies); the {s['bases']} bases are split at random into two halves, so the two pools share no picture.

| file | records |
|---|---|
| `cand_pool/mbeir_demo_unseen_train_cand_pool.jsonl` | {s['pool']['train']} candidates (training pool) |
| `cand_pool/mbeir_demo_unseen_test_cand_pool.jsonl` | {s['pool']['test']} candidates (test pool, disjoint) |
| `query/train/mbeir_demo_unseen_train.jsonl` | {s['train_queries']} training queries, positives in the training pool |
| `query/test/mbeir_demo_unseen_task{{0,3,4,7}}_test.jsonl` | positives in the test pool: {per_task('unseen')} |
| `query/test/mbeir_demo_seen_task{{0,3,4,7}}_test.jsonl` | positives are training targets: {per_task('seen')} |

A model trained on `mbeir_demo_unseen_train.jsonl` has never seen an unseen test query's positive as a target. Search
the unseen test queries in the test pool (the M-BEIR local setting) or in the full pool (union of both halves).
{README_END}
"""
    readme = corpus / "README.md"
    text = readme.read_text(encoding="utf-8")
    if README_BEGIN in text:
        head, rest = text.split(README_BEGIN, 1)
        text = head + section + rest.split(README_END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    readme.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path("src/unimir/demo_corpus"))
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args(argv)
    print(json.dumps(build(args.corpus, args.seed), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
