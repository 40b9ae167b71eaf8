"""Per-query latency of plain generative retrieval against pool size, measured so that pool size is the only
difference: the same queries, interleaved rounds, and work counted as well as timed.

    python -m benchmarks.generative_latency [--quick] [--threads N] [--beams B] [--rounds R] [--callgrind]
                                            [--out docs/bench/generative-speed.md]

Generative: one query at a time, end to end through ``GenerativeRetriever.search`` (combiner, trie-constrained
beam search, bucket emission; mode ``generative``, k = 10, the query's target modality fixing c0). The CPU-default
generator (2 layers, d_model 128) and combiner run with random weights over random IDs of L = 3 levels x K = 256
codes (a million items get nearly distinct IDs); latency does not depend on training.

Each round searches one query on every pool, in an order that alternates between rounds (small to large, then
large to small), so that load changes on a shared machine hit all sizes alike; the ratio to the smallest pool is
given both from the medians and as the median of the per-round ratios. Dense search (FAISS flat, inner product, one
384-d query) is timed afterwards in its own block: torch's and FAISS's OpenMP pools slow each other down when
interleaved. Work counts per query: decoder rows per step and trie-mask layout (instrumented), torch kernel calls
(profiler) and, with ``--callgrind``, instructions executed (valgrind; a few queries per pool in a subprocess).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from unimir.encoders.base import Features, l2_normalize
from unimir.generator import GenerativeRetriever, GeneratorConfig, IDGenerator
from unimir.quantizer import QuantizerConfig, SemanticQuantizer

from . import decoder_work, machine

DIM, LEVELS, K = 384, 3, 256
SIZES, QUICK_SIZES = (10_000, 100_000, 1_000_000), (10_000, 1_000_000)


def _models(dim: int = DIM) -> tuple[SemanticQuantizer, IDGenerator]:
    quantizer = SemanticQuantizer(QuantizerConfig(dim=dim, levels=LEVELS, codebook_size=K))
    quantizer.net.rq.initialized.fill_(True)  # random codebooks stand in for trained ones
    return quantizer, IDGenerator(GeneratorConfig(dim=dim, levels=LEVELS, codebook_size=K)).eval()


def _queries(n: int, rng: np.random.Generator) -> Features:
    return Features(np.zeros((n, DIM), np.float32), l2_normalize(rng.standard_normal((n, DIM), dtype=np.float32)),
                    np.zeros(n, bool), np.ones(n, bool))


def _pool_codes(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng((seed, size))
    return np.concatenate([rng.integers(0, 3, (size, 1)), rng.integers(0, K, (size, LEVELS))], axis=1)


def _retrievers(sizes) -> dict[int, GenerativeRetriever]:
    quantizer, generator = _models()
    out = {}
    for size in sizes:
        out[size] = GenerativeRetriever(quantizer, generator)
        out[size].index_codes(_pool_codes(size, 0))
    return out


def _dense_ms(size: int, queries: np.ndarray, rng: np.random.Generator) -> float:
    import faiss

    index = faiss.IndexFlatIP(DIM)
    for start in range(0, size, 100_000):  # bounded temporaries while filling the pool
        index.add(l2_normalize(rng.standard_normal((min(100_000, size - start), DIM), dtype=np.float32)))
    index.search(queries[:1], 10)
    times = []
    for i in range(len(queries)):
        start = time.perf_counter()
        index.search(queries[i:i + 1], 10)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def run(quick: bool = False, threads: int | None = None, beams: int = 50, rounds: int | None = None,
        callgrind: bool = False, dense: bool = True) -> dict:
    """Interleaved latency rounds, work counts and dense latency per pool size (torch's thread count is restored
    afterwards, so the suite can call this between other sections)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(quick, beams, rounds, callgrind, dense)
    finally:
        torch.set_num_threads(previous)


