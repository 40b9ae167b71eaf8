import json
from pathlib import Path

import pytest

from unimir.data.ingest import load_pool
from unimir.data.mbeir import (
    InstructionTable,
    format_text,
    query_text,
    read_candidates,
    read_qrels,
    read_queries,
    write_jsonl,
    write_qrels,
)
from unimir.data.problems import Problems
from unimir.data.records import Candidate, Modality, parse_modalities
from unimir.errors import DataError, InvalidInputError, NotFoundError


def test_candidates_and_queries_round_trip(corpus, tmp_path):
    cands = read_candidates(corpus["pool"])
    assert len(cands) == 36 and {c.modality for c in cands} == {Modality.IMAGE, Modality.TEXT}
    write_jsonl(tmp_path / "pool.jsonl", cands)
    assert read_candidates(tmp_path / "pool.jsonl") == cands
    queries = read_queries(corpus["t2i"])
    write_jsonl(tmp_path / "q.jsonl", queries)
    assert read_queries(tmp_path / "q.jsonl") == queries
    write_qrels(tmp_path / "qrels.txt", queries)
    assert read_qrels(tmp_path / "qrels.txt") == {q.qid: set(q.pos_cand_list) for q in queries}
    assert read_qrels(corpus["qrels_t2i"]) == {q.qid: set(q.pos_cand_list) for q in queries}


