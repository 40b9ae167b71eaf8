"""The ID generator: vocabulary, embedding init, mixing, fast vs reference beam search, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unimir.errors import IndexFormatError, InvalidInputError
from unimir.generator import (
    EOS,
    PAD,
    GeneratorConfig,
    GeneratorTrainConfig,
    IDGenerator,
    IDVocab,
    SemanticIDTrie,
    constrained_beam_search,
    mix_query_target,
    reference_beam_search,
    residual_beam_search,
    sample_mixed_inputs,
    sequence_log_probs,
    train_generator,
)
from unimir.quantizer import ModalityResidualQuantizer, QuantizerConfig
from unimir.quantizer.checkpoint import load_tensors, save_tensors

L, K, DIM = 3, 8, 16
CONFIG = GeneratorConfig(dim=DIM, levels=L, codebook_size=K, num_layers=2, d_model=32, num_heads=4, d_ff=64,
                         prefix_len=3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = IDGenerator(CONFIG, seed=3)
    with torch.no_grad():  # sharper than T5's init, so beams are well separated
        m.t5.shared.weight.mul_(3.0)
    return m.eval()


def random_codes(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.integers(0, 3, (n, 1)), rng.integers(0, K, (n, L))], axis=1)


def queries(n: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_vocab_round_trip():
    vocab = IDVocab(levels=L, codebook_size=K)
    assert vocab.size == 6 + L * K and (PAD, EOS) == (0, 1)
    seen = set()
    for level in range(L + 1):
        for code in range(vocab.level_size(level)):
            token = vocab.token(level, code)
            assert vocab.level_code(token) == (level, code)
            seen.add(token)
    assert seen == set(range(3, vocab.size))
    assert vocab.token(0, 2) == 5 and vocab.token(1, 0) == 6 and vocab.token(2, 1) == 6 + K + 1
    codes = random_codes(20, 0)
    np.testing.assert_array_equal(vocab.tokens_to_codes(vocab.codes_to_tokens(codes)), codes)
    assert torch.equal(vocab.codes_to_tokens(torch.as_tensor(codes)), torch.as_tensor(vocab.codes_to_tokens(codes)))
    for special in (PAD, EOS, 2):
        with pytest.raises(ValueError):
            vocab.level_code(special)
    assert vocab.render(np.array([1, 17, 3, 0])) == "<m1><a17><b3><c0>"


def test_code_embeddings_align_with_codebook_rows():
    m = IDGenerator(CONFIG)
    books = [torch.randn(3, DIM)] + [torch.randn(K, DIM) for _ in range(L)]
    projection = torch.randn(CONFIG.d_model, DIM)
    specials = m.t5.shared.weight[:3].clone()
    m.init_code_embeddings(books, projection=projection)
    weight = m.t5.shared.weight
    for level, book in enumerate(books):
        for code in range(len(book)):
            expected = CONFIG.embed_init_scale * projection @ F.normalize(book[code], dim=0)
            assert torch.allclose(weight[m.vocab.token(level, code)], expected, atol=1e-4), (level, code)
    assert torch.equal(weight[:3], specials)
    assert m.t5.lm_head.weight is weight  # tied: the output layer starts from the codebooks too


def test_mixing_formula():
    zq, zp = queries(5, 1), queries(5, 2)
    assert torch.allclose(mix_query_target(zq, zp, torch.ones_like(zq)), zq, atol=1e-6)
    assert torch.allclose(mix_query_target(zq, zp, torch.zeros_like(zq)), zp, atol=1e-6)
    s = torch.full_like(zq, 0.25)
    assert torch.allclose(mix_query_target(zq, zp, s), F.normalize(0.5 * zq + 0.75 ** 0.5 * zp, dim=-1))
    rng = np.random.default_rng(0)
    assert torch.allclose(sample_mixed_inputs(zq, zp, 2.0, 0.0, rng), zq, atol=1e-6)  # mix_prob 0: clean z_q
    mixed = sample_mixed_inputs(zq, zp, 2.0, 1.0, rng)
    assert torch.allclose(mixed.norm(dim=-1), torch.ones(5)) and not torch.allclose(mixed, zq)


def test_level_masked_forward_matches_training_loss(model):
    """The full-vocabulary forward (used by generate) and the per-level loss define the same distribution."""
    codes = torch.as_tensor(random_codes(6, 1))
    z = queries(6, 3)
    tokens = model.vocab.codes_to_tokens(codes)
    decoder_input = torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, :-1]], dim=1)
    logits = model.t5(encoder_outputs=model.encode(z), decoder_input_ids=decoder_input).logits
    for level in range(L + 1):  # all mass on the level's own tokens
        lo = model.vocab.level_offset(level)
        outside = torch.ones(model.vocab.size, dtype=torch.bool)
        outside[lo:lo + model.vocab.level_size(level)] = False
        assert torch.isinf(logits[:, level, outside]).all()
    full = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))
    assert torch.allclose(full, model.loss(z, codes).loss, atol=1e-5)


def plain_beam_search(model, z, codes, beams, first_codes=None):
    """An obviously correct beam search written for the test: for every query, every live prefix is re-run
    through the whole decoder (no cache), scored over its level's codes, extended only by codes that occur after
    that prefix in ``codes`` (a Python set), and the ``beams`` best complete prefixes are kept.

    Returns, per query, a list of (id tuple, score) best first. Relies only on the model's decoder, prefix and
    per-level output head, never on a transformers generation utility."""
    pool = {tuple(row) for row in codes.tolist()}
    results = []
    with torch.no_grad():
        for q in range(z.shape[0]):
            prefix_states = model.encode(z[q:q + 1]).last_hidden_state
            live = [((), 0.0)]
            for level in range(model.vocab.code_length):
                grown = []
                for prefix, score in live:
                    tokens = [PAD] + [model.vocab.token(lv, c) for lv, c in enumerate(prefix)]
                    hidden = model.t5.decoder(input_ids=torch.tensor([tokens]), encoder_hidden_states=prefix_states,
                                              use_cache=False).last_hidden_state[0, -1]
                    log_probs = F.log_softmax(model.level_logits(hidden, level).float(), dim=-1)
                    nexts = {row[level] for row in pool if row[:level] == prefix}
                    if level == 0 and first_codes is not None and first_codes[q] >= 0:
                        nexts &= {int(first_codes[q])}
                    grown += [(prefix + (c,), score + float(log_probs[c])) for c in sorted(nexts)]
                live = sorted(grown, key=lambda beam: -beam[1])[:beams]
            results.append(live)
    return results


@pytest.mark.parametrize("n_ids,beams", [(200, 7), (4, 10), (60, 25)])
def test_fast_beam_search_equals_plain_loop(model, n_ids, beams):
    codes = random_codes(n_ids, n_ids)
    trie = SemanticIDTrie(codes, (3,) + (K,) * L)
    z = queries(3, beams)
    wanted = np.array([-1, 1, 2])
    fast = constrained_beam_search(model, z, trie, beams, first_codes=wanted)
    for q, expected in enumerate(plain_beam_search(model, z, codes, beams, first_codes=wanted)):
        valid = np.isfinite(fast.scores[q])
        assert valid.sum() == len(expected)
        assert [tuple(row) for row in fast.ids[q][valid].tolist()] == [ids for ids, _ in expected]
        np.testing.assert_allclose(fast.scores[q][valid], [score for _, score in expected], atol=1e-4)


@pytest.mark.parametrize("n_ids,beams", [(200, 1), (200, 7), (200, 25), (4, 10), (1, 3)])
def test_fast_beam_search_equals_reference(model, n_ids, beams):
    trie = SemanticIDTrie(random_codes(n_ids, n_ids), (3,) + (K,) * L)
    z = queries(4, beams)
    fast = constrained_beam_search(model, z, trie, beams)
    ref = reference_beam_search(model, z, trie, beams)
    assert fast.ids.shape == (4, beams, L + 1) and fast.scores.shape == (4, beams)
    np.testing.assert_array_equal(fast.ids, ref.ids)
    np.testing.assert_array_equal(fast.leaves, ref.leaves)
    np.testing.assert_allclose(fast.scores, ref.scores, atol=1e-4)
    valid = np.isfinite(fast.scores)
    assert (valid.sum(1) == min(beams, trie.num_ids)).all()  # padding only when the pool runs out
    assert (np.diff(np.where(valid, fast.scores, -1e30), axis=1) <= 1e-6).all()  # best first
    assert (fast.ids[~valid] == -1).all() and (fast.leaves[~valid] == -1).all()


def test_fast_decoder_follows_weight_changes(model):
    """The fused decoding weights are cached per model: an in-place change (an optimiser step, a load) must be seen
    by the next search, checked against the plain loop, which reads the modules directly."""
    changed = IDGenerator(CONFIG, seed=3)
    changed.load_state_dict(model.state_dict())
    changed.eval()
    codes = random_codes(120, 21)
    trie = SemanticIDTrie(codes, (3,) + (K,) * L)
    z = queries(2, 22)
    before = constrained_beam_search(changed, z, trie, 6)
    with torch.no_grad():
        changed.t5.decoder.block[1].layer[2].DenseReluDense.wi.weight.mul_(-2.0)
        changed.t5.decoder.final_layer_norm.weight.add_(0.5)
    after = constrained_beam_search(changed, z, trie, 6)
    for q, expected in enumerate(plain_beam_search(changed, z, codes, 6)):
        assert [tuple(row) for row in after.ids[q].tolist()] == [ids for ids, _ in expected]
        np.testing.assert_allclose(after.scores[q], [score for _, score in expected], atol=1e-4)
    assert not np.allclose(before.scores, after.scores)


def test_returned_ids_exist_and_are_distinct(model):
    codes = random_codes(150, 7)
    trie = SemanticIDTrie(codes, (3,) + (K,) * L)
    found = constrained_beam_search(model, queries(8, 8).numpy(), trie, 20)
    present = {tuple(row) for row in codes.tolist()}
    for ids, leaves in zip(found.ids, found.leaves):
        assert len({tuple(r) for r in ids.tolist()}) == len(ids)
        for row, leaf in zip(ids.tolist(), leaves):
            assert tuple(row) in present and tuple(trie.ids[leaf]) == tuple(row)
    # scores are sums of log-probabilities under the model
    tokens = torch.as_tensor(model.vocab.codes_to_tokens(found.ids[0]))
    rescored = sequence_log_probs(model, queries(8, 8)[:1].repeat(20, 1), tokens).numpy()
    np.testing.assert_allclose(rescored, found.scores[0], atol=1e-4)


def test_modality_constraint(model):
    codes = random_codes(300, 9)
    trie = SemanticIDTrie(codes, (3,) + (K,) * L)
    z = queries(5, 10)
    wanted = np.array([0, 1, 2, -1, 2])
    fast = constrained_beam_search(model, z, trie, 12, first_codes=wanted)
    for row, target in zip(fast.ids, wanted):
        assert target == -1 or (row[:, 0] == target).all()
    ref = reference_beam_search(model, z, trie, 12, first_codes=wanted)
    np.testing.assert_array_equal(fast.ids, ref.ids)
    sets = np.array([[True, True, False]] * 5)
    assert set(constrained_beam_search(model, z, trie, 12, first_codes=sets).ids[:, :, 0].ravel()) <= {0, 1}
    # a modality absent from the pool yields no beams at all
    text_only = SemanticIDTrie(codes[codes[:, 0] == 1], (3,) + (K,) * L)
    empty = constrained_beam_search(model, z[:1], text_only, 5, first_codes=np.array([0]))
    assert not np.isfinite(empty.scores).any() and (empty.leaves == -1).all()


def test_empty_batch_and_empty_pool(model):
    trie = SemanticIDTrie(random_codes(10, 16), (3,) + (K,) * L)
    none = constrained_beam_search(model, np.zeros((0, DIM), np.float32), trie, 4)
    assert none.ids.shape == (0, 4, L + 1) and none.scores.shape == (0, 4)
    empty = SemanticIDTrie(np.zeros((0, L + 1), np.int64), (3,) + (K,) * L)
    found = constrained_beam_search(model, queries(2, 17), empty, 4)
    assert (found.leaves == -1).all() and np.isneginf(found.scores).all()


def test_residual_beam_search_finds_the_nearest_pool_id():
    rq = ModalityResidualQuantizer(QuantizerConfig(dim=DIM, hidden=4, levels=2, codebook_size=K))
    gen = torch.Generator().manual_seed(0)
    rq.modality_codebook.copy_(torch.randn(3, DIM, generator=gen))
    rq.codebooks.copy_(torch.randn(2, K, DIM, generator=gen) * 0.5)
    rq.initialized.fill_(True)
    codes = np.concatenate([np.random.default_rng(1).integers(0, 3, (60, 1)),
                            np.random.default_rng(2).integers(0, K, (60, 2))], axis=1)
    trie = SemanticIDTrie(codes, (3, K, K))
    z = torch.randn(6, DIM, generator=gen)
    found = residual_beam_search(rq, z, trie, beams=trie.num_ids, first_codes=np.array([0, 1, 2, 0, 1, 2]))
    ids = trie.ids.astype(np.int64)  # uint8 in the trie; torch would read a uint8 index as a mask
    recon = rq.modality_codebook[ids[:, 0]] + rq.codebooks[0][ids[:, 1]] + rq.codebooks[1][ids[:, 2]]
    for i in range(6):
        errors = ((z[i] - recon) ** 2).sum(-1)
        errors[torch.as_tensor(trie.ids[:, 0] != i % 3)] = float("inf")
        assert found.leaves[i, 0] == int(errors.argmin())
        assert found.scores[i, 0] == pytest.approx(-float(errors.min()), rel=1e-4)


class Crash(Exception):
    pass


def test_training_learns_and_resume_restores_everything(tmp_path, monkeypatch):
    import unimir.generator.train as train_module

    codes = random_codes(40, 11)
    zq, zp = queries(40, 12).numpy(), queries(40, 13).numpy()
    config = GeneratorTrainConfig(batch_size=16, epochs=4, lr=3e-3, warmup_ratio=0.1)
    straight = IDGenerator(CONFIG)
    report = train_generator(straight, zq, zp, codes, config, progress=False)
    assert report.history[-1]["loss"] < report.history[0]["loss"]

    ckpt = tmp_path / "gen.safetensors"
    real_save = train_module.save_training_state

    def save_then_crash(*args, **kwargs):
        real_save(*args, **kwargs)
        if args[4] == 6:  # the step, after epoch 2 of 4
            raise Crash

    monkeypatch.setattr(train_module, "save_training_state", save_then_crash)
    with pytest.raises(Crash):
        train_generator(IDGenerator(CONFIG), zq, zp, codes, config, progress=False, checkpoint_path=ckpt)
    monkeypatch.undo()
    resumed = IDGenerator(CONFIG)  # fresh weights, optimiser and schedule: all must come from the file
    report = train_generator(resumed, zq, zp, codes, config, progress=False, checkpoint_path=ckpt, resume=True)
    assert report.steps == 12
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    with pytest.raises(InvalidInputError, match="written by another training run"):  # other targets: another index
        train_generator(IDGenerator(CONFIG), zq, zp, random_codes(40, 99), config, progress=False,
                        checkpoint_path=ckpt, resume=True)


def test_save_load_round_trip_and_strictness(tmp_path, model):
    model.save(tmp_path)
    loaded = IDGenerator.load(tmp_path)
    assert loaded.digest() == model.digest()
    trie = SemanticIDTrie(random_codes(100, 14), (3,) + (K,) * L)
    z = queries(3, 15)
    np.testing.assert_array_equal(constrained_beam_search(loaded, z, trie, 5).ids,
                                  constrained_beam_search(model, z, trie, 5).ids)
    tensors, meta = load_tensors(tmp_path / "generator.safetensors")
    tensors.pop("prefix.bias")
    save_tensors(tmp_path / "generator.safetensors", tensors, meta)
    with pytest.raises(IndexFormatError, match=r"missing keys \['prefix.bias'\]"):
        IDGenerator.load(tmp_path)


def test_training_progress_in_a_log_is_plain_lines(capsys, monkeypatch):
    # not a terminal (pytest captures stderr): plain lines, never a redrawn bar full of carriage returns
    monkeypatch.setenv("UNIMIR_PROGRESS_INTERVAL", "0")
    codes = random_codes(20, 3)
    zq = queries(20, 4).numpy()
    train_generator(IDGenerator(CONFIG), zq, zq, codes, GeneratorTrainConfig(batch_size=10, epochs=1), progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and "generator: 2/2 steps (100%)" in err


@pytest.mark.parametrize("patience, epochs_run", [(2, 4), (0, 6)])
def test_best_validation_weights_are_kept_and_patience_stops_early(patience, epochs_run):
    codes, zq = random_codes(20, 5), queries(20, 6).numpy()
    model = IDGenerator(CONFIG)
    scores, snapshots = iter([0.5, 0.9, 0.3, 0.2, 0.1, 0.0]), []  # best at the second validation run (epoch 1)

    def validate():
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scores)

    config = GeneratorTrainConfig(batch_size=10, epochs=6, val_every=1, patience=patience)
    report = train_generator(model, zq, zq, codes, config, progress=False, validate=validate)
    assert (report.stopped_early, report.best_epoch, len(report.history)) == (patience > 0, 1, epochs_run)
    assert all(torch.equal(v, snapshots[1][k]) for k, v in model.state_dict().items())
    assert GeneratorTrainConfig().patience == 0  # the default runs every epoch
