"""The on-disk layout of an index directory: immutable segments listed by one manifest, committed atomically.

An index is a list of *segments* (``seg-000003/``: records, vectors, dense partitions, generative codes of the
rows appended together), plus a few index-level files (the trained dense template, the generative model, the
tombstones of deleted rows). Segment files are written once and never changed, as in Lucene, Qdrant or Lance:
appending N items writes one new segment of O(N) bytes and a new manifest, never a rewrite of what exists.

A commit writes the new files first, then replaces ``manifest.json`` in one ``os.replace`` (after an fsync of
the files and of the directory). A crash before that replace leaves the old manifest pointing at old, complete
files. After the switch, files the *previous* manifest listed and the new one does not are deleted: nothing
that this code did not list is ever removed. Writers serialise on an ``fcntl`` lock of ``.lock`` in the index
directory (:mod:`unimir.dirlock`) and re-read the newest manifest under it, so two processes appending at once
both land. The manifest records the size and sha256 of every file it lists (computed once, when the file is
written), for ``unimir info --check``. A folder that holds anything but a unimir index is never written to.

No pickle anywhere: JSON, SQLite, ``.npy`` (``allow_pickle=False``) and FAISS's own format.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import atomic
from ..atomic import fsync_dir, is_temp_of, sha256_file
from ..dirlock import LOCK_FILE, locked
from ..errors import IndexFormatError, NotFoundError

FORMAT = "unimir-index"
FORMAT_VERSION = 3
#: versions this code opens. v2 (before 2026-12-02): every segment holds the items' fp16 parts; v3 adds
#: ``parts`` (whether segments hold them) and ``encoder_fingerprint``, and stores generative codes compactly.
#: A v2 index opens as one that keeps parts; its next commit writes a v3 manifest.
READABLE_VERSIONS = (2, 3)
MANIFEST = "manifest.json"
REBUILD = "rebuild the index with 'unimir index'"
#: names this code writes at the top of an index folder; a folder holding only these (and no manifest) is an
#: interrupted first build, not the user's data
_OURS = re.compile(r"^\.?(seg-\d{6}-[0-9a-f]+|dense-template-\d{6}\.faiss|tombstones-\d{6}\.npy|generative-\d{6}|"
                   r"media)(\.tmp)?$")
write_lock = locked  # the directory's inter-process writer lock (re-entrant within a process)


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
    #: further data roots: folders that later adds read items from (their images are recorded by absolute path)
    roots: list[str] = field(default_factory=list)
    #: some items were indexed with ``allow_outside_root``: absolute image paths are then served as recorded
    outside_root: bool = False
    generation: int = 0
    segments: list[SegmentEntry] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # index-level files: dense template, tombstones, generative
    deleted: int = 0
    generative: dict[str, Any] | None = None
    #: whether segments store the items' fp16 parts (``--keep-parts``; v2 indexes always did)
    parts: bool = True
    #: ``Encoder.fingerprint`` of the encoder that built the index (None: built from features, or by an older unimir)
    encoder_fingerprint: str | None = None
    #: relative path of every listed file -> {"size": bytes, "sha256": hex}, recorded when it was written
    checksums: dict[str, dict[str, Any]] = field(default_factory=dict)
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

    def listed_names(self) -> set[str]:
        return self.listed_files()

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
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IndexFormatError(f"{path}: corrupt manifest ({exc}); {REBUILD}") from None
        if not isinstance(data, dict):
            raise IndexFormatError(f"{path}: the manifest is a JSON {type(data).__name__}, not an object; {REBUILD}")
        if data.get("format") != FORMAT:
            raise IndexFormatError(f"{path}: not a unimir index manifest")
        if data.get("format_version") not in READABLE_VERSIONS:
            raise IndexFormatError(f"{path}: index format version {data.get('format_version')} is not supported "
                                   f"by this unimir (it reads versions {', '.join(map(str, READABLE_VERSIONS))}); "
                                   "rebuild the index with 'unimir index'")
        problem = _manifest_problem(data)
        if problem:
            raise IndexFormatError(f"{path}: {problem}; {REBUILD}")
        known = set(cls.__dataclass_fields__)
        try:
            m = cls(**{k: v for k, v in data.items() if k in known})
            m.fusion_weights = tuple(float(w) for w in m.fusion_weights)  # type: ignore[assignment]
            m.segments = [SegmentEntry(**s) for s in m.segments]  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise IndexFormatError(f"{path}: malformed manifest ({exc}); {REBUILD}") from None
        if data["format_version"] == 2:  # v2 segments all hold parts; the next commit writes this as v3
            m.parts, m.format_version = True, FORMAT_VERSION
        return m


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _plain_name(name: str) -> bool:
    """A relative path inside the index folder: no absolute paths, no '..'."""
    return bool(name) and not name.startswith("/") and "\\" not in name and "\0" not in name and \
        ".." not in name.split("/") and name not in (".",)


def _manifest_problem(d: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a manifest (None: nothing), so no later step trips over a bad type."""
    for key, kind in (("encoder", str), ("index_spec", str)):
        if key not in d:
            return f"the manifest lacks {key!r}"
        if not isinstance(d[key], kind) or not d[key]:
            return f"{key!r} must be a non-empty string, got {d[key]!r}"
    if "dim" not in d:
        return "the manifest lacks 'dim'"
    if not _is_int(d["dim"]) or d["dim"] <= 0:
        return f"'dim' must be a positive integer, got {d['dim']!r}"
    for key in ("num_items", "generation", "deleted"):
        if key in d and (not _is_int(d[key]) or d[key] < 0):
            return f"{key!r} must be a non-negative integer, got {d[key]!r}"
    files = d.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return f"'files' must be an object of file names, got {files!r}"[:200]
    for name in files.values():
        if not _plain_name(name):
            return f"'files' lists {name!r}, which is not a file name inside the index directory"
    segments = d.get("segments", [])
    if not isinstance(segments, list):
        return "'segments' must be a list"
    for s in segments:
        if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not _plain_name(s["name"]) \
                or "/" in s["name"] or not _is_int(s.get("first_row")) or not _is_int(s.get("rows")) \
                or (s.get("codes") is not None and (not isinstance(s["codes"], str) or not _plain_name(s["codes"]))):
            return f"malformed segment entry {s!r}"[:200]
    roots = d.get("roots", [])
    if not isinstance(roots, list) or not all(isinstance(r, str) and r for r in roots):
        return f"'roots' must be a list of folder paths, got {roots!r}"[:200]
    w = d.get("fusion_weights", [1.0, 1.0])
    if (not isinstance(w, list) or len(w) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in w)):
        return f"'fusion_weights' must be two numbers, got {w!r}"
    for key, kind in (("modality_counts", dict), ("checksums", dict), ("generative", (dict, type(None))),
                      ("root", (str, type(None))), ("parts", bool), ("encoder_fingerprint", (str, type(None))),
                      ("outside_root", bool)):
        if key in d and not isinstance(d[key], kind):
            return f"{key!r} has the wrong type ({type(d[key]).__name__})"
    return None


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def generation_name(name: str, generation: int, suffix: str = "") -> str:
    return f"{name}-{generation:06d}{suffix}"


