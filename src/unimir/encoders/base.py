"""The encoder interface: items in, L2-normalised float32 vectors out.

Every encoder returns the *parts* of an item separately (image and text embeddings plus presence masks),
because generative retrieval consumes the parts and dense retrieval consumes their fusion. How parts are fused
belongs to the encoder (``Encoder.fusion``, see :func:`fuse`): ``unit-sum`` (builtin, ``hf:``) normalises each part,
sums them under weights and renormalises; ``raw-sum`` (UniIR CLIP-SF) sums the raw projected parts and normalises
only the sum, as UniIR does.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..atomic import digest_file

if TYPE_CHECKING:  # heavy or circular imports, needed only for annotations
    from PIL import Image

    from ..data.problems import Problems
    from .cache import EmbeddingCache


@dataclass
class Features:
    """Encoder output for n items, all arrays aligned on the first axis.

    image, text: float32 [n, d], zeros where the mask is unset; unit rows for ``unit-sum`` encoders, raw projections
    for ``raw-sum`` ones (CLIP-SF).
    image_mask, text_mask: bool [n].
    joint: optional float32 [n, d], a vector the encoder computed for each item as a whole (E5-V, VISTA, BLIP
    embed image and text together). When present it *is* the item's dense vector (:func:`fuse` returns it,
    normalised, instead of fusing the parts); the parts still serve generative retrieval.
    """

    image: np.ndarray
    text: np.ndarray
    image_mask: np.ndarray
    text_mask: np.ndarray
    joint: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.image.shape[0])

    @property
    def dim(self) -> int:
        return int(self.image.shape[1])

    def fused(self, weights: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
        """f = normalize(w_img*m_img*e_img + w_txt*m_txt*e_txt) of the parts as stored: float32 [n, d], unit rows.
        Prefer ``fuse(features, encoder.fusion, weights)``, which also knows whether parts are normalised first."""
        w_img, w_txt = weights
        f = (w_img * self.image_mask[:, None]) * self.image + (w_txt * self.text_mask[:, None]) * self.text
        return l2_normalize(f.astype(np.float32, copy=False))

    def __getitem__(self, idx) -> "Features":
        return Features(self.image[idx], self.text[idx], self.image_mask[idx], self.text_mask[idx],
                        None if self.joint is None else self.joint[idx])

    @staticmethod
    def concat(parts: Sequence["Features"], dim: int) -> "Features":
        if not parts:
            return Features.empty(dim)
        fields = ("image", "text", "image_mask", "text_mask")
        with_joint = [p.joint is not None for p in parts]
        if any(with_joint) and not all(with_joint):
            raise ValueError("cannot concatenate features with and without joint vectors")
        joint = np.concatenate([p.joint for p in parts]) if all(with_joint) else None
        return Features(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields), joint)

    @staticmethod
    def empty(dim: int, n: int = 0) -> "Features":
        return Features(np.zeros((n, dim), np.float32), np.zeros((n, dim), np.float32),
                        np.zeros(n, bool), np.zeros(n, bool))


FUSIONS = ("unit-sum", "raw-sum")
CHARS_PER_TOKEN = 64  # texts are cut to this many characters per token an encoder reads, before tokenizing


def fuse(features: Features, policy: str = "unit-sum", weights: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Score-fusion vectors float32 [n, d], unit rows, under an encoder's fusion ``policy``.

    ``unit-sum``: normalize(w_img*m_img*normalize(e_img) + w_txt*m_txt*normalize(e_txt)), unimir's fusion for
    encoders whose parts are unit vectors. ``raw-sum``: normalize(w_img*m_img*e_img + w_txt*m_txt*e_txt) over the raw
    projections, UniIR CLIP-SF's score fusion (with weights 1, 1): the longer part dominates. Features that carry
    a ``joint`` vector (computed by the encoder for the item as a whole) are that vector, normalised.
    """
    if features.joint is not None:
        return l2_normalize(features.joint)
    if policy == "raw-sum":
        return features.fused(weights)
    if policy != "unit-sum":
        raise ValueError(f"unknown fusion policy {policy!r}: use one of {FUSIONS}")
    unit = Features(l2_normalize(features.image), l2_normalize(features.text), features.image_mask,
                    features.text_mask)
    return unit.fused(weights)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation in float32; all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)


