"""Collision and code-usage statistics of a coded pool (``genius-method.md`` §3.4, §8.2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CollisionStats:
    """How well IDs separate items.

    distinct_ratio = distinct IDs / items (1.0: no collisions). Bucket sizes count items per distinct ID.
    level_usage[l]: fraction of level l's codes used at least once; level_perplexity[l]: exp(entropy) of level l's
    code distribution (at most its codebook size; level 0 is the modality level, at most 3).
    """

    n_items: int
    n_distinct: int
    distinct_ratio: float
    mean_bucket: float
    max_bucket: int
    level_usage: tuple[float, ...]
    level_perplexity: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CollisionStats":
        return cls(**{**data, "level_usage": tuple(data["level_usage"]),
                      "level_perplexity": tuple(data["level_perplexity"])})


def collision_stats(codes: np.ndarray, level_sizes: tuple[int, ...],
                    bucket_sizes: np.ndarray | None = None) -> CollisionStats:
    """Statistics of codes int64 [n, L+1], where level l has ``level_sizes[l]`` possible codes.

    ``bucket_sizes`` (items per distinct ID) may be passed when already known, to skip a sort.
    """
    n = int(codes.shape[0])
    if n == 0:
        zeros = tuple(0.0 for _ in level_sizes)
        return CollisionStats(0, 0, 1.0, 0.0, 0, zeros, zeros)
    if bucket_sizes is None:
        _, bucket_sizes = np.unique(codes, axis=0, return_counts=True)
    usage, perplexity = [], []
    for level, size in enumerate(level_sizes):
        counts = np.bincount(codes[:, level], minlength=size)
        p = counts[counts > 0] / n
        usage.append(float((counts > 0).sum() / size))
        perplexity.append(float(np.exp(-(p * np.log(p)).sum())))
    return CollisionStats(n, len(bucket_sizes), len(bucket_sizes) / n, float(bucket_sizes.mean()),
                          int(bucket_sizes.max()), tuple(usage), tuple(perplexity))
