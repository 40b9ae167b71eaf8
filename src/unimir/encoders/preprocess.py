"""Image preprocessing with Pillow and torch only (torchvision is unusable with the CPU torch wheel)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def center_crop_tensor(image: Image.Image, size: int, *, resize_to: int | None = None,
                       mean: "float | tuple[float, ...]" = 0.0, std: "float | tuple[float, ...]" = 1.0,
                       scale: float = 1.0, crop: bool = True) -> torch.Tensor:
    """Resize the short side to ``resize_to`` (bicubic), centre-crop ``size`` and normalise: float32 [3, size, size].

    ``scale`` multiplies the 0..255 pixel values before (x - mean) / std, so both TF-Lite style (mean 127, std 128,
    scale 1) and CLIP style (scale 1/255, per-channel mean/std) are expressible. ``crop=False`` resizes to a square.
    """
    if crop:
        short = resize_to or size
        w, h = image.size
        ratio = short / min(w, h)
        image = image.resize((max(size, round(w * ratio)), max(size, round(h * ratio))), Image.BICUBIC)
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    else:
        image = image.resize((size, size), Image.BICUBIC)
    arr = np.asarray(image, dtype=np.float32) * scale
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
