"""Encoders: items in, L2-normalised float32 vectors out. ``load_encoder(spec)`` is the one way to build one.

Specs: ``builtin`` (offline, the default: ConSE plus a trained Lite0 -> MiniLM bridge), ``builtin-conse`` (offline
ConSE alone), ``hf:<hub id or local dir>`` (CLIP / SigLIP via transformers) and ``clip-sf:<dir>`` (a UniIR CLIP-SF
checkpoint converted by ``unimir convert clip-sf``).
"""

from __future__ import annotations

import threading

from ..errors import InvalidInputError
from .base import FUSIONS, Encoder, Features, Item, fuse, l2_normalize
from .cache import EmbeddingCache

__all__ = ["Encoder", "Features", "Item", "EmbeddingCache", "FUSIONS", "fuse", "fusion_of", "load_encoder",
           "l2_normalize"]

_LOADED: dict[tuple[str, str], Encoder] = {}
_LOCK = threading.Lock()


def fusion_of(spec: str) -> str:
    """The fusion policy of the encoder named by ``spec``, without loading it (an index knows it from its manifest)."""
    return "raw-sum" if (spec or "").strip().startswith("clip-sf:") else "unit-sum"


def load_encoder(spec: str = "builtin", *, threads: int | None = None, reuse: bool = True,
                 device: str | None = None) -> Encoder:
    """Build the encoder named by ``spec``. Loaded encoders are shared within a process unless ``reuse=False``.

    ``device`` ("cpu", "cuda") places ``hf:`` and ``clip-sf:`` models; the builtin encoder always runs on the CPU.
    """
    from ..devices import resolve_device

    spec = (spec or "builtin").strip()
    device = str(resolve_device(device))
    with _LOCK:
        if reuse and (spec, device) in _LOADED:
            return _LOADED[(spec, device)]
        if spec == "builtin":
            from .builtin import BuiltinEncoder

            encoder: Encoder = BuiltinEncoder(threads=threads)
        elif spec == "builtin-conse":
            from .builtin import ConseEncoder

            encoder = ConseEncoder(threads=threads)
        elif spec.startswith("hf:") and len(spec) > 3:
            from .hf import HFDualEncoder

            encoder = HFDualEncoder(spec[3:], device=device, threads=threads)
        elif spec.startswith("clip-sf:") and len(spec) > 8:
            from .clip_sf import ClipSFEncoder

            encoder = ClipSFEncoder(spec[8:], device=device, threads=threads)
        else:
            raise InvalidInputError(f"unknown encoder {spec!r}: use 'builtin', 'builtin-conse', "
                                    "'hf:<hub id or local dir>' or 'clip-sf:<dir from unimir convert clip-sf>'")
        if reuse:
            _LOADED[(spec, device)] = encoder
        return encoder
