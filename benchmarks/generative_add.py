"""Items added after training: are they retrievable by the generator, and what does the refresh cost old items?

    python -m benchmarks.generative_add TRAINED_DEMO_INDEX [--n 50] [--out docs/bench/generative-add.md]

Takes a demo index trained on the unseen-target split (e.g. the ablation's saved ``defaults`` model), adds ``n`` new
text items (the T→I *training* query texts, "a drawing of …" paraphrases, which are not pool items), first without
the index-time refresh, then runs it (``Index.add``'s default path). Measured each time: the share of added items
that a search by their own text (modality text, generative mode, k 5) returns in the top 5, the same for as many old
text items, and generative R@5 of the unseen test queries in the union pool (old items' recall).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from unimir.data.mbeir import read_queries
from unimir.data.records import Candidate, Modality
from unimir.demo import split_query_files, unseen_train_file
from unimir.eval import evaluate
from unimir.index import Index

from . import machine
from .generative_eval import MemoEncoder


def own_text_hits(index: Index, dids: list[str], k: int = 5) -> float:
    hits = []
    for did in dids:
        c = index.get(did)
        found = index.search(c.txt, modality="text", mode="generative", k=k)
        hits.append(did in [h.did for h in found.hits[:k]])
    return float(np.mean(hits))


def old_recall(index: Index) -> float:
    results = evaluate(index, split_query_files("unseen"), ks=(5,), mode="generative", exclude_query=True)
    return float(np.mean([r.recall["5"] for r in results]))


def run(trained: Path, n: int, scratch: Path, refresh_args: dict | None = None) -> dict:
    shutil.copytree(trained, scratch / "index")
    index = Index.load(scratch / "index")
    index.encoder = MemoEncoder(index.encoder)
    texts = [q.query_txt for q in read_queries(unseen_train_file()) if q.task_id == 0 and q.query_txt]
    existing = {c.txt for c in index.candidates}
    fresh = [t for t in dict.fromkeys(texts) if t.capitalize() + "." not in existing and t not in existing][:n]
    old = [c.did for c in index.candidates if c.modality == Modality.TEXT][:n]
    out = {"n_added": len(fresh), "items_before": len(index)}
    out["old_recall_before"] = old_recall(index)
    out["old_own_text_before"] = own_text_hits(index, old)
    new = [Candidate(f"added:{i}", Modality.TEXT, t) for i, t in enumerate(fresh)]
    index.add(new, refresh=False, save=False)
    dids = [c.did for c in new]
    out["added_own_text_codes_only"] = own_text_hits(index, dids)
    t0 = time.perf_counter()
    out["refresh"] = index.generative.refresh(index.features, log=False, **(refresh_args or {}))
    out["refresh_args"] = refresh_args or {}
    out["refresh_s"] = time.perf_counter() - t0
    out["added_own_text_refreshed"] = own_text_hits(index, dids)
    out["old_own_text_after"] = own_text_hits(index, old)
    out["old_recall_after"] = old_recall(index)
    out["machine"] = machine.describe()
    return out


def render(r: dict, command: str) -> str:
    m = r["machine"]
    return f"""# Items added after training (demo corpus)

Made by `{command}` on {m.get('cpu')} (load average {m.get('load_start', ['?'])[0]} at the start: shared machine).
The index was trained on the unseen-target split (default settings); {r['n_added']} new text items (T→I training query
texts, not pool items) were added to its {r['items_before']} items. "Own text": each item searched by its own text,
modality text, generative mode, k 5. "Old recall": generative R@5 of the unseen test queries in the union pool, mean
of the four tasks.

| | added items found by own text (top 5) | old text items found by own text (top 5) | old recall (R@5) |
|---|---:|---:|---:|
| before the add | – | {r['old_own_text_before']:.3f} | {r['old_recall_before']:.3f} |
| added, codes only (`--no-refresh`) | {r['added_own_text_codes_only']:.3f} | – | – |
| added + index-time refresh | {r['added_own_text_refreshed']:.3f} | {r['old_own_text_after']:.3f} | \
{r['old_recall_after']:.3f} |

The refresh trained {r['refresh']['rows']} new items beside {r['refresh']['replay']} replayed old ones for
{r['refresh']['epochs']} epochs, {r['refresh']['steps']} steps, in {r['refresh_s']:.1f} s (refresh arguments:
{r['refresh_args'] or 'the defaults'}).
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trained", type=Path)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--out", type=Path, default=machine.REPO / "docs" / "bench" / "generative-add.md")
    ap.add_argument("--lr", type=float, default=None, help="refresh learning rate (default: refresh()'s)")
    ap.add_argument("--replay", type=float, default=None, help="old items replayed per new item")
    args = ap.parse_args(argv)
    refresh_args = {k: v for k, v in (("lr", args.lr), ("replay", args.replay)) if v is not None}
    with tempfile.TemporaryDirectory(prefix="unimir-add-") as tmp:
        result = run(args.trained, args.n, Path(tmp), refresh_args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(result, f"python -m benchmarks.generative_add TRAINED_INDEX --n {args.n}"))
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
