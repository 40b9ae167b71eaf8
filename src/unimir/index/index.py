"""``Index``: the one backend object. Build, load, add, search; the CLI, the Python API and the server all use it."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from .. import atomic, dirlock
from ..data.images import bytes_digest, file_digest, open_image
from ..data.ingest import load_pool
from ..data.mbeir import format_text, query_text
from ..data.problems import Problems
from ..data.records import Candidate, Modality, parse_modalities
from ..encoders import EmbeddingCache, Encoder, Features, Item, fuse, fusion_of, load_encoder
from ..errors import IndexFormatError, InvalidInputError, NotFoundError, UnimirError
from ..ranking import Ranking
from .dense import DenseIndex, DenseSpec
from .store import REBUILD, Manifest, checksums, commit_manifest, generation_name, now, previous_manifest

MODES = ("dense", "generative", "generative-rerank", "quantize")
MAX_K = 1000
DEFAULT_BEAMS = 50  # the paper's B; fewer distinct IDs than beams is handled by the decoder
MAX_BEAMS = 256  # one limit for the CLI, the Python API and the server: beam search memory grows with B
INDEX_MEDIA = "index:"  # img_path prefix of images stored inside the index directory (uploads)


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


class Index:
    """A searchable candidate pool: records, encoder features, a FAISS index and, once trained, a generative model.

    Attributes: ``candidates`` (list[Candidate], row order), ``features`` (:class:`Features`, parts float32
    [N, d]), ``fused`` (float32 [N, d] score-fusion vectors), ``modality_codes`` (int8 [N]).

    Writers. Several processes may write one index directory (``unimir add``, a server's POST /items, ``unimir
    train``). Every save holds the directory's lock (:mod:`unimir.dirlock`) and first re-reads the newest
    generation: when another writer committed one since this object was loaded, its own unsaved items (and a
    retrained generative model) are merged onto that generation instead of overwriting it.
    """

    def __init__(self, manifest: Manifest, candidates: list[Candidate], features: Features,
                 image_digests: list[str | None], dense: DenseIndex, *, path: Path | None = None,
                 root: Path | None = None, generative=None, encoder: Encoder | None = None,
                 device: str | None = None):
        self.manifest, self.candidates, self.features = manifest, candidates, features
        self.device = device  # where the encoder and the generative model run (None: cpu)
        # fusion belongs to the encoder; its policy is known from the spec without loading the model
        self.fusion = encoder.fusion if encoder is not None else fusion_of(manifest.encoder)
        self.image_digests, self.dense, self._generative = image_digests, dense, generative
        self.path = Path(path) if path else None
        self.root = Path(root) if root else (Path(manifest.root) if manifest.root else None)
        self.fused = self.fuse(features)
        self.modality_codes = np.asarray([c.modality.code for c in candidates], dtype=np.int8)
        self.row_of = {c.did: i for i, c in enumerate(candidates)}
        self._encoder = encoder
        self._write_lock = threading.RLock()  # writes are serialised; searches read immutable snapshots
        # What this object last read from or wrote to its directory: rows past _base_rows are not saved yet.
        self._base_generation: int | None = manifest.generation if path else None
        self._base_rows = len(candidates) if path else 0
        self._generative_changed = False  # a retrained model replaces the directory's on the next save
        self._load_generative = True
        self._root_override = Path(root) if root else None

    @property
    def generative(self):
        """The generative retriever (quantizer, semantic IDs and ID generator), or None before ``unimir train``."""
        return self._generative

    @generative.setter
    def generative(self, retriever) -> None:
        self._generative = retriever
        self._generative_changed = True

    # --- construction --------------------------------------------------------------------------------------
    @classmethod
    def build(cls, source: "str | Path | Sequence[Candidate]", out: "str | Path | None" = None, *,
              root: "str | Path | None" = None, encoder: "str | Encoder" = "builtin", index: str = "flat",
              fusion_weights: tuple[float, float] = (1.0, 1.0), problems: Problems | None = None,
              progress: bool = False, batch_size: int | None = None, cache: bool = True,
              allow_outside_root: bool = False, device: str | None = None) -> "Index":
        """Encode a pool (M-BEIR jsonl, image folder, text file, or a list of Candidate) into a new index.

        Bad items (missing or corrupt images, malformed lines) are skipped and recorded in ``problems``;
        pass ``Problems(strict=True)`` to fail on the first one. Saved atomically to ``out`` when given.
        Image paths that leave the data root are refused unless ``allow_outside_root``.
        """
        problems = problems if problems is not None else Problems()
        if out is not None:
            previous_manifest(Path(out))  # refuse a folder that is not an index before any encoding work
        if isinstance(source, (str, Path)):
            candidates, root_path = load_pool(source, root, problems, allow_outside_root=allow_outside_root)
        else:
            candidates, root_path = list(source), Path(root or ".").resolve()
        enc = load_encoder(encoder, device=device) if isinstance(encoder, str) else encoder
        spec = DenseSpec.parse(index)
        manifest = Manifest(encoder=enc.spec, dim=enc.dim, index_spec=spec.spec,
                            fusion_weights=tuple(float(w) for w in fusion_weights), root=str(root_path),
                            created=now())
        idx = cls(manifest, [], Features.empty(enc.dim), [], DenseIndex(enc.dim, spec), root=root_path, encoder=enc,
                  device=device)
        idx.add(candidates, problems=problems, progress=progress, batch_size=batch_size, cache=cache, save=False)
        if not idx.candidates:
            raise InvalidInputError("no item could be indexed" + (f": {len(problems)} skipped, the first: "
                                                                  f"{problems.items[0]}" if len(problems) else ""))
        if out is not None:
            idx.save(out)
        return idx

    @classmethod
    def load(cls, path: "str | Path", *, root: "str | Path | None" = None, encoder: Encoder | None = None,
             generative: bool = True, device: str | None = None) -> "Index":
        """Load an index directory. ``root`` overrides the data root recorded at build time (a moved dataset);
        ``generative=False`` skips the generative model (to retrain it from scratch); ``device`` (cpu, cuda) is
        where the encoder and the generative model run.

        Damaged or inconsistent files raise :class:`IndexFormatError`, never a raw parser error."""
        path = Path(path)
        for attempt in range(3):
            m = Manifest.read(path)
            try:
                return cls._load_generation(path, m, root=root, encoder=encoder, generative=generative, device=device)
            except IndexFormatError:
                # a writer may have committed a newer generation and deleted this one while it was being read
                if attempt == 2 or not _generation_changed(path, m):
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _load_generation(cls, path: Path, m: Manifest, *, root, encoder, generative: bool,
                         device: str | None = None) -> "Index":
        try:
            with open(path / m.files["candidates"], encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
            arrays = load_file(str(path / m.files["features"]))
            blobs = load_file(str(path / m.files["dense"]))
            candidates = [Candidate(r["did"], Modality.parse(r["modality"]), r.get("txt"), r.get("img_path"),
                                    r.get("src_content")) for r in rows]
            features = Features(arrays["image"].astype(np.float32), arrays["text"].astype(np.float32),
                                arrays["image_mask"].astype(bool), arrays["text_mask"].astype(bool))
        except (KeyError, OSError, ValueError, TypeError, AttributeError, SafetensorError) as exc:
            raise IndexFormatError(f"{path}: index files are missing or unreadable ({_short(exc)}); "
                                   f"{REBUILD}") from None
        n = m.num_items
        if len(candidates) != n or len(features) != n:
            raise IndexFormatError(f"{path}: manifest says {n} items but found {len(candidates)} records "
                                   f"and {len(features)} feature rows; {REBUILD}")
        shapes = [a.shape for a in (features.image, features.text)] + [features.image_mask.shape,
                                                                      features.text_mask.shape]
        if shapes != [(n, m.dim), (n, m.dim), (n,), (n,)]:
            raise IndexFormatError(f"{path}: feature arrays have shapes {shapes}, but the manifest says {n} items of "
                                   f"dimension {m.dim}; {REBUILD}")
        codes = np.asarray([c.modality.code for c in candidates], dtype=np.int8)
        try:
            dense = DenseIndex.deserialize(m.dim, DenseSpec.parse(m.index_spec),
                                           {int(k.rsplit("_", 1)[1]): v for k, v in blobs.items()}, codes)
        except (ValueError, RuntimeError, IndexError, TypeError, UnimirError) as exc:  # FAISS raises RuntimeError
            raise IndexFormatError(f"{path / m.files['dense']}: the FAISS index is corrupt or does not match the "
                                   f"records ({_short(exc)}); {REBUILD}") from None
        if len(dense) != n or any(p.d != m.dim for p in dense.parts.values()):
            raise IndexFormatError(f"{path / m.files['dense']}: the FAISS index holds {len(dense)} vectors of "
                                   f"dimension {sorted({p.d for p in dense.parts.values()})}, the manifest says {n} "
                                   f"of dimension {m.dim}; {REBUILD}")
        index = cls(m, candidates, features, [r.get("image_sha1") for r in rows], dense, path=path,
                    root=Path(root) if root else None, encoder=encoder, device=device)
        index._load_generative = generative
        if generative and m.files.get("generative"):
            from ..devices import resolve_device
            from ..generator import GenerativeRetriever

            try:
                retriever = GenerativeRetriever.load(path / m.files["generative"], resolve_device(device))
            except (KeyError, OSError, ValueError, TypeError, RuntimeError, SafetensorError) as exc:
                raise IndexFormatError(f"{path / m.files['generative']}: the generative model is unreadable "
                                       f"({_short(exc)}); run 'unimir train' again") from None
            if retriever.extra != index._pool_identity():  # never search with codes of another pool or encoder
                raise IndexFormatError(f"{path}: the generative model was trained for another pool or encoder "
                                       "than this index holds; run 'unimir train' again")
            index._generative = retriever
        return index

    # --- persistence ---------------------------------------------------------------------------------------
    def writer_lock(self) -> "contextlib.AbstractContextManager[None]":
        """The inter-process lock of this index's directory (re-entrant; a no-op for an unsaved index).

        Hold it around a check-then-add that must not interleave with another writer (the server does)."""
        return dirlock.locked(self.path) if self.path is not None else contextlib.nullcontext()

    def save(self, path: "str | Path | None" = None) -> Path:
        """Write a new generation of files and switch the manifest to it atomically.

        Saving to the directory this index came from merges: under the directory lock, a newer generation that
        another writer committed meanwhile is read first and this object's unsaved items are appended to it (an
        id that the other writer added too keeps the other writer's item). Saving anywhere else replaces what is
        there, if it is a unimir index; any other non-empty folder is refused."""
        path = Path(path) if path is not None else self.path
        if path is None:
            raise InvalidInputError("no index directory given to save to")
        previous_manifest(path)  # refuse a foreign folder before creating the lock file in it
        with dirlock.locked(path), self._write_lock:  # always this order: the folder lock, then the object's
            previous = previous_manifest(path)
            if self._is_stale(path, previous):
                self._rebase(path, previous)
            self._write_generation(path, previous)
        return path

    def refresh(self) -> bool:
        """Catch up with the directory: if another writer committed a newer generation, adopt it (unsaved items
        of this object are kept and appended). Returns whether anything was re-read."""
        if self.path is None:
            return False
        with self._write_lock:
            try:
                latest = Manifest.read(self.path)
            except NotFoundError:
                return False
            if latest.generation == self._base_generation:
                return False
            self._rebase(self.path, latest)
            return True

    def _is_stale(self, path: Path, on_disk: Manifest | None) -> bool:
        return (on_disk is not None and self.path is not None and _same_dir(path, self.path)
                and on_disk.generation != self._base_generation)

    def _rebase(self, path: Path, on_disk: Manifest) -> list[str]:
        """Adopt the generation ``on_disk`` and re-append this object's unsaved rows (and keep a retrained model).
        Returns the ids of unsaved rows dropped because the directory already holds them."""
        start = self._base_rows
        own_cands, own_feats = self.candidates[start:], self.features[start:]
        own_digests = self.image_digests[start:]
        retrained = self._generative if self._generative_changed else None
        latest = Index._load_generation(path, on_disk, root=self._root_override, encoder=self._encoder,
                                        generative=retrained is None and self._load_generative, device=self.device)
        m = latest.manifest
        if m.encoder != self.manifest.encoder or m.dim != self.manifest.dim:
            raise IndexFormatError(f"{path} was rebuilt with encoder {m.encoder!r} ({m.dim}-d) after this process "
                                   f"loaded it with {self.manifest.encoder!r} ({self.manifest.dim}-d); its vectors "
                                   "cannot be merged: load the index again and repeat the change")
        for name in ("manifest", "candidates", "features", "fused", "modality_codes", "image_digests", "row_of",
                     "dense", "_generative"):
            setattr(self, name, getattr(latest, name))
        self._base_generation, self._base_rows = on_disk.generation, len(latest.candidates)
        keep = [i for i, c in enumerate(own_cands) if c.did not in self.row_of]
        if retrained is not None:
            self._generative = None  # its codes are recomputed below for the merged rows
        if keep:
            self._append([own_cands[i] for i in keep], own_feats[np.asarray(keep)], [own_digests[i] for i in keep])
        if retrained is not None:
            retrained.index(self.features, self.modality_codes)
            self._generative = retrained
        return [c.did for i, c in enumerate(own_cands) if i not in set(keep)]

    def _write_generation(self, path: Path, previous: Manifest | None) -> None:
        """Write this object's state as the generation after ``previous`` and commit it (directory lock held)."""
        gen = (previous.generation if previous is not None else 0) + 1
        m = dataclasses.replace(self.manifest, generation=gen)
        files = {"candidates": generation_name("candidates", gen, ".jsonl"),
                 "features": generation_name("features", gen, ".safetensors"),
                 "dense": generation_name("dense", gen, ".safetensors")}
        lines = []
        for c, digest in zip(self.candidates, self.image_digests):
            rec = c.to_json()
            if digest:
                rec["image_sha1"] = digest
            lines.append(json.dumps(rec, ensure_ascii=False))
        atomic.write_text(path / files["candidates"], "\n".join(lines) + "\n")
        f = self.features
        atomic.write_safetensors(path / files["features"], {
            "image": f.image.astype(np.float16), "text": f.text.astype(np.float16),
            "image_mask": f.image_mask.astype(np.uint8), "text_mask": f.text_mask.astype(np.uint8)})
        atomic.write_safetensors(path / files["dense"],
                                 {f"modality_{c}": b for c, b in self.dense.serialize().items()})
        if self._generative is not None:
            files["generative"] = generation_name("generative", gen)
            self._generative.save(path / files["generative"], extra=self._pool_identity())
            m.generative = {"quantizer": self._generative.quantizer.config.spec,
                            "generator": self._generative.generator is not None,
                            "collisions": self._generative.stats.to_dict(),
                            "health": self._generative.health, "learned_rows": self._generative.learned_rows}
        m.files, m.num_items = files, len(self.candidates)
        m.modality_counts = {mod.value: int((self.modality_codes == mod.code).sum()) for mod in Modality}
        m.checksums = checksums(path, files.values())
        commit_manifest(path, m, previous)
        self.manifest, self.path = m, path
        self._base_generation, self._base_rows, self._generative_changed = gen, len(self.candidates), False

    def _pool_identity(self) -> dict[str, Any]:
        """What the generative model's codes belong to: the encoder and the exact list of candidate ids."""
        dids = hashlib.sha1("\n".join(c.did for c in self.candidates).encode()).hexdigest()
        return {"encoder": self.manifest.encoder, "num_items": len(self.candidates), "dids_sha1": dids}

    # --- adding --------------------------------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        """The encoder named in the manifest, loaded on first use."""
        if self._encoder is None:
            self._encoder = load_encoder(self.manifest.encoder, device=self.device)
        return self._encoder

    @encoder.setter
    def encoder(self, encoder: Encoder) -> None:
        """Swap in an equivalent encoder (a wrapper that batches requests, the same model on another device)."""
        if encoder.spec != self.manifest.encoder or encoder.dim != self.manifest.dim:
            raise InvalidInputError(f"encoder {encoder.spec!r} ({encoder.dim}-d) does not match this index's "
                                    f"{self.manifest.encoder!r} ({self.manifest.dim}-d)")
        self._encoder = encoder
        self.fusion = encoder.fusion

    def fuse(self, features: Features) -> np.ndarray:
        """Score-fusion vectors of ``features`` under this index's encoder policy and fusion weights."""
        return fuse(features, self.fusion, self.manifest.fusion_weights)

    def __len__(self) -> int:
        return len(self.candidates)

    def add(self, candidates: Sequence[Candidate], *, root: "str | Path | None" = None,
            problems: Problems | None = None, progress: bool = False, batch_size: int | None = None,
            cache: bool = True, save: bool = True, refresh: bool = True) -> int:
        """Encode and append candidates without rebuilding; returns how many were added.

        With a trained generator and ``refresh``, a short index-time fine-tune teaches it the new items' IDs
        (``GenerativeRetriever.refresh``); ``refresh=False`` defers that to ``unimir train --stage index``.

        Image paths resolve against ``root`` (default: the index's data root). Items with a duplicate id or a
        bad image are skipped and recorded in ``problems`` (or raise, when it is strict or not given).
        When the index has a directory and ``save`` is true, the items are appended to the directory's newest
        generation under its lock (items another writer added meanwhile are kept) and saved. If that save fails,
        this object is reset to what the directory holds and the error is raised: memory never silently holds
        items the directory lacks.
        """
        problems = problems if problems is not None else Problems(strict=True)
        with self._write_lock:  # encoding happens outside the folder lock, so other writers are not held up
            root_path = Path(root).resolve() if root else self.root
            fresh, seen = [], set(self.row_of)
            for c in candidates:
                if c.did in seen:
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
        saving = save and self.path is not None
        with self.writer_lock() if saving else contextlib.nullcontext(), self._write_lock:
            previous = previous_manifest(self.path) if saving else None
            if saving and self._is_stale(self.path, previous):
                self._rebase(self.path, previous)
            rows = []
            for i, c in enumerate(kept):
                if c.did in self.row_of:  # added by another writer (or thread) while this batch was encoded
                    problems.add(f"duplicate candidate id {c.did!r} (added meanwhile)", item=c.did)
                else:
                    rows.append(i)
            if not rows:
                return 0
            self._append([kept[i] for i in rows], feats[np.asarray(rows)], [kept_digests[i] for i in rows])
            if refresh and self.generative is not None and self.generative.generator is not None:
                self.generative.refresh(self.features, log=progress)  # teach the generator the new IDs
            if saving:
                try:
                    self._write_generation(self.path, previous)
                except BaseException:
                    self._reset_to_directory()
                    raise
            return len(rows)

    def _reset_to_directory(self) -> None:
        """After a failed save: drop the unsaved rows by re-reading the directory's current generation."""
        try:
            on_disk = Manifest.read(self.path)
            self._base_rows, self._generative_changed = len(self.candidates), False  # nothing of ours to keep
            self._rebase(self.path, on_disk)
        except UnimirError:
            pass  # the directory is unreadable too; the caller gets the original error

    def add_upload(self, *, text: str | None = None, image: bytes | None = None, did: str | None = None,
                   src_content: str | None = None) -> Candidate:
        """Add one item from raw content (the server's POST /items); an image is stored inside the index."""
        if self.path is None:
            raise InvalidInputError("this index has no directory to store uploaded images in")
        if (text is None or not text.strip()) and not image:
            raise InvalidInputError("an item needs a text, an image or both")
        img_path = None
        if image:
            picture = open_image(image, name="uploaded image")  # refuse undecodable bytes before storing them
            digest = bytes_digest(image)
            suffix = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp"}.get(picture.format or "", ".png")
            media = self.path / "media"
            media.mkdir(exist_ok=True)
            target = media / f"{digest}{suffix}"
            if not target.exists():
                atomic.write_bytes(target, image)
            img_path = f"{INDEX_MEDIA}media/{target.name}"
        did = did or f"u:{bytes_digest((text or '').encode() + (image or b''))[:12]}"
        cand = Candidate(did, Modality.of(bool(text and text.strip()), bool(image)), text, img_path, src_content)
        self.add([cand])
        return self.candidates[self.row_of[did]]

    def _append(self, kept: list[Candidate], feats: Features, digests: list[str | None]) -> None:
        first = len(self.candidates)
        codes = np.asarray([c.modality.code for c in kept], dtype=np.int8)
        fused = self.fuse(feats)
        self.dense.add(fused, codes, first)
        if self.generative is not None:
            self.generative.add(feats, codes)
        # new objects rather than in-place growth, so concurrent readers keep a consistent snapshot
        self.features = Features.concat([self.features, feats], self.manifest.dim)
        self.fused = np.concatenate([self.fused, fused])
        self.modality_codes = np.concatenate([self.modality_codes, codes])
        self.candidates = self.candidates + kept
        self.image_digests = self.image_digests + digests
        self.row_of = {**self.row_of, **{c.did: first + i for i, c in enumerate(kept)}}
        self.manifest.num_items = len(self.candidates)

    # --- lookup --------------------------------------------------------------------------------------------
    def get(self, did: str) -> Candidate:
        try:
            return self.candidates[self.row_of[did]]
        except KeyError:
            raise NotFoundError(f"no item with id {did!r} in this index") from None

    def image_path(self, cand: Candidate) -> Path:
        """The file behind a candidate's image. Only paths recorded in the index ever reach the filesystem."""
        if not cand.img_path:
            raise NotFoundError(f"item {cand.did!r} has no image")
        if cand.img_path.startswith(INDEX_MEDIA):
            if self.path is None:
                raise NotFoundError(f"item {cand.did!r}: its image lives in an unsaved index")
            return self.path / cand.img_path[len(INDEX_MEDIA):]
        p = Path(cand.img_path)
        if p.is_absolute() or self.root is None:
            return p
        return self.root / p

    # --- search --------------------------------------------------------------------------------------------
    @property
    def modes(self) -> tuple[str, ...]:
        """The retrieval modes this index supports: ``quantize`` needs a trained quantizer, ``generative`` and
        ``generative-rerank`` a trained generator (``unimir train``)."""
        g = self.generative
        if g is None:
            return ("dense",)
        return tuple(m for m in MODES if m in ("dense", "quantize") or g.generator is not None)

    def search(self, text: str | None = None, image: "str | Path | bytes | None" = None, *,
               instruction: str | None = None, modality: "str | Sequence[str] | None" = None, k: int = 10,
               mode: str = "dense", beams: int | None = None, exclude_query: bool = False) -> SearchResult:
        """Search by text, image or both. ``modality`` filters candidates ('image', 'text', 'image,text', or a
        list / 'image|text'); ``exclude_query`` drops candidates identical to the query (same image bytes or
        same text). Scores are cosines for dense mode and log-probabilities for generative modes."""
        t0 = time.perf_counter()
        self._check_request(k, mode, beams)
        has_text = text is not None and text.strip() != ""
        if not has_text and image is None:
            raise InvalidInputError("empty query: give a text, an image or both")
        qtext = query_text(text if has_text else None, instruction)
        allowed = parse_modalities(modality)
        feats, _ = self.encoder.encode([Item(qtext, image, name="query")], "query")
        t1 = time.perf_counter()
        duplicates = self.duplicate_rows(text if has_text else None, image) if exclude_query else set()
        ranking = self.search_features(feats, [allowed], k + len(duplicates), mode=mode, beams=beams)[0]
        ranking = ranking.without(duplicates).top(k)
        t2 = time.perf_counter()
        hits = [SearchHit(i + 1, c.did, c.modality.value, float(s), c.txt, c.img_path, int(g))
                for i, (c, s, g) in enumerate(zip((self.candidates[r] for r in ranking.indices), ranking.scores,
                                                  ranking.tie_groups))]
        ms = lambda a, b: round((b - a) * 1000, 2)  # noqa: E731
        return SearchResult(hits, mode, qtext, {"encode": ms(t0, t1), "search": ms(t1, t2), "total": ms(t0, t2)})

    def search_features(self, queries: Features, allowed: "Sequence[Sequence[Modality] | None]", k: int, *,
                        mode: str = "dense", beams: int | None = None) -> list[Ranking]:
        """Batch search with encoded queries. ``allowed``: per query, the candidate modalities to consider
        (None = any). Returns one :class:`Ranking` per query with tie groups whole (see ``Ranking``)."""
        self._check_request(k, mode, beams)
        codes = [None if a is None else tuple(m.code for m in a) for a in allowed]
        if mode == "dense":
            return self.dense.search(self.fuse(queries), k, codes)
        return self.generative.search(queries, codes, k=k, mode=mode, beams=DEFAULT_BEAMS if beams is None else beams,
                                      query_fused=self.fuse(queries),
                                      cand_fused=self.fused)

    def _check_request(self, k: int, mode: str, beams: int | None = None) -> None:
        if mode not in MODES:
            raise InvalidInputError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        if mode not in self.modes:
            raise InvalidInputError(f"mode {mode!r} needs a trained generative model: run 'unimir train' on this "
                                    "index first")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
            raise InvalidInputError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
        if beams is not None and (isinstance(beams, bool) or not isinstance(beams, (int, np.integer))
                                  or not 1 <= beams <= MAX_BEAMS):
            raise InvalidInputError(f"beams must be an integer from 1 to {MAX_BEAMS}, got {beams!r}")

    def duplicate_rows(self, text: str | None, image: "str | Path | bytes | None") -> set[int]:
        """Rows identical to a query: the same image bytes, or a text-only item with the same (formatted) text.

        Dense retrievers rank the query's own image first on composed queries; ``exclude_query`` drops these.
        """
        rows: set[int] = set()
        if image is not None:
            digest = bytes_digest(bytes(image)) if isinstance(image, (bytes, bytearray)) else file_digest(image)
            rows.update(i for i, d in enumerate(self.image_digests) if d == digest)
        if text is not None:
            wanted = format_text(text)
            rows.update(i for i, c in enumerate(self.candidates) if c.txt == wanted and not c.img_path)
        return rows


def _digest_or_none(path: Path) -> str | None:
    try:
        return file_digest(path)
    except OSError:
        return None  # missing or unreadable: the encoder reports it for this item


def _generation_changed(path: Path, seen: Manifest) -> bool:
    try:
        return Manifest.read(path).generation != seen.generation
    except UnimirError:
        return False


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{exc.__class__.__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "..."
