"""GenerativeRetriever end to end on a tiny synthetic corpus whose answers are known."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from unimir.data.records import Modality
from unimir.errors import IndexFormatError, InvalidInputError
from unimir.generator import GenerativeRetriever, GeneratorConfig, GeneratorTrainConfig, allowed_modalities
from unimir.quantizer import QuantizerConfig, QuantizerTrainConfig, SemanticQuantizer
from unimir.quantizer.synthetic import synthetic_corpus
from unimir.ranking import Ranking

N_ITEMS, N_INDEXED, PER_ITEM, DIM = 300, 250, 3, 32
MODES = [("generative", False), ("generative", True), ("generative-rerank", True), ("quantize", True),
         ("quantize", False)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus(N_ITEMS, dim=DIM, n_clusters=8, queries_per_item=PER_ITEM, seed=0)


@pytest.fixture(scope="module")
def split(corpus):
    """Two queries per item train, the third is held out."""
    rows = np.arange(len(corpus.positives))
    return rows[rows % PER_ITEM != PER_ITEM - 1], rows[rows % PER_ITEM == PER_ITEM - 1]


@pytest.fixture(scope="module")
def retriever(corpus, split):
    """Trained on every item's training queries; only the first N_INDEXED items are indexed."""
    r = GenerativeRetriever(SemanticQuantizer(QuantizerConfig(dim=DIM, hidden=32, levels=2, codebook_size=8)))
    r.fit_quantizer(corpus.pairs(split[0]), QuantizerTrainConfig(batch_size=128, epochs=5, lr=1e-3,
                                                                 kmeans_iters=10), progress=False)
    r.fit_generator(corpus.pairs(split[0]), GeneratorTrainConfig(batch_size=64, epochs=40, lr=3e-3),
                    GeneratorConfig(num_layers=1, d_model=32, num_heads=2, d_ff=64, prefix_len=2), progress=False)
    r.index(corpus.candidates[:N_INDEXED], corpus.modalities[:N_INDEXED])
    return r


def expected_recall(rankings: list[Ranking], positives: np.ndarray, k: int) -> float:
    """Tie-aware hit rate (mbeir-format.md §9): a tied positive counts in expectation over its group's order."""
    hits = []
    for ranking, positive in zip(rankings, positives):
        where = np.flatnonzero(ranking.indices == positive)
        if len(where) == 0:
            hits.append(0.0)
            continue
        group = np.flatnonzero(ranking.tie_groups == ranking.tie_groups[where[0]])
        slots = min(k - group[0], len(group))
        hits.append(max(slots, 0) / len(group))
    return float(np.mean(hits))


def run(retriever, corpus, rows, mode, fused, k=10, beams=10, **kwargs):
    return retriever.search(corpus.queries[rows], corpus.query_targets[rows], k=k, beams=beams, mode=mode,
                            cand_fused=corpus.candidates[:len(retriever)].fused() if fused else None, **kwargs)


@pytest.mark.parametrize("mode,fused", MODES)
def test_recall_far_above_random_on_held_out_queries(retriever, corpus, split, mode, fused):
    held_out = split[1][corpus.positives[split[1]] < N_INDEXED]
    recall = expected_recall(run(retriever, corpus, held_out, mode, fused), corpus.positives[held_out], 10)
    random_recall = 10 / N_INDEXED
    assert recall > 0.5 > 10 * random_recall, (mode, fused, recall)


