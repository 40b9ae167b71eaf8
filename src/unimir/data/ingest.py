"""Turning what a user has into a candidate pool: an M-BEIR pool file, a folder of images, or a file of texts."""

from __future__ import annotations

import json
import os
from array import array
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, NotFoundError
from .images import IMAGE_SUFFIXES
from .mbeir import read_candidates
from .problems import Problems
from .records import INDEX_MEDIA, Candidate, Modality, SourceRows
from .textio import csv_rows, id_problem, invalid_unicode_field, iter_lines

CAPTION_FILES = ("captions.tsv", "captions.csv", "captions.jsonl")
CAPTION_FILE_KEYS = ("file", "image", "filename", "id")


@dataclass
class Pool:
    """A pool as read: its candidates, the data root their image paths are relative to, and where each candidate
    lies among the source's records (``positions``, which aligns features computed elsewhere)."""

    candidates: list[Candidate]
    root: Path
    positions: SourceRows

    def locate(self, problems: Problems) -> None:
        """Give the problems found after reading (an image that cannot be encoded, an id the index holds: they
        name only the item) the pool file and line of their record."""
        problems.locate(self.positions.path, (c.did for c in self.candidates), self.positions.lines)


def load_pool(source: "str | os.PathLike", root: "str | os.PathLike | None" = None,
              problems: Problems | None = None, *, allow_outside_root: bool = False) -> tuple[list[Candidate], Path]:
    """(candidates, data root) of :func:`read_pool`."""
    pool = read_pool(source, root, problems, allow_outside_root=allow_outside_root)
    return pool.candidates, pool.root


def read_pool(source: "str | os.PathLike", root: "str | os.PathLike | None" = None,
              problems: Problems | None = None, *, allow_outside_root: bool = False) -> Pool:
    """Read a pool from ``source``:

    * an M-BEIR ``cand_pool`` jsonl (records with ``did``): image paths resolve against ``root`` (default: the
      file's folder, or the M-BEIR root above ``cand_pool/`` when the file lies there);
    * a folder of images, searched recursively: one image candidate per file, did = its relative path; with a
      ``captions.tsv|csv|jsonl`` (file name → caption) captioned images become image+text items;
    * a ``.jsonl`` of texts (``{"id": ..., "text": ...}``), a ``.csv``/``.tsv`` with ``text`` (and ``id``)
      columns, or a ``.txt`` with one text per line: one text candidate each.

    Bad records are reported to ``problems`` and left out. An image path that leaves the data root (``../x.png``,
    an absolute path, a symlink to a file elsewhere) is reported and skipped unless ``allow_outside_root``: the
    server hands out every indexed image.
    """
    source = Path(source)
    problems = problems if problems is not None else Problems()
    positions = SourceRows()
    if source.is_dir():
        root_path = Path(root or source).resolve()
        candidates = _image_folder(source, problems, positions)
    elif not source.is_file():
        raise NotFoundError(f"no such file or folder: {source}")
    else:
        default_root = source.parent
        whole = source.absolute()  # "p.jsonl" typed inside cand_pool/ is as much M-BEIR layout as the full path
        if "cand_pool" in whole.parent.parts:  # M-BEIR layout: paths are relative to the folder holding cand_pool/
            parts = whole.parent.parts
            default_root = Path(*parts[:len(parts) - 1 - parts[::-1].index("cand_pool")])
        root_path = Path(root or default_root).resolve()
        suffix = source.suffix.lower()
        if suffix == ".jsonl" and _looks_like_mbeir(source):
            candidates = read_candidates(source, problems, positions=positions)
        elif suffix in (".jsonl", ".csv", ".tsv", ".txt"):
            return Pool(_text_file(source, problems, positions), root_path, positions)
        else:
            raise DataError("unsupported pool: give an M-BEIR .jsonl pool, a folder of images, "
                            "or a .jsonl/.csv/.tsv/.txt of texts", path=str(source))
    if not allow_outside_root:
        candidates = _inside_root(candidates, root_path, source, problems, positions)
    return Pool(candidates, root_path, positions)


def _looks_like_mbeir(path: Path) -> bool:
    for _, line in iter_lines(path, Problems()):  # undecodable lines are reported by the reader proper
        if line.strip():
            try:
                return isinstance(obj := json.loads(line), dict) and "did" in obj
            except (json.JSONDecodeError, RecursionError):
                return True  # let the M-BEIR reader report the bad line with its number
    return True


def _inside_root(candidates: list[Candidate], root: Path, source: Path, problems: Problems,
                 positions: SourceRows) -> list[Candidate]:
    """Candidates whose image lies under ``root`` (symlinks resolved); the others are reported and left out
    (and from ``positions``)."""
    kept, rows, lines, real_dirs = [], array("q"), array("q"), {}
    has_lines = len(positions.lines) == len(positions.rows)
    for i, (c, row) in enumerate(zip(candidates, positions.rows)):
        if c.img_path and not _is_within(root, c.img_path, real_dirs):
            problems.add(f"image path {c.img_path!r} leaves the data root {root}; move the file under the root, "
                         "or pass --allow-outside-root to index it anyway", path=str(source),
                         line=positions.lines[i] if has_lines else None, item=c.did, field_name="img_path")
            continue
        kept.append(c)
        rows.append(row)
        if has_lines:
            lines.append(positions.lines[i])
    positions.rows, positions.lines = rows, lines
    return kept


