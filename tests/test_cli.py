"""The real command line, run as a user would (a subprocess per command)."""

import json
import os
import subprocess
import sys

import pytest

from unimir.dirlock import LOCK_FILE


def unimir(*args, cwd=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "unimir", "--quiet", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"unimir {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def cli_index(corpus, tiny_clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "idx"
    proc = unimir("index", corpus["pool"], "--out", out, "--encoder", f"hf:{tiny_clip_dir}", "--index", "hnsw16")
    assert "indexed 36 items (18 image, 18 text)" in proc.stdout
    return out


def test_index_info_search_eval(cli_index, corpus, tmp_path):
    info = json.loads(unimir("info", cli_index).stdout)
    assert info["num_items"] == 36 and info["index_spec"] == "HNSW16;efSearch=64" and info["format_version"] == 3
    out = json.loads(unimir("search", cli_index, "--text", "a red circle", "--modality", "image", "--k", "3",
                            "--json").stdout)
    assert len(out["results"]) == 3 and {r["modality"] for r in out["results"]} == {"image"}
    assert set(out["timings_ms"]) == {"encode", "search", "total"}
    table = unimir("search", cli_index, "--image", corpus["root"] / "mbeir_images/shapes/red_circle.png",
                   "--instruction", "Find a caption for this image", "--modality", "text", "--k", "2").stdout
    assert "Find a caption for this image." in table and "text" in table
    proc = unimir("eval", cli_index, "--queries", corpus["t2i"], "--queries", corpus["i2t"], "--k", "1,5,10",
                  "--json", tmp_path / "r.json")
    assert "R@5" in proc.stdout and "rand@5" in proc.stdout
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert [(r["task_id"], r["mode"], r["num_queries"]) for r in results] == [(0, "dense", 18), (3, "dense", 18)]


def test_add_command(corpus, tiny_clip_dir, tmp_path):
    out = tmp_path / "idx"
    unimir("index", corpus["pool"], "--out", out, "--encoder", f"hf:{tiny_clip_dir}")
    texts = tmp_path / "more.csv"
    texts.write_text("id,text\nx1,a small orange star\nx2,\n")
    proc = unimir("add", out, texts)
    assert "added 1 items; the index now holds 37" in proc.stdout and "no text" in proc.stderr
    assert json.loads(unimir("info", out).stdout)["num_items"] == 37


def test_skipped_items_are_all_in_the_skipped_file_and_outputs_never_overwrite_inputs(corpus, tiny_clip_dir,
                                                                                       tmp_path):
    texts = tmp_path / "more.jsonl"
    rows = [{"id": f"t{i}", "text": "" if i % 2 else f"text {i}"} for i in range(30)]
    rows.append({"did": "1:1", "modality": "image", "img_path": "a.png", "txt": None})  # M-BEIR, after texts
    texts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "idx"
    proc = unimir("index", texts, "--out", out, "--encoder", f"hf:{tiny_clip_dir}", "--skipped", tmp_path / "s.jsonl")
    assert "16 item(s) skipped" in proc.stderr and f"... and 6 more (all in {tmp_path / 's.jsonl'})" in proc.stderr
    skipped = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(skipped) == 16 and skipped[0] == {"path": str(texts), "line": 2, "item": "t1", "message": skipped[0][
        "message"]} and "looks like an M-BEIR candidate" in skipped[-1]["message"]
    for flag in ("--skipped", "--json"):
        args = ("eval", out, "--queries", corpus["t2i"], flag, corpus["t2i"]) if flag == "--json" else \
            ("add", out, texts, flag, texts)
        proc = unimir(*args, check=False)
        assert proc.returncode == 2 and "is one of this command's input files" in proc.stderr, proc.stderr
    assert json.loads(corpus["t2i"].read_text().splitlines()[0])  # untouched


def test_errors_are_one_line_without_traceback(tmp_path, cli_index, corpus):
    proc = unimir("search", tmp_path / "missing", "--text", "x", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: index not found") and "Traceback" not in proc.stderr
    proc = unimir("search", cli_index, "--text", " ", check=False)
    assert proc.returncode == 2 and "empty query" in proc.stderr
    proc = unimir("search", cli_index, "--text", "x", "--mode", "generative", check=False)
    assert proc.returncode == 2 and "unimir train" in proc.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"did": "1", "txt": "ok", "modality": "text"}\n{"did": "2", "txt": "x", "modality": "sound"}\n')
    proc = unimir("index", bad, "--out", tmp_path / "o", "--strict", check=False)
    assert proc.returncode == 2 and f"{bad}:2" in proc.stderr and "unknown modality 'sound'" in proc.stderr


def test_train_then_search_and_eval_every_mode(corpus, tmp_path):
    """GENIUS through the real CLI: the generator overfits a toy pool, so its recall far exceeds random.

    (The builtin encoder sees these drawn shapes as near-identical images, so dense retrieval is at chance here;
    the generator learns the caption -> ID map anyway.)"""
    out = tmp_path / "idx"
    unimir("index", corpus["pool"], "--out", out)
    proc = unimir("--threads", "1", "train", out, "--queries", corpus["t2i"], "--quantizer", "M3+RQ2x8",
                  "--quantizer-epochs", "5", "--layers", "1", "--d-model", "64",  # small: this checks the CLI
                  "--epochs", "200", "--batch-size", "36", "--val-share", "0")
    assert "semantic IDs:" in proc.stdout and "modes now available: dense, generative, generative-rerank, quantize" \
        in proc.stdout
    assert "health of the quantizer:" in proc.stderr and "health of the generator:" in proc.stderr
    info_proc = unimir("info", out)  # JSON on stdout, the readable health report on stderr
    info = json.loads(info_proc.stdout)
    assert info["generative"]["quantizer"] == "C256+M3+RQ2x8" and info["generative"]["generator"] is True
    health = info["generative"]["health"]
    assert health["quantizer"]["items"] == 36 and len(health["quantizer"]["levels"]) == 3
    assert health["generator"]["train_exact_id_acc"] > 0.2 and "health of the generator" in info_proc.stderr
    hits = json.loads(unimir("search", out, "--text", "a red circle", "--modality", "image", "--mode", "generative",
                             "--k", "3", "--beams", "8", "--json").stdout)["results"]
    assert len(hits) == 3 and {h["modality"] for h in hits} == {"image"}  # the modality constraint on code 0
    proc = unimir("eval", out, "--queries", corpus["t2i"], "--mode", "dense,generative,generative-rerank,quantize",
                  "--json", tmp_path / "r.json", "--diagnose")
    assert "where generative recall is lost" in proc.stdout
    results = {r["mode"]: r for r in json.loads((tmp_path / "r.json").read_text())["results"]}
    assert set(results) == {"dense", "generative", "generative-rerank", "quantize"}
    generative = results["generative"]
    # 3x random (0.28 here) is the claim; the margin depends on how many of the near-identical shapes share an ID
    assert generative["recall"]["5"] >= 0.8 and generative["recall"]["5"] >= 3 * generative["random"]["5"]
    assert generative["recall"]["10"] == 1.0
    # added items get codes and a short index-time fine-tune: searched by their own text, they come back in the
    # generative top 5
    texts = tmp_path / "more.txt"
    added = ["a small orange star", "a large wooden boat", "a cup of hot tea"]
    texts.write_text("\n".join(added) + "\n")
    unimir("--threads", "1", "add", out, texts)
    for text in added:
        found = json.loads(unimir("search", out, "--text", text, "--modality", "text", "--mode", "generative",
                                  "--k", "5", "--json").stdout)["results"]
        assert text.capitalize() + "." in [h["txt"] for h in found], (text, found)
    # deferred: --no-refresh leaves the generator as it was until 'unimir train --stage index'
    late = tmp_path / "late.txt"
    late.write_text("a green paper kite\n")
    unimir("add", out, late, "--no-refresh")
    assert json.loads(unimir("info", out).stdout)["generative"]["learned_rows"] == 39
    proc = unimir("--threads", "1", "train", out, "--stage", "index")
    assert "taught the generator 1 items" in proc.stderr
    assert json.loads(unimir("info", out).stdout)["generative"]["learned_rows"] == 40
    proc = unimir("--threads", "1", "train", out, "--stage", "index")  # again: nothing new, nothing moves
    assert "nothing to refresh: the generator knows all 40 items" in proc.stderr
    found = json.loads(unimir("search", out, "--text", "a green paper kite", "--modality", "text", "--mode",
                              "generative", "--k", "5", "--json").stdout)["results"]
    assert "A green paper kite." in [h["txt"] for h in found]


def test_every_option_has_help_and_version():
    import argparse

    from unimir import __version__
    from unimir.cli import build_parser

    missing, seen = [], 0

    def walk(parser, prefix):
        nonlocal seen
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{prefix} {name}")
                continue
            if isinstance(action, argparse._HelpAction):
                continue
            seen += 1
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{prefix} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "unimir")
    assert seen > 60 and not missing, missing
    proc = unimir("--version")
    assert proc.stdout.strip() == f"unimir {__version__}"


