"""UniIR CLIP-SF (``clip-sf:<dir>``): OpenAI CLIP towers as UniIR fine-tuned them, with UniIR's score fusion.

The directory comes from ``unimir convert clip-sf`` (transformers ``CLIPModel`` weights in safetensors, the CLIP BPE
tokenizer and ``unimir-clip-sf.json``). Parts are the *raw* projected features, as UniIR stores them, so the fusion
is ``raw-sum``: normalize(m_img*e_img + m_txt*e_txt). The combiner of an imported GENIUS model consumes the same
raw parts. Text: SOT ... EOT, at most 77 tokens, truncation keeping EOT last, pooled at EOT. Images: OpenAI CLIP's
transform (:func:`clip_preprocess`). Mixed precision: fp16 on CUDA (UniIR's setting), bf16 on CPUs with native bf16.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..devices import autocast, autocast_dtype, resolve_device
from ..errors import NotFoundError, UnimirError
from . import register
from .base import Encoder, fingerprint_of
from .preprocess import clip_preprocess

MARKER = "unimir-clip-sf.json"
FORMAT = "unimir-clip-sf"
FORMAT_VERSION = 1


@register
class ClipSFEncoder(Encoder):
    """A converted UniIR CLIP-SF checkpoint. ``precision``: auto (see module doc), fp32, bf16 or fp16."""

    family, takes_argument, argument_help = "clip-sf", True, "<dir from unimir convert clip-sf>"

    fusion = "raw-sum"
    text_batch_size = 64
    image_batch_size = 16

    def __init__(self, directory: "str | Path", device: str = "cpu", threads: int | None = None,
                 precision: str = "auto"):
        from transformers import AutoTokenizer, CLIPModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(threads)
        self.directory = Path(directory).expanduser().resolve()
        self.spec = f"clip-sf:{self.directory}"  # absolute: an index may be used from another directory
        self.meta = read_marker(self.directory)
        self.device = resolve_device(device)
        self.amp = autocast_dtype(self.device, precision)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.directory))
            self.model = CLIPModel.from_pretrained(str(self.directory)).eval().to(self.device)
        except (OSError, ValueError, RuntimeError) as exc:
            raise UnimirError(f"{self.directory}: cannot load the converted CLIP-SF model "
                              f"({exc.__class__.__name__}: {exc}); convert it again") from None
        config = self.model.config
        check_tokenizer(self.tokenizer, config.text_config.vocab_size, str(self.directory))
        self.dim = int(config.projection_dim)
        self.max_length = int(config.text_config.max_position_embeddings)
        self.image_size = int(config.vision_config.image_size)
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:  # hashed on first use (a Large model is 1.7 GB), once per load
            self._fingerprint = fingerprint_of([self.directory], {"family": "clip-sf", "precision": str(self.amp),
                                                                  "max_length": self.max_length,
                                                                  "image_size": self.image_size})
        return self._fingerprint

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """CLIP's tokenisation: SOT + BPE + EOT, truncated to the context length with EOT kept last."""
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    @torch.inference_mode()
    def embed_texts(self, texts: list[str], role: str = "candidate") -> np.ndarray:
        batch = self.tokenize(texts)
        with autocast(self.device, self.amp):
            out = self.model.get_text_features(input_ids=batch["input_ids"].to(self.device),
                                               attention_mask=batch["attention_mask"].to(self.device))
        return _pooled(out).float().cpu().numpy()

    @torch.inference_mode()
    def embed_images(self, images, role: str = "candidate") -> np.ndarray:
        pixels = torch.stack([clip_preprocess(im, self.image_size) for im in images]).to(self.device)
        with autocast(self.device, self.amp):
            out = self.model.get_image_features(pixel_values=pixels)
        return _pooled(out).float().cpu().numpy()


def _pooled(out) -> torch.Tensor:
    # transformers 4 returns the projected tensor, transformers 5 an output object whose pooler_output it is
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def read_marker(directory: Path) -> dict:
    path = directory / MARKER
    if not path.is_file():
        if not directory.exists():
            raise NotFoundError(f"CLIP-SF encoder directory not found: {directory}")
        raise UnimirError(f"{directory} is not a converted CLIP-SF encoder (no {MARKER}); create one with "
                          "'unimir convert clip-sf CKPT.pth --out DIR'")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UnimirError(f"{path}: corrupt ({exc}); convert the checkpoint again") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise UnimirError(f"{path}: format {meta.get('format')!r} version {meta.get('format_version')!r}, this "
                          f"unimir reads {FORMAT!r} version {FORMAT_VERSION}")
    return meta


def check_tokenizer(tokenizer, vocab_size: int, what: str) -> None:
    """Refuse a tokenizer whose vocabulary is not the model's, or that adds no SOT/EOT (offline-models.md §8:
    an offline CLIPTokenizer of a missing repo comes back with 2 tokens instead of failing)."""
    if len(tokenizer) != vocab_size:
        raise UnimirError(f"{what}: the tokenizer has {len(tokenizer)} tokens but the model's token embedding has "
                          f"{vocab_size}: these tokenizer files do not belong to this checkpoint")
    ids = tokenizer(["a"])["input_ids"][0]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None or len(ids) < 2 or ids[0] != bos or ids[-1] != eos:
        raise UnimirError(f"{what}: the tokenizer does not wrap text in start/end-of-text tokens as CLIP's does")
