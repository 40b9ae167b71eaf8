"""The vector-store interface: what ``Index`` needs of whatever holds the dense (fused) vectors.

Shaped after txtai's ``ANN`` and pyserini's searchers, so that an external engine can stand behind it: rows are
global integers that the store keeps next to each vector (a Milvus/Qdrant collection would store them as the
primary key and the modality code as a payload field to filter on); segments are named, added and dropped as a
unit (an engine would insert and delete by a segment field, and ``write_segment``/``open_segment`` would do
nothing); deleted rows are excluded at search time, exactly. The store is the one copy of each item's dense
vector: ``reconstruct`` hands stored vectors back (generative re-ranking, compaction). ``FaissStore``
(``dense.py``) is the first implementation. Search results are :class:`~unimir.ranking.Ranking` objects with tie
groups returned whole.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import numpy as np

from ..ranking import Ranking


class VectorStore(ABC):
    """Inner-product search over unit vectors of candidate rows, partitioned (or filtered) by modality code."""

    #: the spec string that recreates this store's configuration (round-trips through ``parse``)
    spec: str

    def train_size(self, n: int) -> int:
        """How many of n vectors ``train`` wants as its sample."""
        return n

    @abstractmethod
    def train(self, sample: np.ndarray) -> None:
        """Fit what the store learns from data (coarse centroids, codebooks) on float32 [n, d]; no-op if nothing."""

    @property
    @abstractmethod
    def is_trained(self) -> bool:
        ...

    @abstractmethod
    def add_segment(self, name: str, vectors: np.ndarray, modality_codes: np.ndarray, first_row: int) -> None:
        """Hold float32 [n, d] unit vectors for global rows first_row .. first_row + n - 1 as segment ``name``."""

    @abstractmethod
    def write_segment(self, name: str, folder: Path) -> list[str]:
        """Persist segment ``name`` under ``folder`` (a new, empty segment folder); returns the file names."""

    @abstractmethod
    def open_segment(self, name: str, folder: Path, first_row: int, num_rows: int) -> None:
        """Open a persisted segment of ``num_rows`` rows (memory-mapped where the engine allows); a store that does
        not hold exactly those rows raises ``IndexFormatError``."""

    @abstractmethod
    def rebase_segment(self, name: str, first_row: int) -> None:
        """Move a segment that is not persisted yet to a new first global row."""

    @abstractmethod
    def drop_segment(self, name: str) -> None:
        ...

    @abstractmethod
    def set_deleted(self, rows: np.ndarray) -> None:
        """Global rows (sorted int64) that searches must never return."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, allowed: "Sequence[tuple[int, ...] | None]") -> list[Ranking]:
        """Top-k rows per query among the allowed modality codes (None = all), tie groups whole."""

    @abstractmethod
    def reconstruct(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of global rows (int64 [n]) as float32 [n, d], in the given order: exact for
        uncompressed stores, the decoded approximation for compressed ones (PQ, SQ8)."""

    @abstractmethod
    def save_state(self, path: Path) -> None:
        """Persist index-level state (e.g. the trained, empty FAISS template) to one file."""

    @abstractmethod
    def load_state(self, path: Path) -> None:
        ...
