"""The on-disk layout of an index directory, written atomically.

Every save writes a new *generation* of data files (``candidates-000004.jsonl`` ...) next to the old ones and
then replaces ``manifest.json`` in one ``os.replace``. A crash before that replace leaves the old manifest
pointing at the old, complete files; afterwards the old generation is deleted. No pickle anywhere: JSON, jsonl
and safetensors only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import IndexFormatError, NotFoundError

FORMAT = "unimir-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_GENERATION = re.compile(r"^(.*)-(\d{6})(\..*)?$")


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
    files: dict[str, str] = field(default_factory=dict)
    generative: dict[str, Any] | None = None
    created: str = ""
    updated: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["fusion_weights"] = list(self.fusion_weights)
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
        except json.JSONDecodeError as exc:
            raise IndexFormatError(f"{path}: corrupt manifest ({exc})") from None
        if data.get("format") != FORMAT:
            raise IndexFormatError(f"{path}: not a unimir index manifest")
        if data.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(f"{path}: index format version {data.get('format_version')} is not supported "
                                   f"by this unimir (expects {FORMAT_VERSION}); rebuild the index")
        known = set(cls.__dataclass_fields__)
        m = cls(**{k: v for k, v in data.items() if k in known})
        m.fusion_weights = tuple(m.fusion_weights)  # type: ignore[assignment]
        return m


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def generation_name(name: str, generation: int, suffix: str = "") -> str:
    return f"{name}-{generation:06d}{suffix}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
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


def commit_manifest(directory: Path, manifest: Manifest) -> None:
    """Make ``manifest`` (whose files are already written and synced) current, then drop older generations."""
    manifest.updated = now()
    atomic_write_bytes(directory / MANIFEST, json.dumps(manifest.to_json(), indent=2).encode())
    _fsync_dir(directory)
    keep = set(manifest.files.values())
    for entry in directory.iterdir():
        m = _GENERATION.match(entry.name)
        if m and entry.name not in keep and int(m.group(2)) != manifest.generation:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for tmp in directory.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
