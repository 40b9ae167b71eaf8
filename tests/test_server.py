"""The HTTP API of ``unimir serve``, driven with a test client (and once with a live uvicorn) on a tiny index."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from unimir.index import Index  # noqa: E402
from unimir.serve import backend as backend_module  # noqa: E402
from unimir.serve import create_app, serve  # noqa: E402
from unimir.serve.testing import ServerThread, draw, png_bytes, sample_pool  # noqa: E402

SECRET = "TOP-SECRET-CONTENT-4711"


# --- fixtures ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoder():
    from unimir.encoders import load_encoder

    return load_encoder("builtin")


@pytest.fixture(scope="module")
def built(tmp_path_factory, encoder):
    """(data root, index dir) of a 30-item index: images, image+text captions and texts."""
    root = tmp_path_factory.mktemp("serve-data")
    candidates = sample_pool(root, colours=["red", "green", "blue", "orange"])
    (root / "secret.txt").write_text(SECRET)                           # next to the data, never registered
    draw("purple", "circle").save(root / "shapes" / "unregistered.png")  # an image file the index does not hold
    out = tmp_path_factory.mktemp("serve-index") / "idx"
    Index.build(candidates, out, root=root, encoder=encoder)
    return root, out


@pytest.fixture(scope="module")
def client(built, encoder):
    """A read-only app shared by the tests that do not add items."""
    _, out = built
    with TestClient(create_app(Index.load(out, encoder=encoder))) as c:
        yield c


@pytest.fixture
def fresh(built, encoder, tmp_path):
    """A private copy of the index (for tests that add items): (index dir, app, client)."""
    _, out = built
    copy = tmp_path / "idx"
    shutil.copytree(out, copy)
    app = create_app(Index.load(copy, encoder=encoder), max_upload_bytes=64 * 1024)
    with TestClient(app) as c:
        yield copy, app, c


def _png(colour="red", shape="circle", size=96) -> bytes:
    return png_bytes(draw(colour, shape, size))


def _noise_png(side: int) -> bytes:
    rng = np.random.default_rng(side)
    return png_bytes(Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)))


def _error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["status"] == status
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body["error"]["message"]


# --- status, page, docs ----------------------------------------------------------------------------------------

def test_health_and_info(client):
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["items"] == 30
    info = client.get("/info").json()
    assert info["items"] == 30 and info["modes"] == ["dense"] and info["encoder"] == "builtin"
    assert info["modality_counts"] == {"image": 12, "text": 6, "image,text": 12}
    assert {p["label"] for p in info["presets"]} >= {"text → image", "image → text", "image → image",
                                                     "image+text → image"}
    assert r.headers["x-content-type-options"] == "nosniff"
    for path in ("/health", "/"):  # load balancers and uptime checks probe with HEAD
        head = client.head(path)
        assert head.status_code == 200 and head.content == b"", path


def test_page_and_static_assets(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert 'id="search-form"' in r.text and "/static/app.js" in r.text
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css"), ("favicon.svg", "svg")):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"] and asset.content
    _error(client.get("/static/nope.js"), 404)
    _error(client.get("/no/such/route"), 404)


def test_openapi_docs(client):
    spec = client.get("/openapi.json").json()
    for path in ("/search", "/items", "/items/{id}", "/items/{id}/image", "/health"):
        assert path in spec["paths"], path
    body = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert "application/json" in body and "multipart/form-data" in body
    assert client.get("/docs").status_code == 200


def test_docs_work_offline(client):
    """/docs and /redoc reference only assets this server serves (from fastapi-offline's package), no CDN."""
    import re

    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200, page
        refs = re.findall(r'(?:src|href)="([^"]+)"|(?:url|href): *[\'"]([^\'"]+)[\'"]', html.text)
        urls = [a or b for a, b in refs]
        assert urls and not [u for u in urls if "://" in u or u.startswith("//")], urls
        for url in urls:
            asset = client.get(url)
            assert asset.status_code == 200 and asset.content, url
    bundle = client.get("/docs-assets/swagger-ui-bundle.js")
    assert "javascript" in bundle.headers["content-type"] and len(bundle.content) > 100_000


def test_lone_surrogate_and_deep_json_are_400(client):
    raw = b'{"text": "bad \\ud800 text"}'  # valid JSON, but not valid Unicode
    message = _error(client.post("/search", content=raw, headers={"content-type": "application/json"}), 400)
    assert "'text' is not valid Unicode" in message
    deep = b'{"text": "x", "modality": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert "nested too deeply" in _error(client.post("/search", content=deep,
                                                     headers={"content-type": "application/json"}), 400)
    moderate = b'{"text": "x", "extra": ' + b"[" * 500 + b"]" * 500 + b"}"  # parses: refused as an unknown field
    _error(client.post("/search", content=moderate, headers={"content-type": "application/json"}), 400)
    raw = b'{"text": "ok", "\\udc80": 1}'
    _error(client.post("/items", content=raw, headers={"content-type": "application/json"}), 400)


