"""Bring-your-own embeddings: candidate parts computed elsewhere (GENIUS's feature-extraction stage), read lazily.

Two layouts, one row per pool record in pool order, parts unit-norm (or zero where absent):

* a ``.safetensors`` file with tensors ``image`` and ``text`` (float16/float32 [n, d]) and optionally
  ``image_mask`` and ``text_mask`` (bool/uint8 [n]) and ``joint`` (float16/float32 [n, d]: a vector the model
  computed for each item as a whole, which then is the item's dense vector; see ``Features.joint``);
* a folder with ``image.npy`` and ``text.npy`` (and optionally ``image_mask.npy``, ``text_mask.npy``,
  ``joint.npy``).

Missing masks are derived from the rows (a part is present where its row is non-zero). Arrays stay on disk:
``.npy`` files are memory-mapped and safetensors tensors are sliced through ``safe_open``, so building from
a file larger than RAM reads it one chunk at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..encoders import Features
from ..errors import InvalidInputError

PARTS = ("image", "text")
MASKS = ("image_mask", "text_mask")
JOINT = "joint"


class _SafetensorsColumn:
    """One tensor of a safetensors file, sliced on demand (rows only)."""

    def __init__(self, path: Path, name: str, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.name, self.shape, self.dtype = path, name, shape, dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows):
        from safetensors import safe_open

        with safe_open(str(self.path), framework="numpy") as f:
            if isinstance(rows, slice):  # safetensors refuses a slice past the end, which numpy clips
                return f.get_slice(self.name)[slice(*rows.indices(self.shape[0]))]
            rows = np.asarray(rows)
            if rows.dtype == bool:
                rows = np.flatnonzero(rows)
            if not len(rows):
                return np.zeros((0,) + self.shape[1:], self.dtype)
            lo, hi = int(rows.min()), int(rows.max()) + 1
            return f.get_slice(self.name)[lo:hi][rows - lo]


def read_features(path: "str | Path") -> Features:
    """The parts and masks stored at ``path`` (see the module docstring), without reading the vectors yet."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: features file not found")
    columns: dict[str, object] = {}
    if path.is_dir():
        for name in PARTS + MASKS + (JOINT,):
            file = path / f"{name}.npy"
            if file.exists():
                try:
                    columns[name] = np.load(file, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError) as exc:
                    raise InvalidInputError(f"{file}: not a readable .npy array ({exc})") from None
    elif path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                for name in f.keys():
                    if name in PARTS + MASKS + (JOINT,):
                        part = f.get_slice(name)
                        dtype = np.dtype({"F16": np.float16, "F32": np.float32, "BOOL": bool, "U8": np.uint8}
                                         .get(part.get_dtype(), np.float32))
                        columns[name] = _SafetensorsColumn(path, name, tuple(part.get_shape()), dtype)
        except Exception as exc:  # safetensors raises its own error types
            raise InvalidInputError(f"{path}: not a readable safetensors file ({exc})") from None
    else:
        raise InvalidInputError(f"{path}: features must be a .safetensors file or a folder of .npy files "
                                "(image.npy, text.npy, optional image_mask.npy / text_mask.npy)")
    missing = [p for p in PARTS if p not in columns]
    if missing:
        raise InvalidInputError(f"{path}: missing {' and '.join(missing)} (parts 'image' and 'text', [n, d] each)")
    image, text = columns["image"], columns["text"]
    if len(image.shape) != 2 or image.shape != text.shape:  # type: ignore[attr-defined]
        raise InvalidInputError(f"{path}: 'image' {image.shape} and 'text' {text.shape} must both be [n, d]")
    n = image.shape[0]  # type: ignore[attr-defined]
    masks = []
    for part, mask_name in zip((image, text), MASKS):
        if mask_name in columns:
            mask = np.asarray(columns[mask_name][:]).astype(bool).reshape(-1)  # type: ignore[index]
            if mask.shape != (n,):
                raise InvalidInputError(f"{path}: '{mask_name}' must be [{n}], got {mask.shape}")
        else:
            mask = np.concatenate([np.any(np.asarray(part[s:s + 65536]) != 0, axis=1)  # type: ignore[index]
                                   for s in range(0, n, 65536)]) if n else np.zeros(0, bool)
        masks.append(mask)
    joint = columns.get(JOINT)
    if joint is not None and tuple(joint.shape) != tuple(image.shape):  # type: ignore[attr-defined]
        raise InvalidInputError(f"{path}: 'joint' {joint.shape} must be [n, d] like the parts, {image.shape}")
    return Features(image, text, masks[0], masks[1], joint)  # type: ignore[arg-type]
