"""The ``unimir`` command. Every subcommand is a thin shell over the Python API (``unimir.Index``, ``evaluate``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import UnimirError


def _ks(value: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError("K values must be positive integers")
    return ks


def _weights(value: str) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected IMAGE_WEIGHT,TEXT_WEIGHT such as 1,1; got {value!r}") from None
    return a, b


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unimir", description="Universal multimodal retrieval: dense and generative "
                                "search over text, images and image+text, in the M-BEIR format.")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and FAISS (default: all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("index", help="encode a pool (M-BEIR jsonl, image folder or text file) into an index")
    s.add_argument("pool", help="M-BEIR cand_pool .jsonl, a folder of images, or a .jsonl/.csv/.tsv/.txt of texts")
    s.add_argument("--out", required=True, help="index directory to create (replaced atomically if it exists)")
    s.add_argument("--root", help="data root that image paths are relative to (default: next to the pool)")
    s.add_argument("--encoder", default="builtin", help="builtin (offline, default) or hf:<hub id or local dir>")
    s.add_argument("--index", default="flat",
                   help="flat (exact, fp16), hnsw[M][,ef<N>], or any FAISS factory string with optional search "
                   "parameters, e.g. 'HNSW32,SQ8', 'IVF4096,PQ64;nprobe=32'")
    s.add_argument("--features", help="vectors computed elsewhere, one row per pool record in pool order: a "
                   ".safetensors file or a folder of .npy files (image, text, optional image_mask, text_mask); "
                   "nothing is encoded")
    s.add_argument("--fusion-weights", type=_weights, default=(1.0, 1.0), metavar="W_IMG,W_TXT",
                   help="score-fusion weights of image and text parts (default 1,1)")
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--strict", action="store_true", help="fail on the first bad item instead of skipping it")
    s.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")

    s = sub.add_parser("add", help="add items to an existing index without rebuilding")
    s.add_argument("index_dir")
    s.add_argument("pool", help="same kinds of input as 'unimir index'")
    s.add_argument("--root")
    s.add_argument("--strict", action="store_true")
    s.add_argument("--replace", action="store_true", help="items whose id exists replace the old ones (update)")

    s = sub.add_parser("delete", help="delete items by id (space is reclaimed by 'unimir compact')")
    s.add_argument("index_dir")
    s.add_argument("ids", nargs="+", metavar="ID")
    s.add_argument("--missing-ok", action="store_true", help="ignore ids that are not in the index")

    s = sub.add_parser("compact", help="rewrite an index into one segment without its deleted items")
    s.add_argument("index_dir")

    s = sub.add_parser("search", help="search an index by text, image or both")
    s.add_argument("index_dir")
    s.add_argument("--text")
    s.add_argument("--image", help="path of a query image")
    s.add_argument("--instruction", help='what is wanted, e.g. "Find me an image that matches the caption."')
    s.add_argument("--modality", help="only candidates of this modality: image, text, image,text (or a|b)")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--mode", default="dense", help="dense, generative, generative-rerank or quantize")
    s.add_argument("--beams", type=int, default=None, help="beam width for generative modes")
    s.add_argument("--exclude-query", action="store_true", help="drop candidates identical to the query")
    s.add_argument("--root", help="override the data root recorded in the index")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")

    s = sub.add_parser("eval", help="Recall@K of an index on M-BEIR query files")
    s.add_argument("index_dir")
    s.add_argument("--queries", action="append", required=True, help="M-BEIR query .jsonl (repeatable)")
    s.add_argument("--qrels", action="append", default=[], help="qrels file(s); default: pos_cand_list")
    s.add_argument("--root", help="data root of the query images (default: the M-BEIR root above query/)")
    s.add_argument("--instructions", help="query_instructions.tsv (default: <root>/instructions/...)")
    s.add_argument("--k", type=_ks, default=(1, 5, 10), help="comma-separated cut-offs (default 1,5,10)")
    s.add_argument("--mode", default="dense", help="one mode or a comma-separated list of modes")
    s.add_argument("--beams", type=int, default=None)
    s.add_argument("--seed", type=int, default=0, help="seed of the per-query instruction choice")
    s.add_argument("--runs", help="write TREC run files to this folder")
    s.add_argument("--exclude-query", action="store_true",
                   help="drop candidates identical to the query (its own image or text), as CIRR does")
    s.add_argument("--json", dest="json_out", help="write results as JSON to this file")

    s = sub.add_parser("train", help="train the generative retriever (quantizer, then ID generator) of an index")
    s.add_argument("index_dir")
    s.add_argument("--queries", action="append", required=True, help="M-BEIR training query .jsonl (repeatable)")
    s.add_argument("--qrels", action="append", default=[], help="qrels file(s); default: pos_cand_list")
    s.add_argument("--root", help="data root of the query images (default: the M-BEIR root above query/)")
    s.add_argument("--instructions", help="query_instructions.tsv (default: <root>/instructions/...)")
    s.add_argument("--stage", default="all", choices=("quantizer", "generator", "all"))
    s.add_argument("--quantizer", help="quantizer spec, e.g. M3+RQ3x64 (levels x codebook size)")
    s.add_argument("--quantizer-epochs", type=int, default=None)
    s.add_argument("--epochs", type=int, default=None, help="generator epochs")
    s.add_argument("--batch-size", type=int, default=None, help="generator batch size")
    s.add_argument("--lr", type=float, default=None, help="generator learning rate")
    s.add_argument("--layers", type=int, default=None, help="generator decoder layers")
    s.add_argument("--d-model", type=int, default=None, help="generator width")
    s.add_argument("--device", default="cpu", help="cpu or cuda (mixed precision on cuda)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--checkpoint-dir", help="keep resumable checkpoints here")
    s.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")

    s = sub.add_parser("info", help="show an index's manifest, or verify its files with --check")
    s.add_argument("index_dir")
    s.add_argument("--check", action="store_true",
                   help="verify every file of the index (sizes, digests, counts) and say what is wrong (exit 2)")

    s = sub.add_parser("serve", help="serve an index over HTTP, with a search page at /")
    s.add_argument("index_dir")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--root", help="override the data root recorded in the index")
    s.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload (default 10 MB)")

    s = sub.add_parser("demo", help="index the bundled demo corpus, search it and evaluate it")
    s.add_argument("--out", help="where to put the demo index (default: the unimir cache folder)")
    s.add_argument("--fast", action="store_true", help="skip generative training")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import faiss
        import torch

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    progress = not args.quiet and sys.stderr.isatty() or os.environ.get("UNIMIR_PROGRESS") == "1"
    try:
        return COMMANDS[args.command](args, progress) or 0
    except UnimirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def cmd_index(args, progress: bool) -> int:
    from .data.problems import Problems
    from .index import Index

    problems = Problems(strict=args.strict)
    index = Index.build(args.pool, args.out, root=args.root, encoder=args.encoder, index=args.index,
                        fusion_weights=args.fusion_weights, problems=problems, progress=progress,
                        batch_size=args.batch_size, cache=not args.no_cache, features=args.features)
    counts = ", ".join(f"{v} {k}" for k, v in index.manifest.modality_counts.items() if v)
    print(f"indexed {len(index)} items ({counts}) with encoder {index.manifest.encoder} "
          f"and index {index.manifest.index_spec} -> {index.path}")
    if len(problems):
        print(problems.summary(), file=sys.stderr)
    return 0


def cmd_add(args, progress: bool) -> int:
    from .data.ingest import load_pool
    from .data.problems import Problems
    from .index import Index

    problems = Problems(strict=args.strict)
    index = Index.load(args.index_dir)
    candidates, root = load_pool(args.pool, args.root, problems)
    added = index.add(candidates, root=root, problems=problems, progress=progress, replace=args.replace)
    print(f"added {added} items; the index now holds {len(index)}")
    if len(problems):
        print(problems.summary(), file=sys.stderr)
    return 0


def cmd_delete(args, progress: bool) -> int:
    from .index import Index

    index = Index.load(args.index_dir, generative=False)  # tombstones only: no model needed
    deleted = index.delete(args.ids, missing_ok=args.missing_ok)
    print(f"deleted {deleted} items; the index now holds {len(index)}")
    return 0


def cmd_compact(args, progress: bool) -> int:
    from .index import Index

    index = Index.load(args.index_dir)
    segments = len(index.manifest.segments)
    dropped = index.compact()
    print(f"compacted {segments} segments into 1; dropped {dropped} deleted rows; {len(index)} items")
    return 0


def cmd_search(args, progress: bool) -> int:
    from .index import Index

    index = Index.load(args.index_dir, root=args.root)
    result = index.search(args.text, args.image, instruction=args.instruction, modality=args.modality, k=args.k,
                          mode=args.mode, beams=args.beams, exclude_query=args.exclude_query)
    if args.json:
        print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
        return 0
    print(f"query: {result.query_text or '(image only)'}   [{result.mode}, {result.timings_ms['total']:.0f} ms]")
    print(format_hits(result.hits))
    return 0


def format_hits(hits) -> str:
    lines = [f"{'rank':>4}  {'score':>8}  {'modality':<10}  {'id':<14}  content"]
    for h in hits:
        content = " | ".join(x for x in (h.img_path, h.txt) if x)
        lines.append(f"{h.rank:>4}  {h.score:>8.4f}  {h.modality:<10}  {h.did:<14}  {content[:90]}")
    return "\n".join(lines)


def cmd_eval(args, progress: bool) -> int:
    from .eval import evaluate, format_table, write_json
    from .index import Index

    index = Index.load(args.index_dir)
    results = []
    for mode in [m.strip() for m in args.mode.split(",") if m.strip()]:
        results += evaluate(index, args.queries, qrels=args.qrels, root=args.root, ks=args.k, mode=mode,
                            beams=args.beams, instructions=args.instructions, seed=args.seed, progress=progress,
                            runs_dir=args.runs, exclude_query=args.exclude_query)
    print(format_table(results))
    missing = sum(r.missing_positives for r in results)
    if missing:
        print(f"note: {missing} relevant ids are not in this pool; they cap the achievable recall", file=sys.stderr)
    if args.json_out:
        write_json(results, args.json_out)
        print(f"wrote {args.json_out}")
    return 0


def cmd_train(args, progress: bool) -> int:
    from .generator import GeneratorConfig, GeneratorTrainConfig
    from .index import Index
    from .quantizer import QuantizerTrainConfig
    from .training import train, training_pairs

    index = Index.load(args.index_dir, generative=args.stage == "generator")  # other stages start afresh
    pairs = training_pairs(index, args.queries, qrels=args.qrels, root=args.root, instructions=args.instructions,
                           seed=args.seed, progress=progress)
    print(f"{len(pairs)} training pairs from {', '.join(Path(q).name for q in args.queries)}")
    pick = lambda **kw: {k: v for k, v in kw.items() if v is not None}  # noqa: E731
    report = train(
        index, pairs, stage=args.stage, quantizer=args.quantizer,
        quantizer_config=QuantizerTrainConfig(**pick(epochs=args.quantizer_epochs, seed=args.seed,
                                                      device=args.device)),
        generator=GeneratorConfig(**pick(layers=args.layers, d_model=args.d_model)),
        generator_config=GeneratorTrainConfig(**pick(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                                     seed=args.seed, device=args.device)),
        progress=progress, checkpoint_dir=args.checkpoint_dir, resume=args.resume)
    if report.collisions is not None:
        c = report.collisions
        print(f"semantic IDs: {c.n_distinct} distinct for {c.n_items} items (ratio {c.distinct_ratio:.3f}), "
              f"mean bucket {c.mean_bucket:.2f}, largest bucket {c.max_bucket}")
    if report.generator is not None and report.generator.history:
        last = report.generator.history[-1]
        print("generator: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in last.items()))
    print(f"trained {' + '.join(report.stages)}; modes now available: {', '.join(index.modes)}")
    return 0


def cmd_info(args, progress: bool) -> int:
    from .index.store import Manifest

    if args.check:
        from .index.check import check_index

        problems, summary = check_index(Path(args.index_dir))
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        if problems:
            print(f"error: {len(problems)} problem(s) in {args.index_dir}; rebuild the index with 'unimir index'",
                  file=sys.stderr)
            return 2
        print(summary)
        return 0
    print(json.dumps(Manifest.read(Path(args.index_dir)).to_json(), indent=2))
    return 0


def cmd_serve(args, progress: bool) -> int:
    from .serve import serve

    serve(args.index_dir, host=args.host, port=args.port, root=args.root,
          max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
    return 0


def cmd_demo(args, progress: bool) -> int:
    from .demo import run_demo

    return run_demo(args.out, train=not args.fast, progress=progress)


COMMANDS = {"index": cmd_index, "add": cmd_add, "delete": cmd_delete, "compact": cmd_compact, "search": cmd_search,
            "eval": cmd_eval, "train": cmd_train,
            "info": cmd_info, "serve": cmd_serve, "demo": cmd_demo}