# --- search ----------------------------------------------------------------------------------------------------

def test_search_text_json(client):
    r = client.post("/search", json={"text": "a red circle", "k": 5})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["count"] == len(data["results"]) == 5
    assert [h["rank"] for h in data["results"]] == [1, 2, 3, 4, 5]
    scores = [h["score"] for h in data["results"]]
    assert scores == sorted(scores, reverse=True)
    top = data["results"][0]
    assert top["id"] == "cap:red_circle" and top["modality"] == "image,text" and top["text"] == "A red circle."
    assert top["image_url"] == "/items/cap%3Ared_circle/image"
    assert set(data["timings_ms"]) >= {"encode", "search", "total"}
    assert data["timings_ms"]["total"] >= data["timings_ms"]["encode"]
    assert data["query"]["query_text"] == "A red circle." and data["query"]["mode"] == "dense"
    for hit in data["results"]:
        assert set(hit) == {"rank", "id", "modality", "text", "score", "tie_group", "image_url"}
        assert (hit["image_url"] is None) == (hit["modality"] == "text")


def test_search_image_upload_multipart(client):
    r = client.post("/search", data={"k": "3", "modality": "image"},
                    files={"image": ("q.png", _png("blue", "square"), "image/png")})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert hits[0]["id"] == "shapes/blue_square.png" and hits[0]["score"] > 0.999
    assert all(h["modality"] == "image" for h in hits)
    assert hits[0]["image_url"] == "/items/shapes%2Fblue_square.png/image"


def test_search_image_base64_and_data_url(client):
    raw = _png("green", "triangle")
    for value in (base64.b64encode(raw).decode(), "data:image/png;base64," + base64.b64encode(raw).decode()):
        r = client.post("/search", json={"image": value, "modality": "image", "k": 1})
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["id"] == "shapes/green_triangle.png"


def test_search_image_plus_text_instruction_and_filters(client):
    r = client.post("/search", data={"text": "orange", "instruction": "Find an image of the shape.",
                                     "modality": "image,text", "k": "4"},
                    files={"image": ("q.png", _png("orange", "circle"), "image/png")})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["query"]["query_text"].startswith("Find an image of the shape.")
    assert all(h["modality"] == "image,text" for h in data["results"])
    for modality, allowed in (("text", {"text"}), (["image", "text"], {"image", "text"}),
                              ("image|text", {"image", "text"}), ("any", {"image", "text", "image,text"})):
        hits = client.post("/search", json={"text": "soup", "modality": modality, "k": 30}).json()["results"]
        assert hits and {h["modality"] for h in hits} <= allowed
    assert len(client.post("/search", json={"text": "soup", "k": 30}).json()["results"]) == 30


def test_search_with_an_indexed_image(client):
    did = "shapes/red_square.png"
    with_self = client.post("/search", json={"image_id": did, "modality": "image", "k": 3}).json()
    assert with_self["results"][0]["id"] == did
    without = client.post("/search", json={"image_id": did, "modality": "image", "k": 3, "exclude_query": True})
    assert did not in [h["id"] for h in without.json()["results"]]
    _error(client.post("/search", json={"image_id": "txt:0"}), 404)  # a text item has no image
    _error(client.post("/search", json={"image_id": "nope"}), 404)