def _write(tmp_path, lines, name="pool.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"did": "1:1", "txt": "a cat", "img_path": None, "modality": "text"})


@pytest.mark.parametrize("bad, needle", [
    ('{"did": "1:2", "txt": "x", "modality": "text"', "malformed JSON"),
    (json.dumps({"did": "1:2", "txt": "x", "modality": "video"}), "unknown modality 'video'"),
    (json.dumps({"did": "1:2", "txt": "x", "modality": "image"}), "does not match"),
    (json.dumps({"did": "1:1", "txt": "again", "modality": "text"}), "duplicate candidate id '1:1'"),
    (json.dumps({"did": "1:2", "modality": "text"}), "needs 'txt', 'img_path' or both"),
    (json.dumps({"txt": "no id", "modality": "text"}), "missing candidate id"),
])
def test_validation_errors_name_file_line_and_reason(tmp_path, bad, needle):
    path = _write(tmp_path, [GOOD, bad])
    with pytest.raises(DataError) as err:
        read_candidates(path, Problems(strict=True))
    assert needle in str(err.value) and f"{path}:2" in str(err.value)
    problems = Problems()  # lenient: the bad line is skipped and reported, the good one kept
    assert [c.did for c in read_candidates(path, problems)] == ["1:1"]
    assert len(problems) == 1 and problems.items[0].line == 2 and needle in str(problems.items[0])


def test_missing_file_is_not_found(tmp_path):
    with pytest.raises(NotFoundError):
        read_queries(tmp_path / "nope.jsonl")


def test_query_validation(tmp_path):
    bad = json.dumps({"qid": "1:1", "query_txt": "x", "query_modality": "text", "task_id": 12})
    with pytest.raises(DataError, match="task_id must be an integer 0..8"):
        read_queries(_write(tmp_path, [bad], "q.jsonl"))


def test_modality_parsing():
    assert Modality.parse("image,text") is Modality.IMAGE_TEXT and Modality.parse("text, image") is Modality.IMAGE_TEXT
    assert [m.code for m in Modality] == [0, 1, 2] and Modality.from_code(2) is Modality.IMAGE_TEXT
    assert parse_modalities("image|text") == (Modality.IMAGE, Modality.TEXT) and parse_modalities(None) is None
    with pytest.raises(InvalidInputError, match="unknown modality"):
        Modality.parse("audio")


def test_instructions_are_deterministic_and_formatted(corpus):
    table = InstructionTable.load(corpus["instructions"])
    picks = {table.choose(f"10:{i}", 10, Modality.TEXT, Modality.IMAGE) for i in range(40)}
    assert picks == {"Find an image of the shape.", "Show me a picture of this shape."}
    again = InstructionTable.load(corpus["instructions"])
    assert [table.choose(f"10:{i}", 10, Modality.TEXT, Modality.IMAGE) for i in range(20)] == \
        [again.choose(f"10:{i}", 10, Modality.TEXT, Modality.IMAGE) for i in range(20)]
    assert table.choose("10:1", 3, Modality.TEXT, Modality.IMAGE) is None  # no row for that dataset
    assert query_text("red circle", "Find an image of the shape.") == "Find an image of the shape. red circle."
    assert query_text(None, "describe this") == "Describe this."
    assert format_text(' "hello world"\r ') == "Hello world." and format_text("why?") == "Why?"


def test_ingest_image_folder_with_captions(tmp_path):
    from conftest import draw

    (tmp_path / "pics" / "sub").mkdir(parents=True)
    draw("red", "circle").save(tmp_path / "pics" / "a.png")
    draw("blue", "square").save(tmp_path / "pics" / "sub" / "b.jpg")
    (tmp_path / "pics" / "notes.md").write_text("not an image")
    (tmp_path / "pics" / "captions.tsv").write_text("file\tcaption\na.png\ta red ball\n")
    cands, root = load_pool(tmp_path / "pics")
    assert root == (tmp_path / "pics").resolve()
    assert cands == [Candidate("a.png", Modality.IMAGE_TEXT, "a red ball", "a.png"),
                     Candidate("sub/b.jpg", Modality.IMAGE, None, "sub/b.jpg")]


@pytest.mark.parametrize("name, body", [
    ("texts.jsonl", '{"id": "t1", "text": "first"}\n{"id": "t2", "text": "second"}\n{"id": "t3"}\n'),
    ("texts.csv", "id,text\nt1,first\nt2,second\nt3,\n"),
])
def test_ingest_text_files_skip_rows_without_text(tmp_path, name, body):
    (tmp_path / name).write_text(body)
    problems = Problems()
    cands, _ = load_pool(tmp_path / name, problems=problems)
    assert [(c.did, c.txt, c.modality) for c in cands] == [("t1", "first", Modality.TEXT),
                                                           ("t2", "second", Modality.TEXT)]
    assert len(problems) == 1 and "t3" in str(problems.items[0])


def test_mbeir_pool_root_is_above_cand_pool(corpus):
    cands, root = load_pool(corpus["pool"])
    assert root == corpus["root"].resolve() and (root / cands[0].img_path).is_file()


def test_pixel_bomb_is_too_large_without_a_warning(tmp_path):
    import io
    import warnings

    from PIL import Image

    from unimir.data.images import open_image
    from unimir.errors import InvalidInputError

    for side in (8100, 12000):  # between 1x and 2x Pillow's limit (it only warns there), and over 2x (it raises)
        buf = io.BytesIO()
        Image.new("1", (side, side)).save(buf, "PNG")
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with pytest.raises(InvalidInputError, match=f"image too large \\({side * side:,} pixels"):
                open_image(buf.getvalue(), name="bomb.png")
        assert not seen, [str(w.message) for w in seen]


def test_text_files_decode_line_by_line(tmp_path):
    from unimir.data.ingest import load_pool
    from unimir.data.textio import id_problem

    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbfid,text\na,caf\xc3\xa9\nb,caf\xe9\nc,\"two\nlines\"\n")
    problems = Problems()
    candidates, _ = load_pool(path, problems=problems)
    assert [(c.did, c.txt) for c in candidates] == [("a", "café"), ("c", "two\nlines")]  # BOM stripped
    assert [(p.line, "not valid UTF-8" in p.message) for p in problems.items] == [(3, True)]
    assert id_problem(True) and id_problem(1.5) and id_problem("a\tb") and id_problem("..")
    assert id_problem("10:1") is None and id_problem(7) is None and id_problem("cats/a b.png") is None


def test_inside_root_check_matches_a_full_resolve(tmp_path):
    """The cached-folder check that keeps reading a large pool fast agrees with resolving every path in full."""
    from unimir.data.ingest import _is_within

    root = (tmp_path / "root")
    (root / "a" / "b").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.png").write_bytes(b"x")
    (root / "a" / "in.png").write_bytes(b"x")
    (root / "a" / "out.png").symlink_to(tmp_path / "elsewhere" / "x.png")
    (root / "a" / "inlink.png").symlink_to(root / "a" / "in.png")
    (root / "linkdir").symlink_to(tmp_path / "elsewhere")
    (root / "a" / "up").symlink_to(root)
    paths = ["a/in.png", "a/out.png", "a/inlink.png", "linkdir/x.png", "a/up/a/in.png", "../elsewhere/x.png",
             "a/../a/in.png", "a/b/../../../root/a/in.png", "a/b/..", "missing/file.png", "a/.", "..", ".",
             str(root / "a" / "in.png"), "a/b/../../../rootx/a.png"]
    root = root.resolve()
    cache: dict[str, str] = {}
    for p in paths * 2:  # the second pass reads the cache
        target = (root / p).resolve()
        slow = not Path(p).is_absolute() and (target == root or root in target.parents)
        assert _is_within(root, p, cache) == slow, p


