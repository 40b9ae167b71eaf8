"""Training data of both stages: (query, positive) pairs as row-index arrays over feature sources, and the loader.

A pair is two ints: a row of the query features and a row of the candidate features. The features themselves stay
where they are: a *feature source* is anything with ``len()``, ``.dim`` and ``source[rows] -> Features`` (rows an int
array or a slice): an in-RAM :class:`Features`, fp16 ``.npy`` parts memory-mapped by ``read_features``, or an
index's stored segments (``Index.feature_rows``). Batches are gathered from the sources one batch at a time by a
torch ``DataLoader`` over row indices (:func:`pair_batches`), as GENIUS and UniIR train from stored fp16 features,
so no stage holds all pairs' vectors in RAM: what is resident is the index arrays (8 B per pair and field) and the
batch being trained on.

A training query with several instruction paraphrases or several positives is one *group* of alternative pairs;
every epoch draws one pair per group from a seeded RNG (``TrainingPairs.draw``), as ``genius-method.md`` §8.10
asks, instead of training on every alternative every epoch. A query source that encodes lazily (an ``ensure(rows)``
method, ``training.LazyQueryParts``) encodes a paraphrase only when it is first drawn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..encoders.base import Features
from ..errors import InvalidInputError
from .config import NUM_MODALITIES


@dataclass
class TrainingPairs:
    """n (query, positive) pairs.

    queries: feature source [Q], the instruction-prefixed query embeddings (one row per query and paraphrase).
    candidates: feature source [N], the pool the positives come from.
    candidate_modalities: int64 [N], each candidate's modality code (``Modality.code``).
    positives: int64 [n], row of each pair's positive in ``candidates``. A query with several positives appears
        once per positive.
    query_targets: int64 [n], each query's target modality code (its level-0 code); None means the positive's.
    query_rows: int64 [n], row of each pair's query in ``queries``; None means row i for pair i (Q = n).
    groups: int64 [n], the training query each pair is an alternative of (one pair per instruction paraphrase and
        positive); an epoch trains on one pair per group (:meth:`draw`). None: every pair is its own group.
    redraw: draw anew every epoch (True) or keep the first draw for all epochs (the reference's fixed instruction
        and positive per query).
    keepalive: whatever owns the files behind memory-mapped sources (a temporary folder), kept as long as the pairs.
    """

    queries: Any
    candidates: Any
    candidate_modalities: np.ndarray
    positives: np.ndarray
    query_targets: np.ndarray | None = None
    query_rows: np.ndarray | None = None
    groups: np.ndarray | None = None
    redraw: bool = True
    keepalive: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.candidate_modalities = np.asarray(self.candidate_modalities, dtype=np.int64)
        self.positives = np.asarray(self.positives, dtype=np.int64)
        n, n_cand = len(self.positives), len(self.candidates)
        if n == 0:
            raise InvalidInputError("no training pairs")
        if self.positives.shape != (n,):
            raise InvalidInputError(f"positives must be int [n], got {self.positives.shape}")
        if self.query_rows is None:
            if len(self.queries) != n:
                raise InvalidInputError(f"positives must be int [{len(self.queries)}] (one per query row), got "
                                        f"{self.positives.shape}")
            self.query_rows = np.arange(n, dtype=np.int64)
        self.query_rows = np.asarray(self.query_rows, dtype=np.int64)
        if self.query_rows.shape != (n,):
            raise InvalidInputError(f"query_rows must be int [{n}], got {self.query_rows.shape}")
        if self.query_rows.min() < 0 or self.query_rows.max() >= len(self.queries):
            raise InvalidInputError(f"query rows must be in 0..{len(self.queries) - 1}")
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
        if self.groups is not None:
            self.groups = np.asarray(self.groups, dtype=np.int64)
            if self.groups.shape != (n,):
                raise InvalidInputError(f"groups must be int [{n}], got {self.groups.shape}")
        self._group_index: tuple[np.ndarray, ...] | None = None

    def __len__(self) -> int:
        return int(self.positives.shape[0])

    @property
    def dim(self) -> int:
        return int(self.queries.dim)

    @property
    def num_groups(self) -> int:
        """Training queries: the pairs an epoch trains on."""
        return len(self) if self.groups is None else len(self._groups()[1])

    def _groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(pairs sorted by group, each group's first position in that order, its size, its id), computed once."""
        if self._group_index is None:
            order = np.argsort(self.groups, kind="stable")
            ids, starts, sizes = np.unique(self.groups[order], return_index=True, return_counts=True)
            self._group_index = (order, starts, sizes, ids)
        return self._group_index

    def choose(self, epoch: int, seed: int = 0) -> np.ndarray:
        """Pair indices (int64 [num_groups], ascending): one pair per group, uniform among the group's
        alternatives. A group's pick depends only on (seed, epoch or 0 without ``redraw``, group id), so a subset
        of the pairs draws the same pair for every group it keeps whole."""
        if self.groups is None:
            return np.arange(len(self), dtype=np.int64)
        order, starts, sizes, ids = self._groups()
        u = _unit_hash(seed, epoch if self.redraw else 0, ids)
        return np.sort(order[starts + np.minimum((u * sizes).astype(np.int64), sizes - 1)])

    def draw(self, epoch: int, seed: int = 0) -> np.ndarray:
        """The pairs an epoch trains on (:meth:`choose`), with their queries readable: a query source that encodes
        lazily encodes the drawn queries now, and a pair whose query fails to encode is replaced by another drawn
        pair, so that every epoch has the same number of steps."""
        chosen = self.choose(epoch, seed)
        ensure = getattr(self.queries, "ensure", None)
        if ensure is not None:
            ok = np.asarray(ensure(self.query_rows[chosen]), bool)
            if not ok.any():
                raise InvalidInputError("no training query could be encoded")
            if not ok.all():
                good = chosen[ok]
                fill = np.random.default_rng([seed, epoch, 1 << 21]).choice(good, size=len(chosen) - len(good))
                chosen = np.sort(np.concatenate([good, fill]))
        return chosen

    def draws(self, epoch: int, seed: int = 0, per_query: int = 1) -> np.ndarray:
        """``per_query`` draws per training query for one epoch: :meth:`draw` of draw numbers
        epoch * per_query .. epoch * per_query + per_query - 1, concatenated. Pairs without groups were enumerated
        by their maker (one per query, or synthetic): each is trained once per epoch whatever ``per_query`` is."""
        k = per_query if self.groups is not None else 1
        return np.concatenate([self.draw(epoch * k + j, seed) for j in range(k)])

    @property
    def positive_modalities(self) -> np.ndarray:
        return self.candidate_modalities[self.positives]

    def query_features(self, pairs: "np.ndarray | slice" = slice(None)) -> Features:
        """float32 query parts of the given pairs (all by default: only for small sets, e.g. validation)."""
        return gather(self.queries, self.query_rows[pairs])

    def positive_features(self, pairs: "np.ndarray | slice" = slice(None)) -> Features:
        return gather(self.candidates, self.positives[pairs])

    def subset(self, pairs: np.ndarray) -> "TrainingPairs":
        """The given pairs (int rows or a bool mask), over the same sources: no features are copied."""
        pairs = np.flatnonzero(pairs) if np.asarray(pairs).dtype == bool else np.asarray(pairs, np.int64)
        return TrainingPairs(self.queries, self.candidates, self.candidate_modalities, self.positives[pairs],
                             self.query_targets[pairs], self.query_rows[pairs],
                             None if self.groups is None else self.groups[pairs], self.redraw,
                             keepalive=self.keepalive)

    def first_draw(self, seed: int = 0) -> "TrainingPairs":
        """One pair per group (epoch 0's draw): for statistics over the training queries (the quantizer's pool
        refit, the generator's gap offsets), so that each query counts once and only encoded queries are read."""
        return self if self.groups is None else self.subset(self.draw(0, seed))