BAD_SEARCHES = [
    ({"text": ""}, "empty query"),
    ({"text": "   "}, "empty query"),
    ({"instruction": "Find an image."}, "empty query"),
    ({"text": "x", "k": 0}, "k must be"),
    ({"text": "x", "k": 1001}, "k must be"),
    ({"text": "x", "k": "ten"}, "k must be"),
    ({"text": "x", "k": True}, "k must be"),
    ({"text": "x", "k": 2.5}, "k must be"),
    ({"text": "x", "mode": "telepathy"}, "unknown mode"),
    ({"text": "x", "mode": "generative"}, "needs a trained generative model"),
    ({"text": "x", "modality": "video"}, "unknown modality"),
    ({"text": "x", "modality": 7}, "modality must be"),
    ({"text": 42}, "text must be a string"),
    ({"image": "this is not base64!!"}, "not valid base64"),
    ({"image": base64.b64encode(b"GIF89a but not really an image").decode()}, "cannot decode"),
    ({"text": "x", "query": "typo"}, "unknown field"),
    ({"text": "x", "exclude_query": "perhaps"}, "exclude_query must be"),
    ({"text": "x" * 20_001}, "too long"),
]


@pytest.mark.parametrize("body,message", BAD_SEARCHES, ids=[m for _, m in BAD_SEARCHES])
def test_search_bad_requests_are_400(client, body, message):
    assert message in _error(client.post("/search", json=body), 400)


def test_search_malformed_bodies_are_400(client):
    _error(client.post("/search", content=b"{not json", headers={"content-type": "application/json"}), 400)
    _error(client.post("/search", content=b"", headers={"content-type": "application/json"}), 400)
    _error(client.post("/search", json=["text", "x"]), 400)
    _error(client.post("/search", content=b"text=x", headers={"content-type": "text/plain"}), 400)
    _error(client.post("/search", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}), 400)
    junk = b"\x89PNG\r\n\x1a\n garbage"
    r = client.post("/search", data={"text": "x"}, files={"image": ("q.png", junk, "image/png")})
    assert "cannot decode" in _error(r, 400)
    _error(client.post("/search", data={"text": "x"}, files={"image": ("empty.png", b"", "image/png")}), 400)
    _error(client.get("/search"), 405)


def test_no_stack_trace_on_unexpected_errors(built, encoder, monkeypatch):
    app = create_app(Index.load(built[1], encoder=encoder))

    def boom(query):
        raise RuntimeError("internal detail that must not leak")

    monkeypatch.setattr(app.state.backend, "search", boom)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/search", json={"text": "x"})
        assert r.status_code == 500 and "internal detail" not in r.text
        assert r.json()["error"]["message"].startswith("internal server error")
        assert c.get("/health").status_code == 200


# --- items ---------------------------------------------------------------------------------------------------

def test_item_record_and_image(client, built):
    root, _ = built
    r = client.get("/items/" + quote("shapes/red_circle.png", safe=""))
    assert r.status_code == 200
    assert r.json() == {"id": "shapes/red_circle.png", "modality": "image", "text": None, "src_content": None,
                        "image_url": "/items/shapes%2Fred_circle.png/image"}
    assert client.get("/items/cap%3Ared_circle").json()["text"] == "A red circle."
    assert client.get("/items/txt:0").json()["image_url"] is None
    img = client.get("/items/shapes%2Fred_circle.png/image")
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert img.content == (root / "shapes" / "red_circle.png").read_bytes()
    # hand-typed paths with raw slashes work too
    assert client.get("/items/shapes/red_circle.png").json()["id"] == "shapes/red_circle.png"
    assert client.get("/items/shapes/red_circle.png/image").content == img.content


def test_item_thumbnails(client):
    for size in (16, 40, 64):
        r = client.get(f"/items/cap%3Ablue_triangle/image?size={size}")
        assert r.status_code == 200 and r.headers["content-type"] in ("image/png", "image/jpeg")
        with Image.open(io.BytesIO(r.content)) as im:
            assert max(im.size) == size
    again = client.get("/items/cap%3Ablue_triangle/image?size=40")
    assert again.content == client.get("/items/cap%3Ablue_triangle/image?size=40").content
    backend = client.app.state.backend
    assert backend.thumbnails.hits >= 2 and len(backend.thumbnails) >= 3
    for bad in ("0", "15", "1025", "big", "-3"):
        _error(client.get(f"/items/cap%3Ablue_triangle/image?size={bad}"), 400)


def test_unknown_items_are_404(client):
    assert "no item with id 'nope'" in _error(client.get("/items/nope"), 404)
    _error(client.get("/items/nope/image"), 404)
    assert "has no image" in _error(client.get("/items/txt%3A0/image"), 404)


