"""Periodic one-line progress reports of long training loops, on stderr, with or without a terminal.

tqdm bars only draw on a terminal; under ``make``, CI or a pipe a long training step would otherwise be silent.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class StepLog:
    """``tick(step, **values)`` prints ``[stage] step s/S (p %) k=v ... elapsed, eta`` at most every ``interval``
    seconds (and on the last step); ``note(text)`` prints at once. Disabled loggers print nothing."""

    def __init__(self, stage: str, total: int, *, enabled: bool = True, interval: float = 15.0,
                 stream: TextIO | None = None):
        self.stage, self.total, self.enabled, self.interval = stage, max(1, total), enabled, interval
        self.stream = stream
        self.start = self.last = time.monotonic()

    def _print(self, text: str) -> None:
        print(f"[{self.stage}] {text}", file=self.stream or sys.stderr, flush=True)

    def tick(self, step: int, **values: float | str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < self.interval and step < self.total:
            return
        self.last = now
        elapsed = now - self.start
        eta = elapsed / max(step, 1) * (self.total - step)
        shown = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        self._print(f"step {step}/{self.total} ({100 * step / self.total:.0f} %) {shown}  "
                    f"{elapsed:.0f} s elapsed, ~{eta:.0f} s left")

    def note(self, text: str) -> None:
        if self.enabled:
            self._print(text)
