"""Stage 1: combiner + modality-decoupled residual quantizer, on small synthetic clustered data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unimir.errors import IndexFormatError, InvalidInputError
from unimir.quantizer import (
    ModalityResidualQuantizer,
    QuantizerConfig,
    QuantizerTrainConfig,
    SemanticQuantizer,
    collision_stats,
)
from unimir.quantizer.checkpoint import load_tensors, save_tensors
from unimir.quantizer.synthetic import synthetic_corpus

DIM = 32
TRAIN = QuantizerTrainConfig(batch_size=128, epochs=4, lr=1e-3, kmeans_iters=10)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus(400, dim=DIM, n_clusters=8, queries_per_item=2, seed=1)


@pytest.fixture(scope="module")
def trained(corpus):
    q = SemanticQuantizer(QuantizerConfig(dim=DIM, hidden=32, levels=2, codebook_size=8), seed=0)
    report = q.train(corpus.pairs(), TRAIN, progress=False)
    return q, report


@pytest.mark.parametrize("spec", ["C256+M3+RQ3x64", "C2560+M3+RQ8x4096", "C32+M3+RQ1x2"])
def test_spec_round_trips(spec):
    config = QuantizerConfig.from_spec(spec, dim=48)
    assert config.spec == spec and config.dim == 48
    assert QuantizerConfig.from_dict(config.to_dict()) == config


def test_short_spec_uses_default_width_and_bad_specs_fail():
    assert QuantizerConfig.from_spec("M3+RQ3x64").spec == f"C{QuantizerConfig.hidden}+M3+RQ3x64"
    for bad in ("RQ3x64", "M4+RQ3x64", "C0+M3+RQ3x64", "M3+RQ3x", ""):
        with pytest.raises(InvalidInputError):
            QuantizerConfig.from_spec(bad)


def test_training_reduces_loss_and_codes_reconstruct_inputs(corpus, trained):
    q, report = trained
    assert report.steps == TRAIN.epochs * (len(corpus.positives) // TRAIN.batch_size)
    assert report.history[-1]["loss"] < report.history[0]["loss"]
    z = q.embed(corpus.candidates)
    assert z.dtype == np.float32 and np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    codes = q.compute_codes(corpus.candidates, corpus.modalities)
    assert codes.dtype == np.int64 and codes.shape == (len(z), 3)
    z_t, c0 = torch.as_tensor(z), torch.as_tensor(corpus.modalities)
    assert torch.equal(q.net.rq.encode(z_t, c0), q.net.rq.quantize(z_t, c0).codes)  # inference = training path
    recon = q.decode(codes)
    cos = (z * recon).sum(1)
    assert cos.mean() > 0.9, cos.mean()
    # reconstructions are closer to their own item than to a random other item
    assert cos.mean() > (z * recon[np.random.default_rng(0).permutation(len(z))]).sum(1).mean() + 0.2


def test_level0_is_the_modality(corpus, trained):
    q, _ = trained
    codes = q.compute_codes(corpus.candidates, corpus.modalities)
    np.testing.assert_array_equal(codes[:, 0], corpus.modalities)
    # a query's c0 is its target, whatever its own modality
    targets = np.random.default_rng(0).integers(0, 3, len(corpus.queries))
    np.testing.assert_array_equal(q.compute_codes(corpus.queries, targets)[:, 0], targets)
    with pytest.raises(InvalidInputError):
        q.compute_codes(corpus.queries, np.full(len(corpus.queries), 3))


def test_eval_codes_are_deterministic(corpus, trained):
    q, _ = trained
    first = q.compute_codes(corpus.candidates, corpus.modalities)
    np.testing.assert_array_equal(first, q.compute_codes(corpus.candidates, corpus.modalities, batch_size=7))


def test_save_load_gives_identical_codes(tmp_path, corpus, trained):
    q, _ = trained
    q.save(tmp_path)
    loaded = SemanticQuantizer.load(tmp_path)
    assert loaded.spec == q.spec and loaded.digest() == q.digest()
    np.testing.assert_array_equal(loaded.compute_codes(corpus.candidates, corpus.modalities),
                                  q.compute_codes(corpus.candidates, corpus.modalities))
    assert json.loads((tmp_path / "quantizer.json").read_text())["format_version"] == 1


def test_load_is_strict_and_names_the_keys(tmp_path, trained):
    q, _ = trained
    q.save(tmp_path)
    tensors, meta = load_tensors(tmp_path / "quantizer.safetensors")
    tensors["rq.surprise"] = torch.zeros(1)
    del tensors["combiner.gate.bias"]
    save_tensors(tmp_path / "quantizer.safetensors", tensors, meta)
    with pytest.raises(IndexFormatError, match=r"missing keys \['combiner.gate.bias'\].*unexpected keys "
                                               r"\['rq.surprise'\]"):
        SemanticQuantizer.load(tmp_path)


def test_untrained_quantizer_refuses_to_code():
    q = SemanticQuantizer(QuantizerConfig(dim=4, hidden=4, levels=1, codebook_size=2))
    with pytest.raises(InvalidInputError, match="not trained"):
        q.codes_from_embeddings(np.zeros((1, 4), np.float32), np.zeros(1))


def toy_quantizer(threshold: float = 2.0) -> ModalityResidualQuantizer:
    rq = ModalityResidualQuantizer(QuantizerConfig(dim=2, hidden=2, levels=1, codebook_size=2, ema_decay=0.9,
                                                   laplace_eps=0.0, dead_code_threshold=threshold))
    rq.modality_codebook.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    rq.modality_count.copy_(torch.tensor([4.0, 4.0, 4.0]))
    rq.modality_sum.copy_(rq.modality_codebook * 4.0)
    rq.codebooks[0].copy_(torch.tensor([[0.5, 0.0], [-0.5, 0.0]]))
    rq.ema_count[0].copy_(torch.tensor([4.0, 4.0]))
    rq.ema_sum[0].copy_(rq.codebooks[0] * 4.0)
    return rq


def test_ema_update_follows_the_formula():
    rq = toy_quantizer(threshold=0.0)
    z = torch.tensor([[1.0, 0.2], [1.0, -0.2], [-0.3, 1.0]])
    out = rq.quantize(z, torch.tensor([0, 0, 1]))
    np.testing.assert_array_equal(out.codes.numpy(), [[0, 0], [0, 0], [1, 1]])
    rq.ema_update(out.residuals, out.codes, torch.Generator().manual_seed(0))
    # level 0, modality 0: N = 0.9*4 + 0.1*2 = 3.8; S = 0.9*4*[1,0] + 0.1*([1,.2]+[1,-.2]) = [3.8, 0]
    assert torch.allclose(rq.modality_count, torch.tensor([3.8, 3.7, 3.6]))
    assert torch.allclose(rq.modality_codebook[0], torch.tensor([1.0, 0.0]))
    assert torch.allclose(rq.modality_codebook[1], (0.9 * 4 * torch.tensor([0.0, 1.0]) + 0.1 * z[2]) / 3.7)
    assert torch.allclose(rq.modality_codebook[2], torch.zeros(2))  # unseen modality keeps its mean
    # level 1: code 0 got residuals [0, .2] and [0, -.2]; code 1 got [-.3, 0]
    assert torch.allclose(rq.ema_count[0], torch.tensor([3.8, 3.7]))
    assert torch.allclose(rq.codebooks[0][0], torch.tensor([0.9 * 4 * 0.5, 0.0]) / 3.8)
    assert torch.allclose(rq.codebooks[0][1], torch.tensor([0.9 * 4 * -0.5 + 0.1 * -0.3, 0.0]) / 3.7)


def test_dead_codes_are_reseeded_from_the_batch():
    rq = toy_quantizer(threshold=2.0)
    rq.ema_count[0, 1] = 1.0  # code 1 is starving; the batch below uses only code 0
    z = torch.tensor([[1.4, 0.3], [1.6, -0.3]])
    out = rq.quantize(z, torch.tensor([0, 0]))
    assert (out.codes[:, 1] == 0).all()
    rq.ema_update(out.residuals, out.codes, torch.Generator().manual_seed(0))
    reseeded = rq.codebooks[0][1]
    assert any(torch.allclose(reseeded, r) for r in out.residuals[1])
    assert rq.ema_count[0, 1] == 2.0 and rq.ema_count[0, 0] > 2.0
    assert torch.allclose(rq.modality_codebook[2], torch.zeros(2))  # level 0 is never reseeded


def test_collision_stats():
    codes = np.array([[0, 1, 1], [0, 1, 1], [1, 0, 1], [2, 3, 0]])
    stats = collision_stats(codes, (3, 4, 4))
    assert (stats.n_items, stats.n_distinct, stats.max_bucket) == (4, 3, 2)
    assert stats.distinct_ratio == 0.75 and stats.mean_bucket == pytest.approx(4 / 3)
    assert stats.level_usage == (1.0, 0.75, 0.5)
    assert stats.level_perplexity[0] == pytest.approx(np.exp(-(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))))
    assert type(stats).from_dict(stats.to_dict()) == stats


class Crash(Exception):
    pass


def test_training_resumes_from_checkpoint(tmp_path, corpus, monkeypatch):
    import unimir.quantizer.train as train_module

    config = QuantizerConfig(dim=DIM, hidden=16, levels=1, codebook_size=4)
    train = QuantizerTrainConfig(batch_size=200, epochs=2, lr=1e-3, kmeans_iters=3)
    straight = SemanticQuantizer(config)
    straight.train(corpus.pairs(), train, progress=False)

    ckpt = tmp_path / "q.safetensors"
    real_save = train_module.save_training_state

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Crash

    monkeypatch.setattr(train_module, "save_training_state", save_then_crash)
    with pytest.raises(Crash):  # dies right after the first epoch's checkpoint
        SemanticQuantizer(config).train(corpus.pairs(), train, progress=False, checkpoint_path=ckpt)
    monkeypatch.undo()
    # a fresh object resumes: weights, codebooks, EMA state, optimiser, schedule and step all come back
    resumed = SemanticQuantizer(config)
    report = resumed.train(corpus.pairs(), train, progress=False, checkpoint_path=ckpt, resume=True)
    assert report.steps == 2 * (len(corpus.positives) // 200)
    for (name, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
    # the same settings on other training pairs (another index, other queries) must not resume from this file
    with pytest.raises(InvalidInputError, match="written by another training run"):
        SemanticQuantizer(config).train(corpus.pairs(slice(0, len(corpus.positives) // 2)), train, progress=False,
                                        checkpoint_path=ckpt, resume=True)
