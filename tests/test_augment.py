"""Gap-shifted pool pairs (``unimir.generator.augment``) against direct computations."""

from __future__ import annotations

import numpy as np

from unimir.encoders.base import Features
from unimir.generator.augment import group_offsets, modality_of, shifted_pool_inputs


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_modality_of_reads_the_part_masks():
    d = 4
    f = Features(np.zeros((3, d), np.float32), np.zeros((3, d), np.float32), np.array([True, False, True]),
                 np.array([False, True, True]))
    assert modality_of(f).tolist() == [0, 1, 2]


def test_offsets_are_the_mean_query_minus_positive_per_group():
    rng = np.random.default_rng(0)
    z_q, z_p = rng.standard_normal((10, 3)), rng.standard_normal((10, 3))
    qm = np.array([1, 1, 1, 0, 0, 1, 1, 0, 0, 0])
    tm = np.array([0, 0, 0, 0, 0, 1, 1, 1, 0, 0])
    got = group_offsets(z_q, z_p, qm, tm)
    assert set(got) == {(1, 0), (0, 0), (1, 1), (0, 1)}
    for (a, b), (offset, n) in got.items():
        rows = [i for i in range(10) if qm[i] == a and tm[i] == b]
        assert n == len(rows)
        np.testing.assert_allclose(offset, np.mean([z_q[i] - z_p[i] for i in rows], axis=0), rtol=1e-6)


def test_each_targeted_item_gets_one_input_shifted_by_one_of_its_groups_offsets():
    rng = np.random.default_rng(1)
    z_pool = unit(rng.standard_normal((30, 5))).astype(np.float32)
    modality = np.array([0] * 12 + [1] * 10 + [2] * 8)
    offsets = {(1, 0): (np.full(5, 0.3, np.float32), 40), (0, 0): (np.full(5, -0.1, np.float32), 10),
               (0, 1): (np.array([1, 0, 0, 0, 0], np.float32), 5)}  # nothing targets modality 2
    rows, x = shifted_pool_inputs(z_pool, modality, offsets, np.random.default_rng(2))
    assert sorted(rows.tolist()) == list(range(22))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    for r, xi in zip(rows, x):
        candidates = [unit((z_pool[r] + off)[None])[0] for (_, t), (off, _) in offsets.items() if t == modality[r]]
        assert min(np.abs(xi - c).max() for c in candidates) < 1e-5
    # the group is drawn in proportion to its pairs: (1, 0) has 4x the pairs of (0, 0)
    many, _ = shifted_pool_inputs(np.tile(z_pool[:1], (4000, 1)), np.zeros(4000, np.int64),
                                  {k: v for k, v in offsets.items() if k[1] == 0}, np.random.default_rng(3))
    _, xs = shifted_pool_inputs(np.tile(z_pool[:1], (4000, 1)), np.zeros(4000, np.int64),
                                {k: v for k, v in offsets.items() if k[1] == 0}, np.random.default_rng(3))
    first = unit((z_pool[:1] + 0.3))[0]
    share = np.mean(np.abs(xs - first).max(axis=1) < 1e-5)
    assert len(many) == 4000 and 0.75 < share < 0.85


def test_no_group_no_inputs():
    rows, x = shifted_pool_inputs(np.ones((3, 4), np.float32), np.zeros(3, np.int64), {}, np.random.default_rng(0))
    assert rows.shape == (0,) and x.shape == (0, 4)


def test_fit_generator_trains_on_one_shifted_pair_per_targeted_pool_item():
    """With pool_shift each pool item adds a second index-time pair (synthetic queries target every item's
    modality), visible in the number of optimiser steps of one epoch at batch 1."""
    import copy

    from unimir.generator import GenerativeRetriever, GeneratorConfig, GeneratorTrainConfig
    from unimir.quantizer import QuantizerConfig, QuantizerTrainConfig, SemanticQuantizer
    from unimir.quantizer.synthetic import synthetic_corpus

    corpus = synthetic_corpus(40, dim=16, n_clusters=4, queries_per_item=1, seed=0)
    r = GenerativeRetriever(SemanticQuantizer(QuantizerConfig(dim=16, hidden=16, levels=2, codebook_size=4)))
    r.fit_quantizer(corpus.pairs(), QuantizerTrainConfig(batch_size=32, epochs=1, kmeans_iters=3), progress=False,
                    log=False)
    r.index(corpus.candidates, corpus.modalities)
    tiny = GeneratorConfig(num_layers=1, d_model=8, num_heads=2, d_ff=16, prefix_len=1)
    steps = {}
    for shift in (False, True):
        fresh = copy.deepcopy(r)
        config = GeneratorTrainConfig(batch_size=1, epochs=1, pool_shift=shift, val_share=0.0)
        steps[shift] = fresh.fit_generator(corpus.pairs(), config, tiny, progress=False, log=False,
                                           pool=(corpus.candidates, corpus.modalities)).steps
    assert steps[False] == 40 + 40 and steps[True] == 40 + 40 + 40
