import json

import numpy as np
import pytest
from conftest import draw

from unimir import Index
from unimir.data.problems import Problems
from unimir.data.records import Candidate, Modality
from unimir.errors import DataError, IndexFormatError, InvalidInputError, NotFoundError
from unimir.index.dense import DenseSpec, FaissStore


@pytest.fixture(scope="module")
def built(corpus, tiny_encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "shapes"
    return Index.build(corpus["pool"], out, encoder=tiny_encoder)


def test_build_save_reload(built, tiny_encoder):
    again = Index.load(built.path, encoder=tiny_encoder)
    assert len(again) == len(built) == 36
    assert again.manifest.encoder == tiny_encoder.spec and again.manifest.modality_counts == {
        "image": 18, "text": 18, "image,text": 0}
    a = built.search("a red circle", k=5)
    b = again.search("a red circle", k=5)
    assert [h.did for h in a.hits] == [h.did for h in b.hits]
    np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], atol=2e-3)  # fp16 parts


def test_modality_filter(built):
    for modality in ("image", "text"):
        hits = built.search("a red circle", modality=modality, k=20).hits
        assert len(hits) == 18 and {h.modality for h in hits} == {modality}
    assert built.search("a red circle", modality="image,text", k=5).hits == []
    both = built.search("a red circle", modality=["image", "text"], k=36).hits
    assert len(both) == 36


def test_exclude_query_drops_identical_items(built, corpus):
    img = corpus["root"] / "mbeir_images/shapes/red_circle.png"
    plain = built.search(image=str(img), modality="image", k=3).hits
    assert plain[0].img_path == "mbeir_images/shapes/red_circle.png"
    filtered = built.search(image=str(img), modality="image", k=3, exclude_query=True).hits
    assert "mbeir_images/shapes/red_circle.png" not in [h.img_path for h in filtered] and len(filtered) == 3
    text_hits = built.search("a red circle", modality="text", k=2, exclude_query=True).hits
    assert "A red circle." not in [h.txt for h in text_hits]
    from unimir.index.index import MAX_K

    every = built.search(image=str(img), k=MAX_K, exclude_query=True).hits  # the largest k, searched deeper
    assert len(every) == len(built) - 1 and every[0].tie_group == 0
    assert [h.tie_group for h in every] == sorted(h.tie_group for h in every)


