"""The ID vocabulary (``genius-method.md`` §4.2): arithmetic between (level, code) and token ids.

<pad> 0, </s> 1, <unk> 2; level-0 (modality) codes 3..5; code c at level l >= 1 is 6 + (l-1)*K + c.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..quantizer.config import NUM_MODALITIES

PAD, EOS, UNK = 0, 1, 2
NUM_SPECIAL = 3


@dataclass(frozen=True)
class IDVocab:
    levels: int  # L semantic levels (the ID has L + 1 codes)
    codebook_size: int  # K

    @property
    def size(self) -> int:
        return NUM_SPECIAL + NUM_MODALITIES + self.levels * self.codebook_size

    @property
    def code_length(self) -> int:
        return self.levels + 1

    def level_size(self, level: int) -> int:
        return NUM_MODALITIES if level == 0 else self.codebook_size

    def level_offset(self, level: int) -> int:
        """Token id of code 0 at ``level``; the level's tokens are [offset, offset + level_size)."""
        if level == 0:
            return NUM_SPECIAL
        return NUM_SPECIAL + NUM_MODALITIES + (level - 1) * self.codebook_size

    def offsets(self) -> np.ndarray:
        """int64 [L+1], ``level_offset`` of every level."""
        return np.asarray([self.level_offset(level) for level in range(self.code_length)], dtype=np.int64)

    def token(self, level: int, code: int) -> int:
        if not 0 <= code < self.level_size(level):
            raise ValueError(f"code {code} out of range for level {level}")
        return self.level_offset(level) + code

    def level_code(self, token: int) -> tuple[int, int]:
        """Inverse of ``token``: (level, code). Raises ValueError for special tokens."""
        first = NUM_SPECIAL + NUM_MODALITIES
        if NUM_SPECIAL <= token < first:
            return 0, token - NUM_SPECIAL
        if first <= token < self.size:
            return 1 + (token - first) // self.codebook_size, (token - first) % self.codebook_size
        raise ValueError(f"token {token} is not a code token")

    def codes_to_tokens(self, codes):
        """codes int [n, L+1] (numpy or torch) -> token ids of the same type and shape."""
        if isinstance(codes, torch.Tensor):
            return codes + torch.as_tensor(self.offsets(), device=codes.device)
        return np.asarray(codes, dtype=np.int64) + self.offsets()

    def tokens_to_codes(self, tokens):
        if isinstance(tokens, torch.Tensor):
            return tokens - torch.as_tensor(self.offsets(), device=tokens.device)
        return np.asarray(tokens, dtype=np.int64) - self.offsets()

    def render(self, codes) -> str:
        """Log-only string such as ``<m1><a17><b3>``: the modality, then one letter per level."""
        letters = "abcdefghijklmnopqrstuvwxyz"
        return f"<m{int(codes[0])}>" + "".join(f"<{letters[(level - 1) % 26]}{int(c)}>"
                                               for level, c in enumerate(codes[1:], start=1))
