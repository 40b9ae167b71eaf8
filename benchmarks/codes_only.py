"""How much of ``quantize`` and ``generative`` recall comes from the candidates' dense vectors (demo, unseen split).

    python -m benchmarks.codes_only --seeds 0,1,2

Both product modes break ties with dense cosines. ``quantize`` ranks the items that share the longest ID prefix with
the quantized query by cos(f_q, f_c); ``generative`` orders the items inside a bucket that way. When the quantized
query shares only the modality code with the pool's IDs (I→T on the demo), ``quantize`` is close to dense search
over that modality. This script adds two modes that see codes only (``quantize-codes``, ``generative-codes``:
the same searches without the candidates' vectors, each prefix length or beam one tie group, tie-aware recall).
It trains the default recipe once per seed, as ``benchmarks.generative_ablation`` does, and prints R@5 per task.
The modes are registered in this process only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from unimir.index.retrievers import _Generative, register

from . import generative_ablation as ablation
from . import generative_eval as ge


class _CodesOnly(_Generative):
    base = ""

    @classmethod
    def available(cls, index) -> bool:
        g = index.generative
        return g is not None and (cls.base == "quantize" or g.generator is not None)

    def search(self, index, queries, allowed, k, beams=None):
        if len(index.deleted_rows):
            raise ValueError("codes-only modes are for fresh benchmark indexes (no deleted rows)")
        return index.generative.search(queries, list(allowed), k=k, mode=self.base, beams=beams or 50)


@register
class QuantizeCodes(_CodesOnly):
    name, base = "quantize-codes", "quantize"


@register
class GenerativeCodes(_CodesOnly):
    name, base = "generative-codes", "generative"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--variant", default="defaults", help="a benchmarks.generative_ablation variant (smoke: 1 epoch)")
    ap.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    ge.MODES = ge.MODES + ("quantize-codes", "generative-codes")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = {}
    with tempfile.TemporaryDirectory(prefix="unimir-codes-") as tmp:
        res = ablation.run([args.variant], seeds, Path(tmp))
    modes = ge.MODES
    for seed, run in res["variants"][args.variant]["seeds"].items():
        out[seed] = run["rows"]
        for setting in ("unseen, test pool", "unseen, union"):
            by = {(x["task"], x["mode"]): 100 * x["recall"][ge.HEADLINE] for x in run["rows"]
                  if x["setting"] == setting}
            tasks = list(dict.fromkeys(t for t, _ in by))
            print(f"\nseed {seed}, {setting}, R@{ge.HEADLINE} (%)")
            print(f"{'task':8} " + " ".join(f"{m:>17}" for m in modes))
            for t in tasks:
                print(f"{t:8} " + " ".join(f"{by.get((t, m), float('nan')):17.1f}" for m in modes))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