def test_train_accepts_every_flag_once(corpus, tmp_path):
    """Each train flag reaches the config it names (``--layers`` once crashed: the field is ``num_layers``)."""
    out = tmp_path / "idx"
    unimir("index", corpus["pool"], "--out", out, "--batch-size", "8", "--fusion-weights", "1,0.5", "--no-cache",
           "--index", "flat", "--strict", "--root", corpus["root"], "--encoder", "builtin")
    proc = unimir("--threads", "1", "train", out, "--queries", corpus["t2i"], "--qrels", corpus["qrels_t2i"],
                  "--root", corpus["root"], "--instructions", corpus["instructions"], "--stage", "all",
                  "--quantizer", "M3+RQ2x8", "--quantizer-epochs", "1", "--epochs", "2", "--batch-size", "8",
                  "--lr", "0.002", "--layers", "1", "--d-model", "32", "--device", "cpu", "--seed", "3",
                  "--checkpoint-dir", tmp_path / "ckpt", "--resume", "--strict", "--fixed-draws", "--query-draws", "2")
    assert "trained quantizer + generator" in proc.stdout
    assert "drawn once for all epochs" in proc.stderr and "(2 drawn pairs each per epoch)" in proc.stderr
    manifest = json.loads(next((out).glob("generative-*/manifest.json")).read_text())
    config = manifest["generator"]["config"]
    assert config["num_layers"] == 1 and config["d_model"] == 32
    kept = {p.name for p in (tmp_path / "ckpt").iterdir()} - {LOCK_FILE}  # the run held the folder
    # encoded once, reused by --resume: the queries' parts, and the candidates' (this index stores none)
    queries = {name for name in kept if name.startswith("query-features-")}
    candidates = {name for name in kept if name.startswith("candidate-features-")}
    assert kept - queries - candidates == {"quantizer", "generator"} and len(queries) == len(candidates) == 1