def _unit_hash(seed: int, epoch: int, ids: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1), one per id, from a splitmix64 hash of (seed, epoch, id): a per-group draw that does
    not depend on which other groups are present."""
    salt = int.from_bytes(hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=8).digest(), "little")
    with np.errstate(over="ignore"):
        x = np.asarray(ids, np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def gather(source: Any, rows: "np.ndarray | slice") -> Features:
    """``source[rows]`` as float32 Features. Rows are read in ascending order (sequential on a memory map) and put
    back in the asked order."""
    if isinstance(rows, slice):
        f = source[rows]
    else:
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        f = source[rows[order]]
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        f = f[back]
    return Features(np.asarray(f.image, np.float32), np.asarray(f.text, np.float32),
                    np.asarray(f.image_mask, bool), np.asarray(f.text_mask, bool))


class FeatureRows:
    """A lazy row selection of a feature source: ``view[i]`` is ``source[rows[i]]``, read only when asked."""

    def __init__(self, source: Any, rows: np.ndarray | None = None):
        self.source = source
        self.rows = np.arange(len(source), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def dim(self) -> int:
        return int(self.source.dim)

    def __getitem__(self, idx) -> Features:
        return gather(self.source, self.rows[idx])


# --- loading ---------------------------------------------------------------------------------------------------

class EpochBatches(Sampler):
    """The row batches of one epoch: a permutation seeded by (seed, epoch) cut into ``batch``-sized slices, from
    batch ``start`` on (a resumed run continues mid-epoch with the same order). ``drop_last`` drops a ragged tail."""

    def __init__(self, n: int, batch: int, seed: int, epoch: int, *, start: int = 0, drop_last: bool = False):
        self.n, self.batch, self.seed, self.epoch, self.start = n, batch, seed, epoch, start
        self.steps = max(1, n // batch) if drop_last else -(-n // batch)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self) -> Iterator[np.ndarray]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        for i in range(self.start, self.steps):
            yield order[i * self.batch:(i + 1) * self.batch]


def pair_batches(gather_batch: Callable[[np.ndarray], Any], sampler: Sampler, device: torch.device) -> DataLoader:
    """A DataLoader that calls ``gather_batch(rows)`` once per batch of row indices from ``sampler``.

    Batches are gathered in the training process (``num_workers=0``): on the 2 shared cores here a worker process
    only competes with the model for a core; pinned memory speeds the copy to a GPU."""
    return DataLoader(_BatchGatherer(gather_batch), sampler=sampler, batch_size=None, num_workers=0,
                      pin_memory=device.type == "cuda", collate_fn=lambda batch: batch)


class _BatchGatherer(torch.utils.data.Dataset):
    """A map-style dataset whose keys are whole batches of rows (one vectorised gather per batch, not per row)."""

    def __init__(self, gather_batch: Callable[[np.ndarray], Any]):
        self.gather_batch = gather_batch

    def __getitem__(self, rows: np.ndarray) -> Any:
        return self.gather_batch(np.asarray(rows))
