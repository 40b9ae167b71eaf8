"""Streamed training: pairs as row indices over memory-mapped features give the same batches and losses as the
simple in-RAM path, for both stages, and ``training_pairs`` encodes each (query, paraphrase) once into fp16 files."""

from __future__ import annotations

import numpy as np
import pytest

from unimir.encoders import Features
from unimir.generator import GenerativeRetriever, GeneratorConfig, GeneratorTrainConfig, IDGenerator
from unimir.generator.augment import group_offsets, modality_of, shifted_pool_inputs
from unimir.generator.train import train_generator
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


def test_training_pairs_encode_each_paraphrase_once_into_fp16_files(corpus, tiny_encoder, tmp_path, monkeypatch):
    """Against the old in-RAM construction: every paraphrase encoded, one query row copied per positive."""
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

    work = tmp_path / "work"
    pairs = training_pairs(index, [corpus["t2i"]], work_dir=work)
    assert len(pairs) == len(old_rows) == 36 and len(pairs.queries) == 36  # one row per (query, paraphrase)
    np.testing.assert_array_equal(pairs.positives, [r for _, r in old_rows])
    np.testing.assert_array_equal(pairs.query_targets, np.zeros(36))  # task 0: text -> image
    got, want = pairs.query_features(), feats[np.asarray([i for i, _ in old_rows])]
    np.testing.assert_allclose(got.text, want.text, atol=2e-3)  # fp16 storage
    np.testing.assert_array_equal(got.text_mask, want.text_mask)
    assert isinstance(pairs.queries.text, np.memmap) and pairs.queries.text.dtype == np.float16
    # this index stores no parts: the candidates' are encoded once too, into fp16 files beside the queries'
    assert isinstance(pairs.candidates.text, np.memmap) and len(pairs.candidates) == len(index)
    np.testing.assert_allclose(pairs.positive_features(np.arange(3)).image,
                               index.features_at(pairs.positives[:3]).image, atol=2e-3)
    # written under a temporary name, then renamed: nothing else is left
    folders = sorted(f.name for f in work.iterdir())
    assert len(folders) == 2 and folders[0].startswith(CANDIDATE_FEATURES) and folders[1].startswith(QUERY_FEATURES)

    def no_encoding(*args, **kwargs):
        raise AssertionError("the queries were encoded again")

    monkeypatch.setattr(index.encoder, "encode", no_encoding)
    again = training_pairs(index, [corpus["t2i"]], work_dir=work)  # same queries, same encoder: reused
    np.testing.assert_array_equal(again.query_rows, pairs.query_rows)
    np.testing.assert_array_equal(again.query_features().text, got.text)


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
