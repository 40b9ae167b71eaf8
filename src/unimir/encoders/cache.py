"""On-disk embedding cache, so re-indexing unchanged items costs nothing.

Keyed by (encoder fingerprint, part, content digest). The fingerprint (:attr:`Encoder.fingerprint`) digests the
model's weight and config files and its preprocessing settings, so new weights behind the same ``hf:/dir`` spec
never get old vectors; a text is keyed by the digest of its string, an image by the digest of its file bytes.
Encoders write each batch as soon as it is computed (one transaction per batch), so an interrupted ``unimir
index`` or ``add`` resumes where it stopped. Stored in SQLite (stdlib, safe to read: no pickle), one float32 blob
per vector; the ``encoder`` column holds the fingerprint.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import numpy as np


def default_cache_dir() -> Path:
    return Path(os.environ.get("UNIMIR_CACHE_DIR") or Path.home() / ".cache" / "unimir")


class EmbeddingCache:
    """The cache only saves work: when its file cannot be opened, read or written (a full disk, a read-only or
    damaged file), one warning says so and encoding goes on without it."""

    def __init__(self, path: "str | os.PathLike | None" = None):
        path = Path(path) if path is not None else default_cache_dir() / "embeddings.sqlite"
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("CREATE TABLE IF NOT EXISTS emb (encoder TEXT, part TEXT, key TEXT, vec BLOB, "
                                 "PRIMARY KEY (encoder, part, key))")
                self._db.commit()
        except (sqlite3.Error, OSError) as exc:
            self._give_up(exc)

    def _give_up(self, exc: Exception) -> None:
        import warnings

        from ..errors import UnimirWarning

        warnings.warn(f"embedding cache {self.path} is not usable ({type(exc).__name__}: {exc}); encoding goes on "
                      "without it (set UNIMIR_CACHE_DIR, or pass --no-cache)", UnimirWarning, stacklevel=3)
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
        self._db = None

    def get_many(self, fingerprint: str, part: str, keys: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        with self._lock:
            if self._db is None:
                return found
            try:
                for start in range(0, len(keys), 500):
                    chunk = keys[start:start + 500]
                    marks = ",".join("?" * len(chunk))
                    rows = self._db.execute(f"SELECT key, vec FROM emb WHERE encoder=? AND part=? AND key IN ({marks})",
                                            [fingerprint, part, *chunk]).fetchall()
                    found.update((k, np.frombuffer(v, dtype=np.float32)) for k, v in rows)
            except sqlite3.Error as exc:
                self._give_up(exc)
                return {}
        return found

    def put_many(self, fingerprint: str, part: str, items: dict[str, np.ndarray]) -> None:
        with self._lock:
            if self._db is None:
                return
            rows = [(fingerprint, part, k, np.asarray(v, np.float32).tobytes()) for k, v in items.items()]
            try:
                self._db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?, ?, ?)", rows)
                self._db.commit()
            except sqlite3.Error as exc:
                self._give_up(exc)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
