"""The output contract every retrieval mode honours: a ranking with scores and explicit tie groups."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Ranking:
    """One query's ranked candidates.

    indices: int64 [n], candidate rows (positions in the index) in rank order.
    scores: float32 [n], non-increasing, in the mode's own scale (cosine for dense, log-probability for generative).
    tie_groups: int64 [n], non-decreasing; equal values mark a tie, whose internal order carries no information.
        Evaluation counts a tied relevant item as a hit only in expectation over a random order of its group,
        so a retriever must return a tie group that straddles the cut-off whole (``complete`` says whether it did).
    """

    indices: np.ndarray
    scores: np.ndarray
    tie_groups: np.ndarray

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @staticmethod
    def from_scores(indices: np.ndarray, scores: np.ndarray, atol: float = 0.0) -> "Ranking":
        """Sort by score (stable, so equal scores keep the given order) and group exactly equal scores."""
        indices = np.asarray(indices, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        order = np.argsort(-scores, kind="stable")
        indices, scores = indices[order], scores[order]
        new_group = np.ones(len(scores), dtype=bool)
        if len(scores) > 1:
            new_group[1:] = (scores[:-1] - scores[1:]) > atol
        return Ranking(indices, scores, np.cumsum(new_group) - 1)

    def top(self, k: int) -> "Ranking":
        return Ranking(self.indices[:k], self.scores[:k], self.tie_groups[:k])

    def without(self, rows: "set[int] | np.ndarray") -> "Ranking":
        """The ranking with the given candidate rows removed; the rest keep their ties, their groups numbered
        0, 1, ... again."""
        if len(rows) == 0:
            return self
        keep = ~np.isin(self.indices, np.fromiter(rows, dtype=np.int64) if isinstance(rows, set) else rows)
        groups = self.tie_groups[keep]
        renumbered = np.unique(groups, return_inverse=True)[1].reshape(-1) if len(groups) else groups
        return Ranking(self.indices[keep], self.scores[keep], renumbered.astype(self.tie_groups.dtype))

    @staticmethod
    def empty() -> "Ranking":
        return Ranking(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64))
