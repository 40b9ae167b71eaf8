"""Gap-shifted pool pairs: index-time training inputs placed where a query for the item would lie.

A pool item's own vector z_c teaches the generator its ID, but a query for that item does not sit on z_c: it sits
about one query-to-positive offset away (a modality gap for text -> image, a smaller one for image -> image). For
every group of training pairs with the same query modality and target modality, the mean offset
delta_g = mean(z_q - z_p) is measured; each pool item then gets one extra input normalize(z_c + delta_g), for a
group g that targets the item's modality (drawn with probability proportional to the group's size), with the item's
ID as the target. Items no training group targets get none. The offsets are first-order (one vector per group), so
they move the inputs into the queries' region without copying any training query.
"""

from __future__ import annotations

import numpy as np

from ..encoders.base import Features


def modality_of(features: Features) -> np.ndarray:
    """int64 [n] modality codes from the part masks: 0 image, 1 text, 2 image+text (``Modality.code``)."""
    image, text = np.asarray(features.image_mask, bool), np.asarray(features.text_mask, bool)
    return np.where(image & text, 2, np.where(text, 1, 0)).astype(np.int64)


def group_offsets(z_q: np.ndarray, z_p: np.ndarray, query_modality: np.ndarray,
                  target_modality: np.ndarray) -> dict[tuple[int, int], tuple[np.ndarray, int]]:
    """Per (query modality, target modality): (mean of z_q - z_p float32 [d], number of pairs)."""
    out = {}
    keys = np.stack([query_modality, target_modality], axis=1)
    for key in np.unique(keys, axis=0):
        rows = np.flatnonzero((keys == key).all(axis=1))
        out[(int(key[0]), int(key[1]))] = ((z_q[rows] - z_p[rows]).mean(0).astype(np.float32), len(rows))
    return out


def shift_plan(pool_modality: np.ndarray, offsets: dict[tuple[int, int], tuple[np.ndarray, int]],
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Which pool items get a gap-shifted input and by which offset, without touching any vector (so that a
    streamed trainer can apply it per batch).

    Returns (rows int64 [m] of the items that get one, choice int64 [m] into deltas, deltas: the offset vectors)."""
    keys = list(offsets)
    rows, choice = [], []
    for modality in np.unique(pool_modality):
        groups = [i for i, (_, target) in enumerate(keys) if target == modality]
        if not groups:
            continue
        items = np.flatnonzero(pool_modality == modality)
        weights = np.array([offsets[keys[i]][1] for i in groups], np.float64)
        rows.append(items)
        choice.append(np.asarray(groups)[rng.choice(len(groups), size=len(items), p=weights / weights.sum())])
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), []
    return (np.concatenate(rows).astype(np.int64), np.concatenate(choice).astype(np.int64),
            [offsets[k][0] for k in keys])


def shift(z: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """normalize(z + delta), row by row: float32 [m, d]."""
    x = z + deltas
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def shifted_pool_inputs(z_pool: np.ndarray, pool_modality: np.ndarray,
                        offsets: dict[tuple[int, int], tuple[np.ndarray, int]],
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One gap-shifted input per pool item that some group targets (all in memory: the reference for tests).

    Returns (rows int64 [m] of the items that got one, inputs float32 [m, d] = normalize(z_c + delta_g))."""
    rows, choice, deltas = shift_plan(pool_modality, offsets, rng)
    if not len(rows):
        return rows, np.zeros((0, z_pool.shape[1]), np.float32)
    return rows, shift(z_pool[rows], np.stack(deltas)[choice])
