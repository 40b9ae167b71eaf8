"""Segmented storage: appends that write only what they add, deletes and updates, compaction, bring-your-own
features, the generative codes per segment, concurrent writers and old formats."""

import json
import os
import shutil
import subprocess
import sys

import faiss
import numpy as np
import pytest
from safetensors.numpy import save_file

from unimir import Index
from unimir.data.records import Candidate, Modality
from unimir.encoders import Features
from unimir.errors import IndexFormatError, InvalidInputError, NotFoundError


@pytest.fixture(scope="module")
def built(corpus, tiny_encoder, tmp_path_factory):
    return Index.build(corpus["pool"], tmp_path_factory.mktemp("st") / "idx", encoder=tiny_encoder)


@pytest.fixture
def copy(built, tmp_path, tiny_encoder):
    shutil.copytree(built.path, tmp_path / "idx")
    return Index.load(tmp_path / "idx", encoder=tiny_encoder)


def _files(folder):
    return {p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
            for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


def test_append_writes_a_new_segment_and_leaves_old_files_alone(copy):
    before = _files(copy.path)
    copy.add([Candidate("new:1", Modality.TEXT, "a small orange star")])
    after = _files(copy.path)
    unchanged = {k: v for k, v in before.items() if k != "manifest.json"}
    assert all(after[k] == v for k, v in unchanged.items())  # not one old file rewritten
    new = set(after) - set(before)
    assert new and all(n.startswith("seg-") for n in new) and len({n.split("/")[0] for n in new}) == 1
    written = sum(after[n][2] for n in new)
    assert written < sum(v[2] for v in unchanged.values())  # one item's segment, not a copy of the index
    assert len(copy.manifest.segments) == 2 and copy.get("new:1").txt == "A small orange star."


def test_delete_update_and_compact(copy, tiny_encoder):
    target = copy.search("a red circle", modality="text", k=1).hits[0].did
    assert copy.delete([target]) == 1 and len(copy) == 35
    with pytest.raises(NotFoundError):
        copy.get(target)
    with pytest.raises(NotFoundError, match="no item with id 'nope'"):
        copy.delete(["nope", target])
    for k in (1, 5, 40):
        hits = copy.search("a red circle", modality="text", k=k).hits
        assert target not in [h.did for h in hits] and len(hits) == min(k, 17)
    reloaded = Index.load(copy.path, encoder=tiny_encoder)
    assert len(reloaded) == 35 and target not in reloaded.row_of and reloaded.manifest.deleted == 1
    assert reloaded.manifest.num_items == 35 and reloaded.manifest.modality_counts["text"] == 17
    # update = delete + add in one commit
    assert reloaded.add([Candidate("10:0", Modality.TEXT, "completely new words")], replace=True) == 1
    assert reloaded.get("10:0").txt == "Completely new words." and len(reloaded) == 35
    assert reloaded.manifest.deleted == 2  # the update's old row is a tombstone too
    rows_before = reloaded.num_rows
    expected = [(h.did, round(h.score, 4)) for h in reloaded.search("a blue square", k=10).hits]
    assert reloaded.compact() == 2
    assert reloaded.num_rows == 35 < rows_before and len(reloaded.manifest.segments) == 1
    assert [(h.did, round(h.score, 4)) for h in reloaded.search("a blue square", k=10).hits] == expected
    again = Index.load(copy.path, encoder=tiny_encoder)
    assert len(again) == 35 and not again.manifest.files.get("tombstones") and again.manifest.deleted == 0
    listed = {s.name for s in again.manifest.segments}
    assert {p.name for p in copy.path.iterdir() if p.name.startswith("seg-")} == listed  # old segments removed


def test_exclude_query_after_delete_and_many(copy, corpus):
    img = corpus["root"] / "mbeir_images/shapes/red_circle.png"
    (dup,) = copy.duplicate_rows(None, str(img))
    many = copy.duplicate_rows_many([(None, str(img)), ("a red circle", None), ("nothing like it", None)])
    assert many[0] == {dup} and len(many[1]) == 1 and many[2] == set()
    copy.delete([copy.candidates[dup].did])
    assert copy.duplicate_rows(None, str(img)) == set()


def test_build_from_features_matches_encoding(corpus, tiny_encoder, built, tmp_path):
    feats = built.features
    save_file({"image": feats.image.astype(np.float16), "text": feats.text.astype(np.float16),
               "image_mask": feats.image_mask.astype(np.uint8), "text_mask": feats.text_mask.astype(np.uint8)},
              str(tmp_path / "f.safetensors"))
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "image.npy", feats.image)
    np.save(tmp_path / "npy" / "text.npy", feats.text)  # masks derived from non-zero rows
    want = [(h.did, round(h.score, 3)) for h in built.search("a green triangle", k=8).hits]
    for source in (tmp_path / "f.safetensors", tmp_path / "npy"):
        index = Index.build(corpus["pool"], tmp_path / f"idx-{source.stem}", encoder=tiny_encoder, features=source)
        assert [(h.did, round(h.score, 3)) for h in index.search("a green triangle", k=8).hits] == want
    with pytest.raises(InvalidInputError, match="12 rows for 36 pool records"):
        Index.build(corpus["pool"], tmp_path / "bad", encoder=tiny_encoder, features=Features.empty(feats.dim, 12))


