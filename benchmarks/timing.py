"""The suite's one timing helper: wall-clock seconds of repeated calls, and their summary."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np


def timeit(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> np.ndarray:
    """Seconds of ``repeat`` calls of ``fn`` (float64 [repeat]), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = np.empty(repeat)
    for i in range(repeat):
        start = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - start
    return out


def summary(seconds: np.ndarray, items_per_call: int = 1) -> dict[str, float]:
    """p50 / p99 / mean in milliseconds per call, and items/s over all calls (items x calls / total time)."""
    seconds = np.asarray(seconds, dtype=np.float64)
    return {"p50_ms": 1e3 * float(np.percentile(seconds, 50)), "p99_ms": 1e3 * float(np.percentile(seconds, 99)),
            "mean_ms": 1e3 * float(seconds.mean()), "per_s": items_per_call / float(seconds.mean()),
            "calls": int(len(seconds))}


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds``."""

    def __enter__(self) -> "Stopwatch":
        self.start, self.seconds = time.perf_counter(), 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