def test_ranking_without_renumbers_the_remaining_tie_groups():
    from unimir.ranking import Ranking

    r = Ranking(np.arange(6), np.array([5, 4, 4, 3, 3, 2], np.float32), np.array([0, 1, 1, 2, 2, 3]))
    left = r.without({0, 3})
    assert left.indices.tolist() == [1, 2, 4, 5] and left.tie_groups.tolist() == [0, 0, 1, 2]
    assert r.without(set()) is r and len(r.without(set(range(6)))) == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(text="  "), "empty query"),
    (dict(text="x", k=0), "k must be"),
    (dict(text="x", mode="telepathy"), "unknown mode"),
    (dict(text="x", mode="generative"), "needs a trained generative model"),
    (dict(text="x", modality="video"), "unknown modality"),
    (dict(image=b"not an image"), "cannot decode image"),
])
def test_bad_requests(built, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        built.search(**kwargs)


def test_add_without_rebuild_and_persist(corpus, tiny_encoder, tmp_path):
    index = Index.build(corpus["pool"], tmp_path / "idx", encoder=tiny_encoder)
    pic = tmp_path / "new.png"
    draw("blue", "circle", 40).save(pic)
    added = index.add([Candidate("new:1", Modality.IMAGE_TEXT, "a brand new blue circle", "new.png"),
                       Candidate("10:0", Modality.TEXT, "duplicate id")], root=tmp_path, problems=Problems())
    assert added == 1 and len(index) == 37
    hits = index.search("a brand new blue circle", modality="image,text", k=1).hits
    assert hits[0].did == "new:1"
    reloaded = Index.load(tmp_path / "idx", encoder=tiny_encoder)
    assert len(reloaded) == 37 and reloaded.get("new:1").txt == "A brand new blue circle."
    assert reloaded.image_path(reloaded.get("new:1")) == (tmp_path / "new.png").resolve()
    with pytest.raises(DataError, match="duplicate candidate id"):
        index.add([Candidate("new:1", Modality.TEXT, "again")])


def test_add_upload_stores_image_inside_index(built, tmp_path, tiny_encoder, corpus):
    index = Index.build(corpus["pool"], tmp_path / "idx", encoder=tiny_encoder)
    import io

    buf = io.BytesIO()
    draw("purple", "square", 40).save(buf, format="PNG")
    cand = index.add_upload(text="an uploaded purple square", image=buf.getvalue(), did="up:1")
    assert cand.img_path.startswith("index:media/") and index.image_path(cand).is_file()
    assert index.image_path(cand).parent == tmp_path / "idx" / "media"
    with pytest.raises(InvalidInputError, match="cannot decode"):
        index.add_upload(image=b"junk")
    assert "up:1" in Index.load(tmp_path / "idx", encoder=tiny_encoder).row_of


def test_bad_items_are_skipped_unless_strict(tmp_path, tiny_encoder, corpus):
    rows = [json.loads(x) for x in corpus["pool"].read_text().splitlines()[:4]]
    rows.append({"did": "bad:1", "img_path": "mbeir_images/shapes/missing.png", "modality": "image"})
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    problems = Problems()
    index = Index.build(pool, tmp_path / "idx", root=corpus["root"], encoder=tiny_encoder, problems=problems)
    assert len(index) == 4 and len(problems) == 2
    assert any("bad:1" in str(p) and "not found" in str(p) for p in problems.items)
    missing = next(p for p in problems.items if p.item == "bad:1")  # found by the encoder, located in the pool
    assert (missing.path, missing.line) == (str(pool), 5) and str(missing).startswith(f"{pool}:5 [bad:1]: ")
    with pytest.raises(DataError):
        Index.build(pool, tmp_path / "strict", root=corpus["root"], encoder=tiny_encoder,
                    problems=Problems(strict=True))
    assert not (tmp_path / "strict" / "manifest.json").exists()


def test_crash_mid_save_keeps_previous_index(corpus, tiny_encoder, tmp_path, monkeypatch):
    index = Index.build(corpus["pool"], tmp_path / "idx", encoder=tiny_encoder)
    before = (tmp_path / "idx" / "manifest.json").read_text()
    import unimir.index.index as index_module

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(index_module, "commit_manifest", crash)
    with pytest.raises(OSError):
        index.add([Candidate("late:1", Modality.TEXT, "arrives during a crash")])
    monkeypatch.undo()
    assert (tmp_path / "idx" / "manifest.json").read_text() == before
    survivor = Index.load(tmp_path / "idx", encoder=tiny_encoder)
    assert len(survivor) == 36 and "late:1" not in survivor.row_of
    survivor.add([Candidate("late:2", Modality.TEXT, "after the crash")])
    again = Index.load(tmp_path / "idx", encoder=tiny_encoder)
    assert len(again) == 37 and "late:2" in again.row_of and "late:1" not in again.row_of
    assert not [p for p in (tmp_path / "idx").iterdir() if p.name.endswith(".tmp")]


def test_load_errors(tmp_path, built):
    with pytest.raises(NotFoundError):
        Index.load(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexFormatError, match="not a unimir index"):
        Index.load(tmp_path / "empty")
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(built.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="format version 99"):
        Index.load(copy)


def test_dense_spec_round_trip():
    for spec in ("SQfp16", "Flat", "HNSW16;efSearch=32", "IVF64,PQ8;nprobe=8", "OPQ8,IVF64_HNSW32,PQ8", "HNSW32,SQ8"):
        assert DenseSpec.parse(spec).spec == spec
        assert DenseSpec.parse(DenseSpec.parse(spec).spec) == DenseSpec.parse(spec)
    assert DenseSpec.parse("flat").spec == "SQfp16"  # today's aliases
    assert DenseSpec.parse("hnsw").spec == "HNSW32;efSearch=64"
    assert DenseSpec.parse("hnsw16,ef128").spec == "HNSW16;efSearch=128"
    with pytest.raises(InvalidInputError, match="search parameter"):
        DenseSpec.parse("HNSW32;efSearch")
    with pytest.raises(InvalidInputError, match="FAISS cannot build"):
        FaissStore(8, "Nonsense99")
    with pytest.raises(InvalidInputError, match="needs at least 64 vectors"):
        FaissStore(8, "IVF64,Flat").train(np.zeros((10, 8), np.float32))


def _brute_force(vecs, codes, deleted, q, allowed, k):
    """The exact answer: every allowed, live row scoring at least the k-th best score."""
    mask = np.ones(len(vecs), bool) if allowed is None else np.isin(codes, allowed)
    mask[list(deleted)] = False
    scores = np.where(mask, vecs.astype(np.float64) @ q, -np.inf)
    kth = np.sort(scores)[::-1][min(k, mask.sum()) - 1]
    return mask, set(np.flatnonzero(scores >= kth - 1e-4))


@pytest.mark.parametrize("spec", ["flat", "Flat", "HNSW16;efSearch=64", "IVF8,Flat;nprobe=8", "HNSW16,SQ8",
                                  "IVF8,PQ4;nprobe=8"])
def test_dense_search_against_brute_force(spec, tmp_path):
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(300, 8)).astype(np.float32)
    vecs[100:140] = vecs[7]  # a large tie group
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs = vecs.astype(np.float16).astype(np.float32)  # what an fp16 store holds exactly
    codes = rng.integers(0, 3, 300).astype(np.int8)
    store = FaissStore(8, spec)
    store.train(vecs)
    store.add_segment("a", vecs[:150], codes[:150], 0)
    store.add_segment("b", vecs[150:], codes[150:], 150)  # a second segment keeps global rows
    store.write_segment("b", tmp_path)  # ... and is searched memory-mapped once persisted
    store.open_segment("b", tmp_path, 150, 150)
    deleted = {3, 120, 200}
    store.set_deleted(np.asarray(sorted(deleted)))
    queries = np.concatenate([vecs[7:8], rng.normal(size=(5, 8)).astype(np.float32)])
    exact = spec in ("flat", "Flat", "IVF8,Flat;nprobe=8")  # nprobe = nlist: every list is scanned
    for allowed in (None, (0,), (1, 2)):
        for q, r in zip(queries, store.search(queries, 10, [allowed] * len(queries))):
            mask, expected = _brute_force(vecs, codes, deleted, q, allowed, 10)
            assert set(r.indices.tolist()) <= set(np.flatnonzero(mask))  # modality filter and deletes: exact
            assert len(r) >= 10
            if exact:  # the top 10 plus every item tied with the 10th
                assert set(r.indices.tolist()) == expected
                assert np.all(np.diff(r.scores) <= 1e-6)


