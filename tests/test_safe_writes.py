"""No data loss: index writes never delete what they did not write, concurrent writers keep every item, the
embedding cache follows the weights and survives interruption, files are group-readable, failed saves roll back."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from unimir.data.records import Candidate, Modality
from unimir.errors import IndexFormatError
from unimir.index import Index


def unimir(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "unimir", "--quiet", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"unimir {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def texts(n: int, prefix: str) -> list[Candidate]:
    colours, shapes = ("red", "green", "blue", "yellow", "purple", "black"), ("circle", "square", "triangle")
    return [Candidate(f"{prefix}:{i}", Modality.TEXT, f"a {colours[i % 6]} {shapes[i % 3]} number {prefix}{i}")
            for i in range(n)]


@pytest.fixture
def text_index(tmp_path, tiny_encoder):
    return Index.build(texts(6, "base"), tmp_path / "idx", encoder=tiny_encoder)


# --- 1. never delete a file we did not write -----------------------------------------------------------------

def test_index_refuses_a_foreign_folder_and_deletes_nothing(tmp_path, tiny_clip_dir):
    folder = tmp_path / "d"
    (folder / "album-000001").mkdir(parents=True)
    (folder / "photo-123456.jpg").write_bytes(b"my holiday")
    (folder / "album-000001" / "x.jpg").write_bytes(b"more")
    pool = tmp_path / "texts.csv"
    pool.write_text("id,text\nt1,a red circle\nt2,a blue square\n")
    proc = unimir("index", pool, "--out", folder, "--encoder", f"hf:{tiny_clip_dir}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not empty and not a unimir index" in proc.stderr and "photo-123456.jpg" not in proc.stdout
    assert sorted(p.name for p in folder.rglob("*")) == ["album-000001", "photo-123456.jpg", "x.jpg"]
    # a manifest.json of another program is not ours either
    other = tmp_path / "web"
    other.mkdir()
    (other / "manifest.json").write_text('{"name": "my web app"}')
    proc = unimir("index", pool, "--out", other, "--encoder", f"hf:{tiny_clip_dir}", check=False)
    assert proc.returncode == 2 and "not a unimir index" in proc.stderr
    assert [p.name for p in other.iterdir()] == ["manifest.json"]
    # a new folder and an empty one are fine
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new", tmp_path / "empty"):
        assert len(Index.build(pool, out, encoder=f"hf:{tiny_clip_dir}")) == 2


def _listed(path: Path) -> set[str]:
    """Top-level names a manifest owns: its segment folders and its index-level files."""
    m = json.loads((path / "manifest.json").read_text())
    return {s["name"] for s in m["segments"]} | set(m["files"].values())


def test_cleanup_removes_only_files_a_previous_manifest_listed(text_index, tiny_encoder):
    path = text_index.path
    user_files = {"photo-123456.jpg": b"photo", "notes-000001.txt": b"notes", "records.sqlite.bak": b"b",
                  ".backup-000002.tmp": b"t"}
    for name, data in user_files.items():
        (path / name).write_bytes(data)
    (path / "seg-000009-00ab").mkdir()  # a folder named like ours, never listed by a manifest
    first = _listed(path)
    text_index.add(texts(2, "more"))
    second = _listed(path)
    names = {p.name for p in path.iterdir()}
    assert first < second <= names  # appends add a segment and keep the old ones
    assert set(user_files) | {"seg-000009-00ab"} <= names
    # rebuilding over an existing index works, and still deletes only the old index's files
    rebuilt = Index.build(texts(3, "new"), path, encoder=tiny_encoder)
    names = {p.name for p in path.iterdir()}
    assert len(Index.load(path)) == 3 and rebuilt.manifest.generation == 3
    assert not second & names and _listed(path) <= names and set(user_files) | {"seg-000009-00ab"} <= names


def test_a_damaged_index_can_be_rebuilt_in_place(text_index, tiny_encoder):
    (text_index.path / "manifest.json").write_text('{"format": "unimir-index", "format_version": 1}')
    with pytest.raises(IndexFormatError, match="rebuild the index"):
        Index.load(text_index.path)
    Index.build(texts(2, "again"), text_index.path, encoder=tiny_encoder)
    assert len(Index.load(text_index.path)) == 2


# --- 2. concurrent writers ------------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from unimir.data.records import Candidate, Modality
    from unimir.index import Index

    index_dir, name, barrier = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    index = Index.load(index_dir)            # both writers read the same generation ...
    (barrier / name).touch()
    while len(list(barrier.iterdir())) < 2:  # ... and only then write: without the lock one batch would be lost
        time.sleep(0.01)
    items = [Candidate(f"{name}:{i}", Modality.TEXT, f"a red circle from {name} {i}") for i in range(5)]
    print(index.add(items))
""")


