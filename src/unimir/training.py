"""``unimir train``: fit the generative retriever of an index from M-BEIR training queries.

Stage ``quantizer`` trains the combiner and codebooks and codes every candidate; stage ``generator`` trains the
ID generator against those codes; ``all`` does both. Everything is stored in the index directory (atomically).

Training streams, so that 1.1M M-BEIR training queries fit one machine (docs/bench/train-scale.md measures it):
a pair is a (query row, candidate row) pair of ints; candidate rows are read from the index's memory-mapped fp16
segments (or, for an index that stores no parts, from a folder of them encoded once: :func:`candidate_features`),
query rows from a folder of fp16 parts (:class:`LazyQueryParts`), and each stage gathers one batch at a time
through a DataLoader over row indices (``quantizer.pairs``). A training query has one pair per instruction
paraphrase and positive; every epoch draws one of them per query (``TrainingPairs.draw``, genius-method.md
§8.10), and a paraphrase is encoded when a draw first needs it: one encoding per query before training starts,
then each epoch only its new draws (with 4 paraphrases, about 44 % of them are drawn by epoch 2 and 90 % by
epoch 8). The price is disk, not RAM: 4·d bytes per encoded (query, paraphrase) row, read through the page cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from . import health
from .atomic import TEMP_SUFFIX, fsync_dir, write_npy
from .data.mbeir import InstructionTable, QrelsTable, read_qrels, read_queries
from .data.problems import Problems
from .data.records import SourceRows
from .dirlock import LockTimeoutError, locked
from .encoders import EmbeddingCache, Features
from .errors import InvalidInputError
from .generator import GenerativeRetriever, GeneratorConfig, GeneratorTrainConfig
from .index import Index
from .index.features import read_features
from .progress import progress_bar
from .quantizer import QuantizerConfig, QuantizerTrainConfig, SemanticQuantizer, TrainingPairs
from .queries import load_instructions, mbeir_root, prepare_queries

STAGES = ("quantizer", "generator", "index", "all")
QUERY_CHUNK = 4096  # queries prepared and encoded at a time (their items, <= 4096 x paraphrases, are held)
QUERY_FEATURES = "query-features"  # folder name (prefix) of the encoded training queries' parts
CANDIDATE_FEATURES = "candidate-features"  # ... and of the candidates' parts, for an index that stores none
ENCODED = "encoded"  # LazyQueryParts: the mask of query rows tried so far


@dataclass
class TrainReport:
    pairs: int
    stages: list[str]
    quantizer: Any = None
    generator: Any = None
    collisions: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def training_pairs(index: Index, query_files: Sequence["str | Path"], *, qrels: Sequence["str | Path"] = (),
                   root: "str | Path | None" = None, instructions: "str | Path | InstructionTable | None" = None,
                   seed: int = 0, redraw: bool = True, progress: bool = False, problems: Problems | None = None,
                   work_dir: "str | Path | None" = None) -> TrainingPairs:
    """The (query, positive) pairs of training queries over this index, one pair per instruction paraphrase and
    positive in the pool, grouped by query: every epoch trains on one drawn pair per query
    (``TrainingPairs.draw``; ``redraw=False`` keeps the first draw for all epochs). Positives absent from the pool
    are skipped.

    The pairs are row indices: query rows into :class:`LazyQueryParts` (:data:`QUERY_FEATURES` under
    ``work_dir``, a temporary folder by default, removed with the pairs), candidate rows into the index's parts
    (:func:`candidate_features`). A paraphrase is encoded when a draw first needs it, so this call encodes one
    per query (the first draw) and each later epoch only the paraphrases it draws for the first time. Queries are
    prepared :data:`QUERY_CHUNK` at a time; a first pass only counts rows, so the parts files are allocated once at
    their final size. The folder's name carries a digest of the encoder and of every query text and image, so a
    rerun with the same ``work_dir`` (``unimir train --checkpoint-dir``) reuses what was encoded. A query whose
    first drawn paraphrase cannot be encoded (an unreadable image) is left out with all its pairs.
    """
    problems = problems if problems is not None else Problems()
    relevant = QrelsTable() if qrels else None
    for path in qrels:
        relevant.merge(read_qrels(path, problems))
    sources = []
    for qfile in map(Path, query_files):
        data_root = Path(root) if root else mbeir_root(qfile) or index.root or qfile.parent
        table = load_instructions(instructions, data_root, seed)
        positions = SourceRows()
        sources.append((qfile, read_queries(qfile, problems, positions=positions), data_root, table, positions))

    def prepared_chunks(sink: Problems):
        for qfile, queries, data_root, table, _ in sources:
            for start in range(0, len(queries), QUERY_CHUNK):
                yield prepare_queries(queries[start:start + QUERY_CHUNK], index, data_root=data_root,
                                      instructions=table, relevant=relevant, all_instructions=True, problems=sink,
                                      source=str(qfile))

    # pass 1: how many query rows, and a digest of what they are (names the cache folder)
    digest = hashlib.sha256(f"{index.encoder.fingerprint}\0{index.manifest.dim}".encode())
    rows = 0
    for prepared in prepared_chunks(Problems()):  # its problems are reported by pass 2
        rows += len(prepared.items)
        for item in prepared.items:
            digest.update(f"{item.text}\0{item.image}\1".encode())
    if rows == 0:
        for _ in prepared_chunks(problems):  # pass 2 would have reported why each query went: report it now
            pass
        read = sum(len(queries) for _, queries, *_ in sources)
        raise InvalidInputError(f"no training pair: {read} queries read, none with a positive in this index"
                                + (f"; {len(problems)} skipped (listed above)" if len(problems) else ""))

    def encode_rows(wanted: np.ndarray):
        """Encode the query rows ``wanted`` (sorted, unique): yields (rows, Features, ok) per prepared chunk."""
        cache, offset = EmbeddingCache(), 0
        try:
            for prepared in prepared_chunks(Problems()):  # preparation problems were reported by pass 2
                n = len(prepared.items)
                lo, hi = np.searchsorted(wanted, [offset, offset + n])
                if hi > lo:
                    items = [prepared.items[i] for i in wanted[lo:hi] - offset]
                    feats, ok = index.encoder.encode(items, "query", cache=cache, problems=problems)
                    yield wanted[lo:hi], feats, ok
                offset += n
                if hi == len(wanted):
                    break
        finally:
            cache.close()

    keepalive = None
    if work_dir is None:
        keepalive = tempfile.TemporaryDirectory(prefix="unimir-train-")
        work_dir = keepalive.name
    queries = LazyQueryParts(Path(work_dir) / f"{QUERY_FEATURES}-{digest.hexdigest()[:16]}", rows,
                             index.manifest.dim, encode_rows, progress=progress)

    # pass 2: the pairs as row arrays (query row, positive row, target modality, query group); nothing is encoded
    columns: list[list[np.ndarray]] = [[], [], [], []]
    offset = group = 0
    unmatched: set[str] = set()  # queries none of whose positives is in the index
    for prepared in prepared_chunks(problems):
        rows_of = index.rows_of({d for rel in prepared.relevant for d in rel})  # one batched lookup
        chunk, previous = [], None
        for i, (query, target, rel) in enumerate(zip(prepared.queries, prepared.targets, prepared.relevant)):
            if query is not previous:  # a query's paraphrases are consecutive items of the same record
                group, previous = group + 1, query
            found = [(offset + i, row, target.code if target else int(index.modality_codes[row]), group)
                     for row in (rows_of.get(did) for did in sorted(rel)) if row is not None]
            if not found:
                unmatched.add(query.qid)
            chunk += found
        if chunk:  # int64 arrays per chunk: 32 B per pair, not four Python ints
            for column, values in zip(columns, zip(*chunk)):
                column.append(np.asarray(values, np.int64))
        offset += len(prepared.items)
    if unmatched:
        problems.notice("unmatched", "training queries have no positive in this index and were left out",
                        count=len(unmatched))
    if not columns[0]:
        read = sum(len(queries) for _, queries, *_ in sources)
        raise InvalidInputError(f"no training pair: {read} queries read, none with a positive in this index"
                                + (f"; {len(problems)} skipped (listed above)" if len(problems) else ""))
    query_rows, positive_rows, targets, groups = (np.concatenate(c) for c in columns)
    pairs = TrainingPairs(queries, candidate_features(index, work_dir, progress=progress),
                          index.modality_codes.astype(np.int64), positive_rows, targets, query_rows, groups,
                          redraw=redraw, keepalive=keepalive)
    first = pairs.choose(0, seed)  # encoded now: epoch 0 and the statistics over training queries read these
    encoded = queries.ensure(query_rows[first])
    if not encoded.all():
        if not encoded.any():
            raise InvalidInputError("no training pair: none of the training queries could be encoded")
        pairs = pairs.subset(~np.isin(groups, groups[first[~encoded]]))
    for qfile, queries, _, _, positions in sources:  # what was dropped so far, by file and line
        problems.locate(str(qfile), (q.qid for q in queries), positions.lines)
    return pairs


class LazyQueryParts:
    """The training queries' fp16 parts, encoded when a draw first needs them (``TrainingPairs.draw`` calls
    :meth:`ensure`): a feature source (``len``, ``dim``, ``[rows]``).

    The folder holds ``image.npy`` and ``text.npy`` [rows, d], memory maps allocated at full size (sparse on disk
    until written), the two part masks, and ``encoded.npy`` (rows tried so far, encoded or failed). The masks are
    rewritten atomically after the rows are flushed, so an interrupted run keeps what it encoded and a rerun over
    the same folder encodes only the rest. (One training run per folder at a time.)"""

    def __init__(self, folder: Path, rows: int, dim: int, encode, *, progress: bool = False):
        self.folder, self.encode, self.progress = folder, encode, progress
        if not folder.is_dir():
            writer = _PartsWriter(folder, rows, dim)
            try:
                writer.commit(extra={ENCODED: np.zeros(rows, bool)})
            finally:
                writer.abandon()
        try:
            self.parts = {name: np.load(folder / f"{name}.npy", mmap_mode="r+", allow_pickle=False)
                          for name in ("image", "text")}
            self.masks = {name: np.array(np.load(folder / f"{name}.npy", allow_pickle=False), bool)
                          for name in ("image_mask", "text_mask")}
            file = folder / f"{ENCODED}.npy"
            # a folder written whole by an earlier version has no record of tried rows: its encoded rows are those
            self.tried = (np.array(np.load(file, allow_pickle=False), bool) if file.is_file()
                          else self.masks["image_mask"] | self.masks["text_mask"])
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"{folder}: unreadable encoded training queries ({exc}); remove the folder to "
                                    "encode them again") from None
        shapes = {name: a.shape for name, a in {**self.parts, **self.masks, ENCODED: self.tried}.items()}
        if any(shape[:1] != (rows,) for shape in shapes.values()) or self.parts["image"].shape[1:] != (dim,):
            raise InvalidInputError(f"{folder}: encoded training queries of the wrong shape {shapes} (expected "
                                    f"{rows} rows of d={dim}); remove the folder to encode them again")

    def __len__(self) -> int:
        return int(self.tried.shape[0])

    @property
    def dim(self) -> int:
        return int(self.parts["image"].shape[1])

    @property
    def image_mask(self) -> np.ndarray:
        return self.masks["image_mask"]

    @property
    def text_mask(self) -> np.ndarray:
        return self.masks["text_mask"]

    def __getitem__(self, rows) -> Features:
        return Features(self.parts["image"][rows], self.parts["text"][rows], self.masks["image_mask"][rows],
                        self.masks["text_mask"][rows])

    def ensure(self, rows: np.ndarray) -> np.ndarray:
        """Encode those of ``rows`` not tried yet; returns bool [len(rows)]: which rows have features."""
        rows = np.asarray(rows, np.int64)
        wanted = np.unique(rows[~self.tried[rows]])
        if len(wanted):
            try:
                with progress_bar(len(wanted), "encode training queries", enabled=self.progress) as bar:
                    for block, feats, ok in self.encode(wanted):
                        # feats holds the rows that encoded; the failed ones keep empty masks
                        _store_rows(self.parts, self.masks, block[ok], feats)
                        self.tried[block] = True
                        bar.update(len(block))
            finally:  # what was encoded is kept, even when an error stops the run
                for part in self.parts.values():
                    part.flush()
                for name, mask in {**self.masks, ENCODED: self.tried}.items():
                    write_npy(self.folder / f"{name}.npy", mask)
        return self.masks["image_mask"][rows] | self.masks["text_mask"][rows]


def candidate_features(index: Index, work_dir: "str | Path", *, progress: bool = False, chunk: int = QUERY_CHUNK):
    """Every indexed row's parts as a feature source for training.

    An index that stores its parts is read in place (``Index.feature_rows``). One that does not (the default)
    would encode rows again, through the embedding cache, for every batch of every epoch: there the parts are
    computed once, :data:`CANDIDATE_FEATURES` under ``work_dir``, and memory-mapped. The folder's name carries a
    digest of the encoder and of the segments, so a rerun over an unchanged index reuses it."""
    if index.stores_parts:
        return index.feature_rows
    digest = hashlib.sha256(f"{index.encoder.fingerprint}\0{index.manifest.dim}\0{index.num_rows}".encode())
    for name in index.segment_names:
        digest.update(f"{name}\0".encode())
    folder = Path(work_dir) / f"{CANDIDATE_FEATURES}-{digest.hexdigest()[:16]}"
    if not folder.is_dir():
        rows = index.num_rows
        writer = _PartsWriter(folder, rows, index.manifest.dim)
        try:
            with progress_bar(rows, "encode candidates for training", enabled=progress) as bar:
                for start in range(0, rows, chunk):
                    block = np.arange(start, min(rows, start + chunk))
                    writer.write(block, index.features_at(block))
                    bar.update(len(block))
            writer.commit()
        finally:
            writer.abandon()
    return read_features(folder)


def _store_rows(parts: dict[str, np.ndarray], masks: dict[str, np.ndarray], rows: np.ndarray, feats) -> None:
    """Features of ``rows`` into a parts folder's fp16 memory maps and its masks."""
    parts["image"][rows] = feats.image.astype(np.float16)
    parts["text"][rows] = feats.text.astype(np.float16)
    masks["image_mask"][rows], masks["text_mask"][rows] = feats.image_mask, feats.text_mask