def test_progress_lines_without_a_terminal(corpus, tmp_path):
    """Not a TTY (a pipe here): progress still shows, as plain lines on stderr, not as a bar."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "UNIMIR_PROGRESS_INTERVAL": "0"}
    proc = subprocess.run([sys.executable, "-m", "unimir", "index", str(corpus["pool"]), "--out", str(tmp_path / "i"),
                           "--no-cache"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert any(line.startswith("encode texts: 18/18 items (100%)") and line.endswith("done") for line in lines), lines
    assert any(line.startswith("encode images: ") for line in lines) and "\r" not in proc.stderr


def test_eval_notes_missing_positives_once_per_query_set(cli_index, corpus, tmp_path):
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("10:0 0 10:0 1 0\n10:0 0 99:1 1 0\n10:2 0 10:2 1 0\n")
    proc = unimir("eval", cli_index, "--queries", corpus["t2i"], "--qrels", qrels, "--mode", "dense,dense")
    assert "note: 1 relevant ids are not in this pool" in proc.stderr, proc.stderr


def test_a_problem_without_a_file_has_no_leading_blank():
    from unimir.data.problems import Problem

    assert str(Problem(None, None, "x.png", "image file not found")) == "[x.png]: image file not found"
    assert str(Problem("p.jsonl", 3, "1:2", "bad")) == "p.jsonl:3 [1:2]: bad"
    assert str(Problem(None, None, None, "bad")) == "bad"


def test_train_with_no_usable_query_says_why_each_was_dropped(cli_index, tmp_path):
    queries = tmp_path / "q.jsonl"
    queries.write_bytes(b'{"qid": "1:1", "query_txt": "x", "query_modality": "text", "pos_cand_list": ["nope:1"]}\n'
                        b"\xff\xfe not text\n")
    proc = unimir("train", cli_index, "--queries", queries, "--skipped", tmp_path / "s.jsonl", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{queries}:2" in proc.stderr and "not valid UTF-8" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no training pair: 1 queries read")
    assert (tmp_path / "s.jsonl").read_text().count("\n") >= 1


def test_train_refuses_a_quantizer_spec_it_cannot_or_would_not_use_before_any_work(cli_index, corpus):
    for args, message in ((("--quantizer", "M3+RQ2x99999999999"), "codebook_size must be at most 65,536"),
                          (("--quantizer", ""), "bad quantizer spec"),
                          (("--stage", "generator", "--quantizer", "M3+RQ2x8"), "keeps the trained one")):
        proc = unimir("train", cli_index, "--queries", corpus["t2i"], *args, check=False)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert "encode" not in proc.stderr