def test_two_writer_processes_keep_every_item(text_index, tmp_path):
    script, barrier = tmp_path / "writer.py", tmp_path / "barrier"
    script.write_text(WRITER)
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, str(script), str(text_index.path), name, str(barrier)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o[0].strip() for o in outs] == ["5", "5"]
    final = Index.load(text_index.path)
    assert {f"{w}:{i}" for w in "ab" for i in range(5)} | {f"base:{i}" for i in range(6)} == set(final.row_of)
    assert final.manifest.generation == 3 and final.manifest.num_items == 16


def test_two_cli_adds_at_once_keep_both_batches(tmp_path, tiny_clip_dir):
    pool = tmp_path / "base.csv"
    pool.write_text("id,text\nbase1,a red circle\n")
    out = tmp_path / "idx"
    unimir("index", pool, "--out", out, "--encoder", f"hf:{tiny_clip_dir}")
    batches = []
    for name in "ab":
        f = tmp_path / f"{name}.csv"
        f.write_text("id,text\n" + "".join(f"{name}{i},a blue square {name} {i}\n" for i in range(8)))
        batches.append(f)
    cmd = [sys.executable, "-m", "unimir", "--quiet", "add", str(out)]
    procs = [subprocess.Popen(cmd + [str(f)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}) for f in batches]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("added 8 items" in o[0] for o in outs), outs
    assert set(Index.load(out).row_of) == {"base1"} | {f"{n}{i}" for n in "ab" for i in range(8)}


def test_server_and_cli_writers_interleave(text_index, tiny_encoder, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from unimir.serve import create_app

    extra = tmp_path / "cli.csv"
    extra.write_text("id,text\ncli1,a green triangle\ncli2,a black square\n")
    with TestClient(create_app(Index.load(text_index.path, encoder=tiny_encoder))) as client:
        assert client.post("/items", json={"id": "srv1", "text": "a red circle"}).status_code == 201
        unimir("add", text_index.path, extra)  # another process writes while the server runs
        r = client.post("/items", json={"id": "srv2", "text": "a blue circle"})
        assert r.status_code == 201, r.text
        assert client.get("/items/cli1").status_code == 200  # the server caught up with the CLI's items
        assert client.post("/items", json={"id": "cli2", "text": "x"}).status_code == 409
    final = Index.load(text_index.path)
    assert {"srv1", "srv2", "cli1", "cli2"} <= set(final.row_of) and len(final) == 10


def test_save_merges_unsaved_items_onto_a_newer_generation(text_index, tiny_encoder):
    mine = Index.load(text_index.path, encoder=tiny_encoder)
    mine.add(texts(2, "mine"), save=False)
    Index.load(text_index.path, encoder=tiny_encoder).add(texts(3, "theirs"))  # commits generation 2
    mine.save()
    final = Index.load(text_index.path)
    assert set(final.row_of) == {f"base:{i}" for i in range(6)} | {"mine:0", "mine:1"} | {f"theirs:{i}" for i in
                                                                                         range(3)}
    # features travelled with their rows
    ref = {c.did: r for c, r in zip(mine.candidates, mine.features.text)}
    got = {c.did: r for c, r in zip(final.candidates, final.features.text)}
    assert all(np.allclose(got[d], ref[d], atol=1e-3) for d in ref)


# --- 7. a failed save leaves memory matching the directory ----------------------------------------------------

def test_failed_save_during_add_rolls_back(text_index, monkeypatch):
    import unimir.index.index as index_module

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(index_module, "commit_manifest", disk_full)
    with pytest.raises(OSError, match="No space left"):
        text_index.add(texts(2, "late"))
    monkeypatch.undo()
    assert len(text_index) == 6 and "late:0" not in text_index.row_of
    assert text_index.search("a red circle", k=3).hits  # still usable, and equal to what is on disk
    assert [c.did for c in text_index.candidates] == [c.did for c in Index.load(text_index.path).candidates]
    assert text_index.add(texts(2, "late")) == 2 and len(Index.load(text_index.path)) == 8


# --- 3, 4. the embedding cache --------------------------------------------------------------------------------

def test_cache_is_keyed_by_the_weights_not_the_spec(tmp_path, tiny_clip_dir):
    import torch
    from transformers import CLIPModel

    from unimir.encoders import load_encoder

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_clip_dir, model_dir)
    spec = f"hf:{model_dir}"
    pool = texts(4, "t")
    first = Index.build(pool, tmp_path / "a", encoder=load_encoder(spec, reuse=False))
    same = Index.build(pool, tmp_path / "b", encoder=load_encoder(spec, reuse=False))
    assert np.array_equal(first.features.text, same.features.text)
    model = CLIPModel.from_pretrained(model_dir)
    with torch.no_grad():
        for p in model.text_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(model_dir)
    changed_encoder = load_encoder(spec, reuse=False)
    assert changed_encoder.spec == spec and changed_encoder.fingerprint != first.encoder.fingerprint
    changed = Index.build(pool, tmp_path / "c", encoder=changed_encoder)
    direct = changed_encoder.embed_texts([c.txt for c in changed.candidates])  # as stored (formatted)
    assert not np.allclose(changed.features.text, first.features.text, atol=1e-3)
    assert np.allclose(changed.features.text, direct, atol=2e-3)  # as stored: fp16


