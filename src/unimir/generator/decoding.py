"""Incremental decoding of the generator's T5 decoder for beam search.

Runs ``model.t5.decoder``'s weights step by step (eval mode), organised for beams kept as a dense [q, W] grid
(W beams per query, padding beams included): the cross-attention keys and values are computed once per query and
shared by all its beams, instead of being copied to and reordered with every beam as a generic KV cache does; only
the self-attention cache follows the beams, one tensor for all layers and steps, so a reorder is one
``index_select`` of the steps filled so far.

Per step and layer it issues few kernels (RMSNorm weights folded into the projections that follow them, keys and
values written straight into the cache, residual adds fused into ``addmm`` / ``baddbmm``, cross-attention folded
into two per-query matrices), since at batch 1 the decoder's cost is mostly the number of kernel calls, and at
large batches arithmetic, which the folding also cuts. The fused weights are cached per model and rebuilt when a
weight changes (tensor version counters), so training between searches is safe. ``reference_beam_search``
(transformers' ``generate``) and a plain loop check it in the tests.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import IDGenerator


@dataclass
class _Layer:
    self_q: torch.Tensor  # [d, d_inner] self-attention query projection (transposed), RMSNorm weight folded in
    self_kv: torch.Tensor  # [d, 2 d_inner] key and value projections (transposed, stacked), RMSNorm weight folded in
    self_out: torch.Tensor  # [d, d_inner]
    cross_q: torch.Tensor  # [H, dk, d] cross-attention query projection per head, RMSNorm weight folded in
    cross_kv: torch.Tensor  # [2 d_inner, d] cross-attention key and value projections (of the prefix)
    cross_out: torch.Tensor  # [d, H, dk] output projection, per head
    wi: torch.Tensor  # [d_ff, d], RMSNorm weight folded in
    wo: torch.Tensor  # [d, d_ff]


@dataclass
class _Weights:
    key: tuple  # (data pointer, version) of every parameter: any change rebuilds the cache
    layers: list[_Layer]
    embed: torch.Tensor  # [V, d]
    eps: float
    heads: int
    bias: torch.Tensor  # [T, T, H] T5 relative position bias of position i over position j
    level_out: list[torch.Tensor]  # per level, its rows of the tied embedding x output scale x final RMSNorm weight
    full_out: torch.Tensor | None  # every row of it, for a generator whose softmax runs over the whole vocabulary


_CACHE: "weakref.WeakKeyDictionary[IDGenerator, _Weights]" = weakref.WeakKeyDictionary()


def _version_key(model: IDGenerator) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def decoder_weights(model: IDGenerator) -> _Weights:
    """The fused decoding weights of ``model``, cached until one of its parameters changes.

    RMSNorm(x) = n(x) * g with n(x) = x / rms(x); each g is folded into the projection that follows it, so a step
    normalises without a weight."""
    key = _version_key(model)
    cached = _CACHE.get(model)
    if cached is not None and cached.key == key:
        return cached
    with torch.no_grad():
        weights = _fuse(model, key)
    _CACHE[model] = weights
    return weights


def _fuse(model: IDGenerator, key: tuple) -> _Weights:
    decoder, vocab = model.t5.decoder, model.vocab
    layers = []
    for block in decoder.block:
        self_attn, cross_attn, feed_forward = block.layer
        sa, ca, ff = self_attn.SelfAttention, cross_attn.EncDecAttention, feed_forward.DenseReluDense
        heads, d = ca.n_heads, ca.q.weight.shape[1]
        layers.append(_Layer(
            self_q=(sa.q.weight * self_attn.layer_norm.weight).T.contiguous(),
            self_kv=(torch.cat([sa.k.weight, sa.v.weight]) * self_attn.layer_norm.weight).T.contiguous(),
            self_out=sa.o.weight,
            cross_q=(ca.q.weight * cross_attn.layer_norm.weight).view(heads, -1, d),
            cross_kv=torch.cat([ca.k.weight, ca.v.weight]),
            cross_out=ca.o.weight.view(d, heads, -1),
            wi=ff.wi.weight * feed_forward.layer_norm.weight, wo=ff.wo.weight))
    first = decoder.block[0].layer[0].SelfAttention
    steps = vocab.code_length
    position = torch.arange(steps, device=model.device)
    buckets = first._relative_position_bucket(position[None, :] - position[:, None], bidirectional=False,
                                              num_buckets=first.relative_attention_num_buckets,
                                              max_distance=first.relative_attention_max_distance)
    shared = model.t5.shared.weight
    out_scale = model.output_scale * decoder.final_layer_norm.weight
    level_out = [shared[vocab.level_offset(lv):vocab.level_offset(lv) + vocab.level_size(lv)] * out_scale
                 for lv in range(steps)]
    full_out = shared * out_scale if model.config.softmax == "full" else None
    return _Weights(key, layers, shared.detach(), decoder.final_layer_norm.variance_epsilon, first.n_heads,
                    first.relative_attention_bias(buckets).detach(), level_out, full_out)


class BeamDecoder:
    """Decoder state for q queries with W beams each, rows r = query * W + beam (W may change between steps).

    Cross-attention is folded per query: with keys K_h and values V_h [P, dk] of head h, the scores of a
    normalised state x are x . (Wq_h^T K_h^T) and its output sum_h a_h V_h Wo_h^T, so ``M`` = [d, H*P] and ``N`` =
    [H*P, d] are computed once per query and a step costs two batched products of W rows against them."""

    def __init__(self, model: IDGenerator, z: torch.Tensor):
        """z: float32 [q, d] query vectors."""
        self.w = decoder_weights(model)
        prefix = model.encode(z).last_hidden_state  # [q, P, d_model]
        q, n_prefix = prefix.shape[:2]
        self.n_queries, heads = q, self.w.heads
        self.cross = []
        for layer in self.w.layers:
            kv = F.linear(prefix, layer.cross_kv).view(q, n_prefix, 2, heads, -1)  # [q, P, 2, H, dk]
            scores = torch.einsum("qphk,hkd->qdhp", kv[:, :, 0], layer.cross_q).reshape(q, -1, heads * n_prefix)
            values = torch.einsum("qphk,dhk->qhpd", kv[:, :, 1], layer.cross_out).reshape(q, heads * n_prefix, -1)
            self.cross.append((scores, values))
        self.n_prefix = n_prefix
        # self-attention keys and values of the steps so far: [steps, layers, rows, 2 (k, v) x H x dk]
        self.past: torch.Tensor | None = None
        self.length = 0

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (int64 [q * W]) and return the normalised final decoder states float [rows, d]
        (``log_probs`` applies the final RMSNorm weight and T5's output scaling)."""
        w, t = self.w, self.length
        rows, q, heads = tokens.shape[0], self.n_queries, self.w.heads
        width = rows // q
        h = F.embedding(tokens, w.embed)
        d = h.shape[1]
        if self.past is None:
            self.past = h.new_empty(w.bias.shape[0], len(w.layers), rows, w.layers[0].self_kv.shape[1])
        past = self.past
        bias = w.bias[t, :t + 1, None, :]  # [t+1, 1, H]
        for i, layer in enumerate(w.layers):
            x = F.rms_norm(h, (d,), None, w.eps)
            query = (x @ layer.self_q).view(rows, heads, -1)
            torch.mm(x, layer.self_kv, out=past[t, i])  # this step's keys and values go straight to the cache
            kv = past[:t + 1, i].view(t + 1, rows, 2, heads, -1)  # [t+1, rows, (k, v), H, dk]
            # one query position over t+1 cached ones: elementwise products beat a batched matmul at these sizes
            attn = torch.softmax((kv[:, :, 0] * query).sum(-1) + bias, dim=0)  # [t+1, rows, H]
            h = torch.addmm(h, (attn[..., None] * kv[:, :, 1]).sum(0).view(rows, -1), layer.self_out.T)
            scores, values = self.cross[i]
            x = F.rms_norm(h, (d,), None, w.eps).view(q, width, d)
            attn = torch.bmm(x, scores).view(q, width, heads, self.n_prefix).softmax(-1)
            h = torch.baddbmm(h.view(q, width, d), attn.view(q, width, -1), values).view(rows, d)
            inner = torch.relu_(F.linear(F.rms_norm(h, (d,), None, w.eps), layer.wi))
            h = torch.addmm(h, inner, layer.wo.T)
        self.length += 1
        return F.rms_norm(h, (d,), None, w.eps)

    def log_probs(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        """Log-probabilities of level ``level``'s codes: float32 [rows, level_size], normalised over the level's codes
        or, for a generator with ``softmax == "full"`` (GENIUS's released model), over the whole vocabulary."""
        logits = hidden @ self.w.level_out[level].T
        if self.w.full_out is None:
            return F.log_softmax(logits, dim=-1)
        return logits - torch.logsumexp(hidden @ self.w.full_out.T, dim=-1, keepdim=True)

    def reorder(self, parent: torch.Tensor) -> None:
        """New row r continues old row ``parent[r]`` (int64 [new rows]): reorder the self-attention cache (only
        the steps filled so far are copied)."""
        old, t = self.past, self.length
        self.past = old.new_empty(old.shape[0], old.shape[1], len(parent), old.shape[3])
        torch.index_select(old[:t], 2, parent, out=self.past[:t])
