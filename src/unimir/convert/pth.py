"""Read the ``"model"`` state dict of a ``torch.save`` checkpoint without unpickling arbitrary objects.

UniIR and GENIUS save ``{"model", "optimizer", "scheduler", "config": <OmegaConf DictConfig>, "epoch", "scaler"}``.
The pickled OmegaConf config makes ``torch.load(weights_only=True)`` refuse these files, and a full unpickle would
run whatever the file names. This module gives ``torch.load`` an allow-listing unpickler instead: tensor rebuild
functions, plain containers and a few numpy reconstructors are real; the OmegaConf and ``typing`` classes a config
needs become inert stand-ins whose state is discarded; every other global is refused with an error naming it,
before anything is called. Only ``["model"]`` is kept, memory-mapped (the CLIP-SF Large file is 5 GB, mostly
optimizer state that is never read). Bottom layer: imports nothing of unimir but the errors.
"""

from __future__ import annotations

import collections
import os
import pickle
import types
from pathlib import Path

from ..errors import UnimirError


class CheckpointError(UnimirError):
    """A checkpoint that cannot be read safely, or whose contents do not match the expected layout."""

    http_status = 400


class _Inert:
    """Stand-in for a config class: accepts any construction and state, keeps nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):  # typing.Optional[...] and friends may be "called" by a reduce
        return self


def _inert(qualified: str) -> type:
    return type(qualified.rsplit(".", 1)[-1], (_Inert,), {"__module__": "unimir.convert.pth.inert",
                                                         "original": qualified})


# The classes an OmegaConf DictConfig pickles (its nodes, metadata and the typing annotations they hold).
_INERT_NAMES = frozenset(
    [f"omegaconf.dictconfig.{n}" for n in ("DictConfig",)]
    + [f"omegaconf.listconfig.{n}" for n in ("ListConfig",)]
    + [f"omegaconf.base.{n}" for n in ("ContainerMetadata", "Metadata", "Container", "Node", "SCMode")]
    + [f"omegaconf.nodes.{n}" for n in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode",
                                         "BytesNode", "PathNode", "EnumNode", "ValueNode", "InterpolationResultNode")]
    + [f"omegaconf.{n}" for n in ("DictConfig", "ListConfig")]
    + [f"typing.{n}" for n in ("Any", "Dict", "List", "Tuple", "Optional", "Union", "Type", "Sequence", "Mapping")]
)


def _real_globals() -> dict[str, object]:
    """Globals that are safe to call during unpickling: tensor/storage rebuilders, containers, numpy scalars."""
    import torch
    import torch._utils

    allowed: dict[str, object] = {
        "collections.OrderedDict": collections.OrderedDict,
        "collections.defaultdict": collections.defaultdict,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
    }
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                 "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_numpy", "_rebuild_qtensor"):
        if hasattr(torch._utils, name):
            allowed[f"torch._utils.{name}"] = getattr(torch._utils, name)
    if hasattr(torch._tensor, "_rebuild_from_type_v2"):
        allowed["torch._tensor._rebuild_from_type_v2"] = torch._tensor._rebuild_from_type_v2
    allowed["torch.nn.parameter.Parameter"] = torch.nn.Parameter
    allowed["torch.Tensor"] = torch.Tensor
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
                  torch.int16, torch.int8, torch.uint8, torch.bool):
        allowed[str(dtype)] = dtype
    for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes", "bool",
                 "slice", "range", "bytearray"):
        allowed[f"builtins.{name}"] = getattr(__import__("builtins"), name)
    allowed["builtins.object"] = _inert("builtins.object")  # only ever a type annotation in a config
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):  # pickles name either, by numpy version
        allowed[f"{mod}.scalar"] = multiarray.scalar
        allowed[f"{mod}._reconstruct"] = multiarray._reconstruct
    allowed["numpy.dtype"] = np.dtype
    allowed["numpy.ndarray"] = np.ndarray
    return allowed


def _unpickler_module(path: Path) -> types.ModuleType:
    """A stand-in ``pickle`` module for ``torch.load(pickle_module=...)`` whose Unpickler allow-lists globals."""
    real = _real_globals()
    inert: dict[str, type] = {}

    class AllowListUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            qualified = f"{module}.{name}"
            if qualified in real:
                return real[qualified]
            if qualified in _INERT_NAMES:
                return inert.setdefault(qualified, _inert(qualified))
            raise CheckpointError(f"{path}: refusing to unpickle {qualified}: a checkpoint may only hold tensors, "
                                  "plain containers and its OmegaConf config (nothing was executed)")

    mod = types.ModuleType("unimir_allowlist_pickle")
    mod.Unpickler = AllowListUnpickler  # type: ignore[attr-defined]
    mod.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]

    def load(file, **kwargs):
        return AllowListUnpickler(file, **kwargs).load()

    mod.load = load  # type: ignore[attr-defined]
    mod.__name__ = "unimir_allowlist_pickle"
    return mod


_PREFIXES = ("_orig_mod.", "module.")  # left by torch.compile and DistributedDataParallel


def strip_wrappers(state: dict) -> dict:
    """Drop ``_orig_mod.`` / ``module.`` prefixes (torch.compile, DDP) from every key that has one."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key.replace("._orig_mod.", ".")] = value
    return out


def read_state_dict(path: "str | os.PathLike", key: str = "model") -> dict:
    """The tensors under ``checkpoint[key]`` (a bare state dict is accepted too), memory-mapped, CPU, prefixes
    stripped. Raises :class:`CheckpointError` for a missing file, a refused class or a non-tensor entry."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(str(path), map_location="cpu", pickle_module=_unpickler_module(path), weights_only=False,
                         mmap=True)
    except CheckpointError:
        raise
    except RuntimeError as exc:
        if isinstance(exc.__cause__, CheckpointError):
            raise exc.__cause__ from None
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from None
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, AttributeError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({exc.__class__.__name__}: {exc})") from None
    if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
        state = obj[key]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj  # a bare state dict
    else:
        keys = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: expected a dict with a {key!r} state dict, found {keys}")
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{path}: {key!r} holds non-tensor entries {bad[:10]}")
    return strip_wrappers(dict(state))
