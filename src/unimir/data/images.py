"""Opening images safely: every failure becomes an error that names the file and says what to do."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import InvalidInputError, NotFoundError

MAX_IMAGE_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # refuse decompression bombs with a clear error instead of exhausting memory
# Pillow only warns between 1x and 2x the limit; make that an error too, so open_image refuses it in one line
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


def open_image(source: "str | os.PathLike | bytes | Image.Image", name: str | None = None) -> Image.Image:
    """Decode an image fully into RGB. Raises NotFoundError for a missing file, InvalidInputError for a corrupt one."""
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    label = name or ("<uploaded image>" if isinstance(source, (bytes, bytearray)) else str(source))
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise InvalidInputError(f"{label}: the image is empty (0 bytes)")
    elif not Path(source).is_file():
        if Path(source).is_dir():
            raise NotFoundError(f"{source} is a folder, not an image file (check the path or --root)")
        raise NotFoundError(f"image file not found: {source} (check the path or --root)")
    try:
        with warnings.catch_warnings():  # the module-level filter may have been reset (pytest does per test)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _decode(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInputError(f"{label}: image too large ({_pixels(exc)}; the limit is {MAX_IMAGE_PIXELS:,} "
                                "pixels); downscale it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidInputError(f"{label}: cannot decode image ({exc.__class__.__name__}: {exc}); "
                                "re-export it as PNG or JPEG or remove it") from None
    return _to_rgb(img)


def _decode(source: "str | os.PathLike | bytes") -> Image.Image:
    if isinstance(source, (bytes, bytearray)):
        img = Image.open(io.BytesIO(source))
    else:
        img = Image.open(source)
    img.draft("RGB", (448, 448))  # JPEG: let the decoder downscale big photos cheaply
    img.load()
    return img


def _pixels(exc: Exception) -> str:
    """'W x H pixels' from Pillow's decompression-bomb message, else a generic phrase."""
    import re

    found = re.search(r"\((\d+) pixels\)", str(exc))
    return f"{int(found.group(1)):,} pixels" if found else "too many pixels"


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, compositing any transparency onto white (clip-art on a transparent background would turn black)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


_SUFFIXES = {"JPEG": ".jpg", "MPO": ".jpg", "TIFF": ".tif"}


def image_suffix(data: bytes) -> str:
    """The file suffix of image bytes by their own format (``.png``, ``.jpg``, ``.gif``, ``.bmp``, ...), for
    storing an upload under a name that says what it is; ``.img`` when Pillow cannot tell."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format or ""
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return ".img"
    return _SUFFIXES.get(fmt, f".{fmt.lower()}" if fmt.isalnum() else ".img")


def file_digest(path: "str | os.PathLike") -> str:
    """The sha1 that names an image's content (embedding cache, duplicate detection)."""
    from ..atomic import digest_file

    return digest_file(path, "sha1")


def bytes_digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()
