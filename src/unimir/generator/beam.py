"""Trie-constrained beam search over IDs (``genius-method.md`` §5.2, §8.3).

``constrained_beam_search`` is the fast decoder: all queries x beams advance together, one decoder step per level
(``BeamDecoder``: KV cache, cross-attention shared by a query's beams), logits only over the level's K codes, one
batched mask and one ``searchsorted`` per step. Only live beams are computed: a query has 1 beam at step 0 and at
most 3 at step 1 (the modalities), not B.
``reference_beam_search`` runs the same model through transformers' ``generate`` with a per-beam Python
``prefix_allowed_tokens_fn`` (GENIUS's reference approach); tests and the speed benchmark compare the two.
``residual_beam_search`` quantises a vector with the codebooks alone (the generator-free baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInputError
from ..quantizer.kmeans import squared_distances
from ..quantizer.residual import ModalityResidualQuantizer
from .decoding import BeamDecoder
from .model import IDGenerator
from .trie import SemanticIDTrie
from .vocab import EOS, PAD

NEG_INF = float("-inf")


@dataclass
class BeamSearchResult:
    """Beams per query, best first.

    ids: int64 [q, B, L+1] codes (-1 in padding); scores: float32 [q, B] (sum of log-probabilities for the
    generator, -||residual||^2 for the quantizer; -inf in padding); leaves: int64 [q, B], index of the ID in
    ``trie.ids`` (its bucket), -1 in padding. Padding appears when a query has fewer than B reachable IDs.
    """

    ids: np.ndarray
    scores: np.ndarray
    leaves: np.ndarray


def first_code_mask(first_codes, n_queries: int, n_first: int, device: torch.device) -> torch.Tensor | None:
    """Normalise a level-0 filter to bool [q, n_first] (None: no filter).

    Accepts None; int [q] (one allowed code per query, -1 for any); bool [q, n_first] (an allowed set per query).
    """
    if first_codes is None:
        return None
    codes = torch.as_tensor(np.asarray(first_codes), device=device)
    if codes.dtype == torch.bool:
        if tuple(codes.shape) != (n_queries, n_first):
            raise InvalidInputError(f"a first-code mask must be bool [{n_queries}, {n_first}], got "
                                    f"{tuple(codes.shape)}")
        return codes
    codes = codes.long()
    if tuple(codes.shape) != (n_queries,) or (codes.numel() and (codes.min() < -1 or codes.max() >= n_first)):
        raise InvalidInputError(f"first codes must be int [{n_queries}] in -1..{n_first - 1}")
    mask = F.one_hot(codes.clamp_min(0), n_first).bool()
    return mask | (codes < 0)[:, None]


@dataclass
class _Beams:
    """The live beams of all queries, grouped by query and best first within a query (R rows)."""

    query: torch.Tensor  # int64 [R], non-decreasing
    node: torch.Tensor  # int64 [R], trie node at the current level
    score: torch.Tensor  # float32 [R]
    history: torch.Tensor  # int64 [R, levels so far]

    @staticmethod
    def start(n_queries: int, device: torch.device) -> "_Beams":
        return _Beams(torch.arange(n_queries, device=device), torch.zeros(n_queries, dtype=torch.long, device=device),
                      torch.zeros(n_queries, device=device),
                      torch.zeros(n_queries, 0, dtype=torch.long, device=device))

    def first_rows(self, n_queries: int) -> torch.Tensor:
        """Row where each query's beams start: int64 [q]."""
        counts = torch.bincount(self.query, minlength=n_queries)
        return torch.cumsum(counts, 0) - counts

    def slots(self, n_queries: int) -> torch.Tensor:
        """Rank of each row within its query: int64 [R]."""
        return torch.arange(len(self.query), device=self.query.device) - self.first_rows(n_queries)[self.query]


