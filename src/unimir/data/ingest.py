"""Turning what a user has into a candidate pool: an M-BEIR pool file, a folder of images, or a file of texts."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import DataError, NotFoundError
from .images import IMAGE_SUFFIXES
from .mbeir import read_candidates
from .problems import Problems
from .records import Candidate, Modality
from .textio import csv_rows, id_problem, invalid_unicode_field, iter_lines

CAPTION_FILES = ("captions.tsv", "captions.csv", "captions.jsonl")


def load_pool(source: "str | os.PathLike", root: "str | os.PathLike | None" = None,
              problems: Problems | None = None, *, allow_outside_root: bool = False) -> tuple[list[Candidate], Path]:
    """Read a pool from ``source`` and return (candidates, the data root their image paths are relative to).

    * an M-BEIR ``cand_pool`` jsonl (records with ``did``): image paths resolve against ``root`` (default: the
      file's folder, or the M-BEIR root above ``cand_pool/`` when the file lies there);
    * a folder of images, searched recursively: one image candidate per file, did = its relative path; with a
      ``captions.tsv|csv|jsonl`` (file name → caption) captioned images become image+text items;
    * a ``.jsonl`` of texts (``{"id": ..., "text": ...}``), a ``.csv``/``.tsv`` with ``text`` (and ``id``)
      columns, or a ``.txt`` with one text per line: one text candidate each.

    An image path that leaves the data root (``../x.png``, an absolute path, a symlink to a file elsewhere) is
    reported and skipped unless ``allow_outside_root``: the server hands out every indexed image.
    """
    source = Path(source)
    problems = problems if problems is not None else Problems()
    if source.is_dir():
        root_path = Path(root or source).resolve()
        return _inside_root(_image_folder(source, problems), root_path, source, problems, allow_outside_root), \
            root_path
    if not source.is_file():
        raise NotFoundError(f"no such file or folder: {source}")
    default_root = source.parent
    if "cand_pool" in source.parts:  # M-BEIR layout: paths are relative to the folder holding cand_pool/
        default_root = Path(*source.parts[:source.parts.index("cand_pool")]) or Path(".")
    root_path = Path(root or default_root).resolve()
    suffix = source.suffix.lower()
    if suffix == ".jsonl" and _looks_like_mbeir(source):
        candidates = read_candidates(source, problems)
        return _inside_root(candidates, root_path, source, problems, allow_outside_root), root_path
    if suffix in (".jsonl", ".csv", ".tsv", ".txt"):
        return _text_file(source, problems), root_path
    raise DataError("unsupported pool: give an M-BEIR .jsonl pool, a folder of images, "
                    "or a .jsonl/.csv/.tsv/.txt of texts", path=str(source))


def _looks_like_mbeir(path: Path) -> bool:
    for _, line in iter_lines(path, Problems()):  # undecodable lines are reported by the reader proper
        if line.strip():
            try:
                return isinstance(obj := json.loads(line), dict) and "did" in obj
            except (json.JSONDecodeError, RecursionError):
                return True  # let the M-BEIR reader report the bad line with its number
    return True


def _inside_root(candidates: list[Candidate], root: Path, source: Path, problems: Problems,
                 allow_outside: bool) -> list[Candidate]:
    """Candidates whose image lies under ``root`` (symlinks resolved); the others are reported and left out."""
    if allow_outside:
        return candidates
    kept, real_dirs = [], {}
    for c in candidates:
        if c.img_path and not _is_within(root, c.img_path, real_dirs):
            problems.add(f"image path {c.img_path!r} leaves the data root {root}; move the file under the root, "
                         "or pass --allow-outside-root to index it anyway", path=str(source), item=c.did,
                         field_name="img_path")
            continue
        kept.append(c)
    return kept


def _is_within(root: Path, img_path: str, real_dirs: dict[str, str]) -> bool:
    """Whether ``root / img_path``, symlinks resolved, lies under ``root`` (itself resolved). ``real_dirs`` caches
    the resolved folders: a pool's images share a few folders, so a million paths cost a million ``lstat`` calls
    rather than a full ``resolve`` each (which made this most of the time of reading a large pool)."""
    if os.path.isabs(img_path):
        return False
    folder, name = os.path.split(os.path.join(root, img_path))
    real = real_dirs.get(folder)
    if real is None:
        real = real_dirs[folder] = os.path.realpath(folder)
    target = os.path.join(real, name)
    if name in ("", ".", "..") or os.path.islink(target):
        target = os.path.realpath(target)
    base = str(root)
    return target == base or target.startswith(base.rstrip(os.sep) + os.sep)


def _image_folder(folder: Path, problems: Problems) -> list[Candidate]:
    captions = _captions(folder, problems)
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        rel = path.relative_to(folder).as_posix()
        why = id_problem(rel, "image")
        if why:
            problems.add(f"{why} (the id is the file's path; rename the file)", path=str(folder))
            continue
        caption = captions.get(rel) or captions.get(path.name)
        out.append(Candidate(rel, Modality.IMAGE_TEXT if caption else Modality.IMAGE, caption, rel))
    if not out:
        raise NotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {folder}")
    return out


def _captions(folder: Path, problems: Problems) -> dict[str, str]:
    for name in CAPTION_FILES:
        path = folder / name
        if path.is_file():
            return {rid: text for rid, text in _rows(path, problems, id_keys=("file", "image", "filename", "id"))}
    return {}


def _text_file(path: Path, problems: Problems) -> list[Candidate]:
    out, seen = [], set()
    for rid, text in _rows(path, problems, id_keys=("id", "did")):
        if rid in seen:
            problems.add(f"duplicate id {rid!r}", path=str(path), item=rid)
            continue
        seen.add(rid)
        out.append(Candidate(rid, Modality.TEXT, text))
    return out


def _rows(path: Path, problems: Problems, id_keys: tuple[str, ...]):
    """Yield (id, text) from a .jsonl, .csv/.tsv or .txt file; rows without text are reported and skipped."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        for lineno, line in iter_lines(path, problems):
            if line.strip():
                yield f"{path.stem}:{lineno}", line.strip()
        return
    records: list[tuple[int, dict]] = []
    if suffix == ".jsonl":
        for lineno, line in iter_lines(path, problems):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("expected a JSON object")
            except RecursionError:
                problems.add("JSON nested too deeply", path=str(path), line=lineno)
                continue
            except ValueError as exc:
                problems.add(f"malformed JSON ({exc})", path=str(path), line=lineno)
                continue
            bad = invalid_unicode_field(obj)
            if bad:
                problems.add("not valid Unicode (a lone surrogate such as \\ud800); fix the text", path=str(path),
                             line=lineno, field_name=bad)
                continue
            records.append((lineno, obj))
    else:
        rows = csv_rows(path, "\t" if suffix == ".tsv" else ",", problems)
        header = next(rows, None)
        if header is None:
            return
        names = [h.strip() for h in header[1]]
        records = [(lineno, dict(zip(names, cells))) for lineno, cells in rows]
    for lineno, obj in records:
        text = next((obj[k] for k in ("text", "caption", "txt") if isinstance(obj.get(k), str) and obj[k].strip()),
                    obj.get("text"))
        key = next((k for k in id_keys if obj.get(k) not in (None, "")), None)
        if key is None:
            rid = f"{path.stem}:{lineno}"
        else:
            why = id_problem(obj[key])
            if why:
                problems.add(why, path=str(path), line=lineno, field_name=key)
                continue
            rid = str(obj[key])
        if not isinstance(text, str) or not text.strip():
            problems.add("no text (expected a 'text' or 'caption' field that is not empty or only whitespace)",
                         path=str(path), line=lineno, item=rid)
            continue
        yield rid, text.strip()