def test_dense_ties_are_returned_whole():
    vecs = np.tile(np.eye(4, dtype=np.float32)[0], (50, 1))
    store = FaissStore(4, "flat")
    store.add_segment("a", vecs, np.zeros(50, np.int8), 0)
    (r,) = store.search(vecs[:1], 5, [None])
    assert len(r) == 50 and len(set(r.tie_groups.tolist())) == 1


def test_a_data_root_that_is_not_a_folder_is_refused_at_load(built, tmp_path):
    from unimir.errors import NotFoundError

    for root in (tmp_path / "nowhere", built.path / "manifest.json"):
        with pytest.raises(NotFoundError, match="is not a folder"):
            Index.load(built.path, root=root)


def test_a_build_without_a_problems_sink_warns_about_what_it_skipped(tmp_path, tiny_encoder):
    from unimir.errors import UnimirWarning

    with pytest.warns(UnimirWarning, match=r"1 item\(s\) skipped .*duplicate candidate id 'a'"):
        index = Index.build([Candidate("a", Modality.TEXT, "one"), Candidate("a", Modality.TEXT, "two"),
                             Candidate("b", Modality.TEXT, "three")], encoder=tiny_encoder)
    assert len(index) == 2
    assert index.candidates[-1].did == "b" and index.candidates[0].did == "a"
    with pytest.raises(IndexError):
        index.candidates[2]
    with pytest.raises(InvalidInputError, match="index.get"):
        index.candidates["a"]
