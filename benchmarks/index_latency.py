"""Per-query latency of the generative modes through the product's ``Index`` against pool size.

    python -m benchmarks.index_latency --work DIR [--sizes 10000,1000000] [--dim 384] [--rounds 200]
                                       [--threads 1] [--out docs/bench/index-latency.md]

``benchmarks.generative_latency`` times ``GenerativeRetriever.search`` alone. This script times what a user's
search runs: ``Index.search_features`` (the retriever registry, the deleted-row filter, the query's fused vector,
and the candidates' stored vectors read back from the FAISS store to order each bucket or re-rank the union of
the beams' buckets). Each pool is a real index built with ``Index.build(..., features=)`` over synthetic
M-BEIR-shaped parts (``benchmarks.scale.make_data``), dense store ``flat`` (fp16); the generative side is the
CPU-default generator and combiner with random weights over random IDs of L = 3 levels x K = 256 codes, as in
``generative_latency`` (latency does not depend on training; a million items get nearly distinct IDs).

Every round searches one query on every pool, in an order that alternates between rounds, so load changes on a
shared machine hit all sizes alike; the ratio to the smallest pool is given from the medians and as the median of
the per-round ratios. Queries are text-only, noisy views of a random pool item of the smallest pool, asking for
its modality. The pools' vectors are read once before timing (pages in the page cache, as on a serving machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import machine
from .generative_latency import LEVELS, K, _models, _pool_codes
from .scale import QUERY_NOISE, _unit, fused_rows, make_data

MODES = ("generative", "generative-rerank", "quantize", "dense")


def build(work: Path, size: int, dim: int) -> Path:
    """The flat index of a synthetic pool of ``size`` items (built once; reused when present)."""
    from unimir import Index
    from unimir.data.ingest import load_pool
    from unimir.data.problems import Problems
    from unimir.index.features import read_features

    data, out = work / f"data-{size}-{dim}", work / f"index-{size}-{dim}"
    if (out / "manifest.json").is_file():
        return out
    if not (data / "meta.json").is_file():
        make_data(data, size, dim)
    candidates, root = load_pool(data / "pool.jsonl", data, Problems())
    Index.build(candidates, out, root=root, encoder=f"synthetic-{dim}", index="flat",
                features=read_features(data / "feats"))
    return out


def run(work: Path, sizes: list[int], dim: int, rounds: int, threads: int, log=print) -> dict:
    from unimir import Index
    from unimir.data.records import Modality
    from unimir.encoders import Features
    from unimir.generator import GenerativeRetriever

    torch.set_num_threads(threads)
    work.mkdir(parents=True, exist_ok=True)
    indexes = {}
    for size in sizes:
        t0 = time.perf_counter()
        path = build(work, size, dim)
        index = Index.load(path, generative=False, encoder=None)
        quantizer, generator = _models(dim)
        retriever = GenerativeRetriever(quantizer, generator)
        retriever.index_codes(_pool_codes(size, 0))
        index.generative = retriever  # in memory only: the saved index is left as built
        np.asarray(index.fused[np.arange(0, size, max(1, size // 4096))])  # touch the store once
        indexes[size] = index
        log(f"pool {size:,}: ready in {time.perf_counter() - t0:.0f} s")
    smallest = sizes[0]
    data = work / f"data-{smallest}-{dim}"
    rng = np.random.default_rng(7)
    n = rounds + 3
    rows = rng.choice(smallest, n, replace=False)
    base = fused_rows(data, rows)
    q = _unit(base + QUERY_NOISE / np.sqrt(dim) * rng.standard_normal(base.shape, np.float32))
    feats = Features(np.zeros_like(q), q, np.zeros(n, bool), np.ones(n, bool))
    codes = np.load(data / "codes.npy")[rows]
    allowed = [[Modality.from_code(int(c))] for c in codes]
    load_start = machine.load_average()
    result = {"sizes": sizes, "dim": dim, "rounds": rounds, "threads": threads, "modes": {}}
    for mode in MODES:
        times = {size: [] for size in sizes}
        for i in range(n):
            for size in (sizes if i % 2 == 0 else sizes[::-1]):
                start = time.perf_counter()
                indexes[size].search_features(feats[[i]], allowed[i:i + 1], 10, mode=mode)
                if i >= 3:
                    times[size].append(time.perf_counter() - start)
        small = np.asarray(times[smallest])
        result["modes"][mode] = [{
            "pool": size, "p50_ms": 1e3 * float(np.median(t)), "p95_ms": 1e3 * float(np.percentile(t, 95)),
            "vs_smallest": float(np.median(t) / np.median(small)), "paired_vs_smallest": float(np.median(t / small)),
            "paired_iqr": [float(np.percentile(t / small, 25)), float(np.percentile(t / small, 75))],
        } for size, t in ((size, np.asarray(times[size])) for size in sizes)]
        log(f"{mode}: " + ", ".join(f"{r['pool']:,} {r['p50_ms']:.2f} ms ({r['vs_smallest']:.3f}x)"
                                    for r in result["modes"][mode]))
    result.update(load_start=load_start, load_end=machine.load_average(), machine=machine.describe())
    return result


def format_report(r: dict) -> str:
    m = r["machine"]
    sizes = ",".join(map(str, r["sizes"]))
    lines = ["# Generative latency through the product's Index, against pool size", "",
             f"Made by `python -m benchmarks.index_latency --sizes {sizes} --dim {r['dim']} --rounds {r['rounds']} "
             f"--threads {r['threads']}` on {m['cpu']} ({m['usable_cores']} cores), "
             f"torch {m['versions'].get('torch')}, "
             f"revision {m['revision']}, {m['date']}. 1-minute load average {r['load_start'][0]:.2f} at the start "
             f"of the timed rounds, {r['load_end'][0]:.2f} at the end.", "",
             "One query per call through `Index.search_features` (k = 10, 50 beams, the query's target modality "
             "given), on flat (fp16) indexes built with `Index.build(..., features=)` from synthetic "
             "M-BEIR-shaped parts; CPU-default generator and combiner with random weights over random IDs "
             f"({LEVELS} levels x {K} codes). Rounds interleave the pools (order alternating); *p50 / smallest* "
             "is the ratio of medians, *per-round ratio* the median of each round's ratio. Dense is the same "
             "index's exact flat search, for scale.", "",
             "| mode | pool | p50 ms | p95 ms | p50 / smallest | per-round ratio, median (IQR) |",
             "|---|---:|---:|---:|---:|---|"]
    for mode, rows in r["modes"].items():
        for row in rows:
            lo, hi = row["paired_iqr"]
            lines.append(f"| {mode} | {row['pool']:,} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | "
                         f"**{row['vs_smallest']:.3f}x** | {row['paired_vs_smallest']:.3f}x ({lo:.2f}–{hi:.2f}) |")
    gen = r["modes"]["generative"][-1]
    lines += ["", f"**Against the 1.15x target** (generative, {r['sizes'][-1]:,} against {r['sizes'][0]:,}): "
              f"{gen['vs_smallest']:.3f}x from the medians, {gen['paired_vs_smallest']:.3f}x per round."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the synthetic pools and indexes")
    parser.add_argument("--sizes", default="10000,1000000", help="pool sizes, smallest first (comma-separated)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: batch-1 latency)")
    parser.add_argument("--out", type=Path, help="write the report here (markdown) and its JSON beside it")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    result = run(args.work, sizes, args.dim, args.rounds, args.threads, log=lambda s: print(s, file=sys.stderr))
    if args.out:  # the measurements first: a report that fails to render loses nothing
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    text = format_report(result)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
