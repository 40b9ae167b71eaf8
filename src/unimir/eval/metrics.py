"""Tie-aware Recall@K (a hit rate), as the M-BEIR protocol defines it (mbeir-format.md §9)."""

from __future__ import annotations

from math import comb

import numpy as np

from ..ranking import Ranking


def expected_hit_at_k(ranking: Ranking, relevant: np.ndarray, k: int) -> float:
    """Expected success@k over a uniformly random order inside each tie group.

    ``relevant``: bool [len(ranking)], whether each ranked candidate is relevant. Take the best tie group holding a
    relevant item: g members, r relevant, n_above ranked strictly above it, m = min(k - n_above, g) slots left for
    it. Then hit = 0 if m <= 0 else 1 - C(g - r, m) / C(g, m). An optimistic "1 + number strictly higher" rank would
    count a relevant item tied with thousands of others as a hit; this does not.
    """
    hits = np.flatnonzero(relevant)
    if hits.size == 0:
        return 0.0
    group = ranking.tie_groups[hits[0]]
    members = np.flatnonzero(ranking.tie_groups == group)
    n_above, g = int(members[0]), int(members.size)
    r = int(relevant[members].sum())
    m = min(k - n_above, g)
    if m <= 0:
        return 0.0
    return 1.0 - comb(g - r, m) / comb(g, m)


def random_hit_at_k(pool_size: int, num_relevant: int, k: int) -> float:
    """Expected success@k of a random ranking: the whole pool is one tie group."""
    if num_relevant <= 0 or pool_size <= 0:
        return 0.0
    m = min(k, pool_size)
    return 1.0 - comb(pool_size - num_relevant, m) / comb(pool_size, m)
