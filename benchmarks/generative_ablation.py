"""Ablation of generative retrieval's generalisation settings on the demo corpus's unseen-target split.

    python -m benchmarks.generative_ablation [--variants a,b,...] [--seeds 0,1,2] \
        [--out docs/bench/generative-ablation.md]
    python -m benchmarks.generative_ablation --variants NAME --seeds S --parts DIR   # one process per part
    python -m benchmarks.generative_ablation --variants a,b,... --parts DIR --render

Each variant trains quantizer + generator from scratch on ``mbeir_demo_unseen_train.jsonl`` (the same pairs) once
per seed and is evaluated in the three settings of ``benchmarks.generative_eval``; the report gives mean ± sd over
seeds. Writes the report (tables) and a JSON file beside it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from unimir.demo import demo_corpus, test_pool_index, unseen_train_file
from unimir.generator import GeneratorTrainConfig
from unimir.index import Index
from unimir.quantizer import QuantizerTrainConfig
from unimir.training import train, training_pairs

from . import generative_eval as ge
from . import machine

# name -> (what changes, quantizer overrides, generator overrides); the defaults are {} / {}. A quantizer override
# "spec" is the quantizer architecture (``unimir train --quantizer``). Settings a variant depends on are pinned, so
# that it keeps meaning the same when a default changes.
PAPER = {"pool_pairs": False, "pool_noise": 0.0, "pool_shift": False, "query_noise": 0.0, "mix_prob": 1.0,
         "val_share": 0.0, "patience": 0}
FORMER = {"pool_pairs": True, "pool_noise": 0.5, "pool_shift": False, "query_noise": 0.0, "mix_prob": 1.0,
          "val_share": 0.1, "patience": 4}
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "paper": ("GENIUS recipe: (query, positive) pairs only, mixing, 30 epochs, no validation", {}, PAPER),
    "pool": ("+ index-time pool pairs (each item's own vector -> its ID), no noise", {},
             {**PAPER, "pool_pairs": True}),
    "pool+noise": ("+ noise of relative norm 0.5 on the pool pairs' inputs", {},
                   {**PAPER, "pool_pairs": True, "pool_noise": 0.5}),
    "pool+noise1": ("as pool+noise, noise 1.0", {}, {**PAPER, "pool_pairs": True, "pool_noise": 1.0}),
    "val+stop": ("+ 10 % of training targets held out, early stopping on their generative R@5 (the former "
                 "defaults)", {}, FORMER),
    "val+stop+qnoise": ("val+stop + noise 0.3 on the (query, positive) inputs too", {},
                        {**FORMER, "query_noise": 0.3}),
    "val+stop+mix0.5": ("val+stop, half the (query, positive) inputs clean instead of mixed", {},
                        {**FORMER, "mix_prob": 0.5}),
    "val+stop+shift": ("val+stop + gap-shifted pool pairs (generator/augment.py)", {},
                       {**FORMER, "pool_shift": True}),
    "val+stop+refit": ("val+stop + codebooks refitted on the pool's and queries' vectors after training",
                       {"pool_refit": True}, FORMER),
    "defaults": ("the current defaults", {}, {}),
    "defaults+nostop": ("the defaults, validation kept but no early stopping (all 30 epochs; the defaults since "
                        "stop 17)", {}, {"patience": 0}),
    "defaults+stop4": ("the defaults with early stopping after 4 validation runs without gain (the defaults "
                       "before stop 17)", {}, {"patience": 4}),
    "defaults+draws1": ("the defaults with one drawn (query, positive) pair per training query and epoch", {},
                        {"query_draws": 1}),
    "defaults+draws2": ("the defaults with two drawn (query, positive) pairs per training query and epoch", {},
                        {"query_draws": 2}),
    "defaults+qep40": ("the defaults with 40 quantizer epochs (one drawn pair per query and epoch: 40 steps of 512 "
                       "pairs, where the 4 paraphrases as separate pairs gave 60 in 10 epochs)", {"epochs": 40}, {}),
    "defaults+qdraws4": ("the defaults with 4 drawn pairs per query and epoch for the quantizer too (7 steps of 512 "
                         "pairs per epoch, 70 in all: the old enumeration's budget)", {"query_draws": 4}, {}),
    "defaults+noshift": ("the defaults without gap-shifted pool pairs", {}, {"pool_shift": False}),
    "defaults+noise1": ("the defaults, pool-pair noise 1.0", {}, {"pool_noise": 1.0}),
    "defaults+qnoise": ("the defaults + noise 0.3 on the (query, positive) inputs", {}, {"query_noise": 0.3}),
    "defaults+mix0.5": ("the defaults, half the (query, positive) inputs clean instead of mixed", {},
                        {"mix_prob": 0.5}),
    "defaults+mix0.5+qnoise": ("the defaults, half the (query, positive) inputs unmixed, noise 0.3 on them", {},
                               {"mix_prob": 0.5, "query_noise": 0.3}),
    "defaults+noval": ("the defaults without a validation split (all targets trained, all 30 epochs)", {},
                       {"val_share": 0.0, "patience": 0}),
}
# a one-epoch run that checks the script end to end (not part of the report)
SMOKE = {"smoke": ("smoke test: one epoch of each stage", {"epochs": 1}, {"epochs": 1})}


def run(names: list[str], seeds: list[int], scratch: Path, parts: Path | None = None) -> dict:
    """Train and evaluate every (variant, seed); with ``parts``, each one's results are written there as soon as
    it ends (``NAME-sSEED.json``), so that a long run stopped part-way keeps what it finished."""
    root = demo_corpus()
    union = Index.build(root / "cand_pool" / "mbeir_demo_cand_pool.jsonl", scratch / "union", root=root)
    union.encoder = ge.MemoEncoder(union.encoder)
    test_index = test_pool_index(union, scratch / "test")
    test_index.encoder = union.encoder
    pairs = training_pairs(union, [unseen_train_file(root)])
    results = {"pairs": len(pairs), "union_items": len(union), "test_items": len(test_index), "variants": {},
               "machine": machine.describe()}
    for seed in seeds:
        for name in names:
            what, q_over, g_over = {**VARIANTS, **SMOKE}[name]
            spec = q_over.get("spec")
            qcfg = QuantizerTrainConfig(**{"seed": seed, **{k: v for k, v in q_over.items() if k != "spec"}})
            gcfg = GeneratorTrainConfig(**{"seed": seed, **g_over})
            union.generative = None
            print(f"[ablation] {name}, seed {seed}: {what}", flush=True)
            t0 = time.perf_counter()
            report = train(union, pairs, quantizer=spec, quantizer_config=qcfg, generator_config=gcfg, save=False,
                           log=False)
            train_s = time.perf_counter() - t0
            test_index = test_pool_index(union)
            test_index.encoder = union.encoder
            rows = ge.evaluate_settings(union, test_index, diagnose=seed == seeds[0])
            summ = ge.summary(rows)
            entry = results["variants"].setdefault(name, {"what": what, "quantizer_overrides": q_over,
                                                          "generator_overrides": g_over, "seeds": {}})
            entry["seeds"][str(seed)] = {
                "train_s": train_s, "epochs_run": len(report.generator.history),
                "best_epoch": report.generator.best_epoch, "stopped_early": report.generator.stopped_early,
                "health": union.generative.health, "rows": rows, "summary": summ}
            print(f"[ablation] {name}, seed {seed}: trained in {train_s:.0f} s; " + "; ".join(
                f"{s}: gen {e['generative']['ratio']:.2f}x rerank {e['generative-rerank']['ratio']:.2f}x "
                f"quantize {e['quantize']['ratio']:.2f}x" for s, e in summ.items()), flush=True)
            if parts is not None:
                parts.mkdir(parents=True, exist_ok=True)
                part = {**results, "variants": {name: {**entry, "seeds": {str(seed): entry["seeds"][str(seed)]}}}}
                (parts / f"{name}-s{seed}.json").write_text(json.dumps(part, indent=1, default=str))
    return results


def _mean_sd(values: list[float], digits: int = 2) -> str:
    """"mean ± sd" (sample sd over seeds), or the single value."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def render(results: dict, command: str) -> str:
    m = results["machine"]
    variants = results["variants"]
    n_seeds = sorted({len(v["seeds"]) for v in variants.values()})
    out = [
        "# Generative retrieval: generalisation ablation (demo corpus, unseen-target split)", "",
        f"Made by `{command}` on {m.get('cpu', 'this machine')} ({m.get('torch_threads', '?')} torch thread(s), "
        f"load average {m.get('load_start', ['?'])[0]} at the start, {m.get('date', '')}), "
        "a machine that may run other jobs (training times are inflated and noisy; recalls are not "
        "affected). Encoder: the default `builtin`. Every variant trains quantizer + generator from scratch on the "
        f"{results['pairs']} (query, positive) pairs of `query/train/mbeir_demo_unseen_train.jsonl` (one per "
        "instruction paraphrase and positive, one drawn per query and epoch; every positive in the training half of "
        "the pool) once per seed (the seed of "
        "both stages: k-means, data order, mixing, noise, dropout and the validation split), then searches "
        f"the unseen test queries in the test pool ({results['test_items']} items, none a training target) and in "
        f"the union pool ({results['union_items']} items), and the seen-target test queries in the union pool. "
        "R@5 is the tie-aware hit rate, mean over the four tasks; each cell is the ratio to dense R@5 of the same "
        "queries, mean ± sample sd over seeds. *Validation* is what settings were chosen on: generative R@5 on up to "
        "300 pairs of the training targets that training holds out (unseen by the generator, searched in the union "
        "pool), from the generator's health report; variants without a validation split have none.", "",
        f"Seeds per variant: {', '.join(map(str, n_seeds))}. With 61-78 test queries per task a single R@5 has a "
        "standard error of about 0.05, so differences under ~0.05× between variants are within noise.", "",
        "| variant | what changes | seeds | train s | epochs (best) | validation generative R@5 | unseen, test pool: "
        "generative / rerank / quantize (÷ dense) | tasks with generative ≥ quantize | unseen, union: generative / "
        "rerank / quantize | seen, union: generative / rerank / quantize |",
        "|---|---|---:|---:|---|---:|---|---:|---|---|"]
    for name, v in variants.items():
        runs = list(v["seeds"].values())

        def cell(setting: str) -> str:
            return " / ".join(_mean_sd([r["summary"][setting][mode]["ratio"] for r in runs])
                              for mode in ("generative", "generative-rerank", "quantize"))

        epochs = ", ".join(f"{r['epochs_run']}" + ("" if r["best_epoch"] is None else f" ({r['best_epoch'] + 1})")
                           for r in runs)
        vals = [(r["health"].get("generator") or {}).get("validation", {}).get("generative_r5") for r in runs]
        val = "–" if None in vals else _mean_sd(vals, 3)
        ge_q = []
        for r in runs:
            per = r["summary"]["unseen, test pool"]
            ge_q.append(sum(per["generative"]["per_task_ratio"][t] >= per["quantize"]["per_task_ratio"][t]
                            for t in per["tasks"]))
        ge_q_cell = ", ".join(f"{c}/{len(runs[0]['summary']['unseen, test pool']['tasks'])}" for c in ge_q)
        out.append(f"| {name} | {v['what']} | {', '.join(v['seeds'])} | "
                   f"{np.mean([r['train_s'] for r in runs]):.0f} | {epochs} | {val} | {cell('unseen, test pool')} | "
                   f"{ge_q_cell} | {cell('unseen, union')} | {cell('seen, union')} |")
    first = next(iter(variants.values()))
    dense = next(iter(first["seeds"].values()))["summary"]
    out += ["", "Dense R@5 (the reference of every ratio; the same for every seed): " + ", ".join(
        f"{k} {e['dense']['mean']:.3f}" for k, e in dense.items()) + "."]
    for name, v in variants.items():
        seed, run0 = next(iter(v["seeds"].items()))
        out += ["", f"## Variant `{name}`", "", v["what"] + f". Tables of seed {seed}.", "",
                ge.markdown_tables(run0["rows"], run0["summary"])]
        health = run0.get("health") or {}
        for stage in ("quantizer", "generator"):
            if stage in health:
                from unimir.health import format_report

                out += ["", "```", format_report(stage, health[stage]), "```"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", default="0", help="comma-separated seeds; each variant is trained once per seed")
    ap.add_argument("--out", type=Path, default=machine.REPO / "docs" / "bench" / "generative-ablation.md")
    ap.add_argument("--parts", type=Path, help="write each variant's results as JSON here instead of the report "
                    "(run variants as separate processes), or with --render, read them from here")
    ap.add_argument("--render", action="store_true", help="only render the report from --parts")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    unknown = [n for n in names if n not in VARIANTS and n not in SMOKE]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    command = "python -m benchmarks.generative_ablation" + (" " + " ".join(argv) if argv else "")
    if args.render:
        parts = [json.loads(p.read_text()) for n in names for p in sorted(args.parts.glob(f"{n}-s*.json"))]
        results = {**parts[0], "variants": {}}
        for part in parts:  # one file per (variant, seed)
            for k, v in part["variants"].items():
                results["variants"].setdefault(k, {**v, "seeds": {}})["seeds"].update(v["seeds"])
        command = ("python -m benchmarks.generative_ablation --variants NAMES --seeds SEEDS --parts DIR (several "
                   "processes), then --render")
    else:
        with tempfile.TemporaryDirectory(prefix="unimir-ablation-") as tmp:
            results = run(names, seeds, Path(tmp), parts=args.parts)
        if args.parts:
            return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results, command))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