def _step(trie: SemanticIDTrie, level: int, beams: _Beams, totals: torch.Tensor, n_queries: int, width: int,
          first_mask: torch.Tensor | None) -> tuple[_Beams, torch.Tensor]:
    """Extend every live beam by one code and keep each query's best ``width`` extensions that exist in the trie.

    totals: float [R, W], the score of each one-code extension of each row. Returns the new beams and, for each,
    its parent row (int64 [R']), with which the caller reorders its per-row state (KV cache, residuals).
    """
    n_codes = totals.shape[1]
    allowed = trie.allowed_mask(level, beams.node)
    if first_mask is not None and level == 0:
        allowed &= first_mask[beams.query]
    first = beams.first_rows(n_queries)
    slots = torch.arange(len(beams.query), device=totals.device) - first[beams.query]
    per_query = int(slots.max()) + 1 if len(slots) else 0
    dense = totals.new_full((n_queries, per_query, n_codes), NEG_INF)
    dense[beams.query, slots] = totals.masked_fill(~allowed, NEG_INF)
    top, idx = dense.view(n_queries, per_query * n_codes).topk(min(width, per_query * n_codes), dim=1)
    keep = torch.isfinite(top)
    parent = (first[:, None] + idx // n_codes)[keep]
    codes = (idx % n_codes)[keep]
    query = torch.arange(n_queries, device=idx.device)[:, None].expand_as(idx)[keep]
    node = trie.advance(level, beams.node[parent], codes)
    return _Beams(query, node, top[keep], torch.cat([beams.history[parent], codes[:, None]], dim=1)), parent


def _result(beams: _Beams, n_queries: int, width: int, depth: int) -> BeamSearchResult:
    """Scatter the final beams into padded [q, B] arrays."""
    ids = np.full((n_queries, width, depth), -1, dtype=np.int64)
    scores = np.full((n_queries, width), NEG_INF, dtype=np.float32)
    leaves = np.full((n_queries, width), -1, dtype=np.int64)
    query, slot = beams.query.cpu().numpy(), beams.slots(n_queries).cpu().numpy()
    if beams.history.shape[1] == depth:  # else no beam survived to the last level
        ids[query, slot] = beams.history.cpu().numpy()
        scores[query, slot] = beams.score.float().cpu().numpy()
        leaves[query, slot] = beams.node.cpu().numpy()
    return BeamSearchResult(ids, scores, leaves)


def _check(trie: SemanticIDTrie, depth: int, beams: int) -> None:
    if trie.depth != depth:
        raise InvalidInputError(f"the trie has IDs of {trie.depth} codes, the model {depth}")
    if beams < 1:
        raise InvalidInputError(f"beams must be >= 1, got {beams}")


@torch.no_grad()
def constrained_beam_search(model: IDGenerator, z: torch.Tensor | np.ndarray, trie: SemanticIDTrie, beams: int,
                            first_codes=None) -> BeamSearchResult:
    """Top-``beams`` IDs of the pool for each query vector z (float32 [q, d]), by sum of log-probabilities.

    ``first_codes`` restricts c0 per query (see ``first_code_mask``). Every returned ID exists in ``trie``.
    """
    vocab = model.vocab
    _check(trie, vocab.code_length, beams)
    if model.training:  # eval() walks every submodule: keep it off the per-query path
        model.eval()
    device = model.device
    z = torch.as_tensor(z, dtype=torch.float32, device=device)
    q = z.shape[0]
    first_mask = first_code_mask(first_codes, q, vocab.level_size(0), device)
    state = _Beams.start(q, device)
    decoder = BeamDecoder(model, z)
    tokens = torch.full((q,), PAD, dtype=torch.long, device=device)
    for level in range(vocab.code_length):
        if len(state.query) == 0:
            break
        hidden = decoder.step(tokens, state.query, state.slots(q))
        log_probs = model.level_log_probs(hidden, level)
        state, parent = _step(trie, level, state, state.score[:, None] + log_probs, q, beams, first_mask)
        if level < vocab.code_length - 1:
            decoder.reorder(parent)
            tokens = state.history[:, -1] + vocab.level_offset(level)
    return _result(state, q, beams, vocab.code_length)


@torch.no_grad()
def reference_beam_search(model: IDGenerator, z: torch.Tensor | np.ndarray, trie: SemanticIDTrie, beams: int,
                          first_codes=None) -> BeamSearchResult:
    """The same search through ``transformers.generate(num_beams=B, prefix_allowed_tokens_fn=...)``.

    Slow by design: one Python trie look-up per beam per step. HF fills missing beams with sequences scored about
    -1e9 (or -inf); those come back as padding. Scores are recomputed by ``sequence_log_probs`` (HF gives none
    for greedy search), which also checks the fast decoder against the full-vocabulary forward.
    """
    vocab = model.vocab
    _check(trie, vocab.code_length, beams)
    model.eval()
    device = model.device
    z = torch.as_tensor(z, dtype=torch.float32, device=device)
    q = z.shape[0]
    if q == 0:
        return _result(_Beams.start(0, device), 0, beams, vocab.code_length)
    mask = first_code_mask(first_codes, q, vocab.level_size(0), torch.device("cpu"))
    first_sets = None if mask is None else [set(np.flatnonzero(row).tolist()) for row in mask.numpy()]
    table, offsets = trie.prefix_table, vocab.offsets().tolist()

    def allowed_tokens(batch_id: int, sent: torch.Tensor) -> list[int]:
        prefix = tuple(t - offsets[level] for level, t in enumerate(sent[1:].tolist()))
        codes = table.get(prefix, [])
        if not prefix and first_sets is not None:
            codes = [c for c in codes if c in first_sets[batch_id]]
        # A beam that cannot continue (HF's filler beams) still needs one token; its score stays at -1e9/-inf.
        return [offsets[len(prefix)] + c for c in codes] or [PAD]

    out = model.t5.generate(encoder_outputs=model.encode(z), num_beams=beams, num_return_sequences=beams,
                            max_new_tokens=vocab.code_length, min_new_tokens=vocab.code_length, do_sample=False,
                            prefix_allowed_tokens_fn=allowed_tokens, decoder_start_token_id=PAD, pad_token_id=PAD,
                            eos_token_id=EOS, output_scores=beams > 1, return_dict_in_generate=True,
                            **({"length_penalty": 0.0} if beams > 1 else {}))
    tokens = out.sequences[:, 1:]
    ids = vocab.tokens_to_codes(tokens.cpu().numpy())
    leaves = trie.lookup(ids)
    valid = leaves >= 0
    if beams > 1:  # drop HF's filler beams, duplicates of real ones scored about -1e9
        valid &= out.sequences_scores.cpu().numpy() > -1e8
    scores = np.full(q * beams, NEG_INF, dtype=np.float32)
    scores[valid] = sequence_log_probs(model, z.repeat_interleave(beams, 0)[torch.as_tensor(valid)],
                                       tokens[torch.as_tensor(valid, device=tokens.device)]).cpu().numpy()
    return BeamSearchResult(np.where(valid[:, None], ids, -1).reshape(q, beams, -1), scores.reshape(q, beams),
                            np.where(valid, leaves, -1).reshape(q, beams))


@torch.no_grad()
def sequence_log_probs(model: IDGenerator, z: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Sum of token log-probabilities of full token sequences (int64 [n, L+1]) given z (float32 [n, d]),
    teacher-forced through the level-masked full-vocabulary forward: float32 [n]."""
    decoder_input = torch.cat([torch.full_like(tokens[:, :1], PAD), tokens[:, :-1]], dim=1)
    logits = model.t5(encoder_outputs=model.encode(z), decoder_input_ids=decoder_input).logits.float()
    return F.log_softmax(logits, dim=-1).gather(-1, tokens[:, :, None]).squeeze(-1).sum(-1)


@torch.no_grad()
def residual_beam_search(rq: ModalityResidualQuantizer, z: torch.Tensor | np.ndarray, trie: SemanticIDTrie,
                         beams: int, first_codes=None) -> BeamSearchResult:
    """The pool IDs whose reconstruction sum_l C_l[c_l] is closest to z (float32 [q, d]), best first.

    A beam's score is -||z - sum of its codewords so far||^2, so each step keeps the beams with the smallest
    residual among the extensions that exist in the pool.
    """
    _check(trie, rq.levels + 1, beams)
    device = rq.codebooks.device
    z = torch.as_tensor(z, dtype=torch.float32, device=device)
    q = z.shape[0]
    first_mask = first_code_mask(first_codes, q, rq.modality_codebook.shape[0], device)
    state, residual = _Beams.start(q, device), z
    for level, book in enumerate([rq.modality_codebook] + list(rq.codebooks)):
        if len(state.query) == 0:
            break
        state, parent = _step(trie, level, state, -squared_distances(residual, book), q, beams, first_mask)
        residual = residual[parent] - book[state.history[:, -1]]
    return _result(state, q, beams, trie.depth)
