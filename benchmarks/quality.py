"""Recall@1/5/10 per task on the demo corpus's unseen-target split for every retrieval mode, through
``unimir.evaluate`` (tie-aware hit rate, candidate-modality filter from each query's task, instructions from the
corpus, default beams). Settings (``benchmarks.generative_eval``): unseen targets in the test pool, unseen targets in
the union pool, seen targets in the union pool; the model is trained on the split's training queries only."""

from __future__ import annotations

from pathlib import Path

import torch

from unimir.demo import SETTINGS, test_pool_index
from unimir.index import Index
from unimir.index.index import DEFAULT_BEAMS

from . import generative_eval as ge
from .timing import Stopwatch

KS = (1, 5, 10)
HEADLINE = "5"
BATCH = 256  # queries per search_features call (evaluate's default)


def run(index_dir: Path) -> dict:
    index = Index.load(index_dir)
    index.encoder = ge.MemoEncoder(index.encoder)
    test_index = test_pool_index(index)
    with Stopwatch() as sw:
        rows = ge.evaluate_settings(index, test_index)
    settings = ge.summary(rows)
    first = settings[SETTINGS[0]]
    summary = {mode: {"mean_recall": first[mode]["mean"], "ratio_of_means": first[mode]["ratio"]}
               for mode in ge.MODES if mode in first}
    return {"rows": rows, "settings": settings, "summary": summary, "summary_setting": SETTINGS[0],
            "eval_s": sw.seconds, "beams": DEFAULT_BEAMS, "ks": list(KS), "headline_k": int(HEADLINE),
            "items": len(index), "test_items": len(test_index), "modes": list(index.modes), "batch": BATCH,
            "threads": torch.get_num_threads()}
