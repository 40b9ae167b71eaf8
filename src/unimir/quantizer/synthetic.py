"""Synthetic clustered corpora with known answers, for tests and quick experiments (no encoder, no files)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..encoders.base import Features, l2_normalize
from .pairs import TrainingPairs


@dataclass
class SyntheticCorpus:
    """candidates: Features [N]; modalities: int64 [N] codes; queries: Features [n]; positives: int64 [n] (the one
    relevant candidate per query); query_targets: int64 [n] (= the positive's modality)."""

    candidates: Features
    modalities: np.ndarray
    queries: Features
    positives: np.ndarray
    query_targets: np.ndarray

    def pairs(self, rows: np.ndarray | slice = slice(None)) -> TrainingPairs:
        return TrainingPairs(self.queries[rows], self.candidates, self.modalities, self.positives[rows],
                             self.query_targets[rows])


def synthetic_corpus(n_items: int, dim: int = 32, n_clusters: int = 16, queries_per_item: int = 2,
                     item_noise: float = 0.5, part_noise: float = 0.2, query_noise: float = 0.3,
                     modalities: tuple[int, ...] = (0, 1, 2), seed: int = 0) -> SyntheticCorpus:
    """Items are noisy points around cluster centres; an item's image and text parts are two noisy views of it,
    present according to its modality. Each query is a text-only noisy view of one item (its positive), asking for
    that item's modality; queries are grouped item by item (query r has positive r // queries_per_item)."""
    rng = np.random.default_rng(seed)
    centres = l2_normalize(rng.standard_normal((n_clusters, dim)))
    items = l2_normalize(centres[rng.integers(n_clusters, size=n_items)]
                         + item_noise / np.sqrt(dim) * rng.standard_normal((n_items, dim)))
    mods = rng.choice(np.asarray(modalities, dtype=np.int64), size=n_items)

    def view(base: np.ndarray, noise: float) -> np.ndarray:
        return l2_normalize(base + noise / np.sqrt(dim) * rng.standard_normal(base.shape))

    has_image, has_text = mods != 1, mods != 0
    candidates = Features(view(items, part_noise) * has_image[:, None], view(items, part_noise) * has_text[:, None],
                         has_image, has_text)
    positives = np.repeat(np.arange(n_items, dtype=np.int64), queries_per_item)
    n_queries = len(positives)
    queries = Features(np.zeros((n_queries, dim), np.float32), view(items[positives], query_noise),
                       np.zeros(n_queries, bool), np.ones(n_queries, bool))
    return SyntheticCorpus(candidates, mods, queries, positives, mods[positives])
