"""The trained image bridge of the ``builtin`` encoder: EfficientNet-Lite0 features -> MiniLM text space.

An image gives two frozen inputs: Lite0's pooled penultimate feature ``pooled`` (1280-d) and its ConSE vector
``conse`` (384-d, unit norm; see builtin.py). The bridge standardises ``pooled``, joins it to ``conse`` and maps the
1664-d result linearly to 384-d; the image vector is the residual ``normalise(conse + alpha * head)``, so an
untrained head leaves plain ConSE. The weights are made by ``scripts/build_bridge.py`` (``make bridge``) and ship
as ``bridge.safetensors`` next to this module: a few MB, no download.

Weight file layout (float32 tensors; metadata: the training recipe and sources, one JSON string):
``feature_mean`` [1280], ``feature_std`` [1280], ``weight`` [384, 1664], ``bias`` [384], ``alpha`` [1]. The
metadata's ``preprocess`` names the image transform the head was trained on (builtin.LITE0_PREPROCESS; "crop" when
absent), and the encoder applies that one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

FEATURE_DIM = 1280  # Lite0's pooled penultimate layer
TEXT_DIM = 384  # MiniLM
WEIGHTS_PATH = Path(__file__).with_name("bridge.safetensors")
KEYS = {"feature_mean": (FEATURE_DIM,), "feature_std": (FEATURE_DIM,), "weight": (TEXT_DIM, FEATURE_DIM + TEXT_DIM),
        "bias": (TEXT_DIM,), "alpha": (1,)}


class BridgeWeightsError(ValueError):
    """A bridge weight file that is missing a tensor or has the wrong shapes."""


def bridge_inputs(pooled: torch.Tensor, conse: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The head's input: [standardised pooled feature, ConSE vector], float32 [n, 1664]."""
    return torch.cat([(pooled - mean) / std, conse], dim=-1)


def bridge_forward(weights: dict[str, torch.Tensor], pooled: torch.Tensor, conse: torch.Tensor) -> torch.Tensor:
    """Image vectors in the MiniLM space: normalise(conse + alpha * (W x + b)), float32 [n, 384], unit rows."""
    x = bridge_inputs(pooled.float(), conse.float(), weights["feature_mean"], weights["feature_std"])
    head = torch.nn.functional.linear(x, weights["weight"], weights["bias"])
    return torch.nn.functional.normalize(conse.float() + weights["alpha"] * head, dim=-1)


def check_weights(weights: dict[str, torch.Tensor], source: str = "bridge weights") -> dict[str, torch.Tensor]:
    for key, shape in KEYS.items():
        if key not in weights:
            raise BridgeWeightsError(f"{source}: missing tensor {key!r}")
        if tuple(weights[key].shape) != shape:
            raise BridgeWeightsError(f"{source}: tensor {key!r} has shape {tuple(weights[key].shape)}, "
                                     f"expected {shape}")
    return {k: weights[k].float() for k in KEYS}


def load_weights(path: "str | Path" = WEIGHTS_PATH) -> dict[str, torch.Tensor]:
    """Load and check a bridge weight file (safetensors, never pickle)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"bridge weights not found: {path} (rebuild them with `make bridge`)")
    return check_weights(load_file(str(path)), str(path))


def save_weights(weights: dict[str, torch.Tensor], path: "str | Path", metadata: dict | None = None) -> None:
    """Write a bridge weight file atomically; ``metadata`` is stored as one JSON string (byte-for-byte repeatable)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().float().contiguous() for k, v in check_weights(weights, str(path)).items()}
    # one metadata entry: safetensors writes its metadata map in hash order, so several keys would make the file's
    # bytes (and its digest) differ from run to run
    meta = {"unimir.bridge": json.dumps(metadata or {}, sort_keys=True)}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def read_metadata(path: "str | Path" = WEIGHTS_PATH) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("unimir.bridge", "{}"))


def weights_digest(path: "str | Path" = WEIGHTS_PATH) -> str:
    """sha256 of the weight file: part of the builtin encoder's identity (a new bridge means new image vectors)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
