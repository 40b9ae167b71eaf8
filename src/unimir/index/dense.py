"""Dense retrieval on FAISS: any factory string, one index per (segment, candidate modality), memory-mapped.

Spec strings are FAISS factory strings (``Flat``, ``SQfp16``, ``HNSW32``, ``HNSW32,SQ8``, ``IVF4096,PQ64``,
``OPQ64,IVF65536_HNSW32,PQ64`` ...), optionally followed by search parameters after a ``;`` in FAISS's
``ParameterSpace`` syntax (``HNSW32;efSearch=128``, ``IVF4096,PQ64;nprobe=32``). Today's short specs stay as
aliases: ``flat`` is ``SQfp16`` (exact inner product over fp16 vectors: half of ``Flat``'s bytes, and the
precision the vectors were stored in anyway), ``hnsw32,ef128`` is ``HNSW32;efSearch=128``.

Partitioning by modality makes the candidate-modality filter exact and free (a "find an image" query only ever
searches image rows), which a post-filter on a graph or IVF index would not be. Stores that learn from data
(IVF, PQ, OPQ, SQ8) are trained once, on a sample of the first build, and kept as an empty *template* that every
later segment clones, so appended segments share the centroids and codebooks. Partitions are written with
``faiss.write_index`` and opened with ``IO_FLAG_MMAP`` (IVF lists) or ``IO_FLAG_MMAP_IFC`` (flat codes, HNSW
graphs): they stay in the page cache instead of anonymous memory. An HNSW partition's graph is read front to
back before FAISS opens it and its vectors after, in the background (``_prefetch``), while the page cache has
room for them.

Deleted rows are excluded exactly: each partition knows how many of its rows are deleted and fetches that many
more before dropping them. Ties: whenever the k-th score ties with the last one fetched, the search is repeated
deeper, so no tie group is cut at the boundary.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np

from ..errors import IndexFormatError, InvalidInputError
from ..ranking import Ranking
from .vectors import VectorStore

_ALIAS = re.compile(r"^(flat|hnsw(\d+)?(?:,ef(\d+))?)$")
_PARAM = re.compile(r"^([A-Za-z_]+)=([0-9.]+)$")
_IVF = re.compile(r"IVF(\d+)")
DEFAULT_PARAMS = {"efSearch": 64, "nprobe": 16}  # applied where the index has them and the spec does not say
# IO_FLAG_MMAP maps IVF inverted lists; IO_FLAG_MMAP_IFC maps flat codes and HNSW graphs. The first carries an
# on-disk hook code in its high bits, so the two cannot be OR-ed: pick by the factory string.
MMAP_IVF = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY
MMAP_CODES = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY
TRAIN_MIN, TRAIN_PER_LIST, TRAIN_MAX = 20_000, 64, 1_000_000
ADD_BATCH = 65_536
PREFETCH_SHARE = 0.5  # graph files are prefetched while their total stays under this share of MemAvailable


@dataclass(frozen=True)
class DenseSpec:
    """A FAISS factory string plus search parameters; ``spec`` round-trips through ``parse``."""

    factory: str = "SQfp16"
    params: tuple[tuple[str, float], ...] = field(default=())

    @classmethod
    def parse(cls, spec: str | None) -> "DenseSpec":
        text = (spec or "flat").strip()
        alias = _ALIAS.match(text)  # lower case: the old short specs; FAISS factory strings are capitalised
        if alias:
            if alias.group(1) == "flat":
                return cls("SQfp16")
            return cls(f"HNSW{int(alias.group(2) or 32)}", (("efSearch", float(alias.group(3) or 64)),))
        factory, _, params = text.partition(";")
        factory = factory.strip()
        if not factory or any(c.isspace() for c in factory):
            raise InvalidInputError(f"unknown index spec {spec!r}: use 'flat', 'hnsw32,ef128' or a FAISS factory "
                                    "string such as 'HNSW32', 'IVF4096,PQ64' or 'IVF1024,SQ8;nprobe=32'")
        parsed = []
        for item in filter(None, (p.strip() for p in params.split(","))):
            m = _PARAM.match(item)
            if not m:
                raise InvalidInputError(f"index spec {spec!r}: bad search parameter {item!r} (use name=value, "
                                        "e.g. efSearch=128 or nprobe=32)")
            parsed.append((m.group(1), float(m.group(2))))
        return cls(factory, tuple(parsed))

    @property
    def spec(self) -> str:
        if not self.params:
            return self.factory
        return self.factory + ";" + ",".join(f"{k}={_num(v)}" for k, v in self.params)

    @property
    def nlist(self) -> int:
        m = _IVF.search(self.factory)
        return int(m.group(1)) if m else 0

    def new_index(self, dim: int) -> faiss.Index:
        try:
            index = faiss.index_factory(dim, self.factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1][:200]
            raise InvalidInputError(f"index spec {self.spec!r}: FAISS cannot build {self.factory!r} for "
                                    f"d = {dim} ({reason})") from None
        hnsw = _hnsw_of(index)
        if hnsw is not None:
            hnsw.efConstruction = max(40, 2 * hnsw.nb_neighbors(1))
        return index

    def apply_search_params(self, index: faiss.Index) -> None:
        space = faiss.ParameterSpace()
        given = dict(self.params)
        for name, default in DEFAULT_PARAMS.items():
            given.setdefault(name, default)
        for name, value in given.items():
            try:
                space.set_index_parameter(index, name, value)
            except RuntimeError as exc:
                if name in dict(self.params):  # a default that does not apply to this index is fine
                    raise InvalidInputError(f"index spec {self.spec!r}: {name} does not apply to "
                                            f"{self.factory!r} ({str(exc).strip().splitlines()[-1][:120]})") from None


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def _hnsw_of(index: faiss.Index):
    index = faiss.downcast_index(index)
    return index.hnsw if isinstance(index, faiss.IndexHNSW) else None


@dataclass
class _Partition:
    """One FAISS index: the vectors of one modality in one segment; local row i is global row first_row+rows[i]."""

    code: int
    index: faiss.Index
    rows: np.ndarray  # int32 [n] rows within the segment (memory-mapped once persisted)
    first_row: int
    deleted: int = 0  # how many of its rows are deleted

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def global_rows(self) -> np.ndarray:
        return self.rows.astype(np.int64) + self.first_row


class FaissStore(VectorStore):
    """The FAISS implementation of :class:`VectorStore` (see the module docstring)."""

    def __init__(self, dim: int, spec: "DenseSpec | str"):
        self.dim = dim
        self.dense_spec = spec if isinstance(spec, DenseSpec) else DenseSpec.parse(spec)
        self.spec = self.dense_spec.spec
        self._template = self.dense_spec.new_index(dim)  # validates the factory string for this dim
        self.segments: dict[str, list[_Partition]] = {}
        self._deleted = np.zeros(0, np.int64)
        self._prefetch_left: int | None = None  # bytes of page cache left for prefetching; set on first use

    # --- training -------------------------------------------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        return bool(self._template.is_trained)

    def train_size(self, n: int) -> int:
        """How many vectors ``train`` wants out of n: FAISS's guidance of tens of points per IVF list."""
        return min(n, max(TRAIN_MIN, TRAIN_PER_LIST * self.dense_spec.nlist), TRAIN_MAX)

    def train(self, sample: np.ndarray) -> None:
        if self.is_trained:
            return
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        nlist = self.dense_spec.nlist
        if len(sample) < max(nlist, 1):
            raise InvalidInputError(f"index spec {self.spec!r} needs at least {nlist} vectors to train its "
                                    f"{nlist} lists; this pool has {len(sample)} (use fewer lists or 'flat')")
        try:
            self._template.train(sample)
        except RuntimeError as exc:
            raise InvalidInputError(f"index spec {self.spec!r}: training failed on {len(sample)} vectors "
                                    f"({str(exc).strip().splitlines()[-1][:200]})") from None

    def save_state(self, path: Path) -> None:
        faiss.write_index(self._template, str(path))

    def load_state(self, path: Path) -> None:
        self._template = _read(path, 0)

    # --- segments -------------------------------------------------------------------------------------------
    def add_segment(self, name: str, vectors: np.ndarray, modality_codes: np.ndarray, first_row: int) -> None:
        if not self.is_trained:
            raise InvalidInputError(f"index spec {self.spec!r} must be trained before vectors are added")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        parts = []
        for code in np.unique(modality_codes):
            sel = np.flatnonzero(modality_codes == code).astype(np.int32)
            index = faiss.clone_index(self._template)
            for start in range(0, len(sel), ADD_BATCH):  # a modality's rows are gathered a batch at a time
                index.add(vectors[sel[start:start + ADD_BATCH]])
            self.dense_spec.apply_search_params(index)
            parts.append(_Partition(int(code), index, sel, first_row))
        self._count_deleted(parts)
        self.segments = {**self.segments, name: parts}  # copy on write: searches iterate a snapshot

    def write_segment(self, name: str, folder: Path) -> list[str]:
        files = []
        for p in self.segments[name]:
            faiss.write_index(p.index, str(folder / f"dense-{p.code}.faiss"))
            np.save(folder / f"dense-{p.code}.rows.npy", p.rows, allow_pickle=False)
            files += [f"dense-{p.code}.faiss", f"dense-{p.code}.rows.npy"]
        return files

    def open_segment(self, name: str, folder: Path, first_row: int, num_rows: int) -> None:
        parts = []
        for path in sorted(folder.glob("dense-*.faiss")):
            code = int(path.name.split("-")[1].split(".")[0])
            if _hnsw_of(self._template) is not None:
                self._maybe_prefetch(path)
            index = _read(path, MMAP_IVF if self.dense_spec.nlist else MMAP_CODES)
            if index.d != self.dim:
                raise IndexFormatError(f"{path}: vectors of dimension {index.d}, the manifest says {self.dim}; "
                                       "rebuild the index with 'unimir index'")
            self.dense_spec.apply_search_params(index)
            try:
                rows = np.load(folder / f"dense-{code}.rows.npy", mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise IndexFormatError(f"{folder}: unreadable dense rows ({exc}); rebuild the index") from None
            if rows.shape != (index.ntotal,):
                raise IndexFormatError(f"{path}: {index.ntotal} vectors but {rows.shape[0]} rows; rebuild the index")
            parts.append(_Partition(code, index, rows, first_row))
        held = sum(p.ntotal for p in parts)
        if held != num_rows:  # a partition file lost or left over would drop or invent a modality's items
            raise IndexFormatError(f"{folder}: its dense-*.faiss files hold {held} vectors for the segment's "
                                   f"{num_rows} rows; rebuild the index")
        self._count_deleted(parts)
        self.segments = {**self.segments, name: parts}  # copy on write: searches iterate a snapshot

    def _maybe_prefetch(self, path: Path) -> None:
        if self._prefetch_left is None:
            available = _memory_available()
            self._prefetch_left = int(PREFETCH_SHARE * available) if available is not None else 0
        size = path.stat().st_size
        if size <= self._prefetch_left:  # beyond it, prefetched pages would only evict each other
            self._prefetch_left -= size
            _prefetch(path)

    def drop_segment(self, name: str) -> None:
        self.segments = {n: p for n, p in self.segments.items() if n != name}

    def set_deleted(self, rows: np.ndarray) -> None:
        self._deleted = np.asarray(rows, dtype=np.int64)
        for parts in self.segments.values():
            self._count_deleted(parts)

    def _count_deleted(self, parts: list[_Partition]) -> None:
        for p in parts:
            if not len(self._deleted):
                p.deleted = 0
                continue
            lo, hi = np.searchsorted(self._deleted, [p.first_row, p.first_row + int(p.rows.max(initial=-1)) + 1])
            p.deleted = int(np.isin(self._deleted[lo:hi], p.global_rows()).sum()) if hi > lo else 0

    def __len__(self) -> int:
        return sum(p.ntotal - p.deleted for parts in self.segments.values() for p in parts)

    def rebase_segment(self, name: str, first_row: int) -> None:
        """Move a segment that is not persisted yet to another first row (a concurrent writer appended first)."""
        for p in self.segments[name]:
            p.first_row = first_row
        self._count_deleted(self.segments[name])

    # --- search ---------------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, allowed: "Sequence[tuple[int, ...] | None]") -> list[Ranking]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        out: list[Ranking | None] = [None] * len(queries)
        groups: dict[tuple[int, ...] | None, list[int]] = {}
        for qi, codes in enumerate(allowed):
            groups.setdefault(None if codes is None else tuple(sorted(set(codes))), []).append(qi)
        for codes, qis in groups.items():
            parts = [p for ps in list(self.segments.values()) for p in ps if codes is None or p.code in codes]
            pool = sum(p.ntotal - p.deleted for p in parts)
            if not parts or pool == 0:
                for qi in qis:
                    out[qi] = Ranking.empty()
                continue
            pending, depth = np.asarray(qis), min(pool, k + 16)
            while len(pending):
                rankings = self._search_parts(queries[pending], parts, depth)
                again = []
                for qi, r in zip(pending, rankings):
                    cut = min(k, len(r)) - 1
                    if cut < 0:
                        out[qi] = r
                        continue
                    # the k-th item's tie group may continue past what was fetched: go deeper
                    if len(r) >= depth and depth < pool and r.tie_groups[cut] == r.tie_groups[-1]:
                        again.append(qi)
                        continue
                    out[qi] = r.top(int(np.searchsorted(r.tie_groups, r.tie_groups[cut], side="right")))
                pending, depth = np.asarray(again, dtype=np.int64), min(pool, depth * 4)
        return out  # type: ignore[return-value]

    def reconstruct(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(rows), self.dim), np.float32)
        filled = np.zeros(len(rows), bool)
        # Rows sorted once; each partition looks only at the rows inside its segment's range, so the cost grows
        # with the rows asked, not with (rows x partitions): re-ranking reads thousands of rows from many segments.
        order = np.argsort(rows, kind="stable")
        ranked = rows[order]
        for parts in list(self.segments.values()):
            for p in parts:
                if not p.ntotal:
                    continue
                lo = np.searchsorted(ranked, p.first_row + int(p.rows[0]))
                hi = np.searchsorted(ranked, p.first_row + int(p.rows[-1]), side="right")
                if lo == hi:
                    continue
                sel = order[lo:hi]
                local = rows[sel] - p.first_row  # a partition's rows are ascending segment rows of one modality
                pos = np.searchsorted(p.rows, local).clip(max=p.ntotal - 1)
                hit = np.asarray(p.rows[pos]) == local
                if hit.any():
                    out[sel[hit]] = _reconstruct(p.index, pos[hit].astype(np.int64))
                    filled[sel[hit]] = True
        if not filled.all():
            raise IndexFormatError(f"row {int(rows[~filled][0])} has no stored vector")
        return out

    def _search_parts(self, queries: np.ndarray, parts: list[_Partition], depth: int) -> list[Ranking]:
        all_scores, all_rows = [], []
        for p in parts:
            d = min(depth + p.deleted, p.ntotal)
            if d == 0:
                continue
            scores, local = p.index.search(queries, d)
            valid = local >= 0
            rows = np.where(valid, p.rows[np.clip(local, 0, None)].astype(np.int64) + p.first_row, -1)
            if p.deleted:
                valid &= ~np.isin(rows, self._deleted)
            all_scores.append(np.where(valid, scores, -np.inf))
            all_rows.append(np.where(valid, rows, -1))
        scores, rows = np.concatenate(all_scores, 1), np.concatenate(all_rows, 1)
        out = []
        for s, r in zip(scores, rows):
            keep = r >= 0
            out.append(Ranking.from_scores(r[keep], s[keep]).top(depth))
        return out


