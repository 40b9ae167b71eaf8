"""The targets the issues set, checked against a run's figures: one row per target, PASS or MISS."""

from __future__ import annotations

from typing import Any


def _row(what: str, measured: float | None, target: float, unit: str, higher: bool = True,
         detail: str = "") -> dict[str, Any]:
    if measured is None:
        status = "not run"
    else:
        status = "PASS" if (measured >= target if higher else measured <= target) else "MISS"
    return {"what": what, "measured": measured, "target": target, "unit": unit,
            "comparison": ">=" if higher else "<=", "status": status, "detail": detail}


def _best(rows: list[dict], prefix: str, contains: str = "") -> tuple[float | None, str]:
    """The fastest encoding row whose description starts with ``prefix`` and contains ``contains``."""
    chosen = [r for r in rows if r["what"].startswith(prefix) and contains in r["what"]]
    if not chosen:
        return None, ""
    best = max(chosen, key=lambda r: r["per_s"])
    return best["per_s"], f"best row: {best['what']}, batch {best['batch']}"


def _ok(section: Any) -> bool:
    return isinstance(section, dict) and "error" not in section


def targets(results: dict) -> list[dict]:
    rows = []
    enc = results.get("encoding")
    enc_rows = enc["rows"] if _ok(enc) else []
    for prefix, contains, target, unit in (("images", "end to end", 70, "images/s"), ("texts", "", 700, "texts/s")):
        value, detail = _best(enc_rows, prefix, contains)
        rows.append(_row(f"builtin encoder, {unit}", value, target, unit, detail=detail))
    qual = results.get("quality")
    summary = qual["summary"] if _ok(qual) else {}
    for mode, target in (("generative-rerank", 0.95), ("generative", 0.6)):
        value = summary.get(mode, {}).get("ratio_of_means")
        rows.append(_row(f"{mode} R@5 / dense R@5 (demo corpus, unseen targets, test pool, mean of tasks)", value,
                         target, "x"))
    per_task = (qual.get("settings") or {}).get(qual.get("summary_setting"), {}) if _ok(qual) else {}
    if "generative_ge_quantize" in per_task:
        rows.append(_row("generative R@5 >= quantize R@5 on every task (unseen targets, test pool)",
                         float(per_task["generative_ge_quantize"]), 1.0, "yes=1"))
    scaling = results.get("scaling")
    sizes = sorted(scaling["sizes"], key=lambda x: x["size"]) if _ok(scaling) else []
    dec = results.get("decoding")
    pool_latency = dec.get("pool_latency") if _ok(dec) else None
    if pool_latency:  # interleaved rounds: the figure the target is about
        small, large = pool_latency["rows"][0], pool_latency["rows"][-1]
        rows.append(_row(f"generative p50 latency at {large['pool']:,} / at {small['pool']:,} candidates",
                         large["vs_smallest"], 1.15, "x", higher=False,
                         detail=f"{small['p50_ms']:.2f} ms -> {large['p50_ms']:.2f} ms, batch 1, interleaved rounds, "
                                f"{pool_latency['threads']} thread(s), random IDs"))
    elif len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        p50 = lambda entry: entry["modes"]["generative"]["single"]["p50_ms"]  # noqa: E731
        rows.append(_row(f"generative p50 latency at {large['size']:,} / at {small['size']:,} candidates",
                         p50(large) / p50(small), 1.15, "x", higher=False,
                         detail=f"{p50(small):.2f} ms -> {p50(large):.2f} ms, batch 1, encoding excluded"))
    at50 = [r for r in dec["rows"] if r["beams"] == 50] if _ok(dec) else []
    rows.append(_row("constrained beam search speed-up over reference, 50 beams",
                     at50[0]["speedup"] if at50 else None, 10, "x"))
    srv = results.get("server")
    if _ok(srv):
        rows.append(_row(f"server errors, {srv['clients']} clients", srv["errors"], 0, "errors", higher=False))
        rows.append(_row(f"server req/s over in-process searches/s, {srv['clients']} clients", srv["ratio"], 0.8,
                         "x"))
    else:
        rows.append(_row("server (32 clients)", None, 0.8, "x"))
    return rows
