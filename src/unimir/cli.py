"""The ``unimir`` command. Every subcommand is a thin shell over the Python API (``unimir.Index``, ``evaluate``)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .errors import InvalidInputError, UnimirError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other unimir error: ``error: ...`` and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def _int_in(lo: int | None = None, hi: int | None = None, what: str = "an integer"):
    """An argparse type: an integer in [lo, hi]; the message says the range."""
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
        if (lo is not None and n < lo) or (hi is not None and n > hi):
            span = f"from {lo} to {hi}" if lo is not None and hi is not None else f">= {lo}" if lo is not None \
                else f"<= {hi}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {n}")
        return n
    parse.__name__ = "integer"
    return parse


_positive_int = _int_in(1)
_port = _int_in(1, 65535, "a port number")


def _float_in(lo: float, hi: float = math.inf, *, open_lo: bool = False, what: str = "a number"):
    """An argparse type: a finite number in [lo, hi] (or (lo, hi] with ``open_lo``)."""
    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        if not math.isfinite(x) or x < lo or (open_lo and x == lo) or x > hi:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value!r}")
        return x
    parse.__name__ = "number"
    return parse


_positive_float = _float_in(0.0, open_lo=True, what="a positive number")
_non_negative_float = _float_in(0.0, what="a number >= 0")
_fraction = _float_in(0.0, 0.99, what="a share from 0 to 0.99")


def _beams(value: str) -> int:
    from .index.index import MAX_BEAMS  # the one limit the API and the server check too

    return _int_in(1, MAX_BEAMS)(value)


def _k(value: str) -> int:
    from .index.index import MAX_K

    return _int_in(1, MAX_K)(value)


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
    if not (math.isfinite(a) and math.isfinite(b)) or a < 0 or b < 0 or a + b == 0:
        raise argparse.ArgumentTypeError(f"weights must be finite, >= 0 and not both 0; got {value!r}")
    return a, b


def _device(value: str) -> str:
    """cpu, cuda or cuda:N (``main`` checks that it exists before the command runs)."""
    v = value.strip().lower()
    if v in ("cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    raise argparse.ArgumentTypeError(f"unknown device {value!r}: use cpu, cuda or cuda:N")


def _text(value: str) -> str:
    """A text argument; undecodable bytes (the shell passed something that is not UTF-8) are refused."""
    from .data.textio import check_text

    try:
        check_text(value, "the argument")
    except UnimirError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _path(value: str) -> str:
    return _text(value)


def _skipped_option(s: argparse.ArgumentParser) -> None:
    s.add_argument("--skipped", type=_path, metavar="FILE",
                   help="also write every skipped item or query to FILE (JSON lines: path, line, item, message)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="unimir", description="Universal multimodal retrieval: dense and generative "
                "search over text, images and image+text, in the M-BEIR format.")
    p.add_argument("--version", action="version", version=f"unimir {__version__}",
                   help="print the version and exit")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads for torch and FAISS (default: all cores)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress output (a bar on a terminal, a line every 30 s otherwise)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("index", help="encode a pool (M-BEIR jsonl, image folder or text file) into an index")
    s.add_argument("pool", type=_path,
                   help="M-BEIR cand_pool .jsonl, a folder of images, or a .jsonl/.csv/.tsv/.txt of texts")
    s.add_argument("--out", required=True, type=_path,
                   help="index directory to create (an existing unimir index there is replaced atomically; any other "
                   "non-empty folder is refused)")
    s.add_argument("--root", type=_path, help="data root that image paths are relative to (default: next to the pool)")
    s.add_argument("--encoder", default="builtin",
                   help="builtin (offline, default), builtin-conse (offline ConSE baseline), "
                   "hf:<hub id or local dir> or clip-sf:<dir from unimir convert>")
    s.add_argument("--index", default="flat",
                   help="flat (exact, fp16), hnsw[M][,ef<N>], or any FAISS factory string with optional search "
                   "parameters, e.g. 'HNSW32,SQ8', 'IVF4096,PQ64;nprobe=32'")
    s.add_argument("--features", type=_path, help="vectors computed elsewhere, one row per pool record in pool "
                   "order: a .safetensors file or a folder of .npy files (image, text, optional image_mask, "
                   "text_mask); nothing is encoded")
    s.add_argument("--fusion-weights", type=_weights, default=(1.0, 1.0), metavar="W_IMG,W_TXT",
                   help="score-fusion weights of image and text parts (default 1,1)")
    s.add_argument("--keep-parts", action="store_true",
                   help="also store each item's image and text vectors (fp16), not only its dense vector: "
                   "'unimir train' then reads them instead of re-encoding the pool (needed with --features)")
    s.add_argument("--batch-size", type=_positive_int, default=None, help="items per encoder batch")
    s.add_argument("--strict", action="store_true", help="fail on the first bad item instead of skipping it")
    _skipped_option(s)
    s.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    s.add_argument("--allow-outside-root", action="store_true",
                   help="index images whose path leaves the data root (the server will serve them)")

    s = sub.add_parser("add", help="add items to an existing index without rebuilding")
    s.add_argument("index_dir", type=_path, help="the index directory")
    s.add_argument("pool", type=_path, help="same kinds of input as 'unimir index'")
    s.add_argument("--root", type=_path, help="data root that image paths are relative to (default: next to the pool)")
    s.add_argument("--strict", action="store_true", help="fail on the first bad item instead of skipping it")
    _skipped_option(s)
    s.add_argument("--allow-outside-root", action="store_true",
                   help="add images whose path leaves the data root (the server will serve them)")
    s.add_argument("--no-refresh", action="store_true", help="skip the short fine-tune that teaches a trained "
                   "generator the new items (run 'unimir train --stage index' later)")
    s.add_argument("--replace", action="store_true", help="items whose id exists replace the old ones (update)")

    s = sub.add_parser("delete", help="delete items by id (space is reclaimed by 'unimir compact')")
    s.add_argument("index_dir", type=_path, help="the index directory")
    s.add_argument("ids", nargs="+", metavar="ID", type=_text, help="ids of the items to delete")
    s.add_argument("--missing-ok", action="store_true", help="ignore ids that are not in the index")

    s = sub.add_parser("compact", help="rewrite an index into one segment without its deleted items")
    s.add_argument("index_dir", type=_path, help="the index directory")

    s = sub.add_parser("search", help="search an index by text, image or both")
    s.add_argument("index_dir", type=_path, help="the index directory")
    s.add_argument("--text", type=_text, help="query text")
    s.add_argument("--image", type=_path, help="path of a query image")
    s.add_argument("--instruction", type=_text,
                   help='what is wanted, e.g. "Find me an image that matches the caption."')
    s.add_argument("--modality", help="only candidates of this modality: image, text, image,text (or a|b)")
    s.add_argument("--k", type=_k, default=10, help="number of results (default 10)")
    s.add_argument("--mode", default="dense", help="dense, generative, generative-rerank or quantize")
    s.add_argument("--beams", type=_beams, default=None, help="beam width for generative modes (default 50)")
    s.add_argument("--exclude-query", action="store_true", help="drop candidates identical to the query")
    s.add_argument("--root", type=_path, help="override the data root recorded in the index")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")

    s = sub.add_parser("eval", help="Recall@K of an index on M-BEIR query files")
    s.add_argument("index_dir", type=_path, help="the index directory")
    s.add_argument("--queries", action="append", required=True, type=_path, help="M-BEIR query .jsonl (repeatable)")
    s.add_argument("--qrels", action="append", default=[], type=_path,
                   help="qrels file(s); default: pos_cand_list")
    s.add_argument("--root", type=_path, help="data root of the query images (default: the M-BEIR root above query/)")
    s.add_argument("--instructions", type=_path, help="query_instructions.tsv (default: <root>/instructions/...)")
    s.add_argument("--k", type=_ks, default=(1, 5, 10), help="comma-separated cut-offs (default 1,5,10)")
    s.add_argument("--mode", default="dense", help="one mode or a comma-separated list of modes")
    s.add_argument("--beams", type=_beams, default=None, help="beam width for generative modes (default 50)")
    s.add_argument("--seed", type=_int_in(0), default=0, help="seed of the per-query instruction choice")
    s.add_argument("--runs", type=_path,
                   help="write TREC run files (qid Q0 did rank score run) and their tie groups to this folder")
    s.add_argument("--exclude-query", action="store_true",
                   help="drop candidates identical to the query (its own image or text), as CIRR does")
    s.add_argument("--json", dest="json_out", type=_path, help="write results as JSON to this file")
    s.add_argument("--strict", action="store_true", help="fail on the first bad query instead of dropping it")
    _skipped_option(s)
    s.add_argument("--diagnose", action="store_true", help="for generative modes, also show where recall is lost "
                   "(positive's ID among the beams, shortlist sizes, quantizer's exact IDs)")

    s = sub.add_parser("train", help="train the generative retriever (quantizer, then ID generator) of an index")
    s.add_argument("index_dir", type=_path, help="the index directory")
    s.add_argument("--queries", action="append", default=[], type=_path,
                   help="M-BEIR training query .jsonl (repeatable; not needed for --stage index)")
    s.add_argument("--qrels", action="append", default=[], type=_path,
                   help="qrels file(s); default: pos_cand_list")
    s.add_argument("--root", type=_path, help="data root of the query images (default: the M-BEIR root above query/)")
    s.add_argument("--instructions", type=_path, help="query_instructions.tsv (default: <root>/instructions/...)")
    s.add_argument("--stage", default="all", choices=("quantizer", "generator", "index", "all"),
                   help="what to train (default all); index: teach the trained generator items added since "
                   "(after 'unimir add --no-refresh')")
    s.add_argument("--quantizer", help="quantizer spec, e.g. M3+RQ3x64 (levels x codebook size)")
    s.add_argument("--quantizer-epochs", type=_positive_int, default=None, help="quantizer epochs")
    s.add_argument("--epochs", type=_positive_int, default=None, help="generator epochs")
    s.add_argument("--batch-size", type=_positive_int, default=None, help="generator batch size")
    s.add_argument("--lr", type=_positive_float, default=None, help="generator learning rate")
    s.add_argument("--layers", type=_positive_int, default=None, help="generator decoder layers")
    s.add_argument("--d-model", type=_positive_int, default=None, help="generator width")
    s.add_argument("--device", type=_device, default="cpu", help="cpu or cuda (mixed precision on cuda)")
    s.add_argument("--seed", type=_int_in(0), default=0,
                   help="seed of initialisation, shuffling and instruction choice")
    s.add_argument("--checkpoint-dir", type=_path, help="keep resumable checkpoints (and the encoded training "
                   "queries) here")
    s.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    s.add_argument("--strict", action="store_true", help="fail on the first bad query instead of dropping it")
    _skipped_option(s)
    s.add_argument("--fixed-draws", action="store_true", help="train each query with the same instruction "
                   "paraphrase and positive every epoch (default: drawn anew per epoch)")
    # generalisation (docs/bench/generative-ablation.md)
    s.add_argument("--val-share", type=_fraction, default=None, help="share of training targets held out for "
                   "validation and early stopping (default 0.1; 0: none)")
    s.add_argument("--patience", type=_int_in(0), default=None,
                   help="stop after this many validation runs without gain (default 0: run every epoch; the best "
                        "validation weights are kept either way)")
    s.add_argument("--pool-noise", type=_non_negative_float, default=None,
                   help="noise on index-time pool pairs (default 0.5)")
    s.add_argument("--query-draws", type=_positive_int, default=None, help="generator: (query, positive) pairs "
                   "drawn per training query and epoch, beside one pass over the pool pairs (default 4)")
    s.add_argument("--no-pool-pairs", action="store_true", help="train on (query, positive) pairs only")
    s.add_argument("--no-pool-shift", action="store_true", help="no gap-shifted copies of the pool pairs "
                   "(each item's vector moved by its task's mean query-positive offset)")

    s = sub.add_parser("info", help="show an index's manifest, or verify its files with --check")
    s.add_argument("index_dir", type=_path, help="the index directory")
    s.add_argument("--check", action="store_true",
                   help="verify every file of the index (sizes, digests, counts) and say what is wrong (exit 2)")

    s = sub.add_parser("serve", help="serve an index over HTTP, with a search page at /")
    s.add_argument("index_dir", type=_path, help="the index directory")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=_port, default=8000, help="port to listen on (default 8000)")
    s.add_argument("--root", type=_path, help="override the data root recorded in the index")
    s.add_argument("--max-upload-mb", type=_positive_float, default=10.0,
                   help="largest accepted upload (default 10 MB)")

    s = sub.add_parser("demo", help="index the bundled demo corpus, search it and evaluate it")
    s.add_argument("--out", type=_path, help="where to put the demo index (default: $UNIMIR_CACHE_DIR/demo-index)")
    s.add_argument("--fast", action="store_true", help="skip generative training")

    _add_convert_parser(sub)
    _add_device_flags(sub.choices)
    return p


# --- convert: the published UniIR / GENIUS checkpoints into unimir formats ---------------------------------------
def _add_convert_parser(sub) -> None:
    c = sub.add_parser("convert", help="convert UniIR CLIP-SF / GENIUS checkpoints (.pth) into unimir formats")
    kinds = c.add_subparsers(dest="kind", required=True)
    s = kinds.add_parser("clip-sf", help="a UniIR CLIP-SF checkpoint into an encoder directory (clip-sf:DIR)")
    s.add_argument("checkpoint", help="clip_sf_large.pth or clip_sf_base.pth")
    s.add_argument("--out", required=True, help="encoder directory to write (then use --encoder clip-sf:DIR)")
    s.add_argument("--tokenizer", help="CLIP tokenizer: local directory or hub id (default: the matching "
                   "openai/clip-vit-* tokenizer, fetched when online)")
    s = kinds.add_parser("genius", help="GENIUS's quantizer and ID generator into an index built with clip-sf:")
    s.add_argument("rq_checkpoint", help="stage-1 rq_clip_large.pth ('-' to take the quantizer from GEN.pth)")
    s.add_argument("generator_checkpoint", nargs="?", help="stage-2 GENIUS_t5small.pth (omit: quantize mode only)")
    s.add_argument("--index", required=True, dest="index_dir", help="index built with --encoder clip-sf:DIR")
    s.add_argument("--modality-map", help="GENIUS level-0 code of image,text,image+text, e.g. 2,0,1 (default: "
                   "learnt from the pool, reported)")
    s.add_argument("--device", type=_device, default=None, help="cpu or cuda, for computing the pool's codes")


def cmd_convert(args, progress: bool) -> int:
    from . import convert

    if args.kind == "clip-sf":
        print(convert.clip_sf(args.checkpoint, args.out, tokenizer=args.tokenizer).summary())
        return 0
    rq = None if args.rq_checkpoint == "-" else args.rq_checkpoint
    report = convert.genius(rq, args.generator_checkpoint, args.index_dir, modality_map=args.modality_map,
                            device=args.device)
    print(report.summary())
    return 0


# --- --device on every command that encodes or searches -------------------------------------------------------
def _add_device_flags(parsers) -> None:
    for name in ("index", "add", "eval", "search", "serve"):
        parsers[name].add_argument("--device", type=_device, default=None,
                                   help="cpu (default) or cuda: where encoders and generative search run")
    parsers["eval"].add_argument("--no-modality-filter", action="store_true",
                                 help="search all candidates, not only the task's candidate modality (UniIR/GENIUS "
                                 "union-pool protocol)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import faiss
        import torch

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    progress = not args.quiet  # a bar on a terminal, a plain line every 30 s otherwise (unimir.progress)
    _one_line_warnings()
    try:
        _check_outputs(args)
        if getattr(args, "device", None):
            from .devices import resolve_device

            resolve_device(args.device)  # fail before loading anything if CUDA is asked for but absent
        return COMMANDS[args.command](args, progress) or 0
    except UnimirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder the command could not read or write: say which, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # SQLite and FAISS report a full disk without errno: one line, not a traceback
        from .atomic import disk_full

        if not disk_full(exc):
            raise
        print(f"error: no space left on device ({type(exc).__name__}: {exc}); free some space and run the "
              "command again", file=sys.stderr)
        return 2


def _check_outputs(args) -> None:
    """Output files can be written, and none of them is one of the command's inputs (which it would overwrite):
    checked before any work, so a long job does not fail at its end."""
    from .eval.evaluate import check_writable_file

    inputs = []
    for name in ("pool", "queries", "qrels", "features", "instructions"):
        value = getattr(args, name, None)
        inputs += value if isinstance(value, list) else [value] if value else []
    taken = {Path(p).resolve() for p in inputs}
    for flag, out in (("--json", getattr(args, "json_out", None)), ("--skipped", getattr(args, "skipped", None))):
        if out:
            check_writable_file(out, flag)
            if Path(out).resolve() in taken:
                raise InvalidInputError(f"{flag} {out} is one of this command's input files; give another name")


def _one_line_warnings() -> None:
    """unimir's own warnings as 'warning: ...' lines on stderr (Python's default adds a file, a line and code)."""
    import warnings

    from .errors import UnimirWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, UnimirWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def cmd_index(args, progress: bool) -> int:
    from .data.problems import Problems
    from .index import Index

    problems = Problems(strict=args.strict)
    try:
        index = Index.build(args.pool, args.out, root=args.root, encoder=args.encoder, index=args.index,
                            fusion_weights=args.fusion_weights, problems=problems, progress=progress,
                            batch_size=args.batch_size, cache=not args.no_cache,
                            allow_outside_root=args.allow_outside_root, device=args.device, features=args.features,
                            keep_parts=args.keep_parts)
    except UnimirError:
        _report(problems, args)  # what was skipped before the failure often explains it
        raise
    counts = ", ".join(f"{v} {k}" for k, v in index.manifest.modality_counts.items() if v)
    print(f"indexed {len(index)} items ({counts}) with encoder {index.manifest.encoder} "
          f"and index {index.manifest.index_spec} -> {index.path}")
    _report(problems, args)
    return 0


def _report(problems, args=None) -> None:
    """Skipped items and once-per-run notes, on stderr after the command's result; every skipped item to
    ``--skipped FILE`` when given (stderr lists the first ten)."""
    text = problems.report(full_list=getattr(args, "skipped", None))
    if text:
        print(text, file=sys.stderr)
    _write_skipped(problems, args)


def _write_skipped(problems, args) -> None:
    if getattr(args, "skipped", None):
        from .atomic import write_text

        write_text(args.skipped, "".join(json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in problems.items))


def cmd_add(args, progress: bool) -> int:
    from .data.ingest import read_pool
    from .data.problems import Problems
    from .index import Index

    problems = Problems(strict=args.strict)
    index = Index.load(args.index_dir, device=args.device)
    pool = read_pool(args.pool, args.root, problems, allow_outside_root=args.allow_outside_root)
    try:
        added = index.add(pool.candidates, root=pool.root, problems=problems, progress=progress,
                          refresh=not args.no_refresh, replace=args.replace,
                          allow_outside_root=args.allow_outside_root)
    finally:
        pool.locate(problems)
    print(f"added {added} items; the index now holds {len(index)}")
    _report(problems, args)
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

    index = Index.load(args.index_dir, root=args.root, device=args.device)
    result = index.search(args.text, args.image, instruction=args.instruction, modality=args.modality, k=args.k,
                          mode=args.mode, beams=args.beams, exclude_query=args.exclude_query)
    if args.json:
        print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
        return 0
    shown = result.query_text or "(image only)"
    shown = shown if len(shown) <= 300 else f"{shown[:300]}... ({len(shown):,} characters)"  # --json has it whole
    print(f"query: {shown}   [{result.mode}, {result.timings_ms['total']:.0f} ms]")
    print(format_hits(result.hits))
    return 0


def format_hits(hits) -> str:
    lines = [f"{'rank':>4}  {'score':>8}  {'modality':<10}  {'id':<14}  content"]
    for h in hits:
        content = " | ".join(x for x in (h.img_path, h.txt) if x)
        lines.append(f"{h.rank:>4}  {h.score:>8.4f}  {h.modality:<10}  {h.did:<14}  {content[:90]}")
    return "\n".join(lines)


def cmd_eval(args, progress: bool) -> int:
    from .data.problems import Problems
    from .eval import evaluate, format_table, write_json
    from .eval.evaluate import check_writable_dir
    from .index import Index

    if args.runs:  # fail now, not after the evaluation (--json: main's _check_outputs)
        check_writable_dir(args.runs, "--runs")
    problems = Problems(strict=args.strict)
    index = Index.load(args.index_dir, device=args.device)
    results = []
    for mode in [m.strip() for m in args.mode.split(",") if m.strip()]:
        results += evaluate(index, args.queries, qrels=args.qrels, root=args.root, ks=args.k, mode=mode,
                            beams=args.beams, instructions=args.instructions, seed=args.seed, progress=progress,
                            runs_dir=args.runs, exclude_query=args.exclude_query, problems=problems,
                            modality_filter=not args.no_modality_filter, diagnose=args.diagnose)
    _report(problems, args)
    evaluated = sum(r.num_queries for r in results)
    dropped = sum(r.dropped_queries for r in results)
    if not evaluated:
        raise InvalidInputError(f"no query could be evaluated ({dropped} dropped; the reasons are listed above)")
    print(format_table(results))
    if dropped:
        print(f"note: {dropped} of {evaluated + dropped} queries were dropped (the 'dropped' column; reasons above)",
              file=sys.stderr)
    diagnosed = [(f"{r.task or r.queries} ({r.mode})", r.extra["diagnosis"]) for r in results
                 if r.extra.get("diagnosis")]
    if diagnosed:
        from .eval.diagnose import format_diagnosis

        print("\nwhere generative recall is lost:\n" + format_diagnosis(diagnosed))
    missing = sum({(r.queries, r.task): r.missing_positives for r in results}.values())  # once per set, not mode
    if missing:
        print(f"note: {missing} relevant ids are not in this pool; they cap the achievable recall", file=sys.stderr)
    if args.json_out:
        write_json(results, args.json_out, problems)
        print(f"wrote {args.json_out}")
    return 0


def cmd_train(args, progress: bool) -> int:
    from .index.store import Manifest
    from .training import checkpoint_lock

    Manifest.read(Path(args.index_dir))  # a mistyped index fails before the checkpoint folder is created
    with checkpoint_lock(args.checkpoint_dir):  # held from the queries' encoding (kept there) to the last stage
        return _train(args, progress)


def _train(args, progress: bool) -> int:
    from .data.problems import Problems
    from .generator import GeneratorConfig, GeneratorTrainConfig
    from .index import Index
    from .quantizer import QuantizerTrainConfig
    from .training import train, training_pairs

    if args.resume and not args.checkpoint_dir:
        raise InvalidInputError("--resume continues from saved checkpoints: give --checkpoint-dir too")
    problems = Problems(strict=args.strict)
    if args.quantizer is not None:  # a bad spec fails now, not after every training query is encoded
        from .quantizer import QuantizerConfig

        if args.stage in ("generator", "index"):
            raise InvalidInputError(f"--quantizer sets up a new quantizer; --stage {args.stage} keeps the trained "
                                    "one (use --stage quantizer or all to train another)")
        QuantizerConfig.from_spec(args.quantizer)
    # the index stage continues the trained model; the other stages start afresh
    index = Index.load(args.index_dir, generative=args.stage in ("generator", "index"), device=args.device)
    pairs = None
    if args.stage != "index":
        if not args.queries:
            raise InvalidInputError(f"--stage {args.stage} needs --queries (M-BEIR training queries)")
        try:
            pairs = training_pairs(index, args.queries, qrels=args.qrels, root=args.root,
                                   instructions=args.instructions, seed=args.seed, redraw=not args.fixed_draws,
                                   progress=progress, problems=problems,
                                   work_dir=args.checkpoint_dir)  # the encoded queries are kept there for --resume
        except UnimirError:
            _report(problems, args)  # why the queries were dropped, before the error that says none is left
            raise
        _report(problems, args)
        print(f"{pairs.num_groups} training queries from {', '.join(Path(q).name for q in args.queries)}: "
              f"{len(pairs)} pairs of paraphrase and positive, one drawn per query and epoch")
    reported = len(problems)
    pick = lambda **kw: {k: v for k, v in kw.items() if v is not None}  # noqa: E731
    report = train(
        index, pairs, stage=args.stage, quantizer=args.quantizer,
        quantizer_config=QuantizerTrainConfig(**pick(epochs=args.quantizer_epochs, seed=args.seed,
                                                      device=args.device)),
        generator=GeneratorConfig(**pick(num_layers=args.layers, d_model=args.d_model)),
        generator_config=GeneratorTrainConfig(**pick(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                                     seed=args.seed, device=args.device, val_share=args.val_share,
                                                     patience=args.patience, pool_noise=args.pool_noise,
                                                     query_draws=args.query_draws),
                                              pool_pairs=not args.no_pool_pairs, pool_shift=not args.no_pool_shift),
        progress=progress, checkpoint_dir=args.checkpoint_dir, resume=args.resume, log=not args.quiet)
    if len(problems) > reported:  # paraphrases first drawn (and encoded) in later epochs
        print(Problems(items=problems.items[reported:]).report(), file=sys.stderr)
        _write_skipped(problems, args)  # the whole list, the later ones included
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
    from .health import format_report
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
    manifest = Manifest.read(Path(args.index_dir)).to_json()
    print(json.dumps(manifest, indent=2))
    for stage, report in ((manifest.get("generative") or {}).get("health") or {}).items():
        print(format_report(stage, report), file=sys.stderr)  # readable form; stdout stays JSON
    return 0


def cmd_serve(args, progress: bool) -> int:
    from .serve import serve

    serve(args.index_dir, host=args.host, port=args.port, root=args.root,
          max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), device=args.device)
    return 0


def cmd_demo(args, progress: bool) -> int:
    from .demo import run_demo

    return run_demo(args.out, train=not args.fast, progress=progress)


COMMANDS = {"index": cmd_index, "add": cmd_add, "delete": cmd_delete, "compact": cmd_compact, "search": cmd_search,
            "eval": cmd_eval, "train": cmd_train, "info": cmd_info, "serve": cmd_serve, "demo": cmd_demo,
            "convert": cmd_convert}
