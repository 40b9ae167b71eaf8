"""Stage 2: teach the generator to emit a positive's ID from its query (``genius-method.md`` §4.3).

The quantizer is frozen, so the caller passes combiner outputs (z_q, z_p) and the positives' IDs, as arrays or as
lazy arrays computed per batch.
Every random draw (epoch order, mixing, dropout) is seeded from (seed, epoch or step), so a resumed run continues
exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..devices import resolve_device
from ..errors import InvalidInputError
from ..progress import StepLog, progress_bar
from ..quantizer.checkpoint import check_same_run, load_training_state, run_digest, save_training_state
from ..quantizer.config import config_from_dict
from ..quantizer.optim import adamw, warmup_cosine
from ..quantizer.pairs import EpochBatches, pair_batches
from .model import IDGenerator


@dataclass(frozen=True)
class GeneratorTrainConfig:
    batch_size: int = 128  # paper 1024
    epochs: int = 30  # paper 31; on small pools train until exact-ID accuracy is near 1
    lr: float = 1e-3  # paper 1e-4 (for a 6-layer model on 1M+ queries)
    warmup_ratio: float = 0.05  # linear warm-up share of all steps (paper: 500 steps)
    weight_decay: float = 1e-4  # matrices only
    betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-6
    grad_clip: float = 1.0
    mix_alpha: float = 2.0  # s ~ Beta(alpha, alpha) per sample and dimension
    mix_prob: float = 1.0  # share of samples that are mixed (paper: all)
    amp: bool = True  # bfloat16 autocast, on CUDA only
    # Generalisation (docs/bench/generative-ablation.md measures each):
    pool_pairs: bool = True  # index-time training: every indexed item's own vector -> its ID (DSI "indexing")
    pool_noise: float = 0.5  # relative norm of Gaussian noise on those self-pair inputs (regions, not points)
    pool_shift: bool = True  # + one self-pair per item moved by its task's mean query-positive offset (augment.py)
    query_noise: float = 0.0  # the same for (query, positive) inputs, after mixing
    # (query, positive) pairs drawn per training query and epoch (independent draws of paraphrase and positive),
    # beside one pass over the pool pairs: the weight of the queries against the pool pairs. 4 is the weight that
    # the demo's 4 instruction paraphrases had when each was its own pair; chosen on validation recall over
    # 1, 2, 4 (docs/bench/generative-ablation.md, stop 20). Only for pairs grouped by query (TrainingPairs.groups);
    # ungrouped pairs are each trained once per epoch
    query_draws: int = 4
    val_share: float = 0.1  # share of training targets held out as unseen validation targets (0: none)
    val_every: int = 2  # epochs between validation runs
    # validation runs without improvement before stopping early; 0: run every epoch (the best validation weights
    # are kept either way). Recall on a few hundred validation pairs is noisy, and stopping on it after 4 runs cut
    # the demo's training short (docs/bench/generative-ablation.md, stop 17)
    patience: int = 0
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.epochs < 1 or self.query_draws < 1:
            raise InvalidInputError("generator batch_size, epochs and query_draws must be >= 1")
        if not 0.0 <= self.mix_prob <= 1.0:
            raise InvalidInputError(f"mix_prob must be in [0, 1], got {self.mix_prob}")
        if not 0.0 <= self.val_share < 1.0 or self.val_every < 1 or self.patience < 0:
            raise InvalidInputError("need 0 <= val_share < 1, val_every >= 1 and patience >= 0")
        if self.pool_noise < 0 or self.query_noise < 0:
            raise InvalidInputError("noise scales must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GeneratorTrainConfig":
        return config_from_dict(cls, {**data, "betas": tuple(data.get("betas", cls.betas))})


@dataclass
class GeneratorTrainReport:
    """steps: optimisation steps taken in total; history: per-epoch means of loss, token_acc, exact_acc and
    level_acc (per-level accuracy), all teacher-forced on the mixed training inputs."""

    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None  # epoch whose weights were kept (early stopping on the validation metric)
    stopped_early: bool = False
    health: dict[str, Any] = field(default_factory=dict)


def add_noise(x: torch.Tensor, scale: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """normalize(x + scale * e / sqrt(d)) with e ~ N(0, I): per-row noise of relative norm ``scale`` ([n])."""
    e = torch.as_tensor(rng.standard_normal(size=tuple(x.shape)).astype(np.float32), device=x.device)
    return F.normalize(x + scale[:, None].to(x.device) * e / x.shape[1] ** 0.5, dim=-1)


def mix_query_target(z_q: torch.Tensor, z_p: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x = normalize(sqrt(s) * z_q + sqrt(1 - s) * z_p), elementwise s in [0, 1] (s = 1 gives z_q)."""
    return F.normalize(s.sqrt() * z_q + (1.0 - s).sqrt() * z_p, dim=-1)


def sample_mixed_inputs(z_q: torch.Tensor, z_p: torch.Tensor, alpha: float, prob: float,
                        rng: np.random.Generator) -> torch.Tensor:
    """Training inputs: each row mixed with probability ``prob`` (s ~ Beta(alpha, alpha) per dimension), else z_q."""
    s = rng.beta(alpha, alpha, size=tuple(z_q.shape)).astype(np.float32)
    s[rng.random(z_q.shape[0]) >= prob] = 1.0
    return mix_query_target(z_q, z_p, torch.as_tensor(s, device=z_q.device))


