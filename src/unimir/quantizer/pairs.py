"""Training data of both stages: (query, positive) pairs over a candidate pool, as plain arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..encoders.base import Features
from ..errors import InvalidInputError
from .config import NUM_MODALITIES


@dataclass
class TrainingPairs:
    """n (query, positive) pairs.

    queries: Features [n], the instruction-prefixed query embeddings.
    candidates: Features [N], the pool the positives come from.
    candidate_modalities: int64 [N], each candidate's modality code (``Modality.code``).
    positives: int64 [n], row of each pair's positive in ``candidates``. A query with several positives appears
        once per positive (the caller may redraw them per epoch).
    query_targets: int64 [n], each query's target modality code (its level-0 code); None means the positive's.
    """

    queries: Features
    candidates: Features
    candidate_modalities: np.ndarray
    positives: np.ndarray
    query_targets: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.candidate_modalities = np.asarray(self.candidate_modalities, dtype=np.int64)
        self.positives = np.asarray(self.positives, dtype=np.int64)
        n, n_cand = len(self.queries), len(self.candidates)
        if n == 0:
            raise InvalidInputError("no training pairs")
        if self.positives.shape != (n,):
            raise InvalidInputError(f"positives must be int [{n}] (one per query row), got {self.positives.shape}")
        if self.candidate_modalities.shape != (n_cand,):
            raise InvalidInputError(f"candidate_modalities must be int [{n_cand}], got "
                                    f"{self.candidate_modalities.shape}")
        if self.positives.min() < 0 or self.positives.max() >= n_cand:
            raise InvalidInputError(f"positive rows must be in 0..{n_cand - 1}")
        if self.query_targets is None:
            self.query_targets = self.candidate_modalities[self.positives]
        self.query_targets = np.asarray(self.query_targets, dtype=np.int64)
        if self.query_targets.shape != (n,):
            raise InvalidInputError(f"query_targets must be int [{n}], got {self.query_targets.shape}")
        for name in ("candidate_modalities", "query_targets"):
            codes = getattr(self, name)
            if codes.min() < 0 or codes.max() >= NUM_MODALITIES:
                raise InvalidInputError(f"{name} must be modality codes 0 image, 1 text, 2 image,text")
        if self.queries.dim != self.candidates.dim:
            raise InvalidInputError(f"query dim {self.queries.dim} != candidate dim {self.candidates.dim}")

    def __len__(self) -> int:
        return int(self.positives.shape[0])

    @property
    def positive_modalities(self) -> np.ndarray:
        return self.candidate_modalities[self.positives]