TRAVERSALS = [
    "/items/..%2F..%2Fsecret.txt/image",
    "/items/..%2Fsecret.txt",
    "/items/%2E%2E%2Fsecret.txt/image",
    "/items/%2E%2E/secret.txt/image",
    "/items/..%252F..%252Fsecret.txt/image",
    "/items/shapes%2F..%2Fsecret.txt/image",
    "/items/shapes%2Fred_circle.png%2F..%2F..%2Fsecret.txt/image",
    "/items/shapes/../secret.txt/image",
    "/items/..%5C..%5Csecret.txt/image",
    "/items/shapes%2Funregistered.png/image",
    "/items/shapes/unregistered.png/image",
    "/items/%00/image",
    "/items/%2Fetc%2Fpasswd/image",
    "/items//etc/passwd/image",
    "/static/..%2Fapp.py",
    "/static/%2E%2E%2F__init__.py",
    "/static/../backend.py",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_is_refused(client, built, monkeypatch, path):
    root, _ = built
    opened: list[str] = []
    real_open = open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(backend_module, "open", spy, raising=False)
    r = client.get(path)
    assert r.status_code in (400, 404), (path, r.status_code)
    assert SECRET not in r.text and "root:" not in r.text
    assert not opened  # nothing was read from disk for any of these
    # the absolute path of a real file, percent-encoded as an id, is just an unknown id
    absolute = quote(str(root / "secret.txt"), safe="")
    r = client.get(f"/items/{absolute}/image")
    assert r.status_code == 404 and SECRET not in r.text and not opened


def test_search_refuses_paths_as_image_ids(client, built):
    root, _ = built
    for did in ("../secret.txt", str(root / "secret.txt"), str(root / "shapes" / "unregistered.png")):
        r = client.post("/search", json={"image_id": did})
        assert r.status_code == 404 and SECRET not in r.text


# --- adding items ----------------------------------------------------------------------------------------------

def test_add_then_search_finds_the_new_item(fresh):
    _, _, c = fresh
    picture = _png("purple", "triangle")
    r = c.post("/items", data={"id": "user/new:1", "text": "a purple triangle"},
               files={"image": ("p.png", picture, "image/png")})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["created"] is True and body["items"] == 31
    assert body["item"] == {"id": "user/new:1", "modality": "image,text", "text": "A purple triangle.",
                            "src_content": None, "image_url": "/items/user%2Fnew%3A1/image"}
    hits = c.post("/search", data={"modality": "image,text", "k": "1"},
                  files={"image": ("q.png", picture, "image/png")}).json()["results"]
    assert hits[0]["id"] == "user/new:1"
    assert c.get("/items/user%2Fnew%3A1/image").content == picture
    assert c.get("/health").json()["items"] == 31

    text_only = c.post("/items", json={"text": "Fresh basil pesto with pine nuts."})
    assert text_only.status_code == 201 and text_only.json()["item"]["modality"] == "text"
    new_id = text_only.json()["item"]["id"]
    hits = c.post("/search", json={"text": "pesto with pine nuts", "modality": "text", "k": 1}).json()["results"]
    assert hits[0]["id"] == new_id
    image_only = c.post("/items", json={"image": base64.b64encode(_png("teal", "square")).decode()})
    assert image_only.status_code == 201 and image_only.json()["item"]["modality"] == "image"

    again = c.post("/items", json={"text": "Fresh basil pesto with pine nuts."})  # same content, no id
    assert again.status_code == 200 and again.json()["created"] is False and again.json()["item"]["id"] == new_id
    assert "already exists" in _error(c.post("/items", json={"id": "user/new:1", "text": "x"}), 409)
    assert c.get("/health").json()["items"] == 33


def test_add_bad_items_are_refused(fresh):
    _, _, c = fresh
    _error(c.post("/items", json={}), 400)
    _error(c.post("/items", json={"text": "  "}), 400)
    _error(c.post("/items", json={"id": "x", "text": "y", "colour": "red"}), 400)
    _error(c.post("/items", json={"id": "bad\nid", "text": "y"}), 400)
    _error(c.post("/items", data={"text": "y"}, files={"image": ("x.png", b"not an image", "image/png")}), 400)
    _error(c.post("/items", json={"text": "y", "image": "%%%"}), 400)
    assert c.get("/health").json()["items"] == 30


def test_oversize_uploads_are_413(fresh):
    index_dir, app, c = fresh  # max_upload_bytes = 64 KiB
    big = _noise_png(200)
    assert len(big) > 64 * 1024
    assert "over the" in _error(c.post("/search", files={"image": ("big.png", big, "image/png")}), 413)
    _error(c.post("/search", json={"image": base64.b64encode(big).decode()}), 413)
    _error(c.post("/items", data={"text": "big"}, files={"image": ("big.png", big, "image/png")}), 413)
    _error(c.post("/items", json={"text": "big", "image": base64.b64encode(big).decode()}), 413)
    huge = b"0" * (app.state.backend.max_upload_bytes * 2 + 100_000)  # refused from Content-Length, unread
    _error(c.post("/search", content=huge, headers={"content-type": "application/json"}), 413)
    _error(c.post("/items", content=(b"x" * 65536 for _ in range(3)),  # streamed: no Content-Length
                  headers={"content-type": "application/json"}), 413)
    # just under the limit is fine, and the server is still healthy
    small = _noise_png(60)
    assert len(small) < 64 * 1024
    r = c.post("/search", files={"image": ("ok.png", small, "image/png")}, data={"k": "1"})
    assert r.status_code == 200
    assert c.get("/health").json()["items"] == 30


def test_reload_after_restart_keeps_added_items(fresh, encoder):
    index_dir, app, c = fresh
    picture = _png("teal", "circle")
    assert c.post("/items", data={"id": "kept/1", "text": "a teal circle"},
                  files={"image": ("t.png", picture, "image/png")}).status_code == 201
    assert c.post("/items", json={"id": "kept/2", "text": "Mushroom risotto."}).status_code == 201
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["num_items"] == 32
    assert not [p for p in index_dir.rglob("*") if p.name.endswith(".tmp")]  # atomic saves left no debris
    # "restart": a new process would load the directory from scratch
    reloaded = Index.load(index_dir, encoder=encoder)
    assert len(reloaded) == 32
    with TestClient(create_app(reloaded)) as c2:
        assert c2.get("/items/kept%2F1").json()["text"] == "A teal circle."
        assert c2.get("/items/kept%2F1/image").content == picture
        hits = c2.post("/search", json={"text": "mushroom risotto", "modality": "text", "k": 1}).json()["results"]
        assert hits[0]["id"] == "kept/2"
        # the item's own picture and text: its fused vector, so the reloaded copy must rank it first whatever the
        # encoder (an image alone is a near tie with the other circles for the offline encoder)
        hits = c2.post("/search", data={"modality": "image,text", "k": "1", "text": "a teal circle"},
                       files={"image": ("q.png", picture, "image/png")}).json()["results"]
        assert hits[0]["id"] == "kept/1" and hits[0]["score"] > 0.99


# --- concurrency on a live server --------------------------------------------------------------------------------

def test_concurrent_requests_on_a_live_server(built, encoder, tmp_path):
    _, out = built
    copy = tmp_path / "idx"
    shutil.copytree(out, copy)
    app = create_app(Index.load(copy, encoder=encoder), max_upload_bytes=64 * 1024)
    backend = app.state.backend
    queries = [{"text": t, "k": 5} for t in ("red circle", "a blue square", "soup", "mountains", "sports car")]
    queries += [{"image": base64.b64encode(_png(c, s)).decode(), "k": 5, "modality": "image"}
                for c, s in (("red", "square"), ("green", "circle"), ("orange", "triangle"))]
    expected = [backend.search(backend.parse_search(q)) for q in queries]

    with ServerThread(app) as server:
        local = threading.local()

        def http() -> httpx.Client:
            if not hasattr(local, "client"):
                local.client = httpx.Client(base_url=server.url, timeout=60)
            return local.client

        def search(i: int):
            q = queries[i % len(queries)]
            r = http().post("/search", json=q)
            return i % len(queries), r.status_code, r.json()

        # phase 1: many parallel searches give the sequential answers. The server encodes concurrent queries in one
        # batch; under bf16 autocast a row's vector depends slightly on its batch (about 1e-4 in cosine).
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(search, range(96)))
        for qi, status, body in answers:
            assert status == 200, body
            want = expected[qi]["results"]
            assert [h["id"] for h in body["results"]] == [h["id"] for h in want]
            assert np.allclose([h["score"] for h in body["results"]], [h["score"] for h in want], atol=2e-3)

        # phase 2: searches, adds and bad input at the same time; nothing fails with a 500, the server stays up
        bad = [({"text": ""}, 400), ({"text": "x", "k": -1}, 400), ({"image": "@@@"}, 400),
               ({"image": base64.b64encode(b"junk").decode()}, 400), ({"image_id": "../secret.txt"}, 404)]

        def mixed(i: int):
            kind = i % 4
            if kind == 0:
                r = http().post("/items", json={"id": f"live/{i}", "text": f"Concurrent item number {i}."})
                return r.status_code == 201, r.text
            if kind == 1:
                body, want = bad[i % len(bad)]
                r = http().post("/search", json=body)
                return r.status_code == want and "error" in r.json(), r.text
            r = http().post("/search", json=queries[i % len(queries)])
            return r.status_code == 200 and r.json()["count"] == 5, r.text

        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(mixed, range(80)))
        assert all(ok for ok, _ in outcomes), [text for ok, text in outcomes if not ok][:3]
        health = httpx.get(server.url + "/health").json()
        assert health["items"] == 30 + 20
        for i in range(0, 80, 4):
            assert httpx.get(f"{server.url}/items/live%2F{i}").status_code == 200
    assert len(Index.load(copy, encoder=encoder)) == 50  # every add was saved


