"""Constrained beam search throughput: unimir's batched decoder vs transformers ``generate`` with a per-beam
``prefix_allowed_tokens_fn`` (GENIUS's reference approach), on the same model, pool and queries.

    python -m benchmarks.decode_speed [--quick] [--threads N] [--rounds R]

The model is the CPU-default generator (2 layers, d_model 128, P = 6; L = 3 levels of K = 64 codes) with random
weights and code embeddings initialised from random codebooks: decoding cost does not depend on training. The
pool holds random IDs. Each row also checks that both decoders return the same IDs in the same order.

Both decoders run on the same batch in alternating calls (unimir, reference, unimir, ...) for ``rounds`` rounds,
so load changes on a shared machine hit both alike; queries/s are from the median call of each. Each row also
gives unimir's arithmetic per query (from the decoder rows it really computed, ``decoder_work.flops_per_query``)
and the GFLOP/s it achieved, beside torch's float32 matmul GFLOP/s on the decoder's shapes measured in the same
run: their ratio says how close the decoder comes to what the CPU can do.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from unimir.generator import (
    GeneratorConfig,
    IDGenerator,
    SemanticIDTrie,
    constrained_beam_search,
    reference_beam_search,
)

from . import decoder_work, machine


def _model(config: GeneratorConfig, seed: int = 0) -> IDGenerator:
    gen = torch.Generator().manual_seed(seed)
    model = IDGenerator(config, seed=seed)
    books = [torch.randn(3, config.dim, generator=gen)]
    books += [torch.randn(config.codebook_size, config.dim, generator=gen) for _ in range(config.levels)]
    model.init_code_embeddings(books, seed=seed)
    return model.eval()


def _interleaved(fns: dict, rounds: int) -> tuple[dict[str, np.ndarray], dict]:
    """Seconds of each call of every fn, called in turn ``rounds`` times after one untimed call each; and the
    untimed calls' results."""
    results = {name: fn() for name, fn in fns.items()}
    seconds = {name: np.empty(rounds) for name in fns}
    for i in range(rounds):
        for name, fn in (fns.items() if i % 2 == 0 else reversed(fns.items())):
            start = time.perf_counter()
            fn()
            seconds[name][i] = time.perf_counter() - start
    return seconds, results


def run(quick: bool = False, threads: int | None = None, rounds: int | None = None) -> list[dict]:
    """One row per beam width: queries/s of both decoders on the same batch of queries, and the speed-up (torch's
    thread count is restored afterwards)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(quick, rounds)
    finally:
        torch.set_num_threads(previous)


def _run(quick: bool, rounds: int | None) -> list[dict]:
    config = GeneratorConfig()
    model = _model(config)
    n_ids, n_queries = (2000, 16) if quick else (5000, 64)
    rounds = rounds or (2 if quick else 6)
    rng = np.random.default_rng(0)
    codes = np.concatenate([rng.integers(0, 3, (n_ids, 1)),
                            rng.integers(0, config.codebook_size, (n_ids, config.levels))], axis=1)
    trie = SemanticIDTrie(codes, (3,) + (config.codebook_size,) * config.levels)
    z = torch.nn.functional.normalize(torch.randn(n_queries, config.dim, generator=torch.Generator().manual_seed(1)),
                                      dim=-1)
    rows = []
    for beams in (10, 50, 100):
        with decoder_work.count_work() as work:
            constrained_beam_search(model, z, trie, beams)
        flops = decoder_work.flops_per_query(config, [r / n_queries for r in work.rows_per_step])
        seconds, results = _interleaved({"fast": lambda: constrained_beam_search(model, z, trie, beams),
                                         "reference": lambda: reference_beam_search(model, z, trie, beams)}, rounds)
        fast_s, ref_s = float(np.median(seconds["fast"])), float(np.median(seconds["reference"]))
        peak = decoder_work.matmul_gflops(config, n_queries * beams, seconds=0.5)
        achieved = flops["total"] * n_queries / fast_s / 1e9
        rows.append({"beams": beams, "pool_ids": trie.num_ids, "batch": n_queries, "fast_qps": n_queries / fast_s,
                     "reference_qps": n_queries / ref_s, "speedup": ref_s / fast_s,
                     "paired_speedup": float(np.median(seconds["reference"] / seconds["fast"])),
                     "same_ids": bool(np.array_equal(results["fast"].ids, results["reference"].ids)),
                     "threads": torch.get_num_threads(), "device": "cpu", "repeats": rounds,
                     "reference_repeats": rounds, "rows_per_step": work.rows_per_step,
                     "mflop_per_query": flops["total"] / 1e6, "achieved_gflops": achieved,
                     "matmul_gflops": peak, "share_of_matmul_peak": achieved / max(peak.values())})
    return rows


def paper_arithmetic(beams: int = 50) -> dict:
    """FLOPs per query of the paper's generator (6 layers, d 512, d_ff 2048, 8 heads, P 30, L 8, K 4096) when the
    pool fills every beam, next to the CPU default's, with the time they take at this machine's matmul GFLOP/s."""
    out = {}
    for name, config in (("default", GeneratorConfig()), ("paper", GeneratorConfig.paper())):
        rows = decoder_work.ideal_rows_per_step(config, beams)
        flops = decoder_work.flops_per_query(config, rows)
        peak = max(decoder_work.matmul_gflops(config, 64 * beams if name == "default" else 4 * beams, 0.5).values())
        out[name] = {"config": config.to_dict(), "rows_per_step": rows, "gflop_per_query": flops["total"] / 1e9,
                     "matmul_gflops": peak, "ideal_ms_per_query": flops["total"] / peak / 1e6}
    return out


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'beams':>5} {'pool IDs':>8} {'batch':>5} {'fast q/s':>9} {'reference q/s':>13} {'speed-up':>8} "
             f"{'paired':>7} {'same IDs':>8} {'MFLOP/q':>8} {'GFLOP/s':>8} {'matmul GFLOP/s':>14}", "-" * 105]
    lines += [f"{r['beams']:>5} {r['pool_ids']:>8} {r['batch']:>5} {r['fast_qps']:>9.1f} {r['reference_qps']:>13.1f} "
              f"{r['speedup']:>7.1f}x {r['paired_speedup']:>6.1f}x {str(r['same_ids']):>8} "
              f"{r['mflop_per_query']:>8.1f} {r['achieved_gflops']:>8.1f} {max(r['matmul_gflops'].values()):>14.1f}"
              for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the rows and the arithmetic here")
    args = p.parse_args()
    rows = run(args.quick, args.threads, args.rounds)
    if args.threads:  # the matmul rates beside the arithmetic, at the thread count the rows were measured with
        torch.set_num_threads(args.threads)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "arithmetic": paper_arithmetic(),
                                         "machine": machine.describe()}, indent=1, default=str))
    print(f"constrained beam search, CPU-default generator, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, float32")
    print(format_rows(rows))


if __name__ == "__main__":
    main()
