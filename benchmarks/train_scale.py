"""Generative training at M-BEIR scale: peak memory and pairs/s of the quantizer and generator stages.

    python -m benchmarks.train_scale --pairs 1100000 --dim 768 --work /tmp/train-scale

Training streams (``unimir.training``): a pair is two row numbers, query features are memory-mapped fp16 parts,
candidate features are read from the index's memory-mapped segments, and each stage gathers one batch at a time
through a DataLoader. This measures that path on synthetic, M-BEIR-shaped data: a pool of ``--pairs`` candidates
in the union pool's modality mix (benchmarks/scale.py's generator: 16 % image, 44 % text, 39 % image+text) built
into an ``Index`` from features (``unimir index POOL --features DIR``), and one training query per pair, a noisy view
of its positive (70 % text-only, 30 % image+text, as composed queries), written as a folder of fp16 parts (what
``training_pairs`` writes after encoding). No encoder runs: encoding cost is not part of these figures.

Each stage runs one epoch with the default configs in a fresh child process, as ``unimir train`` runs it (quantizer
on the pairs, then coding every pool row; generator on the pairs plus the index-time pool self-pairs). Memory is
the child's peak resident set (VmHWM: heap and touched memory-mapped pages together) and, at the end, anonymous and
file-backed resident memory separately (/proc/self/smaps_rollup). Other jobs may share the machine:
times are noisy; the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .machine import REPO, describe, load_average
from .scale import PAIR_NOISE, QUERY_NOISE, _unit, make_data

COMPOSED_SHARE = 0.3  # training queries with an image part too (the rest are text-only)
CHUNK = 100_000


def make_queries(work: Path, n: int, dim: int, seed: int = 1) -> None:
    """queries/{image,text,image_mask,text_mask}.npy (fp16 parts) and pairs.npz (positive row per query)."""
    feats = work / "feats"
    image = np.load(feats / "image.npy", mmap_mode="r")
    text = np.load(feats / "text.npy", mmap_mode="r")
    codes = np.load(work / "codes.npy")
    rng = np.random.default_rng(seed)
    positives = rng.integers(len(codes), size=n)
    composed = rng.random(n) < COMPOSED_SHARE
    out = work / "queries"
    out.mkdir(exist_ok=True)
    q_image = np.lib.format.open_memmap(out / "image.npy", "w+", np.float16, (n, dim))
    q_text = np.lib.format.open_memmap(out / "text.npy", "w+", np.float16, (n, dim))
    for s in range(0, n, CHUNK):
        rows = positives[s:s + CHUNK]
        order = np.argsort(rows)
        base = np.empty((len(rows), dim), np.float32)
        base[order] = _unit(image[rows[order]].astype(np.float32) + text[rows[order]].astype(np.float32))
        noisy = _unit(base + QUERY_NOISE / np.sqrt(dim) * rng.standard_normal(base.shape, np.float32))
        q_text[s:s + CHUNK] = noisy.astype(np.float16)
        view = _unit(base + PAIR_NOISE / np.sqrt(dim) * rng.standard_normal(base.shape, np.float32))
        q_image[s:s + CHUNK] = np.where(composed[s:s + CHUNK, None], view, 0).astype(np.float16)
    q_image.flush()
    q_text.flush()
    np.save(out / "image_mask.npy", composed)
    np.save(out / "text_mask.npy", np.ones(n, bool))
    np.savez(work / "pairs.npz", positives=positives, targets=codes[positives].astype(np.int64))


# --- children --------------------------------------------------------------------------------------------------

def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _resident() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        out[key.strip()] = int(value.split()[0]) * 1024
    return {"anon": out.get("Anonymous", 0), "file": out.get("Rss", 0) - out.get("Anonymous", 0)}


def _memory(base: dict[str, int]) -> dict:
    now = _resident()
    return {"peak_rss": _status("VmHWM"), "baseline_rss": base["anon"] + base["file"], "anon_end": now["anon"],
            "file_end": now["file"]}


def child_build(work: Path, out: Path) -> dict:
    from unimir import Index
    from unimir.data.ingest import load_pool
    from unimir.data.problems import Problems
    from unimir.index.features import read_features

    t0 = time.perf_counter()
    candidates, root = load_pool(work / "pool.jsonl", work, Problems())
    # parts kept: training embeds the candidates' parts, and no encoder can compute them again here
    index = Index.build(candidates, out, root=root, encoder="synthetic-768", index="flat",
                        features=read_features(work / "feats"), keep_parts=True)
    return {"build_s": time.perf_counter() - t0, "items": len(index)}


def _cap_steps(steps: int) -> None:
    """Stop every epoch of both stages after ``steps`` batches (0: full epochs), for a run that fits the clock:
    the batches are the epoch's first ones, read from the full-size pairs and memory maps."""
    if not steps:
        return
    import unimir.generator.train as generator_train
    import unimir.quantizer.train as quantizer_train
    from unimir.quantizer.pairs import EpochBatches

    class FirstBatches(EpochBatches):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.steps = min(self.steps, self.start + steps)

    quantizer_train.EpochBatches = generator_train.EpochBatches = FirstBatches


