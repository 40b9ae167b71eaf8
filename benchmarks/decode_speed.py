"""Constrained beam search throughput: unimir's batched decoder vs transformers ``generate`` with a per-beam
``prefix_allowed_tokens_fn`` (GENIUS's reference approach), on the same model, pool and queries.

    python -m benchmarks.decode_speed [--quick] [--threads N]

The model is the CPU-default generator (2 layers, d_model 128, P = 6; L = 3 levels of K = 64 codes) with random
weights and code embeddings initialised from random codebooks: decoding cost does not depend on training. The
pool holds random IDs. Each row also checks that both decoders return the same IDs in the same order.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from unimir.generator import (
    GeneratorConfig,
    IDGenerator,
    SemanticIDTrie,
    constrained_beam_search,
    reference_beam_search,
)


def _model(config: GeneratorConfig, seed: int = 0) -> IDGenerator:
    gen = torch.Generator().manual_seed(seed)
    model = IDGenerator(config, seed=seed)
    books = [torch.randn(3, config.dim, generator=gen)]
    books += [torch.randn(config.codebook_size, config.dim, generator=gen) for _ in range(config.levels)]
    model.init_code_embeddings(books, seed=seed)
    return model.eval()


def _timed(fn, repeats: int):
    """(best of ``repeats`` timed calls after one warm-up call, the warm-up's result). Best-of is the most stable
    figure on a shared machine."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def run(quick: bool = False, threads: int | None = None) -> list[dict]:
    """One row per beam width: queries/s of both decoders on the same batch of queries, and the speed-up."""
    if threads:
        torch.set_num_threads(threads)
    config = GeneratorConfig()
    model = _model(config)
    n_ids, n_queries, repeats = (2000, 16, 1) if quick else (5000, 64, 4)
    rng = np.random.default_rng(0)
    codes = np.concatenate([rng.integers(0, 3, (n_ids, 1)),
                            rng.integers(0, config.codebook_size, (n_ids, config.levels))], axis=1)
    trie = SemanticIDTrie(codes, (3,) + (config.codebook_size,) * config.levels)
    z = torch.nn.functional.normalize(torch.randn(n_queries, config.dim, generator=torch.Generator().manual_seed(1)),
                                      dim=-1)
    rows = []
    for beams in (10, 50, 100):
        fast_s, fast = _timed(lambda: constrained_beam_search(model, z, trie, beams), repeats)
        ref_s, ref = _timed(lambda: reference_beam_search(model, z, trie, beams), max(1, repeats // 2))
        rows.append({"beams": beams, "pool_ids": trie.num_ids, "batch": n_queries, "fast_qps": n_queries / fast_s,
                     "reference_qps": n_queries / ref_s, "speedup": ref_s / fast_s,
                     "same_ids": bool(np.array_equal(fast.ids, ref.ids)), "threads": torch.get_num_threads(),
                     "device": "cpu", "repeats": repeats, "reference_repeats": max(1, repeats // 2)})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'beams':>5} {'pool IDs':>8} {'batch':>5} {'fast q/s':>9} {'reference q/s':>13} {'speed-up':>8} "
             f"{'same IDs':>8}", "-" * 62]
    lines += [f"{r['beams']:>5} {r['pool_ids']:>8} {r['batch']:>5} {r['fast_qps']:>9.1f} {r['reference_qps']:>13.1f} "
              f"{r['speedup']:>7.1f}x {str(r['same_ids']):>8}" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    rows = run(args.quick, args.threads)
    print(f"constrained beam search, CPU-default generator, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, float32")
    print(format_rows(rows))


if __name__ == "__main__":
    main()
