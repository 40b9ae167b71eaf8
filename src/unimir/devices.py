"""Device and precision choice, shared by encoders, search and training: ``--device cpu|cuda``.

``resolve_device`` refuses CUDA clearly when this torch has none (the lock pins the CPU wheel; README "GPU" says how
to install a CUDA build). ``autocast`` is the mixed precision each device runs models under: fp16 on CUDA (what
UniIR embeds with), bf16 on CPUs with native bf16 (AVX512-BF16 / AMX), else none.
"""

from __future__ import annotations

import contextlib
import os

from .errors import InvalidInputError

DEVICES = ("cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: "str | None" = None):
    """A ``torch.device`` for ``device`` ("cpu", "cuda", "cuda:N"; None = cpu); InvalidInputError if CUDA is
    asked for but unavailable."""
    import torch

    name = (device or "cpu").strip().lower()
    kind = name.split(":", 1)[0]
    if kind not in DEVICES:
        raise InvalidInputError(f"unknown device {device!r}: use cpu or cuda (cuda:N for a given GPU)")
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise InvalidInputError(f"--device {name} was asked for, but torch {torch.__version__} ({build}) sees no "
                                    "CUDA GPU; install a CUDA build of torch (README, 'Running on a GPU') or use "
                                    "--device cpu")
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise InvalidInputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device, precision: str = "auto"):
    """The autocast dtype for ``device`` under ``precision`` (None: plain float32). ``auto`` can be overridden
    for a whole process with ``UNIMIR_PRECISION`` (e.g. fp32 for bit-for-bit comparisons)."""
    import torch

    if precision == "auto":
        precision = os.environ.get("UNIMIR_PRECISION", "auto").strip().lower() or "auto"
    if precision not in PRECISIONS:
        raise InvalidInputError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    kind = torch.device(device).type
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if kind == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def autocast(device, dtype):
    """``torch.autocast`` on ``device`` with ``dtype``, or a no-op context when ``dtype`` is None."""
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
