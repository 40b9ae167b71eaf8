"""Stage 1: train the combiner and the codebooks on (query, positive) pairs (``genius-method.md`` §3.3-3.4)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..devices import resolve_device
from ..progress import StepLog, progress_bar
from .checkpoint import check_same_run, load_training_state, run_digest, save_training_state
from .combiner import FeatureTensors
from .config import QuantizerTrainConfig
from .optim import adamw, warmup_cosine
from .pairs import EpochBatches, FeatureRows, TrainingPairs, pair_batches
from .residual import QuantizeOutput

if TYPE_CHECKING:
    from .model import SemanticQuantizer


@dataclass
class QuantizerTrainReport:
    """steps: optimisation steps taken in total; history: per-epoch means of the loss and its parts."""

    steps: int
    history: list[dict[str, float]] = field(default_factory=list)


def quantizer_loss(z_q: torch.Tensor, z_p: torch.Tensor, out: QuantizeOutput, config: QuantizerTrainConfig,
                   positives: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """L = L_cl + w_commit*L_commit + w_mse*L_mse for n pairs.

    z_q, z_p: float32 [n, d] unit combiner outputs; ``out`` quantises [z_q; z_p] (2n rows). L_cl is symmetric
    InfoNCE on z_q.z_p / tau; L_mse compares the straight-through quantised query and positive, so its gradient
    reaches the combiner. ``positives`` (int64 [n]) masks in-batch duplicates of a row's positive when given.
    """
    n = z_q.shape[0]
    logits = z_q @ z_p.T / config.tau
    if positives is not None:
        duplicate = (positives[:, None] == positives[None, :]) & ~torch.eye(n, dtype=torch.bool, device=z_q.device)
        logits = logits.masked_fill(duplicate, float("-inf"))
    target = torch.arange(n, device=z_q.device)
    cl = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    z = torch.cat([z_q, z_p])
    z_st = z + (out.z_hat - z).detach()
    mse = F.mse_loss(z_st[:n], z_st[n:])
    loss = cl + config.w_commit * out.commit + config.w_mse * mse
    return loss, {"loss": loss.item(), "cl": cl.item(), "commit": out.commit.item(), "mse": mse.item()}


def train_quantizer(quantizer: "SemanticQuantizer", pairs: TrainingPairs, config: QuantizerTrainConfig, *,
                    progress: bool = True, checkpoint_path: str | Path | None = None,
                    resume: bool = False, log: bool = True) -> QuantizerTrainReport:
    """Train in place. k-means initialises the codebooks first (unless resuming or already initialised); the
    codebooks then follow EMA updates every step while AdamW trains the combiner. With ``checkpoint_path`` the full
    state (combiner, codebooks + EMA state, optimiser, scheduler, step) is written after every epoch, and
    ``resume=True`` continues from it."""
    device = resolve_device(config.device)
    quantizer.to(device)
    net = quantizer.net
    c0 = torch.cat([torch.as_tensor(pairs.query_targets), torch.as_tensor(pairs.positive_modalities)])
    n = len(pairs)
    # an epoch trains on query_draws drawn pairs per training query (pairs.draws)
    per_epoch = pairs.num_groups * (config.query_draws if pairs.groups is not None else 1)
    batch = min(config.batch_size, per_epoch)
    steps_per_epoch = max(1, per_epoch // batch)  # drop the ragged tail: every step sees a full set of negatives
    total = steps_per_epoch * config.epochs

    def gather_batch(rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        """Pairs ``rows`` read from their sources: parts and masks of [queries; positives], their c0, positives."""
        queries, positives = pairs.query_features(rows), pairs.positive_features(rows)
        feats = FeatureTensors.cat([FeatureTensors.from_features(queries), FeatureTensors.from_features(positives)])
        t = torch.as_tensor(rows)
        return (feats.image, feats.text, feats.image_mask, feats.text_mask, torch.cat([c0[t], c0[n + t]]),
                torch.as_tensor(pairs.positives[rows]))

    def on_device(batch_tensors: tuple[torch.Tensor, ...]) -> tuple[FeatureTensors, torch.Tensor, torch.Tensor]:
        image, text, image_mask, text_mask, codes0, positive_rows = (x.to(device, non_blocking=True)
                                                                    for x in batch_tensors)
        return FeatureTensors(image, text, image_mask, text_mask), codes0, positive_rows

    optimizer = adamw(net.combiner, config.lr, config.weight_decay, eps=config.adam_eps)
    scheduler = warmup_cosine(optimizer, total, final_ratio=config.lr_min / config.lr)
    step = 0
    run = run_digest(config.to_dict(), pairs.positives, pairs.query_rows, [len(pairs.candidates)])
    if resume and checkpoint_path is not None and Path(checkpoint_path).is_file():
        meta = load_training_state(checkpoint_path, {"quantizer": net}, optimizer, scheduler)
        check_same_run(meta, run, checkpoint_path)
        step = int(meta["step"])
    elif not quantizer.is_trained:
        _init_codebooks(quantizer, lambda rows: on_device(gather_batch(rows))[:2], pairs.draw(0, config.seed),
                        batch, config)

    report = QuantizerTrainReport(steps=step)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    net.train()
    bar = progress_bar(total, "quantizer", enabled=progress, unit="step", initial=step)
    steplog = StepLog("quantizer", total, enabled=log and not progress)
    for epoch in range(step // steps_per_epoch, config.epochs):
        sums: dict[str, float] = {}
        drawn = pairs.draws(epoch, config.seed, config.query_draws)
        sampler = EpochBatches(len(drawn), batch, config.seed, epoch, start=step - epoch * steps_per_epoch,
                               drop_last=True)
        for batch_tensors in pair_batches(lambda at: gather_batch(drawn[at]), sampler, device):
            feats, codes0, positive_rows = on_device(batch_tensors)
            rows_in_batch = len(positive_rows)
            with amp:
                z = net.combiner(feats).float()
            out = net.rq.quantize(z, codes0)
            loss, parts = quantizer_loss(z[:rows_in_batch], z[rows_in_batch:], out, config,
                                         positive_rows if config.mask_duplicate_positives else None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            net.rq.ema_update(out.residuals, out.codes, torch.Generator().manual_seed(config.seed * 1_000_003 + step))
            step += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.3f}", cl=f"{parts['cl']:.3f}", commit=f"{parts['commit']:.4f}")
            steplog.tick(step, epoch=f"{epoch + 1}/{config.epochs}", loss=parts["loss"], cl=parts["cl"])
        report.history.append({"epoch": epoch, **{k: v / steps_per_epoch for k, v in sums.items()}})
        if checkpoint_path is not None:
            save_training_state(checkpoint_path, {"quantizer": net}, optimizer, scheduler, step,
                                {"config": config.to_dict(), "run": run})
    bar.close()
    net.eval()
    if config.pool_refit:
        _refit_on_pool(quantizer, pairs, config)
    report.steps = step
    return report


@torch.no_grad()
def _refit_on_pool(quantizer: "SemanticQuantizer", pairs: TrainingPairs, config: QuantizerTrainConfig) -> None:
    """k-means codebooks on the trained combiner's outputs of every pool candidate plus the training queries (one
    drawn pair each): the pool's items, not only the training targets, shape the codes. (k-means holds these
    outputs, float32 [N + queries, d], in memory.)"""
    device = quantizer.device
    queries = pairs.first_draw(config.seed)
    zs, cs = [], []
    for source, codes in ((FeatureRows(pairs.candidates), pairs.candidate_modalities),
                          (FeatureRows(queries.queries, queries.query_rows), queries.query_targets)):
        for start in range(0, len(codes), 4096):
            part = FeatureTensors.from_features(source[start:start + 4096], device)
            zs.append(quantizer.net.combiner(part).float())
            cs.append(torch.as_tensor(codes[start:start + 4096], device=device))
    z, c = torch.cat(zs), torch.cat(cs)
    quantizer.net.rq.init_codebooks(z, c, batch_vectors=2 * min(config.batch_size, len(pairs)),
                                    iters=config.kmeans_iters, generator=torch.Generator().manual_seed(config.seed))


@torch.no_grad()
def _init_codebooks(quantizer: "SemanticQuantizer", batch_inputs, pair_rows: np.ndarray, batch: int,
                    config: QuantizerTrainConfig) -> None:
    """k-means on the combiner outputs of a random sample of the pairs ``pair_rows`` (queries and positives
    alike). The RNG stream id is one no epoch uses."""
    wanted = config.kmeans_init_samples or 2 * batch
    picked = np.random.default_rng([config.seed, 1 << 20]).permutation(len(pair_rows))[:math.ceil(wanted / 2)]
    rows = pair_rows[picked]
    zs, cs = [], []
    for chunk in (rows[i:i + 4096] for i in range(0, len(rows), 4096)):
        feats, codes0 = batch_inputs(chunk)
        z = quantizer.net.combiner(feats).float()
        k = len(chunk)
        zs += [z[:k], z[k:]]
        cs += [codes0[:k], codes0[k:]]
    quantizer.net.rq.init_codebooks(torch.cat(zs), torch.cat(cs), batch_vectors=2 * batch,
                                    iters=config.kmeans_iters,
                                    generator=torch.Generator().manual_seed(config.seed))
