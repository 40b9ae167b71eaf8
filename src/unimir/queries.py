"""Turning M-BEIR query records into encoder items: instruction, query text, image path, target modality.

Shared by evaluation and generative training, so both see a query exactly the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .data.mbeir import InstructionTable, Qrels, query_text
from .data.problems import Problems
from .data.records import Modality, Query
from .data.tasks import candidate_modality
from .encoders import Item

if TYPE_CHECKING:
    from .index import Index


@dataclass
class PreparedQueries:
    """Queries ready to encode, aligned lists. ``targets``: the candidate modality each query asks for."""

    queries: list[Query] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    targets: list[Modality | None] = field(default_factory=list)
    relevant: list[set[str]] = field(default_factory=list)
    missing_positives: int = 0  # relevant ids absent from the pool
    skipped: int = 0

    def keep(self, mask: Sequence[bool]) -> "PreparedQueries":
        pick = lambda xs: [x for x, good in zip(xs, mask) if good]  # noqa: E731
        return PreparedQueries(pick(self.queries), pick(self.items), pick(self.targets), pick(self.relevant),
                               self.missing_positives, self.skipped + sum(1 for good in mask if not good))


def prepare_queries(queries: Sequence[Query], index: "Index", *, data_root: Path,
                    instructions: InstructionTable | None, relevant: Qrels | None = None,
                    all_instructions: bool = False, problems: Problems | None = None,
                    source: str | None = None) -> PreparedQueries:
    """Resolve each query's positives (``relevant`` qrels, else ``pos_cand_list``), target modality (from its
    task id, else from a positive in the pool) and instruction; queries without positives are skipped.

    ``all_instructions=True`` yields one item per instruction paraphrase (training augmentation) instead of the
    single deterministic choice used for evaluation.
    """
    problems = problems if problems is not None else Problems()
    out = PreparedQueries()
    positives = {q.qid: set(relevant.get(q.qid, ())) if relevant is not None else set(q.pos_cand_list)
                 for q in queries}
    in_pool = index.rows_of({d for rel in positives.values() for d in rel})  # one batched lookup, not one per id
    for q in queries:
        rel = positives[q.qid]
        if not rel:
            out.skipped += 1
            nonpositive = getattr(relevant, "nonpositive", {}).get(q.qid) if relevant is not None else None
            if nonpositive:
                why = f"its {nonpositive} qrels row(s) all have relevance <= 0, which does not mark a positive"
            elif relevant is not None:
                why = "no qrels row names it"
            else:
                why = "its pos_cand_list is empty"
            problems.add(f"query has no positives ({why}); skipped", path=source, item=q.qid)
            continue
        out.missing_positives += sum(1 for d in rel if d not in in_pool)
        target = target_modality(index, q.task_id, rel, in_pool)
        if instructions is None or target is None:
            variants: list[str | None] = [None]
        elif all_instructions:
            variants = list(instructions.prompts.get((q.dataset_id, q.query_modality, target), [])) or [None]
        else:
            variants = [instructions.choose(q.qid, q.dataset_id, q.query_modality, target)]
        image = str(data_root / q.query_img_path) if q.query_img_path else None
        for instruction in variants:
            out.queries.append(q)
            out.items.append(Item(query_text(q.query_txt, instruction), image, name=q.qid))
            out.targets.append(target)
            out.relevant.append(rel)
    return out


def target_modality(index: "Index", task_id: int | None, relevant: set[str],
                    rows: "dict[str, int] | None" = None) -> Modality | None:
    if task_id is not None:
        return candidate_modality(task_id)
    rows = rows if rows is not None else index.rows_of(relevant)
    for did in sorted(relevant):  # no task id: the modality of a positive that is in the pool
        if did in rows:
            return Modality.from_code(int(index.modality_codes[rows[did]]))
    return None


def mbeir_root(query_file: Path) -> Path | None:
    """The M-BEIR data root of a query file: the folder holding ``query/``."""
    parts = query_file.resolve().parts
    return Path(*parts[:parts.index("query")]) if "query" in parts else None


def load_instructions(instructions: "str | Path | InstructionTable | None", data_root: Path,
                      seed: int = 0) -> InstructionTable | None:
    """An explicit table or TSV path, else ``<data_root>/instructions/query_instructions.tsv`` when present."""
    if isinstance(instructions, InstructionTable):
        return instructions
    if instructions is not None:
        return InstructionTable.load(instructions, seed)
    default = data_root / "instructions" / "query_instructions.tsv"
    return InstructionTable.load(default, seed) if default.is_file() else None
