"""Run the benchmark suite and write the efficiency report.

    python -m benchmarks [--quick] [--out docs/benchmarks.md] [--only SECTIONS | --skip SECTIONS] [--json FILE]

``--quick`` (under 10 minutes on 2 cores; about 4 on an idle machine) uses pools of 10k and 100k candidates
instead of up to 1M, fewer queries and repeats, and a cached trained demo index when one matches. The full run
takes about 15 minutes on an idle 2-core machine. Figures go to ``img/`` next to the report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import suite


def _sections(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [n for n in names if n not in suite.SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown}: choose from {', '.join(suite.SECTIONS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller pools and fewer repeats (under 10 min on 2 cores)")
    p.add_argument("--out", type=Path, default=suite.DEFAULT_OUT, help="markdown report (default: %(default)s)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--only", type=_sections, help=f"comma-separated sections of: {', '.join(suite.SECTIONS)}")
    group.add_argument("--skip", type=_sections, default=(), help="comma-separated sections to leave out")
    p.add_argument("--json", type=Path, help="also write the raw results to this file")
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="only re-render the report from a results file written by --json")
    args = p.parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
    else:
        sections = args.only or tuple(s for s in suite.SECTIONS if s not in args.skip)
        results = suite.execute(args.quick, sections)
    suite.write(results, args.out, None if args.render else args.json)
    print(f"[bench] wrote {args.out}" + ("" if args.render else f" after {results['wall_s']:.0f} s"))
    failed = [name for name in results["sections"] if "error" in (results.get(name) or {})]
    if failed:
        print(f"[bench] failed sections: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
