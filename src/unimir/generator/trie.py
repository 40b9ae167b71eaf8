"""A vectorised prefix trie over the IDs of a pool, in CSR form (``genius-method.md`` §8.3).

Level l holds one node per distinct l-code prefix (level 0: the root). For level l, ``child_codes[l]`` lists the
children of all level-l nodes, node by node, each node's children sorted by code; ``first_child[l][n]`` and
``num_children[l][n]`` delimit node n's slice. A child's position in that list is its node id at level l+1, so the
level-(L+1) nodes are the distinct IDs in sorted order (``ids``): a finished beam's node is its leaf index.
``keys[l] = parent * width_l + code`` is sorted, so one ``searchsorted`` advances a whole batch of beams.

Beam search asks, per step, for the [R, K] mask of the codes that extend R nodes. Built from the CSR lists its cost
grows with the children those nodes have, which is what makes a larger pool slower (at 10k random IDs a level-2
node has about 13 of 256 codes, at 1M nearly all). Levels whose nodes are dense enough also keep a packed bitmap
(``bitmaps[l]``: uint8 [nodes, ceil(K/8)], bit c of node n set iff code c extends n), so the mask is one gather and
one bit test, [R, K] work whatever the pool; a bitmap is kept only where it costs at most ``BITMAP_MIN_BYTES`` or
no more than the level's child list would take as int64, so memory stays within the old CSR arrays. ``child_nodes``
then reads the selected children's node ids from the mask (first child + rank of the code), without searching the
pool.

Compact by construction, since a loaded index keeps the trie resident (``docs/bench/scale.md``): codes are stored
in the smallest type that holds a level's codes (uint8 for the usual 256-code levels, see ``code_dtype``), node,
row and key arrays in int32 (int64 only past 2**31), so an indexed item costs about 25 bytes here instead of 100.
IDs are ordered with one stable argsort of a mixed-radix key (the same order as a lexicographic sort, without its
int64 copies), which keeps rebuilding on load and on append cheap enough not to persist the trie.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from ..errors import InvalidInputError
from ..quantizer.checkpoint import array_digest

BITMAP_MIN_BYTES = 1 << 20  # a level's bitmap is always kept up to this size
_BIT_VALUES = np.array([1 << b for b in range(8)], dtype=np.uint8)


def code_dtype(level_sizes: "tuple[int, ...] | list[int]") -> np.dtype:
    """The smallest integer type that holds every code of these levels (uint8 for levels of at most 256 codes)."""
    top = max(level_sizes, default=1)
    return np.dtype(np.uint8 if top <= 1 << 8 else np.int16 if top <= 1 << 15 else np.int32)


def _index_dtype(largest: int) -> np.dtype:
    """int32 for positions and keys up to 2**31 - 1 (every pool that fits this machine), else int64."""
    return np.dtype(np.int32 if largest < np.iinfo(np.int32).max else np.int64)


def _id_order(codes: np.ndarray, level_sizes: tuple[int, ...]) -> np.ndarray:
    """Rows in lexicographic ID order, ties in row order (what ``np.lexsort(codes.T[::-1])`` gives)."""
    if int(np.prod([float(s) for s in level_sizes])) >= 2 ** 62:  # the key would overflow: sort column by column
        return np.lexsort(codes.T[::-1])
    key = np.zeros(len(codes), dtype=np.int64)
    for level, size in enumerate(level_sizes):
        key *= size
        key += codes[:, level]
    return np.argsort(key, kind="stable")


class SemanticIDTrie:
    def __init__(self, codes: np.ndarray, level_sizes: tuple[int, ...]):
        """Build from codes int [n, L+1] (duplicates allowed; n may be 0); ``level_sizes[l]`` codes at level l."""
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != len(level_sizes) or (codes.size and codes.dtype.kind not in "iu"):
            raise InvalidInputError(f"codes must be int [n, {len(level_sizes)}], got {codes.shape}")
        if codes.size and ((codes.min() < 0) or (codes.max(axis=0) >= np.asarray(level_sizes)).any()):
            raise InvalidInputError(f"codes out of range for level sizes {level_sizes}")
        self.level_sizes = tuple(int(s) for s in level_sizes)
        self.code_dtype = code_dtype(self.level_sizes)
        codes = codes.astype(self.code_dtype, copy=False)
        self.source_digest = array_digest(codes)
        n = len(codes)
        rows = _index_dtype(n)
        order = _id_order(codes, self.level_sizes).astype(rows)  # rows in lexicographic ID order
        ordered = codes[order]
        new_id = np.ones(n, dtype=bool)
        if n > 1:
            new_id[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
        self.ids = ordered[new_id]  # [U, L+1] in code_dtype, sorted distinct IDs
        del ordered
        # the input rows grouped by leaf: a bucket per distinct ID, rows ascending
        self.bucket_items = order
        self.bucket_offsets = np.concatenate([np.flatnonzero(new_id), [n]]).astype(rows)
        del new_id
        self._build_levels()
        self.bitmaps = [self._bitmap(level) for level in range(self.depth)]
        self._device_arrays: dict[str, list[torch.Tensor]] = {}
        self._device: torch.device | None = None

    def _build_levels(self) -> None:
        ids, depth = self.ids, len(self.level_sizes)
        self.first_child: list[np.ndarray] = []
        self.num_children: list[np.ndarray] = []
        self.child_codes: list[np.ndarray] = []
        self.keys: list[np.ndarray] = []
        # prev_new: rows of ``ids`` where a new l-prefix begins (level 0: the root, one node).
        prev_new = np.zeros(len(ids), dtype=bool)
        prev_new[:1] = True
        for level in range(depth):
            new = prev_new.copy()
            if len(ids) > 1:
                new[1:] |= ids[1:, level] != ids[:-1, level]
            n_nodes = max(int(prev_new.sum()), 1)  # an empty trie keeps its root
            nodes = _index_dtype(n_nodes * self.level_sizes[level])
            parent = (np.cumsum(prev_new, dtype=np.int64)[new] - 1).astype(nodes)  # level-l node of each child
            codes = ids[new, level]
            self.child_codes.append(codes)
            counts = np.bincount(parent, minlength=n_nodes)
            self.num_children.append(counts.astype(nodes))
            self.first_child.append(np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(nodes))
            self.keys.append(parent * nodes.type(self.level_sizes[level]) + codes.astype(nodes))
            prev_new = new

    def _bitmap(self, level: int) -> np.ndarray | None:
        """Packed child bitmap of a level (see the module docstring), or None where it would be too large."""
        n_nodes, row_bytes = self.num_nodes(level), (self.level_sizes[level] + 7) // 8
        if n_nodes * row_bytes > max(BITMAP_MIN_BYTES, 8 * len(self.child_codes[level])):
            return None
        parent = np.repeat(np.arange(n_nodes, dtype=np.int64), self.num_children[level])
        bit = parent * (8 * row_bytes) + self.child_codes[level].astype(np.int64)
        # (parent, code) pairs are distinct, so summing each byte's bit values sets exactly those bits
        packed = np.bincount(bit >> 3, weights=_BIT_VALUES[bit & 7], minlength=n_nodes * row_bytes)
        return packed.astype(np.uint8).reshape(n_nodes, row_bytes)

    # -- identity -------------------------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Codes per ID (L+1)."""
        return len(self.level_sizes)

    @property
    def num_ids(self) -> int:
        return int(self.ids.shape[0])

    def num_nodes(self, level: int) -> int:
        return int(self.first_child[level].shape[0])

    def is_built_from(self, codes: np.ndarray) -> bool:
        """True iff this trie was built from exactly these codes (same rows, same order)."""
        codes = np.asarray(codes)
        if codes.size and (codes.min() < 0 or codes.max() >= max(self.level_sizes)):
            return False
        return array_digest(codes.astype(self.code_dtype, copy=False)) == self.source_digest

    @property
    def item_leaf(self) -> np.ndarray:
        """Leaf of every input row: int64 [n] (computed on demand; searches read the buckets instead)."""
        leaf = np.empty(len(self.bucket_items), dtype=np.int64)
        leaf[self.bucket_items] = np.repeat(np.arange(self.num_ids, dtype=np.int64), self.bucket_sizes)
        return leaf

    def bucket(self, leaf: int) -> np.ndarray:
        """Input rows whose ID is ``ids[leaf]``, ascending."""
        return self.bucket_items[self.bucket_offsets[leaf]:self.bucket_offsets[leaf + 1]]

    @property
    def bucket_sizes(self) -> np.ndarray:
        return np.diff(self.bucket_offsets)

    # -- batched traversal (torch, on the decoder's device) --------------------------------------------------------

    def to(self, device: torch.device | str) -> "SemanticIDTrie":
        """Place the traversal arrays on ``device`` (done lazily by the batched methods too)."""
        device = torch.device(device)
        if self._device != device:
            self._device_arrays = {name: [torch.as_tensor(a, device=device) for a in getattr(self, name)]
                                   for name in ("first_child", "num_children", "child_codes", "keys")}
            self._device_arrays["bitmaps"] = [None if b is None else torch.as_tensor(b, device=device)
                                              for b in self.bitmaps]
            self._bit_values = torch.as_tensor(_BIT_VALUES, device=device)
            self._device = device
        return self

    def _arrays(self, device: torch.device) -> dict[str, list[torch.Tensor]]:
        return self.to(device)._device_arrays

    def allowed_mask(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """bool [R, level_sizes[level]]: the codes that extend each of nodes (int64 [R], level-``level`` node ids)
        to an existing prefix."""
        arrays = self._arrays(nodes.device)
        n_codes = self.level_sizes[level]
        bitmap = arrays["bitmaps"][level]
        if bitmap is not None:
            bits = bitmap.index_select(0, nodes)[:, :, None] & self._bit_values  # [R, bytes, 8]
            return bits.view(len(nodes), -1)[:, :n_codes] != 0
        return self._csr_mask(level, nodes)

    def _csr_mask(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """``allowed_mask`` from the child lists: work proportional to the nodes' children."""
        arrays = self._arrays(nodes.device)
        n_codes = self.level_sizes[level]
        first = arrays["first_child"][level][nodes].long()
        count = arrays["num_children"][level][nodes].long()
        total = int(count.sum())
        # child list positions: the concatenation of [first_r, first_r + count_r) over the rows
        starts = torch.cumsum(count, 0) - count
        position = torch.arange(total, device=nodes.device) + torch.repeat_interleave(first - starts, count,
                                                                                     output_size=total)
        row_base = torch.repeat_interleave(torch.arange(len(nodes), device=nodes.device) * n_codes, count,
                                           output_size=total)
        mask = torch.zeros(len(nodes) * n_codes, dtype=torch.bool, device=nodes.device)
        mask[row_base + arrays["child_codes"][level][position].long()] = True
        return mask.view(len(nodes), n_codes)

    def child_nodes(self, level: int, nodes: torch.Tensor, allowed: torch.Tensor, rows: torch.Tensor,
                    codes: torch.Tensor) -> torch.Tensor:
        """Level-(level+1) node ids reached from ``nodes[rows]`` by ``codes`` (int64 [n] each), given
        ``allowed = allowed_mask(level, nodes)``: the parent's first child plus the code's rank among its allowed
        codes, read from the mask instead of searching the pool's keys. Pairs the mask does not allow give an
        arbitrary in-range node (padding beams)."""
        first = self._arrays(nodes.device)["first_child"][level][nodes[rows]].long()
        rank = allowed.cumsum(1, dtype=torch.int64)[rows, codes]  # allowed codes up to and including the code
        return (first + rank - 1).clamp_(0, max(len(self.child_codes[level]) - 1, 0))

    def advance(self, level: int, nodes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Level-(level+1) node ids reached from level-``level`` nodes by ``codes`` (int64 [R] each). The pairs
        must exist (as guaranteed by ``allowed_mask``); others give an arbitrary in-range node."""
        keys = self._arrays(nodes.device)["keys"][level]
        pos = torch.searchsorted(keys, (nodes * self.level_sizes[level] + codes).to(keys.dtype))
        return pos.clamp_max(max(keys.shape[0] - 1, 0))

    def lookup(self, codes: np.ndarray) -> np.ndarray:
        """Leaf index of each ID in codes int [n, L+1], or -1 where the ID is not in the trie: int64 [n]."""
        codes = np.asarray(codes, dtype=np.int64)
        if self.num_ids == 0:
            return np.full(len(codes), -1, dtype=np.int64)
        nodes = np.zeros(len(codes), dtype=np.int64)
        found = np.ones(len(codes), dtype=bool)
        for level in range(self.depth):
            keys = self.keys[level]
            wanted = nodes * self.level_sizes[level] + codes[:, level]
            nodes = np.searchsorted(keys, wanted).clip(max=len(keys) - 1).astype(np.int64)
            found &= keys[nodes] == wanted
        return np.where(found, nodes, -1)

    def prefix_ranges(self, code: np.ndarray) -> np.ndarray:
        """Leaf ranges of the IDs sharing at least l leading codes with ``code`` (int [L+1]), for l = 0..L+1:
        int64 [L+2, 2] of [lo, hi) into ``ids`` (nested; empty once the prefix leaves the trie)."""
        ranges = np.zeros((self.depth + 1, 2), dtype=np.int64)
        ranges[0] = (0, self.num_ids)
        node = 0
        for level in range(self.depth):
            keys = self.keys[level]
            wanted = node * self.level_sizes[level] + int(code[level])
            node = int(np.searchsorted(keys, wanted))
            if node >= len(keys) or keys[node] != wanted:
                break
            lo, hi = node, node + 1  # level-(level+1) nodes; descend to their leaves
            for deeper in range(level + 1, self.depth):
                first, total = self.first_child[deeper], len(self.child_codes[deeper])
                lo = int(first[lo]) if lo < len(first) else total
                hi = int(first[hi]) if hi < len(first) else total
            ranges[level + 1] = (lo, hi)
        return ranges

    # -- the slow reference --------------------------------------------------------------------------------------

    @cached_property
    def prefix_table(self) -> dict[tuple[int, ...], list[int]]:
        """{code prefix: sorted allowed next codes}, as a plain dict: the per-beam Python look-up that the
        reference decoder (and GENIUS's nested-dict trie) performs. Built on first use."""
        table: dict[tuple[int, ...], set[int]] = {}
        for row in self.ids.tolist():
            for level in range(self.depth):
                table.setdefault(tuple(row[:level]), set()).add(row[level])
        return {prefix: sorted(codes) for prefix, codes in table.items()}