def _reconstruct(index: faiss.Index, ids: np.ndarray) -> np.ndarray:
    """Stored vectors of local ids. Flat stores (float32 or fp16) are gathered from a zero-copy view of their codes
    (memory-mapped when opened so); an IVF index first gets the id -> list map that reconstruction needs."""
    flat = _flat_view(index)
    if flat is not None:
        return flat[ids].astype(np.float32)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:  # one call per row: faster than reconstruct_batch's OpenMP region for the few rows asked
        return np.stack([index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, index.d), np.float32)
    if ivf.direct_map.type == faiss.DirectMap.NoMap:
        ivf.make_direct_map()
    return index.reconstruct_batch(ids)


def _flat_view(index: faiss.Index) -> np.ndarray | None:
    """The vectors of a ``Flat`` (float32) or ``SQfp16`` (float16) store as an [ntotal, d] view of its codes, or
    None for any other kind of store."""
    if isinstance(index, faiss.IndexFlat):
        dtype = np.float32
    elif isinstance(index, faiss.IndexScalarQuantizer) and index.sq.qtype == faiss.ScalarQuantizer.QT_fp16:
        dtype = np.float16
    else:
        return None
    codes = faiss.rev_swig_ptr(index.codes.data(), index.ntotal * index.code_size)
    return np.frombuffer(codes, np.uint8).view(dtype).reshape(index.ntotal, index.d)


