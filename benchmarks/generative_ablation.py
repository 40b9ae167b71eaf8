"""Ablation of generative retrieval's generalisation settings on the demo corpus's unseen-target split.

    python -m benchmarks.generative_ablation [--variants a,b,...] [--out docs/bench/generative-ablation.md]

Each variant trains quantizer + generator from scratch on ``mbeir_demo_unseen_train.jsonl`` (the same pairs, the
same seed) and is evaluated in the three settings of ``benchmarks.generative_eval``. Variants are cumulative unless
their description says otherwise, ending at the defaults. Writes the report (tables) and a JSON file beside it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from unimir.demo import demo_corpus, test_pool_index, unseen_train_file
from unimir.generator import GeneratorTrainConfig
from unimir.index import Index
from unimir.quantizer import QuantizerTrainConfig
from unimir.training import train, training_pairs

from . import generative_eval as ge
from . import machine

# name -> (what changes, quantizer overrides, generator overrides); the defaults are {} / {}.
PAPER = {"pool_pairs": False, "pool_noise": 0.0, "val_share": 0.0, "patience": 0}
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "paper": ("GENIUS recipe: (query, positive) pairs only, mixing, 30 epochs, no validation", {}, PAPER),
    "pool": ("+ index-time pool pairs (each item's own vector -> its ID), no noise", {},
             {**PAPER, "pool_pairs": True}),
    "pool+noise": ("+ noise of relative norm 0.5 on the pool pairs' inputs", {},
                   {**PAPER, "pool_pairs": True, "pool_noise": 0.5}),
    "pool+noise1": ("as pool+noise, noise 1.0", {}, {**PAPER, "pool_pairs": True, "pool_noise": 1.0}),
    "defaults": ("+ 10 % of training targets held out, early stopping on their generative R@5 (the defaults)",
                 {}, {}),
    "defaults+qnoise": ("defaults + noise 0.3 on the (query, positive) inputs too", {}, {"query_noise": 0.3}),
    "defaults+refit": ("defaults + codebooks refitted on the pool's and queries' vectors after training",
                       {"pool_refit": True}, {}),
}
# a one-epoch run that checks the script end to end (not part of the report)
SMOKE = {"smoke": ("smoke test: one epoch of each stage", {"epochs": 1}, {"epochs": 1})}


def run(names: list[str], scratch: Path, keep: Path | None = None) -> dict:
    root = demo_corpus()
    union = Index.build(root / "cand_pool" / "mbeir_demo_cand_pool.jsonl", scratch / "union", root=root)
    union.encoder = ge.MemoEncoder(union.encoder)
    test_index = test_pool_index(union, scratch / "test")
    test_index.encoder = union.encoder
    pairs = training_pairs(union, [unseen_train_file(root)])
    results = {"pairs": len(pairs), "union_items": len(union), "test_items": len(test_index), "variants": {},
               "machine": machine.describe()}
    for name in names:
        what, q_over, g_over = {**VARIANTS, **SMOKE}[name]
        qcfg = QuantizerTrainConfig(**q_over)
        gcfg = GeneratorTrainConfig(**g_over)
        union.generative = None
        print(f"[ablation] {name}: {what}", flush=True)
        t0 = time.perf_counter()
        report = train(union, pairs, quantizer_config=qcfg, generator_config=gcfg, save=False)
        train_s = time.perf_counter() - t0
        if keep is not None:  # the trained model, so that a failed evaluation need not retrain
            union.save(keep / f"{name}-index")
        test_index = test_pool_index(union)
        test_index.encoder = union.encoder
        rows = ge.evaluate_settings(union, test_index)
        summ = ge.summary(rows)
        results["variants"][name] = {
            "what": what, "quantizer_overrides": q_over, "generator_overrides": g_over, "train_s": train_s,
            "epochs_run": len(report.generator.history), "best_epoch": report.generator.best_epoch,
            "stopped_early": report.generator.stopped_early, "health": union.generative.health,
            "rows": rows, "summary": summ}
        print(f"[ablation] {name}: trained in {train_s:.0f} s; " + "; ".join(
            f"{s}: gen {e['generative']['ratio']:.2f}x rerank {e['generative-rerank']['ratio']:.2f}x "
            f"quantize {e['quantize']['ratio']:.2f}x" for s, e in summ.items()), flush=True)
    return results


def render(results: dict, command: str) -> str:
    m = results["machine"]
    out = [
        "# Generative retrieval: generalisation ablation (demo corpus, unseen-target split)", "",
        f"Made by `{command}` on {m.get('cpu', 'this machine')} ({m.get('torch_threads', '?')} torch threads, "
        f"load average {m.get('load_start', ['?'])[0]} at the start), "
        "a machine shared with other engineers' jobs (training times are inflated and noisy; recalls are not "
        "affected). Every variant trains quantizer + generator from scratch on the "
        f"{results['pairs']} (query, positive) pairs of `query/train/mbeir_demo_unseen_train.jsonl` (instruction "
        f"paraphrases as separate pairs; every positive in the training half of the pool), seed 0, then searches "
        f"the unseen test queries in the test pool ({results['test_items']} items, none a training target) and in "
        f"the union pool ({results['union_items']} items), and the seen-target test queries in the union pool. "
        "R@5 is the tie-aware hit rate, mean over the four tasks, with the ratio to dense R@5 of the same queries.",
        "", "| variant | what changes | train s | epochs (best) | unseen, test pool: generative / rerank / quantize "
        "| unseen, union: generative / rerank / quantize | seen, union: generative / rerank / quantize | "
        "generative ≥ quantize on every unseen task |", "|---|---|---:|---:|---|---|---|---|"]
    for name, v in results["variants"].items():
        s = v["summary"]
        cell = lambda k: " / ".join(f"{s[k][m]['mean']:.3f} ({s[k][m]['ratio']:.2f}×)"  # noqa: E731
                                    for m in ("generative", "generative-rerank", "quantize"))
        best = "" if v["best_epoch"] is None else f" ({v['best_epoch'] + 1})"
        ge_q = "yes" if s["unseen, test pool"].get("generative_ge_quantize") else "no"
        out.append(f"| {name} | {v['what']} | {v['train_s']:.0f} | {v['epochs_run']}{best} | "
                   f"{cell('unseen, test pool')} | {cell('unseen, union')} | {cell('seen, union')} | {ge_q} |")
    dense = next(iter(results["variants"].values()))["summary"]
    out += ["", "Dense R@5 (the reference of every ratio): " + ", ".join(
        f"{k} {e['dense']['mean']:.3f}" for k, e in dense.items()) + "."]
    for name, v in results["variants"].items():
        out += ["", f"## Variant `{name}`", "", v["what"] + ".", "", ge.markdown_tables(v["rows"], v["summary"])]
        health = v.get("health") or {}
        for stage in ("quantizer", "generator"):
            if stage in health:
                from unimir.health import format_report

                out += ["", "```", format_report(stage, health[stage]), "```"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=machine.REPO / "docs" / "bench" / "generative-ablation.md")
    ap.add_argument("--parts", type=Path, help="write each variant's results as JSON here instead of the report "
                    "(run variants as separate processes), or with --render, read them from here")
    ap.add_argument("--render", action="store_true", help="only render the report from --parts")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS and n not in SMOKE]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    command = "python -m benchmarks.generative_ablation" + (" " + " ".join(argv) if argv else "")
    if args.render:
        parts = [json.loads((args.parts / f"{n}.json").read_text()) for n in names
                 if (args.parts / f"{n}.json").exists()]
        results = {**parts[0], "variants": {k: v for part in parts for k, v in part["variants"].items()}}
        command = ("python -m benchmarks.generative_ablation --variants NAME --parts DIR (one process per variant), "
                   "then --render")
    else:
        with tempfile.TemporaryDirectory(prefix="unimir-ablation-") as tmp:
            results = run(names, Path(tmp), keep=args.parts)
        if args.parts:
            args.parts.mkdir(parents=True, exist_ok=True)
            for name in names:
                part = {**results, "variants": {name: results["variants"][name]}}
                (args.parts / f"{name}.json").write_text(json.dumps(part, indent=1, default=str))
            return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results, command))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

