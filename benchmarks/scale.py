"""Scale through the product's ``Index``: build, open, disk, resident memory, latency, recall, appends and eval.

    python -m benchmarks.scale --items 1000000 --dim 768 --work /tmp/scale [--hnsw-items 200000]

The pool is synthetic and M-BEIR-shaped (the union pool's modality mix: 16 % image, 44 % text, 39 % image+text;
see mbeir-format.md §8): clustered unit part vectors, an image+text item's two parts drawn around the same
centre. It is written as an M-BEIR ``cand_pool`` jsonl plus a folder of fp16 ``.npy`` parts, and every index is
built with ``Index.build(pool, out, features=...)`` (``unimir index POOL --features DIR``). Queries are text-only,
noisy views of a pool item's fused vector, asking for that item's modality. Recall@10 is against the exact top 10
(NumPy over the same fp16 parts, modality-filtered). Each measurement runs in a fresh child process; resident
memory comes from /proc/self/smaps_rollup (anonymous and file-backed separately), after opening and before
searching. Other jobs may share the machine: absolute times are noisy (the load average is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .machine import REPO, describe

MIX = ((0, 0.161), (1, 0.438), (2, 0.401))  # modality code, share of the M-BEIR union pool
CLUSTERS, ITEM_NOISE, PAIR_NOISE, QUERY_NOISE = 4096, 0.7, 0.5, 0.4
CHUNK = 100_000
QUERIES = 100
MIN_QUERIES, SEARCH_BUDGET_S = 10, 300  # a search row stops after this many seconds of searching (>= 10 queries)
VARIANTS = {"dense flat (fp16)": "flat", "dense IVF-PQ": "IVF256,PQ48;nprobe=16", "dense HNSW": "HNSW32,SQ8",
            "dense flat, parts kept": "flat"}
KEEP_PARTS = {"dense flat, parts kept"}  # built with keep_parts=True (unimir index --keep-parts)


# --- data ------------------------------------------------------------------------------------------------------

def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def make_data(work: Path, n: int, dim: int, seed: int = 0) -> None:
    """pool.jsonl, feats/{image,text,image_mask,text_mask}.npy (fp16 parts) and meta.json, chunk by chunk."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((CLUSTERS, dim), dtype=np.float32))
    feats = work / "feats"
    feats.mkdir(parents=True, exist_ok=True)
    image = np.lib.format.open_memmap(feats / "image.npy", "w+", np.float16, (n, dim))
    text = np.lib.format.open_memmap(feats / "text.npy", "w+", np.float16, (n, dim))
    codes = rng.choice([c for c, _ in MIX], size=n, p=[p for _, p in MIX]).astype(np.int8)
    cluster = rng.integers(CLUSTERS, size=n)
    with open(work / "pool.jsonl", "w") as pool:
        for s in range(0, n, CHUNK):
            e = min(n, s + CHUNK)
            base = centres[cluster[s:e]] + ITEM_NOISE / np.sqrt(dim) * rng.standard_normal((e - s, dim), np.float32)
            img = _unit(base + PAIR_NOISE / np.sqrt(dim) * rng.standard_normal((e - s, dim), np.float32))
            txt = _unit(base + PAIR_NOISE / np.sqrt(dim) * rng.standard_normal((e - s, dim), np.float32))
            c = codes[s:e]
            image[s:e] = np.where((c != 1)[:, None], img, 0).astype(np.float16)
            text[s:e] = np.where((c != 0)[:, None], txt, 0).astype(np.float16)
            lines = []
            for i, code in zip(range(s, e), c):
                rec = {"did": f"9:{i}", "modality": ("image", "text", "image,text")[code], "src_content": None,
                       "txt": None if code == 0 else f"synthetic passage {i}",
                       "img_path": None if code == 1 else f"synthetic/{i}.jpg"}
                lines.append(json.dumps(rec))
            pool.write("\n".join(lines) + "\n")
    np.save(feats / "image_mask.npy", codes != 1)
    np.save(feats / "text_mask.npy", codes != 0)
    np.save(work / "codes.npy", codes)
    image.flush()
    text.flush()
    (work / "meta.json").write_text(json.dumps({"items": n, "dim": dim}))


