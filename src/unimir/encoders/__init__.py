"""Encoders: items in, L2-normalised float32 vectors out. ``load_encoder(spec)`` is the one way to build one.

Specs are ``FAMILY`` or ``FAMILY:ARGUMENT``: ``builtin`` (offline, the default: ConSE plus a trained Lite0 -> MiniLM
bridge), ``builtin-conse`` (offline ConSE alone), ``hf:<hub id or local dir>`` (CLIP / SigLIP via transformers) and
``clip-sf:<dir>`` (a UniIR CLIP-SF checkpoint converted by ``unimir convert clip-sf``).

Families are a registry of encoder classes, in the pattern of the index's retrieval modes
(``index/retrievers.py``): a class names its ``family``, says whether its spec takes an argument, and is decorated
with :func:`register`; ``Encoder.from_spec`` builds it for a device. A new encoder family is one new class.
"""

from __future__ import annotations

import threading

from ..errors import InvalidInputError
from .base import FUSIONS, Encoder, Features, Item, fuse, l2_normalize
from .cache import EmbeddingCache

__all__ = ["ENCODERS", "Encoder", "Features", "Item", "EmbeddingCache", "FUSIONS", "encoder_class", "fuse",
           "fusion_of", "load_encoder", "l2_normalize", "register"]

ENCODERS: dict[str, "type[Encoder]"] = {}
_LOADED: dict[tuple[str, str], Encoder] = {}
_LOCK = threading.Lock()


def register(cls: "type[Encoder]") -> "type[Encoder]":
    ENCODERS[cls.family] = cls
    return cls


def _register_shipped() -> None:
    """Import the families that ship with unimir (they register themselves). Done on first lookup, not when
    ``unimir.encoders`` is imported: they import torch, which a CLI call that fails on its input never needs."""
    from . import builtin, clip_sf, hf  # noqa: F401


def _parse(spec: str) -> tuple["type[Encoder]", str | None]:
    """The class and argument named by ``spec``; InvalidInputError listing the families when it names none."""
    _register_shipped()
    family, colon, argument = spec.partition(":")
    cls = ENCODERS.get(family)
    if cls is None or cls.takes_argument != bool(colon) or (colon and not argument):
        usage = ", ".join(f"'{name}:{c.argument_help}'" if c.takes_argument else f"'{name}'"
                          for name, c in ENCODERS.items())
        raise InvalidInputError(f"unknown encoder {spec!r}: use {usage}")
    return cls, argument if colon else None


def encoder_class(spec: str) -> "type[Encoder]":
    """The registered class behind ``spec``, without loading any model."""
    return _parse((spec or "builtin").strip())[0]


def fusion_of(spec: str) -> str:
    """The fusion policy of the encoder named by ``spec``, without loading it (an index knows it from its manifest)."""
    try:
        return encoder_class(spec).fusion
    except InvalidInputError:
        return "unit-sum"  # an index made by an encoder this install lacks: it cannot encode new queries anyway


def load_encoder(spec: str = "builtin", *, threads: int | None = None, reuse: bool = True,
                 device: str | None = None) -> Encoder:
    """Build the encoder named by ``spec``. Loaded encoders are shared within a process unless ``reuse=False``.

    ``device`` ("cpu", "cuda") places ``hf:`` and ``clip-sf:`` models; the builtin encoders always run on the CPU.
    """
    from ..devices import resolve_device

    spec = (spec or "builtin").strip()
    device = str(resolve_device(device))
    with _LOCK:
        if reuse and (spec, device) in _LOADED:
            return _LOADED[(spec, device)]
        cls, argument = _parse(spec)
        encoder = cls.from_spec(argument, device=device, threads=threads)
        if reuse:
            _LOADED[(spec, device)] = encoder
        return encoder
