"""The on-disk layout of an index directory: immutable segments listed by one manifest, committed atomically.

An index is a list of *segments* (``seg-000003/``: records, vectors, dense partitions, generative codes of the
rows appended together), plus a few index-level files (the trained dense template, the generative model, the
tombstones of deleted rows). Segment files are written once and never changed, as in Lucene, Qdrant or Lance:
appending N items writes one new segment of O(N) bytes and a new manifest, never a rewrite of what exists.

A commit writes the new files first, then replaces ``manifest.json`` in one ``os.replace`` (after an fsync of
the files and of the directory). A crash before that replace leaves the old manifest pointing at old, complete
files. After the switch, files the *previous* manifest listed and the new one does not are deleted: nothing
that this code did not list is ever removed. Writers serialise on an ``fcntl`` lock of ``.lock`` in the index
directory and re-read the newest manifest under it, so two processes appending at once both land.

No pickle anywhere: JSON, SQLite, ``.npy`` (``allow_pickle=False``) and FAISS's own format.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import IndexFormatError, NotFoundError

FORMAT = "unimir-index"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
LOCK = ".lock"


@dataclass
class SegmentEntry:
    """One segment as the manifest lists it: its folder, first global row, row count and where its codes live."""

    name: str
    first_row: int
    rows: int
    codes: str | None = None  # generative codes of its rows (a file in the segment or in the generative folder)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Manifest:
    encoder: str
    dim: int
    index_spec: str
    fusion_weights: tuple[float, float] = (1.0, 1.0)
    num_items: int = 0
    modality_counts: dict[str, int] = field(default_factory=dict)
    root: str | None = None
    generation: int = 0
    segments: list[SegmentEntry] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # index-level files: dense template, tombstones, generative
    deleted: int = 0
    generative: dict[str, Any] | None = None
    created: str = ""
    updated: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def num_rows(self) -> int:
        """Rows in all segments, deleted ones included (the global row space)."""
        return sum(s.rows for s in self.segments)

    def listed_files(self) -> set[str]:
        """Every top-level name (file or folder) this manifest owns; clean-up never touches anything else."""
        names = {s.name for s in self.segments} | set(self.files.values())
        return {n.split("/", 1)[0] for n in names if n}

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["fusion_weights"] = list(self.fusion_weights)
        d["segments"] = [s.to_json() for s in self.segments]
        return d

    @classmethod
    def read(cls, directory: Path) -> "Manifest":
        path = directory / MANIFEST
        if not path.is_file():
            if not directory.exists():
                raise NotFoundError(f"index not found: {directory}")
            raise IndexFormatError(f"{directory} is not a unimir index (no {MANIFEST}); build one with 'unimir index'")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IndexFormatError(f"{path}: corrupt manifest ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise IndexFormatError(f"{path}: not a unimir index manifest")
        if data.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(f"{path}: index format version {data.get('format_version')} is not supported "
                                   f"by this unimir (expects {FORMAT_VERSION}); rebuild the index with "
                                   "'unimir index'")
        known = set(cls.__dataclass_fields__)
        try:
            m = cls(**{k: v for k, v in data.items() if k in known})
            m.fusion_weights = tuple(m.fusion_weights)  # type: ignore[assignment]
            m.segments = [SegmentEntry(**s) for s in m.segments]  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise IndexFormatError(f"{path}: malformed manifest ({exc})") from None
        return m


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def generation_name(name: str, generation: int, suffix: str = "") -> str:
    return f"{name}-{generation:06d}{suffix}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def fsync_tree(path: Path) -> None:
    """fsync a file, or every file of a folder and the folder itself (new segment files before the commit)."""
    paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for p in paths:
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(path if path.is_dir() else path.parent)


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def write_lock(directory: Path) -> Iterator[None]:
    """Exclusive inter-process lock of an index directory for the span of one write (append, delete, commit)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_current(directory: Path) -> Manifest | None:
    """The committed manifest, or None for a directory that holds no index yet."""
    return Manifest.read(directory) if (directory / MANIFEST).exists() else None


def commit_manifest(directory: Path, manifest: Manifest, previous: Manifest | None = None) -> None:
    """Make ``manifest`` (whose files are written and synced) current; then delete what only ``previous`` listed."""
    manifest.updated = now()
    atomic_write_bytes(directory / MANIFEST, json.dumps(manifest.to_json(), indent=2).encode())
    fsync_dir(directory)
    if previous is not None:
        for name in previous.listed_files() - manifest.listed_files():
            entry = directory / name
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.exists():
                entry.unlink()


def clear_unfinished(directory: Path) -> None:
    """Remove half-written segment folders (``.seg-*.tmp``) of a writer that died; call under ``write_lock``."""
    for tmp in directory.glob(".seg-*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
