"""``Index``: the one backend object. Build, load, add, delete, search; the CLI, the Python API and the server use it.

Storage (see ``store.py``, ``segments.py``, ``records.py``): an index is a list of immutable segments committed
by an atomic manifest switch; records live in SQLite, each item's dense vector once, in the vector store's own
form (fp16 for ``flat``), everything memory-mapped on load. The items' parts (what generative training learns
from) are stored too only with ``keep_parts`` (``unimir index --keep-parts``); otherwise ``features_at``
re-encodes the records when training asks for them. An opened index holds per item a modality byte in anonymous
memory (plus the compact generative codes and trie when a generative model is loaded).
Global rows number the rows of all segments in order; deleted rows keep their number (tombstones) until
``compact`` rewrites the live rows into one segment.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import os
import secrets
import shutil
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image as PILImage

from .. import atomic
from ..data.images import bytes_digest, file_digest, image_suffix, open_image
from ..data.ingest import Pool, read_pool, within_root
from ..data.mbeir import format_text, query_text
from ..data.problems import Problems
from ..data.records import INDEX_MEDIA, Candidate, Modality, SourceRows, modality_mismatch, parse_modalities
from ..data.textio import check_text, id_problem
from ..encoders import EmbeddingCache, Encoder, Features, Item, fuse, fusion_of, load_encoder
from ..errors import IndexFormatError, InvalidInputError, NotFoundError, UnimirError, UnimirWarning
from ..ranking import Ranking
from .dense import DenseSpec, FaissStore
from .retrievers import DEFAULT_BEAMS, RETRIEVERS
from .segments import CODES_FILE, IMAGE_BIT, TEXT_BIT, Segment
from .store import (
    Manifest,
    SegmentEntry,
    checksums,
    clear_unfinished,
    commit_manifest,
    fsync_tree,
    generation_name,
    now,
    previous_manifest,
    read_current,
    remove_orphans,
    write_lock,
)
from .vectors import VectorStore

MODES = tuple(RETRIEVERS)
MAX_K = 1000
MAX_BEAMS = 256  # one limit for the CLI, the Python API and the server: beam search memory grows with B
SEGMENT_ROWS = 262_144  # rows per segment when building from features (bounds the working set)
FUSE_BATCH = 16_384  # rows fused at a time

__all__ = ["Index", "SearchHit", "SearchResult", "MODES", "MAX_K", "MAX_BEAMS", "DEFAULT_BEAMS", "INDEX_MEDIA"]


@dataclass
class SearchHit:
    rank: int
    did: str
    modality: str
    score: float
    txt: str | None
    img_path: str | None
    tie_group: int

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "did": self.did, "modality": self.modality, "score": self.score,
                "txt": self.txt, "img_path": self.img_path, "tie_group": self.tie_group}


@dataclass
class SearchResult:
    hits: list[SearchHit]
    mode: str
    query_text: str | None  # the text the encoder saw: instruction + query, formatted
    timings_ms: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "query_text": self.query_text, "timings_ms": self.timings_ms,
                "results": [h.to_json() for h in self.hits]}


@dataclass(frozen=True)
class _State:
    """What a search reads, swapped as a whole by writers so that readers always see one consistent version."""

    segments: tuple[Segment, ...] = ()
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # first row of each segment
    modality: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))  # int8 [rows]
    deleted: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted global rows

    @property
    def rows(self) -> int:
        return int(self.modality.shape[0])

    def locate(self, rows: np.ndarray) -> np.ndarray:
        """Segment position of each global row."""
        return np.searchsorted(self.starts, rows, side="right") - 1


class Index:
    """A searchable candidate pool: segments of records and vectors, a vector store and, once trained, a
    generative model. ``len(index)`` counts live (not deleted) items."""

    def __init__(self, manifest: Manifest, vectors: VectorStore, *, path: Path | None = None,
                 root: Path | None = None, encoder: Encoder | None = None, device: str | None = None):
        self.manifest, self.vectors = manifest, vectors
        self.device = device  # where the encoder and the generative model run (None: cpu)
        # fusion belongs to the encoder; its policy is known from the spec without loading the model
        self.fusion = encoder.fusion if encoder is not None else fusion_of(manifest.encoder)
        self.path = Path(path) if path else None
        self.root = Path(root) if root else (Path(manifest.root) if manifest.root else None)
        self._encoder = encoder
        self._state = _State()
        self._generative = None
        self._generative_saved = True  # False once a new model is set and not yet written
        self._generative_skipped = False  # loaded with generative=False: the stored model is kept on commits
        self._warned_fingerprint = False
        self._write_lock = threading.Lock()  # writers are serialised; searches read immutable snapshots
        self._unsaved_deletes: set[str] = set()  # ids deleted with save=False: written by the next commit

    # --- construction --------------------------------------------------------------------------------------
    @classmethod
    def _new(cls, encoder: "str | Encoder", dim: int, index: str, fusion_weights, root: Path,
             device: str | None = None, keep_parts: bool = False) -> "Index":
        spec = DenseSpec.parse(index)
        enc_spec = encoder if isinstance(encoder, str) else encoder.spec
        manifest = Manifest(encoder=enc_spec, dim=dim, index_spec=spec.spec, root=str(root), created=now(),
                            fusion_weights=tuple(float(w) for w in fusion_weights), parts=bool(keep_parts),
                            encoder_fingerprint=None if isinstance(encoder, str) else encoder.fingerprint)
        return cls(manifest, FaissStore(dim, spec), root=root, encoder=None if isinstance(encoder, str) else encoder,
                   device=device)

    @classmethod
    def build(cls, source: "str | Path | Sequence[Candidate]", out: "str | Path | None" = None, *,
              root: "str | Path | None" = None, encoder: "str | Encoder" = "builtin", index: str = "flat",
              fusion_weights: tuple[float, float] = (1.0, 1.0), problems: Problems | None = None,
              progress: bool = False, batch_size: int | None = None, cache: bool = True,
              features: "str | Path | Features | None" = None, allow_outside_root: bool = False,
              device: str | None = None, keep_parts: bool = False) -> "Index":
        """Encode a pool (M-BEIR jsonl, image folder, text file, or a list of Candidate) into a new index.

        ``features`` (a ``.safetensors`` file, a folder of ``.npy`` files or a :class:`Features`) gives the
        candidates' vectors computed elsewhere, one row per pool record in pool order; nothing is encoded then.
        Bad items are skipped and recorded in ``problems`` (``Problems(strict=True)`` fails on the first one).
        Saved atomically to ``out`` when given. Image paths that leave the data root are refused unless
        ``allow_outside_root``; ``device`` (cpu, cuda) is where the encoder runs. ``keep_parts`` stores each item's
        fp16 parts besides its dense vector (about 1.5 KB more per part at d = 768): generative training then reads
        them instead of re-encoding the pool, which an index built from ``features`` cannot do without them.
        """
        quiet_sink = problems is None
        problems = problems if problems is not None else Problems()
        if out is not None:
            previous_manifest(Path(out))  # refuse a folder that is not an index before any encoding work
        if isinstance(source, (str, Path)):
            pool = read_pool(source, root, problems, allow_outside_root=allow_outside_root)
        else:
            pool = Pool(list(source), Path(root or ".").resolve(), SourceRows(total=len(source)))
            pool.positions.rows.extend(range(len(source)))
        candidates, root_path, positions = pool.candidates, pool.root, pool.positions
        if features is not None:
            from .features import read_features

            feats = read_features(features) if not isinstance(features, Features) else features
            if len(feats) != positions.total:
                skipped = f", {positions.skipped} of them skipped as bad" if positions.skipped else ""
                raise InvalidInputError(f"{features if not isinstance(features, Features) else 'features'}: "
                                        f"{len(feats)} rows for {positions.total} pool records{skipped} (one row "
                                        "per record, in pool order)")
            enc = encoder
            if not isinstance(enc, str) and enc.dim != feats.dim:
                raise InvalidInputError(f"features are {feats.dim}-d but encoder {enc.spec!r} is {enc.dim}-d")
            idx = cls._new(enc, feats.dim, index, fusion_weights, root_path, device, keep_parts)
            idx.manifest.outside_root = allow_outside_root
            idx.add_features(candidates, feats, out=Path(out) if out is not None else None,
                             rows=None if positions.skipped == 0 else np.frombuffer(positions.rows, np.int64))
            if quiet_sink:
                _warn_skipped(problems)
            return idx
        enc = load_encoder(encoder, device=device) if isinstance(encoder, str) else encoder
        idx = cls._new(enc, enc.dim, index, fusion_weights, root_path, device, keep_parts)
        try:
            idx.add(candidates, problems=problems, progress=progress, batch_size=batch_size, cache=cache,
                    save=False, allow_outside_root=allow_outside_root)
        finally:
            pool.locate(problems)
        if not len(idx):
            raise InvalidInputError("no item could be indexed" + (f": {len(problems)} skipped, the first: "
                                                                  f"{problems.items[0]}" if len(problems) else ""))
        if quiet_sink:
            _warn_skipped(problems)
        if out is not None:
            idx.save(out)
        return idx

    @classmethod
    def load(cls, path: "str | Path", *, root: "str | Path | None" = None, encoder: Encoder | None = None,
             generative: bool = True, device: str | None = None) -> "Index":
        """Open an index directory (memory-mapped). ``root`` overrides the data root recorded at build time;
        ``generative=False`` skips the generative model (to retrain it from scratch); ``device`` (cpu, cuda) is
        where the encoder and the generative model run.

        Damaged or inconsistent files raise :class:`IndexFormatError`, never a raw parser error."""
        path = Path(path)
        if root and not Path(root).is_dir():  # else every image would be "missing" later, one request at a time
            raise NotFoundError(f"data root {root} is not a folder: give the folder the pool's image paths are "
                                "relative to")
        for attempt in range(3):
            m = Manifest.read(path)
            try:
                store = FaissStore(m.dim, m.index_spec)
                index = cls(m, store, path=path, root=Path(root) if root else None, encoder=None, device=device)
                index._open_from(m, generative=generative)
                if encoder is not None:
                    index.encoder = encoder  # the same checks as any encoder swapped in
                return index
            except (IndexFormatError, InvalidInputError) as exc:
                # a writer (a compaction) may have replaced this version while it was being opened: try the new one
                if attempt == 2 or not _generation_changed(path, m):
                    if isinstance(exc, IndexFormatError):
                        raise
                    raise IndexFormatError(f"{path}: {exc}; rebuild the index with 'unimir index'") from None
        raise AssertionError("unreachable")

    def writer_lock(self):
        """The inter-process lock of this index's directory (re-entrant; a no-op for an unsaved index).

        Hold it around a check-then-add that must not interleave with another writer (the server does)."""
        return write_lock(self.path) if self.path is not None else contextlib.nullcontext()

    def catch_up(self) -> bool:
        """Catch up with the directory: if another writer committed a newer version, adopt it (segments not yet
        committed by this object are kept). Returns whether anything was re-read."""
        if self.path is None:
            return False
        with self._write_lock:
            try:
                latest = Manifest.read(self.path)
            except NotFoundError:
                return False
            if latest.generation == self.manifest.generation:
                return False
            self._adopt(latest, keep=[s for s in self._state.segments if s.folder is None])
            return True

    def _open_from(self, m: Manifest, *, generative: bool = True) -> None:
        """(Re)open every segment the manifest lists; the index's in-memory state becomes exactly that version."""
        path = self.path
        assert path is not None
        if m.files.get("dense_template"):
            self.vectors.load_state(path / m.files["dense_template"])
        for seg in self._state.segments:
            if seg.folder is not None:  # persisted: reopened below; pending (in-memory) ones are the caller's
                self.vectors.drop_segment(seg.name)
                seg.close()
        segments = []
        for entry in m.segments:
            seg = Segment.open(path / entry.name, entry.name, entry.first_row,
                               path / entry.codes if entry.codes else None, parts=m.parts)
            if seg.rows != entry.rows:
                raise IndexFormatError(f"{path / entry.name}: manifest says {entry.rows} rows, found {seg.rows}; "
                                       "rebuild the index")
            self.vectors.open_segment(entry.name, path / entry.name, entry.first_row, entry.rows)
            segments.append(seg)
        deleted = np.zeros(0, np.int64)
        if m.files.get("tombstones"):
            try:
                deleted = np.load(path / m.files["tombstones"], allow_pickle=False).astype(np.int64)
            except (OSError, ValueError) as exc:
                raise IndexFormatError(f"{path}: unreadable tombstones ({exc}); rebuild the index") from None
        self.vectors.set_deleted(deleted)
        self._state = _make_state(segments, deleted)
        if self._state.rows != m.num_rows or self.live_count() != m.num_items:
            raise IndexFormatError(f"{path}: manifest says {m.num_items} items but the segments hold "
                                   f"{self.live_count()}; rebuild the index")
        self._generative, self._generative_saved = None, True
        self._generative_skipped = not generative and bool(m.files.get("generative"))
        if generative and m.files.get("generative"):
            self._generative = self._open_generative(path / m.files["generative"], segments)
            if "learned_rows" not in (m.generative or {}):  # saved before index-time refresh: it knows every row
                self._generative.learned_rows = len(self._generative)
        self.manifest = m

    def _open_generative(self, folder: Path, segments: list[Segment]):
        from ..devices import resolve_device
        from ..generator import GenerativeRetriever

        retriever = GenerativeRetriever.load(folder, resolve_device(self.device), with_codes=False)
        if retriever.extra.get("encoder") != self.manifest.encoder:  # never search with codes of another encoder
            raise IndexFormatError(f"{folder}: the generative model was trained for another encoder than this "
                                   "index holds; run 'unimir train' again")
        if any(s.codes is None for s in segments):
            raise IndexFormatError(f"{folder}: some segments have no generative codes; run 'unimir train' again")
        width, dtype = retriever.quantizer.config.code_length, retriever.codes.dtype  # the trie's compact type
        # each segment's codes file is read once into one compact array (uint8 for 256-code levels; v2 wrote int16)
        codes = np.concatenate([np.asarray(s.codes).astype(dtype) for s in segments]) if segments else \
            np.zeros((0, width), dtype)
        retriever.index_codes(codes)
        return retriever

    # --- generative model ----------------------------------------------------------------------------------
    @property
    def generative(self):
        return self._generative

    @generative.setter
    def generative(self, retriever) -> None:
        """Install a (newly trained) generative retriever whose codes cover every row; ``save`` writes it."""
        if retriever is not None and len(retriever) != self._state.rows:
            raise InvalidInputError(f"the generative retriever codes {len(retriever)} rows; this index has "
                                    f"{self._state.rows}")
        self._generative, self._generative_saved = retriever, retriever is None
        self._generative_skipped = False

    # --- persistence ---------------------------------------------------------------------------------------
    def save(self, path: "str | Path | None" = None) -> Path:
        """Commit what is not on disk yet (in-memory segments, a new generative model) with one manifest switch.

        Saving to another directory than the index's own writes a full copy there."""
        path = Path(path) if path is not None else self.path
        if path is None:
            raise InvalidInputError("no index directory given to save to")
        if self.path is not None and path.resolve() != self.path.resolve():
            return self._copy_to(path)
        with self._write_lock:
            self._commit(path, fresh=[s for s in self._state.segments if s.folder is None])
        return path

    def _copy_to(self, path: Path) -> Path:
        previous_manifest(path)
        clone = Index(copy.deepcopy(self.manifest), FaissStore(self.manifest.dim, self.manifest.index_spec),
                      root=self.root, encoder=self._encoder)
        clone.manifest.segments, clone.manifest.files, clone.manifest.generation = [], {}, 0
        clone.vectors.load_state(self.path / self.manifest.files["dense_template"])
        live = np.setdiff1d(np.arange(self._state.rows), self._state.deleted)
        cands, stored, digests = self._rows_content(live)
        clone.add_features(cands, stored.as_features(self.manifest.dim), digests, out=path)
        return path

    def _commit(self, path: Path, *, fresh: Sequence[Segment] = (), deleted: np.ndarray | None = None,
                replace: bool = False) -> None:
        """Under the directory lock: adopt what other writers committed, write ``fresh`` segments (appended after
        the newest rows), the tombstones and a new generative model if any, then switch the manifest."""
        path.mkdir(parents=True, exist_ok=True)
        with write_lock(path):
            clear_unfinished(path)
            current = read_current(path)
            if current is not None and self.path is not None and current.generation != self.manifest.generation \
                    and not replace:
                self._adopt(current, keep=fresh)
            if self._unsaved_deletes and deleted is None and not replace:
                deleted = self._state.deleted  # the tombstones delete(save=False) left in memory (and _adopt kept)
            m = copy.deepcopy(self.manifest)
            m.generation = (current.generation if current else 0) + 1
            if replace:
                m.segments = []
                m.files = {k: v for k, v in m.files.items() if k in ("dense_template", "generative")}
            if "dense_template" not in m.files or current is None:
                m.files["dense_template"] = generation_name("dense-template", m.generation, ".faiss")
                self.vectors.save_state(path / m.files["dense_template"])
            first = m.num_rows
            for i, seg in enumerate(fresh):
                # a unique name: a crash after the rename leaves a folder no later segment can collide with
                name = f"{generation_name('seg', m.generation)}-{i:03d}{secrets.token_hex(2)}"
                self._rebase(seg, name, first)
                tmp = path / f".{name}.tmp"
                tmp.mkdir()
                try:
                    seg.write(tmp)
                    self.vectors.write_segment(seg.name, tmp)
                    fsync_tree(tmp)
                except Exception as exc:
                    shutil.rmtree(tmp, ignore_errors=True)  # our own half-written folder: give its space back
                    if atomic.disk_full(exc):
                        raise OSError(errno.ENOSPC, "no space left on device while writing a new segment; free "
                                      "some space and run the command again (the index is unchanged)",
                                      str(path)) from None
                    raise
                tmp.replace(path / name)
                codes = f"{name}/{CODES_FILE}" if seg.codes is not None else None
                m.segments.append(SegmentEntry(name, first, seg.rows, codes))
                first += seg.rows
            if deleted is not None:
                if len(deleted):
                    m.files["tombstones"] = generation_name("tombstones", m.generation, ".npy")
                    atomic.write_npy(path / m.files["tombstones"], np.ascontiguousarray(deleted))
                else:
                    m.files.pop("tombstones", None)
            written: set[str] = {e.name for e in m.segments[len(m.segments) - len(fresh):]} if fresh else set()
            if self._generative is not None and not self._generative_saved:
                self._write_generative(path, m)
                written.add(m.files["generative"])
            elif self._generative is None and (fresh or not self._generative_skipped):
                m.files.pop("generative", None)  # new rows without codes: the model no longer covers the pool
                m.generative = None
                for entry in m.segments:
                    entry.codes = None
            if deleted is not None and m.files.get("tombstones"):
                written.add(m.files["tombstones"])
            if current is None or m.files["dense_template"] != (current.files.get("dense_template") if current
                                                                else None):
                written.add(m.files["dense_template"])
            listed = m.listed_files()
            m.checksums = {k: v for k, v in m.checksums.items() if k.split("/", 1)[0] in listed
                           and k.split("/", 1)[0] not in written} | checksums(path, written)
            m.deleted = len(deleted) if deleted is not None else len(self._state.deleted)
            m.num_items = m.num_rows - m.deleted
            m.modality_counts = self._counts_after(fresh, deleted)
            commit_manifest(path, m, current)
            self.path = path
            self.manifest = m
            self._unsaved_deletes = set()
            self._reopen_fresh(path, fresh)
            if deleted is not None:
                self.vectors.set_deleted(deleted)
                self._state = _make_state(list(self._state.segments), deleted)
            self._generative_saved = True

    def _rebase(self, seg: Segment, name: str, first_row: int) -> None:
        old = seg.name
        if old in self.vectors.segments:  # type: ignore[attr-defined]
            parts = self.vectors.segments[old]  # type: ignore[attr-defined]
            self.vectors.drop_segment(old)
            self.vectors.segments = {**self.vectors.segments, name: parts}  # type: ignore[attr-defined]
        seg.name = name
        if seg.first_row != first_row:
            seg.first_row = first_row
            self.vectors.rebase_segment(name, first_row)
            self._state = _make_state(list(self._state.segments), self._state.deleted)

    def _reopen_fresh(self, path: Path, fresh: Sequence[Segment]) -> None:
        """Swap freshly written in-memory segments for their memory-mapped files (frees their RAM)."""
        if not fresh:
            return
        entries = {e.name: e for e in self.manifest.segments}
        opened = {}
        for seg in fresh:
            e = entries[seg.name]
            opened[seg.name] = Segment.open(path / e.name, e.name, e.first_row, path / e.codes if e.codes else None,
                                            parts=self.manifest.parts)
            self.vectors.open_segment(e.name, path / e.name, e.first_row, e.rows)
            seg.close()
        self._state = _make_state([opened.get(s.name, s) for s in self._state.segments], self._state.deleted)

    def _adopt(self, current: Manifest, keep: Sequence[Segment]) -> None:
        """Another process committed since we read the manifest: take its version, keeping our pending segments."""
        pending = list(keep)
        retrained = self._generative if not self._generative_saved else None  # a new model not yet committed
        self._open_from(current, generative=retrained is None and (self._generative is not None or
                                                                   bool(current.files.get("generative"))))
        if retrained is not None:  # it replaces the directory's model: code the adopted rows with it
            retrained.index(self.feature_rows, self.modality_codes)
            self._generative, self._generative_saved, self._generative_skipped = retrained, False, False
        state = self._state
        self._state = _make_state(list(state.segments) + pending, state.deleted)
        first = state.rows
        for seg in pending:  # re-number after the adopted rows
            seg.first_row = first
            self.vectors.rebase_segment(seg.name, first)
            first += seg.rows
        self._state = _make_state(list(state.segments) + pending, state.deleted)
        if self._generative is not None and pending:
            for seg in pending:
                seg.codes = self._generative.quantizer.compute_codes(seg.features(), seg.modality.astype(np.int64))
            self._generative.index_codes(np.concatenate([self._generative.codes] + [s.codes for s in pending]))
        again = self.rows_of(self._unsaved_deletes) if self._unsaved_deletes else {}
        if again:  # deletions not committed yet, resolved in the adopted version (rows may have moved)
            deleted = np.union1d(self._state.deleted, np.fromiter(again.values(), np.int64, len(again)))
            self.vectors.set_deleted(deleted)
            self._state = _make_state(list(self._state.segments), deleted)

    def _write_generative(self, path: Path, m: Manifest) -> None:
        g = self._generative
        name = generation_name("generative", m.generation)
        folder = path / name
        g.save(folder, extra={"encoder": self.manifest.encoder}, with_codes=False)
        codes = np.asarray(g.codes)
        for entry in m.segments:
            part = codes[entry.first_row:entry.first_row + entry.rows]
            np.save(folder / f"codes-{entry.name}.npy", part, allow_pickle=False)
            entry.codes = f"{name}/codes-{entry.name}.npy"
        fsync_tree(folder)
        m.files["generative"] = name
        m.generative = {"quantizer": g.quantizer.config.spec, "generator": g.generator is not None,
                        "collisions": g.stats.to_dict(), "health": g.health, "learned_rows": g.learned_rows}

    def _counts_after(self, fresh: Sequence[Segment], deleted: np.ndarray | None) -> dict[str, int]:
        modality = self._state.modality
        gone = self._state.deleted if deleted is None else deleted
        live = np.ones(len(modality), bool)
        live[gone[gone < len(modality)]] = False
        return {mod.value: int(((modality == mod.code) & live).sum()) for mod in Modality}

    # --- encoder -------------------------------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        """The encoder named in the manifest, loaded on first use."""
        if self._encoder is None:
            enc = load_encoder(self.manifest.encoder, device=self.device)
            if enc.dim != self.manifest.dim:
                raise InvalidInputError(f"encoder {enc.spec!r} is {enc.dim}-d but this index holds "
                                        f"{self.manifest.dim}-d vectors")
            self._check_fingerprint(enc)
            self._encoder = enc
        return self._encoder

    @encoder.setter
    def encoder(self, encoder: Encoder) -> None:
        """Swap in an equivalent encoder (a wrapper that batches requests, the same model on another device)."""
        if encoder.spec != self.manifest.encoder or encoder.dim != self.manifest.dim:
            raise InvalidInputError(f"encoder {encoder.spec!r} ({encoder.dim}-d) does not match this index's "
                                    f"{self.manifest.encoder!r} ({self.manifest.dim}-d)")
        self._check_fingerprint(encoder)
        self._encoder = encoder
        self.fusion = encoder.fusion

    def _check_fingerprint(self, encoder: Encoder) -> None:
        """Refuse an encoder that computes other vectors than the ones stored (new weights behind the same spec,
        e.g. ``builtin`` before and after its default changed); warn where the index recorded no fingerprint."""
        built_by = self.manifest.encoder_fingerprint
        where = self.path or "this index"
        if built_by is None:
            if self.manifest.num_items and not self._warned_fingerprint:
                self._warned_fingerprint = True
                warnings.warn(f"{where}: the index records no encoder fingerprint (built by an older unimir or from "
                              f"--features), so it cannot tell whether {encoder.spec!r} still computes its vectors; "
                              "an old 'builtin' index holds ConSE vectors (today's 'builtin-conse'): rebuild it if "
                              "results look wrong", UnimirWarning, stacklevel=3)
            return
        if encoder.fingerprint != built_by:
            raise InvalidInputError(f"{where} was built by encoder {self.manifest.encoder!r} with fingerprint "
                                    f"{built_by[:12]}, but {encoder.spec!r} now computes other vectors (fingerprint "
                                    f"{encoder.fingerprint[:12]}); rebuild the index with 'unimir index'")

    def fuse(self, features: Features, batch: int = FUSE_BATCH) -> np.ndarray:
        """Score-fusion vectors of parts, float32 [n, d], under this index's encoder policy and fusion weights:
        the one place the index fuses. ``batch`` rows at a time, so that fusing a segment of fp16 parts needs its
        float32 result and a few batches, not several float32 copies of all of it."""
        if len(features) <= batch:
            return fuse(features, self.fusion, self.manifest.fusion_weights)
        out = np.empty((len(features), features.dim), np.float32)
        for start in range(0, len(features), batch):
            out[start:start + batch] = fuse(features[start:start + batch], self.fusion, self.manifest.fusion_weights)
        return out

    # --- sizes and lookups -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.live_count()

    def live_count(self) -> int:
        return self._state.rows - len(self._state.deleted)

    @property
    def num_rows(self) -> int:
        """Rows of all segments, deleted ones included (rankings index this row space)."""
        return self._state.rows

    @property
    def deleted_rows(self) -> np.ndarray:
        return self._state.deleted

    @property
    def modality_codes(self) -> np.ndarray:
        """int8 [rows]: the modality code of every row (deleted rows included)."""
        return self._state.modality

    def modality_counts(self) -> dict[Modality, int]:
        """Live items per modality."""
        counts = self._counts_after((), None)
        return {m: counts[m.value] for m in Modality}

    def rows_of(self, dids: "Sequence[str] | set[str]") -> dict[str, int]:
        """Global rows of the live items among ``dids`` (absent and deleted ids are left out)."""
        state = self._state
        dids = list(dict.fromkeys(dids))
        pairs = [(did, seg.first_row + local) for seg in state.segments
                 for did, local in seg.records.rows_of(dids).items()]
        if len(state.deleted) and pairs:
            live = ~np.isin(np.fromiter((r for _, r in pairs), np.int64, len(pairs)), state.deleted)
            pairs = [p for p, keep in zip(pairs, live) if keep]
        return dict(pairs)  # were an id live twice (`info --check` reports it), its newest row would win

    def candidates_at(self, rows: Sequence[int]) -> list[Candidate]:
        """Records of global rows, in the given order (one SQL query per segment and 900 rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        state = self._state
        if len(rows) and (rows.min() < 0 or rows.max() >= state.rows):
            raise NotFoundError(f"row out of range 0..{state.rows - 1}")
        where = state.locate(rows)
        found: dict[int, Candidate] = {}
        for s in np.unique(where):
            seg = state.segments[s]
            local = rows[where == s] - seg.first_row
            found.update({seg.first_row + r: c for r, c in seg.records.fetch(local.tolist()).items()})
        return [found[int(r)] for r in rows]

    def digests_at(self, rows: Sequence[int]) -> list[str | None]:
        rows = np.asarray(rows, dtype=np.int64)
        state = self._state
        where = state.locate(rows)
        found: dict[int, str | None] = {}
        for s in np.unique(where):
            seg = state.segments[s]
            found.update({seg.first_row + r: d for r, d in seg.records.digests((rows[where == s] -
                                                                                 seg.first_row).tolist()).items()})
        return [found[int(r)] for r in rows]

    def get(self, did: str) -> Candidate:
        row = self.rows_of([did]).get(did)
        if row is None:
            raise NotFoundError(f"no item with id {did!r} in this index")
        return self.candidates_at([row])[0]

    def __contains__(self, did: object) -> bool:
        return isinstance(did, str) and did in self.rows_of([did])

    @property
    def row_of(self) -> "RowLookup":
        """A read-only mapping did -> global row over the on-disk records (no dict of all ids is built)."""
        return RowLookup(self)

    @property
    def candidates(self) -> "CandidateRows":
        """A read-only sequence of records by global row; iterating yields the live items in row order."""
        return CandidateRows(self)

    def features_at(self, rows: Sequence[int]) -> Features:
        """float32 parts of global rows: read from the memory-mapped fp16 segments where the index keeps parts,
        else computed again by the index's encoder from the records (through the embedding cache, so rows encoded
        before cost a lookup). An index built from ``--features`` without ``--keep-parts`` has no way back to its
        parts and says so."""
        rows = np.asarray(rows, dtype=np.int64)
        state = self._state
        where = state.locate(rows)
        out = Features.empty(self.manifest.dim, len(rows))
        missing = []
        for s in np.unique(where):
            seg, sel = state.segments[s], np.flatnonzero(where == s)
            if not seg.has_parts:
                missing.append(sel)
                continue
            f = seg.features(rows[sel] - seg.first_row)
            out.image[sel], out.text[sel], out.image_mask[sel], out.text_mask[sel] = \
                f.image, f.text, f.image_mask, f.text_mask
        if missing:
            sel = np.concatenate(missing)
            f = self._encode_rows(rows[sel])
            out.image[sel], out.text[sel], out.image_mask[sel], out.text_mask[sel] = \
                f.image, f.text, f.image_mask, f.text_mask
        return out

    def _encode_rows(self, rows: np.ndarray) -> Features:
        """Parts of stored rows by encoding their records again (an index that keeps no parts)."""
        where = self.path or "this index"
        try:
            encoder = self.encoder
        except UnimirError as exc:
            raise InvalidInputError(f"{where} keeps no part vectors and its encoder cannot compute them again "
                                    f"({exc}); rebuild it with 'unimir index --keep-parts' (and --features)") from None
        cands, digests = self.candidates_at(rows), self.digests_at(rows)
        items = [Item(c.txt, self.image_path(c) if c.img_path else None, name=c.did, image_digest=d)
                 for c, d in zip(cands, digests)]
        cache = EmbeddingCache()
        try:
            feats, ok = encoder.encode(items, "candidate", cache=cache)
        finally:
            cache.close()
        if not ok.all():
            raise InvalidInputError(f"{where}: item {cands[int(np.flatnonzero(~ok)[0])].did!r} can no longer be "
                                    "encoded (keeps no part vectors); restore its image or rebuild with --keep-parts")
        return feats

    @property
    def features(self) -> Features:
        """Every row's parts as float32 (materialised: 8·d bytes per row; meant for training, not for serving)."""
        return self.features_at(np.arange(self._state.rows))

    @property
    def segment_names(self) -> tuple[str, ...]:
        """The segments' names, in row order (a segment's name never changes, nor do its rows)."""
        return tuple(seg.name for seg in self._state.segments)

    @property
    def stores_parts(self) -> bool:
        """Whether every segment keeps its part vectors (else ``features_at`` encodes some rows again)."""
        return all(seg.has_parts for seg in self._state.segments)

    @property
    def feature_rows(self) -> "_LazyFeatures":
        """Every row's parts as a lazy feature source: ``feature_rows[rows]`` reads only those rows (training)."""
        return _LazyFeatures(self)

    @property
    def fused(self) -> "FusedRows":
        """The candidates' stored dense vectors as a lazy [rows, d] array: ``fused[rows]`` reads only those rows
        from the vector store (the vectors dense search scores with)."""
        return FusedRows(self)

    def image_path(self, cand: Candidate) -> Path:
        """The file behind a candidate's image. Only paths recorded in the index ever reach the filesystem."""
        if not cand.img_path:
            raise NotFoundError(f"item {cand.did!r} has no image")
        if cand.img_path.startswith(INDEX_MEDIA):
            if self.path is None:
                raise NotFoundError(f"item {cand.did!r}: its image lives in an unsaved index")
            folder, _, name = cand.img_path[len(INDEX_MEDIA):].partition("/")
            if folder != "media" or not name or "/" in name or "\\" in name or name in (".", ".."):
                raise NotFoundError(f"item {cand.did!r}: {cand.img_path!r} is not an image stored in this index")
            return self.path / "media" / name
        p = Path(cand.img_path)
        if p.is_absolute() or self.root is None:
            return p
        return self.root / p

    def served_image_path(self, cand: Candidate) -> Path:
        """:meth:`image_path`, refused (``NotFoundError``) when the file resolves outside the place its record
        names: the data root for a relative path, the index's media folder for an upload, and for an absolute
        path (an add from another folder) one of the manifest's ``roots``, unless the index was given
        ``allow_outside_root`` (the manifest's ``outside_root``). A symlink put there after indexing cannot hand
        out other files."""
        path = self.image_path(cand)
        if cand.img_path.startswith(INDEX_MEDIA):
            bases = [self.path / "media"]
        elif not Path(cand.img_path).is_absolute():
            if self.root is None:
                raise NotFoundError(f"the image of item {cand.did!r} has no data root to be served from")
            bases = [self.root]
        elif self.manifest.outside_root:
            return path
        else:  # recorded absolutely by an add from another folder: served from the roots adds recorded
            bases = [b for b in [self.root, *map(Path, self.manifest.roots)] if b is not None]
        real = os.path.realpath(path)
        if not any(real.startswith(os.path.realpath(b).rstrip(os.sep) + os.sep) for b in bases):
            raise NotFoundError(f"the image of item {cand.did!r} resolves outside the index's data roots; it is not "
                                "served")
        return path

    # --- adding --------------------------------------------------------------------------------------------
    def add(self, candidates: Sequence[Candidate], *, root: "str | Path | None" = None,
            problems: Problems | None = None, progress: bool = False, batch_size: int | None = None,
            cache: bool = True, save: bool = True, replace: bool = False, refresh: bool = True,
            allow_outside_root: bool = False) -> int:
        """Encode and append candidates as one new segment; returns how many were added.

        With a trained generator and ``refresh``, a short index-time fine-tune teaches it the new items' IDs
        (``GenerativeRetriever.refresh``) before the commit; ``refresh=False`` defers that to
        ``unimir train --stage index``.

        Image paths resolve against ``root`` (default: the index's data root). Items with an id already in the
        index are skipped and recorded in ``problems`` (or raise, when it is strict or not given), unless
        ``replace`` is true: then the old item is deleted in the same commit (an update). The new segment is
        committed when the index has a directory and ``save`` is true; if that fails, the directory keeps the
        previous version and the in-memory index is rolled back to it before the error is raised.

        Images from another root are recorded by absolute path and that root joins the manifest's ``roots``, the
        folders the server hands images out from; ``allow_outside_root`` says the caller let images from anywhere
        in (the manifest's ``outside_root``).
        """
        problems = problems if problems is not None else Problems(strict=True)
        candidates = list(candidates)  # a generator is read once, not used up by the id check
        root_path = Path(root).resolve() if root else self.root
        fresh, seen = [], set()
        real_root = None if root_path is None else root_path.resolve()
        folders: dict[str, str] = {}  # resolved once per folder, not per image
        candidates = [checked for c in candidates
                      if (checked := self._checked_candidate(c, real_root, problems, allow_outside_root, folders))]
        existing = self.rows_of([c.did for c in candidates])
        for c in candidates:
            if c.did in seen or (c.did in existing and not replace):
                problems.add(f"duplicate candidate id {c.did!r}", item=c.did)
                continue
            seen.add(c.did)
            if c.txt is not None:
                c = Candidate(c.did, c.modality, format_text(c.txt), c.img_path, c.src_content)
            foreign_root = root_path is not None and root_path != self.root
            if c.img_path and foreign_root and not c.img_path.startswith(INDEX_MEDIA):
                c = Candidate(c.did, c.modality, c.txt, str((root_path / c.img_path).resolve()), c.src_content)
            fresh.append(c)
        if not fresh:
            return 0
        digests = [_digest_or_none(self.image_path(c)) if c.img_path else None for c in fresh]
        items = [Item(c.txt, self.image_path(c) if c.img_path else None, name=c.did, image_digest=d)
                 for c, d in zip(fresh, digests)]
        enc_cache = EmbeddingCache() if cache else None
        try:
            feats, ok = self.encoder.encode(items, "candidate", batch_size=batch_size, progress=progress,
                                            cache=enc_cache, problems=problems)
        finally:
            if enc_cache:
                enc_cache.close()
        kept = [c for c, good in zip(fresh, ok) if good]
        kept_digests = [d for d, good in zip(digests, ok) if good]
        if not kept:
            return 0
        # Encoding ran unlocked; the id check is repeated under the directory lock, after catching up with what
        # other writers committed meanwhile, so two adds of one id cannot both land.
        with self.writer_lock() if save else contextlib.nullcontext():
            if save and self.catch_up() and not replace:
                taken = self.rows_of([c.did for c in kept])
                for c in kept:
                    if c.did in taken:
                        problems.add(f"duplicate candidate id {c.did!r} (another writer added it meanwhile)",
                                     item=c.did)
                if taken:
                    rows = np.asarray([i for i, c in enumerate(kept) if c.did not in taken], np.int64)
                    kept, kept_digests = [kept[i] for i in rows], [kept_digests[i] for i in rows]
                    if not kept:
                        return 0
                    feats = feats[rows]
            if any(c.img_path and not c.img_path.startswith(INDEX_MEDIA) for c in kept):  # after catching up
                if root_path is not None and root_path != self.root and str(root_path) not in self.manifest.roots:
                    self.manifest.roots = [*self.manifest.roots, str(root_path)]
                self.manifest.outside_root = self.manifest.outside_root or allow_outside_root
            self._append(kept, feats, kept_digests, save=save, replace=replace, refresh=refresh, log=progress)
        return len(kept)

    def _checked_candidate(self, c: Any, root: Path | None, problems: Problems, allow_outside_root: bool,
                           folders: dict[str, str]) -> Candidate | None:
        """The checks a pool file's reader makes, for candidates given as objects: a record-like id, a modality
        that matches the fields set, an image path inside the data root ``root`` (resolved) or, for an upload,
        this index's media folder. None (reported) when one fails."""
        if not isinstance(c, Candidate):
            problems.add(f"expected a Candidate, got {type(c).__name__}")
            return None
        why = id_problem(c.did)
        if why:
            problems.add(why, item=str(c.did), field_name="did")
            return None
        try:
            modality = Modality.parse(c.modality)
        except InvalidInputError as exc:
            problems.add(str(exc), item=c.did, field_name="modality")
            return None
        has_text, has_image = isinstance(c.txt, str) and bool(c.txt.strip()), isinstance(c.img_path, str) \
            and bool(c.img_path)
        why = modality_mismatch(modality, has_text, has_image)
        if why:
            problems.add(why, item=c.did, field_name="modality")
            return None
        if has_image and c.img_path.startswith(INDEX_MEDIA):  # an upload: only this index's media folder
            try:
                self.image_path(c)
            except NotFoundError as exc:
                problems.add(str(exc), item=c.did, field_name="img_path")
                return None
        elif has_image and not allow_outside_root and root is not None and not within_root(root, c.img_path,
                                                                                          folders):
            problems.add(f"image path {c.img_path!r} leaves the data root {root}; pass allow_outside_root=True to "
                         "index it anyway", item=c.did, field_name="img_path")
            return None
        return c if modality is c.modality else Candidate(c.did, modality, c.txt, c.img_path, c.src_content)

    def add_features(self, candidates: Sequence[Candidate], features: Features, digests=None, *,
                     out: Path | None = None, chunk: int = SEGMENT_ROWS, rows: np.ndarray | None = None) -> None:
        """Append candidates with precomputed parts (bring-your-own embeddings), ``chunk`` rows per segment.
        ``rows`` gives each candidate's row of ``features`` (default: the same position).

        With ``out``, each chunk is committed as it is built (memory stays at one chunk), else kept in memory."""
        n = len(candidates)
        digests = list(digests) if digests is not None else [None] * n
        if not self.vectors.is_trained:
            size = self.vectors.train_size(n)  # type: ignore[attr-defined]
            pick = np.sort(np.random.default_rng(0).choice(n, size, replace=False)) if size < n else np.arange(n)
            self.vectors.train(self.fuse(features[pick if rows is None else rows[pick]]))
        for start in range(0, n, chunk):
            part = slice(start, min(n, start + chunk))
            # read in the file's own precision (fp16 parts: half the bytes of float32)
            feats = features[part if rows is None else rows[part]]
            joint = None if feats.joint is None else np.asarray(feats.joint)
            feats = Features(np.asarray(feats.image), np.asarray(feats.text), np.asarray(feats.image_mask, bool),
                             np.asarray(feats.text_mask, bool), joint)
            self._append(list(candidates[part]), feats, digests[part], save=out is not None, path=out)

    def _append(self, kept: list[Candidate], feats: Features, digests: list[str | None], *, save: bool = True,
                path: Path | None = None, replace: bool = False, refresh: bool = False, log: bool = False) -> None:
        with self._write_lock:
            path = path or self.path
            first = self._state.rows
            codes_c0 = np.asarray([c.modality.code for c in kept], dtype=np.int8)
            if not self.vectors.is_trained:  # a first add trains on what it adds
                n = len(kept)
                size = self.vectors.train_size(n)  # type: ignore[attr-defined]
                self.vectors.train(self.fuse(feats[np.arange(n)[:size]]))
            codes = None
            if self._generative is not None:
                codes = self._generative.quantizer.compute_codes(feats, codes_c0.astype(np.int64))
                codes = codes.astype(self._generative.codes.dtype)
            name = f"mem-{time.monotonic_ns()}"
            seg = Segment.from_features(name, first, kept, digests, feats, codes, keep_parts=self.manifest.parts)
            self.vectors.add_segment(name, self.fuse(feats), codes_c0, first)
            old_gen_codes = None if self._generative is None else self._generative.codes
            previous = self._state
            deleted = None
            if replace:
                again = self.rows_of([c.did for c in kept])
                if again:
                    deleted = np.union1d(previous.deleted, np.fromiter(again.values(), np.int64))
            self._state = _make_state(list(previous.segments) + [seg], previous.deleted)
            if codes is not None:
                self._generative.index_codes(np.concatenate([old_gen_codes, codes]))
            refreshed = self._after_append(kept, refresh=refresh, log=log)
            if save and path is not None:
                try:
                    self._commit(path, fresh=[seg], deleted=deleted)
                except BaseException:
                    # roll back to what the directory holds: the failed append leaves no trace in memory either
                    self.vectors.drop_segment(seg.name)
                    seg.close()
                    committed = read_current(path) if self.path is not None else None
                    if committed is not None and committed.generation != self.manifest.generation:
                        self._open_from(committed, generative=self._generative is not None)  # adopted meanwhile
                    else:
                        self._state = previous
                        if codes is not None:
                            self._generative.index_codes(old_gen_codes)
                        if refreshed is not None:  # the fine-tuned weights are not on disk: reread the model
                            self._reload_generative()
                    raise
            elif deleted is not None:
                self.vectors.set_deleted(deleted)
                self._state = _make_state(list(self._state.segments), deleted)

    def _after_append(self, kept: list[Candidate], *, refresh: bool = False, log: bool = False):
        """What follows an append, before its commit: with ``refresh`` and a trained generator, the index-time
        fine-tune on the rows it does not know yet (the model is then written with the segment). Returns its
        report, or None when nothing was done."""
        g = self._generative
        if not refresh or g is None or g.generator is None:
            return None
        report = g.refresh(_LazyFeatures(self), log=log)
        self._generative_saved = False
        return report

    def _reload_generative(self) -> None:
        """Reopen the committed generative model (drops in-memory changes to it); none when none is committed."""
        if self.path is None or not self.manifest.files.get("generative"):
            self._generative, self._generative_saved = None, True
            return
        self._generative = self._open_generative(self.path / self.manifest.files["generative"],
                                                 list(self._state.segments))
        self._generative_saved = True

    def add_upload(self, *, text: str | None = None, image: bytes | None = None, did: str | None = None,
                   src_content: str | None = None) -> Candidate:
        """Add one item from raw content (the server's POST /items); an image is stored inside the index."""
        if self.path is None:
            raise InvalidInputError("this index has no directory to store uploaded images in")
        if (text is None or not text.strip()) and not image:
            raise InvalidInputError("an item needs a text, an image or both")
        img_path = None
        if image:
            open_image(image, name="uploaded image")  # refuse undecodable bytes before storing them
            media = self.path / "media"
            media.mkdir(exist_ok=True)
            target = media / f"{bytes_digest(image)}{image_suffix(image)}"
            if not target.exists():
                atomic.write_bytes(target, image)
            img_path = f"{INDEX_MEDIA}media/{target.name}"
        did = did or f"u:{bytes_digest((text or '').encode() + (image or b''))[:12]}"
        cand = Candidate(did, Modality.of(bool(text and text.strip()), bool(image)), text, img_path, src_content)
        self.add([cand])
        return self.get(did)

    # --- deleting ------------------------------------------------------------------------------------------
    def delete(self, ids: Sequence[str], *, missing_ok: bool = False, save: bool = True) -> int:
        """Delete items by id (tombstones; ``compact`` reclaims the space). Unknown ids raise ``NotFoundError``
        before anything is deleted, unless ``missing_ok``. Returns how many were deleted.

        Ids resolve against the directory's latest version (under its lock), so a handle opened before another
        writer's add, delete or compaction deletes what it names and nothing else. With ``save=False`` the
        deletion stays in memory until the next commit of this object (``save``, ``add``, ``delete``)."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        with self.writer_lock() if save else contextlib.nullcontext():
            if save:
                self.catch_up()
            return self._delete(ids, missing_ok=missing_ok, save=save)

    def _delete(self, ids: list[str], *, missing_ok: bool, save: bool) -> int:
        with self._write_lock:
            found = self.rows_of(ids)
            missing = [d for d in dict.fromkeys(ids) if d not in found]
            if missing and not missing_ok:
                shown = ", ".join(map(repr, missing[:5])) + (" ..." if len(missing) > 5 else "")
                raise NotFoundError(f"no item with id {shown} in this index")
            if not found:
                return 0
            deleted = np.union1d(self._state.deleted, np.fromiter(found.values(), np.int64))
            if save and self.path is not None:
                self._commit(self.path, deleted=deleted)
            else:
                self.vectors.set_deleted(deleted)
                self._state = _make_state(list(self._state.segments), deleted)
                self._unsaved_deletes |= set(found)
            return len(found)

    def compact(self) -> int:
        """Rewrite the live rows into one segment (drops tombstones and merges segments); returns rows dropped.

        Generative codes are carried over (no retraining); the vector store is rebuilt from its own stored vectors
        with its trained template (a compressed store re-encodes its decoded vectors). Files that an interrupted
        write of this index left behind (``unimir info --check`` lists them) are removed too.

        The whole rewrite holds the directory's lock, after catching up with other writers, so nothing they
        commit is lost (their adds and deletes wait for it)."""
        with self.writer_lock():
            self.catch_up()
            return self._compact()

    def _compact(self) -> int:
        with self._write_lock:
            state = self._state
            dropped = len(state.deleted)
            live = np.setdiff1d(np.arange(state.rows), state.deleted)
            cands = self.candidates_at(live)
            newest = {c.did: i for i, c in enumerate(cands)}  # an id live twice (an older unimir's race) keeps one
            if len(newest) < len(cands):
                keep = np.fromiter(sorted(newest.values()), np.int64, len(newest))
                dropped += len(cands) - len(keep)
                live, cands = live[keep], [cands[i] for i in keep]
            feats, digests = self._stored_rows(live), self.digests_at(live)
            codes = None if self._generative is None else np.asarray(self._generative.codes)[live]
            for seg in state.segments:
                self.vectors.drop_segment(seg.name)
            name = f"mem-{time.monotonic_ns()}"
            seg = Segment.from_features(name, 0, cands, digests, feats.parts, codes, keep_parts=True) \
                if self.manifest.parts else Segment.without_parts(name, 0, cands, digests, feats.masks, codes)
            self.vectors.set_deleted(np.zeros(0, np.int64))
            self.vectors.add_segment(seg.name, feats.vectors, seg.modality, 0)
            self._state = _make_state([seg], np.zeros(0, np.int64))
            if self._generative is not None:
                g = self._generative
                g.index_codes(codes)
                learned = int((live < g.learned_rows).sum())  # rows move up: keep counting the ones it knows
                if learned != g.learned_rows:
                    g.learned_rows, self._generative_saved = learned, False
            if self.path is not None:
                self._commit(self.path, fresh=[seg], deleted=np.zeros(0, np.int64), replace=True)
                with write_lock(self.path):
                    remove_orphans(self.path, Manifest.read(self.path))
            return dropped

    def _rows_content(self, rows: np.ndarray) -> tuple[list[Candidate], "_StoredRows", list[str | None]]:
        """What a rewrite of ``rows`` carries over: records, stored vectors (and parts when kept), digests."""
        return self.candidates_at(rows), self._stored_rows(rows), self.digests_at(rows)

    def _stored_rows(self, rows: np.ndarray) -> "_StoredRows":
        vectors = self.vectors.reconstruct(rows) if len(rows) else np.zeros((0, self.manifest.dim), np.float32)
        masks = np.zeros(len(rows), np.uint8)
        state = self._state
        where = state.locate(rows)
        for s in np.unique(where):
            seg, sel = state.segments[s], np.flatnonzero(where == s)
            masks[sel] = np.asarray(seg.masks[rows[sel] - seg.first_row])
        parts = self.features_at(rows) if self.manifest.parts else None
        return _StoredRows(vectors, masks, parts)

    # --- search --------------------------------------------------------------------------------------------
    @property
    def modes(self) -> tuple[str, ...]:
        """The retrieval modes this index supports: ``quantize`` needs a trained quantizer, ``generative`` and
        ``generative-rerank`` a trained generator (``unimir train``)."""
        return tuple(name for name, cls in RETRIEVERS.items() if cls.available(self))

    def search(self, text: str | None = None, image: "str | Path | bytes | None" = None, *,
               instruction: str | None = None, modality: "str | Sequence[str] | None" = None, k: int = 10,
               mode: str = "dense", beams: int | None = None, exclude_query: bool = False) -> SearchResult:
        """Search by text, image or both. ``modality`` filters candidates ('image', 'text', 'image,text', or a
        list / 'image|text'); ``exclude_query`` drops candidates identical to the query (same image bytes or
        same text). Scores are cosines for dense mode and log-probabilities for generative modes."""
        t0 = time.perf_counter()
        self._check_request(k, mode, beams)
        for name, value in (("text", text), ("instruction", instruction)):
            if value is not None:
                if not isinstance(value, str):
                    raise InvalidInputError(f"{name} must be a string, got {type(value).__name__}")
                check_text(value, name)
        if image is not None and not isinstance(image, (str, Path, bytes, bytearray, PILImage.Image)):
            raise InvalidInputError(f"image must be a file path, bytes or a PIL image, got {type(image).__name__}")
        has_text = text is not None and text.strip() != ""
        if not has_text and image is None:
            raise InvalidInputError("empty query: give a text, an image or both")
        qtext = query_text(text if has_text else None, instruction)
        allowed = parse_modalities(modality)
        feats, _ = self.encoder.encode([Item(qtext, image, name="query")], "query")
        t1 = time.perf_counter()
        duplicates = self.duplicate_rows(text if has_text else None, image) if exclude_query else set()
        ranking = self.search_features(feats, [allowed], k, mode=mode, beams=beams, exclude=[duplicates])[0].top(k)
        t2 = time.perf_counter()
        cands = self.candidates_at(ranking.indices)
        hits = [SearchHit(i + 1, c.did, c.modality.value, float(s), c.txt, c.img_path, int(g))
                for i, (c, s, g) in enumerate(zip(cands, ranking.scores, ranking.tie_groups))]
        ms = lambda a, b: round((b - a) * 1000, 2)  # noqa: E731
        return SearchResult(hits, mode, qtext, {"encode": ms(t0, t1), "search": ms(t1, t2), "total": ms(t0, t2)})

    def search_features(self, queries: Features, allowed: "Sequence[Sequence[Modality] | None]", k: int, *,
                        mode: str = "dense", beams: int | None = None,
                        exclude: "Sequence[set[int]] | None" = None) -> list[Ranking]:
        """Batch search with encoded queries. ``allowed``: per query, the candidate modalities to consider
        (None = any); ``exclude``: per query, rows to leave out (searched deeper, so that k rows remain when the
        pool has them). Returns one :class:`Ranking` per query over global rows, tie groups whole."""
        self._check_request(k, mode, beams)
        k, beams = int(k), None if beams is None else int(beams)  # numpy integers: FAISS wants a Python int
        codes = [None if a is None else tuple(m.code for m in a) for a in allowed]
        extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        rankings = RETRIEVERS[mode]().search(self, queries, codes, k + extra, beams)
        return rankings if not extra else [r.without(e) for r, e in zip(rankings, exclude)]

    def _check_request(self, k: int, mode: str, beams: int | None = None) -> None:
        if mode not in RETRIEVERS:
            raise InvalidInputError(f"unknown mode {mode!r}: use one of {', '.join(RETRIEVERS)}")
        if not RETRIEVERS[mode].available(self):
            raise InvalidInputError(f"mode {mode!r} {RETRIEVERS[mode].unavailable}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
            raise InvalidInputError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        if beams is not None and (isinstance(beams, bool) or not isinstance(beams, (int, np.integer))
                                  or not 1 <= beams <= MAX_BEAMS):
            raise InvalidInputError(f"beams must be an integer from 1 to {MAX_BEAMS}, got {beams!r}")

    def duplicate_rows(self, text: str | None, image: "str | Path | bytes | None") -> set[int]:
        """Rows identical to a query: the same image bytes, or a text-only item with the same (formatted) text.

        Dense retrievers rank the query's own image first on composed queries; ``exclude_query`` drops these."""
        return self.duplicate_rows_many([(text, image)])[0]

    def duplicate_rows_many(self, queries: Sequence[tuple[str | None, "str | Path | bytes | None"]]) -> list[set[int]]:
        """``duplicate_rows`` for many queries with indexed lookups: one SQL query per segment and 900 keys."""
        digests, texts = [], []
        for text, image in queries:
            digest = None
            if image is not None:
                try:
                    digest = bytes_digest(bytes(image)) if isinstance(image, (bytes, bytearray)) else file_digest(image)
                except OSError:
                    digest = None
            digests.append(digest)
            texts.append(format_text(text) if text is not None else None)
        by_digest: dict[str, set[int]] = {}
        by_text: dict[str, set[int]] = {}
        state = self._state
        wanted_d, wanted_t = {d for d in digests if d}, {t for t in texts if t}
        for seg in state.segments:
            for d, rows in seg.records.rows_with_image(wanted_d).items():
                by_digest.setdefault(d, set()).update(seg.first_row + r for r in rows)
            for t, rows in seg.records.rows_with_text(wanted_t).items():
                by_text.setdefault(t, set()).update(seg.first_row + r for r in rows)
        gone = set(state.deleted.tolist()) if len(state.deleted) else set()
        return [((by_digest.get(d, set()) if d else set()) | (by_text.get(t, set()) if t else set())) - gone
                for d, t in zip(digests, texts)]


