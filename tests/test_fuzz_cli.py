"""Bad input through the real command line: one clear `error:` line and exit code 2, or a skip report and exit 0
for items a long job can skip, never a traceback (issue 8's fuzz campaign, one case per bad input).

Each case writes its input under tmp_path and returns (argv, expected outcome, strings the output must name).
Run with ``-s`` to print the input -> outcome table.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ERROR, SKIP, OK = "error", "skip", "ok"
CASES: dict[str, object] = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def run_cli(*args, cwd=None, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    argv = [a if isinstance(a, bytes) else os.fsencode(str(a)) for a in args]  # bytes: raw, maybe not UTF-8
    return subprocess.run([sys.executable, "-m", "unimir", "--quiet", *argv], capture_output=True, cwd=cwd, env=env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def env(corpus, tmp_path_factory):
    """A small index of the shapes corpus, built once through the Python API. The builtin encoder, because it is
    what a new user runs and the quickest to start: every case is a fresh process."""
    from unimir import Index

    out = tmp_path_factory.mktemp("fuzz") / "idx"
    index = Index.build(corpus["pool"], out, encoder="builtin")
    return {"index": out, "corpus": corpus, "encoder": "builtin", "max_tokens": index.encoder.max_text_tokens}


def _pool(tmp: Path, env, name: str, data: bytes, *extra):
    path = tmp / name
    path.write_bytes(data)
    return ["index", path, "--out", tmp / "out", "--encoder", env["encoder"], *extra]


def _query(qid: str, **fields) -> dict:
    return {"qid": qid, "query_txt": "red circle", "query_img_path": None, "query_modality": "text",
            "pos_cand_list": ["10:0"], "neg_cand_list": [], "task_id": 0, **fields}


def _jsonl(rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def _eval(tmp: Path, env, queries: bytes, *extra):
    path = tmp / "q.jsonl"
    path.write_bytes(queries)
    return ["eval", env["index"], "--queries", path, "--root", env["corpus"]["root"], *extra]


GOOD_TEXT = {"id": "a", "text": "a red circle"}
GOOD_CAND = {"did": "1", "txt": "a red circle", "img_path": None, "modality": "text"}


# --- text encodings ------------------------------------------------------------------------------------------

@case
def non_utf8_in_text_jsonl(tmp, env):
    return _pool(tmp, env, "t.jsonl", _jsonl([GOOD_TEXT, b'{"id": "b", "text": "caf\xe9"}'])), SKIP, \
        ["t.jsonl:2", "not valid UTF-8 (byte 0xe9"]


@case
def non_utf8_in_mbeir_pool(tmp, env):
    return _pool(tmp, env, "pool.jsonl", _jsonl([GOOD_CAND, b'{"did": "2", "txt": "\xff", "modality": "text"}'])), \
        SKIP, ["pool.jsonl:2", "not valid UTF-8"]


@case
def non_utf8_in_csv(tmp, env):
    return _pool(tmp, env, "t.csv", b"id,text\na,a red circle\nb,caf\xe9\n"), SKIP, ["t.csv:3", "not valid UTF-8"]


@case
def non_utf8_in_txt(tmp, env):
    return _pool(tmp, env, "t.txt", b"a red circle\n\xff\xfe oops\n"), SKIP, ["t.txt:2", "not valid UTF-8"]


@case
def non_utf8_in_query_file(tmp, env):
    return _eval(tmp, env, _jsonl([_query("10:0"), b'{"qid": "10:2", "query_txt": "\xe9"}'])), SKIP, \
        ["q.jsonl:2", "not valid UTF-8"]


@case
def non_utf8_in_qrels(tmp, env):
    qrels = tmp / "qrels.txt"
    qrels.write_bytes(b"10:0 0 10:0 1 0\n10:2 0 10:\xff 1 0\n")
    return _eval(tmp, env, _jsonl([_query("10:0")]), "--qrels", qrels), ERROR, ["qrels.txt:2", "not valid UTF-8"]


@case
def non_utf8_in_instructions_tsv(tmp, env):
    tsv = tmp / "instr.tsv"
    tsv.write_bytes(b"query_modality\tcand_modality\tdataset_name\tdataset_id\tprompt_1\n"
                    b"text\timage\tshapes\t10\tFind an image.\ntext\ttext\tshapes\t10\tFind caf\xe9.\n")
    return _eval(tmp, env, _jsonl([_query("10:0")]), "--instructions", tsv), ERROR, ["instr.tsv:3", "UTF-8"]


@case
def lone_surrogate_in_json(tmp, env):
    bad = b'{"did": "2", "txt": "bad \\ud800 text", "modality": "text"}'
    return _pool(tmp, env, "pool.jsonl", _jsonl([GOOD_CAND, bad])), SKIP, \
        ["pool.jsonl:2", "field 'txt'", "not valid Unicode"]


@case
def utf8_bom_is_accepted(tmp, env):
    return _pool(tmp, env, "pool.jsonl", b"\xef\xbb\xbf" + _jsonl([GOOD_CAND, {**GOOD_CAND, "did": "2"}])), OK, \
        ["indexed 2 items"]


@case
def undecodable_text_argument(tmp, env):
    return ["search", env["index"], "--text", b"\xff"], ERROR, ["--text", "not valid UTF-8", "0xff"]


@case
def csv_unterminated_quote(tmp, env):
    return _pool(tmp, env, "t.csv", b'id,text\na,a red circle\nb,"never closed\nc,swallowed\nd,too\n'), ERROR, \
        ["t.csv:3", "never closed"]


# --- ids and fields ------------------------------------------------------------------------------------------

@case
def did_true(tmp, env):
    return _pool(tmp, env, "pool.jsonl", _jsonl([GOOD_CAND, {**GOOD_CAND, "did": True}])), SKIP, \
        ["pool.jsonl:2", "field 'did'", "got bool true"]


@case
def did_float(tmp, env):
    return _pool(tmp, env, "pool.jsonl", _jsonl([GOOD_CAND, {**GOOD_CAND, "did": 1.5}])), SKIP, \
        ["pool.jsonl:2", "got float 1.5"]


@case
def id_with_newline(tmp, env):
    return _pool(tmp, env, "pool.jsonl", _jsonl([GOOD_CAND, {**GOOD_CAND, "did": "a\nb"}])), SKIP, \
        ["pool.jsonl:2", "contains a newline"]


@case
def id_that_a_url_path_drops(tmp, env):
    return _pool(tmp, env, "t.jsonl", _jsonl([GOOD_TEXT, {"id": "..", "text": "x"}])), SKIP, \
        ["t.jsonl:2", "cannot round-trip through a URL path"]


@case
def whitespace_only_text(tmp, env):
    return _pool(tmp, env, "pool.jsonl", _jsonl([GOOD_CAND, {**GOOD_CAND, "did": "2", "txt": "  \t "}])), SKIP, \
        ["pool.jsonl:2", "only whitespace"]


@case
def whitespace_only_csv_row(tmp, env):
    return _pool(tmp, env, "t.csv", b"id,text\na,a red circle\nb,   \n"), SKIP, ["t.csv:3", "only whitespace"]


@case
def over_long_texts_noted_once(tmp, env):
    long = " ".join(["red"] * (env["max_tokens"] + 10))  # one token a word
    return _pool(tmp, env, "t.jsonl", _jsonl([GOOD_TEXT, {"id": "b", "text": long}, {"id": "c", "text": long}])), \
        OK, [f"note: 2 text(s) longer than the encoder's {env['max_tokens']} tokens were truncated"]


# --- images --------------------------------------------------------------------------------------------------

def _image_pool(tmp: Path, env, img_path: str, *extra):
    rows = [GOOD_CAND, {"did": "2", "txt": None, "img_path": img_path, "modality": "image"}]
    return _pool(tmp, env, "pool.jsonl", _jsonl(rows), "--root", tmp / "root", *extra)


@case
def pixel_bomb_between_1x_and_2x_the_limit(tmp, env):
    (tmp / "root").mkdir()
    Image.new("1", (8100, 8100)).save(tmp / "root" / "bomb.png")  # 65.6 M pixels, a few KB on disk
    return _image_pool(tmp, env, "bomb.png"), SKIP, ["bomb.png", "image too large", "65,610,000 pixels"]


@case
def pixel_bomb_over_2x_the_limit(tmp, env):
    (tmp / "root").mkdir()
    Image.new("1", (12000, 12000)).save(tmp / "root" / "bomb.png")
    return _image_pool(tmp, env, "bomb.png"), SKIP, ["image too large"]


@case
def image_path_with_dotdot(tmp, env):
    (tmp / "root").mkdir()
    Image.new("RGB", (8, 8)).save(tmp / "x.png")
    return _image_pool(tmp, env, "../x.png"), SKIP, ["'../x.png' leaves the data root", "--allow-outside-root"]


@case
def absolute_image_path(tmp, env):
    (tmp / "root").mkdir()
    Image.new("RGB", (8, 8)).save(tmp / "x.png")
    return _image_pool(tmp, env, str(tmp / "x.png")), SKIP, ["leaves the data root"]


@case
def symlink_pointing_outside_the_root(tmp, env):
    (tmp / "root").mkdir()
    Image.new("RGB", (8, 8)).save(tmp / "x.png")
    (tmp / "root" / "link.png").symlink_to(tmp / "x.png")
    return _image_pool(tmp, env, "link.png"), SKIP, ["'link.png' leaves the data root"]


@case
def outside_root_allowed_explicitly(tmp, env):
    (tmp / "root").mkdir()
    Image.new("RGB", (8, 8)).save(tmp / "x.png")
    return _image_pool(tmp, env, "../x.png", "--allow-outside-root"), OK, ["indexed 2 items (1 image, 1 text)"]


@case
def symlink_in_image_folder(tmp, env):
    (tmp / "photos").mkdir()
    Image.new("RGB", (8, 8)).save(tmp / "photos" / "in.png")
    Image.new("RGB", (8, 8)).save(tmp / "x.png")
    (tmp / "photos" / "out.png").symlink_to(tmp / "x.png")
    return ["index", tmp / "photos", "--out", tmp / "out", "--encoder", env["encoder"]], SKIP, \
        ["'out.png' leaves the data root"]


# --- evaluation and training ---------------------------------------------------------------------------------

def _twelve_queries(corpus_root: Path) -> bytes:
    """3 good queries and 9 bad ones, one per way a query gets dropped."""
    rows = [_query("10:0"), _query("10:2", query_txt="green circle", pos_cand_list=["10:6"]),
            _query("10:4", query_txt="blue circle", pos_cand_list=["10:12"]),
            _query("10:100", task_id=42),                                   # unknown task id
            _query("10:101", pos_cand_list="10:0"),                         # a string, not a list
            _query("10:0"),                                                 # duplicate qid
            b'{"qid": "10:103", "query_txt": ',                             # truncated line
            b"[1, 2, 3]",                                                   # not an object
            _query("10:104", pos_cand_list=[]),                             # no positives
            _query("10:105", query_img_path="mbeir_images/shapes/missing.png", query_modality="image,text"),
            _query("10:106", query_img_path=os.path.relpath("/etc/passwd", corpus_root),  # a file, not an image
                   query_modality="image,text"),
            _query("10:107", query_txt="\ud800")]                           # lone surrogate
    return _jsonl(rows)


@case
def eval_reports_dropped_queries(tmp, env):
    return _eval(tmp, env, _twelve_queries(env["corpus"]["root"]), "--json", tmp / "r.json"), SKIP, \
        ["9 of 12 queries were dropped", "task_id must be an integer 0..8", "expected a list of candidate ids",
         "duplicate query id", "malformed JSON", "query has no positives", "image file not found",
         "cannot decode image", "not valid Unicode"]


def _check_dropped_json(tmp: Path, stdout: str) -> None:
    body = json.loads((tmp / "r.json").read_text())
    assert body["dropped_queries"] == 9 and sum(r["dropped_queries"] for r in body["results"]) == 9
    assert len(body["problems"]) == 9
    assert all(re.match(r".+\.jsonl:\d+( \[|: )", p) for p in body["problems"]), body["problems"]  # file and line
    assert "dropped" in stdout.splitlines()[0]  # the table's column


@case
def eval_with_every_query_dropped(tmp, env):
    return _eval(tmp, env, _jsonl([_query("10:0", task_id=9), b"{oops"])), ERROR, ["no query could be evaluated"]


@case
def qrels_with_relevance_zero(tmp, env):
    qrels = tmp / "qrels.txt"
    qrels.write_text("10:0 0 10:0 1 0\n10:2 0 10:6 0 0\n10:2 0 10:8 -1 0\n")
    queries = _jsonl([_query("10:0"), _query("10:2", query_txt="green circle")])
    return _eval(tmp, env, queries, "--qrels", qrels), SKIP, \
        ["2 row(s) of", "have relevance <= 0 and were ignored", "all have relevance <= 0"]


@case
def eval_json_path_that_cannot_be_written(tmp, env):
    return _eval(tmp, env, _jsonl([_query("10:0")]), "--json", tmp / "no-such-dir" / "r.json"), ERROR, \
        ["--json", "does not exist"]


@case
def eval_runs_path_that_is_a_file(tmp, env):
    (tmp / "runs").write_text("a file\n")
    return _eval(tmp, env, _jsonl([_query("10:0")]), "--runs", tmp / "runs" / "sub"), ERROR, \
        ["--runs", "a file is in the way"]


# --- flags ---------------------------------------------------------------------------------------------------

def _train(env, *extra):
    return ["train", env["index"], "--queries", env["corpus"]["t2i"], *extra]


@case
def negative_batch_size(tmp, env):
    return _pool(tmp, env, "t.txt", b"x\n", "--batch-size", "-1"), ERROR, ["--batch-size", "must be >= 1, got -1"]


@case
def negative_threads(tmp, env):
    return ["--threads", "-3", "info", env["index"]], ERROR, ["--threads", "must be >= 1, got -3"]


@case
def negative_learning_rate(tmp, env):
    return _train(env, "--lr", "-1"), ERROR, ["--lr", "must be a positive number"]


@case
def unknown_device(tmp, env):
    return _train(env, "--device", "tpu"), ERROR, ["--device", "unknown device 'tpu'"]


@case
def cuda_device_without_cuda(tmp, env):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    return _train(env, "--device", "cuda"), ERROR, ["sees no CUDA GPU"]


@case
def fusion_weights_zero(tmp, env):
    return _pool(tmp, env, "t.txt", b"x\n", "--fusion-weights", "0,0"), ERROR, ["--fusion-weights", "not both 0"]


@case
def fusion_weights_nan(tmp, env):
    return _pool(tmp, env, "t.txt", b"x\n", "--fusion-weights", "nan,1"), ERROR, ["--fusion-weights", "finite"]


@case
def beams_zero(tmp, env):
    return ["search", env["index"], "--text", "x", "--beams", "0"], ERROR, ["--beams", "from 1 to 256, got 0"]


@case
def beams_over_the_limit(tmp, env):
    return ["eval", env["index"], "--queries", "q.jsonl", "--beams", "5000"], ERROR, ["from 1 to 256, got 5000"]


@case
def k_zero(tmp, env):
    return ["search", env["index"], "--text", "x", "--k", "0"], ERROR, ["--k", "from 1 to 1000, got 0"]


@case
def negative_seed(tmp, env):
    return _train(env, "--seed", "-1"), ERROR, ["--seed", "must be >= 0"]


@case
def resume_without_checkpoint_dir(tmp, env):
    return _train(env, "--resume"), ERROR, ["--resume", "--checkpoint-dir"]


@case
def port_out_of_range(tmp, env):
    return ["serve", env["index"], "--port", "99999"], ERROR, ["--port", "from 1 to 65535, got 99999"]


@case
def busy_port(tmp, env):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    env["_hold"] = sock  # closed by the test after the run
    return ["serve", env["index"], "--port", sock.getsockname()[1]], ERROR, ["already in use"]


@case
def unknown_option(tmp, env):
    return ["search", env["index"], "--txt", "x"], ERROR, ["unrecognized arguments: --txt"]


CHECKS = {"eval_reports_dropped_queries": _check_dropped_json}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_clear_line(name, env, tmp_path):
    argv, expected, needles = CASES[name](tmp_path, env)
    try:
        proc = run_cli(*argv, cwd=tmp_path)
    finally:
        held = env.pop("_hold", None)
        if held is not None:
            held.close()
    stdout = proc.stdout.decode("utf-8")
    stderr = proc.stderr.decode("utf-8")  # our messages are valid UTF-8 even when the input is not
    output = stdout + stderr
    print(f"\n| {name} | {expected}, exit {proc.returncode} | {_first_message(stderr, stdout)} |")
    assert "Traceback" not in output and "Warning" not in stderr, output
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    if expected == ERROR:
        assert proc.returncode == 2, output
        assert len(errors) == 1, stderr
        assert "serving" not in stdout
    else:
        assert proc.returncode == 0, output
        assert not errors, stderr
        if expected == SKIP:
            assert "skipped" in stderr or "dropped" in stderr, stderr
    for needle in needles:
        assert needle in (errors[0] if expected == ERROR else output), f"{needle!r} not in:\n{output}"
    if name in CHECKS:
        CHECKS[name](tmp_path, stdout)


def _first_message(stderr: str, stdout: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    shown = errors[0] if errors else next((line for line in lines if not line.endswith("skipped:")), stdout.strip())
    return shown.replace("|", "\\|")[:160]