def fsync_tree(path: Path) -> None:
    """fsync a file, or every file of a folder and the folder itself (new segment files before the commit)."""
    import os

    paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for p in paths:
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(path if path.is_dir() else path.parent)


def checksums(directory: Path, names: "list[str] | set[str]") -> dict[str, dict[str, Any]]:
    """Size and sha256 of each named file, and of every file inside each named folder (keys: relative paths)."""
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(names):
        entry = directory / name
        files = sorted(p for p in entry.rglob("*") if p.is_file()) if entry.is_dir() else [entry]
        for f in files:
            out[f.relative_to(directory).as_posix()] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
    return out


def previous_manifest(directory: Path) -> Manifest | None:
    """The manifest a write to ``directory`` builds on; None for a new, empty or damaged-index folder.

    Refuses a folder that is not a unimir index and holds anything but leftovers of our own interrupted first
    build: writing an index there would mix our files with the user's. A damaged manifest of ours gives None,
    since rebuilding is its cure (its old files are then left in place, as no readable manifest lists them).
    """
    directory = Path(directory)
    if not directory.exists():
        return None
    if not directory.is_dir():
        raise IndexFormatError(f"{directory} is a file, not a folder; choose a new or empty folder for the index")
    if (directory / MANIFEST).exists():
        try:
            return Manifest.read(directory)
        except IndexFormatError:
            if _is_our_manifest(directory / MANIFEST):
                return None
            raise IndexFormatError(f"{directory} holds a {MANIFEST} that is not a unimir index; refusing to write "
                                   "an index there (choose a new or empty folder)") from None
    foreign = sorted(e.name for e in directory.iterdir() if not _is_ours(e.name))
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise IndexFormatError(f"{directory} is not empty and not a unimir index (it holds {foreign[0]!r}{more}); "
                               "choose a new or empty folder for the index")
    return None


def _is_our_manifest(path: Path) -> bool:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def _is_ours(name: str) -> bool:
    return name == LOCK_FILE or bool(_OURS.match(name)) or is_temp_of(name, MANIFEST)


def read_current(directory: Path) -> Manifest | None:
    """The committed manifest, or None for a folder that holds no (readable) index yet."""
    return previous_manifest(directory)


def commit_manifest(directory: Path, manifest: Manifest, previous: Manifest | None = None) -> None:
    """Make ``manifest`` (whose files are written and synced) current; then delete what only ``previous`` listed."""
    manifest.updated = now()
    atomic.write_json(directory / MANIFEST, manifest.to_json())
    if previous is not None:
        for name in previous.listed_files() - manifest.listed_files():
            entry = directory / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.exists() or entry.is_symlink():
                entry.unlink(missing_ok=True)
    for entry in directory.iterdir():  # temporary files of interrupted writes of our own manifest
        if entry.name.endswith(".tmp") and is_temp_of(entry.name, MANIFEST):
            entry.unlink(missing_ok=True)
    fsync_dir(directory)


def orphans(directory: Path, manifest: Manifest) -> list[str]:
    """Names at the top of an index folder that this code writes (segments, templates, tombstones, generative
    models, half-written ``.tmp`` entries) but the manifest does not list: leftovers of a writer that died
    between writing and committing. Never anything else: media, the lock and the user's own files are not."""
    listed = manifest.listed_files()
    return sorted(e.name for e in directory.iterdir()
                  if e.name not in listed and e.name != "media" and _OURS.match(e.name))


def remove_orphans(directory: Path, manifest: Manifest) -> list[str]:
    """Delete ``orphans`` (call under ``write_lock``, with the committed manifest); returns their names."""
    names = orphans(directory, manifest)
    for name in names:
        entry = directory / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if names:
        fsync_dir(directory)
    return names


def clear_unfinished(directory: Path) -> None:
    """Remove half-written segment folders (``.seg-*.tmp``) of a writer that died; call under ``write_lock``."""
    for tmp in directory.glob(".seg-*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
