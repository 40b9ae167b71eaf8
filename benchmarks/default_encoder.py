"""The default encoder's bridge against ConSE: retrieval quality, the red apple, and throughput, in one run.

    python -m benchmarks.default_encoder [--work build/bench-emoji] [--out docs/bench/default-encoder.md]
    python -m benchmarks.default_encoder --candidates a.safetensors b.safetensors   # quick look at bridge files

Evaluation sets (neither was seen by the bridge's training, scripts/build_bridge.py):

* **demo test queries**: the demo corpus's T->I (task 0) and I->T (task 3) test queries, each against the pool's
  candidates of the target modality (724 images / 454 texts). The bridge was trained on none of the demo corpus's
  drawings (excluded by hash).
* **emoji**: every emoji that Debian's ``fonts-noto-color-emoji`` draws, rendered here with Pillow onto white,
  captioned with its CLDR English short name (``unicode-cldr-core``, annotations/en.xml, type="tts"). Built under
  ``--work`` with ``apt-get download`` + ``dpkg -x``; nothing is committed. Emoji are never used in training.

Both encoders encode every file end to end (decode, preprocess, Lite0, bridge) with the embedding cache off, so the
same images and texts go through both. Throughput repetitions alternate ConSE and the bridge, so machine load
(shared with other jobs) hits both alike; the load average is reported.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import torch

from unimir.encoders import Item, load_encoder

from .machine import describe, load_average

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "src" / "unimir" / "demo_corpus"
EMOJI_PACKAGES = ("fonts-noto-color-emoji", "unicode-cldr-core")
FONT = "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
CLDR_EN = "usr/share/unicode/cldr/common/annotations/en.xml"
KS = (1, 5, 10)


# --- evaluation sets ---------------------------------------------------------------------------------------------

def demo_sets() -> dict:
    """T->I and I->T test queries of the demo corpus, with the pool split by modality."""
    pool = [json.loads(line) for line in (DEMO / "cand_pool" / "mbeir_demo_cand_pool.jsonl").read_text().splitlines()]
    images = [c for c in pool if c["modality"] == "image"]
    texts = [c for c in pool if c["modality"] == "text"]

    def queries(task: int) -> list[dict]:
        path = DEMO / "query" / "test" / f"mbeir_demo_task{task}_test.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    img_row = {c["did"]: i for i, c in enumerate(images)}
    txt_row = {c["did"]: i for i, c in enumerate(texts)}
    t2i = queries(0)
    i2t = queries(3)
    return {
        "image_paths": [str(DEMO / c["img_path"]) for c in images], "texts": [c["txt"] for c in texts],
        "t2i_queries": [q["query_txt"] for q in t2i],
        "t2i_pos": [[img_row[d] for d in q["pos_cand_list"]] for q in t2i],
        "i2t_queries": [str(DEMO / q["query_img_path"]) for q in i2t],
        "i2t_pos": [[txt_row[d] for d in q["pos_cand_list"]] for q in i2t],
        "image_names": [c["img_path"] for c in images],
    }


def fetch_packages(work: Path) -> tuple[Path, list[dict]]:
    debs, root = work / "debs", work / "root"
    debs.mkdir(parents=True, exist_ok=True)
    records = []
    for pkg in EMOJI_PACKAGES:
        if not list(debs.glob(f"{pkg}_*.deb")):
            subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True)
        deb = sorted(debs.glob(f"{pkg}_*.deb"))[-1]
        stamp = root / f".{pkg}.unpacked"
        if not stamp.exists():
            root.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
            stamp.touch()
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True,
                                 check=True).stdout.strip()
        records.append({"package": pkg, "version": version})
    return root, records


def emoji_set(work: Path) -> tuple[list[str], list[str], list[dict]]:
    """Render each CLDR-named emoji the font has; returns (png paths, names, package records)."""
    from PIL import ImageFont

    root, records = fetch_packages(work)
    tree = ElementTree.parse(root / CLDR_EN)
    names = {}
    for el in tree.iter("annotation"):
        if el.get("type") == "tts" and el.text:
            names[el.get("cp")] = el.text.strip()
    font = ImageFont.truetype(str(root / FONT), 109)
    out = work / "emoji_png"
    out.mkdir(exist_ok=True)
    blank = _render(font, "\U0010fffd")  # what a missing glyph looks like
    paths, captions, seen = [], [], set()
    for cp, name in sorted(names.items()):
        if not any(ord(ch) >= 0x2190 for ch in cp) or re.search(r"skin tone|^regional indicator", name):
            continue  # plain symbols such as digits, and skin-tone modifiers / letters shown alone
        image = _render(font, cp)
        if image is None or (blank is not None and image.tobytes() == blank.tobytes()):
            continue
        if name.lower() in seen:
            continue
        seen.add(name.lower())
        path = out / f"{'-'.join(f'{ord(c):x}' for c in cp)}.png"
        if not path.exists():
            image.save(path)
        paths.append(str(path))
        captions.append(name)
    return paths, captions, records


def _render(font, text: str):
    from PIL import Image, ImageDraw

    canvas = Image.new("RGBA", (180, 160), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((10, 10), text, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None:
        return None
    white = Image.new("RGBA", canvas.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, canvas).convert("RGB").crop(box)


# --- metrics -------------------------------------------------------------------------------------------------------

def recall(query_vecs: np.ndarray, pool_vecs: np.ndarray, positives: list[list[int]]) -> dict[int, float]:
    """Recall@K (a hit if any positive is in the top K), ties broken by pool order."""
    scores = query_vecs @ pool_vecs.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :max(KS)]
    hits = {k: 0 for k in KS}
    for row, pos in zip(order, positives):
        for k in KS:
            hits[k] += bool(set(row[:k].tolist()) & set(pos))
    return {k: hits[k] / len(positives) for k in KS}


_MEMO: dict = {}


def _memo_key(enc, paths) -> tuple:
    return enc.spec, enc.image_preprocess, tuple(paths)


def encode_images(enc, paths: list[str]) -> np.ndarray:
    key = _memo_key(enc, paths)
    if key not in _MEMO:  # the red-apple query reuses the demo pool's vectors
        _MEMO[key] = _encode_images(enc, paths)
    return _MEMO[key]


def _encode_images(enc, paths: list[str]) -> np.ndarray:
    feats, ok = enc.encode([Item(None, p, Path(p).name) for p in paths])
    assert ok.all(), "an evaluation image failed to encode"
    return feats.image


def encode_texts(enc, texts: list[str]) -> np.ndarray:
    feats, _ = enc.encode([Item(t) for t in texts])
    return feats.text


def quality(enc, sets: dict) -> dict:
    """Recall tables for one encoder over every set: {set: {direction: {k: r}}}."""
    out = {}
    for name, s in sets.items():
        img, txt = encode_images(enc, s["image_paths"]), encode_texts(enc, s["texts"])
        t2i_q = encode_texts(enc, s["t2i_queries"]) if s["t2i_queries"] is not s["texts"] else txt
        i2t_q = encode_images(enc, s["i2t_queries"]) if s["i2t_queries"] is not s["image_paths"] else img
        out[name] = {"t2i": recall(t2i_q, img, s["t2i_pos"]), "i2t": recall(i2t_q, txt, s["i2t_pos"]),
                     "n_t2i": len(s["t2i_pos"]), "n_i2t": len(s["i2t_pos"]), "pool_img": len(img),
                     "pool_txt": len(txt)}
    return out


def red_apple(enc, demo: dict) -> list[tuple[int, str]]:
    """Ranks (1-based) of the demo corpus's apple images for the query "a red apple", over its 724 images."""
    img = encode_images(enc, demo["image_paths"])
    q = encode_texts(enc, ["a red apple"])[0]
    order = np.argsort(-(img @ q), kind="stable")
    rank = {int(i): r + 1 for r, i in enumerate(order)}
    return sorted((rank[i], n) for i, n in enumerate(demo["image_names"]) if "apple" in Path(n).name), \
        [demo["image_names"][int(i)] for i in order[:5]]


