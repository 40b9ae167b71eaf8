"""Safetensors persistence shared by the quantizer and the generator: strict loading, digests, training state.

Never pickle: tensors go to safetensors, everything else to JSON (in the safetensors metadata or beside it).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..atomic import write_safetensors
from ..errors import IndexFormatError, InvalidInputError

_META_KEY = "unimir"


def read_versioned_json(path: Path, version: int) -> dict[str, Any]:
    """A JSON metadata file of ours, refused with IndexFormatError when unreadable or of another format version."""
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"cannot read {path}: {exc}") from None
    if meta.get("format_version") != version:
        raise IndexFormatError(f"{path}: format version {meta.get('format_version')}, this unimir reads {version}")
    return meta


def module_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied aliases dropped (first name per storage wins), contiguous on CPU."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, tensor in module.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().to("cpu").contiguous()
    return out


def load_tensors_strict(module: nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Load ``tensors`` into ``module``, failing with the list of missing / unexpected / mis-shaped keys."""
    expected = module_tensors(module)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = sorted(f"{k}: {tuple(tensors[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                    if k in tensors and tuple(tensors[k].shape) != tuple(v.shape))
    if missing or unexpected or shapes:
        raise IndexFormatError(f"{what}: state does not match the model (missing keys {missing}, "
                               f"unexpected keys {unexpected}, shape mismatches {shapes})")
    # strict=False only because tied aliases are absent from the file; every real key was checked above.
    module.load_state_dict(tensors, strict=False)


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
    """Atomic safetensors write; ``meta`` (JSON-serialisable) travels in the file's metadata."""
    write_safetensors(path, tensors, {_META_KEY: json.dumps(meta or {})})


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise IndexFormatError(f"missing file {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(_META_KEY, "{}"))
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError is no ValueError (safetensors 0.8)
        raise IndexFormatError(f"unreadable safetensors file {path}: {exc}; remove it (or rebuild what wrote it)"
                               ) from None


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def array_digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def run_digest(config: dict[str, Any], *arrays: Any) -> str:
    """What a training run trains on: its settings (but ``epochs`` and ``device``, which a resumed run may change)
    and the shapes and bytes of its training arrays. A checkpoint records it; resuming another run's is refused."""
    h = hashlib.sha256(json.dumps({k: v for k, v in config.items() if k not in ("epochs", "device")},
                                  sort_keys=True, default=str).encode())
    for a in arrays:
        h.update(array_digest(np.asarray(a)).encode())
    return h.hexdigest()


def check_same_run(meta: dict[str, Any], digest: str, path: "str | Path") -> None:
    recorded = meta.get("run")
    if recorded is not None and recorded != digest:
        raise InvalidInputError(f"{path} was written by another training run (other training pairs, index or "
                                "settings); remove it, or give another --checkpoint-dir")


def save_training_state(path: str | Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                        scheduler: torch.optim.lr_scheduler.LRScheduler, step: int,
                        meta: dict[str, Any] | None = None) -> None:
    """One safetensors file with every module's state, the optimizer tensors and, in the metadata, the optimizer
    param groups, the scheduler state and the step: all that resuming needs."""
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in modules.items():
        tensors.update({f"{prefix}.{k}": v for k, v in module_tensors(module).items()})
    opt = optimizer.state_dict()
    for pid, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"optimizer.state.{pid}.{name}"] = torch.as_tensor(value)
    save_tensors(path, tensors, {"step": step, "param_groups": opt["param_groups"],
                                 "scheduler": scheduler.state_dict(), **(meta or {})})


def load_training_state(path: str | Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                        scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """Restore what ``save_training_state`` wrote, strictly; returns its metadata (``meta["step"]`` is the step)."""
    tensors, meta = load_tensors(path)
    for prefix, module in modules.items():
        own = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        load_tensors_strict(module, own, f"{path} [{prefix}]")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer.state."):
            pid, name = key[len("optimizer.state."):].split(".", 1)
            state.setdefault(int(pid), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        scheduler.load_state_dict(meta["scheduler"])
    except (KeyError, ValueError) as exc:
        raise IndexFormatError(f"{path}: optimizer/scheduler state does not match: {exc}") from None
    return meta