def test_factory_spec_builds_trains_and_reopens(corpus, tiny_encoder, tmp_path):
    index = Index.build(corpus["pool"], tmp_path / "ivf", encoder=tiny_encoder, index="IVF4,Flat;nprobe=4")
    assert index.manifest.index_spec == "IVF4,Flat;nprobe=4"
    exact = Index.build(corpus["pool"], tmp_path / "flat", encoder=tiny_encoder)
    a = Index.load(tmp_path / "ivf", encoder=tiny_encoder).search("a red square", k=5).hits
    b = exact.search("a red square", k=5).hits
    assert [h.did for h in a] == [h.did for h in b]  # nprobe = nlist: exact
    index.add([Candidate("x:1", Modality.TEXT, "a red square")])  # appended segments reuse the trained template
    assert index.search("a red square", modality="text", k=1).hits[0].did in ("x:1", b[0].did)
    with pytest.raises(InvalidInputError, match="needs at least 4096 vectors"):
        Index.build(corpus["pool"], tmp_path / "big", encoder=tiny_encoder, index="IVF4096,PQ8")


def test_concurrent_writers_both_land(copy, tiny_encoder):
    other = Index.load(copy.path, encoder=tiny_encoder)  # a second process's view, now stale
    copy.add([Candidate("a:1", Modality.TEXT, "first writer")])
    other.add([Candidate("b:1", Modality.TEXT, "second writer")])
    other.delete(["a:1"])
    final = Index.load(copy.path, encoder=tiny_encoder)
    assert len(final) == 37 and "b:1" in final.row_of and "a:1" not in final.row_of
    assert final.search("second writer", modality="text", k=1).hits[0].did == "b:1"


def test_old_format_and_corrupt_segments_are_refused(copy, tmp_path):
    manifest = json.loads((copy.path / "manifest.json").read_text())
    seg = copy.path / manifest["segments"][0]["name"]
    (seg / "records.sqlite").write_bytes(b"not a database")
    with pytest.raises(IndexFormatError):
        Index.load(copy.path)
    manifest["format_version"] = 1
    (copy.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="format version 1 .*rebuild the index"):
        Index.load(copy.path)


def test_a_missing_dense_partition_is_refused_not_searched_around(built, tmp_path, tiny_encoder):
    """Each modality has its own FAISS file in a segment; losing one must not make that modality vanish."""
    shutil.copytree(built.path, tmp_path / "idx")
    seg = tmp_path / "idx" / built.manifest.segments[0].name
    (seg / "dense-0.faiss").unlink()
    with pytest.raises(IndexFormatError, match=r"hold \d+ vectors for the segment's 36 rows; rebuild the index"):
        Index.load(tmp_path / "idx", encoder=tiny_encoder)


