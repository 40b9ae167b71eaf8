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


def pad_to_square(image: Image.Image, fill: "tuple[int, int, int]" = (255, 255, 255)) -> Image.Image:
    """The image centred on a square canvas of ``fill`` (a letterbox): nothing is cut off, whatever the aspect."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image.convert("RGB"), ((side - w) // 2, (side - h) // 2))
    return canvas


CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """OpenAI CLIP's transform exactly: Resize(size, bicubic) on the short side, CenterCrop(size), /255, CLIP
    mean/std; float32 [3, size, size]. Written out because torchvision is unusable here; it follows torchvision's
    arithmetic (long side truncated with int(), crop offsets rounded), not ``center_crop_tensor``'s."""
    w, h = image.size
    if (w, h) != (size, size):
        if w <= h:
            new_w, new_h = size, int(size * h / w)
        else:
            new_w, new_h = int(size * w / h), size
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), Image.BICUBIC)
        w, h = image.size
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    arr = (arr - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