@pytest.mark.parametrize("mode,fused", MODES)
def test_rankings_honour_the_output_contract(retriever, corpus, split, mode, fused):
    rows = split[1][:40]
    k = 7
    for ranking, target in zip(run(retriever, corpus, rows, mode, fused, k=k), corpus.query_targets[rows]):
        assert ranking.indices.dtype == np.int64 and ranking.scores.dtype == np.float32
        assert len(np.unique(ranking.indices)) == len(ranking) >= min(k, 1)
        assert (ranking.indices < len(retriever)).all()
        assert (np.diff(ranking.scores) <= 1e-6).all() and (np.diff(ranking.tie_groups) >= 0).all()
        if len(ranking) > k:  # only to complete the tie group straddling k
            assert (ranking.tie_groups[k - 1:] == ranking.tie_groups[k - 1]).all()
        assert (corpus.modalities[ranking.indices] == target).all()
        if mode == "generative" and not fused:  # a bucket is one tie group, scored by its beam
            for group in np.unique(ranking.tie_groups):
                members = ranking.indices[ranking.tie_groups == group]
                assert len(np.unique(retriever.codes[members], axis=0)) == 1
                assert len(np.unique(ranking.scores[ranking.tie_groups == group])) == 1


def test_rerank_cap_limits_the_shortlist(retriever, corpus, split):
    rows = split[1][:10]
    capped = run(retriever, corpus, rows, "generative-rerank", True, k=50, beams=20, rerank_max_candidates=5)
    assert all(len(r) <= 5 for r in capped)
    full = run(retriever, corpus, rows, "generative-rerank", True, k=50, beams=20)
    assert any(len(r) > 5 for r in full)


def test_add_makes_new_items_retrievable(retriever, corpus, split):
    late = split[1][corpus.positives[split[1]] >= N_INDEXED]
    before = run(retriever, corpus, late, "generative", False)
    assert expected_recall(before, corpus.positives[late], 10) == 0.0
    grown = GenerativeRetriever(retriever.quantizer, retriever.generator)
    grown.index(corpus.candidates[:N_INDEXED], corpus.modalities[:N_INDEXED])
    new_rows = grown.add(corpus.candidates[N_INDEXED:], corpus.modalities[N_INDEXED:])
    np.testing.assert_array_equal(new_rows, np.arange(N_INDEXED, N_ITEMS))
    assert grown.trie.is_built_from(grown.codes) and grown.stats.n_items == N_ITEMS
    np.testing.assert_array_equal(grown.codes[:N_INDEXED], retriever.codes)
    after = run(grown, corpus, late, "generative", False)
    assert expected_recall(after, corpus.positives[late], 10) > 0.5


def test_codes_are_read_only_and_the_quantizer_frozen(retriever, corpus, split):
    with pytest.raises(ValueError):
        retriever.codes[0, 0] = 1
    with pytest.raises(InvalidInputError, match="frozen"):
        retriever.fit_quantizer(corpus.pairs(split[0]))


def test_save_load_round_trip(tmp_path, retriever, corpus, split):
    retriever.save(tmp_path, extra={"encoder": "synthetic"})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["codes"]["rows"] == N_INDEXED
    assert manifest["quantizer"]["spec"] == "C32+M3+RQ2x8" and manifest["extra"] == {"encoder": "synthetic"}
    loaded = GenerativeRetriever.load(tmp_path)
    np.testing.assert_array_equal(loaded.codes, retriever.codes)
    assert loaded.stats == retriever.stats and loaded.extra == {"encoder": "synthetic"}
    rows = split[1][:20]
    for mode, fused in MODES:
        for a, b in zip(run(loaded, corpus, rows, mode, fused), run(retriever, corpus, rows, mode, fused)):
            np.testing.assert_array_equal(a.indices, b.indices)
            np.testing.assert_array_equal(a.tie_groups, b.tie_groups)


def test_load_detects_stale_or_tampered_files(tmp_path, retriever):
    retriever.save(tmp_path)
    np.save(tmp_path / "codes.npy", np.asarray(retriever.codes)[::-1].copy(), allow_pickle=False)
    with pytest.raises(IndexFormatError, match="codes.npy"):
        GenerativeRetriever.load(tmp_path)
    retriever.save(tmp_path)
    other = SemanticQuantizer(retriever.quantizer.config, seed=1)
    other.net.rq.initialized.fill_(True)
    other.save(tmp_path)  # a retrained quantizer dropped in beside the old codes
    with pytest.raises(IndexFormatError, match="quantizer"):
        GenerativeRetriever.load(tmp_path)


