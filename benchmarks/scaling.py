"""Latency and throughput against pool size, every retrieval mode on the same synthetic pools and queries.

Each mode is timed through the call ``Index.search_features`` makes for it: ``FaissStore.search`` (flat or HNSW
FAISS partition, tie-aware top-k) or ``GenerativeRetriever.search`` (combiner, trie-constrained beam search or
residual beam search, bucket ranking) with the candidates' fused vectors. Query encoding is not included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import faiss
import numpy as np
import torch

from unimir.generator import GenerativeRetriever, allowed_modalities, constrained_beam_search, residual_beam_search
from unimir.index.dense import FaissStore
from unimir.quantizer import QuantizerConfig
from unimir.ranking import Ranking

from .synthetic import DIM, IMAGE, ClusteredPool, ModelSpec, PoolSpec, pool_codes, text_features, train_models
from .timing import Stopwatch, summary, timeit

MODES = ("dense flat", "dense HNSW", "generative", "generative-rerank", "quantize")
HNSW_SPEC = "hnsw32,ef64"
EF_SWEEP = (10, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...]
    single_queries: int  # batch-1 calls per mode and size, one query each
    batch: int  # queries per batched call
    batch_calls: int  # timed batched calls per mode and size
    warmup: int  # untimed calls per mode before each measurement
    k: int = 10
    beams: int = 50
    hnsw: str = HNSW_SPEC


def settings(quick: bool) -> Settings:
    if quick:
        return Settings(sizes=(10_000, 100_000), single_queries=60, batch=64, batch_calls=4, warmup=3)
    return Settings(sizes=(10_000, 100_000, 1_000_000), single_queries=200, batch=64, batch_calls=8, warmup=5)


def model_spec(quick: bool) -> ModelSpec:
    return ModelSpec(train_items=10_000, quantizer_epochs=5, generator_epochs=5) if quick else \
        ModelSpec(train_items=20_000, quantizer_epochs=10, generator_epochs=10)


Searcher = Callable[[np.ndarray], list[Ranking]]


def _dense(items: np.ndarray, spec: str, k: int) -> tuple[Searcher, FaissStore, float]:
    index = FaissStore(DIM, spec)
    with Stopwatch() as sw:
        index.train(items)
        index.add_segment("pool", items, np.full(len(items), IMAGE, np.int8), 0)
    return (lambda q: index.search(q, k, [(IMAGE,)] * len(q))), index, sw.seconds


def _generative(retriever: GenerativeRetriever, items: np.ndarray, mode: str, s: Settings) -> Searcher:
    def search(q: np.ndarray) -> list[Ranking]:
        return retriever.search(text_features(q), np.full(len(q), IMAGE), k=s.k, beams=s.beams, mode=mode,
                                cand_fused=items)
    return search


def _recall(found: list[np.ndarray], exact: list[Ranking], k: int) -> float:
    """Mean share of the exact top-k among the first k rows found (recall@k against flat search)."""
    return float(np.mean([len(set(f[:k].tolist()) & set(e.indices[:k].tolist())) / k for f, e in zip(found, exact)]))


def _per_query(fn: Callable[[np.ndarray], object], queries: np.ndarray) -> tuple[np.ndarray, list]:
    """Seconds of fn(one query) for each query in turn, and what each call returned."""
    results: list = []
    seconds = np.concatenate([timeit(lambda: results.append(fn(queries[i:i + 1])), repeat=1, warmup=0)
                              for i in range(len(queries))])
    return seconds, results


def _measure(searchers: dict[str, Searcher], queries: np.ndarray, batch: np.ndarray,
             s: Settings) -> tuple[dict, list[Ranking]]:
    """Per mode, in its own block (torch and FAISS each run their own OpenMP thread pool, and one's spinning
    threads slow the other down, so modes are not interleaved): warm-up calls, batch-1 latency, batched
    throughput, and recall@k against flat search. Also returns the flat rankings (``searchers`` starts with flat)."""
    out: dict = {}
    exact: list[Ranking] = []
    for mode, search in searchers.items():
        timeit(lambda: search(queries[:1]), repeat=0, warmup=s.warmup)
        seconds, results = _per_query(search, queries)
        rankings = [r[0] for r in results]
        exact = exact or rankings
        batched = timeit(lambda: search(batch), repeat=s.batch_calls, warmup=1)
        out[mode] = {"single": summary(seconds), "batched": summary(batched, len(batch)),
                     "recall_vs_flat": _recall([r.indices for r in rankings], exact, s.k)}
    return out, exact


def _split(retriever: GenerativeRetriever, searchers: dict[str, Searcher], queries: np.ndarray,
           s: Settings) -> dict[str, dict[str, float]]:
    """Median ms per batch-1 query of each generative mode's whole search, of the combiner alone (query features
    -> z) and of combiner + beam search. Per mode in its own block, the three timed query by query in turn, so
    they see the same conditions; the rest of the whole search is ranking (bucket emission or the re-rank)."""
    first = allowed_modalities(np.full(1, IMAGE), 1)

    def embed(q: np.ndarray) -> np.ndarray:
        return retriever.quantizer.embed(text_features(q))

    def generator(q: np.ndarray):
        return constrained_beam_search(retriever.generator, embed(q), retriever.trie, s.beams, first)

    def residual(q: np.ndarray):
        return residual_beam_search(retriever.quantizer.net.rq, embed(q), retriever.trie, s.beams, first)

    out = {}
    for mode, beams in (("generative", generator), ("generative-rerank", generator), ("quantize", residual)):
        parts = (searchers[mode], embed, beams)
        for part in parts:
            timeit(lambda: part(queries[:1]), repeat=0, warmup=s.warmup)
        seconds = np.empty((len(parts), len(queries)))
        for i in range(len(queries)):
            for j, part in enumerate(parts):
                seconds[j, i] = timeit(lambda: part(queries[i:i + 1]), repeat=1, warmup=0)[0]
        total, combiner, with_beams = (summary(t)["p50_ms"] for t in seconds)
        out[mode] = {"total_ms": total, "combiner_ms": combiner, "beam_search_ms": with_beams - combiner}
    return out


def _hnsw_sweep(index: FaissStore, queries: np.ndarray, exact: list[Ranking], k: int) -> list[dict]:
    """Recall@k against flat search and batch-1 latency of the raw FAISS HNSW index (``index.search(q, k)``,
    without unimir's wrapper) at several efSearch values."""
    part = faiss.downcast_index(_part(index))
    default_ef = part.hnsw.efSearch
    rows = []
    for ef in EF_SWEEP:
        part.hnsw.efSearch = ef
        part.search(queries[:1], k)  # warm-up
        seconds, results = _per_query(lambda q: part.search(q, k)[1][0], queries)
        rows.append({"ef_search": ef, "recall_vs_flat": _recall(results, exact, k), **summary(seconds)})
    part.hnsw.efSearch = default_ef
    return rows


def _part(index: FaissStore) -> faiss.Index:
    """The one FAISS partition of an image-only pool."""
    return index.segments["pool"][0].index


def _hnsw_params(index: FaissStore) -> dict[str, int]:
    graph = faiss.downcast_index(_part(index)).hnsw
    return {"M": int(graph.nb_neighbors(1)), "ef_construction": int(graph.efConstruction),
            "ef_search": int(graph.efSearch)}


def _save(folder: Path, items: np.ndarray, queries: np.ndarray, dense: dict[str, FaissStore],
          retriever: GenerativeRetriever) -> None:
    """What the footprint section needs of the largest pool: vectors, FAISS files, quantizer + generator + codes."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "fused.npy", items)
    np.save(folder / "queries.npy", queries)
    for name, index in dense.items():
        faiss.write_index(_part(index), str(folder / f"{name}.faiss"))
    retriever.save(folder / "generative")


def _one_size(pool: ClusteredPool, retriever: GenerativeRetriever, size: int, s: Settings,
              keep: Path | None) -> dict:
    items = pool.items(size, seed=size)
    with Stopwatch() as coding:
        stats = retriever.index_codes(pool_codes(retriever, items))
    flat_search, flat, _ = _dense(items, "flat", s.k)
    hnsw_search, hnsw, hnsw_build_s = _dense(items, s.hnsw, s.k)
    searchers = {"dense flat": flat_search, "dense HNSW": hnsw_search}
    searchers |= {m: _generative(retriever, items, m, s) for m in MODES[2:]}
    queries, _ = pool.queries(items, s.single_queries, seed=size + 1)
    batch, _ = pool.queries(items, s.batch, seed=size + 2)
    modes, exact = _measure(searchers, queries, batch, s)
    row = {"size": size, "modes": modes, "split": _split(retriever, searchers, queries, s),
           "hnsw_sweep": _hnsw_sweep(hnsw, queries, exact, s.k), "hnsw_build_s": hnsw_build_s,
           "coding_s": coding.seconds, "distinct_ids": stats.n_distinct, "mean_bucket": stats.mean_bucket,
           "max_bucket": stats.max_bucket, "hnsw": _hnsw_params(hnsw)}
    if keep is not None:
        _save(keep, items, queries, {"flat": flat, "hnsw": hnsw}, retriever)
    return row


def run(quick: bool = False, keep: Path | None = None) -> dict:
    """Measure every size of ``settings(quick)``; the largest pool's files go to ``keep`` when given."""
    s, spec = settings(quick), model_spec(quick)
    pool = ClusteredPool(PoolSpec())
    with Stopwatch() as training:
        retriever = train_models(pool, spec)
    sizes = [_one_size(pool, retriever, size, s, keep if size == max(s.sizes) else None) for size in s.sizes]
    return {"settings": asdict(s), "model": {**asdict(spec), "quantizer": spec.quantizer_config.spec,
                                             "default_codebook_size": QuantizerConfig().codebook_size,
                                             "generator": spec.generator_config.to_dict()},
            "pool": pool.spec.describe(), "train_s": training.seconds, "sizes": sizes, "modes": list(MODES),
            "ef_sweep": list(EF_SWEEP), "hnsw": sizes[-1]["hnsw"], "torch_threads": torch.get_num_threads(),
            "faiss_threads": faiss.omp_get_max_threads()}