def train_generator(model: IDGenerator, z_q: np.ndarray, z_p: np.ndarray, target_codes: np.ndarray,
                    config: GeneratorTrainConfig, *, progress: bool = True,
                    checkpoint_path: str | Path | None = None, resume: bool = False,
                    noise: np.ndarray | None = None, validate: Callable[[], float] | None = None,
                    epoch_rows: Callable[[int], np.ndarray] | None = None, log: bool = True) -> GeneratorTrainReport:
    """Train in place on n pairs: z_q, z_p float32 [n, d] (combiner outputs of queries and positives) and
    target_codes int64 [n, L+1] (the positives' IDs). z_q and z_p may be lazy arrays (``shape`` and ``[rows]``,
    e.g. ``generator.retriever.Embedded``): a DataLoader reads them one batch of rows at a time.

    AdamW (no decay on biases and norms), linear warm-up then cosine to 0, gradient clipping, bfloat16 autocast
    on CUDA. With ``checkpoint_path`` the model, optimiser, scheduler and step are saved after every epoch;
    ``resume=True`` continues from that file when it exists.

    noise: float [n], per-row relative noise added to the (mixed) inputs (default ``config.query_noise``).
    validate: called (model in eval mode) every ``config.val_every`` epochs; higher is better. The best weights
    are kept, and training stops after ``config.patience`` runs without improvement.
    epoch_rows: the rows an epoch trains on (int64, the same number every epoch), e.g. one drawn pair per training
    query (``TrainingPairs.draw``) plus the pool pairs; default all n rows.
    """
    n = z_q.shape[0]
    if z_p.shape != z_q.shape or target_codes.shape != (n, model.vocab.code_length):
        raise InvalidInputError(f"need z_q, z_p [n, d] and target codes [n, {model.vocab.code_length}], got "
                                f"{z_q.shape}, {z_p.shape}, {target_codes.shape}")
    device = resolve_device(config.device)
    model.to(device)
    noise = np.full(n, config.query_noise, np.float32) if noise is None else np.asarray(noise, np.float32)

    def gather_batch(rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        """z_q, z_p, target IDs and noise of the pairs ``rows``, read (or computed, for lazy inputs) per batch."""
        return (torch.as_tensor(np.asarray(z_q[rows], np.float32)), torch.as_tensor(np.asarray(z_p[rows], np.float32)),
                torch.as_tensor(np.asarray(target_codes[rows]), dtype=torch.long), torch.as_tensor(noise[rows]))

    rows_of_epoch = epoch_rows or (lambda epoch: np.arange(n, dtype=np.int64))
    steps_per_epoch = math.ceil(len(rows_of_epoch(0)) / config.batch_size)
    total = steps_per_epoch * config.epochs
    optimizer = adamw(model, config.lr, config.weight_decay, betas=config.betas, eps=config.adam_eps)
    scheduler = warmup_cosine(optimizer, total, warmup_steps=round(config.warmup_ratio * total))
    step = 0
    run = run_digest(config.to_dict(), target_codes, [n])  # the positives' IDs: another index gives others
    if resume and checkpoint_path is not None and Path(checkpoint_path).is_file():
        meta = load_training_state(checkpoint_path, {"generator": model}, optimizer, scheduler)
        check_same_run(meta, run, checkpoint_path)
        step = int(meta["step"])

    report = GeneratorTrainReport(steps=step)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda")
    model.train()
    bar = progress_bar(total, "generator", enabled=progress, unit="step", initial=step)
    steplog = StepLog("generator", total, enabled=log and not progress)
    best, best_state, waited = -1.0, None, 0
    for epoch in range(step // steps_per_epoch, config.epochs):
        sums: dict[str, Any] = {"loss": 0.0, "token_acc": 0.0, "exact_acc": 0.0,
                                "level_acc": np.zeros(model.vocab.code_length)}
        rows = rows_of_epoch(epoch)
        sampler = EpochBatches(len(rows), config.batch_size, config.seed, epoch, start=step - epoch * steps_per_epoch)
        for zq_rows, zp_rows, target_rows, noise_rows in pair_batches(lambda at: gather_batch(rows[at]), sampler,
                                                                      device):
            rng = np.random.default_rng([config.seed, 1 << 20, step])
            x = sample_mixed_inputs(zq_rows.to(device), zp_rows.to(device), config.mix_alpha, config.mix_prob, rng)
            if bool((noise_rows > 0).any()):
                x = add_noise(x, noise_rows, rng)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(int(rng.integers(2**62)))  # dropout masks, reproducible on resume
                with amp:
                    out = model.loss(x, target_rows.to(device))
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            part = {"loss": out.loss.item(), "token_acc": out.token_acc, "exact_acc": out.exact_acc,
                    "level_acc": np.asarray(out.level_acc)}
            for k, v in part.items():
                sums[k] += v / steps_per_epoch
            bar.update(1)
            bar.set_postfix(loss=f"{part['loss']:.3f}", exact_acc=f"{part['exact_acc']:.3f}")
            steplog.tick(step, epoch=f"{epoch + 1}/{config.epochs}", loss=part["loss"], exact_acc=part["exact_acc"])
        entry = {"epoch": epoch, **sums, "level_acc": sums["level_acc"].tolist()}
        if checkpoint_path is not None:
            save_training_state(checkpoint_path, {"generator": model}, optimizer, scheduler, step,
                                {"config": config.to_dict(), "run": run})
        last = epoch + 1 == config.epochs
        if validate is not None and ((epoch + 1) % config.val_every == 0 or last):
            model.eval()
            entry["val"] = float(validate())
            model.train()
            steplog.note(f"epoch {epoch + 1}: validation {entry['val']:.4f} (best {max(best, entry['val']):.4f})")
            if entry["val"] > best:
                best, waited, report.best_epoch = entry["val"], 0, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                waited += 1
        report.history.append(entry)
        if config.patience and waited >= config.patience:
            report.stopped_early = True
            steplog.note(f"stopping early after epoch {epoch + 1}: no better validation for {waited} runs")
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    report.steps = step
    return report
