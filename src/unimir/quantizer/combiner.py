"""The combiner (CLIP4Cir-style fusion MLP) that turns an item's encoder parts into one unit vector z."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..encoders.base import Features
from ..errors import InvalidInputError


@dataclass
class FeatureTensors:
    """``Features`` as torch tensors: image, text float32 [n, d]; image_mask, text_mask float32 [n, 1] (0 or 1)."""

    image: torch.Tensor
    text: torch.Tensor
    image_mask: torch.Tensor
    text_mask: torch.Tensor

    @staticmethod
    def from_features(features: Features, device: torch.device | str = "cpu") -> "FeatureTensors":
        def t(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32), device=device)

        if features.image.shape != features.text.shape:
            raise InvalidInputError(f"image/text feature shapes differ: {features.image.shape} vs "
                                    f"{features.text.shape}")
        return FeatureTensors(t(features.image), t(features.text), t(features.image_mask)[:, None],
                              t(features.text_mask)[:, None])

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def __getitem__(self, idx) -> "FeatureTensors":
        return FeatureTensors(self.image[idx], self.text[idx], self.image_mask[idx], self.text_mask[idx])

    @staticmethod
    def cat(parts: "list[FeatureTensors]") -> "FeatureTensors":
        return FeatureTensors(*(torch.cat([getattr(p, f) for p in parts]) for f in
                                ("image", "text", "image_mask", "text_mask")))


class Combiner(nn.Module):
    """z = normalize(W_out ReLU(W_mix h) + lam*x_txt + (1 - lam)*x_img), h = [ReLU(A_img x_img), ReLU(A_txt x_txt)].

    lam = sigmoid(w2 ReLU(W1 h)) is a per-item scalar gate (``genius-method.md`` §3.1). One module serves queries and
    candidates; a missing part enters as zeros through its mask. Dropout is 0, as in the paper.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.image_proj = nn.Linear(dim, hidden)
        self.text_proj = nn.Linear(dim, hidden)
        self.mix = nn.Linear(2 * hidden, 2 * hidden)
        self.out = nn.Linear(2 * hidden, dim)
        self.gate_hidden = nn.Linear(2 * hidden, 2 * hidden)
        self.gate = nn.Linear(2 * hidden, 1)

    def forward(self, x: FeatureTensors) -> torch.Tensor:
        """Returns z: float32 [n, d], unit rows."""
        x_img = x.image * x.image_mask
        x_txt = x.text * x.text_mask
        h = torch.cat([F.relu(self.image_proj(x_img)), F.relu(self.text_proj(x_txt))], dim=-1)
        o = self.out(F.relu(self.mix(h)))
        lam = torch.sigmoid(self.gate(F.relu(self.gate_hidden(h))))
        return F.normalize(o + lam * x_txt + (1.0 - lam) * x_img, dim=-1)
