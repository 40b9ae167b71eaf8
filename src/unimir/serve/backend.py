"""The server's backend: one object around an :class:`~unimir.index.Index` that every HTTP route calls.

It owns what the index itself does not: request validation, concurrency control, image handling and the JSON
shapes the API returns. It imports no web framework, so it can be used and tested without one.

Concurrency. Searches run in parallel threads; adding items is exclusive (a readers-writer lock, and the index
directory's inter-process lock against other writers such as ``unimir add``), because
``Index.add`` grows the FAISS partitions in place and swaps several attributes one after another. Encoder
inference runs on one thread per model, batching concurrent queries (see :mod:`.batching`): HF fast tokenizers
are not safe to call from several threads at once, and parallel forward passes only oversubscribe the cores.
Generative modes take a model lock as well.

Files. The only way from a request to the filesystem is an item id that is looked up in the index and then
mapped by :meth:`Index.image_path`; no request string is ever joined to a path.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import quote

from PIL import Image, UnidentifiedImageError

from ..data.images import bytes_digest, open_image
from ..data.records import Candidate, parse_modalities
from ..errors import InvalidInputError, NotFoundError, PayloadTooLargeError, UnimirError
from ..index import Index
from ..index.index import MAX_BEAMS, MAX_K
from .batching import BatchingEncoder

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_TEXT_CHARS = 20_000        # longer texts are refused (encoders truncate far earlier anyway)
MAX_ID_CHARS = 512
MAX_IMAGE_PIXELS = 40_000_000  # refuse giant canvases before decoding them (PIL only errors at 2x its limit)
MIN_THUMB, MAX_THUMB = 16, 1024

#: query presets for the M-BEIR task types: (label, query modality, candidate filter, instruction)
PRESETS: list[dict[str, str]] = [
    {"id": "t2i", "label": "text → image", "query": "text", "modality": "image",
     "instruction": "Retrieve an image that matches the given caption."},
    {"id": "t2t", "label": "text → text", "query": "text", "modality": "text",
     "instruction": "Retrieve a passage that answers the given question."},
    {"id": "t2it", "label": "text → image+text", "query": "text", "modality": "image,text",
     "instruction": "Find an image with a description that matches the given text."},
    {"id": "i2t", "label": "image → text", "query": "image", "modality": "text",
     "instruction": "Find a caption that describes the given image."},
    {"id": "i2i", "label": "image → image", "query": "image", "modality": "image",
     "instruction": "Find an image that looks similar to the given image."},
    {"id": "i2it", "label": "image → image+text", "query": "image", "modality": "image,text",
     "instruction": "Find an image and its description that relate to the given image."},
    {"id": "it2t", "label": "image+text → text", "query": "image,text", "modality": "text",
     "instruction": "Answer the question about the given image."},
    {"id": "it2i", "label": "image+text → image", "query": "image,text", "modality": "image",
     "instruction": "Find an image like the given one, changed as the text describes."},
    {"id": "it2it", "label": "image+text → image+text", "query": "image,text", "modality": "image,text",
     "instruction": "Find an image and text that match the given image and question."},
]

_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp", "BMP": "image/bmp",
         "TIFF": "image/tiff"}
_BROWSER_SAFE = {"JPEG", "PNG", "GIF", "WEBP"}  # served as-is; other formats are converted to PNG


# --- small concurrency helpers -------------------------------------------------------------------------------

class ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers, so adds are not starved by searches."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def acquire_read(self) -> None:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True

    def release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()

    class _Guard:
        def __init__(self, acquire, release):
            self._acquire, self._release = acquire, release

        def __enter__(self):
            self._acquire()

        def __exit__(self, *exc):
            self._release()

    def reading(self) -> "_Guard":
        return self._Guard(self.acquire_read, self.release_read)

    def writing(self) -> "_Guard":
        return self._Guard(self.acquire_write, self.release_write)


class _LRU:
    """A small thread-safe LRU of thumbnail bytes, bounded by entry count and total bytes."""

    def __init__(self, max_items: int = 512, max_bytes: int = 64 * 1024 * 1024):
        self.max_items, self.max_bytes = max_items, max_bytes
        self._data: OrderedDict[Any, tuple[bytes, str]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key, value: tuple[bytes, str]) -> None:
        size = len(value[0])
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= len(old[0])
            self._data[key] = value
            self._bytes += size
            while len(self._data) > self.max_items or self._bytes > self.max_bytes:
                _, dropped = self._data.popitem(last=False)
                self._bytes -= len(dropped[0])

    def __len__(self) -> int:
        return len(self._data)


# --- requests --------------------------------------------------------------------------------------------------

SEARCH_FIELDS = ("text", "image", "image_id", "instruction", "modality", "mode", "k", "beams", "exclude_query")
ADD_FIELDS = ("text", "image", "id", "src_content")


@dataclass
class SearchQuery:
    text: str | None = None
    image: bytes | None = None
    image_id: str | None = None
    instruction: str | None = None
    modality: Any = None
    mode: str = "dense"
    k: int = 10
    beams: int | None = None
    exclude_query: bool = False


@dataclass
class NewItem:
    text: str | None = None
    image: bytes | None = None
    id: str | None = None
    src_content: str | None = None


class SearchBackend:
    """Validates requests, runs them on the shared index and shapes the answers. Thread-safe."""

    def __init__(self, index: Index, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                 thumbnail_cache_items: int = 512):
        if max_upload_bytes <= 0:
            raise InvalidInputError(f"max_upload_bytes must be positive, got {max_upload_bytes!r}")
        self.index = index
        self.max_upload_bytes = int(max_upload_bytes)
        self.rw = ReadWriteLock()
        self.model_lock = threading.RLock()  # generative decoding (torch) runs one at a time
        self._add_lock = threading.Lock()
        enc = index.encoder  # loads the encoder now, once, instead of on the first request
        if not isinstance(enc, BatchingEncoder):
            index.encoder = BatchingEncoder(enc)
        self.thumbnails = _LRU(max_items=thumbnail_cache_items)
        self.started = time.time()

    # --- warm-up and status -------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Run one text and one image query so the first real request pays no lazy initialisation."""
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (128, 128, 128)).save(buf, "PNG")
        try:
            self.index.search("warm up", buf.getvalue(), k=1)
        except UnimirError:
            pass

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "items": len(self.index), "uptime_s": round(time.time() - self.started, 1)}

    def info(self) -> dict[str, Any]:
        m = self.index.manifest
        counts = {mod.value: n for mod, n in self.index.modality_counts().items()}
        return {"items": len(self.index), "modality_counts": counts, "encoder": m.encoder, "dim": m.dim,
                "index_spec": m.index_spec, "modes": list(self.index.modes), "max_k": MAX_K,
                "max_upload_bytes": self.max_upload_bytes, "presets": PRESETS}

    # --- parsing ------------------------------------------------------------------------------------------
    def parse_search(self, fields: Mapping[str, Any]) -> SearchQuery:
        _no_unknown(fields, SEARCH_FIELDS)
        return SearchQuery(
            text=_text(fields, "text", MAX_TEXT_CHARS),
            image=self._image(fields.get("image")),
            image_id=_text(fields, "image_id", MAX_ID_CHARS),
            instruction=_text(fields, "instruction", MAX_TEXT_CHARS),
            modality=_modality(fields.get("modality")),
            mode=_text(fields, "mode", 64) or "dense",
            k=_int(fields.get("k"), "k", 10),
            beams=_int(fields.get("beams"), "beams", None),
            exclude_query=_bool(fields.get("exclude_query"), "exclude_query"),
        )

    def parse_item(self, fields: Mapping[str, Any]) -> NewItem:
        _no_unknown(fields, ADD_FIELDS)
        did = fields.get("id")
        if did is not None:  # given, even blank: an explicit id is never replaced by an automatic one
            if not isinstance(did, str):
                raise InvalidInputError("id must be a string")
            if len(did) > MAX_ID_CHARS:
                raise InvalidInputError(f"id is too long ({len(did)} characters, at most {MAX_ID_CHARS})")
            did = did.strip()
            if not did or any(ord(ch) < 32 or ord(ch) == 127 for ch in did):
                raise InvalidInputError("id must be a non-empty string without control characters (leave it out "
                                        "for an id made from the content)")
        return NewItem(text=_text(fields, "text", MAX_TEXT_CHARS), image=self._image(fields.get("image")),
                       id=did, src_content=_text(fields, "src_content", MAX_TEXT_CHARS))

    def _image(self, value: Any) -> bytes | None:
        """Upload bytes or a base64 string (optionally a data: URL) -> checked image bytes, or None."""
        if value is None or value == "":
            return None
        if isinstance(value, str):
            s = value.strip()
            if s.startswith("data:"):
                s = s.partition(",")[2]
            if len(s) > self.max_upload_bytes * 4 // 3 + 8:
                raise PayloadTooLargeError(f"image over the upload limit of {_mb(self.max_upload_bytes)}")
            try:
                value = base64.b64decode("".join(s.split()), validate=True)
            except (binascii.Error, ValueError):
                raise InvalidInputError("image: not valid base64 (send the file as a multipart upload, or "
                                        "its bytes base64-encoded in JSON)") from None
        elif not isinstance(value, (bytes, bytearray)):
            raise InvalidInputError("image must be an uploaded file or a base64 string")
        data = bytes(value)
        if len(data) > self.max_upload_bytes:
            raise PayloadTooLargeError(f"image of {_mb(len(data))} is over the upload limit of "
                                       f"{_mb(self.max_upload_bytes)}")
        if not data:
            raise InvalidInputError("image: the upload is empty (0 bytes)")
        _check_image(data)
        return data

    # --- search -------------------------------------------------------------------------------------------
    def search(self, q: SearchQuery) -> dict[str, Any]:
        t0 = time.perf_counter()
        image: bytes | None = q.image
        if q.image_id is not None:
            if image is not None:
                raise InvalidInputError("give either image or image_id, not both")
            image = self._stored_image_bytes(q.image_id)
            try:
                open_image(image, name=q.image_id)
            except InvalidInputError:  # the server's file, not the client's request, is at fault
                raise NotFoundError(f"the image of item {q.image_id!r} is unreadable on the server") from None
        with self.rw.reading():
            if q.mode != "dense":
                with self.model_lock:
                    result = self._search(q, image)
            else:
                result = self._search(q, image)
        hits = []
        for h in result.hits:
            hits.append({"rank": h.rank, "id": h.did, "modality": h.modality, "text": h.txt,
                         "score": _finite(h.score), "tie_group": h.tie_group,
                         "image_url": image_url(h.did) if h.img_path else None})
        timings = dict(result.timings_ms)
        timings["total"] = round((time.perf_counter() - t0) * 1000, 2)
        return {"query": {"text": q.text, "instruction": q.instruction, "query_text": result.query_text,
                          "image": q.image is not None, "image_id": q.image_id,
                          "modality": _modality_label(q.modality), "mode": result.mode, "k": q.k},
                "results": hits, "count": len(hits), "timings_ms": timings}

    def _search(self, q: SearchQuery, image: bytes | None):
        return self.index.search(q.text, image, instruction=q.instruction, modality=q.modality, k=q.k,
                                 mode=q.mode, beams=q.beams, exclude_query=q.exclude_query)

    # --- items --------------------------------------------------------------------------------------------
    def item(self, did: str) -> dict[str, Any]:
        return item_json(self.index.get(did))

    def has_item(self, did: str) -> bool:
        return did in self.index.row_of

    def _stored_image_bytes(self, did: str) -> bytes:
        cand = self.index.get(did)
        try:
            with open(self.index.served_image_path(cand), "rb") as f:  # a path recorded in the index, never a request's
                return f.read()
        except OSError:
            raise NotFoundError(f"the image of item {did!r} is missing on the server") from None

    def item_image(self, did: str, size: int | None = None) -> tuple[bytes, str]:
        """(bytes, media type) of an item's image: the original file, or a JPEG/PNG thumbnail fitting size²."""
        cand = self.index.get(did)
        if not cand.img_path:
            raise NotFoundError(f"item {did!r} has no image")
        if size is not None and not MIN_THUMB <= size <= MAX_THUMB:
            raise InvalidInputError(f"size must be from {MIN_THUMB} to {MAX_THUMB} pixels, got {size}")
        key = (did, cand.img_path, size)
        cached = self.thumbnails.get(key) if size is not None else None
        if cached is not None:
            return cached
        data = self._stored_image_bytes(did)
        try:
            with Image.open(io.BytesIO(data)) as probe:
                fmt = probe.format or ""
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            raise NotFoundError(f"the image of item {did!r} is unreadable on the server") from None
        if size is None:
            if fmt in _BROWSER_SAFE:
                return data, _MIME[fmt]
            size = MAX_THUMB  # TIFF, BMP, ...: convert for the browser
        out = _thumbnail(data, size, did)
        self.thumbnails.put(key, out)
        return out

    def add(self, item: NewItem) -> tuple[dict[str, Any], bool]:
        """Add one item; returns (record, created). Re-sending identical content without an id is idempotent."""
        if (item.text is None or not item.text.strip()) and item.image is None:
            raise InvalidInputError("an item needs a text, an image or both")
        did = item.id or auto_id(item.text, item.image)
        # Check-then-add must not interleave with another add: of this server (the thread lock) or of another
        # process writing the same directory, such as 'unimir add' (the directory lock). Under both, first catch
        # up with what the other writers committed, so the check sees their items and the save keeps them.
        with self._add_lock, self.index.writer_lock():
            with self.rw.writing():
                self.index.catch_up()
            if self.has_item(did):
                if item.id is not None:
                    raise ConflictError(f"an item with id {did!r} already exists")
                return item_json(self.index.get(did)), False  # the same content, sent again
            with self.rw.writing():
                cand = self.index.add_upload(text=item.text, image=item.image, did=did, src_content=item.src_content)
        return item_json(cand), True

    def delete(self, did: str) -> None:
        """Delete one item by id (404 if absent); exclusive like an add."""
        with self._add_lock, self.index.writer_lock():
            with self.rw.writing():
                self.index.catch_up()  # another writer may have added or deleted it
            if not self.has_item(did):
                raise NotFoundError(f"no item with id {did!r} in this index")
            with self.rw.writing():
                self.index.delete([did])


