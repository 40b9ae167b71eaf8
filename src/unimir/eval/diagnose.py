"""Where generative recall is lost: the quantizer (the positive's ID is hard to reach) or the generator (reachable,
but not generated). Measured per query set, beside the recall itself."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..encoders import Features

if TYPE_CHECKING:
    from ..index import Index


def diagnose(index: "Index", queries: Features, targets: Sequence[int | None], relevant_rows: Sequence[set[int]],
             beams: int) -> dict[str, Any]:
    """For queries (Features [q]) with target modality codes and relevant candidate rows:

    * ``positive_id_in_beams``: share of queries one of whose positives' IDs is among the generator's ``beams``
      beams (what generative-rerank can at best recover); ``positive_id_in_top5_beams`` the same for 5 beams;
    * ``shortlist_mean`` / ``shortlist_median``: items in the union of all beams' buckets (what generative-rerank
      scores);
    * ``quantize_exact_id``: share whose quantized query ID equals a positive's ID; ``quantize_shared_levels``:
      mean number of leading codes the quantized query shares with its best positive;
    * ``generated_shared_levels``: the same for the generator's top beam.
    """
    from ..generator.beam import constrained_beam_search, residual_beam_search
    from ..generator.retriever import allowed_modalities

    g = index.generative
    if g is None or g.generator is None or len(queries) == 0:
        return {}
    codes = np.asarray(g.codes)
    first = allowed_modalities(np.asarray([-1 if t is None else t for t in targets], dtype=np.int64), len(queries))
    z = g.quantizer.embed(queries)
    in_beams, in_top5, shortlist, q_exact, q_shared, g_shared = [], [], [], [], [], []
    sizes = g.trie.bucket_sizes
    for start in range(0, len(queries), 64):
        part = slice(start, start + 64)
        found = constrained_beam_search(g.generator, z[part], g.trie, beams, first[part])
        quant = residual_beam_search(g.quantizer.net.rq, z[part], g.trie, beams, first[part])
        for i, rows in enumerate(relevant_rows[part]):
            pos = codes[sorted(rows)] if rows else np.zeros((0, codes.shape[1]), np.int64)
            valid = found.leaves[i] >= 0
            ids = found.ids[i][valid]
            match = (ids[:, None, :] == pos[None, :, :]).all(-1).any(-1) if len(pos) else np.zeros(len(ids), bool)
            in_beams.append(bool(match.any()))
            in_top5.append(bool(match[:5].any()))
            shortlist.append(int(sizes[found.leaves[i][valid]].sum()))
            q_exact.append(bool(len(pos) and (quant.ids[i, 0][None] == pos).all(-1).any()))
            q_shared.append(_shared(quant.ids[i, 0], pos))
            g_shared.append(_shared(ids[0], pos) if len(ids) else 0)
    mean = lambda xs: round(float(np.mean(xs)), 4)  # noqa: E731
    return {"queries": len(in_beams), "beams": beams, "positive_id_in_beams": mean(in_beams),
            "positive_id_in_top5_beams": mean(in_top5), "shortlist_mean": mean(shortlist),
            "shortlist_median": float(np.median(shortlist)), "quantize_exact_id": mean(q_exact),
            "quantize_shared_levels": mean(q_shared), "generated_shared_levels": mean(g_shared),
            "levels": int(codes.shape[1])}


def _shared(code: np.ndarray, positives: np.ndarray) -> int:
    """Longest common leading run of ``code`` with any row of ``positives``."""
    if len(positives) == 0:
        return 0
    same = np.cumprod(positives == code[None, :], axis=1)
    return int(same.sum(1).max())


def format_diagnosis(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """A table: one row per (label, diagnosis)."""
    head = ["task", "ID in beams", "ID in top-5 beams", "shortlist mean/median", "quantize exact ID",
            "shared levels: quantize / generated"]
    lines = [head]
    for label, d in rows:
        if not d:
            continue
        lines.append([label, f"{d['positive_id_in_beams']:.3f}", f"{d['positive_id_in_top5_beams']:.3f}",
                      f"{d['shortlist_mean']:.1f} / {d['shortlist_median']:.0f}", f"{d['quantize_exact_id']:.3f}",
                      f"{d['quantize_shared_levels']:.2f} / {d['generated_shared_levels']:.2f} of {d['levels']}"])
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
