"""A vectorised prefix trie over the IDs of a pool, in CSR form (``genius-method.md`` §8.3).

Level l holds one node per distinct l-code prefix (level 0: the root). For level l, ``child_codes[l]`` lists the
children of all level-l nodes, node by node, each node's children sorted by code; ``first_child[l][n]`` and
``num_children[l][n]`` delimit node n's slice. A child's position in that list is its node id at level l+1, so the
level-(L+1) nodes are the distinct IDs in sorted order (``ids``): a finished beam's node is its leaf index.
``keys[l] = parent * width_l + code`` is sorted, so one ``searchsorted`` advances a whole batch of beams.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from ..errors import InvalidInputError
from ..quantizer.checkpoint import array_digest


class SemanticIDTrie:
    def __init__(self, codes: np.ndarray, level_sizes: tuple[int, ...]):
        """Build from codes int [n, L+1] (duplicates allowed; n may be 0); ``level_sizes[l]`` codes at level l."""
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] != len(level_sizes):
            raise InvalidInputError(f"codes must be int [n, {len(level_sizes)}], got {codes.shape}")
        if codes.size and ((codes < 0).any() or (codes >= np.asarray(level_sizes)).any()):
            raise InvalidInputError(f"codes out of range for level sizes {level_sizes}")
        self.level_sizes = tuple(int(s) for s in level_sizes)
        self.source_digest = array_digest(codes)
        order = np.lexsort(codes.T[::-1])  # rows in lexicographic ID order
        ordered = codes[order]
        new_id = np.ones(len(ordered), dtype=bool)
        if len(ordered) > 1:
            new_id[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
        self.ids = ordered[new_id]  # int64 [U, L+1], sorted distinct IDs
        # leaf of every input row, and the input rows grouped by leaf (a bucket per distinct ID, rows ascending).
        self.item_leaf = np.empty(len(codes), dtype=np.int64)
        self.item_leaf[order] = np.cumsum(new_id) - 1
        self.bucket_items = order
        self.bucket_offsets = np.concatenate([np.flatnonzero(new_id), [len(codes)]]).astype(np.int64)
        self._build_levels()
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
            parent = np.cumsum(prev_new)[new] - 1  # level-l node of each level-(l+1) node
            n_nodes = max(int(prev_new.sum()), 1)  # an empty trie keeps its root
            codes = ids[new, level]
            self.child_codes.append(codes)
            self.num_children.append(np.bincount(parent, minlength=n_nodes).astype(np.int64))
            self.first_child.append(np.concatenate([[0], np.cumsum(self.num_children[-1])[:-1]]).astype(np.int64))
            self.keys.append(parent * self.level_sizes[level] + codes)
            prev_new = new

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
        return array_digest(np.asarray(codes, dtype=np.int64)) == self.source_digest

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
            self._device = device
        return self

    def _arrays(self, device: torch.device) -> dict[str, list[torch.Tensor]]:
        return self.to(device)._device_arrays

    def allowed_mask(self, level: int, nodes: torch.Tensor) -> torch.Tensor:
        """bool [R, level_sizes[level]]: the codes that extend each of nodes (int64 [R], level-``level`` node ids)
        to an existing prefix."""
        arrays = self._arrays(nodes.device)
        first = arrays["first_child"][level][nodes]
        count = arrays["num_children"][level][nodes]
        rows = torch.repeat_interleave(torch.arange(len(nodes), device=nodes.device), count)
        # position of each child inside its row's slice: global rank minus the row's start rank
        starts = torch.cumsum(count, 0) - count
        within = torch.arange(rows.shape[0], device=nodes.device) - starts[rows]
        mask = torch.zeros(len(nodes), self.level_sizes[level], dtype=torch.bool, device=nodes.device)
        mask[rows, arrays["child_codes"][level][first[rows] + within]] = True
        return mask

    def advance(self, level: int, nodes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Level-(level+1) node ids reached from level-``level`` nodes by ``codes`` (int64 [R] each). The pairs
        must exist (as guaranteed by ``allowed_mask``); others give an arbitrary in-range node."""
        keys = self._arrays(nodes.device)["keys"][level]
        pos = torch.searchsorted(keys, nodes * self.level_sizes[level] + codes)
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
            nodes = np.searchsorted(keys, wanted).clip(max=len(keys) - 1)
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
                lo = first[lo] if lo < len(first) else total
                hi = first[hi] if hi < len(first) else total
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
