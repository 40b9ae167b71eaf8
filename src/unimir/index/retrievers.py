"""Retrieval modes behind one interface, chosen by name from a registry (pyserini's searchers, txtai's ANN).

A mode is one class: ``name``, ``available(index)`` and ``search(index, queries, allowed, k, beams)``, returning
one :class:`~unimir.ranking.Ranking` per query over the index's global rows, with deleted rows already gone and
tie groups whole. ``Index.search_features`` looks the mode up here, so a new mode (sparse, hybrid, an external
engine) is a new class decorated with ``@register``, not an edit of ``Index``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..encoders import Features
from ..ranking import Ranking

if TYPE_CHECKING:
    from .index import Index

DEFAULT_BEAMS = 50  # the paper's B; fewer distinct IDs than beams is handled by the decoder
RETRIEVERS: dict[str, "type[Retriever]"] = {}


class Retriever(ABC):
    name: str
    #: what to tell a user who asks for this mode on an index that cannot serve it
    unavailable: str = "this index cannot serve it"

    @classmethod
    @abstractmethod
    def available(cls, index: "Index") -> bool:
        ...

    @abstractmethod
    def search(self, index: "Index", queries: Features, allowed: "Sequence[tuple[int, ...] | None]", k: int,
               beams: int | None = None) -> list[Ranking]:
        """``allowed``: per query, the candidate modality codes to consider (None = any)."""


def register(cls: "type[Retriever]") -> "type[Retriever]":
    RETRIEVERS[cls.name] = cls
    return cls


def modes() -> tuple[str, ...]:
    return tuple(RETRIEVERS)


@register
class DenseRetriever(Retriever):
    """Score fusion of the query's parts against the vector store (FAISS by default)."""

    name = "dense"

    @classmethod
    def available(cls, index: "Index") -> bool:
        return True

    def search(self, index, queries, allowed, k, beams=None):
        return index.vectors.search(index.fuse(queries), k, allowed)


class _Generative(Retriever):
    """The three GENIUS modes share one call; deleted rows are fetched past and dropped."""

    unavailable = "needs a trained generative model: run 'unimir train' on this index first"

    @classmethod
    def available(cls, index: "Index") -> bool:
        g = index.generative
        return g is not None and (cls.name == "quantize" or g.generator is not None)

    def search(self, index, queries, allowed, k, beams=None):
        deleted = index.deleted_rows
        rankings = index.generative.search(queries, list(allowed), k=k + len(deleted), mode=self.name,
                                           beams=beams or DEFAULT_BEAMS, query_fused=index.fuse(queries),
                                           cand_fused=index.fused)
        return [_cut(r.without(deleted), k) if len(deleted) else r for r in rankings]


@register
class GenerativeRetriever(_Generative):
    name = "generative"


@register
class GenerativeRerankRetriever(_Generative):
    name = "generative-rerank"


@register
class QuantizeRetriever(_Generative):
    name = "quantize"


def _cut(ranking: Ranking, k: int) -> Ranking:
    """The top k, extended to the end of the tie group that straddles position k."""
    if len(ranking) <= k:
        return ranking
    end = int(np.searchsorted(ranking.tie_groups, ranking.tie_groups[k - 1], side="right"))
    return ranking.top(end)
