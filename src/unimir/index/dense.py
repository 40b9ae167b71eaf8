"""Dense retrieval on FAISS: one inner-product index per candidate modality.

Partitioning by modality makes the candidate-modality filter exact and free (a "find an image" query only ever
searches image rows), which a post-filter or an ID selector on a graph index would not be.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import faiss
import numpy as np

from ..errors import InvalidInputError
from ..ranking import Ranking

_SPEC = re.compile(r"^(flat|hnsw(\d+)?(?:,ef(\d+))?)$")


@dataclass(frozen=True)
class DenseSpec:
    """A short index spec that round-trips: ``flat`` (exact) or ``hnsw[M][,ef<efSearch>]`` (default hnsw32,ef64)."""

    kind: str = "flat"
    hnsw_m: int = 32
    ef_search: int = 64

    @classmethod
    def parse(cls, spec: str) -> "DenseSpec":
        m = _SPEC.match((spec or "flat").strip().lower())
        if not m:
            raise InvalidInputError(f"unknown index spec {spec!r}: use 'flat' or 'hnsw', 'hnsw32', 'hnsw32,ef128'")
        if m.group(1) == "flat":
            return cls("flat")
        return cls("hnsw", int(m.group(2) or 32), int(m.group(3) or 64))

    @property
    def spec(self) -> str:
        return "flat" if self.kind == "flat" else f"hnsw{self.hnsw_m},ef{self.ef_search}"

    def new_index(self, dim: int) -> faiss.Index:
        if self.kind == "flat":
            return faiss.IndexFlatIP(dim)
        index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(40, 2 * self.hnsw_m)
        index.hnsw.efSearch = self.ef_search
        return index


class DenseIndex:
    """FAISS partitions keyed by modality code; partition row i is global candidate row ``rows[code][i]``."""

    def __init__(self, dim: int, spec: DenseSpec):
        self.dim, self.spec = dim, spec
        self.parts: dict[int, faiss.Index] = {}
        self.rows: dict[int, np.ndarray] = {}

    def add(self, vectors: np.ndarray, modality_codes: np.ndarray, first_row: int) -> None:
        """Append unit vectors float32 [n, dim] whose global rows are first_row .. first_row + n - 1."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        for code in np.unique(modality_codes):
            sel = np.flatnonzero(modality_codes == code)
            code = int(code)
            if code not in self.parts:
                self.parts[code] = self.spec.new_index(self.dim)
                self.rows[code] = np.zeros(0, np.int64)
            self.parts[code].add(vectors[sel])
            self.rows[code] = np.concatenate([self.rows[code], sel.astype(np.int64) + first_row])

    def __len__(self) -> int:
        return sum(p.ntotal for p in self.parts.values())

    def search(self, queries: np.ndarray, k: int, allowed: "list[tuple[int, ...] | None]") -> list[Ranking]:
        """Top-k per query among the allowed modality codes (None = all), tie groups returned whole.

        queries: float32 [q, dim] unit rows. ``allowed`` has one entry per query. Whenever the k-th score ties
        with the last one fetched, the search is repeated deeper, so no tie group is cut at the boundary.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        out: list[Ranking | None] = [None] * len(queries)
        groups: dict[tuple[int, ...], list[int]] = {}
        for qi, codes in enumerate(allowed):
            present = sorted(self.parts) if codes is None else [c for c in sorted(set(codes)) if c in self.parts]
            key = tuple(present)
            groups.setdefault(key, []).append(qi)
        for codes, qis in groups.items():
            if not codes:
                for qi in qis:
                    out[qi] = Ranking.empty()
                continue
            pool = sum(self.parts[c].ntotal for c in codes)
            pending, depth = np.asarray(qis), min(pool, k + 16)
            while len(pending):
                rankings = self._search_codes(queries[pending], codes, depth)
                again = []
                for qi, r in zip(pending, rankings):
                    cut = min(k, len(r)) - 1
                    if cut < 0:
                        out[qi] = r
                        continue
                    # the k-th item's tie group may continue past what was fetched: go deeper
                    if len(r) >= depth and depth < pool and r.tie_groups[cut] == r.tie_groups[-1]:
                        again.append(qi)
                        continue
                    out[qi] = r.top(int(np.searchsorted(r.tie_groups, r.tie_groups[cut], side="right")))
                pending, depth = np.asarray(again, dtype=np.int64), min(pool, depth * 4)
        return out  # type: ignore[return-value]

    def _search_codes(self, queries: np.ndarray, codes: tuple[int, ...], depth: int) -> list[Ranking]:
        all_scores, all_rows = [], []
        for c in codes:
            part = self.parts[c]
            d = min(depth, part.ntotal)
            scores, local = part.search(queries, d)
            valid = local >= 0
            rows = np.where(valid, self.rows[c][np.clip(local, 0, None)], -1)
            all_scores.append(np.where(valid, scores, -np.inf))
            all_rows.append(rows)
        scores, rows = np.concatenate(all_scores, 1), np.concatenate(all_rows, 1)
        out = []
        for s, r in zip(scores, rows):
            keep = r >= 0
            ranking = Ranking.from_scores(r[keep], s[keep])
            out.append(ranking.top(depth))
        return out

    # --- persistence ---------------------------------------------------------------------------------------
    def serialize(self) -> dict[int, np.ndarray]:
        return {c: faiss.serialize_index(p) for c, p in self.parts.items()}

    @classmethod
    def deserialize(cls, dim: int, spec: DenseSpec, blobs: dict[int, np.ndarray],
                    modality_codes: np.ndarray) -> "DenseIndex":
        dense = cls(dim, spec)
        for c, blob in blobs.items():
            dense.parts[c] = faiss.deserialize_index(blob)
            if isinstance(dense.parts[c], faiss.IndexHNSW):
                dense.parts[c].hnsw.efSearch = spec.ef_search
            dense.rows[c] = np.flatnonzero(modality_codes == c).astype(np.int64)
            if dense.rows[c].shape[0] != dense.parts[c].ntotal:
                raise ValueError(f"modality {c}: {dense.parts[c].ntotal} vectors but {dense.rows[c].shape[0]} rows")
        return dense
