"""Progress of long steps (encoding, evaluation, training) on stderr, with or without a terminal.

``progress_bar(total, desc, enabled=...)`` is a drop-in for the part of ``tqdm`` unimir uses (``update``,
``set_postfix``, ``close``, a context manager). On a terminal it is a tqdm bar; otherwise (a log file, CI, a pipe)
it prints one plain line every ``UNIMIR_PROGRESS_INTERVAL`` seconds (default 30) and a last line when the step
ends, so a 13-minute training run is never silent:

    generator: 1200/5000 steps (24%), 41.3 steps/s, 29 s elapsed, about 1 min 32 s left, loss=0.512
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

DEFAULT_INTERVAL_S = 30.0


def progress_bar(total: int, desc: str, *, enabled: bool = True, unit: str = "item", initial: int = 0,
                 stream: TextIO | None = None, interval: float | None = None, leave: bool = False):
    """A progress reporter for ``total`` units of work; a no-op when not ``enabled`` or when there is no work."""
    stream = stream if stream is not None else sys.stderr
    if not enabled or total <= 0:
        return _Silent()
    if _is_tty(stream):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=stream)
    return LineProgress(total, desc, unit=unit, initial=initial, stream=stream,
                        interval=interval if interval is not None else progress_interval())


def progress_interval() -> float:
    """Seconds between plain progress lines: ``UNIMIR_PROGRESS_INTERVAL`` (0 prints every update)."""
    raw = os.environ.get("UNIMIR_PROGRESS_INTERVAL")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_INTERVAL_S
    except ValueError:
        return DEFAULT_INTERVAL_S


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


class LineProgress(_Silent):
    """Plain, periodic progress lines for streams that are not terminals."""

    def __init__(self, total: int, desc: str, *, unit: str = "item", initial: int = 0, stream: TextIO,
                 interval: float = DEFAULT_INTERVAL_S, clock=time.monotonic):
        self.total, self.desc, self.unit, self.stream, self.interval = total, desc, unit, stream, interval
        self.n, self.start_n, self.clock = initial, initial, clock
        self.started = self.last_print = clock()
        self.postfix = ""
        self.printed = 0
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last_print >= self.interval:
            self._print(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        now = self.clock()
        # a step that already reported, or took longer than one interval, says that it finished
        if self.printed or now - self.started >= self.interval:
            self._print(now, done=True)

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = now - self.started
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        units = self.unit if self.unit.endswith("s") else self.unit + "s"
        parts = [f"{self.desc}: {self.n}/{self.total} {units} ({100 * self.n / self.total:.0f}%)"]
        if rate > 0:
            parts.append(f"{rate:.1f} {units}/s")
        parts.append(f"{_duration(elapsed)} elapsed")
        if rate > 0 and self.n < self.total:
            parts.append(f"about {_duration((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def _print(self, now: float, done: bool = False) -> None:
        print(self.line(now) + (" - done" if done else ""), file=self.stream, flush=True)
        self.last_print = now
        self.printed += 1

    def __exit__(self, *exc) -> None:
        self.close()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


class StepLog:
    """``tick(step, **values)`` prints ``[stage] step s/S (p %) k=v ... elapsed, eta`` at most every ``interval``
    seconds (and on the last step); ``note(text)`` prints at once. Disabled loggers print nothing."""

    def __init__(self, stage: str, total: int, *, enabled: bool = True, interval: float | None = None,
                 stream: TextIO | None = None):
        self.stage, self.total, self.enabled = stage, max(1, total), enabled
        self.interval = interval if interval is not None else progress_interval()
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
