"""CLIP-family dual encoders through transformers (``hf:<hub id or local dir>``): CLIPModel and SiglipModel.

Loads from a local directory offline, or from the hub when online. Preprocessing is done with Pillow and torch
(torchvision, which transformers' fast image processors need, does not work with the CPU torch wheel).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..devices import autocast, autocast_dtype
from ..errors import NotFoundError, UnimirError
from . import register
from .base import Encoder, fingerprint_of, l2_normalize
from .preprocess import center_crop_tensor

_CLIP_MEAN, _CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
_SUPPORTED = ("clip", "siglip")


@register
class HFDualEncoder(Encoder):
    """A CLIP or SigLIP checkpoint. ``name`` is a hub id (``openai/clip-vit-base-patch32``) or a local directory."""

    family, takes_argument, argument_help = "hf", True, "<hub id or local dir>"

    text_batch_size = 64
    image_batch_size = 16

    def __init__(self, name: str, device: str = "cpu", threads: int | None = None):
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a weight-loading bar on every start is noise in a CLI
        if threads:
            torch.set_num_threads(threads)
        self.name, self.spec, self.device = name, f"hf:{name}", device
        # fp16 autocast on a GPU; on the CPU these encoders stay float32, as before
        self.amp = autocast_dtype(device) if torch.device(device).type == "cuda" else None
        try:
            config = AutoConfig.from_pretrained(name)
        except OSError as exc:
            raise NotFoundError(f"cannot load model config for {name!r}: not a local directory with config.json "
                                f"and not reachable on the hub ({exc.__class__.__name__})") from None
        self.model_type = config.model_type
        if self.model_type not in _SUPPORTED:
            raise UnimirError(f"{name!r} is a {self.model_type!r} model; hf: encoders support {_SUPPORTED}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as exc:
            raise NotFoundError(f"cannot load the tokenizer of {name!r} ({exc.__class__.__name__}: {exc})") from None
        text_vocab = config.text_config.vocab_size
        # An offline CLIPTokenizer of a missing repo can come back with a 2-token vocabulary instead of failing.
        if len(self.tokenizer) > text_vocab or len(self.tokenizer) < text_vocab // 2:
            raise UnimirError(f"tokenizer of {name!r} has {len(self.tokenizer)} tokens but the model's text "
                              f"embedding has {text_vocab}: the tokenizer files are missing or do not belong "
                              "to this model")
        try:
            self.model = AutoModel.from_pretrained(name).eval().to(device)
        except (OSError, RuntimeError, ValueError) as exc:
            raise UnimirError(f"cannot load the weights of {name!r} ({exc.__class__.__name__}: {exc})") from None
        self.max_length = int(getattr(config.text_config, "max_position_embeddings", 77))
        self.image_size = int(config.vision_config.image_size)
        self.dim = int(getattr(config, "projection_dim", None) or config.text_config.hidden_size)
        pre = _preprocessor_config(name)
        siglip = self.model_type == "siglip"
        self.mean = tuple(pre.get("image_mean", (0.5,) * 3 if siglip else _CLIP_MEAN))
        self.std = tuple(pre.get("image_std", (0.5,) * 3 if siglip else _CLIP_STD))
        self.crop = not siglip  # SigLIP resizes to a square, CLIP resizes the short side then centre-crops
        settings = {"family": "hf", "model_type": self.model_type, "mean": self.mean, "std": self.std,
                    "crop": self.crop, "image_size": self.image_size, "max_length": self.max_length}
        if os.path.isdir(name):
            self._fingerprint = fingerprint_of([name], settings)
        else:  # a hub snapshot: its commit hash names the exact files
            settings["hub"] = (name, getattr(config, "_commit_hash", None))
            self._fingerprint = fingerprint_of([], settings)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @torch.inference_mode()
    def embed_texts(self, texts: list[str], role: str = "candidate") -> np.ndarray:
        padding = "max_length" if self.model_type == "siglip" else True  # SigLIP was trained on padded text
        batch = self.tokenizer(texts, padding=padding, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        batch.pop("token_type_ids", None)
        with autocast(self.device, self.amp):
            out = _pooled(self.model.get_text_features(**batch))
        return l2_normalize(out.float().cpu().numpy())

    @torch.inference_mode()
    def embed_images(self, images, role: str = "candidate") -> np.ndarray:
        pixels = torch.stack([center_crop_tensor(im, self.image_size, mean=self.mean, std=self.std, scale=1 / 255,
                                                 crop=self.crop) for im in images]).to(self.device)
        with autocast(self.device, self.amp):
            out = _pooled(self.model.get_image_features(pixel_values=pixels))
        return l2_normalize(out.float().cpu().numpy())


def _pooled(out) -> torch.Tensor:
    # transformers 4 returns the projected tensor, transformers 5 an output object whose pooler_output it is
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _preprocessor_config(name: str) -> dict:
    local = Path(name) / "preprocessor_config.json"
    if local.is_file():
        return json.loads(local.read_text())
    if os.path.isdir(name):
        return {}
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(name, "preprocessor_config.json")).read_text())
    except Exception:  # no such file or offline: fall back to the model family's defaults
        return {}
