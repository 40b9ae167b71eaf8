import subprocess
import sys

import numpy as np
import pytest
import torch

from unimir.devices import autocast_dtype, resolve_device
from unimir.encoders import Features, fuse, fusion_of
from unimir.errors import InvalidInputError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="tests the error raised without a GPU")


@no_cuda
def test_cuda_asked_for_but_absent_is_a_clear_error():
    with pytest.raises(InvalidInputError, match="--device cuda was asked for, but torch .* sees no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(InvalidInputError, match="unknown device"):
        resolve_device("tpu")
    assert resolve_device(None) == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("command", [["search", "IDX", "--text", "x"], ["index", "POOL", "--out", "OUT"],
                                     ["eval", "IDX", "--queries", "Q"], ["serve", "IDX"], ["add", "IDX", "POOL"],
                                     ["train", "IDX", "--queries", "Q"]])
def test_cli_refuses_cuda_without_a_gpu(command, tmp_path):
    run = subprocess.run([sys.executable, "-m", "unimir", *command, "--device", "cuda"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.startswith("error: --device cuda was asked for") and "Traceback" not in run.stderr


def test_autocast_policy(monkeypatch):
    assert autocast_dtype("cuda", "auto") == torch.float16  # UniIR's embedding precision
    assert autocast_dtype("cpu", "fp32") is None and autocast_dtype("cpu", "bf16") == torch.bfloat16
    monkeypatch.setenv("UNIMIR_PRECISION", "fp32")
    assert autocast_dtype("cuda", "auto") is None


def test_fusion_policies_differ_only_in_normalising_parts_first():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(2, 8)) * 5, rng.normal(size=(2, 8))
    feats = Features(img.astype(np.float32), txt.astype(np.float32), np.array([True, True]), np.array([True, False]))
    raw = fuse(feats, "raw-sum")
    np.testing.assert_allclose(raw[0], (img[0] + txt[0]) / np.linalg.norm(img[0] + txt[0]), atol=1e-6)
    unit = fuse(feats, "unit-sum")
    u = img[0] / np.linalg.norm(img[0]) + txt[0] / np.linalg.norm(txt[0])
    np.testing.assert_allclose(unit[0], u / np.linalg.norm(u), atol=1e-6)
    np.testing.assert_allclose(raw[1], unit[1], atol=1e-6)  # a single part: the same unit vector
    assert fusion_of("clip-sf:/x") == "raw-sum" and fusion_of("builtin") == fusion_of("hf:x") == "unit-sum"