class CountingEncoder:
    """Wraps an encoder: counts the texts it embeds and fails after ``fail_after`` batches (a simulated kill)."""

    def __new__(cls, inner, fail_after=None):
        from unimir.encoders import Encoder

        class _Counting(Encoder):
            spec, dim, text_batch_size = inner.spec, inner.dim, 2
            fingerprint = inner.fingerprint
            seen: list[str] = []
            batches = 0

            def embed_texts(self, batch, role="candidate"):
                if fail_after is not None and type(self).batches >= fail_after:
                    raise KeyboardInterrupt("killed")
                type(self).batches += 1
                type(self).seen.extend(batch)
                return inner.embed_texts(batch, role)

            def embed_images(self, images, role="candidate"):
                return inner.embed_images(images, role)

        return _Counting()


def test_interrupted_encoding_resumes_from_the_cache(tmp_path, tiny_encoder, monkeypatch):
    monkeypatch.setenv("UNIMIR_CACHE_DIR", str(tmp_path / "cache"))
    pool = texts(10, "resume")
    interrupted = CountingEncoder(tiny_encoder, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        Index.build(pool, tmp_path / "idx", encoder=interrupted)
    done = list(type(interrupted).seen)
    assert len(done) == 6 and not (tmp_path / "idx" / "manifest.json").exists()
    resumed = CountingEncoder(tiny_encoder)
    index = Index.build(pool, tmp_path / "idx", encoder=resumed)
    assert len(index) == 10
    assert not set(type(resumed).seen) & set(done)  # zero encoder calls for what was cached before the kill
    assert len(type(resumed).seen) == 4


# --- 6. permissions --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_index_files_follow_the_umask(tmp_path, tiny_encoder, umask):
    old = os.umask(umask)
    try:
        index = Index.build(texts(3, "p"), tmp_path / "idx", encoder=tiny_encoder)
        index.add_upload(text="with a picture", image=_png())
    finally:
        os.umask(old)
    for p in [index.path, *index.path.rglob("*")]:
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(p.stat().st_mode) == want, p


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_generative_files_are_written_atomically_and_readable(tmp_path):
    from unimir import atomic

    atomic.write_json(tmp_path / "a.json", {"x": 1})
    atomic.write_npy(tmp_path / "b.npy", np.arange(3))
    atomic.write_safetensors(tmp_path / "c.safetensors", {"w": np.ones(2, np.float32)}, {"k": "v"})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert np.load(tmp_path / "b.npy").tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.npy", "c.safetensors"]  # no temp files
    with pytest.raises(ZeroDivisionError), atomic.atomic_path(tmp_path / "a.json") as tmp:
        Path(tmp).write_text("half")
        1 / 0
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.npy", "c.safetensors"]


def test_training_saved_after_another_writer_keeps_both(text_index, tiny_encoder):
    from unimir.quantizer import QuantizerTrainConfig
    from unimir.quantizer.pairs import TrainingPairs
    from unimir.training import train

    trainer = Index.load(text_index.path, encoder=tiny_encoder, generative=False)
    pairs = TrainingPairs(trainer.features, trainer.features, trainer.modality_codes.astype(np.int64),
                          np.arange(len(trainer)))
    train(trainer, pairs, stage="quantizer", quantizer="C16+M3+RQ2x4", quantizer_config=QuantizerTrainConfig(epochs=1),
          save=False)
    Index.load(text_index.path, encoder=tiny_encoder).add(texts(3, "meanwhile"))  # lands while training runs
    trainer.save()
    final = Index.load(text_index.path)  # loads the generative model, whose pool identity must match all 9 items
    assert len(final) == 9 and {f"meanwhile:{i}" for i in range(3)} <= set(final.row_of)
    assert final.generative is not None and len(final.generative) == 9 and "quantize" in final.modes