def _pairs(work: Path, index):
    from unimir.index.features import read_features
    from unimir.quantizer import TrainingPairs

    data = np.load(work / "pairs.npz")
    return TrainingPairs(read_features(work / "queries"), index.feature_rows, index.modality_codes.astype(np.int64),
                         data["positives"], data["targets"])


def child_quantizer(work: Path, out: Path, epochs: int, steps: int) -> dict:
    import torch

    import unimir.generator  # noqa: F401  (libraries loaded before the baseline)
    from unimir import Index
    from unimir.generator import GenerativeRetriever
    from unimir.quantizer import QuantizerConfig, QuantizerTrainConfig, SemanticQuantizer
    from unimir.quantizer.pairs import EpochBatches, pair_batches

    torch.manual_seed(0)
    base = _resident()
    index = Index.load(out, generative=False, encoder=None)
    pairs = _pairs(work, index)
    config = QuantizerConfig(dim=index.manifest.dim)
    train_config = QuantizerTrainConfig(epochs=epochs)
    retriever = GenerativeRetriever(SemanticQuantizer(config))
    _cap_steps(steps)
    t0 = time.perf_counter()
    report = retriever.fit_quantizer(pairs, train_config, progress=False, log=False)
    train_s = time.perf_counter() - t0
    # one full epoch of the loader alone: every pair's query and positive read from the memory maps
    t1 = time.perf_counter()
    sampler = EpochBatches(len(pairs), train_config.batch_size, 0, 0)
    gathered = sum(len(b[0]) for b in pair_batches(lambda rows: (pairs.query_features(rows).text,
                                                                 pairs.positive_features(rows).text), sampler,
                                                   torch.device("cpu")))
    loader_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    stats = retriever.index(index.feature_rows, index.modality_codes)
    code_s = time.perf_counter() - t2
    retriever.save(work / "model")
    return {"spec": config.spec, "pairs": len(pairs), "epochs": epochs, "steps": report.steps,
            "batch_size": train_config.batch_size, "train_s": train_s,
            "pairs_per_s": report.steps * train_config.batch_size / train_s, "loader_pairs": gathered,
            "loader_s": loader_s, "code_s": code_s, "coded_rows": len(retriever), "distinct_ids": stats.n_distinct,
            "loss_last": report.history[-1]["loss"], **_memory(base)}


def child_generator(work: Path, out: Path, epochs: int, steps: int) -> dict:
    import torch

    import unimir.generator  # noqa: F401
    from unimir import Index
    from unimir.generator import GenerativeRetriever, GeneratorConfig, GeneratorTrainConfig

    torch.manual_seed(0)
    base = _resident()
    index = Index.load(out, generative=False, encoder=None)
    pairs = _pairs(work, index)
    retriever = GenerativeRetriever.load(work / "model")
    config = GeneratorTrainConfig(epochs=epochs)
    _cap_steps(steps)
    t0 = time.perf_counter()
    report = retriever.fit_generator(pairs, config, GeneratorConfig(), progress=False,
                                     pool=(index.feature_rows, index.modality_codes), log=False)
    train_s = time.perf_counter() - t0
    seen = min((len(pairs) + index.num_rows) * epochs, report.steps * config.batch_size)
    return {"pairs": len(pairs), "pool_pairs": index.num_rows, "epochs": epochs, "steps": report.steps,
            "batch_size": config.batch_size, "train_s": train_s, "pairs_per_s": seen / train_s,
            "loss_last": report.history[-1]["loss"], "exact_acc_last": report.history[-1]["exact_acc"],
            **_memory(base)}


CHILDREN = {"build": lambda a: child_build(Path(a[0]), Path(a[1])),
            "quantizer": lambda a: child_quantizer(Path(a[0]), Path(a[1]), int(a[2]), int(a[3])),
            "generator": lambda a: child_generator(Path(a[0]), Path(a[1]), int(a[2]), int(a[3]))}


def _child(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), str(REPO),
                                                                       os.environ.get("PYTHONPATH")]))}
    load = load_average()[0]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.train_scale", "--child", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=7200)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-3:]}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "load_start": load, "load_end": load_average()[0]}


# --- parent ----------------------------------------------------------------------------------------------------

def run(work: Path, n: int, dim: int, epochs: int, steps: int, log, save=lambda r: None) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": describe(), "pairs": n, "dim": dim, "epochs": epochs, "steps": steps}
    t = time.perf_counter()
    if not (work / "pairs.npz").exists():
        make_data(work, n, dim)
        make_queries(work, n, dim)
    result["data_s"] = time.perf_counter() - t
    log(f"data ready ({result['data_s']:.0f} s)")
    out = work / "idx"
    if not (out / "manifest.json").exists():
        result["build"] = _child("build", str(work), str(out))
        log(f"build: {result['build']}")
    for stage in ("quantizer", "generator"):
        result[stage] = _child(stage, str(work), str(out), str(epochs), str(steps))
        log(f"{stage}: {result[stage]}")
        save(result)
    result["disk"] = {"query_parts": sum(p.stat().st_size for p in (work / "queries").iterdir()),
                      "index": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}
    return result


