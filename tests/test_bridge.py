"""The builtin encoder's trained image bridge: forward, shipped weights, registry, caption cleaning, training."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import draw

from unimir.encoders import bridge as bridge_mod
from unimir.encoders import load_encoder

REPO = Path(__file__).resolve().parent.parent


def _build_script():
    if "build_bridge" not in sys.modules:  # a script, not a package module: load it by path (once)
        spec = importlib.util.spec_from_file_location("build_bridge", REPO / "scripts" / "build_bridge.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["build_bridge"] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
    return sys.modules["build_bridge"]


def _random_weights(seed: int = 0, alpha: float = 2.0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"feature_mean": torch.randn(1280, generator=g), "feature_std": torch.rand(1280, generator=g) + 0.5,
            "weight": torch.randn(384, 1664, generator=g) * 0.01, "bias": torch.randn(384, generator=g) * 0.01,
            "alpha": torch.tensor([alpha])}


def test_bridge_forward_matches_plain_computation():
    w = _random_weights()
    g = torch.Generator().manual_seed(1)
    pooled = torch.rand(3, 1280, generator=g) * 4
    conse = torch.nn.functional.normalize(torch.randn(3, 384, generator=g), dim=-1)
    got = bridge_mod.bridge_forward(w, pooled, conse).numpy()
    W, b = w["weight"].double().numpy(), w["bias"].double().numpy()
    for i in range(3):  # one image at a time, in float64, written out
        z = [(float(pooled[i, j]) - float(w["feature_mean"][j])) / float(w["feature_std"][j]) for j in range(1280)]
        x = np.array(z + conse[i].double().tolist())
        v = conse[i].double().numpy() + 2.0 * (W @ x + b)
        np.testing.assert_allclose(got[i], v / math.sqrt(float(v @ v)), atol=1e-5)


def test_weight_file_round_trip_and_shape_checks(tmp_path):
    w = _random_weights()
    path = tmp_path / "b.safetensors"
    bridge_mod.save_weights(w, path, metadata={"pairs": {"pairs": 3}})
    back = bridge_mod.load_weights(path)
    assert all(torch.equal(back[k], w[k].float()) for k in bridge_mod.KEYS)
    assert bridge_mod.read_metadata(path) == {"pairs": {"pairs": 3}}
    w["weight"] = torch.zeros(384, 1280)
    with pytest.raises(bridge_mod.BridgeWeightsError, match="'weight' has shape"):
        bridge_mod.save_weights(w, tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="make bridge"):
        bridge_mod.load_weights(tmp_path / "missing.safetensors")


# The shipped file is the one benchmarked in docs/bench/default-encoder.md; retraining changes this on purpose.
SHIPPED_SHA256 = "51a54011458c55f8e223dd80f9d29a297c475b9776b8b70a6ef8b4b39ef0f6a1"


def test_shipped_weights_load_with_expected_shapes():
    path = bridge_mod.WEIGHTS_PATH
    assert path.is_file() and path.stat().st_size < 4_000_000  # ships in the package: a few MB at most
    w = bridge_mod.load_weights()
    assert {k: tuple(v.shape) for k, v in w.items()} == bridge_mod.KEYS
    assert all(torch.isfinite(v).all() for v in w.values()) and (w["feature_std"] > 0).all()
    meta = bridge_mod.read_metadata()
    assert {s["package"] for s in meta["sources"]} == {"openclipart-png", "openclipart-svg"}
    assert all(len(s["sha256"]) == 64 and "public domain" in s["licence"] for s in meta["sources"])
    assert meta["preprocess"] == "pad"  # trained on letterboxed drawings, as the benchmark and README say
    assert bridge_mod.weights_digest() == SHIPPED_SHA256


@pytest.fixture(scope="module")
def both():
    return load_encoder("builtin"), load_encoder("builtin-conse")


def test_both_builtin_encoders_resolve_and_give_unit_vectors(both):
    bridged, conse = both
    assert (bridged.spec, conse.spec) == ("builtin", "builtin-conse")
    images = [draw("red", "circle", 96), draw("blue", "square", 80)]
    for enc in both:
        for vecs in (enc.embed_images(images), enc.embed_texts(["a red apple", "a dog"])):
            assert vecs.shape == (2, 384) and vecs.dtype == np.float32
            np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(bridged.embed_texts(["a dog"]), conse.embed_texts(["a dog"]), atol=1e-6)
    assert float(np.sum(bridged.embed_images(images) * conse.embed_images(images), axis=1).max()) < 0.999


def test_zero_head_bridge_is_plain_conse(tmp_path, both):
    from unimir.encoders.builtin import BuiltinEncoder

    w = bridge_mod.load_weights()
    w["weight"], w["bias"] = torch.zeros_like(w["weight"]), torch.zeros_like(w["bias"])
    path = tmp_path / "zero.safetensors"
    bridge_mod.save_weights(w, path)
    enc = BuiltinEncoder(precision="fp32", bridge_path=str(path))
    images = [draw("green", "triangle", 90)]
    plain = both[1].__class__(precision="fp32")
    enc._class_matrix = plain.class_matrix  # the same class prompts (the text cache may hold bf16-made ones)
    np.testing.assert_allclose(enc.embed_images(images), plain.embed_images(images), atol=1e-5)
    # different weights, different fingerprint: cached vectors of one bridge never serve another
    assert len({enc.fingerprint, both[0].fingerprint, both[1].fingerprint}) == 3


def test_padded_input_keeps_the_whole_drawing_and_the_weight_file_chooses_it(tmp_path, both):
    from PIL import Image

    from unimir.encoders.builtin import BuiltinEncoder, ConseEncoder, MissingModelError, preprocess, preprocess_padded
    from unimir.encoders.preprocess import pad_to_square

    wide = Image.new("RGB", (200, 50), (255, 255, 255))
    wide.paste((255, 0, 0), (0, 0, 8, 50))  # red at the left edge, blue at the right: what a centre crop cuts
    wide.paste((0, 0, 255), (192, 0, 200, 50))
    square = pad_to_square(wide)
    assert square.size == (200, 200) and square.getpixel((0, 100)) == (255, 0, 0)
    assert square.getpixel((199, 100)) == (0, 0, 255) and square.getpixel((100, 10)) == (255, 255, 255)
    assert pad_to_square(square) is square
    red = torch.tensor([255.0, 0.0, 0.0]).sub(127).div(128)
    assert torch.allclose(preprocess_padded(wide)[:, 112, 0], red, atol=0.05)
    assert not torch.allclose(preprocess(wide)[:, 112, 0], red, atol=0.3)  # the crop lost the red edge
    # the weight file says which input its head was trained on; a file that does not say is the original crop
    w = bridge_mod.load_weights()
    for meta, mode in (({"preprocess": "pad"}, "pad"), ({}, "crop")):
        bridge_mod.save_weights(w, tmp_path / "b.safetensors", metadata=meta)
        assert BuiltinEncoder(bridge_path=str(tmp_path / "b.safetensors")).image_preprocess == mode
    bridge_mod.save_weights(w, tmp_path / "b.safetensors", metadata={"preprocess": "stretch"})
    with pytest.raises(MissingModelError, match="unknown image preprocessing 'stretch'"):
        BuiltinEncoder(bridge_path=str(tmp_path / "b.safetensors"))
    assert both[1].image_preprocess == "crop"  # ConSE keeps Lite0's ImageNet transform
    assert ConseEncoder(image_preprocess="pad").fingerprint != both[1].fingerprint
    with pytest.raises(ValueError, match="image_preprocess"):
        ConseEncoder(image_preprocess="stretch")


SVG = """<svg xmlns="http://www.w3.org/2000/svg"><metadata>
<rdf:RDF xmlns:cc="http://web.resource.org/cc/" xmlns:dc="http://purl.org/dc/elements/1.1/"
 xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><cc:Work rdf:about="">