def fused_rows(work: Path, rows: np.ndarray) -> np.ndarray:
    image = np.load(work / "feats" / "image.npy", mmap_mode="r")
    text = np.load(work / "feats" / "text.npy", mmap_mode="r")
    order = np.argsort(rows)
    out = np.empty((len(rows), image.shape[1]), np.float32)
    out[order] = _unit(image[rows[order]].astype(np.float32) + text[rows[order]].astype(np.float32))
    return out


def make_queries(work: Path, count: int, seed: int, name: str) -> None:
    """Text-only query vectors near random pool items; the target modality is the item's (file ``name``.npz)."""
    n = json.loads((work / "meta.json").read_text())["items"]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, count, replace=False))
    base = fused_rows(work, rows)
    q = _unit(base + QUERY_NOISE / np.sqrt(base.shape[1]) * rng.standard_normal(base.shape, np.float32))
    np.savez(work / f"{name}.npz", queries=q, rows=rows, targets=np.load(work / "codes.npy")[rows])


def exact_top10(work: Path, limit: int | None = None) -> Path:
    """Ground truth for queries.npz: exact top 10 per query among rows of its target modality (fp16 parts), over
    the whole pool or its first ``limit`` rows (a prefix pool); returns the .npy it wrote."""
    data = np.load(work / "queries.npz")
    q, targets = data["queries"], data["targets"]
    codes = np.load(work / "codes.npy")
    n = len(codes) if limit is None else min(limit, len(codes))
    best_s = np.full((len(q), 10), -np.inf, np.float32)
    best_r = np.zeros((len(q), 10), np.int64)
    for s in range(0, n, CHUNK):
        rows = np.arange(s, min(n, s + CHUNK))
        scores = q @ fused_rows(work, rows).T
        scores[targets[:, None] != codes[rows][None, :]] = -np.inf
        both_s = np.concatenate([best_s, scores], 1)
        both_r = np.concatenate([best_r, np.broadcast_to(rows, scores.shape)], 1)
        top = np.argsort(-both_s, axis=1, kind="stable")[:, :10]
        best_s, best_r = np.take_along_axis(both_s, top, 1), np.take_along_axis(both_r, top, 1)
    path = work / ("exact.npy" if limit is None else f"exact-{limit}.npy")
    np.save(path, best_r)
    return path


# --- children --------------------------------------------------------------------------------------------------

def _smaps() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        out[key.strip()] = int(value.split()[0]) * 1024
    return out


def _resident() -> dict[str, int]:
    s = _smaps()
    return {"anon": s.get("Anonymous", 0), "file": s.get("Rss", 0) - s.get("Anonymous", 0)}


def _peak() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def child_build(work: Path, out: Path, spec: str, limit: int | None, keep_parts: bool = False) -> dict:
    from unimir import Index
    from unimir.data.ingest import load_pool
    from unimir.data.problems import Problems

    t0 = time.perf_counter()
    pool = work / "pool.jsonl"
    if limit:  # a prefix of the pool (HNSW builds are slow on 2 cores)
        pool = work / f"pool-{limit}.jsonl"
        if not pool.exists():
            with open(work / "pool.jsonl") as src, open(pool, "w") as dst:
                for _, line in zip(range(limit), src):
                    dst.write(line)
    candidates, root = load_pool(pool, work, Problems())
    from unimir.index.features import read_features

    feats = read_features(work / "feats")
    if limit:
        feats = feats[slice(0, limit)]
    index = Index.build(candidates, out, root=root, encoder="synthetic-768", index=spec, features=feats,
                        keep_parts=keep_parts)
    seconds = time.perf_counter() - t0
    return {"build_s": seconds, "items": len(index), "disk_bytes": _dir_bytes(out), "peak_rss": _peak(),
            "segments": len(index.manifest.segments)}


