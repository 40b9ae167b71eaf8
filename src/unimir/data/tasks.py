"""The M-BEIR task table and its 16 evaluation sets, in one place (mbeir-format.md §6)."""

from __future__ import annotations

from dataclasses import dataclass

from .records import Modality

IMG, TXT, IT = Modality.IMAGE, Modality.TEXT, Modality.IMAGE_TEXT

#: task id -> (query modality, candidate modality)
TASKS: dict[int, tuple[Modality, Modality]] = {
    0: (TXT, IMG), 1: (TXT, TXT), 2: (TXT, IT), 3: (IMG, TXT), 4: (IMG, IMG), 5: (IMG, IT), 6: (IT, TXT), 7: (IT, IMG),
    8: (IT, IT),
}

DATASETS: dict[int, str] = {
    0: "visualnews", 1: "fashion200k", 2: "webqa", 3: "edis", 4: "nights",
    5: "oven", 6: "infoseek", 7: "fashioniq", 8: "cirr", 9: "mscoco", 10: "demo",
}

#: Recall cut-offs UniIR reports per dataset; the fashion sets use 10/20/50 and headline R@10.
FASHION = {1, 7}


@dataclass(frozen=True)
class EvalSet:
    dataset: str
    task_id: int
    ks: tuple[int, ...]
    headline_k: int


def eval_set(dataset_id: int, task_id: int) -> EvalSet:
    name = DATASETS.get(dataset_id, f"dataset{dataset_id}")
    if dataset_id in FASHION:
        return EvalSet(name, task_id, (10, 20, 50), 10)
    return EvalSet(name, task_id, (1, 5, 10), 5)


def task_name(task_id: int) -> str:
    q, c = TASKS[task_id]
    short = {IMG: "I", TXT: "T", IT: "(I,T)"}
    return f"{short[q]}→{short[c]}"


def candidate_modality(task_id: int) -> Modality:
    try:
        return TASKS[int(task_id)][1]
    except KeyError:
        raise ValueError(f"unknown M-BEIR task id {task_id!r} (0..8)") from None