class RowLookup(Mapping):
    """``index.row_of``: did -> global row, answered by the records' SQL index."""

    def __init__(self, index: Index):
        self._index = index

    def __getitem__(self, did: str) -> int:
        row = self._index.rows_of([did]).get(did)
        if row is None:
            raise KeyError(did)
        return row

    def __contains__(self, did: object) -> bool:
        return isinstance(did, str) and did in self._index.rows_of([did])

    def __iter__(self) -> Iterator[str]:
        return (c.did for c in self._index.candidates)

    def __len__(self) -> int:
        return len(self._index)


class CandidateRows(Sequence):
    """``index.candidates``: records by global row (``[row]``, deleted rows included, as ``len`` counts them:
    rows are what rankings hold), or the live items in order (iteration). ``index.get(id)`` looks one up by id."""

    def __init__(self, index: Index):
        self._index = index

    def __getitem__(self, row):  # type: ignore[override]
        if isinstance(row, slice):
            return self._index.candidates_at(range(*row.indices(self._index.num_rows)))
        if isinstance(row, str):
            raise InvalidInputError(f"candidates[...] takes a row number; look an id up with index.get({row!r})")
        row = int(row)
        n = self._index.num_rows
        if not -n <= row < n:
            raise IndexError(f"row {row} is out of range for {n} rows")
        return self._index.candidates_at([row % n])[0]

    def __len__(self) -> int:
        return self._index.num_rows

    def __iter__(self) -> Iterator[Candidate]:
        state = self._index._state
        gone = set(state.deleted.tolist())
        for seg in state.segments:
            for i, (c, _) in enumerate(seg.records.scan()):
                if seg.first_row + i not in gone:
                    yield c


