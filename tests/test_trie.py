"""The CSR ID trie against brute-force prefix sets on random pools."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unimir.errors import InvalidInputError
from unimir.generator import SemanticIDTrie
from unimir.generator import trie as trie_module

SIZES = (3, 5, 4, 6)


def random_codes(n: int, seed: int, sizes=SIZES) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, n) for s in sizes], axis=1)


def prefixes(codes: np.ndarray, length: int) -> set[tuple[int, ...]]:
    return {tuple(row[:length]) for row in codes.tolist()}


def walk(trie: SemanticIDTrie, path: tuple[int, ...]) -> int:
    """Node id of a prefix, through the batched ``advance``."""
    node = torch.zeros(1, dtype=torch.long)
    for level, code in enumerate(path):
        node = trie.advance(level, node, torch.tensor([code]))
    return int(node[0])


@pytest.mark.parametrize("n,seed", [(1, 0), (7, 1), (60, 2), (400, 3)])
def test_masks_match_brute_force_prefix_sets(n, seed):
    codes = random_codes(n, seed)
    trie = SemanticIDTrie(codes, SIZES)
    assert trie.num_ids == len(prefixes(codes, len(SIZES)))
    for level in range(len(SIZES)):
        paths = sorted(prefixes(codes, level))
        assert trie.num_nodes(level) == len(paths)
        nodes = torch.tensor([walk(trie, p) for p in paths], dtype=torch.long)
        assert sorted(nodes.tolist()) == list(range(len(paths)))  # prefixes are numbered in sorted order
        mask = trie.allowed_mask(level, nodes)
        assert mask.shape == (len(paths), SIZES[level]) and mask.dtype == torch.bool
        children = prefixes(codes, level + 1)
        for row, path in zip(mask.tolist(), paths):
            expected = [(path + (c,)) in children for c in range(SIZES[level])]
            assert row == expected, (level, path)


@pytest.mark.parametrize("layout", ["bitmap", "csr", "auto"])
@pytest.mark.parametrize("n,seed,sizes", [(60, 11, SIZES), (400, 12, SIZES), (500, 13, (3, 19, 9, 70))])
def test_bitmap_and_csr_masks_and_child_nodes_match_brute_force(monkeypatch, layout, n, seed, sizes):
    """Both mask layouts (packed bitmaps for dense levels, CSR child lists for sparse ones) and the size rule that
    picks between them, with code counts that are and are not multiples of 8, against brute-force prefix sets;
    child nodes read from the mask against the node that ``advance`` (a search over the sorted keys) finds."""
    if layout == "csr":
        monkeypatch.setattr(SemanticIDTrie, "_bitmap", lambda self, level: None)
    monkeypatch.setattr(trie_module, "BITMAP_MIN_BYTES", 1 << 30 if layout == "bitmap" else 0)
    codes = random_codes(n, seed, sizes)
    trie = SemanticIDTrie(codes, sizes)
    kept = [b is not None for b in trie.bitmaps]
    row_bytes = [(s + 7) // 8 for s in sizes]
    assert kept == ([layout == "bitmap"] * len(sizes) if layout != "auto" else
                    [trie.num_nodes(lv) * row_bytes[lv] <= trie.child_codes[lv].nbytes for lv in range(len(sizes))])
    for level in range(len(sizes)):
        paths = sorted(prefixes(codes, level))
        nodes = torch.tensor([walk(trie, p) for p in paths], dtype=torch.long)
        order = torch.randperm(len(nodes), generator=torch.Generator().manual_seed(seed))
        nodes, paths = nodes[order], [paths[i] for i in order.tolist()]  # rows in any order, as beams are
        mask = trie.allowed_mask(level, nodes)
        children = prefixes(codes, level + 1)
        expected = torch.tensor([[(path + (c,)) in children for c in range(sizes[level])] for path in paths])
        assert torch.equal(mask, expected) and torch.equal(mask, trie._csr_mask(level, nodes))
        rows, picked = torch.nonzero(mask, as_tuple=True)
        np.testing.assert_array_equal(trie.child_nodes(level, nodes, mask, rows, picked).numpy(),
                                      trie.advance(level, nodes[rows], picked).numpy())


def test_leaves_are_sorted_distinct_ids_and_buckets_cover_every_row():
    codes = random_codes(300, 4, sizes=(3, 2, 2, 2))  # many collisions
    trie = SemanticIDTrie(codes, (3, 2, 2, 2))
    np.testing.assert_array_equal(trie.ids, np.unique(codes, axis=0))
    assert walk(trie, tuple(trie.ids[5])) == 5  # a full path ends on its leaf index
    np.testing.assert_array_equal(trie.lookup(codes), trie.item_leaf)
    rows = np.concatenate([trie.bucket(leaf) for leaf in range(trie.num_ids)])
    np.testing.assert_array_equal(np.sort(rows), np.arange(len(codes)))
    for leaf in range(trie.num_ids):
        bucket = trie.bucket(leaf)
        assert (codes[bucket] == trie.ids[leaf]).all() and (np.diff(bucket) > 0).all()
    assert trie.bucket_sizes.sum() == len(codes)


def test_lookup_reports_absent_ids():
    codes = random_codes(50, 5)
    trie = SemanticIDTrie(codes, SIZES)
    present = prefixes(codes, len(SIZES))
    probe = random_codes(200, 6)
    found = trie.lookup(probe)
    for row, leaf in zip(probe.tolist(), found):
        assert (leaf >= 0) == (tuple(row) in present)
        if leaf >= 0:
            assert tuple(trie.ids[leaf]) == tuple(row)


def test_prefix_ranges_are_nested_leaf_ranges():
    codes = random_codes(300, 8)
    trie = SemanticIDTrie(codes, SIZES)
    for probe in [trie.ids[17], trie.ids[0], trie.ids[-1], np.array([0, 4, 3, 0])]:
        ranges = trie.prefix_ranges(probe)
        for length, (lo, hi) in enumerate(ranges):
            inside = (trie.ids[:, :length] == probe[:length]).all(axis=1)
            np.testing.assert_array_equal(np.flatnonzero(inside), np.arange(lo, hi))


def test_digest_tracks_the_source_codes():
    codes = random_codes(30, 9)
    trie = SemanticIDTrie(codes, SIZES)
    assert trie.is_built_from(codes)
    changed = codes.copy()
    changed[3, 2] = (changed[3, 2] + 1) % SIZES[2]
    assert not trie.is_built_from(changed)
    assert not trie.is_built_from(codes[::-1])


def test_prefix_table_matches_the_trie():
    codes = random_codes(80, 10)
    trie = SemanticIDTrie(codes, SIZES)
    for level in range(len(SIZES)):
        for path in prefixes(codes, level):
            mask = trie.allowed_mask(level, torch.tensor([walk(trie, path)]))[0]
            assert trie.prefix_table[path] == torch.nonzero(mask).flatten().tolist()


def test_empty_trie_and_bad_codes():
    trie = SemanticIDTrie(np.zeros((0, 4), np.int64), SIZES)
    assert trie.num_ids == 0 and not trie.allowed_mask(0, torch.zeros(2, dtype=torch.long)).any()
    assert (trie.lookup(random_codes(3, 0)) == -1).all()
    with pytest.raises(InvalidInputError):
        SemanticIDTrie(np.array([[0, 5, 0, 0]]), SIZES)
    with pytest.raises(InvalidInputError):
        SemanticIDTrie(np.zeros((2, 3), np.int64), SIZES)
