"""Encoder inference for a server: one thread owns the model, and concurrent queries are batched together.

HF fast tokenizers must not be called from several threads at once ("Already borrowed"), and parallel forward
passes on a small CPU only fight over the cores (each calling thread gets its own OpenMP team). So every model
call goes through one worker thread per model. While it runs a forward pass, new requests queue up; the next
pass takes all of them at once (up to a batch limit). That is *natural* batching: no request waits for a batch
to fill, and under load one forward pass serves many queries, which is what makes the server faster than
sequential in-process searches. Batched results equal single ones up to float rounding (padding is masked).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..encoders import Encoder

MAX_TEXTS_PER_PASS = 64
MAX_IMAGES_PER_PASS = 16


@dataclass
class _Job:
    kind: str  # "text" or "image"
    role: str
    items: list
    future: Future = field(default_factory=Future)


class ModelWorker:
    """The single thread that calls one encoder's ``embed_texts`` / ``embed_images``."""

    def __init__(self, model: Encoder):
        self.model = model
        self.jobs: "queue.SimpleQueue[_Job]" = queue.SimpleQueue()
        self.passes = 0          # forward passes run
        self.batched_jobs = 0    # jobs that shared a pass with another
        self.thread = threading.Thread(target=self._loop, name=f"unimir-encoder-{model.spec}", daemon=True)
        self.thread.start()

    def submit(self, kind: str, role: str, items: list) -> np.ndarray:
        if threading.current_thread() is self.thread:  # a model that re-enters itself: run inline
            return self._call(kind, role, items)
        job = _Job(kind, role, list(items))
        self.jobs.put(job)
        return job.future.result()

    def _call(self, kind: str, role: str, items: list) -> np.ndarray:
        fn = self.model.embed_texts if kind == "text" else self.model.embed_images
        return np.asarray(fn(items, role), dtype=np.float32)

    def _loop(self) -> None:
        held: deque[_Job] = deque()  # jobs of another kind or role, taken off the queue while filling a batch
        while True:
            first = held.popleft() if held else self.jobs.get()
            batch, count = [first], len(first.items)
            limit = MAX_TEXTS_PER_PASS if first.kind == "text" else MAX_IMAGES_PER_PASS
            waiting, held = held, deque()
            for job in waiting:  # oldest first
                if _fits(job, first, count, limit):
                    batch.append(job)
                    count += len(job.items)
                else:
                    held.append(job)
            while count < limit:
                try:
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if _fits(job, first, count, limit):
                    batch.append(job)
                    count += len(job.items)
                else:
                    held.append(job)
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        self.passes += 1
        if len(batch) > 1:
            self.batched_jobs += len(batch)
            try:
                vectors = self._call(batch[0].kind, batch[0].role, [x for job in batch for x in job.items])
            except Exception:  # noqa: BLE001 - retry one by one, so one bad job cannot fail the others
                for job in batch:
                    self._run([job])
                return
            start = 0
            for job in batch:
                job.future.set_result(vectors[start:start + len(job.items)])
                start += len(job.items)
            return
        job = batch[0]
        try:
            job.future.set_result(self._call(job.kind, job.role, job.items))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting request thread
            job.future.set_exception(exc)


def _fits(job: _Job, first: _Job, count: int, limit: int) -> bool:
    return job.kind == first.kind and job.role == first.role and count + len(job.items) <= limit


_WORKERS: dict[int, tuple[Encoder, ModelWorker]] = {}
_WORKERS_GUARD = threading.Lock()


def worker_for(model: Encoder) -> ModelWorker:
    """The worker of ``model``, shared by every index (and app) in the process that uses the same object."""
    with _WORKERS_GUARD:
        entry = _WORKERS.get(id(model))
        if entry is None or entry[0] is not model:  # holding the model keeps its id from being reused
            entry = _WORKERS[id(model)] = (model, ModelWorker(model))
        return entry[1]


class BatchingEncoder(Encoder):
    """An encoder whose model calls run on the model's worker thread, batched with concurrent calls.

    Everything else of :meth:`Encoder.encode` (image decoding, digests, cache look-ups) still runs in the
    calling thread, in parallel.
    """

    def __init__(self, inner: Encoder):
        self.inner = inner
        self.worker = worker_for(inner)
        self.spec, self.dim = inner.spec, inner.dim
        self.text_batch_size, self.image_batch_size = inner.text_batch_size, inner.image_batch_size

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    def embed_texts(self, texts: list[str], role: str = "candidate") -> np.ndarray:
        return self.worker.submit("text", role, texts)

    def embed_images(self, images, role: str = "candidate") -> np.ndarray:
        return self.worker.submit("image", role, images)

    def __getattr__(self, name: str) -> Any:  # anything else (top_k, tokenizer, ...) comes from the wrapped one
        return getattr(self.inner, name)