def throughput(encoders: dict, image_paths: list[str], texts: list[str], repeats: int) -> dict:
    """Best-of-``repeats`` items/s for images and texts, end to end, repetitions alternating the encoders."""
    best = {name: {"images": 0.0, "texts": 0.0} for name in encoders}
    loads = []
    for _ in range(repeats):
        for name, enc in encoders.items():
            t = time.perf_counter()
            enc.encode([Item(None, p) for p in image_paths])
            best[name]["images"] = max(best[name]["images"], len(image_paths) / (time.perf_counter() - t))
            t = time.perf_counter()
            enc.encode([Item(x) for x in texts])
            best[name]["texts"] = max(best[name]["texts"], len(texts) / (time.perf_counter() - t))
            loads.append(load_average()[0])
    return {"rates": best, "load_min": min(loads), "load_max": max(loads)}


def _share_image_features(encoders: dict, groups: list[list[str]], work: Path) -> None:
    """Fill both encoders' image memo from cached Lite0 passes (same head code as BuiltinEncoder.embed_images /
    ConseEncoder.embed_images); one pass per group of files and image preprocessing."""
    from unimir.encoders.bridge import bridge_forward

    for group in dict.fromkeys(map(tuple, groups)):
        for name, enc in encoders.items():
            pooled, conse = _cached_lite0(enc, list(group), work)
            is_bridge = name == "builtin"
            _MEMO[_memo_key(enc, group)] = (bridge_forward(enc.bridge, pooled, conse) if is_bridge else conse).numpy()


