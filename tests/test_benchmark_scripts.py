"""The generative benchmarks run end to end (one-epoch smoke variant): a benchmark that crashes is a lost figure."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_generative_ablation_smoke_writes_every_setting_and_mode(tmp_path):
    proc = _run("benchmarks.generative_ablation", "--variants", "smoke", "--seeds", "0", "--parts", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    part = json.loads((tmp_path / "smoke-s0.json").read_text())
    run = part["variants"]["smoke"]["seeds"]["0"]
    cells = {(r["setting"], r["mode"]) for r in run["rows"]}
    assert cells == {(s, m) for s in ("unseen, test pool", "unseen, union", "seen, union")
                     for m in ("dense", "generative", "generative-rerank", "quantize")}
    assert all(0.0 <= r["recall"]["5"] <= 1.0 for r in run["rows"])
    assert run["health"]["generator"]["validation"]["pairs"] > 0


def test_codes_only_adds_its_two_modes(tmp_path):
    out = tmp_path / "rows.json"
    proc = _run("benchmarks.codes_only", "--variant", "smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["0"]
    modes = {r["mode"] for r in rows}
    assert {"quantize-codes", "generative-codes", "quantize", "generative"} <= modes
    quantize = {(r["setting"], r["task"]) for r in rows if r["mode"] == "quantize"}
    for mode in ("quantize-codes", "generative-codes"):  # every cell of the product modes, in [0, 1]
        assert {(r["setting"], r["task"]) for r in rows if r["mode"] == mode} == quantize
    assert all(0.0 <= r["recall"]["5"] <= 1.0 for r in rows)
    assert "quantize-codes" in proc.stdout


def test_train_scale_runs_both_stages_on_a_tiny_pool(tmp_path):
    """The 1.1M-pair benchmark's path (index built from features, both stages from memory maps) at 3,000 pairs."""
    out = tmp_path / "train-scale.md"
    proc = _run("benchmarks.train_scale", "--pairs", "3000", "--dim", "32", "--steps", "3", "--work",
                str(tmp_path / "work"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "work" / "result.json").read_text())
    for stage in ("quantizer", "generator"):
        assert "error" not in result[stage], result[stage]
        assert result[stage]["steps"] == 3 and result[stage]["peak_rss"] > 0
    assert "| generator | 6,000 |" in out.read_text()  # the pairs plus one index-time self-pair per pool row
