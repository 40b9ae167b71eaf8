"""M-BEIR evaluation of an index: Recall@K per query file and task, tie-aware, with the random baseline."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.mbeir import InstructionTable, QrelsTable, read_qrels, read_queries
from ..data.problems import Problems
from ..data.records import Query, SourceRows
from ..data.tasks import eval_set, task_name
from ..errors import InvalidInputError
from ..index import Index
from ..index.index import MAX_K
from ..progress import progress_bar
from ..queries import load_instructions, mbeir_root, prepare_queries
from .metrics import expected_hit_at_k, random_hit_at_k


@dataclass
class EvalResult:
    """Recall of one (query file, task, mode) on one pool. Recall values are hit rates in 0..1."""

    queries: str
    task_id: int | None
    mode: str
    num_queries: int
    recall: dict[str, float]
    random: dict[str, float]
    dataset: str = ""
    task: str = ""
    headline_k: int = 5
    pool: str = ""
    pool_size: int = 0
    skipped_queries: int = 0  # queries of this task dropped: no positives, or an image that cannot be read
    unreadable_lines: int = 0  # query-file lines that could not be read (no task known): on a file's first row
    missing_positives: int = 0  # relevant ids absent from the pool: they cap achievable recall
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dropped_queries(self) -> int:
        return self.skipped_queries + self.unreadable_lines

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "dropped_queries": self.dropped_queries}


def evaluate(index: Index, query_files: Sequence["str | Path"], *, qrels: Sequence["str | Path"] = (),
             root: "str | Path | None" = None, ks: Sequence[int] = (1, 5, 10), mode: str = "dense",
             beams: int | None = None, instructions: "str | Path | InstructionTable | None" = None,
             seed: int = 0, batch_size: int = 256, progress: bool = False, runs_dir: "str | Path | None" = None,
             exclude_query: bool = False, problems: Problems | None = None,
             modality_filter: bool = True, diagnose: bool = False) -> list[EvalResult]:
    """Evaluate ``index`` on M-BEIR query files.

    Positives come from ``qrels`` files when given, else from each query's ``pos_cand_list``. The
    candidate-modality filter follows each query's task id. Instructions come from ``instructions`` (a TSV path
    or table), else from ``<root>/instructions/query_instructions.tsv`` when it exists, and are chosen
    deterministically per qid with ``seed``. Queries whose image cannot be read are skipped and counted.
    ``exclude_query`` drops candidates identical to the query (its own image or text) before scoring, as CIRR's
    protocol drops the reference image. ``modality_filter=False`` searches every candidate whatever its modality,
    as UniIR's and GENIUS's union-pool evaluations do (only the instruction steers the modality).
    ``diagnose`` adds, for generative modes, where recall is lost
    (``unimir.eval.diagnose``) to each result's ``extra["diagnosis"]``.
    """
    query_files = [query_files] if isinstance(query_files, (str, Path)) else list(query_files)  # one file, too
    qrels = [qrels] if isinstance(qrels, (str, Path)) else list(qrels)
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1 or max(ks) > MAX_K:
        raise InvalidInputError(f"ks must be integers from 1 to {MAX_K}, got {ks}")
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be at least 1, got {batch_size}")
    problems = problems if problems is not None else Problems()
    if runs_dir is not None:
        check_writable_dir(runs_dir, "--runs")  # before the work, not after it
    relevant_map = QrelsTable()
    for path in qrels:
        relevant_map.merge(read_qrels(path, problems))
    results: list[EvalResult] = []
    for qfile in query_files:
        qfile = Path(qfile)
        data_root = Path(root) if root else mbeir_root(qfile) or index.root or qfile.parent
        table = load_instructions(instructions, data_root, seed)
        before = len(problems)
        positions = SourceRows()
        queries = read_queries(qfile, problems, positions=positions)
        unreadable = len(problems) - before
        by_task: dict[int | None, list[Query]] = {}
        for q in queries:
            by_task.setdefault(q.task_id, []).append(q)
        rows = [_evaluate_group(index, qfile, task_id, group, relevant_map if qrels else None, data_root, table,
                                tuple(ks), mode, beams, batch_size, progress, runs_dir, exclude_query, problems,
                                modality_filter, diagnose)
                for task_id, group in sorted(by_task.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))]
        if not rows:  # nothing readable: still one row, so the file and its dropped count show
            rows = [EvalResult(queries=qfile.name, task_id=None, mode=mode, num_queries=0, recall={}, random={},
                               pool=index.path.name if index.path else "pool", pool_size=len(index))]
        rows[0].unreadable_lines = unreadable
        problems.locate(str(qfile), (q.qid for q in queries), positions.lines)
        results += rows
    return results


def check_writable_dir(path: "str | Path", what: str = "output folder") -> Path:
    """Create ``path`` if needed and make sure files can be written in it; raise InvalidInputError otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InvalidInputError(f"{what} {path} cannot be used as a folder: a file is in the way") from None
    except OSError as exc:
        raise InvalidInputError(f"{what} {path} cannot be created ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InvalidInputError(f"{what} {path} is not writable")
    return path


def check_writable_file(path: "str | Path", what: str = "output file") -> Path:
    """Make sure ``path`` can be written (its folder exists and is writable; it is not a folder) without
    creating it, so a long job fails before its work and not after."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InvalidInputError(f"{what} {path} is a folder; give a file name")
    if not parent.is_dir():
        raise InvalidInputError(f"{what} {path} cannot be written: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InvalidInputError(f"{what} {path} is not writable")
    return path


def _evaluate_group(index, qfile, task_id, queries, relevant_map, data_root, table, ks, mode, beams, batch_size,
                    progress, runs_dir, exclude_query, problems, modality_filter=True, diagnose=False) -> EvalResult:
    prepared = prepare_queries(queries, index, data_root=data_root, instructions=table, relevant=relevant_map,
                               problems=problems, source=str(qfile))
    feats, ok = index.encoder.encode(prepared.items, "query", progress=progress, problems=problems)
    prepared = prepared.keep(ok)
    if not prepared.items:  # every query dropped: a row that says so, with no recall to misread
        return EvalResult(queries=qfile.name, task_id=task_id, mode=mode, num_queries=0, recall={}, random={},
                          task=task_name(task_id) if task_id is not None else "",
                          pool=index.path.name if index.path else "pool", pool_size=len(index),
                          skipped_queries=prepared.skipped, missing_positives=prepared.missing_positives)
    allowed = [(t,) if t and modality_filter else None for t in prepared.targets]
    # lookup maps built once for the whole group: duplicates of every query (indexed SQL lookups, not a scan of
    # the pool per query), and the row and modality of every relevant id
    duplicates = index.duplicate_rows_many([(q.query_txt, item.image) for q, item in
                                            zip(prepared.queries, prepared.items)]) if exclude_query \
        else [set()] * len(prepared.items)
    relevant_rows = index.rows_of({d for rel in prepared.relevant for d in rel})
    relevant_modality = {d: int(index.modality_codes[r]) for d, r in relevant_rows.items()}
    spec = eval_set(queries[0].dataset_id, task_id) if task_id is not None else None
    ks = tuple(sorted(set(ks) | ({spec.headline_k} if spec else set())))
    hits: dict[int, list[float]] = {k: [] for k in ks}
    rand: dict[int, list[float]] = {k: [] for k in ks}
    run_lines: list[str] = []
    tie_lines: list[str] = []
    pool_sizes = {None: len(index)} | index.modality_counts()
    bar = progress_bar(len(prepared.items), f"search {qfile.stem} ({mode})", enabled=progress, unit="query")
    for start in range(0, len(prepared.items), batch_size):
        sl = slice(start, start + batch_size)
        rankings = index.search_features(feats[sl], allowed[sl], max(ks), mode=mode, beams=beams,
                                         exclude=duplicates[sl])
        did_of = dict(zip(*_unique_dids(index, rankings)))
        for q, target, rel, ranking in zip(prepared.queries[sl], prepared.targets[sl], prepared.relevant[sl],
                                           rankings):
            dids = [did_of[int(i)] for i in ranking.indices]
            is_rel = np.fromiter((d in rel for d in dids), dtype=bool, count=len(dids))
            target = target if modality_filter else None  # the random baseline draws from what was searched
            in_pool = sum(1 for d in rel if d in relevant_modality and
                          (target is None or relevant_modality[d] == target.code))
            for k in ks:
                hits[k].append(expected_hit_at_k(ranking, is_rel, k))
                rand[k].append(random_hit_at_k(pool_sizes[target], in_pool, k))
            if runs_dir is not None:
                # the standard six TREC columns (trec_eval, ir_measures, ranx); 9 significant digits keep float32
                # scores distinct, so a tool that re-sorts by score sees the same order
                run_lines += [f"{q.qid} Q0 {d} {r + 1} {s:.9g} unimir-{mode}"
                              for r, (d, s) in enumerate(zip(dids, ranking.scores))]
                tie_lines += [f"{q.qid}\t{r + 1}\t{d}\t{g}" for r, (d, g) in enumerate(zip(dids, ranking.tie_groups))]
        bar.update(len(rankings))
    bar.close()
    pool_name = index.path.name if index.path else "pool"
    if runs_dir is not None:
        out = check_writable_dir(runs_dir, "--runs")
        name = f"{qfile.stem}.task{task_id}.{pool_name}.{mode}"
        (out / f"{name}.run").write_text("\n".join(run_lines) + "\n", encoding="utf-8")
        # tie groups (equal scores; their internal order means nothing) do not fit the six columns
        (out / f"{name}.ties.tsv").write_text("qid\trank\tdid\ttie_group\n" + "\n".join(tie_lines) + "\n",
                                              encoding="utf-8")
    mean = lambda xs: float(np.mean(xs)) if xs else 0.0  # noqa: E731
    extra = {}
    if diagnose and mode != "dense":
        from ..index.index import DEFAULT_BEAMS
        from .diagnose import diagnose as diagnose_queries

        rows = [{relevant_rows[d] for d in rel if d in relevant_rows} for rel in prepared.relevant]
        extra["diagnosis"] = diagnose_queries(index, feats, [t.code if t else None for t in prepared.targets], rows,
                                              beams or DEFAULT_BEAMS)
    target = prepared.targets[0] if prepared.targets and modality_filter else None
    return EvalResult(
        queries=qfile.name, task_id=task_id, mode=mode, num_queries=len(prepared.items),
        recall={str(k): mean(hits[k]) for k in ks}, random={str(k): mean(rand[k]) for k in ks},
        dataset=spec.dataset if spec else "", task=task_name(task_id) if task_id is not None else "",
        headline_k=spec.headline_k if spec else 5, pool=pool_name, pool_size=pool_sizes[target],
        skipped_queries=prepared.skipped, missing_positives=prepared.missing_positives, extra=extra)


def _unique_dids(index: Index, rankings) -> tuple[list[int], list[str]]:
    """(rows, ids) of every row a batch of rankings mentions: one records query per batch, not one per hit."""
    rows = np.unique(np.concatenate([r.indices for r in rankings])) if rankings else np.zeros(0, np.int64)
    return rows.tolist(), [c.did for c in index.candidates_at(rows)]


def format_table(results: Sequence[EvalResult], *, baseline: bool = True) -> str:
    """A readable table: one row per (query file, task, mode), recall ×100 to one decimal."""
    ks = sorted({int(k) for r in results for k in r.recall})
    head = ["queries", "task", "mode", "n", "pool"] + [f"R@{k}" for k in ks]
    if baseline:
        head += [f"rand@{k}" for k in ks]
    rows = [head]
    dropped = any(r.dropped_queries for r in results)
    if dropped:
        head.insert(4, "dropped")
    for r in results:
        row = [r.queries.removesuffix(".jsonl"), r.task or "-", r.mode, str(r.num_queries), str(r.pool_size)]
        if dropped:
            row.insert(4, str(r.dropped_queries))
        row += [f"{100 * r.recall[str(k)]:.1f}" if str(k) in r.recall else "-" for k in ks]
        if baseline:
            row += [f"{100 * r.random[str(k)]:.1f}" if str(k) in r.random else "-" for k in ks]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_comparison(results: Sequence[EvalResult], reference: str = "dense") -> str:
    """Modes side by side: one row per (task, mode), grouped by task, with each mode's headline recall as a
    ratio of the ``reference`` mode's."""
    ref = {(r.queries, r.task_id): r for r in results if r.mode == reference}
    ks = sorted({int(k) for r in results for k in r.recall})
    head = ["task", "mode"] + [f"R@{k}" for k in ks] + ["headline", f"÷{reference}"]
    rows = [head]
    order = {m: i for i, m in enumerate(dict.fromkeys(r.mode for r in results))}
    for r in sorted(results, key=lambda r: (r.queries, r.task_id or 0, order[r.mode])):
        hk = str(r.headline_k)
        base = ref.get((r.queries, r.task_id))
        ratio = (f"{r.recall[hk] / base.recall[hk]:.2f}" if base and base.recall.get(hk) and hk in r.recall
                 else "-")
        rows.append([r.task or r.queries, r.mode] + [f"{100 * r.recall[str(k)]:.1f}" if str(k) in r.recall else ""
                                                     for k in ks] + [f"R@{hk}", ratio])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(results: Sequence[EvalResult], path: "str | Path", problems: Problems | None = None) -> None:
    """``{"results": [...], "dropped_queries": N, "problems": [...]}``; each result has its own dropped count."""
    body: dict[str, Any] = {"results": [r.to_json() for r in results],
                            "dropped_queries": sum(r.dropped_queries for r in results)}
    if problems is not None:
        body["problems"] = [str(p) for p in problems.items] + problems.notes()
    Path(path).write_text(json.dumps(body, indent=2, ensure_ascii=False), encoding="utf-8")