def child_train_generative(work: Path, out: Path) -> dict:
    """Train a small quantizer + generator on 20K synthetic pairs and install it (codes for every row).

    The candidates' parts come from the features folder the index was built from (GENIUS's way: features are
    their own artifact), since the flat index stores only its dense vectors."""
    import torch

    from unimir import Index
    from unimir.encoders import Features
    from unimir.generator import GenerativeRetriever, GeneratorConfig, GeneratorTrainConfig
    from unimir.index.features import read_features
    from unimir.quantizer import QuantizerConfig, QuantizerTrainConfig, SemanticQuantizer, TrainingPairs

    stored = read_features(work / "feats")
    appended = np.load(work / "appended.npy") if (work / "appended.npy").exists() else np.zeros((0, 1), np.float32)

    def parts(rows) -> Features:
        """Parts of index rows: pool rows from the features folder, then the rows child_append added."""
        rows = np.arange(len(stored) + len(appended))[rows] if isinstance(rows, slice) else np.asarray(rows)
        old, new = rows[rows < len(stored)], rows[rows >= len(stored)] - len(stored)
        f = stored[old]
        vec = appended[new]
        return Features(np.concatenate([np.asarray(f.image, np.float32), np.zeros_like(vec)]),
                        np.concatenate([np.asarray(f.text, np.float32), vec]),
                        np.concatenate([np.asarray(f.image_mask), np.zeros(len(new), bool)]),
                        np.concatenate([np.asarray(f.text_mask), np.ones(len(new), bool)]))

    torch.manual_seed(0)
    index = Index.load(out, generative=False)
    dim = index.manifest.dim
    t0 = time.perf_counter()
    rng = np.random.default_rng(5)
    rows = np.sort(rng.choice(len(stored), min(20_000, len(stored)), replace=False))
    cands = parts(rows)
    base = index.fuse(cands)
    q = _unit(base + QUERY_NOISE / np.sqrt(dim) * rng.standard_normal(base.shape, np.float32))
    n = len(rows)
    queries = Features(np.zeros_like(q), q, np.zeros(n, bool), np.ones(n, bool))
    codes = index.modality_codes[rows].astype(np.int64)
    pairs = TrainingPairs(queries, cands, codes, np.arange(n), codes)
    retriever = GenerativeRetriever(SemanticQuantizer(QuantizerConfig(dim=dim, levels=3, codebook_size=256)))
    retriever.fit_quantizer(pairs, QuantizerTrainConfig(epochs=3, kmeans_init_samples=4096), progress=False)
    retriever.fit_generator(pairs, GeneratorTrainConfig(epochs=2), GeneratorConfig(dim=dim, levels=3,
                                                                                   codebook_size=256),
                            progress=False)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    all_codes = np.concatenate([retriever.quantizer.compute_codes(parts(slice(s, min(s + CHUNK, index.num_rows))),
                                                                  index.modality_codes[s:s + CHUNK].astype(np.int64))
                                for s in range(0, index.num_rows, CHUNK)])
    retriever.index_codes(all_codes)
    index.generative = retriever
    index.save()
    return {"train_s": train_s, "code_and_save_s": time.perf_counter() - t1, "peak_rss": _peak()}