def _cached_lite0(enc, image_paths: list[str], work: Path):
    """Lite0's pooled features and unit ConSE vectors of these files, as ``enc`` preprocesses them; cached under
    ``work`` by the file list and the preprocessing."""
    import hashlib

    from unimir.data.images import open_image

    key = hashlib.sha1("\n".join(image_paths).encode()).hexdigest()[:16]
    mode = "" if enc.image_preprocess == "crop" else f"-{enc.image_preprocess}"  # "crop" keeps the older names
    path = work / f"eval-features-{key}{mode}.npz"
    if path.exists():
        with np.load(path) as z:
            return torch.from_numpy(z["pooled"]), torch.from_numpy(z["conse"])
    pooled, conse = [], []
    for s in range(0, len(image_paths), 8):
        p, lg = enc.image_features([open_image(x) for x in image_paths[s:s + 8]])
        pooled.append(p)
        conse.append(torch.nn.functional.normalize(enc.conse(lg), dim=-1))
    pooled, conse = torch.cat(pooled), torch.cat(conse)
    np.savez(path, pooled=pooled.numpy(), conse=conse.numpy())
    return pooled, conse


# --- quick comparison of candidate bridge files (development) -------------------------------------------------------

def compare_candidates(paths: list[Path], sets: dict, work: Path) -> None:
    """R@1/5/10 of ConSE (both preprocessings) and of each bridge file (with the preprocessing it names)."""
    from unimir.encoders.bridge import bridge_forward, load_weights, read_metadata
    from unimir.encoders.builtin import ConseEncoder

    encoders = {"crop": ConseEncoder()}
    encoders["pad"] = ConseEncoder(image_preprocess="pad")
    encoders["pad"].tokenizer, encoders["pad"].text_model = encoders["crop"].tokenizer, encoders["crop"].text_model
    texts = {name: (encode_texts(encoders["crop"], s["texts"]), encode_texts(encoders["crop"], s["t2i_queries"]))
             for name, s in sets.items()}
    rows = [("ConSE", None, "crop"), ("ConSE, padded input", None, "pad")]
    rows += [(str(p), load_weights(p), read_metadata(p).get("preprocess", "crop")) for p in paths]
    for label, weights, mode in rows:
        cells = []
        for name, s in sets.items():
            def vectors(image_paths):
                pooled, conse = _cached_lite0(encoders[mode], image_paths, work)
                return conse.numpy() if weights is None else bridge_forward(weights, pooled, conse).numpy()

            img = vectors(s["image_paths"])
            qi = img if s["i2t_queries"] is s["image_paths"] else vectors(s["i2t_queries"])
            txt, t2i_q = texts[name]
            r1, r2 = recall(t2i_q, img, s["t2i_pos"]), recall(qi, txt, s["i2t_pos"])
            cells.append(f"{name}: t2i {r1[1]:.3f}/{r1[5]:.3f}/{r1[10]:.3f} i2t {r2[1]:.3f}/{r2[5]:.3f}/{r2[10]:.3f}")
        print(f"{label:<50} " + " | ".join(cells), flush=True)


# --- report ---------------------------------------------------------------------------------------------------

def _icon_summary(icon_sets: list[dict]) -> str:
    if not icon_sets:
        return ""
    licences = sorted({s["licence"] for s in icon_sets})
    return (f" and {sum(s['icons'] for s in icon_sets)} icons from {len(icon_sets)} icon sets "
            f"({', '.join(licences)}; listed with versions and hashes in the weight file's metadata)")


