"""Synthetic clustered pools for the scaling benchmark: d = 384 unit vectors around random cluster centres, made
chunk by chunk so a million items never need more than one chunk of temporaries, and a small quantizer + generator
trained on a sample of the same distribution so that its codes cover any pool drawn from it.

The pool is image-only (modality code 0); queries are text-only noisy views of pool items asking for an image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unimir.encoders.base import Features, l2_normalize
from unimir.generator import GenerativeRetriever, GeneratorConfig, GeneratorTrainConfig
from unimir.quantizer import QuantizerConfig, QuantizerTrainConfig, SemanticQuantizer, TrainingPairs

DIM = 384
IMAGE = 0  # modality code of every pool item
CHUNK = 100_000


@dataclass(frozen=True)
class PoolSpec:
    """The distribution: ``clusters`` random unit centres; an item is centre + Gaussian noise of expected norm
    ``item_noise``, renormalised; a query is its item + noise of norm ``query_noise``, renormalised."""

    clusters: int = 1024
    item_noise: float = 0.8
    query_noise: float = 0.5
    seed: int = 0

    def describe(self) -> str:
        return (f"{self.clusters} random unit centres in d = {DIM}; item = normalise(centre + noise of norm "
                f"{self.item_noise}); query = normalise(item + noise of norm {self.query_noise})")


class ClusteredPool:
    def __init__(self, spec: PoolSpec = PoolSpec()):
        self.spec = spec
        self.centres = l2_normalize(np.random.default_rng(spec.seed).standard_normal((spec.clusters, DIM),
                                                                                    dtype=np.float32))

    def _noisy(self, base: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
        return l2_normalize(base + (noise / np.sqrt(DIM)) * rng.standard_normal(base.shape, dtype=np.float32))

    def items(self, n: int, seed: int) -> np.ndarray:
        """float32 [n, DIM] unit item vectors, generated in chunks."""
        rng = np.random.default_rng((self.spec.seed, seed))
        out = np.empty((n, DIM), np.float32)
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            out[start:start + m] = self._noisy(self.centres[rng.integers(self.spec.clusters, size=m)],
                                               self.spec.item_noise, rng)
        return out

    def queries(self, items: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(float32 [n, DIM] query vectors, int64 [n] rows of the items they were drawn from)."""
        rng = np.random.default_rng((self.spec.seed, seed, 1))
        rows = rng.integers(len(items), size=n)
        return self._noisy(items[rows], self.spec.query_noise, rng), rows


def image_features(vectors: np.ndarray) -> Features:
    n = len(vectors)
    return Features(vectors, np.zeros_like(vectors), np.ones(n, bool), np.zeros(n, bool))


def text_features(vectors: np.ndarray) -> Features:
    n = len(vectors)
    return Features(np.zeros_like(vectors), vectors, np.zeros(n, bool), np.ones(n, bool))


@dataclass(frozen=True)
class ModelSpec:
    """What the scaling benchmark trains: architecture and a short schedule (latency does not depend on it)."""

    train_items: int
    quantizer_epochs: int
    generator_epochs: int
    levels: int = 3
    codebook_size: int = 256

    @property
    def quantizer_config(self) -> QuantizerConfig:
        return QuantizerConfig(dim=DIM, levels=self.levels, codebook_size=self.codebook_size)

    @property
    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(dim=DIM, levels=self.levels, codebook_size=self.codebook_size)


def train_models(pool: ClusteredPool, spec: ModelSpec) -> GenerativeRetriever:
    """A quantizer + generator trained on ``spec.train_items`` items of the distribution, one query each."""
    items = pool.items(spec.train_items, seed=1_000)
    queries, rows = pool.queries(items, spec.train_items, seed=1_000)
    pairs = TrainingPairs(text_features(queries), image_features(items), np.full(len(items), IMAGE), rows,
                          np.full(len(rows), IMAGE))
    retriever = GenerativeRetriever(SemanticQuantizer(spec.quantizer_config))
    k = spec.codebook_size
    retriever.fit_quantizer(pairs, QuantizerTrainConfig(epochs=spec.quantizer_epochs, kmeans_init_samples=16 * k),
                            progress=False)
    retriever.fit_generator(pairs, GeneratorTrainConfig(epochs=spec.generator_epochs), spec.generator_config,
                            progress=False)
    return retriever


def pool_codes(retriever: GenerativeRetriever, items: np.ndarray) -> np.ndarray:
    """IDs of image items, int64 [n, L+1], computed chunk by chunk."""
    out = np.empty((len(items), retriever.quantizer.config.code_length), np.int64)
    codes = np.full(CHUNK, IMAGE)
    for start in range(0, len(items), CHUNK):
        part = items[start:start + CHUNK]
        out[start:start + len(part)] = retriever.quantizer.compute_codes(image_features(part), codes[:len(part)])
    return out
