"""``unimir info --check``: verify every file of an index directory against what its manifest recorded at save time.

Three layers, each run only when the one before found nothing (so a damaged file is never handed to a parser that
might misread it): the manifest itself; each listed file's presence, size and sha256; then a full load, which checks
that records, feature rows, FAISS vectors and the generative model's codes agree with each other and the manifest.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from ..atomic import sha256_file
from ..errors import UnimirError
from .store import Manifest, orphans


def check_index(path: "str | Path") -> tuple[list[str], str]:
    """Returns (problems, summary): an empty list when the index is sound, and a line describing what was checked."""
    path = Path(path)
    try:
        m = Manifest.read(path)
    except UnimirError as exc:
        return [str(exc)], ""
    problems: list[str] = []
    for name in sorted(m.listed_names()):
        if not (path / name).exists():
            problems.append(f"{path / name}: listed in the manifest but missing")
    for rel, want in sorted(m.checksums.items()):
        problems += _file_problems(path, rel, want)
    if problems:
        return problems, ""
    try:
        from .index import Index

        index = Index.load(path)
    except UnimirError as exc:
        return [str(exc)], ""
    problems += _media_problems(index) + _duplicate_problems(index)
    counts = {mod.value: n for mod, n in index.modality_counts().items()}
    recorded = {k: v for k, v in m.modality_counts.items() if v}
    if recorded and recorded != {k: v for k, v in counts.items() if v}:
        problems.append(f"{path}: the manifest counts {recorded} items per modality, the records hold {counts}")
    verified = (f"{len(m.checksums)} files match their recorded sizes and sha256 digests" if m.checksums else
                "no digests recorded (saved by an older unimir): files present and loadable, contents not verified")
    left = orphans(path, m)
    leftovers = (f"\nnote: {len(left)} entr{'y' if len(left) == 1 else 'ies'} left by an interrupted write, not part "
                 f"of the index ({', '.join(left[:5])}{' ...' if len(left) > 5 else ''}); 'unimir compact' removes "
                 "them") if left else ""
    return problems, (f"ok: {path}: generation {m.generation}, {m.num_items} items in {len(m.segments)} segments; "
                      f"{verified}; records, vectors, FAISS partitions"
                      f"{' and generative codes' if index.generative is not None else ''} agree{leftovers}")


def _duplicate_problems(index, batch: int = 10_000) -> list[str]:
    """Ids live in more than one row: each live row must be the one its id looks up (batched, never all ids)."""
    import numpy as np

    out: list[str] = []
    deleted = index._state.deleted
    for seg in index._state.segments:
        scan, row = seg.records.scan(batch), seg.first_row  # every local row, in order from 0
        while chunk := [c.did for c, _ in itertools.islice(scan, batch)]:
            rows = np.arange(row, row + len(chunk))
            live = ~np.isin(rows, deleted) if len(deleted) else np.ones(len(chunk), bool)
            found = index.rows_of(chunk)
            for did, r, alive in zip(chunk, rows.tolist(), live):
                if alive and found.get(did) != r:
                    out.append(f"{index.path}: id {did!r} is live in rows {r} and {found.get(did)}; "
                               "'unimir compact' keeps the newest")
            row += len(chunk)
    return out


def _media_problems(index) -> list[str]:
    """Uploaded images live inside the index (``media/``); each must still have the bytes it was indexed with."""
    from .index import INDEX_MEDIA

    out = []
    for seg in index._state.segments:  # records streamed segment by segment, never all in memory
        for cand, digest in seg.records.scan():
            if (cand.img_path or "").startswith(INDEX_MEDIA):
                out += _media_problem(index, cand, digest)
    return out


def _media_problem(index, cand, digest) -> list[str]:
    from ..data.images import file_digest

    f = index.image_path(cand)
    if not f.is_file():
        return [f"{f}: the uploaded image of item {cand.did!r} is missing"]
    if digest and file_digest(f) != digest:
        return [f"{f}: the uploaded image of item {cand.did!r} differs from the one indexed (corrupt)"]
    return []


def _file_problems(path: Path, rel: str, want: object) -> list[str]:
    if not isinstance(want, dict) or not isinstance(want.get("size"), int) or not isinstance(want.get("sha256"), str):
        return [f"{path}: the manifest's checksum entry for {rel!r} is malformed"]
    if rel.startswith("/") or ".." in Path(rel).parts:
        return [f"{path}: the manifest's checksum entry {rel!r} points outside the index directory"]
    f = path / rel
    if not f.is_file():
        return [f"{f}: missing (the manifest recorded {want['size']} bytes)"]
    size = f.stat().st_size
    if size != want["size"]:
        return [f"{f}: {size} bytes, but {want['size']} were written (truncated or overwritten)"]
    if sha256_file(f) != want["sha256"]:
        return [f"{f}: contents differ from the sha256 recorded when it was written (corrupt)"]
    return []