def test_allowed_modalities_forms():
    expected = np.array([[True, False, False], [False, True, True], [True, True, True], [False, False, True]])
    forms = [np.array([0, -1, -1, 2]), [0, [1, 2], None, Modality.IMAGE_TEXT], ["image", "text|image,text", -1, 2]]
    np.testing.assert_array_equal(allowed_modalities(forms[1], 4), expected)
    np.testing.assert_array_equal(allowed_modalities(forms[2], 4), expected)
    np.testing.assert_array_equal(allowed_modalities(forms[0], 4)[[0, 3]], expected[[0, 3]])
    assert allowed_modalities(None, 4) is None
    np.testing.assert_array_equal(allowed_modalities(expected, 4), expected)
    for bad in ([3], [0, 1], ["video"]):
        with pytest.raises(InvalidInputError):
            allowed_modalities(bad, 1)


def test_search_argument_errors(retriever, corpus):
    queries = corpus.queries[:2]
    with pytest.raises(InvalidInputError, match="unknown"):
        retriever.search(queries, mode="dense")
    with pytest.raises(InvalidInputError, match="cand_fused"):
        retriever.search(queries, mode="generative-rerank")
    with pytest.raises(InvalidInputError, match="generator"):
        GenerativeRetriever(retriever.quantizer).search(queries)
    empty = GenerativeRetriever(retriever.quantizer, retriever.generator)
    assert all(len(r) == 0 for r in empty.search(queries, k=5))


@pytest.fixture(scope="module")
def indexed_with_pool(corpus, split):
    """A finer quantizer (K = 32, few collisions) and a generator trained with index-time pool pairs on the first
    N_INDEXED items only (queries of later items left out)."""
    r = GenerativeRetriever(SemanticQuantizer(QuantizerConfig(dim=DIM, hidden=32, levels=2, codebook_size=32)))
    r.fit_quantizer(corpus.pairs(split[0]), QuantizerTrainConfig(batch_size=128, epochs=5, lr=1e-3,
                                                                 kmeans_iters=10), progress=False, log=False)
    r.index(corpus.candidates[:N_INDEXED], corpus.modalities[:N_INDEXED])
    early = split[0][corpus.positives[split[0]] < N_INDEXED]
    r.fit_generator(corpus.pairs(early), GeneratorTrainConfig(batch_size=64, epochs=15, lr=3e-3, pool_noise=0.2),
                    GeneratorConfig(num_layers=1, d_model=32, num_heads=2, d_ff=64, prefix_len=2), progress=False,
                    pool=(corpus.candidates[:N_INDEXED], corpus.modalities[:N_INDEXED]), log=False)
    assert r.learned_rows == N_INDEXED
    return r


def test_refresh_teaches_added_items_and_keeps_old_ones(indexed_with_pool, corpus):
    """Index-time fine-tune after an add: new items searched by their own vectors come back in the generative
    top 5 far more often than before it; old items searched the same way lose (almost) nothing."""
    base = indexed_with_pool
    grown = GenerativeRetriever(base.quantizer, copy.deepcopy(base.generator))
    grown.train_configs = dict(base.train_configs)
    grown.index(corpus.candidates[:N_INDEXED], corpus.modalities[:N_INDEXED])
    grown.learned_rows = N_INDEXED
    grown.add(corpus.candidates[N_INDEXED:], corpus.modalities[N_INDEXED:])
    new, old = np.arange(N_INDEXED, N_ITEMS), np.arange(N_INDEXED)

    def own_recall(rows):
        found = grown.search(corpus.candidates[rows], corpus.modalities[rows], k=5, beams=10, mode="generative")
        return expected_recall(found, rows, 5)

    new_before, old_before = own_recall(new), own_recall(old)
    done = grown.refresh(corpus.candidates, lr=3e-3, replay=3.0, log=False)
    assert done["rows"] == N_ITEMS - N_INDEXED and done["replay"] == 3 * (N_ITEMS - N_INDEXED)
    assert grown.learned_rows == N_ITEMS
    new_after, old_after = own_recall(new), own_recall(old)
    assert new_after >= new_before + 0.1, (new_before, new_after)
    assert old_after >= old_before - 0.05, (old_before, old_after)
    assert grown.refresh(corpus.candidates, rows=np.arange(0), log=False)["steps"] == 0


