"""Per-query latency of generative retrieval against pool size, next to exact dense search (FAISS flat, inner
product) over pools of the same sizes.

    python -m benchmarks.generative_latency [--quick] [--threads N] [--beams B]

Generative: one query at a time, end to end through ``GenerativeRetriever.search`` (combiner, trie-constrained
beam search, bucket emission; mode ``generative``, k = 10). The CPU-default generator (2 layers, d_model 128) and
combiner (H = 256) run with random weights over random IDs of L = 3 levels x K = 256 codes, so that a million items
get nearly distinct IDs; latency does not depend on training. Dense: ``IndexFlatIP.search`` of one 384-d query,
k = 10, over random unit vectors. Times are wall-clock per query after a warm-up; p50 / p95 over the queries.
All pools stay loaded (about 1.7 GB of vectors in the full run).
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
import torch

from unimir.encoders.base import Features, l2_normalize
from unimir.generator import GenerativeRetriever, GeneratorConfig, IDGenerator
from unimir.quantizer import QuantizerConfig, SemanticQuantizer

DIM, LEVELS, K = 384, 3, 256


def _models() -> tuple[SemanticQuantizer, IDGenerator]:
    quantizer = SemanticQuantizer(QuantizerConfig(dim=DIM, levels=LEVELS, codebook_size=K))
    quantizer.net.rq.initialized.fill_(True)  # random codebooks stand in for trained ones
    return quantizer, IDGenerator(GeneratorConfig(dim=DIM, levels=LEVELS, codebook_size=K)).eval()


def _queries(n: int, rng: np.random.Generator) -> Features:
    return Features(np.zeros((n, DIM), np.float32), l2_normalize(rng.standard_normal((n, DIM), dtype=np.float32)),
                    np.zeros(n, bool), np.ones(n, bool))


def _dense_index(size: int, rng: np.random.Generator) -> faiss.IndexFlatIP:
    index = faiss.IndexFlatIP(DIM)
    for start in range(0, size, 100_000):  # bounded temporaries while filling the pool
        index.add(l2_normalize(rng.standard_normal((min(100_000, size - start), DIM), dtype=np.float32)))
    return index


def _ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def run(quick: bool = False, threads: int | None = None, beams: int = 50) -> list[dict]:
    """One row per pool size with generative and dense latency (ms per query) and the generative latency relative
    to the smallest pool. Queries visit the pool sizes in turn, so load on a shared machine hits all sizes alike."""
    if threads:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
    sizes, n_queries, warmup = ((10_000, 100_000), 20, 2) if quick else ((10_000, 100_000, 1_000_000), 60, 3)
    rng = np.random.default_rng(0)
    quantizer, generator = _models()
    retrievers, indexes = {}, {}
    for size in sizes:
        retrievers[size] = GenerativeRetriever(quantizer, generator)
        retrievers[size].index_codes(np.concatenate([rng.integers(0, 3, (size, 1)),
                                                     rng.integers(0, K, (size, LEVELS))], axis=1))
        indexes[size] = _dense_index(size, rng)
    queries = _queries(n_queries + warmup, rng)
    targets = rng.integers(0, 3, n_queries + warmup)
    query_fused = queries.fused()
    times = {size: ([], []) for size in sizes}
    for i in range(n_queries + warmup):
        for size in sizes:
            generative = _ms(lambda: retrievers[size].search(queries[i:i + 1], targets[i:i + 1], k=10, beams=beams))
            dense = _ms(lambda: indexes[size].search(query_fused[i:i + 1], 10))
            if i >= warmup:
                times[size][0].append(generative)
                times[size][1].append(dense)
    rows = []
    for size in sizes:
        generative, dense = (np.asarray(t) for t in times[size])
        rows.append({"pool": size, "distinct_ids": retrievers[size].stats.n_distinct, "beams": beams,
                     "queries": n_queries, "generative_p50_ms": float(np.median(generative)),
                     "generative_p95_ms": float(np.percentile(generative, 95)),
                     "dense_p50_ms": float(np.median(dense)), "dense_p95_ms": float(np.percentile(dense, 95)),
                     "threads": torch.get_num_threads(), "device": "cpu"})
    for row in rows:
        row["generative_vs_smallest"] = row["generative_p50_ms"] / rows[0]["generative_p50_ms"]
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'pool':>9} {'distinct IDs':>12} {'gen p50':>8} {'gen p95':>8} {'dense p50':>9} {'dense p95':>9} "
             f"{'gen/smallest':>12}", "-" * 74]
    lines += [f"{r['pool']:>9} {r['distinct_ids']:>12} {r['generative_p50_ms']:>8.2f} {r['generative_p95_ms']:>8.2f} "
              f"{r['dense_p50_ms']:>9.2f} {r['dense_p95_ms']:>9.2f} {r['generative_vs_smallest']:>11.2f}x"
              for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--beams", type=int, default=50)
    args = p.parse_args()
    rows = run(args.quick, args.threads, args.beams)
    print(f"per-query latency (ms), batch 1, k = 10, {rows[0]['beams']} beams, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, float32")
    print(format_rows(rows))


if __name__ == "__main__":
    main()
