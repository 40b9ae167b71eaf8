"""Configuration of the semantic quantizer: architecture (with a short spec string) and training schedule.

Defaults are sized for CPU and small pools (1-5k items, d = 384); the GENIUS paper settings are noted per field
(``genius-method.md`` §3, §7).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import InvalidInputError

NUM_MODALITIES = 3  # level-0 codes: 0 image, 1 text, 2 image,text (``Modality.code``)

_SPEC_RE = re.compile(r"^(?:C(?P<hidden>\d+)\+)?M(?P<m>\d+)\+RQ(?P<levels>\d+)x(?P<k>\d+)$")


_LIMITS = {"hidden": 16_384, "levels": 32, "codebook_size": 65_536}


@dataclass(frozen=True)
class QuantizerConfig:
    """Architecture of combiner + modality-decoupled residual quantizer.

    The ``spec`` string ``"C{hidden}+M3+RQ{levels}x{codebook_size}"`` names the architecture; ``dim`` comes from the
    encoder and the codebook dynamics are fixed by the method, so neither is part of it.
    """

    dim: int = 384  # encoder dimension d (paper: 768, CLIP-SF ViT-L/14)
    hidden: int = 256  # combiner width H; gate and mix layers are 2H wide (paper: 2560)
    levels: int = 3  # L semantic levels after the modality code (paper: 8)
    codebook_size: int = 64  # K entries per semantic level (paper: 4096)
    ema_decay: float = 0.9
    laplace_eps: float = 1e-5  # Laplace smoothing of EMA counts, keeps rarely used codewords finite
    dead_code_threshold: float = 2.0  # EMA count under which a level>=1 codeword is reseeded

    def __post_init__(self) -> None:
        for name in ("dim", "hidden", "levels", "codebook_size"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"quantizer {name} must be >= 1, got {getattr(self, name)}")
        for name, most in _LIMITS.items():  # far beyond the paper's; past them a typo would allocate terabytes
            if getattr(self, name) > most:
                raise InvalidInputError(f"quantizer {name} must be at most {most:,}, got {getattr(self, name):,} "
                                        "(the paper uses 8 levels of 4,096 codes, C2560)")
        if not 0.0 < self.ema_decay < 1.0:
            raise InvalidInputError(f"ema_decay must be in (0, 1), got {self.ema_decay}")

    @property
    def spec(self) -> str:
        return f"C{self.hidden}+M{NUM_MODALITIES}+RQ{self.levels}x{self.codebook_size}"

    @property
    def code_length(self) -> int:
        """Codes per item: the modality code plus ``levels`` residual codes."""
        return self.levels + 1

    @classmethod
    def from_spec(cls, spec: str, **overrides: Any) -> "QuantizerConfig":
        """Parse ``"C256+M3+RQ3x64"``; the ``C{hidden}+`` part is optional (default width). ``.spec`` is canonical,
        so ``from_spec(s).spec == s`` for every canonical ``s``."""
        match = _SPEC_RE.match(spec.strip())
        if match is None:
            raise InvalidInputError(f"bad quantizer spec {spec!r}: expected e.g. 'C256+M3+RQ3x64' or 'M3+RQ3x64'")
        if int(match["m"]) != NUM_MODALITIES:
            raise InvalidInputError(f"bad quantizer spec {spec!r}: the modality level has {NUM_MODALITIES} codes (M3)")
        parsed: dict[str, Any] = {"levels": int(match["levels"]), "codebook_size": int(match["k"])}
        if match["hidden"] is not None:
            parsed["hidden"] = int(match["hidden"])
        return cls(**{**parsed, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuantizerConfig":
        return config_from_dict(cls, data)


@dataclass(frozen=True)
class QuantizerTrainConfig:
    """Stage-1 schedule: symmetric InfoNCE + commitment + quantised MSE, AdamW with per-step cosine decay."""

    batch_size: int = 512  # (query, positive) pairs per step; must give more than K vectors (paper: 8000)
    epochs: int = 10  # paper: 21
    query_draws: int = 1  # (query, positive) pairs drawn per training query and epoch (TrainingPairs.draws)
    lr: float = 1e-4
    lr_min: float = 1e-5  # cosine floor
    weight_decay: float = 0.2  # on matrices only
    adam_eps: float = 1e-6
    tau: float = 0.01  # fixed InfoNCE temperature
    w_commit: float = 100.0
    w_mse: float = 100.0
    mask_duplicate_positives: bool = False  # drop in-batch "negatives" that are the same candidate (reference: off)
    kmeans_iters: int = 30  # paper: 1000
    kmeans_init_samples: int | None = None  # vectors for k-means init; None = one batch (paper), >= 10*K advised
    # After training, refit the codebooks by k-means on the trained combiner's outputs of every pool candidate and
    # training query, so that codes cover the whole pool, not only the training targets (generative-ablation.md).
    pool_refit: bool = False
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise InvalidInputError("quantizer batch_size must be >= 2 (in-batch negatives)")
        if self.epochs < 1 or self.query_draws < 1:
            raise InvalidInputError("quantizer epochs and query_draws must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuantizerTrainConfig":
        return config_from_dict(cls, data)


def config_from_dict(cls, data: dict[str, Any]):
    """Build a config dataclass from a dict, refusing unknown keys (strict loading of saved configs)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidInputError(f"unknown {cls.__name__} keys: {unknown}")
    return cls(**data)
