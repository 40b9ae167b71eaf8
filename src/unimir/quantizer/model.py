"""``SemanticQuantizer``: features in, semantic IDs out, with faiss-like verbs (train / compute_codes / decode)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import write_json
from ..encoders.base import Features
from ..errors import IndexFormatError, InvalidInputError
from .checkpoint import (
    load_tensors,
    load_tensors_strict,
    module_tensors,
    read_versioned_json,
    save_tensors,
    tensors_digest,
)
from .combiner import Combiner, FeatureTensors
from .config import NUM_MODALITIES, QuantizerConfig, QuantizerTrainConfig
from .pairs import TrainingPairs
from .residual import ModalityResidualQuantizer
from .stats import CollisionStats, collision_stats
from .train import QuantizerTrainReport, train_quantizer

FORMAT_VERSION = 1
WEIGHTS_FILE = "quantizer.safetensors"
CONFIG_FILE = "quantizer.json"


class QuantizerNet(nn.Module):
    """The trainable part (combiner) and the codebooks (buffers) under one state dict."""

    def __init__(self, config: QuantizerConfig):
        super().__init__()
        self.combiner = Combiner(config.dim, config.hidden)
        self.rq = ModalityResidualQuantizer(config)


class SemanticQuantizer:
    """Combiner MLP + modality-decoupled residual quantizer.

    An item's ID is L+1 codes: c0 its modality code (a query's: its target modality), then L residual codes in
    [0, K). Inputs are ``Features`` (float32 [n, d] parts + masks) and int modality codes [n]; outputs are numpy.
    Not an ``nn.Module`` (``train`` here means fitting, as in faiss); the module is ``.net``.
    """

    def __init__(self, config: QuantizerConfig, seed: int = 0):
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = QuantizerNet(config).eval()

    # -- properties -----------------------------------------------------------------------------------------------

    @property
    def spec(self) -> str:
        return self.config.spec

    @property
    def level_sizes(self) -> tuple[int, ...]:
        """Possible codes per level: (3, K, ..., K)."""
        return (NUM_MODALITIES,) + (self.config.codebook_size,) * self.config.levels

    @property
    def is_trained(self) -> bool:
        return bool(self.net.rq.initialized)

    @property
    def device(self) -> torch.device:
        return self.net.rq.codebooks.device

    def to(self, device: torch.device | str) -> "SemanticQuantizer":
        self.net.to(device)
        return self

    def codebooks(self) -> list[torch.Tensor]:
        """[C_0 (3 x d), C_1 (K x d), ..., C_L]: float32 copies, in level order."""
        rq = self.net.rq
        return [rq.modality_codebook.detach().clone()] + [c.detach().clone() for c in rq.codebooks]

    # -- verbs ----------------------------------------------------------------------------------------------------

    def train(self, pairs: TrainingPairs, config: QuantizerTrainConfig | None = None, *, progress: bool = True,
              checkpoint_path: str | Path | None = None, resume: bool = False,
              log: bool = True) -> QuantizerTrainReport:
        """Fit combiner and codebooks on (query, positive) pairs; see ``train_quantizer``."""
        if pairs.queries.dim != self.config.dim:
            raise InvalidInputError(f"features have d={pairs.queries.dim}, the quantizer expects {self.config.dim}")
        return train_quantizer(self, pairs, config or QuantizerTrainConfig(), progress=progress,
                               checkpoint_path=checkpoint_path, resume=resume, log=log)

    @torch.no_grad()
    def embed(self, features: Features, batch_size: int = 8192) -> np.ndarray:
        """Combiner outputs z: float32 [n, d], unit rows."""
        if features.dim != self.config.dim:
            raise InvalidInputError(f"features have d={features.dim}, the quantizer expects {self.config.dim}")
        if self.net.training:
            self.net.eval()
        out = np.empty((len(features), self.config.dim), np.float32)
        for start in range(0, len(features), batch_size):
            part = FeatureTensors.from_features(features[start:start + batch_size], self.device)
            out[start:start + len(part)] = self.net.combiner(part).float().cpu().numpy()
        return out

    def compute_codes(self, features: Features, modality_codes: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """IDs of n items: int64 [n, L+1]. ``modality_codes`` int [n] is each item's c0 (a query's target).
        ``features`` may be any feature source (``quantizer.pairs``): it is read, embedded and coded one batch at
        a time, so only the codes of all n items are held."""
        modality_codes = np.asarray(modality_codes, dtype=np.int64)
        if modality_codes.shape != (len(features),):
            raise InvalidInputError(f"modality_codes must be int [{len(features)}], got {modality_codes.shape}")
        if features.dim != self.config.dim:
            raise InvalidInputError(f"features have d={features.dim}, the quantizer expects {self.config.dim}")
        self.require_trained()
        out = np.empty((len(features), self.config.code_length), np.int64)
        for start in range(0, len(features), batch_size):
            part = slice(start, start + batch_size)
            out[part] = self.codes_from_embeddings(self.embed(features[part], batch_size), modality_codes[part],
                                                   batch_size)
        return out

    @torch.no_grad()
    def codes_from_embeddings(self, z: np.ndarray, modality_codes: np.ndarray, batch_size: int = 16384) -> np.ndarray:
        """IDs from combiner outputs z (float32 [n, d]) and c0 (int [n]): int64 [n, L+1]. Eval mode: no EMA."""
        self.require_trained()
        modality_codes = np.asarray(modality_codes, dtype=np.int64)
        if modality_codes.shape != (z.shape[0],):
            raise InvalidInputError(f"modality_codes must be int [{z.shape[0]}], got {modality_codes.shape}")
        out = np.empty((z.shape[0], self.config.code_length), np.int64)
        for start in range(0, z.shape[0], batch_size):
            zt = torch.as_tensor(np.ascontiguousarray(z[start:start + batch_size]), device=self.device)
            c0 = torch.as_tensor(modality_codes[start:start + batch_size], device=self.device)
            out[start:start + zt.shape[0]] = self.net.rq.encode(zt, c0).cpu().numpy()
        return out

    @torch.no_grad()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Reconstructions normalize(sum_l C_l[c_l]) of codes int [n, L+1]: float32 [n, d]."""
        self.require_trained()
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] != self.config.code_length:
            raise InvalidInputError(f"codes must be int [n, {self.config.code_length}], got {codes.shape}")
        if codes.size and ((codes < 0).any() or (codes >= np.asarray(self.level_sizes)).any()):
            raise InvalidInputError(f"codes out of range for level sizes {self.level_sizes}")
        return self.net.rq.decode(torch.as_tensor(codes, device=self.device)).cpu().numpy()

    def collision_stats(self, codes: np.ndarray) -> CollisionStats:
        return collision_stats(codes, self.level_sizes)

    # -- persistence ----------------------------------------------------------------------------------------------

    def digest(self) -> str:
        """sha256 of the weights and codebooks (EMA state included): changes whenever the IDs may change."""
        return tensors_digest(module_tensors(self.net))

    def save(self, directory: str | Path) -> None:
        """Write ``quantizer.json`` (format version, spec, config) and ``quantizer.safetensors``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors(directory / WEIGHTS_FILE, module_tensors(self.net), {"spec": self.spec})
        write_json(directory / CONFIG_FILE, {"format_version": FORMAT_VERSION, "spec": self.spec,
                                             "config": self.config.to_dict(), "digest": self.digest()})

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> "SemanticQuantizer":
        directory = Path(directory)
        meta = read_versioned_json(directory / CONFIG_FILE, FORMAT_VERSION)
        quantizer = cls(QuantizerConfig.from_dict(meta["config"]))
        tensors, _ = load_tensors(directory / WEIGHTS_FILE)
        load_tensors_strict(quantizer.net, tensors, str(directory / WEIGHTS_FILE))
        if quantizer.digest() != meta.get("digest"):
            raise IndexFormatError(f"{directory / WEIGHTS_FILE} does not match the digest in {CONFIG_FILE}")
        return quantizer.to(device)

    def require_trained(self) -> None:
        if not self.is_trained:
            raise InvalidInputError("the quantizer is not trained: call train() (or load a trained one) first")
