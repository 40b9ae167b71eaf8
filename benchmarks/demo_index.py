"""The demo-corpus index the quality and footprint sections search: built from scratch in every run (timed, embedding
cache off), its generative model trained in the run or, in ``--quick`` runs, reused from the suite's cache.

A cached trained index is reused only when its key matches: the training configs, the torch version and a digest
of the demo corpus and of every unimir source file that shapes features, codes or the model (all but the server,
the CLI and evaluation). The full suite always trains, and refreshes the cache.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import torch

import unimir
from unimir.demo import demo_corpus, unseen_train_file
from unimir.encoders.cache import default_cache_dir
from unimir.generator import GeneratorTrainConfig
from unimir.index import Index
from unimir.quantizer import QuantizerTrainConfig
from unimir.training import train, training_pairs

from .timing import Stopwatch

SOURCE_EXCLUDED = ("serve", "eval", "cli.py", "__main__.py", "demo.py")
QUICK_GENERATOR_EPOCHS = 10  # of the default 30, when --quick finds no cached index


def pool_file(root: Path) -> Path:
    return root / "cand_pool" / "mbeir_demo_cand_pool.jsonl"


def train_file(root: Path) -> Path:
    """The unseen-target split's training queries: the quality section measures unseen targets first."""
    return unseen_train_file(root)


def build(out: Path) -> tuple[Index, float]:
    """Index the demo corpus from scratch (no embedding cache); returns the index and the wall-clock seconds."""
    root = demo_corpus()
    with Stopwatch() as sw:
        index = Index.build(pool_file(root), out, root=root, cache=False)
    return index, sw.seconds


def _configs(quick_training: bool) -> dict:
    generator = GeneratorTrainConfig(epochs=QUICK_GENERATOR_EPOCHS) if quick_training else GeneratorTrainConfig()
    return {"quantizer": QuantizerTrainConfig().to_dict(), "generator": generator.to_dict()}


def _digest_files(paths: list[Path], base: Path, h: "hashlib._Hash") -> None:
    for path in sorted(paths):
        h.update(str(path.relative_to(base)).encode())
        h.update(path.read_bytes())


def cache_key(configs: dict) -> str:
    h = hashlib.sha1(json.dumps({"configs": configs, "torch": torch.__version__}, sort_keys=True).encode())
    package = Path(unimir.__file__).parent
    sources = [p for p in package.rglob("*.py") if p.relative_to(package).parts[0] not in SOURCE_EXCLUDED]
    _digest_files(sources, package, h)
    root = demo_corpus()
    _digest_files([pool_file(root), train_file(root), root / "instructions" / "query_instructions.tsv"], root, h)
    for image in sorted((root / "mbeir_images").rglob("*")):  # names and sizes: the images are never edited
        h.update(f"{image.relative_to(root)}:{image.stat().st_size if image.is_file() else -1}".encode())
    return h.hexdigest()[:16]


def _cache_dir(key: str) -> Path:
    return default_cache_dir() / "bench" / f"demo-{key}"


def _cached(key: str) -> dict | None:
    folder = _cache_dir(key)
    try:
        info = json.loads((folder / "info.json").read_text())
        Index.load(folder / "index")  # refuses an index whose model belongs to another pool
    except (OSError, ValueError, unimir.UnimirError):
        return None
    return {**info, "path": str(folder / "index"), "source": "cache"} if info.get("key") == key else None


def _store(index_dir: Path, info: dict) -> None:
    folder = _cache_dir(info["key"])
    staging = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(index_dir, staging / "index")
    (staging / "info.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def trained(index: Index, quick: bool) -> dict:
    """A trained copy of the demo index: {path, source ("trained" or "cache"), configs, pairs, train_s, ...}.

    ``index`` is the freshly built index (saved); it is trained in place unless a usable cached index exists.
    """
    candidates = [_configs(False)] + ([_configs(True)] if quick else [])
    if quick:
        for configs in candidates:
            hit = _cached(cache_key(configs))
            if hit:
                return hit
    configs = candidates[-1]
    root = demo_corpus()
    with Stopwatch() as pairs_sw:
        pairs = training_pairs(index, [train_file(root)])
    with Stopwatch() as train_sw:
        train(index, pairs, quantizer_config=QuantizerTrainConfig.from_dict(configs["quantizer"]),
              generator_config=GeneratorTrainConfig.from_dict(configs["generator"]))
    info = {"key": cache_key(configs), "configs": configs, "pairs": len(pairs), "pairs_s": pairs_sw.seconds,
            "train_s": train_sw.seconds, "quick_training": configs != _configs(False),
            "trained_on": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "quantizer": index.generative.quantizer.config.spec,
            "generator": index.generative.generator.config.to_dict(),
            "collisions": index.generative.stats.to_dict()}
    _store(index.path, info)
    return {**info, "path": str(index.path), "source": "trained"}