def write_report(out: Path, res: dict, machine: dict, command: str) -> None:
    q, names = res["quality"], {"builtin-conse": "ConSE (`builtin-conse`)", "builtin": "bridge (`builtin`)",
                                "conse-padded": "ConSE, padded input (reference)"}
    lines = ["# The default encoder: trained bridge vs ConSE", "",
             f"Made by `{command}` on {machine['date']}: {machine['cpu']}, {machine['usable_cores']} usable cores, "
             f"torch {machine['versions']['torch']}, revision "
             f"{machine['revision']}. The machine was shared with other jobs (load average "
             f"{res['throughput']['load_min']:.1f}-{res['throughput']['load_max']:.1f} during the timed part).", "",
             f"Bridge weights: `{res['bridge']['file']}` ({res['bridge']['bytes'] / 1e6:.2f} MB, sha256 "
             f"`{res['bridge']['sha256'][:16]}…`), trained by `scripts/build_bridge.py` on "
             f"{res['bridge']['pairs']} openclipart drawings" + _icon_summary(res['bridge'].get("icon_sets", []))
             + "; no demo-corpus drawing and no emoji was in its training data.", "",
             "## Retrieval (recall, embedding cache off)", "",
             ("Lite0 ran once per image file (`--shared-features`: its pooled feature and ConSE vector cached, then "
              "each encoder's own image head applied), so both encoders saw identical network outputs; texts were "
              "encoded by each encoder. " if res.get("shared_features") else
              "Every file encoded end to end by each encoder. ") +
             "Each query against the candidates of the target modality. Emoji: Noto Color Emoji "
             f"{res['emoji_packages'][0]['version']} rendered with Pillow, captions are CLDR "
             f"{res['emoji_packages'][1]['version']} English short names.", "",
             "| set | direction | N queries / pool | encoder | R@1 | R@5 | R@10 | R@10 vs ConSE | random R@10 |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for set_name in q["builtin"]:
        for d, label in (("t2i", "text → image"), ("i2t", "image → text")):
            base = q["builtin-conse"][set_name][d][10]
            for enc in [e for e in ("builtin-conse", "conse-padded", "builtin") if e in q]:
                r = q[enc][set_name]
                pool = r["pool_img"] if d == "t2i" else r["pool_txt"]
                ratio = r[d][10] / base if base else float("nan")
                lines.append(f"| {set_name} | {label} | {r['n_' + d]} / {pool} | {names[enc]} | {r[d][1]:.3f} | "
                             f"{r[d][5]:.3f} | {r[d][10]:.3f} | {ratio:.2f}× | {10 / pool:.3f} |")
    n = min(v["n_t2i"] for v in q["builtin"].values())
    lines += ["", f"Standard error of a recall near 0.3 over N queries is sqrt(r(1-r)/N): about "
              f"{np.sqrt(0.3 * 0.7 / n):.3f} for the smallest N here ({n}).", "",
              "## \"a red apple\" over the demo corpus's 724 images", "",
              "| encoder | ranks of the apple images | top 5 |", "|---|---|---|"]
    for enc in ("builtin-conse", "builtin"):
        ranks, top = res["apple"][enc]
        lines.append(f"| {names[enc]} | " + ", ".join(f"{r} (`{Path(n).name}`)" for r, n in ranks) + " | "
                     + ", ".join(f"`{Path(t).name}`" for t in top) + " |")
    t = res["throughput"]
    lines += ["", f"## Throughput (end to end, {res['throughput_threads']} torch threads, best of {res['repeats']} "
              "alternating repetitions)", "",
              f"{res['n_images']} demo-corpus image files (decode, preprocess, Lite0, bridge) and {res['n_texts']} "
              "captions, embedding cache off.", "",
              "| encoder | images/s | texts/s |", "|---|---:|---:|"]
    for enc in ("builtin-conse", "builtin"):
        lines.append(f"| {names[enc]} | {t['rates'][enc]['images']:.1f} | {t['rates'][enc]['texts']:.0f} |")
    r_img = t["rates"]["builtin"]["images"] / t["rates"]["builtin-conse"]["images"]
    r_txt = t["rates"]["builtin"]["texts"] / t["rates"]["builtin-conse"]["texts"]
    lines += ["", f"Bridge / ConSE in the same run: images {r_img:.2f}×, texts {r_txt:.2f}×. The bridge adds one "
              "1664×384 matrix product per image to Lite0's forward pass; texts are encoded identically.", "",
              "## How the bridge was trained", "",
              "`scripts/build_bridge.py` (`make bridge`; its docstring has the caption rules): Debian "
              "`openclipart-png` + `openclipart-svg` (public domain), captions from the SVG titles, keywords and "
              "descriptions after dropping collection names, file-name titles and repeated theme names, plus a "
              "colour variant (\"a red apple\") where the drawing's dominant colour is clear; the demo corpus's "
              "drawings are excluded by the sha256 of their source files. "
              + ("Icon sets from the npm registry (`--icons`, `scripts/icon_pairs.py`: pinned Iconify packages, MIT, "
                 "ISC, Apache-2.0 or CC-BY, rendered with resvg), captioned from icon names that read as "
                 "descriptions, with style captions (\"a silhouette of an owl\", \"a line drawing of a dog\") and, "
                 "for monochrome filled icons drawn in a colour, \"a red owl\". "
                 if res["bridge"].get("icon_sets") else "") +
              "Three views per drawing (whole, cropped "
              "to the ink, mirrored crop)"
              + (", each letterboxed on white and resized to 224 rather than centre-cropped (the encoder feeds Lite0 "
                 "the same way; the ConSE reference row above shows what that input alone gives)"
                 if res["bridge"].get("preprocess") == "pad" else "") +
              ", symmetric InfoNCE, three seeds averaged into one linear head; the "
              "settings were chosen on held-out kinds of drawing (the animals, food and plants folders left out of "
              "training: `--val-dirs animals,food,plants`), not on the sets above.", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


def main() -> None:
    import hashlib
    import sys

    from unimir.encoders.bridge import WEIGHTS_PATH, read_metadata

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=REPO / "build" / "bench-emoji")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "default-encoder.md")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the quality part")
    p.add_argument("--throughput-threads", type=int, default=2)
    p.add_argument("--throughput-images", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--candidates", type=Path, nargs="*", help="only compare these bridge files on the sets")
    p.add_argument("--shared-features", action="store_true",
                   help="quality part: run Lite0 once per image (cached under --work) and apply both encoders' image "
                        "heads to it, instead of encoding every file end to end twice (slow on a loaded machine)")
    p.add_argument("--from-json", type=Path, help="rewrite the report from a saved run's results (no measuring)")
    args = p.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        for per_set in saved["results"]["quality"].values():  # JSON made the K keys strings
            for r in per_set.values():
                r["t2i"], r["i2t"] = ({int(k): v for k, v in r[d].items()} for d in ("t2i", "i2t"))
        write_report(args.out, saved["results"], saved["machine"], saved["command"])
        return
    torch.set_num_threads(args.threads)
    demo = demo_sets()
    emoji_paths, emoji_names, emoji_packages = emoji_set(args.work)
    emoji = {"image_paths": emoji_paths, "texts": emoji_names, "t2i_queries": emoji_names,
             "t2i_pos": [[i] for i in range(len(emoji_names))], "i2t_queries": emoji_paths,
             "i2t_pos": [[i] for i in range(len(emoji_paths))]}
    sets = {"demo test": demo, "emoji": emoji}
    if args.candidates is not None:
        compare_candidates(args.candidates, sets, args.work)
        return
    encoders = {"builtin-conse": load_encoder("builtin-conse"), "builtin": load_encoder("builtin")}
    # a reference for the quality tables only: ConSE given the bridge's letterboxed input, so that the report
    # separates what the input transform gives from what the trained head gives
    from unimir.encoders.builtin import ConseEncoder

    reference = {"conse-padded": ConseEncoder(image_preprocess="pad")}
    if args.shared_features:  # one Lite0 pass per image, both heads on it (the same computation, done once)
        _share_image_features({**encoders, **reference},
                              [g for s in sets.values() for g in (s["image_paths"], s["i2t_queries"])], args.work)
    res = {"quality": {name: quality(enc, sets) for name, enc in {**encoders, **reference}.items()},
           "apple": {name: red_apple(enc, demo) for name, enc in encoders.items()},
           "shared_features": args.shared_features,
           "emoji_packages": emoji_packages, "repeats": args.repeats}
    texts = demo["texts"] + demo["t2i_queries"] + emoji_names
    images = demo["image_paths"][:args.throughput_images]
    res["n_images"], res["n_texts"], res["throughput_threads"] = len(images), len(texts), args.throughput_threads
    torch.set_num_threads(args.throughput_threads)
    res["throughput"] = throughput(encoders, images, texts, args.repeats)
    meta = read_metadata(WEIGHTS_PATH)
    res["bridge"] = {"file": str(WEIGHTS_PATH.relative_to(REPO)), "bytes": WEIGHTS_PATH.stat().st_size,
                     "sha256": hashlib.sha256(WEIGHTS_PATH.read_bytes()).hexdigest(),
                     "pairs": meta.get("pairs", {}).get("pairs", "?"),
                     "icon_sets": [src for src in meta.get("sources", []) if "icons" in src],
                     "preprocess": meta.get("preprocess", "crop")}
    command = ("python -m benchmarks.default_encoder " + " ".join(sys.argv[1:])).strip()
    machine = describe()
    (args.work / "default-encoder.json").write_text(json.dumps({"results": res, "machine": machine,
                                                                 "command": command}, indent=1, default=str))
    write_report(args.out, res, machine, command)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