def test_refresh_is_bounded(indexed_with_pool, corpus):
    grown = GenerativeRetriever(indexed_with_pool.quantizer, copy.deepcopy(indexed_with_pool.generator))
    grown.index(corpus.candidates, corpus.modalities)
    done = grown.refresh(corpus.candidates, rows=np.arange(N_ITEMS), epochs=50, max_steps=7, log=False)
    assert done["steps"] <= 7


def test_diagnosis_agrees_with_the_rerank_shortlist(retriever, corpus, split):
    """The positive's ID is among the beams exactly when the positive is in generative-rerank's uncapped shortlist
    (the union of the beams' buckets), and the shortlist size is that ranking's length."""
    from types import SimpleNamespace

    from unimir.eval.diagnose import diagnose

    rows = split[1][corpus.positives[split[1]] < N_INDEXED][:40]
    queries, targets = corpus.queries[rows], corpus.query_targets[rows]
    relevant = [{int(p)} for p in corpus.positives[rows]]
    found = diagnose(SimpleNamespace(generative=retriever), queries, list(targets), relevant, beams=10)
    fused = corpus.candidates[:N_INDEXED].fused()
    full = retriever.search(queries, targets, k=N_INDEXED, beams=10, mode="generative-rerank",
                            query_fused=queries.fused(), cand_fused=fused)
    in_shortlist = [int(p) in set(r.indices.tolist()) for r, p in zip(full, corpus.positives[rows])]
    assert found["queries"] == len(rows)
    assert found["positive_id_in_beams"] == pytest.approx(np.mean(in_shortlist))
    assert found["shortlist_mean"] == pytest.approx(np.mean([len(r) for r in full]), abs=1e-4)
    assert 0.0 <= found["positive_id_in_top5_beams"] <= found["positive_id_in_beams"]


@pytest.mark.parametrize("same_pool", [True, False])
def test_generator_training_reads_the_ids_of_indexed_rows_instead_of_coding_them_again(corpus, split, same_pool):
    """Once every candidate is coded (``unimir train`` codes the pool between its stages), fit_generator takes the
    targets from the index after checking a sample; a pool that is not the indexed one is coded in full."""
    r = GenerativeRetriever(SemanticQuantizer(QuantizerConfig(dim=DIM, hidden=32, levels=2, codebook_size=8)))
    pairs = corpus.pairs(split[0])
    r.fit_quantizer(pairs, QuantizerTrainConfig(batch_size=128, epochs=2, kmeans_iters=5), progress=False)
    order = np.arange(N_ITEMS) if same_pool else np.random.default_rng(1).permutation(N_ITEMS)
    r.index(corpus.candidates[order], corpus.modalities[order])
    coded, compute = [], r.quantizer.compute_codes

    def spy(features, modality_codes, *args, **kwargs):
        coded.append(len(features))
        return compute(features, modality_codes, *args, **kwargs)

    r.quantizer.compute_codes = spy
    r.fit_generator(pairs, GeneratorTrainConfig(batch_size=64, epochs=1), GeneratorConfig(num_layers=1, d_model=32,
                    num_heads=2, d_ff=64, prefix_len=2), progress=False, pool=(corpus.candidates, corpus.modalities))
    unique_positives = len(np.unique(pairs.positives))
    if same_pool:
        assert sum(coded) <= 2 * 256 and len(coded) == 2  # two probes, no full coding
    else:  # the probes disagree: both sides coded in full
        assert sorted(coded)[-2:] == sorted([unique_positives, N_ITEMS])
