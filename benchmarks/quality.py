"""Recall@1/5/10 per task on the demo corpus for every retrieval mode, through ``unimir.evaluate`` (tie-aware hit
rate, candidate-modality filter from each query's task, instructions from the corpus, default beams)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from unimir.demo import test_query_files
from unimir.eval import evaluate
from unimir.index import Index
from unimir.index.index import DEFAULT_BEAMS

from .timing import Stopwatch

KS = (1, 5, 10)
HEADLINE = "5"
BATCH = 256  # queries per search_features call


def _rows(results) -> list[dict]:
    return [{"queries": r.queries.removesuffix(".jsonl"), "task": r.task, "mode": r.mode, "n": r.num_queries,
             "pool": r.pool_size, "recall": r.recall, "random": r.random} for r in results]


def _ratios(rows: list[dict]) -> dict[str, dict]:
    """Per mode: R@5 of each task over dense R@5 of that task, and the ratio of the task means."""
    dense = {r["queries"]: r["recall"][HEADLINE] for r in rows if r["mode"] == "dense"}
    out: dict[str, dict] = {}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        mine = {r["queries"]: r["recall"][HEADLINE] for r in rows if r["mode"] == mode}
        per_task = {q: (v / dense[q] if dense[q] else float("nan")) for q, v in mine.items()}
        mean = float(np.mean(list(mine.values())))
        out[mode] = {"per_task": per_task, "mean_recall": mean,
                     "ratio_of_means": mean / float(np.mean(list(dense.values())))}
    return out


def run(index_dir: Path) -> dict:
    index = Index.load(index_dir)
    rows, seconds = [], {}
    for mode in index.modes:
        with Stopwatch() as sw:
            rows += _rows(evaluate(index, test_query_files(), ks=KS, mode=mode, batch_size=BATCH))
        seconds[mode] = sw.seconds
    ratios = _ratios(rows)
    for row in rows:
        row["ratio"] = ratios[row["mode"]]["per_task"][row["queries"]]
    return {"rows": rows, "summary": ratios, "eval_s": seconds, "beams": DEFAULT_BEAMS, "ks": list(KS),
            "headline_k": int(HEADLINE), "items": len(index), "modes": list(index.modes), "batch": BATCH,
            "threads": torch.get_num_threads()}