def _run(quick: bool, beams: int, rounds: int | None, callgrind: bool, dense: bool) -> dict:
    sizes = QUICK_SIZES if quick else SIZES
    rounds = rounds or (60 if quick else 300)
    warmup = 3
    rng = np.random.default_rng(0)
    load_start = machine.load_average()
    retrievers = _retrievers(sizes)
    queries = _queries(rounds + warmup, rng)
    targets = rng.integers(0, 3, rounds + warmup)

    def search(size: int, i: int):
        return retrievers[size].search(queries[i:i + 1], targets[i:i + 1], k=10, beams=beams)

    times = {size: [] for size in sizes}
    for i in range(rounds + warmup):
        for size in (sizes if i % 2 == 0 else sizes[::-1]):
            start = time.perf_counter()
            search(size, i)
            if i >= warmup:
                times[size].append(time.perf_counter() - start)
    load_end = machine.load_average()
    small = np.asarray(times[sizes[0]])
    rows = []
    for size in sizes:
        t = np.asarray(times[size])
        trie = retrievers[size].trie
        counted = min(20, rounds + warmup)
        with decoder_work.count_work(trie) as work:
            for i in range(counted):
                search(size, i)
        per_query = [m for m in work.masks]
        rows.append({
            "pool": size, "distinct_ids": int(trie.num_ids), "beams": beams, "rounds": rounds,
            "p50_ms": 1e3 * float(np.median(t)), "p95_ms": 1e3 * float(np.percentile(t, 95)),
            "vs_smallest": float(np.median(t) / np.median(small)),
            "paired_vs_smallest": float(np.median(t / small)),
            "paired_iqr": [float(np.percentile(t / small, 25)), float(np.percentile(t / small, 75))],
            "rows_per_step": np.reshape(work.rows_per_step, (counted, -1)).mean(0).tolist(),
            "mask_layouts": sorted({(lv, "bitmap" if bitmap else "CSR") for lv, _, bitmap in per_query}),
            "bitmap_bytes": int(sum(b.nbytes for b in getattr(trie, "bitmaps", []) if b is not None)),
            "aten_calls": decoder_work.aten_calls(lambda: search(size, 0), counted),
        })
    if callgrind and decoder_work.callgrind_available():  # smallest and largest pool only: minutes each
        n = 4
        for row in (rows[0], rows[-1]):
            row["instructions"] = decoder_work.callgrind_instructions(
                "benchmarks.generative_latency", ["--callgrind-child", str(row["pool"]), str(n), str(beams)]) / n
            row["instructions_vs_smallest"] = row["instructions"] / rows[0]["instructions"]
    dense_rng = np.random.default_rng(1)
    fused = queries.fused()[:min(rounds, 100)]
    for row in rows if dense else []:
        row["dense_p50_ms"] = _dense_ms(row["pool"], fused, dense_rng)
    return {"rows": rows, "threads": torch.get_num_threads(), "load_start": load_start, "load_end": load_end,
            "machine": machine.describe(), "beams": beams}


def _callgrind_child(size: int, n: int, beams: int) -> None:
    """Run under valgrind by ``callgrind_instructions``: n counted searches after 3 uncounted ones."""
    torch.set_num_threads(1)
    retriever = _retrievers((size,))[size]
    rng = np.random.default_rng(0)
    queries, targets = _queries(n + 3, rng), rng.integers(0, 3, n + 3)
    for i in range(3):
        retriever.search(queries[i:i + 1], targets[i:i + 1], k=10, beams=beams)
    with decoder_work.counted_region():
        for i in range(3, n + 3):
            retriever.search(queries[i:i + 1], targets[i:i + 1], k=10, beams=beams)


def format_rows(result: dict) -> str:
    lines = [f"{'pool':>9} {'IDs':>9} {'p50 ms':>7} {'p95 ms':>7} {'/small':>7} {'paired':>7} {'rows/step':>16} "
             f"{'aten':>6} {'instr/query':>12} {'dense ms':>8}", "-" * 100]
    for r in result["rows"]:
        instr = f"{r['instructions']:>12,.0f}" if "instructions" in r else f"{'-':>12}"
        lines.append(f"{r['pool']:>9} {r['distinct_ids']:>9} {r['p50_ms']:>7.2f} {r['p95_ms']:>7.2f} "
                     f"{r['vs_smallest']:>6.3f}x {r['paired_vs_smallest']:>6.3f}x "
                     f"{str([round(x, 1) for x in r['rows_per_step']]):>16} {r['aten_calls']:>6.0f} {instr} "
                     f"{r.get('dense_p50_ms', float('nan')):>8.2f}")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--callgrind-child":
        _callgrind_child(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--beams", type=int, default=50)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--callgrind", action="store_true", help="also count instructions under valgrind (slow)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args()
    result = run(args.quick, args.threads, args.beams, args.rounds, args.callgrind)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    print(f"per-query latency (ms), batch 1, k = 10, {result['beams']} beams, torch {torch.__version__}, "
          f"{result['threads']} threads, float32, load {result['load_start']} -> {result['load_end']}")
    print(format_rows(result))


if __name__ == "__main__":
    main()
