"""A segment: the rows appended together, written once, read memory-mapped.

Files of ``seg-000007/``: ``records.sqlite`` (see ``records.py``); ``modality.npy`` (int8 [n], the M-BEIR
modality code) and ``masks.npy`` (uint8 [n], bit 0 = has an image part, bit 1 = has a text part); ``image.npy``
and ``text.npy`` (fp16 [rows with that part, d]: each part is stored once, and only for items that have it, so a
text-only item costs one vector, not two); the dense partitions of the vector store; ``codes.npy`` (generative
IDs of the rows) when a generative model existed at append time.

Fused (score-fusion) vectors are never stored as a separate copy: they are computed from the parts for the rows
that need them (``features``), and the dense vector store keeps them in its own (possibly compressed) form.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.records import Candidate
from ..encoders import Features
from ..errors import IndexFormatError
from .records import RECORDS_FILE, RecordTable, build_records

IMAGE_BIT, TEXT_BIT = 1, 2
CODES_FILE = "codes.npy"


class Segment:
    """One segment's rows: records, modality codes, fp16 parts (memory-mapped once persisted), generative codes."""

    def __init__(self, name: str, first_row: int, records: RecordTable, modality: np.ndarray, masks: np.ndarray,
                 image: np.ndarray, text: np.ndarray, codes: np.ndarray | None = None, folder: Path | None = None):
        self.name, self.first_row, self.records, self.folder = name, first_row, records, folder
        self.modality, self.masks, self.image, self.text, self.codes = modality, masks, image, text, codes
        self.rows = int(modality.shape[0])
        # position of each row's part in image / text (-1: none); int32 is 4 B per row and part
        has_image, has_text = (masks & IMAGE_BIT) != 0, (masks & TEXT_BIT) != 0
        self._image_pos = np.where(has_image, np.cumsum(has_image, dtype=np.int32) - 1, -1).astype(np.int32)
        self._text_pos = np.where(has_text, np.cumsum(has_text, dtype=np.int32) - 1, -1).astype(np.int32)
        if int(has_image.sum()) != image.shape[0] or int(has_text.sum()) != text.shape[0] or records.rows != self.rows:
            raise IndexFormatError(f"segment {name}: {self.rows} rows, {records.rows} records, {image.shape[0]} "
                                   f"image and {text.shape[0]} text parts do not agree; rebuild the index")

    @property
    def end_row(self) -> int:
        return self.first_row + self.rows

    # --- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_features(cls, name: str, first_row: int, candidates: list[Candidate], digests: list[str | None],
                      features: Features, codes: np.ndarray | None = None) -> "Segment":
        """A new in-memory segment (``write`` persists it)."""
        masks = (features.image_mask.astype(np.uint8) * IMAGE_BIT) | (features.text_mask.astype(np.uint8) * TEXT_BIT)
        modality = np.asarray([c.modality.code for c in candidates], dtype=np.int8)
        records = RecordTable(build_records(candidates, digests))
        return cls(name, first_row, records, modality, masks, features.image[features.image_mask].astype(np.float16),
                   features.text[features.text_mask].astype(np.float16), codes)

    def write(self, folder: Path) -> None:
        """Write this segment's own files into ``folder`` (new and empty); the caller syncs and commits."""
        self.records.write(folder / RECORDS_FILE)
        for name, array in (("modality", self.modality), ("masks", self.masks), ("image", self.image),
                            ("text", self.text)):
            np.save(folder / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        if self.codes is not None:
            np.save(folder / CODES_FILE, np.ascontiguousarray(self.codes), allow_pickle=False)

    @classmethod
    def open(cls, folder: Path, name: str, first_row: int, codes_path: Path | None = None) -> "Segment":
        """Open a persisted segment: arrays memory-mapped, records read on demand."""
        arrays = {n: _load(folder / f"{n}.npy") for n in ("modality", "masks", "image", "text")}
        codes = _load(codes_path) if codes_path is not None else None
        if codes is not None and codes.shape[0] != arrays["modality"].shape[0]:
            raise IndexFormatError(f"{codes_path}: {codes.shape[0]} codes for {arrays['modality'].shape[0]} rows; "
                                   "run 'unimir train' again")
        for part in ("image", "text"):
            if arrays[part].ndim != 2:
                raise IndexFormatError(f"{folder / part}.npy: shape {arrays[part].shape} is not [rows, dimension]; "
                                       "rebuild the index with 'unimir index'")
        return cls(name, first_row, RecordTable.open(folder / RECORDS_FILE), arrays["modality"], arrays["masks"],
                   arrays["image"], arrays["text"], codes, folder)

    # --- reading --------------------------------------------------------------------------------------------
    def features(self, rows: np.ndarray | slice | None = None) -> Features:
        """float32 parts of local ``rows`` (all rows when None), zeros where a part is absent."""
        sel = np.arange(self.rows) if rows is None else np.arange(self.rows)[rows] if isinstance(rows, slice) \
            else np.asarray(rows, dtype=np.int64)
        dim = self.image.shape[1]
        image, text = np.zeros((len(sel), dim), np.float32), np.zeros((len(sel), dim), np.float32)
        ip, tp = self._image_pos[sel], self._text_pos[sel]
        image[ip >= 0] = self.image[ip[ip >= 0]]
        text[tp >= 0] = self.text[tp[tp >= 0]]
        return Features(image, text, ip >= 0, tp >= 0)

    def close(self) -> None:
        self.records.close()


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{path}: missing or unreadable ({exc}); rebuild the index") from None

