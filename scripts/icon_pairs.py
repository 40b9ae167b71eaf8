"""Captioned icon drawings for the bridge (scripts/build_bridge.py): permissively licensed icon sets from npm.

Each set is an Iconify JSON package (``@iconify-json/<set>``: the set's SVG bodies and names in one file), pinned by
version and by the sha256 of its npm tarball, downloaded from the npm registry once into ``--work/npm`` and read
without unpacking anything else. Licences (checked against the package's own ``license`` field): MIT, ISC,
Apache-2.0, CC-BY-3.0/4.0; the CC-BY authors are credited in ``ATTRIBUTION`` and in the weight file's metadata.
No emoji set is used (emoji images are reserved for evaluation), and icons whose name says "emoji" are skipped.

Captions come from the icon's name, the only text a set has: ``barn-owl`` -> "barn owl". Names are kept only when
they read as a description: at most three words, every word a whole word of MiniLM's vocabulary, no digits (after
dropping a trailing number or "flat", the sets' variant suffixes), and no word that marks a UI variant of another
icon ("outline", "off", "plus", "check", "arrow", ...: ``bell-off`` is a bell, but its picture is not "bell off").
Within a set a caption is used once (the first name in sorted order), so weight and size variants add nothing.
Each drawing also gets style captions: "a silhouette of an owl" for the filled game-icons, "a line drawing of a
dog" for the stroke sets, "an icon of ..." for the others. Monochrome filled icons are drawn in one of ten colours
(chosen by a hash of the name, so deterministic) and also captioned "a red owl"; stroke icons are drawn black.

Rendering: resvg (the ``resvg-py`` wheel, in the ``data`` extra and the lock) at 160 px on a white 192 px canvas,
the size the demo corpus's drawings have; PNGs are cached under ``--work/icons``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REGISTRY = "https://registry.npmjs.org"
CANVAS, DRAWN = 192, 160


@dataclass(frozen=True)
class IconSet:
    name: str  # the Iconify prefix: npm package @iconify-json/<name>
    version: str
    sha256: str  # of the npm tarball
    licence: str  # SPDX, as the package states it
    style: str  # silhouette | line | icon (monochrome filled) | colour
    author: str


ICON_SETS = (
    IconSet("game-icons", "1.2.4", "f5758efb34d91c4f50b941f355f16ee73938625e5996fabc25171288404460a4", "CC-BY-3.0",
            "silhouette", "GameIcons (game-icons.net: Lorc, Delapouite and contributors)"),
    IconSet("mdi", "1.2.3", "ddd817a7213f91de51147943915c0cda8c8b818a53c92b5c068cfa9883c6d7ac", "Apache-2.0", "icon",
            "Pictogrammers (Material Design Icons)"),
    IconSet("tabler", "1.2.41", "3bf99af156d28d05568aff524a35ed1ba238df640a7835a5e02e1f8e439685f6", "MIT", "line",
            "Paweł Kuna (Tabler Icons)"),
    IconSet("ph", "1.2.2", "e3a582a047d9829fc7e8842c660d8065e598d1b68bb58cb68e75a1f1e5a614cc", "MIT", "line",
            "Phosphor Icons"),
    IconSet("flat-color-icons", "1.2.3", "d8878a9b0f02d749bc8671eb7d47882eb711185cbcefbb365cbfb488773c4786", "MIT",
            "colour", "Icons8 (Flat Color Icons)"),
    IconSet("fluent-color", "1.2.21", "fa2ddaaac7a2a7b902659cea1b5b8c03017ce2ae56295138876b86a36177dfbe", "MIT",
            "colour", "Microsoft Corporation (Fluent UI System Color Icons)"),
    IconSet("icon-park", "1.2.4", "c1a25212a31602aca93c3fa6f6b3288e89b9d7811afc132dfd78506e9d586b6f", "Apache-2.0",
            "line", "ByteDance (IconPark)"),
    IconSet("healthicons", "1.2.13", "4c2552c45737788a6599da3c5b72610c7fb4e7f87075d401c56fa16d487d4caf", "MIT", "icon",
            "Resolve to Save Lives (Health Icons)"),
    IconSet("streamline-color", "1.2.2", "06c2addb59f572b2bfe581863888fcf7dbe0927e0511e7157c54f332fe90347f",
            "CC-BY-4.0", "colour", "Streamline (streamlinehq.com)"),
    IconSet("streamline-flex-color", "1.2.2", "17ef2e9d596bb288991c271a2b468be822f994cb073c94801a1c186a0e4af827",
            "CC-BY-4.0", "colour", "Streamline (streamlinehq.com)"),
    IconSet("streamline-plump-color", "1.2.2", "33ed8a9ebda9ed896125f1e01873105688d68d0b0c95ca1bcead5a41309afcf6",
            "CC-BY-4.0", "colour", "Streamline (streamlinehq.com)"),
    IconSet("streamline-ultimate-color", "1.2.2", "46133a11f3734bcef29066391d7edc141ed1d8056242ddfa1b5d36ce286420b6",
            "CC-BY-4.0", "colour", "Streamline (streamlinehq.com)"),
    IconSet("lucide", "1.2.137", "e74db8c3a55fff55bc82de21268c4bced9f65ff10aacc0d5f3a395b0e93243c3", "ISC", "line",
            "Lucide Contributors"),
    IconSet("fa6-solid", "1.2.4", "082c792eaad4751626438773fa7360cb23f495b687cf2dd01b2b0fccc7f6af8b", "CC-BY-4.0",
            "icon", "Fonticons, Inc. (Font Awesome 6 Free, by Dave Gandy)"),
)
PERMISSIVE = {"MIT", "ISC", "Apache-2.0", "CC0-1.0", "CC-BY-3.0", "CC-BY-4.0"}
ATTRIBUTION = "; ".join(f"{s.name}: {s.author}, {s.licence}" for s in ICON_SETS if s.licence.startswith("CC-BY"))

# words that mark a UI variant of another icon: the picture is not what the name says
VARIANT_WORDS = {"outline", "outlined", "off", "plus", "minus", "check", "remove", "alert", "variant", "multiple",
                 "lock", "edit", "cancel", "sync", "bold", "fill", "filled", "duotone", "light", "thin", "regular",
                 "negative", "box", "circle", "square", "settings", "star", "network", "marker", "question", "arrow",
                 "up", "down", "left", "right", "open", "closed", "add", "delete", "search", "on", "alt", "small",
                 "large", "one", "two", "three", "sharp", "rounded"}
PALETTE = (("red", "#d62728"), ("green", "#2ca02c"), ("blue", "#1f4fd6"), ("yellow", "#e8c31a"),
           ("orange", "#f07f10"), ("purple", "#8a3fbf"), ("brown", "#8b5a2b"), ("pink", "#f06fb0"),
           ("black", "#111111"), ("gray", "#808080"))
FLUENT_SIZE = re.compile(r"(.*)-(16|20|24|28|32|48)$")  # fluent-color draws each icon at several sizes


class IconSourceError(RuntimeError):
    pass


def fetch_icon_set(icon_set: IconSet, work: Path) -> dict:
    """The set's Iconify JSON (downloaded once, checked against the pinned sha256 and licence)."""
    tgz = work / "npm" / f"{icon_set.name}-{icon_set.version}.tgz"
    if not tgz.is_file():
        url = f"{REGISTRY}/@iconify-json/{icon_set.name}/-/{icon_set.name}-{icon_set.version}.tgz"
        try:
            data = urllib.request.urlopen(url, timeout=120).read()
        except OSError as exc:
            raise IconSourceError(f"download of {url} failed ({exc}); put the tarball at {tgz}") from exc
        tgz.parent.mkdir(parents=True, exist_ok=True)
        tmp = tgz.with_name(tgz.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(tgz)
    digest = hashlib.sha256(tgz.read_bytes()).hexdigest()
    if digest != icon_set.sha256:
        raise IconSourceError(f"{tgz}: sha256 {digest} is not the pinned {icon_set.sha256}")
    with tarfile.open(tgz) as tar:  # read two members; nothing is extracted to disk
        package = json.load(tar.extractfile("package/package.json"))
        icons = json.load(tar.extractfile("package/icons.json"))
    if package.get("license") != icon_set.licence or icon_set.licence not in PERMISSIVE:
        raise IconSourceError(f"{tgz}: licence {package.get('license')!r}, expected {icon_set.licence!r}")
    return icons


def caption_words(name: str, vocab: set[str]) -> str | None:
    """"barn-owl" -> "barn owl"; None for names that do not read as a description (see the module docstring)."""
    words = [w for w in name.split("-") if w]
    while words and (words[-1].isdigit() or words[-1] == "flat"):
        words.pop()
    if not words or len(words) > 3 or "emoji" in words:
        return None
    if any(re.search(r"\d", w) or w in VARIANT_WORDS or w not in vocab for w in words):
        return None
    return " ".join(words)


def captions_for(caption: str, style: str, colour: str) -> list[str]:
    def a(phrase: str) -> str:
        return f"{'an' if phrase[:1] in 'aeiou' else 'a'} {phrase}"

    if style == "silhouette":
        return [caption, f"a silhouette of {a(caption)}", a(f"{colour} {caption}")]
    if style == "line":
        return [caption, f"a line drawing of {a(caption)}"]
    if style == "icon":
        return [caption, a(f"{colour} {caption}"), f"an icon of {a(caption)}"]
    return [caption, f"an icon of {a(caption)}"]


def render(icon: dict, default_size: tuple[int, int], fill: str) -> bytes:
    """One icon as PNG bytes: drawn at DRAWN px, centred on a white CANVAS px square."""
    import resvg_py
    from PIL import Image

    w, h = icon.get("width", default_size[0]), icon.get("height", default_size[1])
    body = icon["body"].replace("currentColor", fill)
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
           f'viewBox="{icon.get("left", 0)} {icon.get("top", 0)} {w} {h}" width="{DRAWN}" height="{DRAWN}">'
           f'{body}</svg>')
    png = bytes(resvg_py.svg_to_bytes(svg_string=svg, background="#ffffff", width=DRAWN, height=DRAWN))
    canvas = Image.new("RGB", (CANVAS, CANVAS), "white")
    with Image.open(io.BytesIO(png)) as drawn:
        canvas.paste(drawn.convert("RGB"), ((CANVAS - DRAWN) // 2, (CANVAS - DRAWN) // 2))
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def icon_pairs(work: Path, vocab: set[str]) -> tuple[list[tuple[str, list[str]]], list[dict], dict]:
    """Render every usable icon (cached under work/icons); return ([(path relative to work, captions)], source
    records, per-set counts)."""
    items, records, counts = [], [], {}
    for icon_set in ICON_SETS:
        data = fetch_icon_set(icon_set, work)
        size = (data.get("width", 16), data.get("height", 16))
        used: set[str] = set()
        for name in sorted(data["icons"]):
            base = name
            if icon_set.name == "fluent-color":
                m = FLUENT_SIZE.match(name)
                if not m or m.group(2) != "24":
                    continue
                base = m.group(1)
            caption = caption_words(base, vocab)
            if caption is None or caption in used:
                continue
            used.add(caption)
            colour, fill = "black", "#111111"
            if icon_set.style in ("silhouette", "icon"):
                colour, fill = PALETTE[int(hashlib.sha256(f"{icon_set.name}/{name}".encode()).hexdigest(), 16)
                                       % len(PALETTE)]
            rel = f"icons/{icon_set.name}/{name}.png"
            path = work / rel
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    png = render(data["icons"][name], size, fill)
                except Exception as exc:  # noqa: BLE001 - resvg raises plain exceptions on SVG it cannot draw
                    print(f"skipped {icon_set.name}/{name}: resvg cannot draw it ({exc})")
                    counts["not renderable"] = counts.get("not renderable", 0) + 1
                    continue
                tmp = path.with_name(path.name + ".part")
                tmp.write_bytes(png)
                tmp.replace(path)
            items.append((rel, captions_for(caption, icon_set.style, colour)))
        counts[icon_set.name] = len(used)
        records.append({"package": f"@iconify-json/{icon_set.name}", "version": icon_set.version,
                        "sha256": icon_set.sha256, "licence": icon_set.licence, "author": icon_set.author,
                        "icons": len(used)})
    return items, records, counts
