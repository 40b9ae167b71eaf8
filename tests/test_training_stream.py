"""Streamed training: pairs as row indices over memory-mapped features give the same batches and losses as the
simple in-RAM path, for both stages; ``training_pairs`` encodes a (query, paraphrase) into fp16 files when an
epoch first draws it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from unimir.encoders import Features
from unimir.errors import InvalidInputError
from unimir.generator import GenerativeRetriever, GeneratorConfig, GeneratorTrainConfig, IDGenerator
from unimir.generator.augment import group_offsets, modality_of, shifted_pool_inputs
from unimir.generator.train import train_generator
from unimir.index import Index
from unimir.index.features import read_features
from unimir.quantizer import QuantizerConfig, QuantizerTrainConfig, SemanticQuantizer, TrainingPairs
from unimir.quantizer.pairs import EpochBatches
from unimir.quantizer.synthetic import synthetic_corpus

DIM = 16
SPEC = "C16+M3+RQ2x8"
GEN = GeneratorConfig(num_layers=1, d_model=32, num_heads=2, d_ff=64)


def fp16_exact(f: Features) -> Features:
    """float32 parts that fp16 stores exactly, so the in-RAM and memory-mapped runs see the same numbers."""
    return Features(f.image.astype(np.float16).astype(np.float32), f.text.astype(np.float16).astype(np.float32),
                    f.image_mask.copy(), f.text_mask.copy())


def write_parts(folder, f: Features):
    folder.mkdir()
    for name in ("image", "text"):
        np.save(folder / f"{name}.npy", getattr(f, name).astype(np.float16))
    for name in ("image_mask", "text_mask"):
        np.save(folder / f"{name}.npy", getattr(f, name))
    return read_features(folder)


@pytest.fixture(scope="module")
def two_ways(tmp_path_factory, one_torch_thread):
    """The same pairs twice: in RAM (one materialised query row per pair) and as index arrays over memory maps
    (distinct query rows, several positives per query)."""
    corpus = synthetic_corpus(60, dim=DIM, queries_per_item=1, seed=3)
    rng = np.random.default_rng(0)
    distinct = fp16_exact(corpus.queries)
    candidates = fp16_exact(corpus.candidates)
    query_rows = np.repeat(np.arange(len(distinct)), 2)  # every query has two positives: its own and a random one
    positives = np.stack([corpus.positives, rng.integers(len(candidates), size=len(distinct))], 1).reshape(-1)
    targets = corpus.modalities[positives]
    in_ram = TrainingPairs(distinct[query_rows], candidates, corpus.modalities, positives, targets)
    work = tmp_path_factory.mktemp("mapped")
    mapped = TrainingPairs(write_parts(work / "queries", distinct), write_parts(work / "candidates", candidates),
                           corpus.modalities, positives, targets, query_rows)
    assert isinstance(mapped.queries.image, np.memmap) and mapped.queries.image.dtype == np.float16
    return in_ram, mapped


def test_epoch_batches_are_the_seeded_permutation_resumable_mid_epoch():
    order = np.random.default_rng([5, 2]).permutation(10)
    batches = list(EpochBatches(10, 4, seed=5, epoch=2))
    assert [b.tolist() for b in batches] == [order[:4].tolist(), order[4:8].tolist(), order[8:].tolist()]
    assert [b.tolist() for b in EpochBatches(10, 4, seed=5, epoch=2, drop_last=True)] == \
        [order[:4].tolist(), order[4:8].tolist()]
    resumed = EpochBatches(10, 4, seed=5, epoch=2, start=1)
    assert len(resumed) == 2 and [b.tolist() for b in resumed] == [b.tolist() for b in batches[1:]]


def test_pairs_read_only_their_rows_and_subsets_copy_nothing(two_ways):
    in_ram, mapped = two_ways
    rows = np.array([7, 0, 7, 33])
    got, want = mapped.query_features(rows), in_ram.query_features(rows)
    assert got.image.dtype == np.float32
    np.testing.assert_array_equal(got.text, want.text)
    np.testing.assert_array_equal(got.text_mask, want.text_mask)
    np.testing.assert_array_equal(mapped.positive_features(rows).image, in_ram.positive_features(rows).image)
    part = mapped.subset(np.arange(len(mapped)) % 3 == 0)
    assert part.queries is mapped.queries and len(part) == len(mapped) // 3
    np.testing.assert_array_equal(part.query_rows, mapped.query_rows[::3])


def _quantizer(pairs: TrainingPairs) -> tuple[SemanticQuantizer, list[dict]]:
    q = SemanticQuantizer(QuantizerConfig.from_spec(SPEC, dim=DIM))
    config = QuantizerTrainConfig(batch_size=32, epochs=3, lr=1e-3, kmeans_iters=5, pool_refit=True,
                                  mask_duplicate_positives=True)
    report = q.train(pairs, config, progress=False, log=False)
    return q, report.history


def test_quantizer_stage_gives_the_same_losses_from_memory_maps(two_ways):
    in_ram, mapped = two_ways
    (q_ram, h_ram), (q_map, h_map) = _quantizer(in_ram), _quantizer(mapped)
    assert len(h_ram) == 3
    for a, b in zip(h_ram, h_map):
        for key in ("loss", "cl", "commit", "mse"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    np.testing.assert_array_equal(q_ram.compute_codes(in_ram.candidates, in_ram.candidate_modalities),
                                  q_map.compute_codes(mapped.candidates, mapped.candidate_modalities, batch_size=7))


def test_generator_stage_matches_the_eager_inputs_it_replaced(two_ways):
    """Reference: the old fit_generator, which embedded every pair, pool row and gap-shifted pool row up front into
    [n, d] arrays (``augment.shifted_pool_inputs``)."""
    in_ram, mapped = two_ways
    q, _ = _quantizer(in_ram)
    config = GeneratorTrainConfig(batch_size=16, epochs=3, lr=3e-3, pool_noise=0.3, query_noise=0.1)
    pool = (in_ram.candidates, in_ram.candidate_modalities)

    rows, inverse = np.unique(in_ram.positives, return_inverse=True)
    z_cand = q.embed(in_ram.candidates[rows])
    targets = q.codes_from_embeddings(z_cand, in_ram.candidate_modalities[rows])[inverse]
    z_pool, z_queries = q.embed(pool[0]), q.embed(in_ram.queries)
    pool_codes = q.codes_from_embeddings(z_pool, pool[1])
    offsets = group_offsets(z_queries, z_cand[inverse], modality_of(in_ram.queries), in_ram.query_targets)
    shifted_rows, shifted = shifted_pool_inputs(z_pool, np.asarray(pool[1]), offsets,
                                                np.random.default_rng([config.seed, 13]))
    assert len(shifted_rows)  # the gap-shifted pairs (on by default) are part of what is compared
    z_q = np.concatenate([z_queries, z_pool, shifted])
    z_p = np.concatenate([z_cand[inverse], z_pool, shifted])
    targets = np.concatenate([targets, pool_codes, pool_codes[shifted_rows]])
    noise = np.concatenate([np.full(len(in_ram), 0.1, np.float32),
                            np.full(len(z_pool) + len(shifted), 0.3, np.float32)])
    shape = {"dim": DIM, "levels": q.config.levels, "codebook_size": q.config.codebook_size}
    eager = IDGenerator(GeneratorConfig.from_dict({**GEN.to_dict(), **shape}), seed=config.seed)
    eager.init_code_embeddings(q.codebooks(), seed=config.seed)
    want = train_generator(eager, z_q, z_p, targets, config, progress=False, noise=noise, log=False).history

    streamed = GenerativeRetriever(q)
    got = streamed.fit_generator(mapped, config, GEN, progress=False, pool=(mapped.candidates, pool[1]),
                                 log=False).history
    assert len(got) == 3
    for a, b in zip(want, got):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a["epoch"]
        assert a["exact_acc"] == pytest.approx(b["exact_acc"], abs=1e-6)


def test_training_pairs_encode_a_paraphrase_when_first_drawn_into_fp16_files(corpus, tiny_encoder, tmp_path,
                                                                             monkeypatch):
    """Against the old in-RAM construction (every paraphrase encoded, one query row per positive): the same pairs,
    grouped by query; only drawn paraphrases are encoded, each once, and a rerun reuses them."""
    from unimir.data.mbeir import read_queries
    from unimir.index import Index
    from unimir.queries import load_instructions, prepare_queries
    from unimir.training import CANDIDATE_FEATURES, QUERY_FEATURES, training_pairs

    index = Index.build(corpus["pool"], tmp_path / "idx", encoder=tiny_encoder)
    prepared = prepare_queries(read_queries(corpus["t2i"]), index, data_root=corpus["root"],
                               instructions=load_instructions(None, corpus["root"]), all_instructions=True)
    feats, ok = index.encoder.encode(prepared.items, "query")
    assert ok.all() and len(prepared.items) == 2 * 18  # two paraphrases per query
    rows_of = index.rows_of({d for rel in prepared.relevant for d in rel})
    old_rows = [(i, rows_of[d]) for i, rel in enumerate(prepared.relevant) for d in sorted(rel)]

    encoded: list[int] = []
    real_encode = index.encoder.encode

    def counting_encode(items, side, *args, **kwargs):
        encoded.append(len(items) if side == "query" else 0)  # (the pool's parts are encoded once too)
        return real_encode(items, side, *args, **kwargs)

    monkeypatch.setattr(index.encoder, "encode", counting_encode)
    work = tmp_path / "work"
    pairs = training_pairs(index, [corpus["t2i"]], work_dir=work)
    assert len(pairs) == len(old_rows) == 36 and len(pairs.queries) == 36  # one row per (query, paraphrase)
    assert pairs.num_groups == 18 and sum(encoded) == 18  # the first draw only: one paraphrase per query
    np.testing.assert_array_equal(pairs.positives, [r for _, r in old_rows])
    np.testing.assert_array_equal(pairs.query_targets, np.zeros(36))  # task 0: text -> image
    np.testing.assert_array_equal(pairs.groups, np.repeat(np.arange(1, 19), 2))  # a query's paraphrases together
    first = pairs.draw(0)
    assert sum(encoded) == 18 and len(first) == 18 and len(np.unique(pairs.groups[first])) == 18
    got, want = pairs.query_features(first), feats[pairs.query_rows[first]]
    np.testing.assert_allclose(got.text, want.text, atol=2e-3)  # fp16 storage
    np.testing.assert_array_equal(got.text_mask, want.text_mask)
    assert isinstance(pairs.queries.parts["text"], np.memmap) and pairs.queries.parts["text"].dtype == np.float16
    # later epochs draw other paraphrases and encode only those not seen yet
    epochs = [pairs.draw(epoch) for epoch in range(1, 12)]
    seen = np.unique(np.concatenate([first] + epochs))
    assert len(seen) == 36 and sum(encoded) == 36  # every paraphrase drawn by now, each encoded once
    np.testing.assert_allclose(pairs.query_features().text, feats[pairs.query_rows].text, atol=2e-3)
    # this index stores no parts: the candidates' are encoded once too, into fp16 files beside the queries'
    assert isinstance(pairs.candidates.text, np.memmap) and len(pairs.candidates) == len(index)
    np.testing.assert_allclose(pairs.positive_features(np.arange(3)).image,
                               index.features_at(pairs.positives[:3]).image, atol=2e-3)
    folders = sorted(f.name for f in work.iterdir())  # written under temporary names, then renamed
    assert len(folders) == 2 and folders[0].startswith(CANDIDATE_FEATURES) and folders[1].startswith(QUERY_FEATURES)

    def no_encoding(*args, **kwargs):
        raise AssertionError("the queries were encoded again")

    monkeypatch.setattr(index.encoder, "encode", no_encoding)
    again = training_pairs(index, [corpus["t2i"]], work_dir=work)  # same queries, same encoder: reused
    np.testing.assert_array_equal(again.query_rows, pairs.query_rows)
    np.testing.assert_array_equal(again.draw(5), pairs.draw(5))
    np.testing.assert_array_equal(again.query_features().text, pairs.query_features().text)


def test_an_interrupted_encoding_keeps_what_it_encoded(corpus, tiny_encoder, tmp_path, monkeypatch):
    from unimir.index import Index
    from unimir.training import training_pairs

    index = Index.build(corpus["pool"], tmp_path / "idx", encoder=tiny_encoder)
    real_encode, calls = index.encoder.encode, []

    def failing_second_call(items, side, *args, **kwargs):
        if side == "query":
            calls.append(len(items))
            if len(calls) == 2:
                raise KeyboardInterrupt
        return real_encode(items, side, *args, **kwargs)

    monkeypatch.setattr("unimir.training.QUERY_CHUNK", 6)  # three chunks of 6 queries
    monkeypatch.setattr(index.encoder, "encode", failing_second_call)
    with pytest.raises(KeyboardInterrupt):
        training_pairs(index, [corpus["t2i"]], work_dir=tmp_path / "work")
    calls.clear()
    monkeypatch.setattr(index.encoder, "encode", lambda items, side, *a, **k: (
        calls.append(len(items) if side == "query" else 0), real_encode(items, side, *a, **k))[1])
    pairs = training_pairs(index, [corpus["t2i"]], work_dir=tmp_path / "work")
    assert sum(calls) == 12  # the first chunk's 6 drawn queries were kept; the other 12 are encoded now
    assert pairs.queries.ensure(pairs.query_rows[pairs.draw(0)]).all()


def test_a_query_that_cannot_be_encoded_is_left_out_with_its_pairs(corpus, tiny_encoder, tmp_path, monkeypatch):
    from unimir.index import Index
    from unimir.training import training_pairs

    index = Index.build(corpus["pool"], tmp_path / "idx", encoder=tiny_encoder)
    real_encode = index.encoder.encode

    bad = json.loads(corpus["t2i"].read_text().splitlines()[2])["qid"]

    def fail_on_bad(items, side, *args, **kwargs):  # as an unreadable query image would; the encode contract:
        feats, ok = real_encode(items, side, *args, **kwargs)  # features of the items that worked only
        good = np.array([side != "query" or item.name != bad for item in items])
        return feats[good[ok]], ok & good

    monkeypatch.setattr(index.encoder, "encode", fail_on_bad)
    pairs = training_pairs(index, [corpus["t2i"]], work_dir=tmp_path / "work")
    assert pairs.num_groups == 17 and len(pairs) == 34


def test_a_training_query_whose_image_is_missing_is_skipped_and_listed(corpus, tiny_encoder, tmp_path):
    from unimir.data.problems import Problems
    from unimir.index import Index
    from unimir.training import training_pairs

    index = Index.build(corpus["pool"], tmp_path / "idx", encoder=tiny_encoder)
    lines = corpus["i2t"].read_text().splitlines()
    broken = json.loads(lines[0])
    broken.update(qid="10:9999", query_img_path="mbeir_images/shapes/missing.png")
    queries = corpus["i2t"].parent / "with_missing_image.jsonl"
    queries.write_text("\n".join(lines + [json.dumps(broken)]) + "\n")
    problems = Problems()
    pairs = training_pairs(index, [queries], work_dir=tmp_path / "work", problems=problems)
    assert pairs.num_groups == len(lines)
    assert any(p.item == "10:9999" and p.line == len(lines) + 1 and "not found" in p.message for p in problems.items)


def test_an_index_that_stores_its_parts_is_trained_from_them_in_place(corpus, tiny_encoder, tmp_path):
    from unimir.index import Index
    from unimir.training import QUERY_FEATURES, training_pairs

    index = Index.build(corpus["pool"], tmp_path / "idx", encoder=tiny_encoder, keep_parts=True)
    assert index.stores_parts
    work = tmp_path / "work"
    pairs = training_pairs(index, [corpus["t2i"]], work_dir=work)
    [folder] = list(work.iterdir())  # the queries' parts only
    assert folder.name.startswith(QUERY_FEATURES)
    np.testing.assert_array_equal(pairs.positive_features(np.arange(3)).image,
                                  index.features_at(pairs.positives[:3]).image)


def test_training_pairs_default_to_a_temporary_folder_that_goes_with_them(corpus, tiny_encoder, tmp_path):
    import gc
    from pathlib import Path

    from unimir.index import Index
    from unimir.training import training_pairs

    index = Index.build(corpus["pool"], tmp_path / "idx", encoder=tiny_encoder)
    pairs = training_pairs(index, [corpus["t2i"]])
    scratch = Path(pairs.keepalive.name)
    assert scratch.is_dir() and len(pairs.subset(np.arange(4))) == 4
    del pairs
    gc.collect()
    assert not scratch.exists()


def test_an_epoch_draws_one_pair_per_query_uniformly_and_reproducibly():
    """Groups of 1, 2 and 3 alternatives (paraphrase x positive): each epoch one pair per group, every alternative
    drawn about equally often over epochs, the same draws again for the same (seed, epoch), and a subset that keeps
    groups whole draws the same pairs for them."""
    corpus = synthetic_corpus(12, dim=DIM, queries_per_item=1, seed=1)
    groups = np.repeat(np.arange(6), [1, 2, 3, 1, 2, 3])  # 12 pairs in 6 groups
    pairs = TrainingPairs(corpus.queries, corpus.candidates, corpus.modalities, corpus.positives, groups=groups)
    assert pairs.num_groups == 6
    counts = np.zeros(len(pairs))
    for epoch in range(600):
        drawn = pairs.draw(epoch, seed=4)
        assert sorted(groups[drawn].tolist()) == list(range(6))  # one pair per group
        counts[drawn] += 1
    sizes = np.bincount(groups)[groups]
    np.testing.assert_allclose(counts, 600 / sizes, rtol=0.25)  # uniform within each group (sd ~ 4-7 %)
    np.testing.assert_array_equal(pairs.draw(7, seed=4), pairs.draw(7, seed=4))
    assert any(not np.array_equal(pairs.draw(e, seed=4), pairs.draw(e, seed=5)) for e in range(5))
    keep = np.isin(groups, [1, 2, 5])
    sub = pairs.subset(keep)
    for epoch in range(10):
        np.testing.assert_array_equal(np.flatnonzero(keep)[sub.draw(epoch, seed=4)],
                                      [p for p in pairs.draw(epoch, seed=4) if keep[p]])
    fixed = TrainingPairs(corpus.queries, corpus.candidates, corpus.modalities, corpus.positives, groups=groups,
                          redraw=False)
    assert all(np.array_equal(fixed.draw(e), fixed.draw(0)) for e in range(10))
    # several draws per query and epoch: consecutive draw numbers, concatenated
    np.testing.assert_array_equal(pairs.draws(2, seed=4, per_query=3),
                                  np.concatenate([pairs.draw(e, seed=4) for e in (6, 7, 8)]))
    # no groups: every pair every epoch, once, as before
    plain = TrainingPairs(corpus.queries, corpus.candidates, corpus.modalities, corpus.positives)
    np.testing.assert_array_equal(plain.draw(3), np.arange(12))
    np.testing.assert_array_equal(plain.draws(3, per_query=4), np.arange(12))


def test_training_trains_each_epoch_on_the_drawn_pairs_only(monkeypatch, one_torch_thread):
    """Both stages read one pair per query and epoch: the batches of an epoch hold exactly that epoch's draw."""
    corpus = synthetic_corpus(16, dim=DIM, queries_per_item=2, seed=2)  # 32 pairs; two per group
    groups = np.arange(len(corpus.positives)) // 2
    pairs = TrainingPairs(corpus.queries, corpus.candidates, corpus.modalities, corpus.positives, groups=groups)
    seen: list[np.ndarray] = []
    real = TrainingPairs.query_features

    def spy(self, rows=slice(None)):
        if not isinstance(rows, slice):
            seen.append(np.asarray(rows))
        return real(self, rows)

    monkeypatch.setattr(TrainingPairs, "query_features", spy)
    quantizer = SemanticQuantizer(QuantizerConfig.from_spec(SPEC, dim=DIM))
    config = QuantizerTrainConfig(epochs=2, batch_size=8, seed=3, kmeans_init_samples=16, pool_refit=False)
    seen.clear()
    quantizer.train(pairs, config, progress=False, log=False)
    batches = seen[-4:]  # 16 drawn pairs per epoch in batches of 8: 2 steps x 2 epochs
    for epoch in range(2):
        got = np.sort(np.concatenate(batches[2 * epoch:2 * epoch + 2]))
        np.testing.assert_array_equal(got, pairs.draw(epoch, seed=3))
    # two draws per query and epoch: draw numbers 2e and 2e + 1, 32 pairs in 4 steps per epoch
    seen.clear()
    quantizer = SemanticQuantizer(QuantizerConfig.from_spec(SPEC, dim=DIM))
    quantizer.train(pairs, QuantizerTrainConfig(**{**config.to_dict(), "query_draws": 2}), progress=False, log=False)
    batches = seen[-8:]
    for epoch in range(2):
        got = np.sort(np.concatenate(batches[4 * epoch:4 * epoch + 4]))
        want = np.sort(np.concatenate([pairs.draw(2 * epoch, seed=3), pairs.draw(2 * epoch + 1, seed=3)]))
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("draws", [1, 2])
def test_generator_stage_with_drawn_pairs_matches_an_eager_reference(two_ways, draws):
    """Each query of ``two_ways`` has two positives, one group: the generator trains each epoch on ``draws`` drawn
    pairs per query plus every pool pair, and the gap shift is measured on the first draw."""
    in_ram, mapped = two_ways
    groups = mapped.query_rows.copy()
    grouped = TrainingPairs(mapped.queries, mapped.candidates, mapped.candidate_modalities, mapped.positives,
                            mapped.query_targets, mapped.query_rows, groups)
    q, _ = _quantizer(in_ram)
    config = GeneratorTrainConfig(batch_size=16, epochs=3, lr=3e-3, pool_noise=0.3, seed=2, query_draws=draws)
    pool = (in_ram.candidates, in_ram.candidate_modalities)

    first = grouped.draw(0, config.seed)
    z_all = q.embed(in_ram.queries)
    z_cand = q.embed(in_ram.candidates)
    targets = q.codes_from_embeddings(z_cand, pool[1])
    offsets = group_offsets(z_all[first], z_cand[in_ram.positives[first]], modality_of(in_ram.queries[first]),
                            in_ram.query_targets[first])
    shifted_rows, shifted = shifted_pool_inputs(z_cand, np.asarray(pool[1]), offsets,
                                                np.random.default_rng([config.seed, 13]))
    n = len(in_ram)
    z_q = np.concatenate([z_all, z_cand, shifted])
    z_p = np.concatenate([z_cand[in_ram.positives], z_cand, shifted])
    codes = np.concatenate([targets[in_ram.positives], targets, targets[shifted_rows]])
    noise = np.concatenate([np.zeros(n, np.float32), np.full(len(z_cand) + len(shifted), 0.3, np.float32)])
    extra = np.arange(n, len(z_q))
    shape = {"dim": DIM, "levels": q.config.levels, "codebook_size": q.config.codebook_size}
    eager = IDGenerator(GeneratorConfig.from_dict({**GEN.to_dict(), **shape}), seed=config.seed)
    eager.init_code_embeddings(q.codebooks(), seed=config.seed)
    want = train_generator(eager, z_q, z_p, codes, config, progress=False, noise=noise, log=False,
                           epoch_rows=lambda e: np.concatenate([grouped.draw(e * draws + j, config.seed)
                                                                for j in range(draws)] + [extra]))
    got = GenerativeRetriever(q).fit_generator(grouped, config, GEN, progress=False, pool=(mapped.candidates, pool[1]),
                                               log=False)
    assert got.steps == want.steps == 3 * -(-(draws * len(in_ram) // 2 + len(z_cand) + len(shifted)) // 16)
    for a, b in zip(want.history, got.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), a["epoch"]


def test_a_second_training_run_on_one_checkpoint_folder_fails_at_once(corpus, tiny_encoder, tmp_path):
    """Another process holds the folder (a training run): ``train`` refuses before any work, naming the folder;
    once that process is gone, the lock is free again."""
    from unimir.dirlock import LockTimeoutError
    from unimir.training import checkpoint_lock, train

    index = Index.build(corpus["pool"], tmp_path / "idx", encoder=tiny_encoder)
    ckpt = tmp_path / "ckpt"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom unimir.dirlock import locked\n"
                               "with locked(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n",
                               str(ckpt)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeoutError, match="another training run is using this checkpoint folder"):
            train(index, None, stage="index", checkpoint_dir=ckpt)
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(InvalidInputError, match="needs a trained generator"):  # got the lock, then the real check
        train(index, None, stage="index", checkpoint_dir=ckpt)
    with checkpoint_lock(None):  # no folder, nothing to hold
        pass


def test_a_damaged_checkpoint_is_one_clear_error(tmp_path):
    import torch

    from unimir.errors import IndexFormatError
    from unimir.quantizer.checkpoint import load_tensors, save_tensors

    path = tmp_path / "quantizer"
    save_tensors(path, {"w": torch.zeros(64, 64)}, {"step": 3})
    assert load_tensors(path)[1] == {"step": 3}
    for damage in (path.read_bytes()[:5000], b"\xff" * 64):
        path.write_bytes(damage)
        with pytest.raises(IndexFormatError, match="unreadable safetensors file .*; remove it"):
            load_tensors(path)