def report(r: dict) -> str:
    m, n, gib = r["machine"], r["pairs"], 2**30
    steps = r.get("steps", 0)
    lines = [f"# Generative training at scale: {n:,} pairs, d = {r['dim']}", "",
             f"Made by `python -m benchmarks.train_scale --pairs {n} --dim {r['dim']} --epochs {r['epochs']} "
             f"--steps {steps} --work DIR` on {m['cpu']} ({m['cores']} cores, {m['memory_gib'] or 0:.0f} GiB), "
             f"{m['date']}; revision {m['revision']}. Other jobs may have shared the machine (load average "
             "per stage below, on 2 cores), so times are noisy; bytes are not.", "",
             "**Synthetic, M-BEIR-shaped features**: a pool of as many candidates as pairs in the union pool's "
             "modality mix (16 % image, 44 % text, 39 % image+text; clustered unit fp16 parts), built into an "
             "`Index` from features; one training query per pair, a noisy view of its positive (70 % text-only, "
             "30 % image+text), stored as memory-mapped fp16 parts as `training_pairs` stores encoded queries. No "
             "encoder runs. Each stage is one child process running what `unimir train` runs: the quantizer "
             "(default config, then coding every pool row) and the generator (default config, the pairs plus one "
             "index-time self-pair per pool row), reading every batch from the memory maps through a DataLoader.",
             ""]
    if steps:
        lines += [f"To fit the clock on this loaded machine each stage trained only the first {steps:,} batches "
                  "of its epoch (the full-size pairs and memory maps, the real schedule): pairs/s is measured over "
                  "those batches. The quantizer child then also reads one *full* epoch of batches through the same "
                  "loader (no model) and codes every pool row, so its peak has touched every feature page.", ""]
    lines += ["Peak RSS is the child's VmHWM: heap plus the memory-mapped feature pages it touched (file-backed, "
              "evictable page cache). At the end, anonymous and file-backed resident memory are shown apart; the "
              "baseline is the process with torch and unimir imported.", "",
              "| stage | pairs per epoch | batch | steps run | seconds | pairs/s | peak RSS GiB | anon at end GiB | "
              "file-backed at end GiB | baseline GiB | load avg (start / end) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for stage in ("quantizer", "generator"):
        s = r.get(stage)
        if not s:
            lines.append(f"| {stage} | not measured: the run was stopped at the deadline ||||||||||")
            continue
        if "error" in s:
            lines.append(f"| {stage} | error: {s['error']} ||||||||||")
            continue
        per_epoch = s["pairs"] + s.get("pool_pairs", 0)
        lines.append(f"| {stage} | {per_epoch:,} | {s['batch_size']} | {s['steps']:,} | {s['train_s']:,.0f} | "
                     f"{s['pairs_per_s']:,.0f} | {s['peak_rss'] / gib:.2f} | {s['anon_end'] / gib:.2f} | "
                     f"{s['file_end'] / gib:.2f} | {s['baseline_rss'] / gib:.2f} | "
                     f"{s['load_start']:.1f} / {s['load_end']:.1f} |")
    q, g = r.get("quantizer", {}), r.get("generator", {})
    if q and "error" not in q:
        lines += ["", f"Quantizer `{q['spec']}`: loss {q['loss_last']:.3f} over the batches run. The loader alone "
                      f"read one full epoch, {q['loader_pairs']:,} (query, positive) pairs, in {q['loader_s']:.0f} s "
                      f"({q['loader_pairs'] / q['loader_s']:,.0f} pairs/s); coding all {q['coded_rows']:,} pool rows "
                      f"took {q['code_s']:.0f} s ({q['distinct_ids']:,} distinct IDs: {q['steps']:,} steps on "
                      "synthetic data make "
                      "no usable codebook, this is not a quality figure). The peak includes both."]
    if g and "error" not in g:
        lines += ["", f"Generator (default shape): loss {g['loss_last']:.3f}, teacher-forced exact-ID accuracy "
                      f"{g['exact_acc_last']:.3f} over the batches run (synthetic data; not a quality figure)."]
    d = r.get("disk")
    if d:
        lines += ["", f"On disk: query parts {d['query_parts'] / gib:.2f} GiB ({d['query_parts'] / n:,.0f} B per "
                      f"query row), index {d['index'] / gib:.2f} GiB."]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--report":  # re-render saved results: --report RESULT.json
        print(report(json.loads(Path(sys.argv[2]).read_text())), end="")
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(CHILDREN[sys.argv[2]](sys.argv[3:])))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=1_100_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=0, help="stop each epoch after this many batches (0: full epochs)")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "train-scale.md")
    args = p.parse_args()

    def save(result: dict) -> None:
        (args.work / "result.json").write_text(json.dumps(result, indent=2))
        args.out.write_text(report(result))

    result = run(args.work, args.pairs, args.dim, args.epochs, args.steps, lambda s: print(s, flush=True), save)
    save(result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