<dc:title>{title}</dc:title><dc:description>{desc}</dc:description>
<dc:subject><rdf:Bag>{subjects}</rdf:Bag></dc:subject></cc:Work></rdf:RDF></metadata></svg>"""


def _meta(bb, title, desc="", subjects=()):
    return bb.read_metadata(SVG.format(title=title, desc=desc, subjects="".join(f"<rdf:li>{s}</rdf:li>"
                                                                                 for s in subjects)))


def test_caption_cleaning_on_made_up_metadata():
    bb = _build_script()
    meta = _meta(bb, "Red Apple", "A shiny red apple with a leaf", ["fruit", "clip art", "food", "hash", ""])
    assert (meta.title, meta.keywords[:2]) == ("Red Apple", ["fruit", "clip art"])
    plain = "misc/apple_jd_01.png"  # a file name that is not plain words: never a caption
    assert bb.captions_for(meta, plain, {}) == ["red apple", "red apple, fruit, food", "A shiny red apple with a leaf"]
    # collection names, file-name titles and HASH descriptions go; keywords alone can still caption a drawing
    flat = _meta(bb, "Part of the Flat Icon Collection (Wed Aug 25 23:29:46 2004)", "HASH(0x862bbb8)",
                 ["hash", "action", "computer", "icons", "theme"])
    assert bb.captions_for(flat, plain, {}) == []
    assert bb.captions_for(_meta(bb, "tigre02_architetto_franc", "", ["jigsaw", "shape"]), plain, {}) == \
        ["jigsaw, shape"]
    assert bb.captions_for(_meta(bb, "Gramastar"), plain, {}) == []
    assert bb.captions_for(_meta(bb, "Owl"), plain, {"owl": 12}) == []  # a title shared by 10+ drawings: a set
    # a collection title on a file named after what it shows: the file name, with the keywords
    assert bb.captions_for(_meta(bb, "Etiquette Icons", "", ["insect", "animal"]), "bugs/ant.png",
                           {"etiquette icons": 235}) == \
        ["ant, insect, animal"]
    assert bb.captions_for(_meta(bb, "Lemon SVG theme", "", ["icon"]), "apps/kview.png", {}) == []
    # the creator's name is not a caption word; HTML entities are decoded
    svg = SVG.replace("</cc:Work>", "<dc:creator><cc:Agent><dc:title>Architetto Francesco Rollandin</dc:title>"
                                    "</cc:Agent></dc:creator></cc:Work>")
    meta = bb.read_metadata(svg.format(title="Gattina Cat Architetto", desc="", subjects="<rdf:li>mammal</rdf:li>"
                                       "<rdf:li>Francesco Rollandin</rdf:li>"))
    assert bb.captions_for(meta, plain, {}) == ["gattina cat", "gattina cat, mammal"]
    assert bb.read_metadata(SVG.format(title="Baden-W&amp;uuml;rttemberg", desc="", subjects="")).title == \
        "Baden-Württemberg"


def test_tiny_training_run_is_deterministic_and_learns():
    bb = _build_script()
    rng = np.random.default_rng(0)
    n, v = 48, 2
    text = rng.normal(size=(n, 384)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    mix = rng.normal(size=(384, 1280)).astype(np.float32)
    pooled = (text @ mix)[:, None, :] + 0.1 * rng.normal(size=(n, v, 1280)).astype(np.float32)
    conse = rng.normal(size=(n, v, 384)).astype(np.float32)  # uninformative ConSE: the head must do the work
    conse /= np.linalg.norm(conse, axis=-1, keepdims=True)
    cfg = bb.TrainConfig(epochs=15, batch_size=16, seeds=(0, 1), lr=5e-3)
    groups = np.arange(n)
    torch.set_num_threads(1)
    a = bb.train_bridge(pooled, conse, text, [[i] for i in range(n)], groups, cfg)
    b = bb.train_bridge(pooled, conse, text, [[i] for i in range(n)], groups, cfg)
    assert all(torch.equal(a[k], b[k]) for k in bridge_mod.KEYS)
    img = bridge_mod.bridge_forward(a, torch.from_numpy(pooled[:, 0]), torch.from_numpy(conse[:, 0])).numpy()
    top1 = (img @ text.T).argmax(1)
    assert (top1 == np.arange(n)).mean() > 0.9  # chance is 1/48


def _icon_module():
    _build_script()
    if "icon_pairs" not in sys.modules:
        spec = importlib.util.spec_from_file_location("icon_pairs", REPO / "scripts" / "icon_pairs.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["icon_pairs"] = module
        spec.loader.exec_module(module)
    return sys.modules["icon_pairs"]


def test_icon_names_become_captions_only_when_they_describe_the_drawing():
    ip = _icon_module()
    vocab = {"barn", "owl", "bell", "dog", "house", "sun", "kview", "big", "red", "fox"}
    vocab.discard("kview")
    assert ip.caption_words("barn-owl", vocab) == "barn owl"
    assert ip.caption_words("dog-house-2", vocab) == "dog house"  # a trailing variant number goes
    assert ip.caption_words("sun-flat", vocab) == "sun"
    for name in ("bell-off", "owl-outline", "kview", "2-dogs", "big-red-fox-house", "dog-emoji", "", "-"):
        assert ip.caption_words(name, vocab) is None, name
    assert ip.captions_for("owl", "silhouette", "orange") == ["owl", "a silhouette of an owl", "an orange owl"]
    assert ip.captions_for("dog", "line", "black") == ["dog", "a line drawing of a dog"]
    assert ip.captions_for("apple", "colour", "black") == ["apple", "an icon of an apple"]


def _npm_tarball(path, icons, licence="MIT"):
    import io
    import json
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, obj in (("package/package.json", {"name": "x", "license": licence}),
                          ("package/icons.json", {"prefix": "t", "width": 24, "height": 24, "icons": icons})):
            data = json.dumps(obj).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_icon_sets_are_checked_rendered_and_captioned(tmp_path, monkeypatch):
    import hashlib

    from PIL import Image

    ip = _icon_module()
    square = '<rect x="4" y="4" width="16" height="16" fill="currentColor"/>'
    icons = {"owl": {"body": square}, "owl-outline": {"body": square}, "owl-2": {"body": square},
             "bell-off": {"body": square}, "dog": {"body": '<circle cx="12" cy="12" r="8" fill="#00aa00"/>'}}
    tgz = tmp_path / "npm" / "t-1.0.0.tgz"
    tgz.parent.mkdir()
    _npm_tarball(tgz, icons)
    digest = hashlib.sha256(tgz.read_bytes()).hexdigest()
    good = ip.IconSet("t", "1.0.0", digest, "MIT", "silhouette", "Someone")
    monkeypatch.setattr(ip, "ICON_SETS", (good,))
    items, records, counts = ip.icon_pairs(tmp_path, {"owl", "dog", "bell"})
    assert [rel for rel, _ in items] == ["icons/t/dog.png", "icons/t/owl.png"]  # owl-2 repeats owl's caption
    assert items[1][1][:2] == ["owl", "a silhouette of an owl"]
    assert records == [{"package": "@iconify-json/t", "version": "1.0.0", "sha256": digest, "licence": "MIT",
                        "author": "Someone", "icons": 2}] and counts == {"t": 2}
    with Image.open(tmp_path / "icons/t/owl.png") as im:
        assert im.size == (ip.CANVAS, ip.CANVAS)
        colour = ip.PALETTE[int(hashlib.sha256(b"t/owl").hexdigest(), 16) % len(ip.PALETTE)][1]
        centre, corner = im.convert("RGB").getpixel((96, 96)), im.convert("RGB").getpixel((2, 2))
    assert corner == (255, 255, 255)
    assert centre == tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))  # currentColor drawn in the caption's colour
    assert items[1][1][2].endswith(" owl") and ip.PALETTE[[c for _, c in ip.PALETTE].index(colour)][0] in \
        items[1][1][2]
    with pytest.raises(ip.IconSourceError, match="sha256"):
        ip.fetch_icon_set(ip.IconSet("t", "1.0.0", "0" * 64, "MIT", "line", "x"), tmp_path)
    _npm_tarball(tgz, icons, licence="GPL-3.0")
    relicensed = ip.IconSet("t", "1.0.0", hashlib.sha256(tgz.read_bytes()).hexdigest(), "MIT", "line", "x")
    with pytest.raises(ip.IconSourceError, match="licence"):
        ip.fetch_icon_set(relicensed, tmp_path)
