"""Health reports of the generative stages: what a user reads to see whether the quantizer or the generator is weak.

After the quantizer: per-level code usage and perplexity, dead codes, collisions, and ``quantize`` recall on held-back
validation pairs beside dense recall. After the generator: teacher-forced exact-ID accuracy on training and
validation targets and generative recall on the validation (unseen) targets. Degenerate stages get warnings that
say why and what to try. Reports are plain dicts (JSON), stored in the index manifest and shown by ``unimir info``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .eval.metrics import expected_hit_at_k
from .quantizer.pairs import TrainingPairs

if TYPE_CHECKING:
    from .index import Index

K_RECALL = 5
MAX_VAL_QUERIES = 300  # validation queries searched per report (a random, seeded subset beyond that)
NEAR_ZERO_ACC = 0.05


def split_validation(pairs: TrainingPairs, share: float, seed: int = 0) -> tuple[TrainingPairs, TrainingPairs | None]:
    """Hold out ``share`` of the distinct training *targets*: their pairs become validation pairs (targets no
    training pair points to, as in an unseen-target test). Returns (training pairs, validation pairs or None)."""
    targets = np.unique(pairs.positives)
    n_val = int(round(share * len(targets)))
    if n_val == 0 or n_val == len(targets):
        return pairs, None
    held = np.random.default_rng([seed, 7]).choice(targets, size=n_val, replace=False)
    val = np.isin(pairs.positives, held)
    return subset(pairs, ~val), subset(pairs, val)


def subset(pairs: TrainingPairs, mask: np.ndarray) -> TrainingPairs:
    return pairs.subset(mask)


def sample(pairs: TrainingPairs | None, limit: int = MAX_VAL_QUERIES, seed: int = 0) -> TrainingPairs | None:
    """At most ``limit`` of the pairs (every paraphrase and positive of a query is a pair), seeded, with their
    queries encoded; pairs whose query cannot be encoded are left out."""
    if pairs is None:
        return None
    mask = np.ones(len(pairs), bool)
    if len(pairs) > limit:
        mask[:] = False
        mask[np.random.default_rng([seed, 11]).choice(len(pairs), size=limit, replace=False)] = True
    ensure = getattr(pairs.queries, "ensure", None)
    if ensure is not None:  # lazily encoded queries (training.LazyQueryParts): these may not be drawn yet
        mask[mask] = ensure(pairs.query_rows[mask])
    return pairs if mask.all() else (subset(pairs, mask) if mask.any() else None)


def recall(index: "Index", pairs: TrainingPairs, mode: str, k: int = K_RECALL, beams: int | None = None) -> float:
    """Tie-aware R@k of ``pairs`` (queries, each with its one positive row) searched in ``index`` with ``mode``,
    restricted to each query's target modality, as evaluation does."""
    from .data.records import Modality

    allowed = [(Modality.from_code(int(c)),) for c in pairs.query_targets]
    rankings = index.search_features(pairs.query_features(), allowed, k, mode=mode, beams=beams)
    hits = [expected_hit_at_k(r, r.indices == p, k) for r, p in zip(rankings, pairs.positives)]
    return float(np.mean(hits)) if hits else 0.0


def quantizer_report(index: "Index", val: TrainingPairs | None) -> dict[str, Any]:
    g = index.generative
    stats = g.stats
    K = g.quantizer.config.codebook_size
    report: dict[str, Any] = {
        "items": stats.n_items, "distinct_ids": stats.n_distinct, "distinct_ratio": round(stats.distinct_ratio, 4),
        "mean_bucket": round(stats.mean_bucket, 3), "largest_bucket": stats.max_bucket,
        "levels": [{"level": lvl, "used": round(u, 4), "perplexity": round(p, 2),
                    "dead_codes": int(round((1.0 - u) * (3 if lvl == 0 else K)))}
                   for lvl, (u, p) in enumerate(zip(stats.level_usage, stats.level_perplexity))],
    }
    val = sample(val)
    if val is not None:
        report["validation"] = {"pairs": len(val), f"quantize_r{K_RECALL}": round(recall(index, val, "quantize"), 4),
                                f"dense_r{K_RECALL}": round(recall(index, val, "dense"), 4)}
    report["warnings"] = quantizer_warnings(report, K)
    return report


