"""Counting the constrained decoder's work instead of timing it: rows per step, trie-mask layout, arithmetic per
query, the CPU's achievable GFLOP/s on the decoder's matmul shapes, torch kernel calls, and (with valgrind)
instructions executed. Counts do not depend on the load of a shared machine, so they show what a timing can only
suggest: whether the work of a search grows with the pool.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from unimir.generator import GeneratorConfig, SemanticIDTrie
from unimir.generator import decoding as decoding_module


@dataclass
class Work:
    """What one instrumented call did: decoder rows per step, and per trie-mask call (level, rows, bitmap?)."""

    rows_per_step: list[int] = field(default_factory=list)
    masks: list[tuple[int, int, bool]] = field(default_factory=list)


@contextlib.contextmanager
def count_work(trie: SemanticIDTrie | None = None) -> Iterator[Work]:
    """Record the rows each ``BeamDecoder.step`` feeds and, for ``trie``, each mask's level, rows and layout."""
    work = Work()
    step = decoding_module.BeamDecoder.step

    def counted_step(self, tokens, *args):
        work.rows_per_step.append(int(tokens.shape[0]))
        return step(self, tokens, *args)

    decoding_module.BeamDecoder.step = counted_step
    mask = None
    if trie is not None:
        mask = trie.allowed_mask
        bitmaps = getattr(trie, "bitmaps", None)  # absent in the decoder before bitmaps (a baseline run)

        def counted_mask(level, nodes):
            work.masks.append((level, int(nodes.shape[0]), bitmaps is not None and bitmaps[level] is not None))
            return mask(level, nodes)

        trie.allowed_mask = counted_mask
    try:
        yield work
    finally:
        decoding_module.BeamDecoder.step = step
        if trie is not None:
            del trie.allowed_mask


def flops_per_query(config: GeneratorConfig, rows_per_step: list[float]) -> dict[str, float]:
    """Multiply-adds x 2 of one query's search with ``rows_per_step[t]`` decoder rows at step t, as unimir's
    decoder computes it (folded cross-attention, logits over one level). Returns the total and its parts."""
    d, ff, h, p, lay = config.d_model, config.d_ff, config.num_heads, config.prefix_len, config.num_layers
    per_row = 2 * d * (4 * d + 2 * ff + 2 * h * p)  # self q, k, v, o; FFN in and out; folded cross scores + values
    attention = sum(rows * 2 * 2 * d * (t + 1) for t, rows in enumerate(rows_per_step))  # self-attention over t+1
    logits = sum(rows * 2 * d * (3 if t == 0 else config.codebook_size) for t, rows in enumerate(rows_per_step))
    fixed = 2 * config.dim * p * d + lay * (2 * p * d * 2 * d + 2 * 2 * h * p * d * (d // h))  # prefix, K/V, folds
    layers = lay * (per_row * sum(rows_per_step) + attention)
    return {"total": layers + logits + fixed, "layers": layers, "logits": logits, "per_query_fixed": fixed,
            "row_steps": float(sum(rows_per_step))}


def ideal_rows_per_step(config: GeneratorConfig, beams: int) -> list[int]:
    """Rows per step when the pool fills every beam: 1, then up to 3 (the modalities), then ``beams``."""
    rows, width = [], 1
    for level in range(config.levels + 1):
        rows.append(width)
        width = min(beams, width * (3 if level == 0 else config.codebook_size))
    return rows


def matmul_gflops(config: GeneratorConfig, rows: int, seconds: float = 1.0) -> dict[str, float]:
    """Achieved GFLOP/s of torch float32 matmuls of the decoder's shapes ([rows, d] x [d, d_ff], [rows, d_ff] x
    [d_ff, d], [rows, d] x [d, 2d]) on this machine now, best of 5 timings of about ``seconds`` / 5 each."""
    d, ff = config.d_model, config.d_ff
    out = {}
    for name, (k, n) in {"d x d_ff": (d, ff), "d_ff x d": (ff, d), "d x 2d": (d, 2 * d)}.items():
        a, b = torch.randn(rows, k), torch.randn(k, n)
        flop = 2.0 * rows * k * n
        a @ b
        start = time.perf_counter()
        a @ b
        reps = max(1, int(seconds / 5 / max(time.perf_counter() - start, 1e-6)))
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(reps):
                a @ b
            best = min(best, (time.perf_counter() - start) / reps)
        out[name] = flop / best / 1e9
    return out


def aten_calls(fn: Callable[[], object], calls: int) -> float:
    """torch (aten) operator calls per call of fn, counted by the profiler (nested calls included)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::")) / calls


# -- instructions under callgrind -------------------------------------------------------------------------------

_CONTROL_C = """#include <valgrind/callgrind.h>
void cg_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void cg_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; CALLGRIND_DUMP_STATS; }
"""


def callgrind_available() -> bool:
    return bool(shutil.which("valgrind") and shutil.which("gcc") and Path("/usr/include/valgrind/callgrind.h").exists())


def build_control(folder: Path) -> Path:
    """A tiny shared library whose two functions switch callgrind's counting on and off around the timed part."""
    source, lib = folder / "cgctl.c", folder / "libcgctl.so"
    source.write_text(_CONTROL_C)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(source)], check=True)
    return lib


@contextlib.contextmanager
def counted_region() -> Iterator[None]:
    """Inside a process started by ``callgrind_instructions``: count instructions only within this block."""
    lib = ctypes.CDLL(os.environ["UNIMIR_CGCTL"])
    lib.cg_start()
    try:
        yield
    finally:
        lib.cg_stop()


def callgrind_instructions(module: str, args: list[str], timeout: float = 3600) -> int:
    """Instructions executed inside ``counted_region`` by ``python -m module *args`` run under callgrind."""
    with tempfile.TemporaryDirectory(prefix="unimir-cg-") as tmp:
        folder = Path(tmp)
        env = dict(os.environ, UNIMIR_CGCTL=str(build_control(folder)), OMP_NUM_THREADS="1")
        out = folder / "callgrind.out"
        subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p",
                        sys.executable, "-m", module, *args], env=env, check=True, timeout=timeout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # each dump's "totals:" line (its "summary:" header can read 0 when counting was switched on later)
        return sum(int(line.split()[1]) for dump in folder.glob("callgrind.out.*")
                   for line in dump.read_text(errors="replace").splitlines() if line.startswith("totals:"))


def mean_rows(works: list[Work]) -> list[float]:
    steps = max(len(w.rows_per_step) for w in works)
    return [float(np.mean([w.rows_per_step[t] if t < len(w.rows_per_step) else 0 for w in works]))
            for t in range(steps)]
