"""An inter-process writer lock on a folder: ``fcntl.flock`` on a lock file inside it.

Every writer of an index directory holds this lock from re-reading the newest generation until it has committed
the next one, so two writers (two ``unimir add``, a server and a CLI, ``unimir train`` saving) take turns instead
of one silently overwriting the other's generation. Readers take no lock: generation files are never rewritten
and the manifest is replaced atomically.

flock locks belong to an open file, and a second ``open`` of the same lock file in the same process would wait on
itself, so the lock is re-entrant per process: threads queue on one ``RLock`` per folder and only the outermost
holder touches the file. The kernel drops the lock when its process dies, so a killed writer never leaves a
folder locked, and the lock file itself is never deleted (deleting it would let two writers lock two files).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UnimirError

LOCK_FILE = ".unimir.lock"


class LockTimeoutError(UnimirError):
    """Another process kept the folder locked for longer than the caller was willing to wait."""

    http_status = 503


class _FolderLock:
    def __init__(self) -> None:
        self.thread_lock = threading.RLock()
        self.depth = 0
        self.fd: int | None = None


_registry: dict[str, _FolderLock] = {}
_registry_lock = threading.Lock()


def lock_path(directory: "str | os.PathLike") -> Path:
    return Path(directory) / LOCK_FILE


@contextmanager
def locked(directory: "str | os.PathLike", *, timeout: float | None = None) -> Iterator[None]:
    """Hold the writer lock of ``directory`` (created if missing) for the duration of the block.

    ``timeout`` (seconds) bounds the wait for another process; None waits as long as it takes.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(directory)
    with _registry_lock:
        state = _registry.setdefault(key, _FolderLock())
    if not state.thread_lock.acquire(timeout=-1 if timeout is None else timeout):
        raise LockTimeoutError(f"{directory} is being written by another thread; try again")
    try:
        if state.depth == 0:
            state.fd = _acquire_file(lock_path(directory), timeout)
        state.depth += 1
        try:
            yield
        finally:
            state.depth -= 1
            if state.depth == 0 and state.fd is not None:
                fcntl.flock(state.fd, fcntl.LOCK_UN)
                os.close(state.fd)
                state.fd = None
    finally:
        state.thread_lock.release()


def _acquire_file(path: Path, timeout: float | None) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # less the umask, as open() does
    try:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return fd
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeoutError(f"{path.parent} is being written by another process (lock file "
                                           f"{path.name}); try again when it has finished") from None
                time.sleep(0.05)
    except BaseException:
        os.close(fd)
        raise
