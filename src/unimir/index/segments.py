"""A segment: the rows appended together, written once, read memory-mapped.

Files of ``seg-000007-…/``: ``records.sqlite`` (see ``records.py``); ``modality.npy`` (int8 [n], the M-BEIR
modality code) and ``masks.npy`` (uint8 [n], bit 0 = has an image part, bit 1 = has a text part); the dense
partitions of the vector store; ``codes.npy`` (generative IDs of the rows) when a generative model existed at
append time; and, only in an index that keeps parts (``unimir index --keep-parts``, format v2 indexes),
``image.npy`` and ``text.npy`` (fp16 [rows with that part, d], each part only for the items that have it).

Each item's dense vector is stored once, by the vector store (its fused, or encoder-computed joint, vector in
the store's own form: fp16 for ``flat``). The parts are what generative retrieval learns from (the quantizer
embeds parts, not the fused vector), so they are kept on request only: an index that does not keep them gets
them back by re-encoding its records through the encoder and its embedding cache (``Index.features_at``).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from ..data.records import Candidate
from ..encoders import Features
from ..errors import IndexFormatError
from .records import RECORDS_FILE, RecordTable, build_records

IMAGE_BIT, TEXT_BIT = 1, 2
CODES_FILE = "codes.npy"
PART_FILES = ("image", "text")


class Segment:
    """One segment's rows: records, modality codes, part masks, fp16 parts (when kept), generative codes.

    An in-memory segment (not written yet) always holds its parts, for what runs before the commit (codes of
    rows adopted from another writer, the index-time refresh); ``keep_parts`` says whether ``write`` persists
    them. A persisted segment memory-maps whatever was written."""

    def __init__(self, name: str, first_row: int, records: RecordTable, modality: np.ndarray, masks: np.ndarray,
                 image: np.ndarray | None, text: np.ndarray | None, codes: np.ndarray | None = None,
                 folder: Path | None = None, keep_parts: bool = True):
        self.name, self.first_row, self.records, self.folder = name, first_row, records, folder
        self.modality, self.masks, self.image, self.text, self.codes = modality, masks, image, text, codes
        self.keep_parts = keep_parts and image is not None
        self.rows = int(modality.shape[0])
        if (image is None) != (text is None):
            raise IndexFormatError(f"segment {name}: one part file without the other; rebuild the index")
        if masks.shape[0] != self.rows or records.rows != self.rows or (image is not None and (
                int(((masks & IMAGE_BIT) != 0).sum()) != image.shape[0]
                or int(((masks & TEXT_BIT) != 0).sum()) != text.shape[0])):
            raise IndexFormatError(f"segment {name}: {self.rows} rows, {records.rows} records, {masks.shape[0]} "
                                   "masks and the part files do not agree; rebuild the index")

    @property
    def end_row(self) -> int:
        return self.first_row + self.rows

    @property
    def has_parts(self) -> bool:
        return self.image is not None

    @cached_property
    def _positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Position of each row's part in image / text (-1: none), int32; built on first read of the parts, so
        an index that only searches never holds them."""
        has_image, has_text = (self.masks & IMAGE_BIT) != 0, (self.masks & TEXT_BIT) != 0
        return (np.where(has_image, np.cumsum(has_image, dtype=np.int32) - 1, -1).astype(np.int32),
                np.where(has_text, np.cumsum(has_text, dtype=np.int32) - 1, -1).astype(np.int32))

    # --- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_features(cls, name: str, first_row: int, candidates: list[Candidate], digests: list[str | None],
                      features: Features, codes: np.ndarray | None = None, *, keep_parts: bool = True) -> "Segment":
        """A new in-memory segment (``write`` persists it, with its parts when ``keep_parts``)."""
        masks = (features.image_mask.astype(np.uint8) * IMAGE_BIT) | (features.text_mask.astype(np.uint8) * TEXT_BIT)
        return cls(name, first_row, RecordTable(build_records(candidates, digests)), _modality(candidates), masks,
                   np.asarray(features.image[features.image_mask], np.float16),
                   np.asarray(features.text[features.text_mask], np.float16), codes, keep_parts=keep_parts)

    @classmethod
    def without_parts(cls, name: str, first_row: int, candidates: list[Candidate], digests: list[str | None],
                      masks: np.ndarray, codes: np.ndarray | None = None) -> "Segment":
        """A new in-memory segment of rows whose parts are not at hand (compacting an index that keeps none)."""
        return cls(name, first_row, RecordTable(build_records(candidates, digests)), _modality(candidates),
                   np.asarray(masks, np.uint8), None, None, codes, keep_parts=False)

    def write(self, folder: Path) -> None:
        """Write this segment's own files into ``folder`` (new and empty); the caller syncs and commits."""
        self.records.write(folder / RECORDS_FILE)
        arrays = {"modality": self.modality, "masks": self.masks}
        if self.keep_parts:
            arrays.update(image=self.image, text=self.text)
        for name, array in arrays.items():
            np.save(folder / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        if self.codes is not None:
            np.save(folder / CODES_FILE, np.ascontiguousarray(self.codes), allow_pickle=False)

    @classmethod
    def open(cls, folder: Path, name: str, first_row: int, codes_path: Path | None = None,
             parts: bool = True) -> "Segment":
        """Open a persisted segment: arrays memory-mapped, records read on demand; ``parts``: the index keeps
        part files (their absence is then damage)."""
        arrays = {n: _load(folder / f"{n}.npy") for n in ("modality", "masks") + (PART_FILES if parts else ())}
        codes = _load(codes_path) if codes_path is not None else None
        if codes is not None and codes.shape[0] != arrays["modality"].shape[0]:
            raise IndexFormatError(f"{codes_path}: {codes.shape[0]} codes for {arrays['modality'].shape[0]} rows; "
                                   "run 'unimir train' again")
        for part in PART_FILES if parts else ():
            if arrays[part].ndim != 2:
                raise IndexFormatError(f"{folder / part}.npy: shape {arrays[part].shape} is not [rows, dimension]; "
                                       "rebuild the index with 'unimir index'")
        return cls(name, first_row, RecordTable.open(folder / RECORDS_FILE), arrays["modality"], arrays["masks"],
                   arrays.get("image"), arrays.get("text"), codes, folder, keep_parts=parts)

    # --- reading --------------------------------------------------------------------------------------------
    def part_masks(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = np.asarray(self.masks[rows])
        return (m & IMAGE_BIT) != 0, (m & TEXT_BIT) != 0

    def features(self, rows: np.ndarray | slice | None = None) -> Features:
        """float32 parts of local ``rows`` (all rows when None), zeros where a part is absent."""
        if not self.has_parts:
            raise IndexFormatError(f"segment {self.name} keeps no part vectors")
        sel = np.arange(self.rows) if rows is None else np.arange(self.rows)[rows] if isinstance(rows, slice) \
            else np.asarray(rows, dtype=np.int64)
        dim = self.image.shape[1]
        image, text = np.zeros((len(sel), dim), np.float32), np.zeros((len(sel), dim), np.float32)
        image_pos, text_pos = self._positions
        ip, tp = image_pos[sel], text_pos[sel]
        image[ip >= 0] = self.image[ip[ip >= 0]]
        text[tp >= 0] = self.text[tp[tp >= 0]]
        return Features(image, text, ip >= 0, tp >= 0)

    def close(self) -> None:
        self.records.close()


def _modality(candidates: list[Candidate]) -> np.ndarray:
    return np.asarray([c.modality.code for c in candidates], dtype=np.int8)


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{path}: missing or unreadable ({exc}); rebuild the index") from None
