"""The on-disk layout of an index directory: generations of data files and one manifest, committed atomically.

Every save writes a new *generation* of data files (``candidates-000004.jsonl`` ...) next to the old ones and
then replaces ``manifest.json`` in one ``os.replace``. A crash before that replace leaves the old manifest
pointing at the old, complete files. After it, clean-up deletes the files that the *previous manifest* listed and
the new one does not, and nothing else: a folder may hold the user's own files, and only a manifest says which
files are ours. Writers hold the directory lock (:mod:`unimir.dirlock`) from reading the previous manifest to
this clean-up. The manifest records the size and sha256 of every file it lists, for ``unimir info --check``.

No pickle anywhere: JSON, jsonl and safetensors only.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import fsync_dir, is_temp_of, sha256_file, write_json
from ..dirlock import LOCK_FILE
from ..errors import IndexFormatError, NotFoundError

FORMAT = "unimir-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: the stems of the data files a save writes; a folder holding only these (and no manifest) is an interrupted build
DATA_STEMS = ("candidates", "features", "dense", "generative")
_LEFTOVER = re.compile(rf"^({'|'.join(DATA_STEMS)})-\d{{6}}(\.jsonl|\.safetensors)?$")
REBUILD = "rebuild the index with 'unimir index'"


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
    #: relative path of every file of this generation -> {"size": bytes, "sha256": hex}
    checksums: dict[str, dict[str, Any]] = field(default_factory=dict)
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
        directory = Path(directory)
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
        if data.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(f"{path}: index format version {data.get('format_version')} is not supported "
                                   f"by this unimir (expects {FORMAT_VERSION}); rebuild the index")
        problem = _manifest_problem(data)
        if problem:
            raise IndexFormatError(f"{path}: {problem}; {REBUILD}")
        known = set(cls.__dataclass_fields__)
        m = cls(**{k: v for k, v in data.items() if k in known})
        m.fusion_weights = tuple(float(w) for w in m.fusion_weights)  # type: ignore[assignment]
        return m

    def listed_names(self) -> set[str]:
        """The top-level entries of the directory that this manifest owns (files and folders)."""
        return set(self.files.values())


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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
    for key in ("num_items", "generation"):
        if key in d and (not _is_int(d[key]) or d[key] < 0):
            return f"{key!r} must be a non-negative integer, got {d[key]!r}"
    files = d.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return f"'files' must be an object of file names, got {files!r}"[:200]
    for name in files.values():
        if not _plain_name(name):
            return f"'files' lists {name!r}, which is not a file name inside the index directory"
    for key in ("candidates", "features", "dense"):
        if key not in files:
            return f"'files' lacks {key!r}"
    w = d.get("fusion_weights", [1.0, 1.0])
    if (not isinstance(w, list) or len(w) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in w)):
        return f"'fusion_weights' must be two numbers, got {w!r}"
    for key, kind in (("modality_counts", dict), ("checksums", dict), ("generative", (dict, type(None))),
                      ("root", (str, type(None)))):
        if key in d and not isinstance(d[key], kind):
            return f"{key!r} has the wrong type ({type(d[key]).__name__})"
    return None


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def generation_name(name: str, generation: int, suffix: str = "") -> str:
    return f"{name}-{generation:06d}{suffix}"


def previous_manifest(directory: Path) -> Manifest | None:
    """The manifest a new generation in ``directory`` replaces; None for a new or empty folder.

    Refuses a folder that is not a unimir index and holds anything but the leftovers of an interrupted first
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
    if name == LOCK_FILE or _LEFTOVER.match(name) or is_temp_of(name, MANIFEST):
        return True
    return name.startswith(".") and name.endswith(".tmp") and bool(_LEFTOVER.match(name[1:].split(".")[0]))


def checksums(directory: Path, names: "list[str] | set[str]") -> dict[str, dict[str, Any]]:
    """Size and sha256 of each listed file, and of every file inside each listed folder (keys: relative paths)."""
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(names):
        entry = directory / name
        files = sorted(p for p in entry.rglob("*") if p.is_file()) if entry.is_dir() else [entry]
        for f in files:
            out[f.relative_to(directory).as_posix()] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
    return out


def commit_manifest(directory: Path, manifest: Manifest, previous: Manifest | None) -> None:
    """Make ``manifest`` (whose files are written and synced) current, then delete what only ``previous`` listed.

    Call with the directory lock held, ``previous`` being the manifest read under that lock.
    """
    manifest.updated = now()
    write_json(directory / MANIFEST, manifest.to_json())
    keep = manifest.listed_names()
    old = previous.listed_names() - keep if previous is not None else set()
    for name in old:
        entry = directory / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.exists() or entry.is_symlink():
            entry.unlink(missing_ok=True)
    ours = keep | old | {MANIFEST}
    for entry in directory.iterdir():  # temporary files of interrupted writes of our own files
        if entry.name.endswith(".tmp") and any(is_temp_of(entry.name, n) for n in ours):
            entry.unlink(missing_ok=True)
    fsync_dir(directory)