def child_search(work: Path, out: Path, mode: str, generative: bool) -> dict:
    import faiss  # noqa: F401  (libraries loaded before the baseline)
    import torch

    import unimir.generator  # noqa: F401
    from unimir import Index
    from unimir.data.records import Modality
    from unimir.encoders import Features

    torch.set_num_threads(1)
    base = _resident()
    t0 = time.perf_counter()
    index = Index.load(out, generative=generative, encoder=None)
    open_s = time.perf_counter() - t0
    opened = _resident()
    data = np.load(work / "queries.npz")
    q, targets = data["queries"], data["targets"]
    n = len(q)
    feats = Features(np.zeros_like(q), q, np.zeros(n, bool), np.ones(n, bool))
    allowed = [[Modality.from_code(int(t))] for t in targets]
    index.search_features(feats[[0]], allowed[:1], 10, mode=mode)  # warm-up
    seconds, found = [], []
    for i in range(n):
        if len(seconds) >= MIN_QUERIES and sum(seconds) > SEARCH_BUDGET_S:
            break  # slow modes at millions of items: the first queries within the budget
        s = time.perf_counter()
        r = index.search_features(feats[[i]], allowed[i:i + 1], 10, mode=mode)[0]
        seconds.append(time.perf_counter() - s)
        found.append(r.indices[:10])
    pool_rows = len(np.load(work / "codes.npy", mmap_mode="r"))
    prefix = index.num_rows < pool_rows  # a prefix pool (HNSW): its own exact top 10
    truth = work / f"exact-{index.num_rows}.npy" if prefix else work / "exact.npy"
    exact = np.load(truth)[:len(found)]  # the parent computes a prefix's before this child runs
    recall = float(np.mean([len(set(f.tolist()) & set(e.tolist())) / 10 for f, e in zip(found, exact)]))
    after = _resident()
    items = index.num_rows
    return {"mode": mode, "items": items, "open_s": open_s,
            "anon_per_item": (opened["anon"] - base["anon"]) / items,
            "file_per_item": (opened["file"] - base["file"]) / items,
            "anon_per_item_after_search": (after["anon"] - base["anon"]) / items,
            "file_per_item_after_search": (after["file"] - base["file"]) / items,
            "p50_ms": 1000 * float(np.median(seconds)), "p90_ms": 1000 * float(np.quantile(seconds, 0.9)),
            "recall_at_10": recall, "queries": len(found), "prefix_pool": prefix}


def child_append(work: Path, out: Path, count: int) -> dict:
    from unimir import Index
    from unimir.data.records import Candidate, Modality
    from unimir.encoders import Features

    index = Index.load(out, generative=True)
    dim = index.manifest.dim
    rng = np.random.default_rng(9)
    vec = _unit(rng.standard_normal((count, dim), np.float32))
    feats = Features(np.zeros_like(vec), vec, np.zeros(count, bool), np.ones(count, bool))
    np.save(work / "appended.npy", vec)  # their parts, for child_train_generative (the index keeps none)
    cands = [Candidate(f"new:{i}", Modality.TEXT, f"appended passage {i}") for i in range(count)]
    before_files = {p: p.stat().st_size for p in out.rglob("*") if p.is_file()}
    io0 = _io()
    t0 = time.perf_counter()
    index.add_features(cands, feats, out=out)
    seconds = time.perf_counter() - t0
    io1 = _io()
    after_files = {p: p.stat().st_size for p in out.rglob("*") if p.is_file()}
    new_bytes = sum(s for p, s in after_files.items() if p not in before_files)
    changed = sorted(str(p.relative_to(out)) for p, s in after_files.items()
                     if p in before_files and before_files[p] != s)
    return {"items": index.num_rows - count, "appended": count, "seconds": seconds, "new_file_bytes": new_bytes,
            "changed_files": changed, "write_bytes": io1.get("write_bytes", 0) - io0.get("write_bytes", 0),
            "wchar": io1.get("wchar", 0) - io0.get("wchar", 0)}


def _io() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        k, v = line.split(":")
        out[k.strip()] = int(v)
    return out


def child_eval(work: Path, out: Path) -> dict:
    """What ``evaluate`` does after encoding, for 20K pre-encoded queries: the batched searches, one batched id
    lookup per batch, the relevant-id map built once, and tie-aware Recall@10."""
    import torch

    from unimir import Index
    from unimir.data.records import Modality
    from unimir.encoders import Features
    from unimir.eval.evaluate import _unique_dids
    from unimir.eval.metrics import expected_hit_at_k

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    index = Index.load(out, generative=False)
    data = np.load(work / "eval.npz")
    q, targets, rows = data["queries"], data["targets"], data["rows"]
    n = len(q)
    relevant = {i: {f"9:{r}"} for i, r in enumerate(rows)}
    rel_rows = index.rows_of({d for s in relevant.values() for d in s})
    hits = []
    for s in range(0, n, 256):
        sl = slice(s, min(n, s + 256))
        feats = Features(np.zeros_like(q[sl]), q[sl], np.zeros(len(q[sl]), bool), np.ones(len(q[sl]), bool))
        allowed = [[Modality.from_code(int(t))] for t in targets[sl]]
        rankings = index.search_features(feats, allowed, 10)
        did_of = dict(zip(*_unique_dids(index, rankings)))
        for i, r in zip(range(sl.start, sl.stop), rankings):
            is_rel = np.fromiter((did_of[int(x)] in relevant[i] for x in r.indices), bool, len(r))
            hits.append(expected_hit_at_k(r, is_rel, 10))
    return {"queries": n, "wall_s": time.perf_counter() - t0, "recall_at_10": float(np.mean(hits)),
            "relevant_in_pool": len(rel_rows), "peak_rss": _peak(), "resident_end": _resident()}