def quantizer_warnings(report: dict[str, Any], K: int) -> list[str]:
    out = []
    for level in report["levels"][1:]:
        possible = min(K, report["items"])
        if level["perplexity"] < 0.1 * possible:
            out.append(f"level {level['level']} is collapsed: perplexity {level['perplexity']:.1f} of {K} codes, "
                       f"{level['dead_codes']} never used. Try more quantizer epochs, kmeans_init_samples >= 10*K, "
                       "pool_refit, or a smaller codebook (--quantizer M3+RQ3x32).")
    if report["distinct_ratio"] < 0.5:
        out.append(f"IDs collide: {report['distinct_ids']} distinct IDs for {report['items']} items (largest bucket "
                   f"{report['largest_bucket']}). Add a level or a larger codebook (--quantizer M3+RQ4x64).")
    v = report.get("validation")
    if v and v[f"dense_r{K_RECALL}"] > 0 and v[f"quantize_r{K_RECALL}"] < 0.25 * v[f"dense_r{K_RECALL}"]:
        out.append(f"quantize R@{K_RECALL} on validation targets is {v[f'quantize_r{K_RECALL}']:.3f} against dense "
                   f"{v[f'dense_r{K_RECALL}']:.3f}: queries and positives get different codes. Try more quantizer "
                   "epochs or more training pairs.")
    return out


@torch.no_grad()
def exact_id_accuracy(index: "Index", pairs: TrainingPairs | None) -> float | None:
    """Teacher-forced exact-ID accuracy of the generator on clean query vectors -> their positives' IDs."""
    if pairs is None:
        return None
    g = index.generative
    z = torch.as_tensor(g.quantizer.embed(pairs.query_features()))
    codes = torch.as_tensor(np.asarray(g.codes)[pairs.positives].astype(np.int64))
    g.generator.eval()
    return round(float(g.generator.loss(z.to(g.generator.device), codes.to(g.generator.device)).exact_acc), 4)


def generator_report(index: "Index", train_pairs: TrainingPairs, val: TrainingPairs | None,
                     quantizer: dict[str, Any] | None = None) -> dict[str, Any]:
    val = sample(val)
    report: dict[str, Any] = {"train_exact_id_acc": exact_id_accuracy(index, sample(train_pairs, 1000)),
                              "val_exact_id_acc": exact_id_accuracy(index, val)}
    if val is not None:
        report["validation"] = {"pairs": len(val), **{
            f"{mode}_r{K_RECALL}": round(recall(index, val, mode), 4)
            for mode in ("dense", "generative", "generative-rerank", "quantize")}}
    report["warnings"] = generator_warnings(report)
    return report


def generator_warnings(report: dict[str, Any]) -> list[str]:
    out = []
    if report["train_exact_id_acc"] is not None and report["train_exact_id_acc"] < NEAR_ZERO_ACC:
        out.append(f"the generator did not learn its training targets (exact-ID accuracy "
                   f"{report['train_exact_id_acc']:.3f}). Train longer (--epochs) or raise the learning rate.")
    if report["val_exact_id_acc"] is not None and report["val_exact_id_acc"] < NEAR_ZERO_ACC:
        out.append(f"validation exact-ID accuracy is {report['val_exact_id_acc']:.3f}: the generator does not reach "
                   "unseen targets. Keep index-time pool pairs on, raise pool_noise, or use generative-rerank.")
    v = report.get("validation")
    if v and v[f"generative_r{K_RECALL}"] < v[f"quantize_r{K_RECALL}"]:
        out.append(f"generative R@{K_RECALL} ({v[f'generative_r{K_RECALL}']:.3f}) is below quantize "
                   f"({v[f'quantize_r{K_RECALL}']:.3f}) on validation targets: the generator loses what the codes "
                   "hold. Use --mode quantize or generative-rerank, or train with more pool noise.")
    return out


def format_report(stage: str, report: dict[str, Any]) -> str:
    """Human-readable lines of one stage's report; warnings loud, on their own lines."""
    lines = [f"health of the {stage}:"]
    if stage == "quantizer":
        lines.append(f"  IDs: {report['distinct_ids']} distinct for {report['items']} items (ratio "
                     f"{report['distinct_ratio']:.3f}), mean bucket {report['mean_bucket']:.2f}, largest "
                     f"{report['largest_bucket']}")
        lines.append("  per level (used share / perplexity / dead codes): " + ", ".join(
            f"L{lv['level']} {lv['used']:.2f}/{lv['perplexity']:.1f}/{lv['dead_codes']}" for lv in report["levels"]))
    else:
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(f"  teacher-forced exact-ID accuracy: training targets {fmt(report['train_exact_id_acc'])}, "
                     f"validation (unseen) targets {fmt(report['val_exact_id_acc'])}")
    v = report.get("validation")
    if v:
        lines.append(f"  R@{K_RECALL} on {v['pairs']} held-back validation pairs: " + ", ".join(
            f"{k.rsplit('_', 1)[0]} {x:.3f}" for k, x in v.items() if k != "pairs"))
    for w in report.get("warnings", []):
        lines.append(f"  WARNING: {w}")
    return "\n".join(lines)
