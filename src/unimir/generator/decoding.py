"""Incremental decoding of the generator's T5 decoder for beam search.

Runs ``model.t5.decoder``'s own modules and weights step by step (eval mode), organised for beams: the
cross-attention keys and values are computed once per query and shared by all its beams, instead of being copied
to and reordered with every beam as a generic KV cache does. Only the self-attention cache follows the beams.
``reference_beam_search`` (transformers' ``generate``) checks it in the tests.
"""

from __future__ import annotations

import torch
from torch import nn

from .model import IDGenerator


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[..., n, H*dk] -> [..., H, n, dk]."""
    return x.view(*x.shape[:-1], n_heads, x.shape[-1] // n_heads).transpose(-3, -2)


class BeamDecoder:
    """Decoder state for q queries whose beams are rows grouped by query (``query``, ``slot`` per row)."""

    def __init__(self, model: IDGenerator, z: torch.Tensor):
        """z: float32 [q, d] query vectors."""
        self.decoder = model.t5.decoder
        self.blocks = list(self.decoder.block)
        prefix = model.encode(z).last_hidden_state  # [q, P, d_model]
        self.cross = []
        for block in self.blocks:
            attn = block.layer[1].EncDecAttention
            self.cross.append((_heads(attn.k(prefix), attn.n_heads), _heads(attn.v(prefix), attn.n_heads)))
        self.keys: list[torch.Tensor | None] = [None] * len(self.blocks)
        self.values: list[torch.Tensor | None] = [None] * len(self.blocks)
        self.length = 0

    def _position_bias(self) -> torch.Tensor:
        """T5's relative position bias of the newest position over all positions so far: [1, H, 1, t+1]."""
        attn = self.blocks[0].layer[0].SelfAttention
        device = attn.relative_attention_bias.weight.device
        relative = torch.arange(self.length + 1, device=device) - self.length
        buckets = attn._relative_position_bucket(relative, bidirectional=False,
                                                 num_buckets=attn.relative_attention_num_buckets,
                                                 max_distance=attn.relative_attention_max_distance)
        return attn.relative_attention_bias(buckets).T[None, :, None, :]

    def step(self, tokens: torch.Tensor, query: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (int64 [R]; rows of query ``query[r]``, rank ``slot[r]`` within it) and return
        the final decoder states float [R, d_model] (before T5's output scaling)."""
        h = self.decoder.embed_tokens(tokens)
        bias = self._position_bias()
        for i, block in enumerate(self.blocks):
            self_attn, cross_attn, feed_forward = block.layer
            x = self_attn.layer_norm(h)
            attn = self_attn.SelfAttention
            k, v = _heads(attn.k(x)[:, None], attn.n_heads), _heads(attn.v(x)[:, None], attn.n_heads)
            if self.keys[i] is not None:
                k, v = torch.cat([self.keys[i], k], dim=2), torch.cat([self.values[i], v], dim=2)
            self.keys[i], self.values[i] = k, v
            h = h + attn.o(_attend(_heads(attn.q(x)[:, None], attn.n_heads), k, v, bias).flatten(1))
            h = h + self._cross(cross_attn, cross_attn.layer_norm(h), i, query, slot)
            h = feed_forward(h)
        self.length += 1
        return self.decoder.final_layer_norm(h)

    def _cross(self, layer: nn.Module, x: torch.Tensor, i: int, query: torch.Tensor, slot: torch.Tensor):
        """Cross-attention with rows packed as [q, slots] so each query's K/V serve all its beams in one matmul."""
        attn = layer.EncDecAttention
        keys, values = self.cross[i]  # [q, H, P, dk]
        n_slots = int(slot.max()) + 1
        packed = x.new_zeros(keys.shape[0], n_slots, x.shape[-1])
        packed[query, slot] = attn.q(x)
        out = _attend(_heads(packed, attn.n_heads), keys, values)  # [q, H, slots, dk]
        return attn.o(out.transpose(1, 2)[query, slot].flatten(1))

    def reorder(self, parent: torch.Tensor) -> None:
        """New row r continues old row ``parent[r]``: reorder the self-attention cache."""
        self.keys = [k.index_select(0, parent) for k in self.keys]
        self.values = [v.index_select(0, parent) for v in self.values]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """T5 attention (unscaled dot products, additive bias): softmax(q k^T + bias) v over the last two dims."""
    scores = q @ k.transpose(-1, -2)
    if bias is not None:
        scores = scores + bias
    return torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v