def within_root(root: Path, img_path: str, cache: dict[str, str] | None = None) -> bool:
    """Whether ``root / img_path``, symlinks resolved, lies under ``root`` (itself resolved): the check pool
    readers make. ``cache`` keeps the resolved folders between calls."""
    return _is_within(root, img_path, cache if cache is not None else {})


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


def _image_folder(folder: Path, problems: Problems, positions: SourceRows) -> list[Candidate]:
    captions = _captions(folder, problems)
    out = []
    named = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    for p in named:
        if p.is_symlink() and not p.exists():
            problems.add("a symbolic link to a file that does not exist", path=str(p))
    files = [p for p in named if p.is_file()]
    positions.total = len(files)
    for position, path in enumerate(files):
        rel = path.relative_to(folder).as_posix()
        why = id_problem(rel, "image") or (f"a name starting with {INDEX_MEDIA!r} is reserved for images stored "
                                           "inside an index" if rel.startswith(INDEX_MEDIA) else None)
        if why:
            problems.add(f"{why} (the id is the file's path; rename the file)", path=str(folder))
            continue
        caption = captions.get(rel) or captions.get(path.name)
        out.append(Candidate(rel, Modality.IMAGE_TEXT if caption else Modality.IMAGE, caption, rel))
        positions.rows.append(position)
    if not out:
        raise NotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {folder}")
    return out


def _captions(folder: Path, problems: Problems) -> dict[str, str]:
    for name in CAPTION_FILES:
        path = folder / name
        if path.is_file():
            if path.suffix != ".jsonl":  # without a header the first caption would be taken for one, unseen
                header = next(csv_rows(path, "\t" if path.suffix == ".tsv" else ",", problems), None)
                names = {h.strip().lower() for h in header[1]} if header else set()
                if not names & set(CAPTION_FILE_KEYS) or not names & {"caption", "text", "txt"}:
                    problems.add("the first line must be a header naming the file column (file, image, filename "
                                 "or id) and the caption column (caption or text); no caption was read",
                                 path=str(path), line=1)
                    return {}
            rows = _rows(path, problems, SourceRows(), id_keys=CAPTION_FILE_KEYS)
            return {rid: text for _, _, rid, text in rows}
    return {}


def _text_file(path: Path, problems: Problems, positions: SourceRows) -> list[Candidate]:
    out, seen = [], set()
    positions.path = str(path)
    for position, lineno, rid, text in _rows(path, problems, positions, id_keys=("id", "did")):
        if rid in seen:
            problems.add(f"duplicate id {rid!r}", path=str(path), line=lineno, item=rid)
            continue
        seen.add(rid)
        out.append(Candidate(rid, Modality.TEXT, text))
        positions.rows.append(position)
        positions.lines.append(lineno)
    return out


def _rows(path: Path, problems: Problems, positions: SourceRows, id_keys: tuple[str, ...]):
    """Yield (position, line, id, text) from a .jsonl, .csv/.tsv or .txt file, where position is the record's
    place among the file's records (``positions.total`` counts them); rows without text are reported and skipped."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        for lineno, line in iter_lines(path, problems):
            if line.strip():
                positions.total += 1
                yield positions.total - 1, lineno, f"{path.stem}:{lineno}", line.strip()
        return
    records: list[tuple[int, int, dict]] = []
    if suffix == ".jsonl":
        for lineno, line in iter_lines(path, problems):
            if not line.strip():
                continue
            positions.total += 1
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
            records.append((positions.total - 1, lineno, obj))
    else:
        rows = csv_rows(path, "\t" if suffix == ".tsv" else ",", problems)
        header = next(rows, None)
        if header is None:
            return
        names = [h.strip() for h in header[1]]
        records = []
        for i, (lineno, cells) in enumerate(rows):
            positions.total += 1
            if len(cells) > len(names):  # zip would drop the extra cells: a delimiter inside an unquoted text
                problems.add(f"{len(cells)} cells for the header's {len(names)} columns; quote a text that holds "
                             f"the delimiter ({'a tab' if suffix == '.tsv' else 'a comma'})", path=str(path),
                             line=lineno)
                continue
            records.append((i, lineno, dict(zip(names, cells))))
    for position, lineno, obj in records:
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
            mixed = ("; it looks like an M-BEIR candidate (it has 'did'), but the file's first record made this a "
                     "file of texts: put an M-BEIR record first, or keep the two kinds in separate files"
                     if "did" in obj and suffix == ".jsonl" else "")
            problems.add("no text (expected a 'text' or 'caption' field that is not empty or only whitespace)"
                         + mixed, path=str(path), line=lineno, item=rid)
            continue
        yield position, lineno, rid, text.strip()
