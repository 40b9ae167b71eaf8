"""Incremental decoding of the generator's T5 decoder for beam search.

Runs ``model.t5.decoder``'s weights step by step (eval mode), organised for beams kept as a dense [q, W] grid
(W beams per query, padding beams included): the cross-attention keys and values are computed once per query and
shared by all its beams, instead of being copied to and reordered with every beam as a generic KV cache does; only
the self-attention cache follows the beams, one tensor for all layers, so a reorder is one ``index_select``.

Per step and layer it issues few, large kernels (fused q/k/v projection, ``rms_norm``, ``scaled_dot_product_attention``
with T5's unscaled scores and additive position bias), since at batch 1 the decoder's cost is mostly the number of
kernel calls, not arithmetic. The fused weights are cached per model and rebuilt when a weight changes (tensor
version counters), so training between searches is safe. ``reference_beam_search`` (transformers' ``generate``)
and a plain loop check it in the tests.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import IDGenerator


@dataclass
class _Layer:
    self_norm: torch.Tensor  # [d] RMSNorm weights
    qkv: torch.Tensor  # [3 d_inner, d] self-attention q, k, v projections, stacked
    self_out: torch.Tensor  # [d, d_inner]
    cross_norm: torch.Tensor
    cross_q: torch.Tensor  # [d_inner, d]
    cross_kv: torch.Tensor  # [2 d_inner, d]
    cross_out: torch.Tensor
    ff_norm: torch.Tensor
    wi: torch.Tensor  # [d_ff, d]
    wo: torch.Tensor  # [d, d_ff]


@dataclass
class _Weights:
    key: tuple  # (data pointer, version) of every parameter: any change rebuilds the cache
    layers: list[_Layer]
    embed: torch.Tensor  # [V, d]
    final_norm: torch.Tensor
    eps: float
    heads: int
    bias: torch.Tensor  # [H, T, T] T5 relative position bias of position i (row) over j (column)
    level_out: list[torch.Tensor]  # per level, its output rows of the tied embedding times T5's output scale


_CACHE: "weakref.WeakKeyDictionary[IDGenerator, _Weights]" = weakref.WeakKeyDictionary()


def _version_key(model: IDGenerator) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def decoder_weights(model: IDGenerator) -> _Weights:
    """The fused decoding weights of ``model``, cached until one of its parameters changes."""
    key = _version_key(model)
    cached = _CACHE.get(model)
    if cached is not None and cached.key == key:
        return cached
    decoder, vocab = model.t5.decoder, model.vocab
    layers = []
    for block in decoder.block:
        self_attn, cross_attn, feed_forward = block.layer
        sa, ca, ff = self_attn.SelfAttention, cross_attn.EncDecAttention, feed_forward.DenseReluDense
        layers.append(_Layer(self_attn.layer_norm.weight.detach(),
                             torch.cat([sa.q.weight, sa.k.weight, sa.v.weight]).detach(), sa.o.weight.detach(),
                             cross_attn.layer_norm.weight.detach(), ca.q.weight.detach(),
                             torch.cat([ca.k.weight, ca.v.weight]).detach(), ca.o.weight.detach(),
                             feed_forward.layer_norm.weight.detach(), ff.wi.weight.detach(), ff.wo.weight.detach()))
    first = decoder.block[0].layer[0].SelfAttention
    steps = vocab.code_length
    position = torch.arange(steps, device=model.device)
    buckets = first._relative_position_bucket(position[None, :] - position[:, None], bidirectional=False,
                                              num_buckets=first.relative_attention_num_buckets,
                                              max_distance=first.relative_attention_max_distance)
    bias = first.relative_attention_bias(buckets).permute(2, 0, 1).detach()  # [H, T, T]
    shared = model.t5.shared.weight.detach()
    level_out = [shared[vocab.level_offset(lv):vocab.level_offset(lv) + vocab.level_size(lv)] * model.output_scale
                 for lv in range(steps)]
    weights = _Weights(key, layers, shared, decoder.final_layer_norm.weight.detach(),
                       decoder.final_layer_norm.variance_epsilon, first.n_heads, bias, level_out)
    _CACHE[model] = weights
    return weights


class BeamDecoder:
    """Decoder state for q queries with ``width`` beams each, rows r = query * width + beam."""

    def __init__(self, model: IDGenerator, z: torch.Tensor):
        """z: float32 [q, d] query vectors."""
        self.w = decoder_weights(model)
        prefix = model.encode(z).last_hidden_state  # [q, P, d_model]
        self.n_queries = prefix.shape[0]
        heads = self.w.heads
        self.cross = []
        for layer in self.w.layers:  # [q, H, P, dk] keys and values, shared by a query's beams
            kv = F.linear(prefix, layer.cross_kv).view(prefix.shape[0], prefix.shape[1], 2, heads, -1)
            self.cross.append((kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)))
        # self-attention cache: [rows, layers, 2 (k, v), H, steps, dk]
        self.cache: torch.Tensor | None = None
        self.length = 0

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (int64 [q * width]) and return the final decoder states float [rows, d_model]
        (before T5's output scaling, which ``logits`` applies)."""
        w, t = self.w, self.length
        rows, q = tokens.shape[0], self.n_queries
        width, heads = rows // q, w.heads
        h = F.embedding(tokens, w.embed)
        d = h.shape[1]
        if self.cache is None:
            dk = w.layers[0].qkv.shape[0] // (3 * heads)
            self.cache = h.new_empty(rows, len(w.layers), 2, heads, w.bias.shape[1], dk)
        bias = w.bias[None, :, t:t + 1, :t + 1]  # [1, H, 1, t+1]
        for i, layer in enumerate(w.layers):
            x = F.rms_norm(h, (d,), layer.self_norm, w.eps)
            qkv = F.linear(x, layer.qkv).view(rows, 3, heads, -1)
            self.cache[:, i, :, :, t] = qkv[:, 1:]
            keys, values = self.cache[:, i, 0, :, :t + 1], self.cache[:, i, 1, :, :t + 1]  # [rows, H, t+1, dk]
            attn = F.scaled_dot_product_attention(qkv[:, 0, :, None], keys, values, attn_mask=bias, scale=1.0)
            h = h + F.linear(attn.reshape(rows, -1), layer.self_out)
            x = F.rms_norm(h, (d,), layer.cross_norm, w.eps)
            query = F.linear(x, layer.cross_q).view(q, width, heads, -1).transpose(1, 2)  # [q, H, width, dk]
            keys, values = self.cross[i]
            attn = F.scaled_dot_product_attention(query, keys, values, scale=1.0)
            h = h + F.linear(attn.transpose(1, 2).reshape(rows, -1), layer.cross_out)
            x = F.rms_norm(h, (d,), layer.ff_norm, w.eps)
            h = h + F.linear(F.relu(F.linear(x, layer.wi)), layer.wo)
        self.length += 1
        return F.rms_norm(h, (d,), w.final_norm, w.eps)

    def log_probs(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        """Log-probabilities over level ``level``'s codes: float32 [rows, level_size]."""
        return F.log_softmax(hidden @ self.w.level_out[level].T, dim=-1)

    def reorder(self, parent: torch.Tensor) -> None:
        """New row r continues old row ``parent[r]`` (int64 [new rows]): reorder the self-attention cache."""
        self.cache = self.cache.index_select(0, parent)
