"""Modality-decoupled residual quantizer (``genius-method.md`` §3.2, §8.1).

Level 0 is the modality code, assigned rather than searched: its codeword is the EMA mean of that modality's
vectors. Levels 1..L are K-entry codebooks over successive residuals, initialised by k-means and updated by EMA
with Laplace-smoothed counts; codewords whose EMA count drops below a threshold are reseeded from the batch.
Codebooks are buffers: they never receive gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from .config import NUM_MODALITIES, QuantizerConfig
from .kmeans import kmeans, squared_distances


@dataclass
class QuantizeOutput:
    """codes int64 [n, L+1]; z_hat float32 [n, d] normalised reconstruction (no gradient);
    commit: scalar, mean over levels of mean((r_l - sg(C_l[c_l]))^2), differentiable through the residuals;
    residuals float32 [L+1, n, d]: the (detached) input of every level, for the EMA update."""

    codes: torch.Tensor
    z_hat: torch.Tensor
    commit: torch.Tensor
    residuals: torch.Tensor


class ModalityResidualQuantizer(nn.Module):
    """Codebooks (buffers) and their EMA state; ``quantize`` for training, ``encode`` / ``decode`` for inference."""

    def __init__(self, config: QuantizerConfig):
        super().__init__()
        self.config = config
        m, L, K, d = NUM_MODALITIES, config.levels, config.codebook_size, config.dim
        self.register_buffer("modality_codebook", torch.zeros(m, d))
        self.register_buffer("modality_count", torch.zeros(m))
        self.register_buffer("modality_sum", torch.zeros(m, d))
        # codebooks[i] is C_{i+1}, the codebook of semantic level i + 1.
        self.register_buffer("codebooks", torch.zeros(L, K, d))
        self.register_buffer("ema_count", torch.zeros(L, K))
        self.register_buffer("ema_sum", torch.zeros(L, K, d))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @property
    def levels(self) -> int:
        return self.config.levels

    def check_modalities(self, c0: torch.Tensor) -> None:
        if c0.numel() and (int(c0.min()) < 0 or int(c0.max()) >= NUM_MODALITIES):
            raise InvalidInputError(f"modality codes must be in 0..{NUM_MODALITIES - 1} "
                                    f"(0 image, 1 text, 2 image,text), got {sorted(set(c0.tolist()))[:10]}")

    @torch.no_grad()
    def init_codebooks(self, z: torch.Tensor, c0: torch.Tensor, batch_vectors: int, iters: int,
                       generator: torch.Generator) -> None:
        """Level 0 from per-modality means; level l by k-means on the residuals left by levels < l.

        EMA counts start at the k-means cluster sizes rescaled to ``batch_vectors`` (vectors per training step),
        the steady-state unit of an EMA count, so well-populated codewords are not reseeded on the first step.
        """
        self.check_modalities(c0)
        z = z.float()
        scale = batch_vectors / z.shape[0]
        counts = torch.bincount(c0, minlength=NUM_MODALITIES).float()
        sums = torch.zeros_like(self.modality_sum).index_add_(0, c0, z)
        self.modality_count.copy_(counts * scale)
        self.modality_sum.copy_(sums * scale)
        self.modality_codebook.copy_(sums / counts.clamp_min(1.0)[:, None])
        r = z - self.modality_codebook[c0]
        for i in range(self.levels):
            centroids, cluster_sizes = kmeans(r, self.config.codebook_size, iters, generator)
            self.codebooks[i].copy_(centroids)
            self.ema_count[i].copy_(cluster_sizes * scale)
            self.ema_sum[i].copy_(centroids * (cluster_sizes * scale)[:, None])
            r = r - centroids[squared_distances(r, centroids).argmin(-1)]
        self.initialized.fill_(True)

    def quantize(self, z: torch.Tensor, c0: torch.Tensor) -> QuantizeOutput:
        """Residual-encode z (float32 [n, d]) with level-0 codes c0 (int64 [n]) given. Pure: no codebook update."""
        self.check_modalities(c0)
        r = z.float()
        q = self.modality_codebook[c0]
        codes, commits, residuals, recon = [c0], [F.mse_loss(r, q)], [r.detach()], q
        r = r - q
        for i in range(self.levels):
            book = self.codebooks[i]
            with torch.no_grad():
                c = squared_distances(r.detach(), book).argmin(-1)
            q = book[c]
            codes.append(c)
            commits.append(F.mse_loss(r, q))
            residuals.append(r.detach())
            r = r - q
            recon = recon + q
        return QuantizeOutput(torch.stack(codes, dim=1), F.normalize(recon, dim=-1),
                              torch.stack(commits).mean(), torch.stack(residuals))

    @torch.no_grad()
    def encode(self, z: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
        """Codes int64 [n, L+1] of z (float32 [n, d]) given c0 (int64 [n]): nearest codeword per level, no losses."""
        self.check_modalities(c0)
        r = z.float() - self.modality_codebook[c0]
        codes = [c0]
        for i in range(self.levels):
            codes.append(squared_distances(r, self.codebooks[i]).argmin(-1))
            r = r - self.codebooks[i][codes[-1]]
        return torch.stack(codes, dim=1)

    @torch.no_grad()
    def ema_update(self, residuals: torch.Tensor, codes: torch.Tensor, generator: torch.Generator) -> None:
        """One EMA step from a batch (``QuantizeOutput.residuals`` and ``.codes``), then dead-code reseeding.

        N <- g*N + (1-g)*n;  S <- g*S + (1-g)*sum(r);  C = S / N~, with N~ Laplace-smoothed at levels >= 1.
        Level 0 keeps the plain mean S/N: smoothing would pull a rare modality's mean towards zero.
        """
        g, eps, K = self.config.ema_decay, self.config.laplace_eps, self.config.codebook_size
        c0 = codes[:, 0]
        self.modality_count.mul_(g).add_(torch.bincount(c0, minlength=NUM_MODALITIES).float(), alpha=1 - g)
        self.modality_sum.mul_(g).add_(torch.zeros_like(self.modality_sum).index_add_(0, c0, residuals[0]),
                                       alpha=1 - g)
        seen = self.modality_count > 1e-12
        self.modality_codebook[seen] = self.modality_sum[seen] / self.modality_count[seen, None]
        for i in range(self.levels):
            c, r = codes[:, i + 1], residuals[i + 1]
            self.ema_count[i].mul_(g).add_(torch.bincount(c, minlength=K).float(), alpha=1 - g)
            self.ema_sum[i].mul_(g).add_(torch.zeros_like(self.ema_sum[i]).index_add_(0, c, r), alpha=1 - g)
            total = self.ema_count[i].sum()
            smoothed = (self.ema_count[i] + eps) / (total + K * eps) * total
            self.codebooks[i].copy_(self.ema_sum[i] / smoothed[:, None])
            self._reseed_dead(i, r, generator)

    def _reseed_dead(self, i: int, r: torch.Tensor, generator: torch.Generator) -> None:
        """Replace codebook i's codewords with EMA count < threshold by random batch residuals. The new count is the
        threshold itself, so a reseeded codeword survives the next step iff it captures >= threshold vectors."""
        dead = (self.ema_count[i] < self.config.dead_code_threshold).nonzero().squeeze(1)
        if dead.numel() == 0:
            return
        pick = torch.randint(r.shape[0], (dead.numel(),), generator=generator, device="cpu").to(r.device)
        self.codebooks[i, dead] = r[pick]
        self.ema_count[i, dead] = self.config.dead_code_threshold
        self.ema_sum[i, dead] = r[pick] * self.config.dead_code_threshold

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """normalize(C_0[c_0] + sum_l C_l[c_l]) for codes int64 [n, L+1]: float32 [n, d]."""
        recon = self.modality_codebook[codes[:, 0]]
        for i in range(self.levels):
            recon = recon + self.codebooks[i][codes[:, i + 1]]
        return F.normalize(recon, dim=-1)