def _child(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), str(REPO),
                                                                       os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scale", "--child", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=4 * 3600)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-3:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


CHILDREN = {"build": lambda a: child_build(Path(a[0]), Path(a[1]), a[2], int(a[3]) or None, a[4] == "1"),
            "train": lambda a: child_train_generative(Path(a[0]), Path(a[1])),
            "search": lambda a: child_search(Path(a[0]), Path(a[1]), a[2], a[3] == "1"),
            "append": lambda a: child_append(Path(a[0]), Path(a[1]), int(a[2])),
            "eval": lambda a: child_eval(Path(a[0]), Path(a[1]))}


# --- parent ----------------------------------------------------------------------------------------------------

STEPS = ("dense flat (fp16)", "append", "dense IVF-PQ", "eval", "generative", "dense HNSW", "dense flat, parts kept")


def run(work: Path, n: int, dim: int, hnsw_items: int, log, save=lambda r: None,
        only: frozenset[str] | None = None) -> dict:
    """Every measurement in turn, most important first; ``save(result)`` after each, so a run cut short by the
    clock still reports what it measured. ``only`` names the STEPS to run (the data is made whatever it says);
    "append", "eval" and "generative" need the flat index, "eval" the IVF-PQ one, from this or an earlier run."""
    want = (lambda step: True) if only is None else only.__contains__
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": describe(), "items": n, "dim": dim, "hnsw_items": hnsw_items, "variants": {}}
    t = time.perf_counter()
    if not (work / "meta.json").exists():
        make_data(work, n, dim)
        make_queries(work, QUERIES, 1, "queries")
        make_queries(work, min(20_000, n // 2), 2, "eval")
        exact_top10(work)
    result["data_s"] = time.perf_counter() - t
    log(f"data ready ({result['data_s']:.0f} s)")
    flat = work / "idx-flat"

    def variant(name: str) -> None:
        spec = VARIANTS[name]
        limit = hnsw_items if "HNSW" in name and hnsw_items < n else 0
        out = work / f"idx-{spec.split(';')[0].replace(',', '_')}{'-parts' if name in KEEP_PARTS else ''}"
        shutil.rmtree(out, ignore_errors=True)
        if limit and not (work / f"exact-{limit}.npy").exists():
            exact_top10(work, limit)  # ground truth of the prefix pool, outside the measured child
        build = _child("build", str(work), str(out), spec, str(limit), "1" if name in KEEP_PARTS else "0")
        log(f"{name}: build {build}")
        row = {"spec": spec, "build": build}
        if name in KEEP_PARTS:  # the same index as flat plus parts: disk and build only
            result["disk_groups_parts"] = _disk_groups(out)
            shutil.rmtree(out, ignore_errors=True)
            result["variants"][name] = row
            save(result)
            return
        if "error" not in build:
            row["search"] = _child("search", str(work), str(out), "dense", "0")
            log(f"{name}: search {row['search']}")
        result["variants"][name] = row
        save(result)

    if want("dense flat (fp16)"):
        variant("dense flat (fp16)")
        result["disk_groups"] = _disk_groups(flat)
    if want("append"):
        result["append"] = _child("append", str(work), str(flat), "1000")
        log(f"append: {result['append']}")
        save(result)
    if want("dense IVF-PQ"):
        variant("dense IVF-PQ")
    if want("eval"):
        result["eval"] = _child("eval", str(work), str(work / "idx-IVF256_PQ48"))
        log(f"eval: {result['eval']}")
        save(result)
    if want("generative"):
        result["generative_train"] = _child("train", str(work), str(flat))
        log(f"generative: train {result['generative_train']}")
        for mode in ("generative", "generative-rerank", "quantize"):
            result["variants"][mode] = {"search": _child("search", str(work), str(flat), mode, "1")}
            log(f"{mode}: {result['variants'][mode]}")
            save(result)
    if want("dense HNSW"):
        variant("dense HNSW")
    if flat.exists():
        result["disk_groups"] = _disk_groups(flat)
    if want("dense flat, parts kept"):
        variant("dense flat, parts kept")
    return result


def _disk_groups(index_dir: Path) -> dict[str, int]:
    """Bytes by kind of file in one index folder (records, parts, dense store, generative)."""
    groups: dict[str, int] = {}
    for p in index_dir.rglob("*"):
        if not p.is_file():
            continue
        kind = ("records" if p.suffix == ".sqlite" else "dense" if p.name.startswith("dense") else
                "parts" if p.name in ("image.npy", "text.npy") else
                "generative codes" if "codes" in p.name else
                "generative model" if "generative" in str(p.relative_to(index_dir)) else "other")
        groups[kind] = groups.get(kind, 0) + p.stat().st_size
    return groups


def report(r: dict) -> str:
    m, n = r["machine"], r["items"]
    lines = [f"# Scale through the product's Index: {n:,} items, d = {r['dim']}", "",
             "Made by `python -m benchmarks.scale --items {} --dim {} --work DIR --hnsw-items {}` on {} "
             "({} cores, {:.0f} GiB), {}; revision {}. Other jobs may have shared the machine (load average "
             "{:.1f} at the start), so times are noisy.".format(n, r["dim"], r["hnsw_items"], m["cpu"],
                                                                m["cores"], m["memory_gib"] or 0, m["date"],
                                                                m["revision"], m["load_start"][0]), "",
             "**Synthetic, M-BEIR-shaped features** (16 % image, 44 % text, 39 % image+text; clustered unit parts) "
             "built with `unimir index POOL --features DIR` (`Index.build(..., features=)`); queries are text-only "
             "noisy views of pool items, filtered to the item's modality. Recall@10 is against the exact top 10 over "
             "the same fp16 vectors. Memory is measured in a fresh process per row, from /proc/self/smaps_rollup, "
             "as the increase over the process with the libraries imported: anonymous (heap) and file-backed "
             "(memory-mapped pages, evictable page cache) separately; 'after search' is after the row's queries: "
             f"{QUERIES}, or as many as ran within {SEARCH_BUDGET_S} s of searching (at least {MIN_QUERIES}; "
             "listed below the table).", "",
             "| mode | spec | items | build s | build peak RSS GiB | disk B/item | open s | anon B/item (open / after "
             "search) | file-backed B/item (open / after search) | p50 ms | p90 ms | recall@10 vs flat |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in r["variants"].items():
        b, s = row.get("build", {}), row.get("search", {})
        if "error" in b or "error" in s:
            lines.append(f"| {name} | {row.get('spec', '')} | error: {b.get('error') or s.get('error')} ||||||||||")
            continue
        items = b.get("items") or s.get("items")
        disk = f"{b['disk_bytes'] / items:,.0f}" if b else "(flat index + model)"
        peak = f"{b['peak_rss'] / 2**30:.1f}" if b.get("peak_rss") else ""
        head = f"| {name} | `{row.get('spec', '')}` | {items:,} | {b.get('build_s', 0):.0f} | {peak} | {disk} |"
        if not s:  # built for its disk figures only
            lines.append(head + " (same as flat) ||||||")
            continue
        recall = f"{s['recall_at_10']:.3f}" + (" (vs the prefix's exact top 10)" if s.get("prefix_pool") else "")
        lines.append(head + f" {s['open_s']:.2f} | {s['anon_per_item']:.1f} / {s['anon_per_item_after_search']:.1f} | "
                     f"{s['file_per_item']:.1f} / {s['file_per_item_after_search']:.1f} | {s['p50_ms']:.1f} | "
                     f"{s['p90_ms']:.1f} | {recall} |")
    short = [f"{name} {row['search']['queries']}" for name, row in r["variants"].items()
             if row.get("search", {}).get("queries", QUERIES) < QUERIES]
    if short:
        lines += ["", f"Rows stopped by the search budget, queries searched: {', '.join(short)}."]
    g = r.get("generative_train")
    missing = [k for k in ("dense flat (fp16)", "dense IVF-PQ", "generative", "generative-rerank", "quantize",
                           "dense HNSW", "dense flat, parts kept") if k not in r["variants"]]
    if missing:
        lines += ["", f"Not measured at this size (not run, or stopped at the deadline): {', '.join(missing)}."]
    if g and "error" not in g:
        lines += ["", f"Generative model (quantizer C256+M3+RQ3x256 style, 3 levels × 256, small generator) trained on "
              f"20,000 synthetic pairs in {g.get('train_s', 0):.0f} s; coding all rows and saving "
              f"{g.get('code_and_save_s', 0):.0f} s. Its files live in the flat index's folder."]
    lines += ["", "Disk of the flat index folder by kind (bytes per item): " +
              ", ".join(f"{k} {v / n:,.0f}" for k, v in sorted(r.get("disk_groups", {}).items())) +
              " (the generative files are those of the model trained into it). The dense store holds each item's "
              "vector once; parts are stored only with `--keep-parts`."]
    if r.get("disk_groups_parts"):
        lines += ["", "The same flat index built with `--keep-parts` (bytes per item): " +
                  ", ".join(f"{k} {v / n:,.0f}" for k, v in sorted(r["disk_groups_parts"].items()))]
    lines += [""]
    a = r.get("append", {"error": "not run"})
    if "error" not in a:
        lines += [f"## Appending 1,000 items to the {n:,}-item flat index", "",
                  "| items before | appended | seconds | bytes in new files | bytes written (/proc/self/io) | "
                  "existing files changed |", "|---:|---:|---:|---:|---:|---|",
                  f"| {a['items']:,} | {a['appended']:,} | {a['seconds']:.2f} | {a['new_file_bytes']:,} | "
                  f"{a['write_bytes']:,} | {', '.join(a['changed_files']) or 'none'} |", ""]
    e = r.get("eval", {"error": "not run"})
    if "error" not in e:
        lines += ["## Evaluation of 20,000 queries against the IVF-PQ index", "",
                  "Everything `evaluate` does after encoding (pre-encoded synthetic queries): batched searches of "
                  "256, one batched id lookup per batch, relevant ids looked up once, tie-aware Recall@10.", "",
                  "| queries | wall s (incl. open) | peak RSS MiB | Recall@10 of the source item |",
                  "|---:|---:|---:|---:|",
                  f"| {e['queries']:,} | {e['wall_s']:.1f} | {e['peak_rss'] / 2**20:,.0f} | "
                  f"{e['recall_at_10']:.3f} |", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--report":  # re-render saved results: --report RESULT.json ...
        print("\n".join(report(json.loads(Path(f).read_text())) for f in sys.argv[2:]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(CHILDREN[sys.argv[2]](sys.argv[3:])))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--hnsw-items", type=int, default=200_000)
    p.add_argument("--work", type=Path, required=True, help="scratch folder for data and indexes (large)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "scale.md")
    p.add_argument("--only", action="append", choices=STEPS, metavar="STEP",
                   help=f"run only this step (repeatable; one of {', '.join(STEPS)}); the default runs them all")
    args = p.parse_args()
    log = lambda s: print(time.strftime("%H:%M:%S"), s, file=sys.stderr, flush=True)  # noqa: E731
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save(result: dict) -> None:
        (args.work / "result.json").write_text(json.dumps(result, indent=2))
        args.out.write_text(report(result))

    save(run(args.work, args.items, args.dim, args.hnsw_items, log, save, frozenset(args.only) if args.only else None))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
