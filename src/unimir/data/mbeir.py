"""Readers and writers for M-BEIR files: candidate pools, query files, qrels and the instruction TSV."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import DataError, InvalidInputError, NotFoundError
from .problems import Problems
from .records import INDEX_MEDIA, Candidate, Modality, Query, SourceRows, dumps, modality_mismatch
from .textio import csv_rows, id_problem, invalid_unicode_field, iter_lines


def _iter_json_lines(path: Path, problems: Problems, positions: SourceRows) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each well-formed record; ``positions.total`` counts every non-blank line."""
    for lineno, line in iter_lines(path, problems):
        if not line.strip():
            continue
        positions.total += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.add(f"malformed JSON ({exc.msg} at column {exc.colno})", path=str(path), line=lineno)
            continue
        except RecursionError:
            problems.add("JSON nested too deeply", path=str(path), line=lineno)
            continue
        if not isinstance(obj, dict):
            problems.add("expected a JSON object", path=str(path), line=lineno)
            continue
        bad = invalid_unicode_field(obj)
        if bad:
            problems.add("not valid Unicode (a lone surrogate such as \\ud800); fix the text", path=str(path),
                         line=lineno, item=_shown_id(obj), field_name=bad)
            continue
        yield lineno, obj


def _shown_id(obj: dict) -> str | None:
    for key in ("did", "qid"):
        value = obj.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and id_problem(value) is None:
            return str(value)
    return None


def _opt_str(obj: dict, key: str, path: Path, lineno: int) -> str | None:
    value = obj.get(key)
    if isinstance(value, str) and not value.strip():
        return None  # "" and whitespace-only mean absent; a record left with no content is reported by the caller
    if value is None or isinstance(value, str):
        return value
    raise DataError(f"expected a string or null, got {type(value).__name__}", path=str(path), line=lineno, field=key)


def _record_modality(obj: dict, key: str, has_text: bool, has_image: bool, path: Path, lineno: int) -> Modality:
    raw = obj.get(key)
    if raw is None:
        return Modality.of(has_text, has_image)
    try:
        modality = Modality.parse(raw)
    except InvalidInputError:
        raise DataError(f"unknown modality {raw!r}: use 'image', 'text' or 'image,text'",
                        path=str(path), line=lineno, field=key) from None
    why = modality_mismatch(modality, has_text, has_image)
    if why:
        raise DataError(why, path=str(path), line=lineno, field=key)
    return modality


def read_candidates(path: "str | os.PathLike", problems: Problems | None = None, *,
                    positions: SourceRows | None = None) -> list[Candidate]:
    """Read an M-BEIR candidate pool (``cand_pool/*.jsonl``). Bad lines go to ``problems`` (raise when strict);
    ``positions`` receives where each kept record lies among the file's records."""
    return _read_records(Path(path), problems, "did", "candidate", _parse_candidate, positions)


def read_queries(path: "str | os.PathLike", problems: Problems | None = None, *,
                 positions: SourceRows | None = None) -> list[Query]:
    """Read an M-BEIR query file (``query/**.jsonl``). Bad lines go to ``problems`` (raise when strict);
    ``positions`` receives where each kept query lies in the file (its line: ``positions.lines``)."""
    return _read_records(Path(path), problems, "qid", "query", _parse_query, positions)


def _read_records(path: Path, problems: Problems | None, id_field: str, kind: str, parse,
                  positions: SourceRows | None = None) -> list:
    """The shared loop: one record per line, ids present and unique, every failure located by file and line."""
    problems = problems if problems is not None else Problems(strict=True)
    positions = positions if positions is not None else SourceRows()
    positions.path = str(path)
    out, seen = [], {}
    for lineno, obj in _iter_json_lines(path, problems, positions):
        try:
            rid = obj.get(id_field)
            why = id_problem(rid, kind)
            if why:
                raise DataError(why, path=str(path), line=lineno, field=id_field)
            rid = str(rid)
            if rid in seen:
                raise DataError(f"duplicate {kind} id {rid!r} (first on line {seen[rid]})",
                                path=str(path), line=lineno, field=id_field)
            out.append(parse(obj, rid, path, lineno))
            positions.rows.append(positions.total - 1)
            positions.lines.append(lineno)
            seen[rid] = lineno
        except DataError as exc:
            problems.add(exc.reason, path=str(path), line=lineno, item=_shown_id(obj), field_name=exc.field)
    return out


def _parse_candidate(obj: dict, did: str, path: Path, lineno: int) -> Candidate:
    txt = _opt_str(obj, "txt", path, lineno)
    img = _opt_str(obj, "img_path", path, lineno)
    if img is not None and img.startswith(INDEX_MEDIA):
        raise DataError(f"image paths starting with {INDEX_MEDIA!r} name images stored inside an index (uploads) "
                        "and cannot come from a pool file", path=str(path), line=lineno, field="img_path")
    if txt is None and img is None:
        raise DataError("a candidate needs 'txt', 'img_path' or both (text that is empty or only whitespace "
                        "does not count)", path=str(path), line=lineno)
    modality = _record_modality(obj, "modality", txt is not None, img is not None, path, lineno)
    return Candidate(did, modality, txt, img, _src(obj.get("src_content")))