# --- items and the encoder base class ------------------------------------------------------------------------

@dataclass
class Item:
    """What an encoder consumes: optional text and an optional image (a file path, raw bytes or a PIL image)."""

    text: str | None = None
    image: "str | os.PathLike | bytes | Image.Image | None" = None
    name: str | None = None  # shown in error messages (a did, a qid, a file name)
    image_digest: str | None = None  # sha1 of the image bytes when the caller already has it (cache key)

    @property
    def has_text(self) -> bool:
        return self.text is not None and self.text.strip() != ""

    @property
    def has_image(self) -> bool:
        return self.image is not None


class Encoder(ABC):
    """Items in, L2-normalised float32 part vectors out.

    Subclasses implement two batch primitives, ``embed_texts`` and ``embed_images``, and ``fingerprint``; this
    class adds batching, progress bars, the on-disk cache and per-item error handling. ``role`` ("query" or
    "candidate") is passed to subclasses that embed the two sides differently (asymmetric encoders); the built-in
    ones do not.
    """

    #: spec string that reloads this encoder through :func:`unimir.encoders.load_encoder`
    spec: str
    #: registry name (``unimir.encoders.ENCODERS``): the spec up to its colon; ``takes_argument``: whether the spec
    #: goes on with a model (``hf:<hub id or dir>``, described by ``argument_help``) or is the bare family name
    family: str
    takes_argument: bool = False
    argument_help: str = ""
    dim: int
    #: how parts become one dense vector (:func:`fuse`); an encoder whose parts are raw projections says raw-sum
    fusion: str = "unit-sum"
    text_batch_size: int = 64
    image_batch_size: int = 8
    #: files (besides pip-installed models) whose bytes define the vectors, e.g. the builtin encoder's bridge;
    #: an encoder's ``fingerprint`` digests them
    weight_files: "Sequence[str | os.PathLike]" = ()

    @classmethod
    def from_spec(cls, argument: str | None, *, device: str = "cpu", threads: int | None = None) -> "Encoder":
        """Build the encoder of spec ``family[:argument]`` on ``device``; a family that needs other arguments
        overrides this."""
        if cls.takes_argument:
            return cls(argument, device=device, threads=threads)
        return cls(device=device, threads=threads)

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """What produces this encoder's vectors: a digest of its weight and config files and its preprocessing
        settings, computed once when it is loaded (see :func:`fingerprint_of`). The embedding cache is keyed by it,
        so changed weights behind the same spec never return stale vectors."""

    @abstractmethod
    def embed_texts(self, texts: list[str], role: str = "candidate") -> np.ndarray:
        """float32 [n, dim], unit rows."""

    @abstractmethod
    def embed_images(self, images: "list[Image.Image]", role: str = "candidate") -> np.ndarray:
        """float32 [n, dim], unit rows; images are RGB."""

    #: longest text in tokens, longer texts are truncated (None: no limit, or unknown); with the text side's
    #: Hugging Face ``tokenizer`` it lets every encoder report truncated texts the same way
    max_length: int | None = None
    tokenizer = None

    @property
    def max_text_tokens(self) -> int | None:
        return self.max_length

    def _over_rows(self, texts: Sequence[str]) -> list[int]:
        """Which of ``texts`` the encoder truncates; none for encoders that do not know."""
        if self.tokenizer is None or self.max_length is None:
            return []
        return tokens_over(self.tokenizer, texts, self.max_length)

    def _bounded_texts(self, texts: list[str]) -> tuple[list[str], list[int]]:
        """Texts cut to ``CHARS_PER_TOKEN`` characters per token the encoder reads, and the rows that were cut.
        A tokenizer reads the whole string before it truncates, so a 30 MB line would cost gigabytes for the
        256 tokens kept; no real text needs 64 characters for a token."""
        if self.max_text_tokens is None:
            return texts, []
        bound = self.max_text_tokens * CHARS_PER_TOKEN
        cut = [i for i, t in enumerate(texts) if len(t) > bound]
        for i in cut:
            texts[i] = texts[i][:bound]
        return texts, cut

    def fuse(self, features: Features, weights: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
        """This encoder's score fusion of ``features``: float32 [n, d], unit rows."""
        return fuse(features, self.fusion, weights)

    # ------------------------------------------------------------------------------------------------------
    def encode(self, items: Sequence[Item], role: str = "candidate", *, batch_size: int | None = None,
               progress: bool = False, cache: "EmbeddingCache | None" = None,
               problems: "Problems | None" = None) -> tuple[Features, np.ndarray]:
        """Encode items into parts. Returns (features for the items that worked, bool [n] mask of those items).

        A missing or corrupt image is reported to ``problems`` and its item left out; without a ``problems``
        sink the first bad item raises (the right behaviour for a single query).
        """
        from ..data.problems import Problems

        problems = problems if problems is not None else Problems(strict=True)
        n = len(items)
        ok = np.ones(n, dtype=bool)
        feats = Features.empty(self.dim, n)
        text_rows = [i for i, it in enumerate(items) if it.has_text]
        image_rows = [i for i, it in enumerate(items) if it.has_image]
        for i, it in enumerate(items):
            if not it.has_text and not it.has_image:
                problems.add("empty item: give a text, an image or both", item=it.name)
                ok[i] = False
        if text_rows:
            texts, cut = self._bounded_texts([items[i].text for i in text_rows])
            vecs = self._encode_texts(texts, role, batch_size, progress, cache)
            over = len(set(cut) | set(self._over_rows(texts)))
            if over:
                problems.notice("truncated", f"text(s) longer than the encoder's {self.max_text_tokens} tokens "
                                "were truncated (only their beginning is searchable)", count=over)
            feats.text[text_rows] = vecs
            feats.text_mask[text_rows] = True
        if image_rows:
            vecs, good = self._encode_images([items[i] for i in image_rows], role, batch_size, progress, cache,
                                             problems)
            rows = np.asarray(image_rows)
            feats.image[rows[good]] = vecs[good]
            feats.image_mask[rows[good]] = True
            ok[rows[~good]] = False
        return feats[ok], ok

    def _encode_texts(self, texts, role, batch_size, progress, cache) -> np.ndarray:
        keys = [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]
        found = cache.get_many(self.fingerprint, f"text:{role}", list(set(keys))) if cache else {}
        todo = list(dict.fromkeys(k for k in keys if k not in found))
        by_key = {k: t for k, t in zip(keys, texts)}
        bs = batch_size or self.text_batch_size
        with _progress(len(todo), "encode texts", progress) as bar:
            for start in range(0, len(todo), bs):
                chunk = todo[start:start + bs]
                fresh = dict(zip(chunk, self.embed_texts([by_key[k] for k in chunk], role)))
                if cache:  # every batch, so an interrupted run resumes where it stopped
                    cache.put_many(self.fingerprint, f"text:{role}", fresh)
                found.update(fresh)
                bar.update(len(chunk))
        return np.stack([found[k] for k in keys]).astype(np.float32)

    def _encode_images(self, items, role, batch_size, progress, cache, problems) -> tuple[np.ndarray, np.ndarray]:
        from ..data.images import bytes_digest, file_digest, open_image
        from ..errors import UnimirError

        n = len(items)
        out = np.zeros((n, self.dim), np.float32)
        good = np.zeros(n, dtype=bool)
        keys: list[str | None] = []
        for it in items:  # digest first (cheap), so cached images are never decoded
            try:
                if it.image_digest is not None:
                    keys.append(it.image_digest)
                elif isinstance(it.image, (bytes, bytearray)):
                    keys.append(bytes_digest(bytes(it.image)))
                elif isinstance(it.image, (str, os.PathLike)):
                    keys.append(file_digest(it.image))
                else:
                    keys.append(None)
            except OSError:
                keys.append(None)  # open_image below reports the file properly
        found = cache.get_many(self.fingerprint, f"image:{role}", list({k for k in keys if k})) if cache else {}
        todo, first_of, copies = [], {}, []  # an image repeated in one call (per instruction) is encoded once
        for i, k in enumerate(keys):
            if k is not None and k in found:
                out[i], good[i] = found[k], True
            elif k is not None and k in first_of:
                copies.append((i, first_of[k]))
            else:
                todo.append(i)
                if k is not None:
                    first_of[k] = i
        bs = batch_size or self.image_batch_size

        def load(rows: list[int]) -> tuple[list[int], list]:
            """Decode one batch; a bad file is reported and left out. Runs on a helper thread."""
            good_rows, images = [], []
            for i in rows:
                try:
                    source = items[i].image  # a file's path names the file; the item id goes in front anyway
                    label = str(source) if isinstance(source, (str, os.PathLike)) else items[i].name
                    images.append(open_image(source, name=label))
                    good_rows.append(i)
                except UnimirError as exc:
                    problems.add(str(exc), item=items[i].name)
            return good_rows, images

        batches = [todo[s:s + bs] for s in range(0, len(todo), bs)]
        # decode the next batch while the network runs on this one (Pillow releases the GIL)
        with _progress(len(todo), "encode images", progress) as bar, ThreadPoolExecutor(1) as pool:
            pending = pool.submit(load, batches[0]) if batches else None
            for b in range(len(batches)):
                rows, images = pending.result()
                pending = pool.submit(load, batches[b + 1]) if b + 1 < len(batches) else None
                if images:
                    vecs = self.embed_images(images, role)
                    out[rows], good[rows] = vecs, True
                    fresh = {keys[i]: v for i, v in zip(rows, vecs) if keys[i] is not None}
                    if cache and fresh:  # every batch, so an interrupted run resumes where it stopped
                        cache.put_many(self.fingerprint, f"image:{role}", fresh)
                bar.update(len(batches[b]))
        for i, source in copies:
            out[i], good[i] = out[source], good[source]
        return out, good


def tokens_over(tokenizer, texts: Sequence[str], limit: int, batch: int = 1024) -> list[int]:
    """Which texts a Hugging Face tokenizer makes longer than ``limit`` tokens (special tokens included)."""
    over: list[int] = []
    for start in range(0, len(texts), batch):
        ids = tokenizer(list(texts[start:start + batch]), truncation=False, verbose=False)["input_ids"]
        over += [start + i for i, row in enumerate(ids) if len(row) > limit]
    return over


def _progress(total: int, desc: str, enabled: bool):
    from ..progress import progress_bar

    return progress_bar(total, desc, enabled=enabled)


def fingerprint_of(files: "Sequence[str | os.PathLike]", settings: dict) -> str:
    """sha256 over the bytes of ``files`` (a folder: every file in it, recursively, hidden ones excepted) and the
    JSON of ``settings`` (preprocessing, precision, ...): the identity of what an encoder computes."""
    import json
    from pathlib import Path

    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for root in files:
        root = Path(root)
        paths = sorted(p for p in root.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(root).parts)) if root.is_dir() else [root]
        for p in paths:
            h.update(f"\0{p.relative_to(root).as_posix() if root.is_dir() else p.name}\0".encode())
            digest_file(p, into=h)
    return h.hexdigest()
