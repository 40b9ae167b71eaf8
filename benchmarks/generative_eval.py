"""Generative retrieval on the demo corpus's unseen-target split (M-BEIR style) and on seen targets.

One training run on ``query/train/mbeir_demo_unseen_train.jsonl`` (positives in the training half of the pool only),
then three settings:

* ``unseen, test pool``: unseen test queries searched in the test pool (disjoint from every training target);
* ``unseen, union``: the same queries in the full pool (both halves);
* ``seen, union``: the other test queries, whose positives are training targets, in the full pool.

The test-pool index carries the same quantizer and generator, with codes computed for its own items.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from unimir.demo import SETTINGS, setting_index
from unimir.eval import evaluate
from unimir.index import Index

MODES = ("dense", "generative", "generative-rerank", "quantize")
HEADLINE = "5"


class MemoEncoder:
    """The index's encoder, remembering whole ``encode`` calls: every mode re-encodes the same query files."""

    def __init__(self, inner):
        from unimir.encoders import EmbeddingCache

        self.inner, self.spec, self.dim, self.fusion = inner, inner.spec, inner.dim, inner.fusion
        self.fingerprint = inner.fingerprint  # the index checks that the encoder is the one that built it
        self.memo: dict[tuple, Any] = {}
        self.cache = EmbeddingCache()  # evaluation passes none; query images are the slow part

    def encode(self, items, role="candidate", **kwargs):
        key = (role, tuple((it.text, str(it.image)) for it in items))
        if key not in self.memo:
            self.memo[key] = self.inner.encode(items, role, **{"cache": self.cache, **{k: v for k, v in kwargs.items()
                                                                                        if v is not None}})
        return self.memo[key]


def evaluate_settings(union: Index, test_index: Index, *, diagnose: bool = True,
                      settings: tuple[str, ...] = SETTINGS) -> list[dict]:
    """One row per (setting, task, mode): recall at 1/5/10, with the diagnosis for generative modes."""
    rows = []
    for setting in settings:
        index, files = setting_index(setting, union, test_index)
        for mode in MODES:
            if mode not in index.modes:
                continue
            t0 = time.perf_counter()
            results = evaluate(index, files, ks=(1, 5, 10), mode=mode, exclude_query=True,
                               diagnose=diagnose and mode == "generative")
            seconds = time.perf_counter() - t0
            for r in results:
                rows.append({"setting": setting, "task": r.task, "queries": r.queries.removesuffix(".jsonl"),
                             "mode": mode, "n": r.num_queries, "pool": r.pool_size, "recall": r.recall,
                             "random": r.random,
                             "diagnosis": r.extra.get("diagnosis"), "eval_s": seconds / len(results)})
    return rows


def summary(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Per setting and mode: mean R@5 over tasks, its ratio to dense, per-task ratios, and whether generative
    >= quantize on every task."""
    out: dict[str, dict[str, Any]] = {}
    for setting in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == setting]
        by = {(r["mode"], r["task"]): r["recall"][HEADLINE] for r in mine}
        tasks = list(dict.fromkeys(r["task"] for r in mine))
        dense = float(np.mean([by[("dense", t)] for t in tasks]))
        entry: dict[str, Any] = {"tasks": tasks}
        for mode in dict.fromkeys(r["mode"] for r in mine):
            mean = float(np.mean([by[(mode, t)] for t in tasks]))
            entry[mode] = {"mean": mean, "ratio": mean / dense if dense else float("nan"),
                           "per_task_ratio": {t: by[(mode, t)] / by[("dense", t)] if by[("dense", t)] else
                                              float("nan") for t in tasks}}
        if "generative" in entry and "quantize" in entry:
            entry["generative_ge_quantize"] = all(by[("generative", t)] >= by[("quantize", t)] for t in tasks)
        out[setting] = entry
    return out


def markdown_tables(rows: list[dict], summ: dict) -> str:
    """Per setting: a table of R@5 per task and mode with the ratio to dense, and the diagnosis."""
    parts = []
    for setting, entry in summ.items():
        mine = [r for r in rows if r["setting"] == setting]
        modes = [m for m in MODES if m in entry]
        n = {r["task"]: r["n"] for r in mine}
        pool = {r["task"]: r["pool"] for r in mine}
        head = "| R@5, " + setting + " | n | pool | " + " | ".join(modes) + " |"
        lines = [head, "|---|---:|---:|" + "---:|" * len(modes)]
        by = {(r["mode"], r["task"]): r["recall"][HEADLINE] for r in mine}
        for t in entry["tasks"]:
            cells = []
            for m in modes:
                v = by[(m, t)]
                cells.append(f"{v:.3f}" if m == "dense" else f"{v:.3f} ({entry[m]['per_task_ratio'][t]:.2f}×)")
            lines.append(f"| {t} | {n[t]} | {pool[t]} | " + " | ".join(cells) + " |")
        lines.append("| **mean** | | | " + " | ".join(
            f"**{entry[m]['mean']:.3f}**" if m == "dense" else f"**{entry[m]['mean']:.3f} ({entry[m]['ratio']:.2f}×)**"
            for m in modes) + " |")
        parts.append("\n".join(lines))
        diag = [(r["task"], r["diagnosis"]) for r in mine if r.get("diagnosis")]
        if diag:
            d_lines = ["| where recall is lost (" + setting + ") | positive's ID in the 50 beams | in the top 5 "
                       "beams | generative-rerank shortlist (mean / median items) | quantize gives the exact ID | "
                       "leading codes shared with the positive: quantize / generated |",
                       "|---|---:|---:|---:|---:|---:|"]
            for t, d in diag:
                d_lines.append(f"| {t} | {d['positive_id_in_beams']:.3f} | {d['positive_id_in_top5_beams']:.3f} | "
                               f"{d['shortlist_mean']:.1f} / {d['shortlist_median']:.0f} | "
                               f"{d['quantize_exact_id']:.3f} | {d['quantize_shared_levels']:.2f} / "
                               f"{d['generated_shared_levels']:.2f} of {d['levels']} |")
            parts.append("\n".join(d_lines))
    return "\n\n".join(parts)
