"""Turning what a user has into a candidate pool: an M-BEIR pool file, a folder of images, or a file of texts."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from ..errors import DataError, NotFoundError
from .images import IMAGE_SUFFIXES
from .mbeir import read_candidates
from .problems import Problems
from .records import Candidate, Modality

CAPTION_FILES = ("captions.tsv", "captions.csv", "captions.jsonl")


def load_pool(source: "str | os.PathLike", root: "str | os.PathLike | None" = None,
              problems: Problems | None = None) -> tuple[list[Candidate], Path]:
    """Read a pool from ``source`` and return (candidates, the data root their image paths are relative to).

    * an M-BEIR ``cand_pool`` jsonl (records with ``did``): image paths resolve against ``root`` (default: the
      file's folder, or the M-BEIR root above ``cand_pool/`` when the file lies there);
    * a folder of images, searched recursively: one image candidate per file, did = its relative path; with a
      ``captions.tsv|csv|jsonl`` (file name → caption) captioned images become image+text items;
    * a ``.jsonl`` of texts (``{"id": ..., "text": ...}``), a ``.csv``/``.tsv`` with ``text`` (and ``id``)
      columns, or a ``.txt`` with one text per line: one text candidate each.
    """
    source = Path(source)
    problems = problems if problems is not None else Problems()
    if source.is_dir():
        return _image_folder(source, problems), Path(root or source).resolve()
    if not source.is_file():
        raise NotFoundError(f"no such file or folder: {source}")
    default_root = source.parent
    if "cand_pool" in source.parts:  # M-BEIR layout: paths are relative to the folder holding cand_pool/
        default_root = Path(*source.parts[:source.parts.index("cand_pool")]) or Path(".")
    root_path = Path(root or default_root).resolve()
    suffix = source.suffix.lower()
    if suffix == ".jsonl" and _looks_like_mbeir(source):
        return read_candidates(source, problems), root_path
    if suffix in (".jsonl", ".csv", ".tsv", ".txt"):
        return _text_file(source, problems), root_path
    raise DataError("unsupported pool: give an M-BEIR .jsonl pool, a folder of images, "
                    "or a .jsonl/.csv/.tsv/.txt of texts", path=str(source))


def _looks_like_mbeir(path: Path) -> bool:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    return isinstance(obj := json.loads(line), dict) and "did" in obj
                except json.JSONDecodeError:
                    return True  # let the M-BEIR reader report the bad line with its number
    return True


def _image_folder(folder: Path, problems: Problems) -> list[Candidate]:
    captions = _captions(folder, problems)
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        rel = path.relative_to(folder).as_posix()
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
    with open(path, encoding="utf-8", newline="") as f:
        if suffix == ".txt":
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield f"{path.stem}:{lineno}", line.strip()
            return
        if suffix == ".jsonl":
            records = []
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError("expected a JSON object")
                except ValueError as exc:
                    problems.add(f"malformed JSON ({exc})", path=str(path), line=lineno)
                    continue
                records.append((lineno, obj))
        else:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            records = [(lineno, row) for lineno, row in enumerate(reader, 2)]
        for lineno, obj in records:
            text = obj.get("text") or obj.get("caption") or obj.get("txt")
            rid = next((str(obj[k]) for k in id_keys if obj.get(k) not in (None, "")), f"{path.stem}:{lineno}")
            if not isinstance(text, str) or not text.strip():
                problems.add("no text (expected a 'text' or 'caption' field)", path=str(path), line=lineno, item=rid)
                continue
            yield rid, text.strip()
