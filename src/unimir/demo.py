"""``unimir demo``: index the bundled demo corpus, run example searches of every modality pair, evaluate."""

from __future__ import annotations

import shlex
import time
from importlib import resources
from pathlib import Path

from .data.mbeir import InstructionTable, read_queries
from .data.tasks import candidate_modality, task_name
from .encoders.cache import default_cache_dir
from .eval import evaluate, format_comparison, format_table
from .index import Index

TEST_FILES = ("mbeir_demo_task0_test.jsonl", "mbeir_demo_task3_test.jsonl", "mbeir_demo_task4_test.jsonl",
              "mbeir_demo_task7_test.jsonl")


def demo_corpus() -> Path:
    """The demo corpus shipped inside the package (M-BEIR layout, dataset id 10)."""
    return Path(str(resources.files("unimir") / "demo_corpus"))


def test_query_files(root: Path | None = None) -> list[Path]:
    root = root or demo_corpus()
    return [root / "query" / "test" / name for name in TEST_FILES]


def run_demo(out: "str | Path | None" = None, *, train: bool = True, progress: bool = False) -> int:
    root = demo_corpus()
    out = Path(out) if out else default_cache_dir() / "demo-index"
    print(f"== 1. Index the demo corpus ({root})")
    t0 = time.perf_counter()
    index = Index.build(root / "cand_pool" / "mbeir_demo_cand_pool.jsonl", out, root=root, progress=progress)
    counts = ", ".join(f"{v} {k}" for k, v in index.manifest.modality_counts.items() if v)
    print(f"   {len(index)} items ({counts}) indexed in {time.perf_counter() - t0:.1f} s -> {out}")

    print("\n== 2. Example searches (first test query of each task; * marks a positive)")
    table = InstructionTable.load(root / "instructions" / "query_instructions.tsv")
    for path in test_query_files(root):
        q = read_queries(path)[0]
        target = candidate_modality(q.task_id)
        instruction = table.choose(q.qid, q.dataset_id, q.query_modality, target)
        image = root / q.query_img_path if q.query_img_path else None
        result = index.search(q.query_txt, str(image) if image else None, instruction=instruction,
                              modality=target.value, k=3, exclude_query=True)
        shown = " + ".join(x for x in (q.query_img_path, repr(q.query_txt) if q.query_txt else None) if x)
        print(f"\n   {task_name(q.task_id)}  query: {shown}\n   instruction: {instruction}")
        for h in result.hits:
            mark = "*" if h.did in q.pos_cand_list else " "
            content = " | ".join(x for x in (h.img_path, h.txt) if x)
            print(f"    {mark}{h.rank}. {h.score:.3f}  {h.did:<8} {content[:70]}")

    print("\n== 3. Evaluation on the demo test queries (Recall@K in %, random baseline beside it)")
    # exclude_query: a composed query's own image is never the answer (as in CIRR's protocol)
    results = evaluate(index, test_query_files(root), ks=(1, 5, 10), progress=progress, exclude_query=True)
    print(format_table(results))
    if not train:
        _where(out, "dense")
        return 0

    print("\n== 4. Train generative retrieval (GENIUS: semantic IDs + ID generator) on the training split")
    from .training import train as train_generative
    from .training import training_pairs

    t0 = time.perf_counter()
    pairs = training_pairs(index, [root / "query" / "train" / "mbeir_demo_train.jsonl"], progress=progress)
    report = train_generative(index, pairs, progress=progress)
    c = report.collisions
    print(f"   {len(pairs)} (query, positive) pairs; trained in {time.perf_counter() - t0:.0f} s; "
          f"quantizer {index.generative.quantizer.config.spec}: {c.n_distinct} distinct IDs for {c.n_items} items, "
          f"largest bucket {c.max_bucket}")

    print("\n== 5. Dense and generative retrieval side by side (Recall@K in %)")
    for mode in ("generative", "generative-rerank", "quantize"):
        results += evaluate(index, test_query_files(root), ks=(1, 5, 10), mode=mode, progress=progress,
                            exclude_query=True)
    print(format_comparison(results))
    _where(out, "generative-rerank")
    return 0


def _where(out: Path, mode: str) -> None:
    """The real location of the index (by default under $UNIMIR_CACHE_DIR, not the current folder)."""
    print(f"\n   The demo index is in {out.resolve()} (choose the place with 'unimir demo --out DIR'). Try it:")
    print(f"   unimir search {shlex.quote(str(out.resolve()))} --text 'a red apple' --modality image --mode {mode}")


__all__ = ["run_demo", "demo_corpus", "test_query_files"]