# --- the CLI -------------------------------------------------------------------------------------------------

def test_unimir_serve_cli_end_to_end(built, tmp_path):
    """``unimir serve`` in a real process: it loads the index once and answers the page and a search."""
    import inspect

    assert list(inspect.signature(serve).parameters) == ["index_dir", "host", "port", "root", "max_upload_bytes",
                                                         "device"]
    _, out = built
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "unimir", "serve", str(out), "--port", str(port),
                             "--max-upload-mb", "0.05"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, Path(log.name).read_text()
            assert time.monotonic() < deadline, "unimir serve did not come up"
            time.sleep(0.25)
        assert "unimir" in httpx.get(url + "/").text
        r = httpx.post(url + "/search", json={"text": "a green square", "modality": "image,text", "k": 1})
        assert r.json()["results"][0]["id"] == "cap:green_square"
        big = httpx.post(url + "/search", files={"image": ("big.png", _noise_png(200), "image/png")})
        assert big.status_code == 413
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert "serving 30 items" in (tmp_path / "serve.log").read_text()


def test_records_reach_only_files_in_their_own_place(tmp_path, encoder):
    """`index:` paths name uploads in the index's media folder: a pool file cannot use them and the Python API
    cannot point them elsewhere; a symlink swapped in under the data root after indexing is not followed."""
    from unimir.data.mbeir import read_candidates
    from unimir.data.problems import Problems
    from unimir.data.records import Candidate, Modality

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "imgs").mkdir(parents=True)
    outside.mkdir()
    draw("red", "circle").save(root / "imgs" / "a.png")
    (outside / "secret.png").write_bytes(_png("blue", "square") + SECRET.encode())
    index = Index.build([Candidate("a", Modality.IMAGE, None, "imgs/a.png")], tmp_path / "idx", root=root,
                        encoder=encoder)
    pool = tmp_path / "evil.jsonl"
    pool.write_text(json.dumps({"did": "e1", "img_path": "index:../outside/secret.png", "modality": "image"}) + "\n")
    problems = Problems()
    assert read_candidates(pool, problems) == [] and "img_path" in str(problems.items[0])
    problems = Problems()
    evil = [Candidate(f"e{i}", Modality.IMAGE, None, p) for i, p in
            enumerate(["index:../../outside/secret.png", f"index:{outside / 'secret.png'}", "index:media/../x"])]
    assert index.add(evil, problems=problems) == 0 and len(problems) == 3
    (root / "imgs" / "a.png").unlink()
    (root / "imgs" / "a.png").symlink_to(outside / "secret.png")
    with TestClient(create_app(Index.load(tmp_path / "idx", encoder=encoder))) as c:
        message = _error(c.get("/items/a/image"), 404)
        assert "resolves outside" in message and SECRET not in message
        assert SECRET not in c.get("/items/a/image?size=64").text
        _error(c.post("/search", json={"image_id": "a"}), 404)


