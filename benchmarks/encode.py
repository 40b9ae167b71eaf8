"""Encoding throughput of the builtin encoder: images/s and texts/s on this machine.

    python -m benchmarks.encode [--quick] [--threads N]

Images are small PNGs like the demo corpus's clip-art (decoded from disk each time: decode, preprocess, forward,
ConSE bridge); texts are short captions. The embedding cache is disabled so every item is really encoded.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from unimir.encoders import Item, load_encoder

CAPTIONS = ["a red apple on a table", "a small dog running", "an old steam locomotive", "a violin",
            "a sailing boat at sea", "a cup of coffee", "a tabby cat", "a yellow school bus", "a wooden chair",
            "a bunch of bananas", "a pair of sunglasses", "a guitar leaning on a wall"]


def _images(n: int, folder: Path, size: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        im = Image.new("RGB", (size, size), tuple(int(x) for x in rng.integers(180, 255, 3)))
        d = ImageDraw.Draw(im)
        for _ in range(4):
            x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
            d.ellipse((x0, y0, x0 + size // 3, y0 + size // 3), fill=tuple(int(x) for x in rng.integers(0, 255, 3)))
        path = folder / f"img{i}.png"
        im.save(path)
        paths.append(str(path))
    return paths


def _rate(fn, n: int, repeats: int) -> float:
    fn()  # warm-up (allocations, lazy init)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def run(quick: bool = False, threads: int | None = None) -> list[dict]:
    if threads:
        torch.set_num_threads(threads)
    enc = load_encoder("builtin")
    n_img, n_txt, repeats = (64, 512, 2) if quick else (256, 2048, 3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (192, 640):
            paths = _images(n_img, Path(tmp), size)
            for bs in (4, 8, 16):
                rate = _rate(lambda: enc.encode([Item(None, p) for p in paths], batch_size=bs), n_img, repeats)
                rows.append({"what": f"images {size}px PNG, end to end", "batch": bs, "per_s": rate, "items": n_img})
        pil = [Image.open(io.BytesIO(Path(p).read_bytes())).convert("RGB") for p in _images(32, Path(tmp), 224)]
        rows.append({"what": "images, network + bridge only", "batch": 8, "items": 32,
                     "per_s": _rate(lambda: [enc.embed_images(pil[i:i + 8]) for i in range(0, 32, 8)], 32, repeats)})
    texts = [CAPTIONS[i % len(CAPTIONS)] + f" number {i}" for i in range(n_txt)]
    for bs in (32, 64, 128):
        rows.append({"what": "texts, short captions", "batch": bs, "items": n_txt,
                     "per_s": _rate(lambda: enc.encode([Item(t) for t in texts], batch_size=bs), n_txt, repeats)})
    rows.append({"what": "single text query", "batch": 1, "items": 50,
                 "per_s": _rate(lambda: [enc.encode([Item(t)], "query") for t in texts[:50]], 50, repeats)})
    for row in rows:
        row["repeats"] = repeats
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'what':<36} {'batch':>5} {'items/s':>9}", "-" * 52]
    lines += [f"{r['what']:<36} {r['batch']:>5} {r['per_s']:>9.1f}" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    enc = load_encoder("builtin")
    print(f"builtin encoder ({'bfloat16' if enc.bf16 else 'float32'} autocast), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(format_rows(run(args.quick, args.threads)))


if __name__ == "__main__":
    main()
