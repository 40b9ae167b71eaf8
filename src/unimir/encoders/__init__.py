"""Encoders: items in, L2-normalised float32 vectors out. ``load_encoder(spec)`` is the one way to build one.

Specs: ``builtin`` (offline, the default: ConSE plus a trained Lite0 -> MiniLM bridge), ``builtin-conse`` (offline
ConSE alone) and ``hf:<hub id or local dir>`` (CLIP / SigLIP via transformers).
"""

from __future__ import annotations

import threading

from ..errors import InvalidInputError
from .base import Encoder, Features, Item, l2_normalize
from .cache import EmbeddingCache

__all__ = ["Encoder", "Features", "Item", "EmbeddingCache", "load_encoder", "l2_normalize"]

_LOADED: dict[str, Encoder] = {}
_LOCK = threading.Lock()


def load_encoder(spec: str = "builtin", *, threads: int | None = None, reuse: bool = True) -> Encoder:
    """Build the encoder named by ``spec``. Loaded encoders are shared within a process unless ``reuse=False``."""
    spec = (spec or "builtin").strip()
    with _LOCK:
        if reuse and spec in _LOADED:
            return _LOADED[spec]
        if spec == "builtin":
            from .builtin import BuiltinEncoder

            encoder: Encoder = BuiltinEncoder(threads=threads)
        elif spec == "builtin-conse":
            from .builtin import ConseEncoder

            encoder = ConseEncoder(threads=threads)
        elif spec.startswith("hf:") and len(spec) > 3:
            from .hf import HFDualEncoder

            encoder = HFDualEncoder(spec[3:], threads=threads)
        else:
            raise InvalidInputError(f"unknown encoder {spec!r}: "
                                    "use 'builtin', 'builtin-conse' or 'hf:<hub id or local dir>'")
        if reuse:
            _LOADED[spec] = encoder
        return encoder
