"""M-BEIR evaluation of an index: Recall@K per query file and task, tie-aware, with the random baseline."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.mbeir import InstructionTable, Qrels, query_text, read_qrels, read_queries
from ..data.problems import Problems
from ..data.records import Modality, Query
from ..data.tasks import candidate_modality, eval_set, task_name
from ..encoders import Item
from ..index import Index
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
    skipped_queries: int = 0
    missing_positives: int = 0  # relevant ids absent from the pool: they cap achievable recall
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(index: Index, query_files: Sequence["str | Path"], *, qrels: Sequence["str | Path"] = (),
             root: "str | Path | None" = None, ks: Sequence[int] = (1, 5, 10), mode: str = "dense",
             beams: int | None = None, instructions: "str | Path | InstructionTable | None" = None,
             seed: int = 0, batch_size: int = 256, progress: bool = False, runs_dir: "str | Path | None" = None,
             problems: Problems | None = None) -> list[EvalResult]:
    """Evaluate ``index`` on M-BEIR query files.

    Positives come from ``qrels`` files when given, else from each query's ``pos_cand_list``. The
    candidate-modality filter follows each query's task id. Instructions come from ``instructions`` (a TSV path
    or table), else from ``<root>/instructions/query_instructions.tsv`` when it exists, and are chosen
    deterministically per qid with ``seed``. Queries whose image cannot be read are skipped and counted.
    """
    problems = problems if problems is not None else Problems()
    relevant_map: Qrels = {}
    for path in qrels:
        for qid, dids in read_qrels(path).items():
            relevant_map.setdefault(qid, set()).update(dids)
    results: list[EvalResult] = []
    for qfile in query_files:
        qfile = Path(qfile)
        data_root = Path(root) if root else _mbeir_root(qfile) or index.root or qfile.parent
        table = _instructions(instructions, data_root, seed)
        queries = read_queries(qfile, problems)
        by_task: dict[int | None, list[Query]] = {}
        for q in queries:
            by_task.setdefault(q.task_id, []).append(q)
        for task_id, group in sorted(by_task.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
            results.append(_evaluate_group(index, qfile, task_id, group, relevant_map if qrels else None, data_root,
                                           table, tuple(ks), mode, beams, batch_size, progress, runs_dir, problems))
    return results


def _evaluate_group(index, qfile, task_id, queries, relevant_map, data_root, table, ks, mode, beams, batch_size,
                    progress, runs_dir, problems) -> EvalResult:
    dataset_id = queries[0].dataset_id
    kept, items, allowed, relevant = [], [], [], []
    missing = skipped = 0
    for q in queries:
        rel = set(relevant_map.get(q.qid, ())) if relevant_map is not None else set(q.pos_cand_list)
        if not rel:
            skipped += 1
            problems.add("query has no positives; skipped", path=str(qfile), item=q.qid)
            continue
        missing += sum(1 for d in rel if d not in index.row_of)
        target = _target_modality(index, task_id, rel)
        instruction = table.choose(q.qid, q.dataset_id, q.query_modality, target) if table and target else None
        image = str(data_root / q.query_img_path) if q.query_img_path else None
        items.append(Item(query_text(q.query_txt, instruction), image, name=q.qid))
        kept.append(q)
        allowed.append((target,) if target else None)
        relevant.append(rel)
    feats, ok = index.encoder.encode(items, "query", progress=progress, problems=problems)
    skipped += int((~ok).sum())
    kept = [q for q, good in zip(kept, ok) if good]
    allowed = [a for a, good in zip(allowed, ok) if good]
    relevant = [r for r, good in zip(relevant, ok) if good]
    spec = eval_set(dataset_id, task_id) if task_id is not None else None
    ks = tuple(sorted(set(ks) | ({spec.headline_k} if spec else set())))
    k_search = max(ks)
    hits = {k: [] for k in ks}
    rand = {k: [] for k in ks}
    run_lines: list[str] = []
    pool_sizes = {None: len(index)} | {m: int((index.modality_codes == m.code).sum()) for m in Modality}
    for start in range(0, len(kept), batch_size):
        sl = slice(start, start + batch_size)
        rankings = index.search_features(feats[sl], allowed[sl], k_search, mode=mode, beams=beams)
        for q, a, rel, ranking in zip(kept[sl], allowed[sl], relevant[sl], rankings):
            dids = [index.candidates[i].did for i in ranking.indices]
            is_rel = np.fromiter((d in rel for d in dids), dtype=bool, count=len(dids))
            pool = pool_sizes[a[0] if a else None]
            in_pool = sum(1 for d in rel if d in index.row_of and (a is None or index.get(d).modality in a))
            for k in ks:
                hits[k].append(expected_hit_at_k(ranking, is_rel, k))
                rand[k].append(random_hit_at_k(pool, in_pool, k))
            if runs_dir is not None:
                run_lines += [f"{q.qid} Q0 {d} {r + 1} {s:.6f} unimir-{mode} {task_id}"
                              for r, (d, s) in enumerate(zip(dids, ranking.scores))]
    if runs_dir is not None:
        out = Path(runs_dir)
        out.mkdir(parents=True, exist_ok=True)
        pool_name = index.path.name if index.path else "pool"
        (out / f"{qfile.stem}.task{task_id}.{pool_name}.{mode}.run").write_text("\n".join(run_lines) + "\n")
    mean = lambda xs: float(np.mean(xs)) if xs else 0.0  # noqa: E731
    target = allowed[0][0] if allowed and allowed[0] else None
    return EvalResult(
        queries=qfile.name, task_id=task_id, mode=mode, num_queries=len(kept),
        recall={str(k): mean(hits[k]) for k in ks}, random={str(k): mean(rand[k]) for k in ks},
        dataset=spec.dataset if spec else "", task=task_name(task_id) if task_id is not None else "",
        headline_k=spec.headline_k if spec else 5, pool=index.path.name if index.path else "",
        pool_size=pool_sizes[target], skipped_queries=skipped, missing_positives=missing)


def _target_modality(index: Index, task_id: int | None, relevant: set[str]) -> Modality | None:
    if task_id is not None:
        return candidate_modality(task_id)
    for did in relevant:  # no task id: the modality of a positive that is in the pool
        if did in index.row_of:
            return index.get(did).modality
    return None


def _mbeir_root(query_file: Path) -> Path | None:
    parts = query_file.resolve().parts
    return Path(*parts[:parts.index("query")]) if "query" in parts else None


def _instructions(instructions, data_root: Path, seed: int) -> InstructionTable | None:
    if isinstance(instructions, InstructionTable):
        return instructions
    if instructions is not None:
        return InstructionTable.load(instructions, seed)
    default = data_root / "instructions" / "query_instructions.tsv"
    return InstructionTable.load(default, seed) if default.is_file() else None


def format_table(results: Sequence[EvalResult], *, baseline: bool = True) -> str:
    """A readable table: one row per (query file, task, mode), recall ×100 to one decimal."""
    ks = sorted({int(k) for r in results for k in r.recall})
    head = ["queries", "task", "mode", "n", "pool"] + [f"R@{k}" for k in ks]
    if baseline:
        head += [f"rand@{k}" for k in ks]
    rows = [head]
    for r in results:
        row = [r.queries.removesuffix(".jsonl"), r.task or "-", r.mode, str(r.num_queries), str(r.pool_size)]
        row += [f"{100 * r.recall[str(k)]:.1f}" if str(k) in r.recall else "" for k in ks]
        if baseline:
            row += [f"{100 * r.random[str(k)]:.1f}" if str(k) in r.random else "" for k in ks]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(results: Sequence[EvalResult], path: "str | Path") -> None:
    Path(path).write_text(json.dumps({"results": [r.to_json() for r in results]}, indent=2))

