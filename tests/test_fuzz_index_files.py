"""Damaged index files: every command that opens the index answers with one IndexFormatError line ("rebuild the
index"), exit code 2 and no traceback; ``unimir info --check`` names what is wrong. One case per kind of damage."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unimir.cli import main


def _manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def _set_manifest(d: Path, data) -> None:
    (d / "manifest.json").write_text(json.dumps(data))


def _segment(d: Path) -> Path:
    return d / _manifest(d)["segments"][0]["name"]


def truncated_parts(d: Path) -> None:
    f = _segment(d) / "text.npy"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def garbage_dense(d: Path) -> None:
    (_segment(d) / "dense-0.faiss").write_bytes(os.urandom(256))


def corrupt_records(d: Path) -> None:  # same size, other bytes: only the digest tells
    f = _segment(d) / "records.sqlite"
    f.write_bytes(os.urandom(f.stat().st_size))


def manifest_is_array(d: Path) -> None:
    _set_manifest(d, [_manifest(d)])


def manifest_lacks_encoder(d: Path) -> None:
    m = _manifest(d)
    del m["encoder"]
    _set_manifest(d, m)


def files_of_wrong_type(d: Path) -> None:
    m = _manifest(d)
    m["files"] = list(m["files"].values())
    _set_manifest(d, m)


def wrong_dim(d: Path) -> None:
    m = _manifest(d)
    m["dim"] = m["dim"] * 2
    _set_manifest(d, m)


CASES = {  # damage -> what the error line must say
    "truncated parts .npy": (truncated_parts, "missing or unreadable"),
    "garbage FAISS file": (garbage_dense, "unreadable FAISS index"),
    "corrupted records database": (corrupt_records, "unreadable segment records"),
    "manifest is a JSON array": (manifest_is_array, "not an object"),
    "manifest lacks encoder": (manifest_lacks_encoder, "lacks 'encoder'"),
    "files of the wrong type": (files_of_wrong_type, "'files' must be an object"),
    "wrong dim": (wrong_dim, "dimension"),
}
CHECK_SAYS = {"truncated parts .npy": "truncated", "garbage FAISS file": "bytes, but",
              "corrupted records database": "contents differ from the sha256"}


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unimir", "--quiet", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)


def run_in_process(*args) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["--quiet", *map(str, args)])
    return code, err.getvalue()


@pytest.fixture(scope="module")
def good_index(corpus, tiny_clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "idx"
    proc = run_cli("index", corpus["pool"], "--out", out, "--encoder", f"hf:{tiny_clip_dir}",
                   "--keep-parts")  # parts stored, so that damaging them is a case
    assert proc.returncode == 0, proc.stderr
    check = run_cli("info", "--check", out)
    assert check.returncode == 0 and check.stdout.startswith("ok:") and "36 items" in check.stdout, check.stderr
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_index_files_give_one_clear_line(case, good_index, corpus, tmp_path):
    damage, says = CASES[case]
    d = tmp_path / "idx"
    shutil.copytree(good_index, d)
    damage(d)
    proc = run_cli("search", d, "--text", "a red circle")  # the real CLI, in its own process
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and says in proc.stderr and "rebuild the index" in proc.stderr
    extra = tmp_path / "more.csv"
    extra.write_text("id,text\nn1,a new text\n")
    for command in (["add", d, extra], ["eval", d, "--queries", corpus["t2i"]],
                    ["train", d, "--queries", corpus["t2i"]], ["serve", d, "--port", "1"]):
        code, err = run_in_process(*command)  # every other command that opens an index, through the CLI's main
        assert code == 2 and err.startswith("error: ") and "rebuild the index" in err, (command, err)
    check = run_cli("info", "--check", d)
    assert check.returncode == 2 and "Traceback" not in check.stderr, check.stderr
    assert CHECK_SAYS.get(case, says) in check.stderr and "problem(s)" in check.stderr


def test_info_check_reports_a_missing_file_and_counts(good_index, tmp_path):
    d = tmp_path / "idx"
    shutil.copytree(good_index, d)
    shutil.rmtree(_segment(d))
    check = run_cli("info", "--check", d)
    assert check.returncode == 2 and "listed in the manifest but missing" in check.stderr
    shutil.rmtree(d)
    shutil.copytree(good_index, d)
    m = _manifest(d)
    m["num_items"] = 35
    _set_manifest(d, m)
    check = run_cli("info", "--check", d)
    assert check.returncode == 2 and "manifest says 35 items" in check.stderr


def test_info_check_verifies_uploaded_images(tmp_path, tiny_encoder):
    import io as _io

    from PIL import Image

    from unimir.data.records import Candidate, Modality
    from unimir.index import Index

    buf = _io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 10)).save(buf, "PNG")

    index = Index.build([Candidate("t", Modality.TEXT, "a text")], tmp_path / "idx", encoder=tiny_encoder)
    index.add_upload(text="green", image=buf.getvalue(), did="up")
    assert run_in_process("info", "--check", index.path)[0] == 0
    media = next((index.path / "media").iterdir())
    media.write_bytes(media.read_bytes()[:-8])
    code, err = run_in_process("info", "--check", index.path)
    assert code == 2 and "uploaded image of item 'up' differs" in err