class ConflictError(InvalidInputError):
    """An id that is already taken."""

    http_status = 409


# --- helpers ---------------------------------------------------------------------------------------------------

def image_url(did: str, size: int | None = None) -> str:
    url = f"/items/{quote(did, safe='')}/image"
    return url if size is None else f"{url}?size={size}"


def auto_id(text: str | None, image: bytes | None) -> str:
    """The id of an upload sent without one: a digest of its content (the same rule as Index.add_upload)."""
    return f"u:{bytes_digest((text or '').encode() + (image or b''))[:12]}"


def item_json(c: Candidate) -> dict[str, Any]:
    return {"id": c.did, "modality": c.modality.value, "text": c.txt, "src_content": c.src_content,
            "image_url": image_url(c.did) if c.img_path else None}


def _no_unknown(fields: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise InvalidInputError(f"unknown field(s) {', '.join(map(repr, unknown))}: use {', '.join(allowed)}")


def _text(fields: Mapping[str, Any], name: str, limit: int) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a string")
    if len(value) > limit:
        raise InvalidInputError(f"{name} is too long ({len(value)} characters, at most {limit})")
    return value if value.strip() else None


def _int(value: Any, name: str, default: int | None) -> int | None:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise InvalidInputError(f"{name} must be an integer, got {_shown(value)}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        # past 18 digits far out of range (and past 4,300 too long for int() to parse at all)
        n = int(value.strip()) if len(value.strip()) <= 18 else MAX_K + MAX_BEAMS + 1
    else:
        raise InvalidInputError(f"{name} must be an integer, got {_shown(value)}")
    if name == "k" and not 1 <= n <= MAX_K:
        raise InvalidInputError(f"k must be an integer from 1 to {MAX_K}, got {_shown(value)}")
    if name == "beams" and not 1 <= n <= MAX_BEAMS:
        raise InvalidInputError(f"beams must be from 1 to {MAX_BEAMS}, got {_shown(value)}")
    return n


def _shown(value: Any, limit: int = 40) -> str:
    """A client's value quoted in an error message, cut short (a 1e308 or a 5,000-digit string stays readable)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _bool(value: Any, name: str) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise InvalidInputError(f"{name} must be true or false, got {_shown(value)}")


def _modality(value: Any):
    if value is None or value == "" or (isinstance(value, str) and value.strip().lower() in ("any", "all")):
        return None
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) for v in value):
            raise InvalidInputError("modality must be a string or a list of strings")
        if not value:
            return None
    elif not isinstance(value, str):
        raise InvalidInputError("modality must be a string or a list of strings")
    return [m.value for m in parse_modalities(value)]  # validates: unknown names are a 400


def _modality_label(value) -> str:
    return "any" if not value else "|".join(value)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _check_image(data: bytes) -> None:
    """Refuse bytes that are not an image, or an image too large to decode, before any model sees them."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise InvalidInputError("image: cannot decode the upload (not an image, or a format Pillow does not "
                                "read); send a PNG, JPEG, GIF or WebP") from None
    if w * h > MAX_IMAGE_PIXELS:
        raise InvalidInputError(f"image of {w}x{h} pixels is too large (at most {MAX_IMAGE_PIXELS // 1_000_000} "
                                "megapixels)")


def _thumbnail(data: bytes, size: int, did: str) -> tuple[bytes, str]:
    try:
        with Image.open(io.BytesIO(data)) as probe:
            transparent = probe.mode in ("RGBA", "LA") or "transparency" in probe.info
        img = open_image(data, name=f"item {did!r}")
    except UnimirError:
        raise NotFoundError(f"the image of item {did!r} is unreadable on the server") from None
    except (OSError, ValueError):
        raise NotFoundError(f"the image of item {did!r} is unreadable on the server") from None
    img.thumbnail((size, size), Image.Resampling.LANCZOS if max(img.size) < 2 * size else Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    if transparent or max(img.size) <= 64:
        img.save(buf, "PNG", optimize=False)  # composited onto white; PNG keeps flat clip-art crisp
        return buf.getvalue(), "image/png"
    img.save(buf, "JPEG", quality=85, optimize=True)
    return buf.getvalue(), "image/jpeg"


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KB"
