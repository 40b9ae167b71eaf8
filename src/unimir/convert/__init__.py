"""Converters from the published seed checkpoints (UniIR CLIP-SF, GENIUS) into unimir's own formats.

``clip_sf(ckpt, out)`` writes a ``clip-sf:DIR`` encoder; ``genius(rq, gen, index_dir)`` imports GENIUS's quantizer
and ID generator into an index built with such an encoder. Both read ``.pth`` files through the allow-listing
reader in :mod:`unimir.convert.pth` and write safetensors + JSON only.
"""

from __future__ import annotations

from .pth import CheckpointError, read_state_dict


def clip_sf(checkpoint, out, tokenizer=None, **kwargs):
    """Convert a UniIR CLIP-SF checkpoint into an encoder directory; see :func:`unimir.convert.from_uniir.convert`."""
    from .from_uniir import convert

    return convert(checkpoint, out, tokenizer=tokenizer, **kwargs)


def genius(rq_checkpoint, generator_checkpoint, index_dir, **kwargs):
    """Import GENIUS's quantizer and generator into an index; see :func:`unimir.convert.from_genius.convert`."""
    from .from_genius import convert

    return convert(rq_checkpoint, generator_checkpoint, index_dir, **kwargs)


__all__ = ["CheckpointError", "clip_sf", "genius", "read_state_dict"]
