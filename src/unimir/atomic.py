"""Atomic, durable file writes and file digests: the one way unimir writes a file that must survive a crash.

A write goes to a temporary file in the target's folder (``.<name>.<random>.tmp``), is flushed and fsynced, gets
the permissions a plain ``open()`` would give (0666 less the umask, usually 0644; ``mkstemp`` alone makes 0600,
which hides an index from the group), replaces the target with one ``os.replace`` and then the folder is fsynced so
that the rename itself is on disk. A reader sees the old file or the new one, never a part of either; a crash leaves
at most a temporary file, which :func:`is_temp_of` recognises for clean-up.

This module sits at the bottom: it imports nothing else from unimir, so every layer (index storage, quantizer and
generator checkpoints, the server's uploads) can use it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

TEMP_SUFFIX = ".tmp"
_umask_lock = threading.Lock()


def file_mode() -> int:
    """The mode a newly created file gets from ``open()`` in this process now: 0o666 less the umask."""
    return 0o666 & ~_current_umask()


def _current_umask() -> int:
    try:  # Linux shows it without changing it
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        with _umask_lock:  # elsewhere it can only be read by setting it
            old = os.umask(0o022)
            os.umask(old)
            return old


@contextmanager
def atomic_path(path: "str | os.PathLike") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; what the block writes there replaces ``path`` when it ends.

    For writers that want a file name (``safetensors.save_file``, ``faiss.write_index``). On an exception the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or quota) ran out: OSError carries errno; SQLite and FAISS only a message."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(exc)
    return "disk is full" in text or "No space left on device" in text or "Disk quota exceeded" in text


def write_bytes(path: "str | os.PathLike", data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: "str | os.PathLike", text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: "str | os.PathLike", obj: Any, *, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_safetensors(path: "str | os.PathLike", tensors: Mapping[str, Any],
                      metadata: Mapping[str, str] | None = None) -> None:
    """A safetensors file of NumPy arrays or of torch tensors (all of one kind), written atomically."""
    import numpy as np

    if all(isinstance(v, np.ndarray) for v in tensors.values()):
        from safetensors.numpy import save_file

        data = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    else:
        from safetensors.torch import save_file

        data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(data, str(tmp), metadata=dict(metadata) if metadata else None)


def write_npy(path: "str | os.PathLike", array: Any) -> None:
    """A ``.npy`` file (never pickled), written atomically."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(array), allow_pickle=False)


def is_temp_of(name: str, target: str) -> bool:
    """Whether ``name`` is a temporary file that an atomic write of ``target`` (a file name) left behind."""
    return name.startswith(f".{target}.") and name.endswith(TEMP_SUFFIX)


def digest_file(path: "str | os.PathLike", algorithm: str = "sha256", into=None) -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks; ``into`` continues an existing hashlib object."""
    h = into if into is not None else hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: "str | os.PathLike") -> str:
    return digest_file(path, "sha256")


def fsync_dir(directory: "str | os.PathLike") -> None:
    """Make renames and new entries in ``directory`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the rename is still atomic
    finally:
        os.close(fd)
