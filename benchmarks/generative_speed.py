"""Writes ``docs/bench/generative-speed.md``: generative latency against pool size and constrained-decoding speed,
each timed with interleaved repetitions and backed by work counts, optionally beside a baseline source tree.

    python -m benchmarks.generative_speed [--threads 1] [--callgrind] [--baseline-src DIR] [--out FILE]
    python -m benchmarks.generative_speed --from-json NEW_LAT NEW_DEC [OLD_LAT OLD_DEC] [--out FILE]

The first form runs ``benchmarks.generative_latency`` and ``benchmarks.decode_speed`` in subprocesses (with
``--baseline-src``, also against that ``src`` folder, e.g. an exported older revision, so one report holds before
and after); the second renders JSON files those scripts wrote with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "bench" / "generative-speed.md"


def _run(module: str, src: Path, args: list[str], out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{REPO}")
    subprocess.run([sys.executable, "-m", module, *args, "--json", str(out)], env=env, check=True, cwd=REPO)
    return json.loads(out.read_text())


def measure(threads: int, callgrind: bool, baseline: Path | None) -> dict:
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, src, rounds, dec_rounds in (("new", REPO / "src", "300", "6"), ("old", baseline, "150", "4")):
            if src is None:
                continue
            lat_args = ["--threads", str(threads), "--rounds", rounds] + (["--callgrind"] if callgrind else [])
            runs[name] = (_run("benchmarks.generative_latency", src, lat_args, Path(tmp) / f"lat_{name}.json"),
                          _run("benchmarks.decode_speed", src, ["--threads", str(threads), "--rounds", dec_rounds],
                               Path(tmp) / f"dec_{name}.json"))
    return runs


def _f(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}"


def _latency_table(lat: dict) -> list[str]:
    lines = ["| pool | distinct IDs | p50 ms | p95 ms | p50 / smallest | per-round ratio, median (IQR) | "
             "decoder rows per step | trie mask per level | torch calls per query | instructions per query | "
             "dense flat p50 ms |", "|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|"]
    for r in lat["rows"]:
        instr = f"{r['instructions']:,.0f} ({r['instructions_vs_smallest']:.4f}x)" if "instructions" in r else "–"
        lines.append(f"| {r['pool']:,} | {r['distinct_ids']:,} | {_f(r['p50_ms'])} | {_f(r['p95_ms'])} | "
                     f"**{r['vs_smallest']:.3f}x** | {r['paired_vs_smallest']:.3f}x ({r['paired_iqr'][0]:.2f}–"
                     f"{r['paired_iqr'][1]:.2f}) | {', '.join(f'{x:g}' for x in r['rows_per_step'])} | "
                     f"{', '.join(layout for _, layout in r['mask_layouts'])} | {r['aten_calls']:,.0f} | {instr} | "
                     f"{_f(r['dense_p50_ms']) if 'dense_p50_ms' in r else '–'} |")
    return lines


def _decode_table(dec: dict) -> list[str]:
    lines = ["| beams | batch | unimir q/s | reference q/s | speed-up (medians) | per-round speed-up | same IDs | "
             "MFLOP per query | unimir GFLOP/s | matmul GFLOP/s (best shape) | share of matmul rate |",
             "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in dec["rows"]:
        lines.append(f"| {r['beams']} | {r['batch']} | {_f(r['fast_qps'], 1)} | {_f(r['reference_qps'], 1)} | "
                     f"**{r['speedup']:.1f}x** | {r['paired_speedup']:.1f}x | {'yes' if r['same_ids'] else 'no'} | "
                     f"{_f(r['mflop_per_query'], 1)} | {_f(r['achieved_gflops'], 1)} | "
                     f"{_f(max(r['matmul_gflops'].values()), 1)} | {100 * r['share_of_matmul_peak']:.0f}% |")
    return lines


def render(runs: dict) -> str:
    lat, dec = runs["new"]
    m = lat["machine"]
    out = ["# Generative retrieval speed: pool-size invariance and constrained decoding", "",
           "Made by `python -m benchmarks.generative_speed --callgrind --baseline-src DIR`, which runs "
           "`python -m benchmarks.generative_latency --threads 1 --rounds 300 --callgrind` and "
           "`python -m benchmarks.decode_speed --threads 1 --rounds 6` on this source tree, and the same with "
           "150 and 4 rounds on DIR, the `src` folder of the baseline revision (here `git archive eeabff9 src`, "
           "the decoder before this work). The runs behind this page used exactly those commands with `--json`, "
           "current and baseline at the same time (so under the same load), and were rendered with `--from-json`. "
           f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['versions']['torch']}, source revision "
           f"{m['revision']}, {m['date']}.", "",
           f"**Load.** The machine is shared by 7 engineers' jobs on 2 cores. 1-minute load average during the "
           f"latency run: {lat['load_start'][0]:.1f} at the start, {lat['load_end'][0]:.1f} at the end (2.0 would "
           "mean both cores busy). Absolute times are therefore several times what an idle machine gives; the "
           f"ratios come from interleaved repetitions, and the counts (rows, torch calls, instructions) do not "
           f"depend on load. torch ran {lat['threads']} thread(s): with 2 threads on an oversubscribed machine "
           "each kernel waits for a descheduled partner thread, which multiplies batch-1 latency.", "",
           "## Generative p50 latency against pool size", "",
           "One query per call through `GenerativeRetriever.search` (mode `generative`, k = 10, 50 beams, target "
           "modality given), CPU-default generator and combiner with random weights over random IDs of L = 3 "
           f"levels x K = 256 codes. {lat['rows'][0]['rounds']} rounds; each round searches the same query on "
           "every pool, in an order that alternates between rounds. *p50 / smallest* is the ratio of medians, "
           "*per-round ratio* the median of each round's ratio. Dense flat search (FAISS, one 384-d query) was "
           "timed afterwards in its own block, for scale.", ""]
    out += _latency_table(lat)
    small, large = lat["rows"][0], lat["rows"][-1]
    out += ["", f"**Against the 1.15x target**: p50 at {large['pool']:,} / at {small['pool']:,} = "
            f"{large['vs_smallest']:.3f}x (median of per-round ratios {large['paired_vs_smallest']:.3f}x)"
            + (f"; instructions per query {large['instructions_vs_smallest']:.4f}x" if "instructions" in large
               else "") + ". At 100k the last level keeps CSR child lists (its bitmap would be larger than the list "
            "and over 1 MiB), which costs a few more torch calls."]
    if "old" in runs:
        out += ["", "**Before** (the baseline revision's decoder and trie, same script and machine, run at the "
                "same time as the one above):", ""]
        out += _latency_table(runs["old"][0])
    out += ["", "**What grew with the pool, and what changed.** (1) The trie mask of a step was scattered from CSR "
            "child lists, so its work followed the children of the live beams: with random IDs, a level-2 node has "
            "a few of its 256 codes at 10k items and nearly all at 1M. Dense levels now keep a packed child bitmap "
            "(kept only where it is no larger than the level's child list, or under 1 MiB), so the mask is one "
            "gather of R rows and one bit test, [R, K] work at any pool size. (2) Beams advanced with a "
            "`searchsorted` over the next level's sorted keys (an 8 MB array at 1M); the child node is now read "
            "from the mask (first child + rank of the code), touching no pool-sized array. (3) The old benchmark "
            "alternated each generative query with a FAISS search of the same pool: at 1M that search streams "
            "1.5 GB and leaves FAISS's OpenMP threads spinning against torch's, which slows the next generative "
            "call; and the suite's scaling section timed each pool in its own block, minutes apart, under "
            "changing load (its 100k pool measured slower than its 1M one). Dense search is now timed apart, and "
            "sizes are interleaved round by round. (4) Independently of the pool, a step now issues far fewer "
            "torch calls (the dense [q, W] beam grid needs no per-query bookkeeping; RMSNorm weights and "
            "cross-attention are folded into the projections). The rows per step and the instruction counts above "
            "are the pool-independent evidence: the decoder computes the same rows, and executes the same "
            "instructions within the stated ratio, at every pool size."]
    out += ["", "## Constrained beam search against transformers' `generate`", "",
            "`constrained_beam_search` against `reference_beam_search` (transformers `generate` with a per-beam "
            "`prefix_allowed_tokens_fn`, GENIUS's approach) on the same CPU-default generator (random weights), "
            f"pool of {dec['rows'][0]['pool_ids']:,} random IDs (L = 3, K = 64) and batch; the two run in alternating "
            f"calls, {dec['rows'][0]['repeats']} rounds, queries/s from the median call. *MFLOP per query* counts "
            "the rows the decoder really computed; *matmul GFLOP/s* is torch float32 matmul on the decoder's "
            "shapes ([batch x beams, d] x [d, d_ff] and the like) timed in the same run, i.e. what this CPU gives "
            "a dense kernel under the current load.", ""]
    out += _decode_table(dec)
    if "old" in runs:
        out += ["", "**Before** (baseline revision, same script, run concurrently):", ""]
        out += _decode_table(runs["old"][1])
    at50 = next(r for r in dec["rows"] if r["beams"] == 50)
    verdict = "meets" if at50["speedup"] >= 10 else "misses"
    out += ["", f"**Against the 10x target at 50 beams** this run {verdict} it: {at50['speedup']:.1f}x"
            + (f" (the baseline, measured at the same time: "
               f"{next(r for r in runs['old'][1]['rows'] if r['beams'] == 50)['speedup']:.1f}x)" if "old" in runs
               else "")
            + f". unimir computed {at50['mflop_per_query']:.1f} MFLOP per query at {at50['achieved_gflops']:.1f} "
            f"GFLOP/s, {100 * at50['share_of_matmul_peak']:.0f}% of the best matmul rate measured in the same run. "
            "The rest of its time is memory-bound work that a matmul rate does not bound: reordering the "
            "self-attention cache with the beams, attention of one position over the cached ones, softmaxes and "
            "RMSNorms over [batch x beams, d] tensors. The reference spends most of its time in Python (one "
            "`prefix_allowed_tokens_fn` call per beam per step) and computes every step for all 50 beams (HF "
            "starts from 50 copies of each query), about twice unimir's rows. Under a load average near "
            f"{lat['load_start'][0]:.0f} on 2 cores the matmul rates themselves vary several-fold between shapes "
            "and calls, so the shares above are rough. The baseline table's MFLOP per query uses the same "
            "formula; the baseline decoder computed about 14% more per row (unfolded cross-attention)."]
    arith = dec["arithmetic"]
    out += ["", "## Arithmetic per query", "",
            "FLOPs (2 x multiply-adds) of one query's search with 50 beams when the pool fills every beam: decoder "
            "rows 1, then 3 (the modalities), then 50 per step; per row and layer the self-attention projections "
            "(8 d^2), the FFN (4 d d_ff), the folded cross-attention (4 d H P) and the attention over the cached "
            "steps; the level's logits; per query the prefix and the cross-attention keys, values and folds. "
            "*Ideal time* is the FLOPs at the matmul rate measured in the same run.", "",
            "| generator | layers | d_model | d_ff | heads | prefix | levels x K | rows per step | GFLOP per query | "
            "matmul GFLOP/s | ideal ms per query |", "|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|"]
    for name, a in arith.items():
        c = a["config"]
        out.append(f"| {name} | {c['num_layers']} | {c['d_model']} | {c['d_ff']} | {c['num_heads']} | "
                   f"{c['prefix_len']} | {c['levels']} x {c['codebook_size']} | "
                   f"{', '.join(str(r) for r in a['rows_per_step'])} | {a['gflop_per_query']:.3f} | "
                   f"{_f(a['matmul_gflops'], 1)} | {_f(a['ideal_ms_per_query'], 3)} |")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--callgrind", action="store_true")
    p.add_argument("--baseline-src", type=Path, default=None)
    p.add_argument("--from-json", type=Path, nargs="+", default=None)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    if args.from_json:
        files = [json.loads(f.read_text()) for f in args.from_json]
        runs = {"new": (files[0], files[1])} | ({"old": (files[2], files[3])} if len(files) >= 4 else {})
    else:
        runs = measure(args.threads, args.callgrind, args.baseline_src)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".md.tmp")
    tmp.write_text(render(runs))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
