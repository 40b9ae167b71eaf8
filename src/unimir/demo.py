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


# The unseen-target split (scripts/build_unseen_split.py): the generative model trains on queries whose positives lie
# in the training half of the pool; "unseen" test queries have their positives in the other half.
SPLIT_TASKS = (0, 3, 4, 7)
SETTINGS = ("unseen, test pool", "unseen, union", "seen, union")


def split_query_files(kind: str, root: Path | None = None) -> list[Path]:
    """``kind`` "unseen" (positives in the test pool) or "seen" (positives are training targets)."""
    root = root or demo_corpus()
    return [root / "query" / "test" / f"mbeir_demo_{kind}_task{t}_test.jsonl" for t in SPLIT_TASKS]


def unseen_train_file(root: Path | None = None) -> Path:
    return (root or demo_corpus()) / "query" / "train" / "mbeir_demo_unseen_train.jsonl"


def test_pool_file(root: Path | None = None) -> Path:
    return (root or demo_corpus()) / "cand_pool" / "mbeir_demo_unseen_test_cand_pool.jsonl"


def test_pool_index(union: Index, out: "str | Path | None" = None, progress: bool = False) -> Index:
    """The test half of the demo pool as its own index, carrying ``union``'s trained model with codes for its
    own items (its features come from the embedding cache when ``union`` was built first)."""
    from .generator import GenerativeRetriever

    root = demo_corpus()
    index = Index.build(test_pool_file(root), out, root=root, encoder=union.encoder, progress=progress)
    g = union.generative
    if g is not None:
        retriever = GenerativeRetriever(g.quantizer, g.generator)
        retriever.train_configs = dict(g.train_configs)
        retriever.index(index.feature_rows, index.modality_codes)
        retriever.learned_rows = len(retriever)
        index.generative = retriever
        if out is not None:
            index.save()
    return index


def setting_index(setting: str, union: Index, test_index: Index) -> tuple[Index, list[Path]]:
    kind, pool = setting.split(", ")
    return (test_index if pool == "test pool" else union), split_query_files(kind)


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

    print("\n== 4. Train generative retrieval (GENIUS: semantic IDs + ID generator) on the unseen-target split's "
          "training queries\n   (their positives are the training half of the pool; the other half is never a "
          "training target)")
    from .eval.diagnose import format_diagnosis
    from .training import train as train_generative
    from .training import training_pairs

    t0 = time.perf_counter()
    pairs = training_pairs(index, [unseen_train_file(root)], progress=progress)
    report = train_generative(index, pairs, progress=progress)
    c = report.collisions
    print(f"   {pairs.num_groups} training queries ({len(pairs)} pairs of paraphrase and positive, drawn per "
          f"query and epoch); trained in {time.perf_counter() - t0:.0f} s; "
          f"quantizer {index.generative.quantizer.config.spec}: {c.n_distinct} distinct IDs for {c.n_items} items, "
          f"largest bucket {c.max_bucket}")
    test_index = test_pool_index(index, out.parent / f"{out.name}-testpool")

    print("\n== 5. Dense and generative retrieval side by side (Recall@K in %; unseen targets first)")
    for setting in SETTINGS:
        where, files = setting_index(setting, index, test_index)
        results = []
        for mode in ("dense", "generative", "generative-rerank", "quantize"):
            results += evaluate(where, files, ks=(1, 5, 10), mode=mode, progress=progress, exclude_query=True,
                                diagnose=mode == "generative")
        print(f"\n   -- {setting} ({len(where)} candidates)")
        print(format_comparison(results))
        print(_mean_line(results))
        print("   where generative recall is lost:")
        print(format_diagnosis([(r.task, r.extra.get("diagnosis", {})) for r in results if r.mode == "generative"]))
    _where(out, "generative-rerank")
    return 0


def _mean_line(results) -> str:
    """Mean headline recall over tasks per mode, with the ratio to dense."""
    by_mode: dict[str, list[float]] = {}
    for r in results:
        by_mode.setdefault(r.mode, []).append(r.recall[str(r.headline_k)])
    dense = sum(by_mode["dense"]) / len(by_mode["dense"])
    parts = [f"{m} {100 * sum(v) / len(v):.1f}" + ("" if m == "dense" else f" ({sum(v) / len(v) / dense:.2f}x)")
             for m, v in by_mode.items()]
    return "   mean over tasks, R@5: " + ", ".join(parts)


def _where(out: Path, mode: str) -> None:
    """The real location of the index (by default under $UNIMIR_CACHE_DIR, not the current folder)."""
    print(f"\n   The demo index is in {out.resolve()} (choose the place with 'unimir demo --out DIR'). Try it:")
    print(f"   unimir search {shlex.quote(str(out.resolve()))} --text 'a red apple' --modality image --mode {mode}")


__all__ = ["SETTINGS", "demo_corpus", "run_demo", "setting_index", "split_query_files", "test_pool_file",
           "test_pool_index", "test_query_files", "unseen_train_file"]