class _LazyFeatures:
    """Every row's parts as ``Features`` rows on demand: ``[rows]`` reads only those rows (for the refresh)."""

    def __init__(self, index: Index):
        self._index = index

    def __len__(self) -> int:
        return self._index.num_rows

    @property
    def dim(self) -> int:
        return self._index.manifest.dim

    def __getitem__(self, rows) -> Features:
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        return self._index.features_at(np.atleast_1d(rows))


class FusedRows:
    """A lazy float32 [rows, d] array of the stored dense vectors: indexing with rows reads those rows from the
    vector store (exact for ``flat``, decoded for compressed stores)."""

    dtype = np.dtype(np.float32)

    def __init__(self, index: Index):
        self._index = index
        self.shape = (index.num_rows, index.manifest.dim)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.arange(self.shape[0])[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        return self._index.vectors.reconstruct(np.atleast_1d(rows))


@dataclass
class _StoredRows:
    """Rows as an index stores them, for a rewrite (compaction, a copy): their dense vectors as the vector store
    holds them (the one copy), part masks, and the parts where the index keeps them."""

    vectors: np.ndarray  # float32 [n, d]
    masks: np.ndarray  # uint8 [n], segments.IMAGE_BIT | TEXT_BIT
    parts: Features | None

    def as_features(self, dim: int) -> Features:
        """Features whose dense vector is the stored one (as ``joint``), with the parts when kept, else zeros
        (not stored: the copy keeps no parts either)."""
        if self.parts is not None:
            p = self.parts
            return Features(p.image, p.text, p.image_mask, p.text_mask, self.vectors)
        zeros = np.broadcast_to(np.zeros((1, dim), np.float32), (len(self.masks), dim))
        return Features(zeros, zeros, (self.masks & IMAGE_BIT) != 0, (self.masks & TEXT_BIT) != 0, self.vectors)


def _make_state(segments: list[Segment], deleted: np.ndarray) -> _State:
    starts = np.asarray([s.first_row for s in segments], dtype=np.int64)
    modality = np.concatenate([np.asarray(s.modality) for s in segments]) if segments else np.zeros(0, np.int8)
    return _State(tuple(segments), starts, modality, np.asarray(deleted, dtype=np.int64))


def _generation_changed(path: Path, m: Manifest) -> bool:
    try:
        return Manifest.read(path).generation != m.generation
    except (IndexFormatError, NotFoundError):
        return False


def _warn_skipped(problems: Problems) -> None:
    """Items skipped by a build that was given no ``problems`` sink must not vanish unseen."""
    if len(problems):
        warnings.warn(f"{len(problems)} item(s) skipped (pass problems=Problems() to get them all), the first: "
                      f"{problems.items[0]}", UnimirWarning, stacklevel=3)


def _digest_or_none(path: Path) -> str | None:
    try:
        return file_digest(path)
    except OSError:
        return None  # missing or unreadable: the encoder reports it for this item