class _PartsWriter:
    """Writes a parts folder (``image.npy``, ``text.npy`` fp16 [rows, d] memory maps and the two masks)
    under a temporary name beside ``folder``; ``commit`` flushes, syncs and renames it into place."""

    def __init__(self, folder: Path, rows: int, dim: int):
        self.folder = folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=TEMP_SUFFIX))
        self.parts = {name: np.lib.format.open_memmap(self.tmp / f"{name}.npy", "w+", np.float16, (rows, dim))
                      for name in ("image", "text")}
        self.masks = {name: np.zeros(rows, bool) for name in ("image_mask", "text_mask")}

    def write(self, rows: np.ndarray, feats) -> None:
        _store_rows(self.parts, self.masks, rows, feats)

    def commit(self, extra: dict[str, np.ndarray] | None = None) -> None:
        for part in self.parts.values():
            part.flush()
        self.parts.clear()
        for name, mask in {**self.masks, **(extra or {})}.items():
            np.save(self.tmp / f"{name}.npy", mask, allow_pickle=False)
        for file in self.tmp.iterdir():
            with open(file, "rb+") as f:
                os.fsync(f.fileno())
        fsync_dir(self.tmp)
        os.replace(self.tmp, self.folder)
        fsync_dir(self.folder.parent)
        self.tmp = None

    def abandon(self) -> None:
        """After a failure: remove the half-written temporary folder (this writer's own files only)."""
        self.parts.clear()
        if self.tmp is not None and self.tmp.is_dir():
            shutil.rmtree(self.tmp)