def test_building_into_a_foreign_folder_is_refused(corpus, tiny_encoder, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(IndexFormatError, match="not a unimir index"):
        Index.build(corpus["pool"], tmp_path / "mine", encoder=tiny_encoder)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_generative_codes_live_with_segments(corpus, tiny_encoder, tmp_path, one_torch_thread):
    from unimir.generator import GeneratorConfig, GeneratorTrainConfig
    from unimir.quantizer import QuantizerTrainConfig
    from unimir.training import train, training_pairs

    index = Index.build(corpus["pool"], tmp_path / "gen", encoder=tiny_encoder)
    pairs = training_pairs(index, [corpus["t2i"]])
    train(index, pairs, quantizer="M3+RQ2x8", quantizer_config=QuantizerTrainConfig(epochs=2),
          generator=GeneratorConfig(num_layers=1, d_model=32, num_heads=2, d_ff=64),
          generator_config=GeneratorTrainConfig(epochs=2), progress=False)
    model_dir = index.path / index.manifest.files["generative"]
    model_files = _files(model_dir)
    index.add([Candidate("g:1", Modality.TEXT, "a small orange star")], refresh=False)
    assert _files(model_dir) == model_files  # without the refresh, the model and the old codes are not rewritten
    entry = index.manifest.segments[-1]
    assert entry.codes == f"{entry.name}/codes.npy"
    assert index.generative.learned_rows == 36 and index.manifest.generative["learned_rows"] == 36
    # with it (the default), the fine-tuned generator is committed with the segment and knows the new rows
    index.add([Candidate("g:2", Modality.TEXT, "a large green moon")])
    assert index.manifest.files["generative"] != model_dir.name
    assert index.manifest.generative["learned_rows"] == 38 == index.generative.learned_rows
    assert Index.load(index.path, encoder=tiny_encoder).generative.learned_rows == 38
    index.delete(["g:1", "g:2"])
    reloaded = Index.load(index.path, encoder=tiny_encoder)
    assert reloaded.modes == ("dense", "generative", "generative-rerank", "quantize")
    np.testing.assert_array_equal(reloaded.generative.codes, index.generative.codes)
    for mode in ("generative", "generative-rerank", "quantize"):
        hits = reloaded.search("a small orange star", k=40, mode=mode, modality="text").hits
        assert "g:1" not in [h.did for h in hits]
    reloaded.compact()
    assert len(Index.load(index.path, encoder=tiny_encoder).generative) == 36


def test_cli_delete_compact_and_features(built, tmp_path, corpus):
    def unimir(*args):
        proc = subprocess.run([sys.executable, "-m", "unimir", "--quiet", *map(str, args)], capture_output=True,
                              text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
        return proc

    shutil.copytree(built.path, tmp_path / "idx")
    proc = unimir("delete", tmp_path / "idx", "10:0", "10:1")
    assert proc.returncode == 0 and "deleted 2 items; the index now holds 34" in proc.stdout
    proc = unimir("delete", tmp_path / "idx", "10:0")
    assert proc.returncode == 2 and proc.stderr.startswith("error: no item with id '10:0'")
    proc = unimir("compact", tmp_path / "idx")
    assert proc.returncode == 0 and "dropped 2 deleted rows; 34 items" in proc.stdout
    feats = built.features
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "image.npy", feats.image.astype(np.float16))
    np.save(tmp_path / "npy" / "text.npy", feats.text.astype(np.float16))
    proc = unimir("index", corpus["pool"], "--out", tmp_path / "byo", "--features", tmp_path / "npy", "--encoder",
                  built.manifest.encoder, "--index", "HNSW8")
    assert proc.returncode == 0 and "indexed 36 items" in proc.stdout, proc.stderr
    assert json.loads(unimir("info", tmp_path / "byo").stdout)["index_spec"] == "HNSW8"


def _segment_files(index):
    return {p.name for s in index.manifest.segments for p in (index.path / s.name).iterdir()}


def test_dense_vectors_are_stored_once_and_parts_only_on_request(corpus, tiny_encoder, built, tmp_path):
    """The vector store holds each item's dense vector, the one copy; parts are written only with keep_parts, and
    an index without them gets them back from its encoder (the same vectors, to fp16 precision)."""
    kept = Index.build(corpus["pool"], tmp_path / "kept", encoder=tiny_encoder, keep_parts=True)
    assert not built.manifest.parts and kept.manifest.parts
    assert not {"image.npy", "text.npy"} & _segment_files(built) and {"image.npy", "text.npy"} <= _segment_files(kept)
    size = lambda i: sum(p.stat().st_size for p in i.path.rglob("*") if p.is_file())  # noqa: E731
    assert size(built) < size(kept)
    rows = np.array([0, 5, 17, 35])
    a, b = built.features_at(rows), kept.features_at(rows)
    np.testing.assert_array_equal(a.image_mask, b.image_mask)
    np.testing.assert_allclose(a.image, b.image, atol=2e-3)
    np.testing.assert_allclose(a.text, b.text, atol=2e-3)
    # the fused rows generative modes read are the stored vectors themselves
    np.testing.assert_allclose(built.fused[rows], built.fuse(a), atol=2e-3)
    assert [h.did for h in built.search("a red circle", k=8).hits] == [h.did for h in kept.search("a red circle",
                                                                                                    k=8).hits]
    # built from features, without parts and with an encoder that cannot run: a clear error, not a crash
    byo = Index.build(corpus["pool"], tmp_path / "byo", encoder="synthetic-8", features=built.features)
    with pytest.raises(InvalidInputError, match="keeps no part vectors .*--keep-parts"):
        byo.features_at(rows)
    byo_kept = Index.build(corpus["pool"], tmp_path / "byo-kept", encoder="synthetic-8", features=built.features,
                           keep_parts=True)
    np.testing.assert_allclose(byo_kept.features_at(rows).text, a.text, atol=2e-3)


def test_a_joint_vector_is_the_stored_dense_vector(corpus, tiny_encoder, built, tmp_path):
    """An encoder that embeds image and text together gives Features.joint; that vector (normalised) is what the
    index stores and searches, not the fusion of the parts, and it survives compaction."""
    feats = built.features
    rng = np.random.default_rng(3)
    joint = rng.standard_normal((len(feats), feats.dim)).astype(np.float32) * 3.0
    with_joint = Features(feats.image, feats.text, feats.image_mask, feats.text_mask, joint)
    index = Index.build(corpus["pool"], tmp_path / "joint", encoder=tiny_encoder, features=with_joint)
    unit = joint / np.linalg.norm(joint, axis=1, keepdims=True)
    np.testing.assert_allclose(index.fused[np.arange(len(feats))], unit, atol=2e-3)
    query = Features.empty(feats.dim, 1)
    query.text[0], query.text_mask[0] = unit[7], True
    assert index.search_features(query, [None], 1)[0].indices[0] == 7
    index.delete([index.candidates[3].did])
    index.compact()
    np.testing.assert_allclose(index.fused[np.arange(6)], np.delete(unit, 3, axis=0)[:6], atol=2e-3)
    (tmp_path / "npy").mkdir()  # bring-your-own features with a joint column
    for name in ("image", "text", "joint"):
        np.save(tmp_path / "npy" / f"{name}.npy", getattr(with_joint, name).astype(np.float16))
    from_files = Index.build(corpus["pool"], tmp_path / "joint-npy", encoder=tiny_encoder, features=tmp_path / "npy")
    np.testing.assert_allclose(from_files.fused[np.arange(len(feats))], unit, atol=2e-3)


def test_format_v2_index_opens(tmp_path, tiny_encoder):
    """tests/data/index-v2 was written by main's code on 2026-12-02 (storage format v2, parts in every segment,
    int16 generative codes): it opens, finds what that code found, and its next commit upgrades it to v3."""
    from pathlib import Path

    data = Path(__file__).parent / "data"
    shutil.copytree(data / "index-v2", tmp_path / "v2")
    want = json.loads((data / "index-v2-expected.json").read_text())
    index = Index.load(tmp_path / "v2")
    assert index.manifest.parts and len(index) == 47 and index.modes == ("dense", "quantize")
    q = np.asarray(want["queries"], np.float32)
    queries = Features(np.zeros_like(q), q, np.zeros(len(q), bool), np.ones(len(q), bool))
    for mode in ("dense", "quantize"):
        found = index.search_features(queries, [None] * len(q), 5, mode=mode)
        for r, (rows, scores) in zip(found, want[mode]):
            assert r.indices.tolist() == rows
            np.testing.assert_allclose(r.scores, scores, atol=1e-3 if mode == "dense" else 2e-3)
    np.testing.assert_array_equal(index.generative.codes, want["codes"])
    f = index.features_at(want["parts_rows"])
    np.testing.assert_array_equal(f.image, np.asarray(want["image"], np.float32))
    np.testing.assert_array_equal(f.text, np.asarray(want["text"], np.float32))
    assert check_index_ok(tmp_path / "v2")
    index.add_features([Candidate("v3:0", Modality.TEXT, "New text.")], index.features_at([1]))
    index.save()
    assert json.loads((tmp_path / "v2" / "manifest.json").read_text())["format_version"] == 3
    again = Index.load(tmp_path / "v2")
    assert len(again) == 48 and again.manifest.parts and "image.npy" in _segment_files(again)
    assert again.search_features(queries, [None] * len(q), 5, mode="quantize")[0].indices.tolist() == \
        want["quantize"][0][0]


def check_index_ok(path) -> bool:
    from unimir.index.check import check_index

    problems, summary = check_index(path)
    assert not problems, problems
    return summary.startswith("ok:")


def test_leftovers_of_a_crash_are_reported_and_compact_removes_only_them(copy, tmp_path):
    """Files an interrupted write left (a renamed segment no manifest lists, a half-written .tmp folder, a
    generative model never committed) are listed by 'info --check' and removed by 'compact'; a user's file in
    the folder is neither."""
    seg = copy.manifest.segments[0].name
    for name in ("seg-000099-000beef", ".seg-000100-000cafe.tmp", "generative-000098"):
        shutil.copytree(copy.path / seg, copy.path / name)
    (copy.path / "notes.txt").write_text("mine")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "unimir", "--quiet", "info", "--check", str(copy.path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "3 entries left by an interrupted write" in proc.stdout, proc.stdout
    assert "seg-000099-000beef" in proc.stdout and "notes.txt" not in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "unimir", "--quiet", "compact", str(copy.path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    names = {p.name for p in copy.path.iterdir()}
    assert not names & {"seg-000099-000beef", ".seg-000100-000cafe.tmp", "generative-000098"}
    assert (copy.path / "notes.txt").read_text() == "mine" and check_index_ok(copy.path)


def test_encoder_fingerprint_is_recorded_and_checked_by_the_cli(built, tmp_path):
    """An index remembers which encoder weights built it: searching it with an encoder that now computes other
    vectors is a one-line error; an index that recorded none (older unimir) gets a one-line warning."""
    shutil.copytree(built.path, tmp_path / "idx")
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert m["encoder_fingerprint"] == built.encoder.fingerprint
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def search():
        return subprocess.run([sys.executable, "-m", "unimir", "--quiet", "search", str(tmp_path / "idx"),
                               "--text", "a red circle", "--k", "2"],
                              capture_output=True, text=True, env=env, timeout=300)

    assert search().returncode == 0
    m["encoder_fingerprint"] = "0" * 64
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(m))
    proc = search()
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: ") and "computes other vectors" in proc.stderr and "rebuild" in proc.stderr
    m["encoder_fingerprint"] = None
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(m))
    proc = search()
    assert proc.returncode == 0 and proc.stderr.startswith("warning: ") and "no encoder fingerprint" in proc.stderr
    assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize("spec", ["flat", "Flat", "IVF4,Flat;nprobe=4", "HNSW8,SQ8"])
def test_stored_vectors_read_back_row_by_row(corpus, tiny_encoder, tmp_path, spec):
    """``reconstruct`` of any rows (shuffled, repeated, over several segments and modalities) against FAISS's own
    per-vector reconstruct of each partition, the slow obvious reference."""
    index = Index.build(corpus["pool"], tmp_path / "idx", encoder=tiny_encoder, index=spec)
    index.add([Candidate("x:1", Modality.TEXT, "a red square"), Candidate("x:2", Modality.TEXT, "a blue circle")])
    index = Index.load(tmp_path / "idx", encoder=tiny_encoder)  # memory-mapped where FAISS allows
    store = index.vectors
    want = {}
    for parts in store.segments.values():
        for p in parts:
            ivf = faiss.try_extract_index_ivf(p.index)
            if ivf is not None:
                ivf.make_direct_map()  # FAISS reconstructs IVF vectors only through an id -> list map
            for i, row in enumerate(p.global_rows()):
                want[int(row)] = p.index.reconstruct(i)
    rows = np.random.default_rng(0).permutation(np.repeat(np.arange(index.num_rows), 2))
    np.testing.assert_array_equal(store.reconstruct(rows), np.stack([want[int(r)] for r in rows]))
    assert store.reconstruct(np.zeros(0, np.int64)).shape == (0, store.dim)


def test_graph_partitions_are_read_ahead_within_the_page_cache_budget(corpus, tiny_encoder, built, tmp_path,
                                                                        monkeypatch):
    """HNSW files are read front to back before FAISS opens them (its open checks the whole graph through the
    memory map, a page at a time from a cold cache); flat ones are not, and nothing is read beyond half of
    MemAvailable."""
    from unimir.index import dense

    hnsw = Index.build(corpus["pool"], tmp_path / "hnsw", encoder=tiny_encoder, index="HNSW8,SQ8")
    hnsw.add([Candidate("x:1", Modality.TEXT, "a red square")])  # a second segment
    graph_files = sorted((tmp_path / "hnsw").glob("seg-*/dense-*.faiss"))
    assert len(graph_files) >= 3
    read = []
    monkeypatch.setattr(dense, "_prefetch", read.append)
    Index.load(built.path, encoder=tiny_encoder)
    assert read == []
    want = [h.did for h in Index.load(tmp_path / "hnsw", encoder=tiny_encoder).search("a red square", k=5).hits]
    assert sorted(read) == graph_files
    sizes = sorted(p.stat().st_size for p in graph_files)
    for available, expected in ((None, 0), (0, 0), (2 * sizes[-1], 1), (2 * sum(sizes), len(sizes))):
        read.clear()
        monkeypatch.setattr(dense, "_memory_available", lambda: available)
        Index.load(tmp_path / "hnsw", encoder=tiny_encoder)
        assert len(read) == expected if expected in (0, len(sizes)) else 1 <= len(read) < len(sizes)
    monkeypatch.undo()  # the real read-ahead: the same index, the same results
    assert [h.did for h in Index.load(tmp_path / "hnsw", encoder=tiny_encoder).search("a red square", k=5).hits] == want


@pytest.mark.parametrize("factory", ["HNSW8", "HNSW8,SQ8", "HNSW8,PQ4x4"])
def test_hnsw_graph_end_is_where_the_storage_index_begins(tmp_path, factory):
    """The read-ahead's parse of FAISS's HNSW layout, against FAISS itself: what follows the graph is exactly the
    storage index as ``write_index`` writes it on its own. Other files and truncated ones give None."""
    from unimir.index import dense

    x = np.random.default_rng(0).standard_normal((600, 16)).astype(np.float32)
    index = faiss.index_factory(16, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    path = tmp_path / "part.faiss"
    faiss.write_index(index, str(path))
    end = dense._graph_end(path)
    storage = faiss.serialize_index(faiss.downcast_index(index).storage).tobytes()
    assert end is not None and path.read_bytes()[end:] == storage
    flat = tmp_path / "flat.faiss"
    faiss.write_index(faiss.index_factory(16, "SQfp16", faiss.METRIC_INNER_PRODUCT), str(flat))
    truncated = tmp_path / "cut.faiss"
    truncated.write_bytes(path.read_bytes()[:end // 2])
    assert dense._graph_end(flat) is None and dense._graph_end(truncated) is None
    dense._prefetch(path)  # the graph now, the storage on the background thread
    dense._READ_AHEAD.join()


def test_features_align_with_the_pool_records_when_bad_ones_are_skipped(corpus, built, tmp_path):
    """One features row per pool record: a skipped record skips its row (the others keep theirs), and a count
    that matches neither says how many were skipped; the CLI lists them either way."""
    lines = corpus["pool"].read_text().splitlines()
    bad = [3, 20]
    broken = list(lines)
    broken[3] = "{not json"
    broken[20] = broken[20].replace('"modality": "', '"modality": "x')
    (tmp_path / "pool.jsonl").write_text("\n".join(broken) + "\n")
    feats = built.features
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "image.npy", feats.image)
    np.save(tmp_path / "npy" / "text.npy", feats.text)
    proc = subprocess.run([sys.executable, "-m", "unimir", "--quiet", "index", str(tmp_path / "pool.jsonl"),
                           "--root", str(corpus["root"]), "--out", str(tmp_path / "byo"), "--features",
                           str(tmp_path / "npy"), "--encoder", built.manifest.encoder],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 0 and "indexed 34 items" in proc.stdout, proc.stderr
    assert "2 item(s) skipped" in proc.stderr and "pool.jsonl:4" in proc.stderr and "pool.jsonl:21" in proc.stderr
    index = Index.load(tmp_path / "byo", generative=False)
    keep = [i for i in range(len(lines)) if i not in bad]
    assert [c.did for c in index.candidates] == [built.candidates[i].did for i in keep]
    np.testing.assert_allclose(np.asarray(index.fused[np.arange(34)], np.float32),
                               np.asarray(built.fused[np.asarray(keep)], np.float32), atol=2e-3)
    np.save(tmp_path / "npy" / "image.npy", feats.image[:34])
    np.save(tmp_path / "npy" / "text.npy", feats.text[:34])
    proc = subprocess.run([sys.executable, "-m", "unimir", "--quiet", "index", str(tmp_path / "pool.jsonl"),
                           "--root", str(corpus["root"]), "--out", str(tmp_path / "byo2"), "--features",
                           str(tmp_path / "npy")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "2 item(s) skipped" in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"error: {tmp_path / 'npy'}: 34 rows for 36 pool records, 2 of "
                                                    "them skipped as bad (one row per record, in pool order)")
    assert not (tmp_path / "byo2").exists()


def test_two_writers_cannot_both_add_one_id(copy, tiny_encoder):
    """The id check is repeated under the directory lock after catching up: the first writer's item stays."""
    from unimir.data.problems import Problems

    other = Index.load(copy.path, encoder=tiny_encoder)  # a second writer (another process, in effect)
    other.add([Candidate("shared", Modality.TEXT, "from the other writer")])
    problems = Problems()
    added = copy.add([Candidate("shared", Modality.TEXT, "from this writer"),
                      Candidate("mine", Modality.TEXT, "only this writer")], problems=problems)
    assert added == 1 and "another writer added it meanwhile" in str(problems.items[0])
    reread = Index.load(copy.path, encoder=tiny_encoder)
    assert len(reread) == 38 and "other writer" in reread.get("shared").txt and reread.get("mine")
    with pytest.raises(InvalidInputError, match="duplicate candidate id 'mine'"):
        other.add([Candidate("mine", Modality.TEXT, "again")])  # strict by default


def test_check_reports_an_id_live_twice_and_compact_keeps_the_newest(copy, tiny_encoder):
    from unimir.encoders.base import Item
    from unimir.index.check import check_index

    feats, _ = copy.encoder.encode([Item("a second copy")], "candidate")
    copy._append([Candidate("10:3", Modality.TEXT, "a second copy")], feats, [None])  # what the old race left
    problems, _ = check_index(copy.path)
    assert len(problems) == 1 and "id '10:3' is live in rows 3 and 36" in problems[0]
    assert copy.compact() == 1
    assert copy.get("10:3").txt == "a second copy" and len(copy) == 36 and check_index(copy.path)[0] == []


def test_a_full_disk_leaves_the_index_unchanged_and_says_so_in_one_line(copy, tiny_encoder, monkeypatch, capsys,
                                                                        tmp_path):
    import errno

    from unimir.cli import main
    from unimir.index.dense import FaissStore

    def full(self, name, folder):
        (folder / "dense-0.faiss").write_bytes(b"x" * 1000)  # what got written before the disk filled up
        raise RuntimeError("Error in faiss::write_index: write error (No space left on device)")

    before = _files(copy.path)
    monkeypatch.setattr(FaissStore, "write_segment", full)
    with pytest.raises(OSError) as err:
        copy.add([Candidate("new:1", Modality.TEXT, "a small orange star")])
    assert err.value.errno == errno.ENOSPC and "the index is unchanged" in str(err.value)
    assert _files(copy.path) == before and not list(copy.path.glob(".seg-*"))  # its own temporary folder removed
    assert len(Index.load(copy.path, encoder=tiny_encoder)) == 36 and "new:1" not in copy.row_of
    (tmp_path / "more.txt").write_text("a small orange star\n")
    monkeypatch.setenv("UNIMIR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("unimir.index.index.Index.load", lambda *a, **k: copy)
    assert main(["--quiet", "add", str(copy.path), str(tmp_path / "more.txt")]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert err_lines[-1].startswith("error: ") and "no space left on device" in err_lines[-1]
    assert _files(copy.path) == before


def test_a_handle_opened_before_other_writers_deletes_and_compacts_only_what_it_names(copy, tiny_encoder):
    """Deletes resolve ids and compaction runs against the directory's latest version, under its lock."""
    ids = [c.did for c in copy.candidates]
    stale = Index.load(copy.path, encoder=tiny_encoder)
    copy.delete([ids[0]])
    copy.compact()  # rows move up by one
    assert stale.delete([ids[2]]) == 1
    on_disk = [c.did for c in Index.load(copy.path, encoder=tiny_encoder).candidates]
    assert on_disk == [d for d in ids if d not in (ids[0], ids[2])]
    stale2 = Index.load(copy.path, encoder=tiny_encoder)
    copy.add([Candidate("late:1", Modality.TEXT, "added by another writer")])
    copy.delete([ids[5]])
    assert stale2.delete(["late:1"]) == 1  # known only after catching up
    stale2.compact()
    on_disk = [c.did for c in Index.load(copy.path, encoder=tiny_encoder).candidates]
    assert on_disk == [d for d in ids if d not in (ids[0], ids[2], ids[5])]


def test_deletes_kept_in_memory_are_written_by_the_next_commit(copy, tiny_encoder):
    ids = [c.did for c in copy.candidates]
    assert copy.delete(ids[1], save=False) == 1  # one id as a plain string, not its characters
    other = Index.load(copy.path, encoder=tiny_encoder)
    other.delete([ids[0]])
    other.compact()  # moves every row before the pending delete is committed
    copy.add(c for c in [Candidate("gen:1", Modality.TEXT, "from a generator")])
    reread = Index.load(copy.path, encoder=tiny_encoder)
    assert [c.did for c in reread.candidates] == ids[2:] + ["gen:1"] and len(reread) == 35
    copy.delete([ids[3]], save=False)
    copy.save()
    assert len(Index.load(copy.path, encoder=tiny_encoder)) == 34


def test_python_api_inputs_are_checked_like_pool_files(copy, tmp_path):
    from unimir.data.problems import Problems

    problems = Problems()
    bad = [Candidate("x:1", Modality.IMAGE, "text only"), Candidate("", Modality.TEXT, "empty id"),
           Candidate("x:2", Modality.TEXT, "outside", "../elsewhere.png"), "not a candidate",
           Candidate("x\n3", Modality.TEXT, "a newline in the id")]
    good = Candidate("x:4", "text", "modality as a string")
    assert copy.add(bad + [good], problems=problems) == 1 and len(problems) == 5
    assert copy.get("x:4").modality is Modality.TEXT
    hits = copy.search("a red circle", k=np.int64(3), modality="text").hits
    assert len(hits) == 3
    for kwargs, message in ((dict(text="peng\ud800uin"), "not valid UTF-8"), (dict(text=5), "must be a string"),
                            (dict(text="x", instruction=5), "must be a string"),
                            (dict(image=np.zeros(3)), "image must be")):
        with pytest.raises(InvalidInputError, match=message):
            copy.search(**kwargs)


def test_safetensors_features_without_masks(corpus, built, tmp_path, tiny_encoder):
    feats = built.features
    save_file({"image": feats.image.astype(np.float16), "text": feats.text.astype(np.float16)},
              str(tmp_path / "f.safetensors"))
    index = Index.build(corpus["pool"], tmp_path / "idx", encoder=tiny_encoder, features=tmp_path / "f.safetensors")
    assert len(index) == 36 and index.modality_counts() == built.modality_counts()
