"""Lloyd's k-means in torch, used to initialise the residual codebooks."""

from __future__ import annotations

import torch

from ..errors import InvalidInputError


def squared_distances(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """||x_i - c_j||^2 for x [n, d] and centroids [k, d]: float32 [n, k] (expanded form, clamped at 0)."""
    d = (x * x).sum(-1, keepdim=True) - 2.0 * x @ centroids.T + (centroids * centroids).sum(-1)[None, :]
    return d.clamp_min_(0.0)


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster x (float32 [n, d], n >= k) into k centroids.

    Starts from k distinct random points; an empty cluster is reseeded with a random point, so all k centroids stay
    in use. Returns (centroids float32 [k, d], counts float32 [k] of the final assignment).
    """
    n = x.shape[0]
    if n < k:
        raise InvalidInputError(f"k-means needs at least k={k} vectors, got {n}: lower the codebook size "
                                f"or raise kmeans_init_samples")
    centroids = x[torch.randperm(n, generator=generator, device="cpu").to(x.device)[:k]].clone()
    for _ in range(iters):
        assign = squared_distances(x, centroids).argmin(-1)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp_min(1.0)[:, None])
        if empty.any():
            pick = torch.randint(n, (int(empty.sum()),), generator=generator, device="cpu").to(x.device)
            centroids[empty] = x[pick]
    assign = squared_distances(x, centroids).argmin(-1)
    return centroids, torch.bincount(assign, minlength=k).to(x.dtype)
