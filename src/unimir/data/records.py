"""Typed records of the M-BEIR format: modalities, queries, candidates."""

from __future__ import annotations

import json
from array import array
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ..errors import InvalidInputError

INDEX_MEDIA = "index:"  # img_path prefix of images stored inside an index directory (uploads); never from a pool


class Modality(str, Enum):
    """The three M-BEIR modality strings. ``code`` is the GENIUS level-0 code (0 image, 1 text, 2 image+text)."""

    IMAGE = "image"
    TEXT = "text"
    IMAGE_TEXT = "image,text"

    @property
    def code(self) -> int:
        return _CODES[self]

    @classmethod
    def from_code(cls, code: int) -> "Modality":
        return _BY_CODE[int(code)]

    @classmethod
    def parse(cls, value: "str | Modality") -> "Modality":
        """Accept the exact M-BEIR spelling, plus a few forgiving aliases (``image+text``, ``text,image``)."""
        if isinstance(value, Modality):
            return value
        key = str(value).strip().lower().replace(" ", "")
        key = _ALIASES.get(key, key)
        try:
            return cls(key)
        except ValueError:
            raise InvalidInputError(
                f"unknown modality {value!r}: use one of 'image', 'text', 'image,text'"
            ) from None

    @classmethod
    def of(cls, has_text: bool, has_image: bool) -> "Modality":
        if has_text and has_image:
            return cls.IMAGE_TEXT
        if has_image:
            return cls.IMAGE
        if has_text:
            return cls.TEXT
        raise InvalidInputError("an item needs a text, an image, or both")

    @property
    def has_image(self) -> bool:
        return self is not Modality.TEXT

    @property
    def has_text(self) -> bool:
        return self is not Modality.IMAGE

    def __str__(self) -> str:  # so f-strings print 'image,text', not 'Modality.IMAGE_TEXT'
        return self.value


_CODES = {Modality.IMAGE: 0, Modality.TEXT: 1, Modality.IMAGE_TEXT: 2}
_BY_CODE = {v: k for k, v in _CODES.items()}
_ALIASES = {"image+text": "image,text", "text,image": "image,text", "text+image": "image,text",
            "img": "image", "txt": "text"}


def modality_mismatch(modality: Modality, has_text: bool, has_image: bool) -> str | None:
    """Why a record's modality names a part its fields do not set, or None when they set it."""
    if (modality.has_text and not has_text) or (modality.has_image and not has_image):
        return (f"modality {modality.value!r} does not match the fields that are set "
                f"(text: {'yes' if has_text else 'no'}, image: {'yes' if has_image else 'no'})")
    return None


def parse_modalities(value: "str | Modality | list | tuple | None") -> "tuple[Modality, ...] | None":
    """A candidate-modality filter: None (no filter), one modality, or several separated by '|' or given as a list."""
    if value is None or value == "" or value == "any":
        return None
    if isinstance(value, Modality):
        return (value,)
    if isinstance(value, (list, tuple)):
        return tuple(dict.fromkeys(Modality.parse(v) for v in value))
    return tuple(dict.fromkeys(Modality.parse(v) for v in str(value).split("|")))


@dataclass(frozen=True)
class Candidate:
    """One item of a candidate pool (M-BEIR ``cand_pool`` record). ``img_path`` is relative to the data root."""

    did: str
    modality: Modality
    txt: str | None = None
    img_path: str | None = None
    src_content: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"txt": self.txt, "img_path": self.img_path, "modality": self.modality.value,
                "did": self.did, "src_content": self.src_content}


@dataclass
class SourceRows:
    """Where the records a reader kept sit in their source: ``rows[i]`` is the position of the i-th kept record
    among all the source's records (non-blank lines, CSV rows, image files), skipped ones included, and ``total``
    counts them all. Features computed elsewhere have one row per source record; this aligns them."""

    rows: "array[int]" = field(default_factory=lambda: array("q"))  # 8 B a record, not a Python int each
    total: int = 0
    #: the source file and, parallel to ``rows``, each kept record's line in it (empty for an image folder,
    #: whose ids are file paths already): what locates a problem found after reading, such as a missing image
    path: str | None = None
    lines: "array[int]" = field(default_factory=lambda: array("q"))

    @property
    def skipped(self) -> int:
        return self.total - len(self.rows)


@dataclass
class Query:
    """One M-BEIR query record. ``query_txt`` is raw: the instruction is added by the instruction table."""

    qid: str
    query_modality: Modality
    query_txt: str | None = None
    query_img_path: str | None = None
    pos_cand_list: list[str] = field(default_factory=list)
    neg_cand_list: list[str] = field(default_factory=list)
    task_id: int | None = None
    query_src_content: str | None = None

    @property
    def dataset_id(self) -> int:
        return dataset_id_of(self.qid)

    def to_json(self) -> dict[str, Any]:
        return {"qid": self.qid, "query_txt": self.query_txt, "query_img_path": self.query_img_path,
                "query_modality": self.query_modality.value, "query_src_content": self.query_src_content,
                "pos_cand_list": list(self.pos_cand_list), "neg_cand_list": list(self.neg_cand_list),
                "task_id": self.task_id}


def dataset_id_of(item_id: str) -> int:
    """The dataset prefix of an M-BEIR id ``"d:n"``; -1 when the id has no numeric prefix (user data)."""
    head, sep, _ = str(item_id).partition(":")
    return int(head) if sep and head.isdigit() else -1


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False)