def _prefetch(path: Path) -> None:
    """Bring an HNSW partition's file into the page cache: its graph now, its vectors in the background.

    FAISS checks every neighbour id of an HNSW graph as it opens one through the memory map; from a cold cache each
    page it touches is then a disk read of its own (about 50 MB/s measured here, against 0.6-1.7 GB/s for one
    sequential pass), and so are the searches' first reads of the vectors. Reading the graph front to back first
    makes the open fast; the vectors follow on a background thread, so the first searches do not wait for them
    one page at a time either."""
    size = path.stat().st_size
    graph_end = _graph_end(path) or size
    _read_range(path, 0, graph_end)
    if graph_end < size:
        _READ_AHEAD.put((path, graph_end, size))
        _start_read_ahead()


def _read_range(path: Path, start: int, end: int) -> None:
    buf = bytearray(1 << 22)
    try:
        with open(path, "rb", buffering=0) as f:
            with contextlib.suppress(AttributeError, OSError):  # a hint for the kernel's own read-ahead, no more
                os.posix_fadvise(f.fileno(), start, end - start, os.POSIX_FADV_SEQUENTIAL)
            f.seek(start)
            left = end - start
            while left > 0:
                got = f.readinto(memoryview(buf)[:min(len(buf), left)])
                if not got:
                    break
                left -= got
    except OSError:
        pass  # best effort: a segment compacted away meanwhile is simply not read


