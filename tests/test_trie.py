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
                    [trie.num_nodes(lv) * row_bytes[lv] <= 8 * len(trie.child_codes[lv]) for lv in range(len(sizes))])
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


def reference_arrays(codes: np.ndarray, sizes: tuple[int, ...]) -> dict[str, object]:
    """The trie's arrays as the first (int64, lexsort) implementation built them: the slow, plain reference."""
    codes = np.asarray(codes, dtype=np.int64)
    order = np.lexsort(codes.T[::-1])
    ordered = codes[order]
    new_id = np.ones(len(ordered), dtype=bool)
    if len(ordered) > 1:
        new_id[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    ids = ordered[new_id]
    item_leaf = np.empty(len(codes), dtype=np.int64)
    item_leaf[order] = np.cumsum(new_id) - 1
    out = {"ids": ids, "item_leaf": item_leaf, "bucket_items": order,
           "bucket_offsets": np.concatenate([np.flatnonzero(new_id), [len(codes)]]),
           "first_child": [], "num_children": [], "child_codes": [], "keys": []}
    prev_new = np.zeros(len(ids), dtype=bool)
    prev_new[:1] = True
    for level in range(len(sizes)):
        new = prev_new.copy()
        if len(ids) > 1:
            new[1:] |= ids[1:, level] != ids[:-1, level]
        parent = np.cumsum(prev_new)[new] - 1
        n_nodes = max(int(prev_new.sum()), 1)
        child = ids[new, level]
        counts = np.bincount(parent, minlength=n_nodes)
        out["child_codes"].append(child)
        out["num_children"].append(counts)
        out["first_child"].append(np.concatenate([[0], np.cumsum(counts)[:-1]]))
        out["keys"].append(parent * sizes[level] + child)
        prev_new = new
    return out


@pytest.mark.parametrize("n,seed,sizes", [(0, 0, SIZES), (1, 1, SIZES), (500, 2, SIZES), (3000, 3, (3, 256, 256, 256)),
                                          (400, 4, (3, 300, 7, 2)), (2000, 5, (3, 2, 2, 2))])
def test_compact_arrays_equal_the_int64_reference(n, seed, sizes):
    """The compact trie (small code types, int32 positions, one argsort of a packed key) holds exactly the values
    of the int64 / lexsort reference, so every traversal and search over it returns the same results."""
    codes = random_codes(n, seed, sizes)
    trie = SemanticIDTrie(codes, sizes)
    ref = reference_arrays(codes, sizes)
    assert trie.ids.dtype == trie_module.code_dtype(sizes) and trie.bucket_items.dtype == np.int32
    for name in ("ids", "item_leaf", "bucket_items", "bucket_offsets"):
        np.testing.assert_array_equal(getattr(trie, name), ref[name], err_msg=name)
    for name in ("first_child", "num_children", "child_codes", "keys"):
        for level in range(len(sizes)):
            np.testing.assert_array_equal(getattr(trie, name)[level], ref[name][level], err_msg=f"{name}[{level}]")
    assert trie.is_built_from(codes) and trie.is_built_from(codes.astype(np.int64))
    assert trie.code_dtype.itemsize <= 2 and all(k.dtype == np.int32 for k in trie.keys)
