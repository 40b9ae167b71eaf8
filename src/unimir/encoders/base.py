"""The encoder interface: items in, L2-normalised float32 vectors out.

Every encoder returns the *parts* of an item separately (image and text embeddings plus presence masks),
because generative retrieval consumes the parts and dense retrieval consumes their fusion. Fusion is
UniIR's score fusion: a weighted sum of the unit-norm parts, renormalised.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class Features:
    """Encoder output for n items, all arrays aligned on the first axis.

    image, text: float32 [n, d], each row unit-norm where its mask is set, zeros elsewhere.
    image_mask, text_mask: bool [n].
    """

    image: np.ndarray
    text: np.ndarray
    image_mask: np.ndarray
    text_mask: np.ndarray

    def __len__(self) -> int:
        return int(self.image.shape[0])

    @property
    def dim(self) -> int:
        return int(self.image.shape[1])

    def fused(self, weights: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
        """Score fusion f = normalize(w_img*m_img*e_img + w_txt*m_txt*e_txt): float32 [n, d], unit rows."""
        w_img, w_txt = weights
        f = (w_img * self.image_mask[:, None]) * self.image + (w_txt * self.text_mask[:, None]) * self.text
        return l2_normalize(f.astype(np.float32, copy=False))

    def __getitem__(self, idx) -> "Features":
        return Features(self.image[idx], self.text[idx], self.image_mask[idx], self.text_mask[idx])

    @staticmethod
    def concat(parts: Sequence["Features"], dim: int) -> "Features":
        if not parts:
            return Features.empty(dim)
        return Features(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("image", "text", "image_mask", "text_mask")))

    @staticmethod
    def empty(dim: int, n: int = 0) -> "Features":
        return Features(np.zeros((n, dim), np.float32), np.zeros((n, dim), np.float32),
                        np.zeros(n, bool), np.zeros(n, bool))


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation in float32; all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)