@contextmanager
def checkpoint_lock(checkpoint_dir: "str | Path | None") -> Iterator[None]:
    """Hold ``checkpoint_dir`` (created if missing) for one training run. A second run on the same folder fails at
    once with :class:`LockTimeoutError` instead of overwriting the first one's resumable checkpoints and encoding
    its query rows again; no folder, no lock."""
    stack = ExitStack()
    if checkpoint_dir is not None:
        try:
            stack.enter_context(locked(checkpoint_dir, timeout=0))
        except LockTimeoutError:
            raise LockTimeoutError(f"{checkpoint_dir}: another training run is using this checkpoint folder; wait "
                                   "for it to finish or give another --checkpoint-dir") from None
    with stack:
        yield


def train(index: Index, pairs: TrainingPairs | None, *, stage: str = "all", quantizer: str | None = None,
          quantizer_config: QuantizerTrainConfig | None = None, generator: GeneratorConfig | None = None,
          generator_config: GeneratorTrainConfig | None = None, progress: bool = False,
          checkpoint_dir: "str | Path | None" = None, resume: bool = False, save: bool = True,
          log: bool = True, report_to_stderr: bool = True) -> TrainReport:
    """Train the index's generative retriever in place and save the index.

    ``quantizer`` is a spec string such as ``"M3+RQ3x64"`` (default: the QuantizerConfig defaults);
    ``checkpoint_dir`` keeps resumable checkpoints of both stages (``resume=True`` continues from them).
    ``generator_config.val_share`` of the training targets are held out of both stages as unseen validation
    targets: they drive the generator's early stopping and the health reports (``unimir.health``), which are
    printed to stderr (``report_to_stderr``) and stored with the model; ``log`` prints periodic progress lines.
    Stage ``index`` (no pairs needed) is the index-time
    fine-tune of ``GenerativeRetriever.refresh``: it teaches the generator items added since it was trained.
    """
    if stage not in STAGES:
        raise InvalidInputError(f"unknown stage {stage!r}: use one of {', '.join(STAGES)}")
    if pairs is None and stage != "index":
        raise InvalidInputError(f"stage {stage!r} needs training pairs")
    gen_config = generator_config or GeneratorTrainConfig()
    train_pairs, val_pairs = (health.split_validation(pairs, gen_config.val_share, gen_config.seed)
                              if pairs is not None else (None, None))
    if pairs is not None and len(pairs.candidates) != index.num_rows:
        raise InvalidInputError(f"the training pairs were made for a pool of {len(pairs.candidates)} rows, this index "
                                f"has {index.num_rows}: make them again (training_pairs)")
    report = TrainReport(len(pairs) if pairs is not None else 0, [])
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    # stage summaries and health reports are results: always printed; ``log`` is the periodic progress lines
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if report_to_stderr else (lambda text: None)  # noqa: E731
    with checkpoint_lock(ckpt):  # one run per checkpoint folder: resumable state is not shared
        retriever = index.generative
        if stage in ("quantizer", "all"):
            dim = index.manifest.dim
            config = QuantizerConfig.from_spec(quantizer, dim=dim) if quantizer else QuantizerConfig(dim=dim)
            retriever = GenerativeRetriever(SemanticQuantizer(config))
            say(f"[quantizer] training {config.spec} on {train_pairs.num_groups} queries, one of their "
                f"{len(train_pairs)} pairs {'drawn per epoch' if pairs.redraw else 'drawn once for all epochs'} "
                f"({0 if val_pairs is None else val_pairs.num_groups} queries held back for validation)")
            report.quantizer = retriever.fit_quantizer(train_pairs, quantizer_config, progress=progress,
                                                       checkpoint_path=ckpt / "quantizer" if ckpt else None,
                                                       resume=resume, log=log)
            report.collisions = retriever.index(pairs.candidates, index.modality_codes)
            index.generative = retriever
            retriever.health = {"quantizer": health.quantizer_report(index, val_pairs)}
            say(health.format_report("quantizer", retriever.health["quantizer"]))
            report.stages.append("quantizer")
        if stage in ("generator", "all"):
            if retriever is None:
                raise InvalidInputError("train the quantizer first (--stage quantizer or all)")
            index.generative = retriever
            val_small = health.sample(val_pairs)
            validate = (lambda: health.recall(index, val_small, "generative")) if val_small is not None else None
            draws = gen_config.query_draws
            say(f"[generator] training on {train_pairs.num_groups} queries ({draws} drawn pair{'s' * (draws > 1)} each "
                "per epoch)"
                + (f" + {len(index)} index-time pool pairs" if gen_config.pool_pairs else ""))
            report.generator = retriever.fit_generator(train_pairs, gen_config, generator, progress=progress,
                                                       checkpoint_path=ckpt / "generator" if ckpt else None,
                                                       resume=resume, pool=(pairs.candidates, index.modality_codes),
                                                       validate=validate, log=log)
            retriever.health["generator"] = health.generator_report(index, train_pairs, val_pairs)
            say(health.format_report("generator", retriever.health["generator"]))
            report.stages.append("generator")
        if stage == "index":
            if retriever is None or retriever.generator is None:
                raise InvalidInputError("stage 'index' needs a trained generator: run 'unimir train' first")
            if retriever.learned_rows >= len(retriever):  # a fine-tune over known rows would only move weights
                report.extra["refresh"] = {"rows": 0, "replay": 0, "steps": 0}
                say(f"[index] nothing to refresh: the generator knows all {len(retriever)} items")
            else:
                report.extra["refresh"] = retriever.refresh(index.feature_rows, log=log)
                say(f"[index] taught the generator {report.extra['refresh']['rows']} items (with "
                    f"{report.extra['refresh']['replay']} replayed) in {report.extra['refresh']['steps']} steps")
            report.stages.append("index")
        index.generative = retriever
        if save and index.path is not None:
            index.save()
        return report