def _parse_query(obj: dict, qid: str, path: Path, lineno: int) -> Query:
    txt = _opt_str(obj, "query_txt", path, lineno)
    img = _opt_str(obj, "query_img_path", path, lineno)
    if txt is None and img is None:
        raise DataError("a query needs 'query_txt', 'query_img_path' or both (text that is empty or only "
                        "whitespace does not count)", path=str(path), line=lineno)
    modality = _record_modality(obj, "query_modality", txt is not None, img is not None, path, lineno)
    pos, neg = obj.get("pos_cand_list") or [], obj.get("neg_cand_list") or []
    for key, ids in (("pos_cand_list", pos), ("neg_cand_list", neg)):
        if not isinstance(ids, list):
            raise DataError(f"expected a list of candidate ids, got {type(ids).__name__} {ids!r:.40}",
                            path=str(path), line=lineno, field=key)
        for did in ids:
            why = id_problem(did, "candidate")
            if why:
                raise DataError(why, path=str(path), line=lineno, field=key)
    task = obj.get("task_id")
    if task is not None and (isinstance(task, bool) or not isinstance(task, int) or not 0 <= task <= 8):
        raise DataError(f"task_id must be an integer 0..8, got {task!r}", path=str(path), line=lineno,
                        field="task_id")
    return Query(qid, modality, txt, img, [str(p) for p in pos], [str(n) for n in neg], task,
                 _src(obj.get("query_src_content")))


def _src(value: Any) -> str | None:
    """``src_content`` is a JSON-encoded string in M-BEIR; tolerate files that inline the object."""
    return value if value is None or isinstance(value, str) else dumps(value)


def write_jsonl(path: "str | os.PathLike", records: Iterable[Candidate | Query]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(dumps(r.to_json()) + "\n")


Qrels = dict[str, set[str]]


class QrelsTable(dict):
    """qid -> set of relevant dids, plus what was left out: ``nonpositive`` holds the qids that had rows with
    relevance <= 0 (M-BEIR qrels list positives only, with relevance 1; such rows are not positives)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.nonpositive: dict[str, int] = {}

    def merge(self, other: "QrelsTable") -> None:
        for qid, dids in other.items():
            self.setdefault(qid, set()).update(dids)
        for qid, n in getattr(other, "nonpositive", {}).items():
            self.nonpositive[qid] = self.nonpositive.get(qid, 0) + n


def read_qrels(path: "str | os.PathLike", problems: Problems | None = None) -> QrelsTable:
    """Read M-BEIR qrels (``qid 0 did relevance [task_id]``); only rows with relevance > 0 are kept.

    Rows with relevance <= 0 are counted in ``.nonpositive`` and, with ``problems``, noted once per file.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"qrels file not found: {path}")
    qrels = QrelsTable()
    ignored = 0
    for lineno, line in iter_lines(path):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 4:
            raise DataError(f"expected 'qid 0 did relevance [task_id]', got {line.strip()!r}",
                            path=str(path), line=lineno)
        try:
            rel = float(parts[3])
        except ValueError:
            raise DataError(f"relevance {parts[3]!r} is not a number", path=str(path), line=lineno,
                            field="relevance") from None
        if rel > 0:
            qrels.setdefault(parts[0], set()).add(parts[2])
        else:
            ignored += 1
            qrels.nonpositive[parts[0]] = qrels.nonpositive.get(parts[0], 0) + 1
    if ignored and problems is not None:
        problems.notice(f"qrels-nonpositive:{path}", f"row(s) of {path} have relevance <= 0 and were ignored: "
                        "only relevance > 0 marks a positive (M-BEIR qrels list positives with relevance 1)",
                        count=ignored)
    return qrels


def write_qrels(path: "str | os.PathLike", queries: Iterable[Query]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for q in queries:
            for did in q.pos_cand_list:
                f.write(f"{q.qid} 0 {did} 1 {q.task_id if q.task_id is not None else ''}".rstrip() + "\n")


# --- instructions -------------------------------------------------------------------------------------------

def format_text(text: str) -> str:
    """UniIR's normalisation of query, instruction and candidate text (mbeir-format.md §7)."""
    text = text.replace("\r", "").strip().strip('"').strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".?!" else text + "."


@dataclass
class InstructionTable:
    """Instructions keyed by (dataset_id, query modality, candidate modality), each a list of paraphrases.

    The paraphrase for a query is chosen deterministically from a hash of (seed, qid), so an evaluation is
    reproducible run to run (UniIR draws one at random each time, see mbeir-format.md §10).
    """

    prompts: dict[tuple[int, Modality, Modality], list[str]]
    seed: int = 0

    @classmethod
    def load(cls, path: "str | os.PathLike", seed: int = 0) -> "InstructionTable":
        path = Path(path)
        if not path.is_file():
            raise NotFoundError(f"instructions file not found: {path}")
        prompts: dict[tuple[int, Modality, Modality], list[str]] = {}
        rows = list(csv_rows(path, "\t"))
        if not rows:
            raise DataError("empty instructions file", path=str(path))
        for lineno, row in rows[1:]:
            if len(row) < 5:
                raise DataError("expected query_modality, cand_modality, dataset, dataset_id, prompt_1..4",
                                path=str(path), line=lineno)
            try:
                key = (int(row[3]), Modality.parse(row[0]), Modality.parse(row[1]))
            except (ValueError, InvalidInputError) as exc:
                raise DataError(str(exc), path=str(path), line=lineno) from None
            prompts[key] = [format_text(p) for p in row[4:] if p.strip()]
        return cls(prompts, seed)

    def choose(self, qid: str, dataset_id: int, query_modality: Modality, cand_modality: Modality) -> str | None:
        options = self.prompts.get((dataset_id, query_modality, cand_modality))
        if not options:
            return None
        digest = hashlib.sha1(f"{self.seed}:{qid}".encode()).digest()
        return options[int.from_bytes(digest[:4], "little") % len(options)]


def query_text(query_txt: str | None, instruction: str | None) -> str | None:
    """The text an encoder sees for a query: ``"{instruction} {query_txt}"``, formatted as UniIR does."""
    parts = [p for p in (instruction, query_txt) if p and p.strip()]
    return format_text(" ".join(format_text(p) if p is instruction else p.strip() for p in parts)) if parts else None
