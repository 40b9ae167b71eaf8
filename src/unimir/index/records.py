"""Item records (id, modality, text, image path, source content, image digest) in one SQLite file per segment.

Why SQLite: it is in the standard library, a B-tree index makes ``did -> row`` and ``image digest -> rows`` point
lookups without loading anything, and the rows of the hits of a search are fetched with one ``IN (...)`` query;
an opened index therefore holds no Python object per item (12.9 KB/item of lists and dicts before). Parquet
(clip-retrieval's choice) reads whole column chunks and has no point lookup by key; a JSON-lines file needs a
full scan or an in-memory map. A segment's database is written once (to a temporary file, then renamed) and
opened read-only and ``immutable``, so it is as much an append-only segment file as the vectors next to it, and
many threads can read it at once.

Rows in a segment's table are local (0 .. n-1); the segment adds its first global row.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..data.records import Candidate, Modality
from ..errors import IndexFormatError, InvalidInputError

RECORDS_FILE = "records.sqlite"
_SCHEMA = """
CREATE TABLE items (row INTEGER PRIMARY KEY, did TEXT NOT NULL, modality INTEGER NOT NULL, txt TEXT,
                    img_path TEXT, src_content TEXT, image_sha1 TEXT, text_key INTEGER);
"""
_INDEXES = """
CREATE UNIQUE INDEX items_did ON items(did);
CREATE INDEX items_image ON items(image_sha1) WHERE image_sha1 IS NOT NULL;
CREATE INDEX items_text ON items(text_key) WHERE text_key IS NOT NULL;
"""
_COLUMNS = "row, did, modality, txt, img_path, src_content"
_MAX_VARS = 900  # below SQLite's limit on bound parameters per statement
_MODALITIES = {m.code: m for m in Modality}


def text_key(text: str) -> int:
    """A 63-bit key of a text-only item's text: an index on it finds identical texts without indexing the text."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") >> 1


def build_records(candidates: Sequence[Candidate], digests: Sequence[str | None]) -> sqlite3.Connection:
    """A new segment's records in an in-memory database (``RecordTable.write`` persists it)."""
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.executescript(_SCHEMA)
    conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (
        (i, c.did, c.modality.code, c.txt, c.img_path, c.src_content, d,
         text_key(c.txt) if c.txt is not None and not c.img_path else None)
        for i, (c, d) in enumerate(zip(candidates, digests))))
    try:
        conn.executescript(_INDEXES)
    except sqlite3.IntegrityError:
        raise InvalidInputError("duplicate candidate ids in one batch") from None
    conn.commit()
    return conn


class RecordTable:
    """Read-only view of one segment's records. Thread-safe (one connection behind a lock)."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None = None):
        self._conn, self.path = conn, path
        try:
            self.rows = int(self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise IndexFormatError(f"{path}: unreadable segment records ({exc}); rebuild the index") from None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> "RecordTable":
        if not path.is_file():
            raise IndexFormatError(f"{path}: segment records are missing; rebuild the index")
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True,
                                   check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            raise IndexFormatError(f"{path}: unreadable segment records ({exc}); rebuild the index") from None
        return cls(conn, path)

    def write(self, path: Path) -> None:
        """Copy these records into a new database file at ``path`` (SQLite's online backup)."""
        dest = sqlite3.connect(str(path))
        try:
            with self._lock:
                self._conn.backup(dest)
        finally:
            dest.close()

    def close(self) -> None:
        self._conn.close()

    def _query(self, sql: str, args: Sequence = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, tuple(args)).fetchall()
            except sqlite3.DatabaseError as exc:
                raise IndexFormatError(f"{self.path}: unreadable segment records ({exc})") from None

    def _chunked(self, sql: str, values: Sequence) -> Iterator[tuple]:
        values = list(values)
        for start in range(0, len(values), _MAX_VARS):
            part = values[start:start + _MAX_VARS]
            yield from self._query(sql.format(",".join("?" * len(part))), part)

    def rows_of(self, dids: Iterable[str]) -> dict[str, int]:
        """Local rows of the given ids that this segment holds."""
        return {did: row for row, did in self._chunked("SELECT row, did FROM items WHERE did IN ({})", dids)}

    def fetch(self, rows: Sequence[int]) -> dict[int, Candidate]:
        """Records of local rows, as a dict row -> Candidate (one query per 900 rows)."""
        return {r[0]: _candidate(r) for r in self._chunked(f"SELECT {_COLUMNS} FROM items WHERE row IN ({{}})",
                                                           [int(x) for x in rows])}

    def digests(self, rows: Sequence[int]) -> dict[int, str | None]:
        return dict(self._chunked("SELECT row, image_sha1 FROM items WHERE row IN ({})", [int(x) for x in rows]))

    def rows_with_image(self, digests: Iterable[str]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for row, digest in self._chunked("SELECT row, image_sha1 FROM items WHERE image_sha1 IN ({})", digests):
            out.setdefault(digest, []).append(row)
        return out

    def rows_with_text(self, texts: Iterable[str]) -> dict[str, list[int]]:
        """Local rows of text-only items whose text is exactly one of ``texts``."""
        by_key = {text_key(t): t for t in texts}
        out: dict[str, list[int]] = {}
        for row, key, txt in self._chunked("SELECT row, text_key, txt FROM items WHERE text_key IN ({})", by_key):
            if by_key.get(key) == txt:
                out.setdefault(txt, []).append(row)
        return out

    def scan(self, batch: int = 10_000) -> Iterator[tuple[Candidate, str | None]]:
        """Every record in row order with its image digest (for compaction), ``batch`` rows per query."""
        start = 0
        while True:
            rows = self._query(f"SELECT {_COLUMNS}, image_sha1 FROM items WHERE row >= ? ORDER BY row LIMIT ?",
                               (start, batch))
            if not rows:
                return
            for r in rows:
                yield _candidate(r), r[6]
            start = rows[-1][0] + 1


def _candidate(r: tuple) -> Candidate:
    return Candidate(r[1], _MODALITIES[r[2]], r[3], r[4], r[5])
