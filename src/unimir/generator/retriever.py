"""``GenerativeRetriever``: quantizer + generator + the coded pool, from training to ranked lists.

Search modes (``genius-method.md`` §5.3):

* ``generative`` (GENIUS): beams in score order, each emitting its bucket (the items with that ID). Without
  candidate fused vectors a bucket is one tie group scored by its beam's log-probability; with them, a bucket's
  members are ordered by cos(f_q, f_c) and each is its own tie group (scores stay the beam's).
* ``generative-rerank`` (GENIUS-R): the union of all beams' buckets (optionally capped, in beam order) ranked by
  cos(f_q, f_c).
* ``quantize`` (no generator): the query's nearest in-pool ID by residual beam search over the codebooks; items
  ranked by how many leading codes they share with it, then by cosine. The score is shared-prefix length
  + 0.999 * (1 + cos) / 2 (just the length without fused vectors, each length then being one tie group).

The index holds codes, never features; rankings index candidate rows in insertion order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..atomic import write_json, write_npy
from ..data.records import Modality, parse_modalities
from ..encoders.base import Features
from ..errors import IndexFormatError, InvalidInputError
from ..quantizer.checkpoint import array_digest, read_versioned_json
from ..quantizer.config import NUM_MODALITIES, QuantizerTrainConfig
from ..quantizer.model import SemanticQuantizer
from ..quantizer.pairs import FeatureRows, TrainingPairs, gather
from ..quantizer.stats import CollisionStats, collision_stats
from ..quantizer.train import QuantizerTrainReport
from ..ranking import Ranking
from .augment import group_offsets, modality_of, shift, shift_plan
from .beam import BeamSearchResult, constrained_beam_search, residual_beam_search
from .model import GeneratorConfig, IDGenerator
from .train import GeneratorTrainConfig, GeneratorTrainReport, train_generator
from .trie import SemanticIDTrie

SearchMode = Literal["generative", "generative-rerank", "quantize"]
SEARCH_MODES: tuple[str, ...] = ("generative", "generative-rerank", "quantize")
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CODES_FILE = "codes.npy"

# Allowed target modalities per query; see ``allowed_modalities``.
Targets = None | np.ndarray | Sequence[int | str | Modality | Iterable[int | str | Modality] | None]


class GenerativeRetriever:
    """A coded candidate pool searchable by ID generation.

    Typical use: ``fit_quantizer(pairs)``, ``fit_generator(pairs)``, ``index(features, modality_codes)``, then
    ``search(queries, targets, k, beams, mode)`` -> one ``Ranking`` per query; ``save(dir)`` / ``load(dir)``.
    """

    def __init__(self, quantizer: SemanticQuantizer, generator: IDGenerator | None = None):
        if generator is not None:
            g, q = generator.config, quantizer.config
            if (g.dim, g.levels, g.codebook_size) != (q.dim, q.levels, q.codebook_size):
                raise InvalidInputError(f"generator (d={g.dim}, L={g.levels}, K={g.codebook_size}) does not fit "
                                        f"quantizer {q.spec} with d={q.dim}")
        self.quantizer = quantizer
        self.generator = generator
        self.train_configs: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}
        self.health: dict[str, Any] = {}  # stage health reports (``unimir.health``), stored in the manifest
        self.learned_rows = 0  # leading indexed rows the generator was trained to know (index-time training)
        self._set_codes(np.zeros((0, quantizer.config.code_length), np.int64))

    # -- state ----------------------------------------------------------------------------------------------------

    @property
    def codes(self) -> np.ndarray:
        """Read-only [N, L+1]: the ID of every indexed candidate row, in the trie's compact code type (uint8 for
        levels of 256 codes; ``astype(np.int64)`` where an int64 copy is wanted)."""
        return self._codes

    @property
    def trie(self) -> SemanticIDTrie:
        return self._trie

    @property
    def stats(self) -> CollisionStats:
        """Collision statistics of the current index (recomputed by ``index`` and ``add``)."""
        return self._stats

    def __len__(self) -> int:
        return int(self._codes.shape[0])

    def _set_codes(self, codes: np.ndarray) -> None:
        # The only writer of codes: trie, buckets and stats are rebuilt together, so they are never stale.
        trie = SemanticIDTrie(codes, self.quantizer.level_sizes)  # validates, then holds them compactly
        codes = np.ascontiguousarray(np.asarray(codes).astype(trie.code_dtype, copy=False))
        codes.setflags(write=False)
        self._codes, self._trie = codes, trie
        self._stats = collision_stats(codes, self.quantizer.level_sizes, self._trie.bucket_sizes)

    # -- training -------------------------------------------------------------------------------------------------

    def fit_quantizer(self, pairs: TrainingPairs, config: QuantizerTrainConfig | None = None, *,
                      progress: bool = True, checkpoint_path: str | Path | None = None,
                      resume: bool = False, log: bool = True) -> QuantizerTrainReport:
        """Stage 1. Refused once items are indexed or a generator exists: both depend on the codebooks."""
        if len(self) or self.generator is not None:
            raise InvalidInputError("the quantizer is frozen once a generator is trained or items are indexed; "
                                    "start a new GenerativeRetriever to retrain it")
        config = config or QuantizerTrainConfig()
        report = self.quantizer.train(pairs, config, progress=progress, checkpoint_path=checkpoint_path,
                                      resume=resume, log=log)
        self.train_configs["quantizer"] = config.to_dict()
        return report

    def fit_generator(self, pairs: TrainingPairs, config: GeneratorTrainConfig | None = None,
                      generator_config: GeneratorConfig | None = None, *, progress: bool = True,
                      checkpoint_path: str | Path | None = None, resume: bool = False,
                      pool: tuple[Features, np.ndarray] | None = None, validate: Callable[[], float] | None = None,
                      log: bool = True) -> GeneratorTrainReport:
        """Stage 2: train the generator to emit each positive's ID from its query (quantizer frozen).

        A new generator is created from ``generator_config`` (its dim / levels / codebook_size are taken from the
        quantizer) with code embeddings initialised from the codebooks; an existing one continues training.
        ``pool`` (Features [N], modality codes [N]: the indexed items, in row order) adds index-time pairs, each
        item's own vector -> its ID, when ``config.pool_pairs``; ``validate`` drives early stopping.
        """
        q = self.quantizer
        q.require_trained()
        config = config or GeneratorTrainConfig()
        if self.generator is None:
            shape = {"dim": q.config.dim, "levels": q.config.levels, "codebook_size": q.config.codebook_size}
            base = (generator_config or GeneratorConfig()).to_dict()
            self.generator = IDGenerator(GeneratorConfig.from_dict({**base, **shape}), seed=config.seed)
            self.generator.init_code_embeddings(q.codebooks(), seed=config.seed)
        # IDs are computed once (ints, L+1 per pair); the combiner outputs z_q, z_p are computed per batch from the
        # pairs' feature sources, so no [n, d] array of them is ever held
        rows, inverse = np.unique(pairs.positives, return_inverse=True)
        targets = self._codes_of(pairs.candidates, pairs.candidate_modalities, rows)[inverse]
        queries = [FeatureRows(pairs.queries, pairs.query_rows)]
        positives = [FeatureRows(pairs.candidates, pairs.positives)]
        noise = np.full(len(pairs), config.query_noise, np.float32)
        if pool is not None and config.pool_pairs:
            pool_rows = FeatureRows(pool[0])
            pool_codes = self._codes_of(pool[0], pool[1], pool_rows.rows)
            queries.append(pool_rows)
            positives.append(pool_rows)  # a self-pair: the item's own vector -> its ID
            targets = np.concatenate([targets, pool_codes])
            noise = np.concatenate([noise, np.full(len(pool_rows), config.pool_noise, np.float32)])
            if config.pool_shift:  # the offsets of each training query once (its first drawn pair)
                first = pairs.first_draw(config.seed)
                offsets = streamed_group_offsets(q, FeatureRows(first.queries, first.query_rows),
                                                 FeatureRows(first.candidates, first.positives), first.query_targets)
                shifted_rows, choice, deltas = shift_plan(np.asarray(pool[1]), offsets,
                                                          np.random.default_rng([config.seed, 13]))
                if len(shifted_rows):
                    shifted = Shifted(FeatureRows(pool[0], shifted_rows), choice, np.stack(deltas))
                    queries.append(shifted)
                    positives.append(shifted)
                    targets = np.concatenate([targets, pool_codes[shifted_rows]])
                    noise = np.concatenate([noise, np.full(len(shifted), config.pool_noise, np.float32)])
        z_q, z_p = Embedded(q, queries), Embedded(q, positives)
        pool_part = np.arange(len(pairs), len(targets), dtype=np.int64)

        def epoch_rows(epoch: int) -> np.ndarray:  # query_draws pairs drawn per training query + every pool pair
            return np.concatenate([pairs.draws(epoch, config.seed, config.query_draws), pool_part])

        report = train_generator(self.generator, z_q, z_p, targets, config, progress=progress,
                                 checkpoint_path=checkpoint_path, resume=resume, noise=noise, validate=validate,
                                 epoch_rows=epoch_rows, log=log)
        self.train_configs["generator"] = config.to_dict()
        self.learned_rows = len(self)
        return report

    def _codes_of(self, source: Any, modality_codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """IDs (int64 [len(rows), L+1]) of ``rows`` of a feature source with modality codes [N]. When the source is
        the indexed pool (as many rows as the index, and a sample of 256 rows codes to the stored IDs) they are read
        from the index rather than computed again: coding is the costly step at M-BEIR scale (minutes per million)."""
        modality_codes = np.asarray(modality_codes, np.int64)
        if len(self) and len(source) == len(self) and len(rows):
            probe = np.unique(np.random.default_rng(0).choice(rows, size=min(256, len(rows)), replace=False))
            fresh = self.quantizer.compute_codes(FeatureRows(source, probe), modality_codes[probe])
            if np.array_equal(fresh, self.codes[probe].astype(np.int64)):
                return self.codes[rows].astype(np.int64)
        return self.quantizer.compute_codes(FeatureRows(source, rows), modality_codes[rows])

    def refresh(self, features: Features, rows: np.ndarray | None = None, *, epochs: int = 30,
                replay: float = 8.0, max_steps: int = 400, lr: float = 1e-3, seed: int = 0,
                log: bool = True) -> dict[str, Any]:
        """Index-time fine-tune: teach the generator the IDs of indexed rows it does not know yet.

        features: Features [N] of every indexed row (row order). rows: the rows to learn (default: those from
        ``learned_rows`` on; all rows when there are none). Each is trained as its own (noised) vector -> its ID for
        up to ``epochs`` passes beside ``replay`` x as many old rows drawn at random (so that old IDs are not
        forgotten), in at most ``max_steps`` optimiser steps. Returns what was done.
        """
        if self.generator is None:
            raise InvalidInputError("no generator to refresh: train one first ('unimir train')")
        if len(features) != len(self):
            raise InvalidInputError(f"got features of {len(features)} rows for an index of {len(self)}")
        if rows is None:
            rows = np.arange(self.learned_rows, len(self)) if self.learned_rows < len(self) else np.arange(len(self))
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return {"rows": 0, "replay": 0, "steps": 0}
        rng = np.random.default_rng([seed, len(self)])
        old = np.setdiff1d(np.arange(len(self)), rows)
        replayed = rng.choice(old, size=min(len(old), int(round(replay * len(rows)))), replace=False)
        chosen = np.concatenate([rows, replayed])
        z = self.quantizer.embed(FeatureRows(features, chosen))
        base = GeneratorTrainConfig.from_dict(self.train_configs.get("generator", {}))
        batch = min(base.batch_size, len(chosen))
        epochs = max(1, min(epochs, max_steps * batch // len(chosen)))
        config = GeneratorTrainConfig.from_dict({**base.to_dict(), "epochs": epochs, "lr": lr, "warmup_ratio": 0.0,
                                                 "batch_size": batch, "seed": seed, "patience": 0})
        report = train_generator(self.generator, z, z, self._codes[chosen].astype(np.int64), config, progress=False,
                                 noise=np.full(len(chosen), config.pool_noise, np.float32), log=log)
        self.learned_rows = len(self)
        return {"rows": int(len(rows)), "replay": int(len(replayed)), "steps": report.steps, "epochs": epochs}

    # -- indexing -------------------------------------------------------------------------------------------------

    def index(self, features: Features, modality_codes: np.ndarray) -> CollisionStats:
        """Replace the index with these candidates (Features [N], modality codes int [N]); returns its stats."""
        self._set_codes(self.quantizer.compute_codes(features, modality_codes))
        return self.stats

    def index_codes(self, codes: np.ndarray) -> CollisionStats:
        """Replace the index with precomputed IDs, int [N, L+1] (e.g. ``quantizer.compute_codes`` run in chunks
        over stored features); returns its stats."""
        self._set_codes(codes)
        return self.stats

    def add(self, features: Features, modality_codes: np.ndarray) -> np.ndarray:
        """Append candidates; returns their rows (int64 [n]). Codebooks and generator stay frozen: new items are
        reachable at once, though IDs never seen in training may rank low. Rebuilding is a sort of N x (L+1)."""
        start = len(self)
        new = self.quantizer.compute_codes(features, modality_codes)
        self._set_codes(np.concatenate([self._codes, new.astype(self._codes.dtype)]))
        return np.arange(start, len(self), dtype=np.int64)

    # -- search ---------------------------------------------------------------------------------------------------

    def search(self, query_features: Features, targets: Targets = None, k: int = 10, beams: int = 10,
               mode: SearchMode = "generative", query_fused: np.ndarray | None = None,
               cand_fused: np.ndarray | None = None, rerank_max_candidates: int | None = None,
               batch_size: int = 64) -> list[Ranking]:
        """Rank the indexed candidates for each query.

        query_features: Features [q] (instruction-prefixed queries). targets: allowed target modalities per query
        (see ``Targets``); they fix / filter the first code. query_fused: float32 [q, d'] score-fusion vectors,
        default ``query_features.fused()``. cand_fused: float32 [N, d'] of the indexed rows; required by
        ``generative-rerank``, used for within-bucket order otherwise. A tie group that straddles k is returned
        whole, so a ranking can be longer than k.
        """
        if mode not in SEARCH_MODES:
            raise InvalidInputError(f"unknown generative search mode {mode!r}: use one of {SEARCH_MODES}")
        if k < 1 or beams < 1:
            raise InvalidInputError(f"k and beams must be >= 1, got k={k}, beams={beams}")
        if mode != "quantize" and self.generator is None:
            raise InvalidInputError(f"mode {mode!r} needs a trained generator: call fit_generator() first")
        n_queries = len(query_features)
        first = allowed_modalities(targets, n_queries)
        if cand_fused is not None:
            if not hasattr(cand_fused, "shape") or not hasattr(cand_fused, "__getitem__"):
                cand_fused = np.asarray(cand_fused, dtype=np.float32)  # else: an array, or a lazy [N, d] view
            if cand_fused.shape[0] != len(self):
                raise InvalidInputError(f"cand_fused has {cand_fused.shape[0]} rows, the index {len(self)}")
            query_fused = query_features.fused() if query_fused is None else np.asarray(query_fused, np.float32)
            if query_fused.shape != (n_queries, cand_fused.shape[1]):
                raise InvalidInputError(f"query_fused must be float32 [{n_queries}, {cand_fused.shape[1]}]")
        elif mode == "generative-rerank":
            raise InvalidInputError("generative-rerank needs cand_fused (the candidates' score-fusion vectors)")
        if len(self) == 0:
            return [Ranking.empty() for _ in range(n_queries)]

        z = self.quantizer.embed(query_features)
        rankings: list[Ranking] = []
        for start in range(0, n_queries, batch_size):
            part = slice(start, start + batch_size)
            first_part = None if first is None else first[part]
            if mode == "quantize":
                found = residual_beam_search(self.quantizer.net.rq, z[part], self._trie, beams, first_part)
            else:
                found = constrained_beam_search(self.generator, z[part], self._trie, beams, first_part)
            for i in range(found.scores.shape[0]):
                qf = None if cand_fused is None else query_fused[start + i]
                allowed = None if first_part is None else first_part[i]
                rankings.append(self._rank(mode, found, i, k, qf, cand_fused, rerank_max_candidates, allowed))
        return rankings

    def _rank(self, mode: str, found: BeamSearchResult, i: int, k: int, qf: np.ndarray | None,
              cand_fused: np.ndarray | None, cap: int | None, allowed: np.ndarray | None) -> Ranking:
        valid = found.leaves[i] >= 0
        leaves, beam_scores = found.leaves[i][valid], found.scores[i][valid]
        if mode == "quantize":
            return self._rank_by_prefix(found.ids[i][valid][:1], k, qf, cand_fused, allowed)
        trie = self._trie
        starts, ends = trie.bucket_offsets[leaves], trie.bucket_offsets[leaves + 1]
        if mode == "generative-rerank":
            rows = trie.bucket_items[_concat_ranges(starts, ends)][:cap].astype(np.int64)
            return _cut(Ranking.from_scores(rows, _cosines(cand_fused, rows, qf)), k)
        # plain GENIUS: only the buckets up to the one that reaches k are needed
        n_buckets = int(np.searchsorted(np.cumsum(ends - starts), k)) + 1
        starts, ends, beam_scores = starts[:n_buckets], ends[:n_buckets], beam_scores[:n_buckets]
        rows = trie.bucket_items[_concat_ranges(starts, ends)].astype(np.int64)  # int32 in the trie
        beam = np.repeat(np.arange(len(starts)), ends - starts)
        if cand_fused is None:
            return Ranking(rows, beam_scores[beam].astype(np.float32), beam.astype(np.int64))
        order = np.lexsort((-(_cosines(cand_fused, rows, qf)), beam))
        rows, beam = rows[order][:k], beam[order][:k]
        return Ranking(rows, beam_scores[beam].astype(np.float32), np.arange(len(rows), dtype=np.int64))

    def _rank_by_prefix(self, best: np.ndarray, k: int, qf: np.ndarray | None, cand_fused: np.ndarray | None,
                        allowed: np.ndarray | None) -> Ranking:
        """Items by shared-prefix length with the query's ID ``best`` ([1, L+1], or empty: nothing reachable)."""
        if len(best) == 0:
            return Ranking.empty()
        trie = self._trie
        item_ranges = trie.bucket_offsets[trie.prefix_ranges(best[0])]  # [L+2, 2] item-position ranges
        rows_out, scores_out, groups_out, inner = [], [], [], None
        for length in range(trie.depth, -1, -1):  # nested ranges, innermost (the query's own bucket) first
            lo, hi = item_ranges[length]
            if hi <= lo:
                continue
            positions = np.arange(lo, hi) if inner is None else \
                np.concatenate([np.arange(lo, inner[0]), np.arange(inner[1], hi)])
            inner = (lo, hi)
            rows = trie.bucket_items[positions].astype(np.int64)
            if allowed is not None:
                rows = rows[allowed[self._codes[rows, 0]]]
            if qf is None:
                scores = np.full(len(rows), float(length), np.float32)
            else:
                scores = (length + 0.999 * (1.0 + _cosines(cand_fused, rows, qf)) / 2.0).astype(np.float32)
            rows_out.append(rows)
            scores_out.append(scores)
            groups_out.append(len(rows))
            if sum(groups_out) >= k:
                break
        if not rows_out:
            return Ranking.empty()
        rows, scores = np.concatenate(rows_out), np.concatenate(scores_out)
        if qf is None:  # each prefix length is one tie group
            groups = np.repeat(np.arange(len(groups_out)), groups_out).astype(np.int64)
            return Ranking(rows.astype(np.int64), scores, groups)
        return _cut(Ranking.from_scores(rows, scores), k)

    # -- persistence ----------------------------------------------------------------------------------------------

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None, *, with_codes: bool = True) -> None:
        """Write the quantizer, the generator (if any), ``codes.npy`` and ``manifest.json`` (format version,
        configs, digests of weights and codes, collision stats, ``extra``: e.g. the encoder name and a pool hash).
        The trie is not stored: it is rebuilt from the codes on load, so it cannot go stale. ``with_codes=False``
        writes the model only (an index keeps the codes with its segments)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if extra is not None:
            self.extra = dict(extra)
        self.quantizer.save(directory)
        if self.generator is not None:
            self.generator.save(directory)
        if with_codes:
            write_npy(directory / CODES_FILE, self._codes)
        manifest = {
            "format_version": FORMAT_VERSION,
            "quantizer": {"spec": self.quantizer.spec, "config": self.quantizer.config.to_dict(),
                          "digest": self.quantizer.digest()},
            "generator": None if self.generator is None else {"config": self.generator.config.to_dict(),
                                                              "digest": self.generator.digest()},
            "codes": {"rows": len(self), "digest": array_digest(self._codes.astype(np.int64))} if with_codes else None,
            "train_configs": self.train_configs,
            "stats": self.stats.to_dict(),
            "extra": self.extra,
            "health": self.health,
            "learned_rows": self.learned_rows,
        }
        # The manifest goes last: a save cut short leaves digests that no longer match, so load fails.
        write_json(directory / MANIFEST, manifest)

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu", *,
             with_codes: bool = True) -> "GenerativeRetriever":
        """Load what ``save`` wrote; any mismatch with the manifest raises ``IndexFormatError``. With
        ``with_codes=False`` the retriever starts with no codes (the caller supplies them: ``index_codes``)."""
        directory = Path(directory)
        manifest = read_versioned_json(directory / MANIFEST, FORMAT_VERSION)
        quantizer = SemanticQuantizer.load(directory, device)
        if quantizer.digest() != manifest["quantizer"]["digest"]:
            raise IndexFormatError(f"{directory}: quantizer weights differ from the manifest (stale index)")
        generator = None
        if manifest["generator"] is not None:
            generator = IDGenerator.load(directory, device)
            if generator.digest() != manifest["generator"]["digest"]:
                raise IndexFormatError(f"{directory}: generator weights differ from the manifest")
        retriever = cls(quantizer, generator)
        if with_codes:
            try:
                codes = np.load(directory / CODES_FILE, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise IndexFormatError(f"cannot read {directory / CODES_FILE}: {exc}") from None
            if not manifest.get("codes") or \
                    array_digest(codes.astype(np.int64, copy=False)) != manifest["codes"]["digest"]:
                raise IndexFormatError(f"{directory / CODES_FILE} differs from the manifest (stale or corrupt)")
            retriever._set_codes(codes)
        retriever.train_configs = manifest.get("train_configs", {})
        retriever.extra = manifest.get("extra", {})
        retriever.health = manifest.get("health", {})
        # older indexes: the generator was trained on the pool as it was then, unknown; treat all rows as known
        retriever.learned_rows = int(manifest.get("learned_rows", len(retriever)))
        return retriever


class Embedded:
    """Combiner outputs of the rows of one or more feature sources, one after the other, computed when a batch asks
    for them: a lazy float32 [n, d] array (``shape``, ``[rows]``) for ``train_generator``."""

    def __init__(self, quantizer: SemanticQuantizer, parts: Sequence[FeatureRows]):
        self.quantizer, self.parts = quantizer, list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape = (int(self.starts[-1]), quantizer.config.dim)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.arange(self.shape[0])[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.shape[1]), np.float32)
        part_of = np.searchsorted(self.starts, rows, side="right") - 1
        for p in np.unique(part_of):
            sel = part_of == p
            src, local = self.parts[p], rows[sel] - self.starts[p]
            out[sel] = src.embed(self.quantizer, local) if isinstance(src, Shifted) else \
                self.quantizer.embed(gather(src, local))
        return out


class Shifted:
    """Gap-shifted pool inputs (``augment.py``) computed per batch: row i is normalize(z(items[i]) + the offset
    ``deltas[choice[i]]``), so only the small offset table is held, never an [m, d] array."""

    def __init__(self, items: FeatureRows, choice: np.ndarray, deltas: np.ndarray):
        self.items, self.choice, self.deltas = items, np.asarray(choice, np.int64), np.asarray(deltas, np.float32)

    def __len__(self) -> int:
        return len(self.items)

    def embed(self, quantizer: SemanticQuantizer, rows: np.ndarray) -> np.ndarray:
        return shift(quantizer.embed(gather(self.items, rows)), self.deltas[self.choice[rows]])


def streamed_group_offsets(quantizer: SemanticQuantizer, queries: FeatureRows, positives: FeatureRows,
                           query_targets: np.ndarray,
                           chunk: int = 8192) -> dict[tuple[int, int], tuple[np.ndarray, int]]:
    """``augment.group_offsets`` over the training pairs, a chunk at a time (weighted means of the chunks' means)."""
    sums: dict[tuple[int, int], np.ndarray] = {}
    counts: dict[tuple[int, int], int] = {}
    for start in range(0, len(queries), chunk):
        part = slice(start, start + chunk)
        fq = queries[part]
        means = group_offsets(quantizer.embed(fq), quantizer.embed(positives[part]), modality_of(fq),
                              np.asarray(query_targets)[part])
        for key, (mean, n) in means.items():
            sums[key] = sums.get(key, 0.0) + mean.astype(np.float64) * n
            counts[key] = counts.get(key, 0) + n
    return {key: ((sums[key] / counts[key]).astype(np.float32), counts[key]) for key in sums}


def allowed_modalities(targets: Targets, n_queries: int) -> np.ndarray | None:
    """Normalise ``targets`` to bool [q, 3] (row i: the c0 values query i may receive), or None for no filter.

    Accepts None; a bool array [q, 3]; an int array [q] (-1: any); or a sequence with, per query, None (any), a
    code, a modality name (``"image"``, ``"image|text"``, a ``Modality``) or an iterable of codes / names.
    """
    if targets is None:
        return None
    if isinstance(targets, np.ndarray) and targets.dtype == bool:
        if targets.shape != (n_queries, NUM_MODALITIES):
            raise InvalidInputError(f"a target mask must be bool [{n_queries}, {NUM_MODALITIES}]")
        return targets
    if isinstance(targets, np.ndarray) and np.issubdtype(targets.dtype, np.integer):
        if targets.shape != (n_queries,) or (targets.size and (targets.min() < -1 or targets.max() >= NUM_MODALITIES)):
            raise InvalidInputError(f"target codes must be int [{n_queries}] in -1..{NUM_MODALITIES - 1}")
        return (np.arange(NUM_MODALITIES) == targets[:, None]) | (targets[:, None] == -1)
    if len(targets) != n_queries:
        raise InvalidInputError(f"got {len(targets)} targets for {n_queries} queries")
    mask = np.zeros((n_queries, NUM_MODALITIES), bool)
    for i, allowed in enumerate(targets):
        if allowed is None or isinstance(allowed, (str, Modality, int, np.integer)):
            allowed = [allowed]
        for value in allowed:
            if value is None or (isinstance(value, (int, np.integer)) and value == -1):
                mask[i] = True
            elif isinstance(value, (int, np.integer)):
                if not 0 <= value < NUM_MODALITIES:
                    raise InvalidInputError(f"target modality code {value} is not in 0..{NUM_MODALITIES - 1}")
                mask[i, value] = True
            else:
                for modality in parse_modalities(value) or tuple(Modality):
                    mask[i, modality.code] = True
    return mask


def _concat_ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, e) over the pairs: int64 [sum(e - s)]."""
    lengths = ends - starts
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(int(lengths.sum()), dtype=np.int64) + offsets


def _cosines(cand_fused: np.ndarray, rows: np.ndarray, qf: np.ndarray) -> np.ndarray:
    """cand_fused[rows] @ qf, computed by torch: a NumPy (OpenBLAS) product here leaves its own thread pool spinning
    against torch's on the next beam search, which made generative-rerank about 2x slower on 2 cores."""
    query = torch.from_numpy(np.ascontiguousarray(qf, cand_fused.dtype))
    return torch.from_numpy(cand_fused[rows]).matmul(query).numpy()


def _cut(ranking: Ranking, k: int) -> Ranking:
    """The top k, extended to the end of the tie group that straddles position k."""
    if len(ranking) <= k:
        return ranking
    end = int(np.searchsorted(ranking.tie_groups, ranking.tie_groups[k - 1], side="right"))
    return ranking.top(end)