def test_urlencoded_fields_that_are_not_utf8_are_400(fresh):
    _, _, c = fresh
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert "field 'id' is not valid UTF-8" in _error(c.post("/items", content=b"id=bad%ffid&text=hi", headers=form),
                                                     400)
    assert "field 'text' is not valid UTF-8" in _error(c.post("/search", content=b"text=%ff%fe", headers=form), 400)
    assert "given twice" in _error(c.post("/search", content=b"text=a&text=b", headers=form), 400)
    r = c.post("/search", content=b"text=caf%C3%A9+cr%C3%A8me&k=2", headers=form)
    assert r.status_code == 200 and r.json()["query"]["text"] == "café crème" and r.json()["count"] == 2
    assert c.get("/health").json()["items"] == 30


def test_an_explicit_id_must_not_be_blank(fresh):
    _, _, c = fresh
    for blank in ("", "   "):
        assert "id must be a non-empty string" in _error(c.post("/items", json={"text": "x", "id": blank}), 400)
    assert "id must be a non-empty string" in _error(c.post("/items", data={"text": "x", "id": ""}), 400)
    assert c.get("/health").json()["items"] == 30


def test_uploads_keep_their_format_and_a_damaged_one_is_the_servers_fault(fresh):
    index_dir, _, c = fresh
    for fmt, suffix in (("BMP", ".bmp"), ("GIF", ".gif"), ("JPEG", ".jpg")):
        buf = io.BytesIO()
        draw("red", "square", 48).convert("RGB" if fmt != "GIF" else "P").save(buf, fmt)
        r = c.post("/items", data={"id": f"up:{fmt}"}, files={"image": ("x", buf.getvalue(), "image/x")})
        assert r.status_code == 201, r.text
        stored = [p for p in (index_dir / "media").iterdir() if p.read_bytes() == buf.getvalue()]
        assert [p.suffix for p in stored] == [suffix]
    stored[0].write_bytes(stored[0].read_bytes()[:40])  # damaged on the server after the upload
    assert "unreadable on the server" in _error(c.post("/search", json={"image_id": "up:JPEG"}), 404)
    assert "unreadable on the server" in _error(c.get("/items/up%3AJPEG/image?size=64"), 404)