_READ_AHEAD: "queue.Queue[tuple[Path, int, int]]" = queue.Queue()
_read_ahead_lock = threading.Lock()
_read_ahead_thread: "threading.Thread | None" = None


def _start_read_ahead() -> None:
    """One daemon thread for the whole process reads the queued ranges in order (one disk: no parallel reads)."""
    global _read_ahead_thread
    with _read_ahead_lock:
        if _read_ahead_thread is None or not _read_ahead_thread.is_alive():
            _read_ahead_thread = threading.Thread(target=_read_ahead_loop, name="unimir-read-ahead", daemon=True)
            _read_ahead_thread.start()


def _read_ahead_loop() -> None:
    while True:
        path, start, end = _READ_AHEAD.get()
        try:
            _read_range(path, start, end)
        finally:
            _READ_AHEAD.task_done()


# fourccs of the HNSW files whose layout _graph_end knows: HNSWFlat, HNSWPQ, HNSWSQ, HNSW2Level, plain IndexHNSW
_HNSW_FOURCCS = (b"IHNf", b"IHNp", b"IHNs", b"IHN2", b"IH00")


def _graph_end(path: Path) -> int | None:
    """Where an HNSW partition's graph ends and its vector storage begins in the file, after ``faiss.write_index``'s
    layout: fourcc, index header (d, ntotal, two dummies, is_trained, metric type [, metric arg]), the HNSW arrays
    (assign_probas f64, cum_nneighbor_per_level i32, levels i32, offsets u64, neighbors i32, each preceded by its
    u64 length), five i32, then the storage index. None for any other file or anything unexpected."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(37)
            if len(head) < 37 or head[:4] not in _HNSW_FOURCCS:
                return None
            (ntotal,) = struct.unpack_from("<q", head, 8)
            (metric,) = struct.unpack_from("<i", head, 33)
            pos = 37 + (4 if metric > 1 else 0)
            for expected, item_bytes in ((None, 8), (None, 4), (ntotal, 4), (ntotal + 1, 8), (None, 4)):
                f.seek(pos)
                raw = f.read(8)
                if len(raw) < 8:
                    return None
                (n,) = struct.unpack("<Q", raw)
                if expected is not None and n != expected:
                    return None
                pos += 8 + n * item_bytes
                if pos > size:
                    return None
    except OSError:
        return None
    pos += 5 * 4
    return pos if pos <= size else None


def _memory_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def _read(path: Path, flags: int) -> faiss.Index:
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        raise IndexFormatError(f"{path}: unreadable FAISS index ({str(exc).strip().splitlines()[-1][:160]}); "
                               "rebuild the index") from None