@pytest.mark.parametrize("name, body, kept, total", [
    ("pool.jsonl", '{"did": "1:1", "modality": "text", "txt": "a"}\n\n{broken\n'
                   '{"did": "1:1", "modality": "text", "txt": "again"}\n'
                   '{"did": "1:4", "modality": "txet", "txt": "b"}\n'
                   '{"did": "1:5", "modality": "text", "txt": "c"}\n', ["1:1", "1:5"], 5),
    ("texts.jsonl", '{"id": "t1", "text": "a"}\n[1]\n\n{"id": "t1", "text": "dup"}\n{"id": "t4", "text": "b"}\n',
     ["t1", "t4"], 4),
    ("texts.csv", "id,text\nt1,a\nt2,\n\nt3,b\n", ["t1", "t3"], 3),
    ("texts.txt", "a\n\n  \nb\n", ["texts:1", "texts:4"], 2),
])
def test_read_pool_says_where_each_kept_record_lies(tmp_path, name, body, kept, total):
    """Features computed elsewhere have one row per record of the source, bad ones included: the positions of
    the kept records (blank lines are not records) are what aligns them."""
    from unimir.data.ingest import read_pool

    (tmp_path / name).write_text(body)
    pool = read_pool(tmp_path / name, problems=Problems())
    assert [c.did for c in pool.candidates] == kept and pool.positions.total == total
    last = total - 1
    assert list(pool.positions.rows) == {"pool.jsonl": [0, 4], "texts.jsonl": [0, last], "texts.csv": [0, last],
                                   "texts.txt": [0, last]}[name]


def test_read_pool_positions_of_an_image_folder_skip_images_outside_the_root(tmp_path):
    from conftest import draw

    from unimir.data.ingest import read_pool

    (tmp_path / "pics").mkdir()
    for name in ("a.png", "c.png"):
        draw("red", "circle").save(tmp_path / "pics" / name)
    draw("blue", "square").save(tmp_path / "elsewhere.png")
    (tmp_path / "pics" / "b.png").symlink_to(tmp_path / "elsewhere.png")
    problems = Problems()
    pool = read_pool(tmp_path / "pics", problems=problems)
    assert [c.did for c in pool.candidates] == ["a.png", "c.png"] and len(problems) == 1
    assert (list(pool.positions.rows), pool.positions.total) == ([0, 2], 3)


def test_the_mbeir_root_is_found_from_a_path_typed_inside_cand_pool(corpus, monkeypatch):
    monkeypatch.chdir(corpus["pool"].parent)
    cands, root = load_pool(corpus["pool"].name)
    assert root == corpus["root"].resolve() and (root / cands[0].img_path).is_file()


def test_extra_cells_and_broken_links_are_reported_not_dropped_silently(tmp_path):
    from conftest import draw

    (tmp_path / "t.tsv").write_text("id\ttext\na\tfirst\nb\tsecond\twith a tab\nc\tthird\n")
    problems = Problems()
    cands, _ = load_pool(tmp_path / "t.tsv", problems=problems)
    assert [c.did for c in cands] == ["a", "c"] and "3 cells for the header's 2 columns" in str(problems.items[0])
    assert problems.items[0].line == 3
    (tmp_path / "pics").mkdir()
    draw("red", "circle").save(tmp_path / "pics" / "a.png")
    (tmp_path / "pics" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    problems = Problems()
    cands, _ = load_pool(tmp_path / "pics", problems=problems)
    assert [c.did for c in cands] == ["a.png"] and "does not exist" in str(problems.items[0])


def test_a_captions_file_without_a_header_is_reported_not_half_read(tmp_path):
    from conftest import draw

    (tmp_path / "pics").mkdir()
    for name in ("owl.png", "bee.png"):
        draw("red", "circle").save(tmp_path / "pics" / name)
    (tmp_path / "pics" / "captions.tsv").write_text("owl.png\tan owl\nbee.png\ta bee\n")
    problems = Problems()
    cands, _ = load_pool(tmp_path / "pics", problems=problems)
    assert [c.txt for c in cands] == [None, None] and "must be a header" in str(problems.items[0])
    (tmp_path / "pics" / "captions.tsv").write_text("file\tcaption\nowl.png\tan owl\nbee.png\ta bee\n")
    cands, _ = load_pool(tmp_path / "pics", problems=Problems())
    assert sorted(c.txt for c in cands) == ["a bee", "an owl"]