def test_items_added_from_another_folder_are_served_from_that_folder_only(tmp_path, encoder):
    from unimir.data.ingest import load_pool
    from unimir.data.records import Candidate, Modality

    root, other, outside = tmp_path / "root", tmp_path / "other", tmp_path / "outside"
    for folder in (root, other, outside):
        folder.mkdir()
    draw("red", "circle").save(root / "a.png")
    draw("green", "square").save(other / "b.png")
    draw("blue", "triangle").save(outside / "c.png")
    (outside / "secret.png").write_bytes(_png("blue", "square") + SECRET.encode())
    index = Index.build([Candidate("a", Modality.IMAGE, None, "a.png")], tmp_path / "idx", root=root,
                        encoder=encoder)
    (other / "pool.jsonl").write_text(json.dumps({"did": "b", "img_path": "b.png", "modality": "image"}) + "\n")
    cands, other_root = load_pool(other / "pool.jsonl")
    assert index.add(cands, root=other_root) == 1 and index.manifest.roots == [str(other.resolve())]
    assert not index.manifest.outside_root
    with TestClient(create_app(Index.load(tmp_path / "idx", encoder=encoder))) as c:
        assert c.get("/items/b/image").content == (other / "b.png").read_bytes()
    (other / "b.png").unlink()
    (other / "b.png").symlink_to(outside / "secret.png")
    with TestClient(create_app(Index.load(tmp_path / "idx", encoder=encoder))) as c:
        assert "outside the index's data roots" in _error(c.get("/items/b/image"), 404)
    # images let in from anywhere on purpose are served as recorded
    index.add([Candidate("c", Modality.IMAGE, None, str(outside / "c.png"))], allow_outside_root=True)
    assert Index.load(tmp_path / "idx", encoder=encoder).manifest.outside_root
    with TestClient(create_app(Index.load(tmp_path / "idx", encoder=encoder))) as c:
        assert c.get("/items/c/image").content == (outside / "c.png").read_bytes()


def test_duplicate_json_keys_and_huge_numbers_get_short_400s(client):
    js = {"content-type": "application/json"}
    assert "field 'k' given twice" in _error(client.post("/search", content=b'{"text": "x", "k": 5, "k": 500}',
                                                         headers=js), 400)
    for k in ("1e308", '"' + "9" * 5000 + '"'):
        message = _error(client.post("/search", content=f'{{"text": "x", "k": {k}}}'.encode(), headers=js), 400)
        assert message.startswith("k must be an integer") and len(message) < 150, message
