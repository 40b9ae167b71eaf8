"""Index size on disk per mode and peak memory while searching, each mode in its own fresh process.

    python -m benchmarks.footprint demo|synthetic DIR MODE [--batch N]    (the child; prints one JSON line)

Memory figures come from /proc/self/status: VmRSS after loading, then VmHWM (peak resident set) reset through
/proc/self/clear_refs just before searching and read after, so the peak belongs to the search alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from .machine import REPO

MB = 2**20
DEMO_MODES = ("dense", "generative", "generative-rerank", "quantize")
DEMO_MEMORY_FILES = ("mbeir_demo_task0_test.jsonl", "mbeir_demo_task4_test.jsonl")  # T→I and I→I: both encoders
SYNTHETIC_MODES = ("dense flat", "dense HNSW", "generative", "generative-rerank", "quantize")

# what each mode reads at search time, at the least (file groups below)
DEMO_NEEDS = {"dense": ("features", "dense"), "generative": ("codes", "quantizer", "generator"),
              "generative-rerank": ("codes", "quantizer", "generator", "features"),
              "quantize": ("codes", "quantizer")}
SYNTHETIC_NEEDS = {"dense flat": ("flat",), "dense HNSW": ("hnsw",), "generative": ("codes", "quantizer", "generator"),
                   "generative-rerank": ("codes", "quantizer", "generator", "vectors"),
                   "quantize": ("codes", "quantizer")}


# --- disk ------------------------------------------------------------------------------------------------------

def _size(paths) -> int:
    return sum(p.stat().st_size for p in paths)


def _generative_groups(folder: Path) -> dict[str, int]:
    return {"codes": _size([*folder.glob("codes*.npy"), folder / "manifest.json"]),
            "quantizer": _size(folder.glob("quantizer.*")), "generator": _size(folder.glob("generator.*"))}


def demo_disk(index_dir: Path) -> dict[str, int]:
    manifest = json.loads((index_dir / "manifest.json").read_text())
    groups = {"candidates": 0, "features": 0, "dense": 0}
    for seg in manifest["segments"]:  # records, fp16 parts and masks, FAISS partitions of every segment
        for f in (index_dir / seg["name"]).iterdir():
            kind = "candidates" if f.suffix == ".sqlite" else "dense" if f.name.startswith("dense") else \
                "codes" if f.name == "codes.npy" else "features"
            groups[kind] = groups.get(kind, 0) + f.stat().st_size
    generative = _generative_groups(index_dir / manifest["files"]["generative"])
    generative["codes"] += groups.pop("codes", 0)  # codes of segments appended after training
    return groups | generative


def synthetic_disk(folder: Path) -> dict[str, int]:
    return {"flat": (folder / "flat.faiss").stat().st_size, "hnsw": (folder / "hnsw.faiss").stat().st_size,
            "vectors": (folder / "fused.npy").stat().st_size} | _generative_groups(folder / "generative")


def per_mode(groups: dict[str, int], needs: dict[str, tuple[str, ...]], items: int) -> dict[str, dict]:
    return {mode: {"files": list(parts), "bytes": sum(groups[p] for p in parts),
                   "bytes_per_item": sum(groups[p] for p in parts) / items} for mode, parts in needs.items()}


# --- memory (child side) ---------------------------------------------------------------------------------------

def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _demo_search(index_dir: Path, mode: str, batch: int):
    from unimir.demo import test_query_files
    from unimir.eval import evaluate
    from unimir.index import Index

    index = Index.load(index_dir, generative=mode != "dense")
    image = next(c for c in index.candidates if c.img_path)
    for text, picture in (("warm-up", None), (None, str(index.image_path(image)))):  # encoder weights, lazy tables
        index.search(text, picture, mode=mode)
    files = [f for f in test_query_files() if f.name in DEMO_MEMORY_FILES]
    return len(index), lambda: sum(r.num_queries for r in evaluate(index, files, mode=mode, batch_size=batch))


def _synthetic_search(folder: Path, mode: str, batch: int):
    import faiss
    import numpy as np

    from unimir.generator import GenerativeRetriever
    from unimir.index.dense import FaissStore, _Partition

    from .synthetic import DIM, IMAGE, text_features

    queries = np.load(folder / "queries.npy")
    if mode.startswith("dense"):
        part = faiss.read_index(str(folder / ("flat.faiss" if mode == "dense flat" else "hnsw.faiss")))
        dense = FaissStore(DIM, "Flat" if mode == "dense flat" else "HNSW32")
        dense.segments = {"pool": [_Partition(IMAGE, part, np.arange(part.ntotal, dtype=np.int32), 0)]}
        items, search = part.ntotal, lambda q: dense.search(q, 10, [(IMAGE,)] * len(q))
    else:
        retriever = GenerativeRetriever.load(folder / "generative")
        fused = np.load(folder / "fused.npy") if mode == "generative-rerank" else None
        items, search = len(retriever), lambda q: retriever.search(text_features(q), np.full(len(q), IMAGE), k=10,
                                                                   beams=50, mode=mode, cand_fused=fused)
    return items, lambda: sum(len(search(queries[i:i + batch])) for i in range(0, len(queries), batch))


def child(kind: str, folder: Path, mode: str, batch: int) -> dict:
    import resource

    # libraries first: the baseline is the process with every module imported and no data loaded
    import faiss  # noqa: F401
    import torch  # noqa: F401

    import unimir.demo  # noqa: F401
    import unimir.eval  # noqa: F401
    import unimir.generator  # noqa: F401
    import unimir.index  # noqa: F401

    from . import synthetic  # noqa: F401

    base = _status_kib("VmRSS")
    items, search = (_demo_search if kind == "demo" else _synthetic_search)(folder, mode, batch)
    loaded = _status_kib("VmRSS")
    reset = _reset_peak()
    queries = search()
    peak = _status_kib("VmHWM")
    return {"mode": mode, "items": items, "rss_imports_mb": base / 1024, "rss_loaded_mb": loaded / 1024,
            "peak_search_mb": peak / 1024, "search_extra_mb": (peak - loaded) / 1024, "peak_reset": reset,
            "queries": queries, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# --- parent side -----------------------------------------------------------------------------------------------

def measure(kind: str, folder: Path, mode: str, batch: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.footprint", kind, str(folder), mode, "--batch",
                           str(batch)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return {"mode": mode, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(demo_index: Path | None, synthetic: Path | None, batch: int = 64, demo_batch: int = 256) -> dict:
    """Disk and memory of the demo index (searched in batches of ``demo_batch``) and of the saved synthetic pool
    (batches of ``batch``); either may be None."""
    out: dict = {"batch": batch, "demo_batch": demo_batch}
    if demo_index is not None:
        groups = demo_disk(demo_index)
        items = json.loads((demo_index / "manifest.json").read_text())["num_items"]
        out["demo"] = {"items": items, "groups": groups, "modes": per_mode(groups, DEMO_NEEDS, items),
                       "memory": [measure("demo", demo_index, m, demo_batch) for m in DEMO_MODES]}
    if synthetic is not None:
        groups = synthetic_disk(synthetic)
        memory = [measure("synthetic", synthetic, m, batch) for m in SYNTHETIC_MODES]
        items = next((m["items"] for m in memory if "items" in m), 0)
        out["synthetic"] = {"items": items, "groups": groups, "modes": per_mode(groups, SYNTHETIC_NEEDS, items),
                            "memory": memory}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("demo", "synthetic"))
    p.add_argument("folder", type=Path)
    p.add_argument("mode")
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    print(json.dumps(child(args.kind, args.folder, args.mode, args.batch)))


if __name__ == "__main__":
    main()
